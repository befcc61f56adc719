"""The shipping service: shipments and cancellations. Addresses containing 'nowhere' fail."""

from __future__ import annotations

import random
from typing import Any

from sagastream.examples.base import Result, SimulatedService, short_id


class ShippingService(SimulatedService):
    name = "shipping"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.operations = {"CreateShipment": self.create, "CancelShipment": self.cancel}

    def create(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        if "nowhere" in cmd["shipping_address"].lower():
            return "ShipmentFailed", {
                "order_id": cmd["order_id"],
                "reason": "address undeliverable",
            }
        if self.injected_failure(rng):
            return "ShipmentFailed", {"order_id": cmd["order_id"], "reason": "carrier unavailable"}
        shipment = short_id("shp", cmd["idempotency_key"])
        return "ShipmentCreated", {"order_id": cmd["order_id"], "shipment_id": shipment}

    def cancel(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        return "ShipmentCancelled", {
            "order_id": cmd["order_id"],
            "shipment_id": cmd.get("shipment_id"),
        }
