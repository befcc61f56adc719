"""The shipping service: shipments and cancellations. Addresses containing 'nowhere' fail."""

from __future__ import annotations

import random

from sagastream.app import Context, Fail
from sagastream.examples.app import app, service
from sagastream.examples.base import short_id
from sagastream.examples.events import (
    CancelShipment,
    CreateShipment,
    ShipmentCancelled,
    ShipmentCreated,
)

shipping = service("shipping")


@app.handler
async def create(cmd: CreateShipment, ctx: Context) -> ShipmentCreated:
    def operation(rng: random.Random) -> ShipmentCreated:
        if "nowhere" in cmd.shipping_address.lower():
            raise Fail("address undeliverable")
        if shipping.failed_by_chance(rng):
            raise Fail("carrier unavailable")
        shipment = short_id("shp", ctx.idempotency_key)
        return ShipmentCreated(order_id=cmd.order_id, shipment_id=shipment)

    return await shipping.once(ctx, operation)


@app.handler
async def cancel(cmd: CancelShipment, ctx: Context) -> ShipmentCancelled:
    return await shipping.once(
        ctx, lambda rng: ShipmentCancelled(order_id=cmd.order_id, shipment_id=cmd.shipment_id)
    )
