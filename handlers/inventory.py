"""The inventory service: reservations and releases. SKUs starting with OOS- are out of stock."""

from __future__ import annotations

import random

from sagastream.app import Context, Fail
from sagastream.examples.app import app, service
from sagastream.examples.base import short_id
from sagastream.examples.events import (
    InventoryReleased,
    InventoryReserved,
    ReleaseInventory,
    ReserveInventory,
)

inventory = service("inventory")


@app.handler
async def reserve(cmd: ReserveInventory, ctx: Context) -> InventoryReserved:
    def operation(rng: random.Random) -> InventoryReserved:
        missing = [item.sku for item in cmd.items if item.sku.startswith("OOS-")]
        if missing:
            raise Fail("out of stock: " + ", ".join(missing))
        if inventory.failed_by_chance(rng):
            raise Fail("warehouse unavailable")
        reservation = short_id("res", ctx.idempotency_key)
        return InventoryReserved(order_id=cmd.order_id, reservation_id=reservation)

    return await inventory.once(ctx, operation)


@app.handler
async def release(cmd: ReleaseInventory, ctx: Context) -> InventoryReleased:
    return await inventory.once(
        ctx,
        lambda rng: InventoryReleased(order_id=cmd.order_id, reservation_id=cmd.reservation_id),
    )
