"""The inventory service: reservations and releases. SKUs starting with OOS- are out of stock."""

from __future__ import annotations

import random
from typing import Any

from sagastream.examples.base import Result, SimulatedService, short_id


class InventoryService(SimulatedService):
    name = "inventory"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.operations = {"ReserveInventory": self.reserve, "ReleaseInventory": self.release}

    def reserve(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        missing = [i["sku"] for i in cmd["items"] if i["sku"].startswith("OOS-")]
        if missing:
            reason = "out of stock: " + ", ".join(missing)
            return "InventoryFailed", {"order_id": cmd["order_id"], "reason": reason}
        if self.injected_failure(rng):
            return "InventoryFailed", {
                "order_id": cmd["order_id"],
                "reason": "warehouse unavailable",
            }
        reservation = short_id("res", cmd["idempotency_key"])
        return "InventoryReserved", {"order_id": cmd["order_id"], "reservation_id": reservation}

    def release(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        return "InventoryReleased", {
            "order_id": cmd["order_id"],
            "reservation_id": cmd.get("reservation_id"),
        }
