"""Handler functions for the failed-attempt tests: the order saga's services, as plain functions.

By the order id: `hang-*` hangs on its first charge (far past the bound), `raise-*` raises on
it (`broken-*` on every attempt), `forge-*` answers it with a forged SagaCompleted; every charge takes LATENCY_S
(SAGASTREAM_TEST_LATENCY_MS) first. The others answer at once.
"""

from __future__ import annotations

import os
import time

from sagastream.app import App, Context
from sagastream.events import SagaCompleted
from sagastream.examples.events import (
    CancelShipment,
    ChargePayment,
    CreateShipment,
    InventoryReleased,
    InventoryReserved,
    NotificationSent,
    PaymentCharged,
    PaymentRefunded,
    RefundPayment,
    ReleaseInventory,
    ReserveInventory,
    SendNotification,
    ShipmentCancelled,
    ShipmentCreated,
)

app = App()
LATENCY_S = int(os.environ.get("SAGASTREAM_TEST_LATENCY_MS", "0")) / 1000


@app.handler
def charge(cmd: ChargePayment, ctx: Context) -> PaymentCharged:
    time.sleep(LATENCY_S)
    first = ctx.attempt == 1
    if first and cmd.order_id.startswith("hang-"):
        time.sleep(3600)
    if cmd.order_id.startswith("broken-"):
        raise ConnectionError(f"card gateway refused {cmd.order_id}")
    if first and cmd.order_id.startswith("raise-"):
        raise ConnectionError(f"card gateway refused {cmd.order_id}")
    if first and cmd.order_id.startswith("forge-"):
        return SagaCompleted(saga_type="order", completed_steps=["payment"])  # type: ignore[return-value]
    return PaymentCharged(order_id=cmd.order_id, payment_id=f"pay-{cmd.order_id}", amount_cents=1)


@app.handler
def refund(cmd: RefundPayment) -> PaymentRefunded:
    return PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)


@app.handler
def reserve(cmd: ReserveInventory) -> InventoryReserved:
    return InventoryReserved(order_id=cmd.order_id, reservation_id=f"res-{cmd.order_id}")


@app.handler
def release(cmd: ReleaseInventory) -> InventoryReleased:
    return InventoryReleased(order_id=cmd.order_id, reservation_id=cmd.reservation_id)


@app.handler
def ship(cmd: CreateShipment) -> ShipmentCreated:
    return ShipmentCreated(order_id=cmd.order_id, shipment_id=f"ship-{cmd.order_id}")


@app.handler
def cancel(cmd: CancelShipment) -> ShipmentCancelled:
    return ShipmentCancelled(order_id=cmd.order_id, shipment_id=cmd.shipment_id)


@app.handler
def notify(cmd: SendNotification) -> NotificationSent:
    return NotificationSent(customer_id=cmd.customer_id, channel=cmd.channel, template=cmd.template)
