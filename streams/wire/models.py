"""Pydantic models of the Avro records in schemas/, converted to and from Avro dicts here only."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field

AvroInt = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
AvroLong = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class AvroRecord(BaseModel):
    """Base of every model: fields and types exactly as in the .avsc, nothing coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def to_avro(self) -> dict[str, Any]:
        """The record as a dict that AvroCodec.encode accepts."""
        return self.model_dump()

    @classmethod
    def from_avro(cls, record: dict[str, Any]) -> Self:
        """The model of a record as AvroCodec.decode returns it."""
        return cls.model_validate(record)


class EventMeta(AvroRecord):
    """Envelope carried by every event as field meta."""

    event_id: str
    event_type: str
    saga_key: str
    occurred_at: AvroLong
    producer: str
    correlation_id: str
    causation_id: str | None = None
    traceparent: str | None = None
    hop: AvroInt = 0
    attempt: AvroInt = 1


class OrderItem(AvroRecord):
    """One line of an order."""

    sku: str
    quantity: AvroInt


class Event(AvroRecord):
    """Base of every event record: the envelope comes first."""

    meta: EventMeta


class OrderPlaced(Event):
    """A customer placed an order; starts an order saga."""

    order_id: str
    customer_id: str
    email: str
    amount_cents: AvroLong
    currency: str
    card_token: str
    items: list[OrderItem]
    shipping_address: str
    priority: str = "normal"
    has_app: bool = False


class ChargePayment(Event):
    """Command: charge the customer's card for an order."""

    idempotency_key: str
    order_id: str
    customer_id: str
    amount_cents: AvroLong
    currency: str
    card_token: str


class PaymentCharged(Event):
    """The card was charged."""

    order_id: str
    payment_id: str
    amount_cents: AvroLong


class PaymentFailed(Event):
    """The card could not be charged."""

    order_id: str
    reason: str


class RefundPayment(Event):
    """Command: refund a charge (compensation of ChargePayment)."""

    idempotency_key: str
    order_id: str
    payment_id: str | None = None
    amount_cents: AvroLong


class PaymentRefunded(Event):
    """The charge was refunded."""

    order_id: str
    payment_id: str | None = None


class ReserveInventory(Event):
    """Command: reserve stock for an order's items."""

    idempotency_key: str
    order_id: str
    items: list[OrderItem]


class InventoryReserved(Event):
    """Stock was reserved."""

    order_id: str
    reservation_id: str


class InventoryFailed(Event):
    """Stock could not be reserved."""

    order_id: str
    reason: str


class ReleaseInventory(Event):
    """Command: release a reservation (compensation of ReserveInventory)."""

    idempotency_key: str
    order_id: str
    reservation_id: str | None = None


class InventoryReleased(Event):
    """The reservation was released."""

    order_id: str
    reservation_id: str | None = None


class CreateShipment(Event):
    """Command: create a shipment for an order."""

    idempotency_key: str
    order_id: str
    shipping_address: str
    items: list[OrderItem]


class ShipmentCreated(Event):
    """A shipment was created."""

    order_id: str
    shipment_id: str


class ShipmentFailed(Event):
    """A shipment could not be created."""

    order_id: str
    reason: str


class CancelShipment(Event):
    """Command: cancel a shipment (compensation of CreateShipment)."""

    idempotency_key: str
    order_id: str
    shipment_id: str | None = None


class ShipmentCancelled(Event):
    """The shipment was cancelled."""

    order_id: str
    shipment_id: str | None = None


class CompensationFailed(Event):
    """An undo failed; any service may emit it."""

    step: str
    reason: str


class SendNotification(Event):
    """Command: notify a customer of a saga's outcome."""

    idempotency_key: str
    customer_id: str
    email: str
    channel: str
    template: str
    outcome: str


class NotificationSent(Event):
    """A notification was sent."""

    customer_id: str
    channel: str
    template: str


class SagaCompleted(Event):
    """A saga finished with every step done."""

    saga_type: str
    completed_steps: list[str]


class SagaCompensated(Event):
    """A saga failed and its completed steps were undone."""

    saga_type: str
    reason: str
    failed_step: str
    compensated_steps: list[str]


