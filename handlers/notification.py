"""The notification service: sends a message on one channel per command."""

from __future__ import annotations

import random
from typing import Any

from handlers.base import Result, SimulatedService


class NotificationService(SimulatedService):
    name = "notification"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.operations = {"SendNotification": self.send}

    def send(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        return "NotificationSent", {
            "customer_id": cmd["customer_id"],
            "channel": cmd["channel"],
            "template": cmd["template"],
        }
