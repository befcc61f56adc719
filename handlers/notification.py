"""The notification service: sends a message on one channel (email, sms, push) per command.

A plain function, not async: sagastream runs it in the handler loop's thread pool.
"""

from __future__ import annotations

import random

from sagastream.app import Context, Fail
from sagastream.examples.app import app, service
from sagastream.examples.events import NotificationSent, SendNotification

notifications = service("notification")


@app.handler
def send(cmd: SendNotification, ctx: Context) -> NotificationSent:
    """Each channel is its own command and idempotency key, so each can fail on its own."""

    def operation(rng: random.Random) -> NotificationSent:
        if notifications.failed_by_chance(rng):
            raise Fail(f"{cmd.channel} provider unavailable")
        return NotificationSent(
            customer_id=cmd.customer_id, channel=cmd.channel, template=cmd.template
        )

    return notifications.once_blocking(ctx, operation)