class SagaFailed(Event):
    """A saga ended without completing or being fully compensated."""

    saga_type: str
    reason: str
    failed_step: str | None = None


class TimerFired(Event):
    """A durable saga timer came due; the orchestrator sends it to itself on the timer topic."""

    kind: str
    step: str
    attempt: AvroInt
    due_ms: AvroLong


class LoanApplied(Event):
    """An applicant asked for a loan; starts a loan saga."""

    loan_id: str
    customer_id: str
    email: str
    amount_cents: AvroLong
    term_months: AvroInt
    iban: str


class CheckCredit(Event):
    """Ask the credit bureau for a decision."""

    idempotency_key: str
    loan_id: str
    customer_id: str
    amount_cents: AvroLong


class CreditApproved(Event):
    """The credit check passed."""

    loan_id: str
    credit_score: AvroInt


class CreditRejected(Event):
    """The credit check failed."""

    loan_id: str
    reason: str


class VerifyDocuments(Event):
    """Verify the applicant's documents."""

    idempotency_key: str
    loan_id: str
    customer_id: str


class DocumentsVerified(Event):
    """The documents are in order."""

    loan_id: str


class DocumentsRejected(Event):
    """The documents are not acceptable."""

    loan_id: str
    reason: str


class RequestReview(Event):
    """Put a case in the human reviewers' queue."""

    idempotency_key: str
    loan_id: str
    customer_id: str
    amount_cents: AvroLong
    credit_score: AvroInt


class DisburseLoan(Event):
    """Pay the loan out."""

    idempotency_key: str
    loan_id: str
    amount_cents: AvroLong
    iban: str


class LoanDisbursed(Event):
    """The money was sent."""

    loan_id: str
    transfer_id: str


class DisbursementFailed(Event):
    """The money could not be sent."""

    loan_id: str
    reason: str


class ReverseDisbursement(Event):
    """Undo a disbursement."""

    idempotency_key: str
    loan_id: str
    transfer_id: str | None = None


class DisbursementReversed(Event):
    """A disbursement was undone."""

    loan_id: str
    transfer_id: str | None = None


class StepSignal(Event):
    """A decision from outside (a human) for a step waiting on one, in any saga."""

    saga_type: str
    step: str
    outcome: str
    note: str | None = None
    decided_by: str


class StepEscalated(Event):
    """A human step waited past its timeout; someone should look at it."""

    saga_type: str
    step: str
    waited_ms: AvroLong


class LifecycleChange(AvroRecord):
    """One change of a saga's audit trail: what happened, and the step it is about."""

    what: str
    step: str | None = None


class SagaLifecycle(Event):
    """A saga's audit trail: one record per saga per commit, with its changes in order."""

    saga_type: str
    status: str
    changes: list[LifecycleChange] = []


class NotificationFailed(Event):
    """A notification could not be sent on one channel."""

    customer_id: str
    channel: str
    template: str
    reason: str


MODELS: dict[str, type[Event]] = {
    model.__name__: model
    for model in (
        OrderPlaced,
        ChargePayment,
        PaymentCharged,
        PaymentFailed,
        RefundPayment,
        PaymentRefunded,
        ReserveInventory,
        InventoryReserved,
        InventoryFailed,
        ReleaseInventory,
        InventoryReleased,
        CreateShipment,
        ShipmentCreated,
        ShipmentFailed,
        CancelShipment,
        ShipmentCancelled,
        CompensationFailed,
        SendNotification,
        NotificationSent,
        SagaCompleted,
        SagaCompensated,
        SagaFailed,
        TimerFired,
        LoanApplied,
        CheckCredit,
        CreditApproved,
        CreditRejected,
        VerifyDocuments,
        DocumentsVerified,
        DocumentsRejected,
        RequestReview,
        DisburseLoan,
        LoanDisbursed,
        DisbursementFailed,
        ReverseDisbursement,
        DisbursementReversed,
        StepSignal,
        StepEscalated,
        SagaLifecycle,
        NotificationFailed,
    )
}
