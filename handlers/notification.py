"""The notification service: sends a message on one channel (email, sms, push) per command."""

from __future__ import annotations

import random
from typing import Any

from sagastream.examples.base import Result, SimulatedService


class NotificationService(SimulatedService):
    name = "notification"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.operations = {"SendNotification": self.send}

    def send(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        """Each channel is its own command and idempotency key, so each can fail on its own."""
        fields = {
            "customer_id": cmd["customer_id"],
            "channel": cmd["channel"],
            "template": cmd["template"],
        }
        if self.injected_failure(rng):
            return "NotificationFailed", {
                **fields,
                "reason": f"{cmd['channel']} provider unavailable",
            }
        return "NotificationSent", fields
