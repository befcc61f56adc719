"""The demo's events: the order and loan sagas' commands, results and start events.

Written once, here; schemas/*.avsc is derived (`sagastream schemas generate`)."""

from __future__ import annotations

from pydantic import Field

from sagastream.events import Command, Event, Int32, Record


class OrderItem(Record):
    """One line of an order."""

    sku: str = Field(description="Stock keeping unit.")
    quantity: Int32 = Field(description="Units ordered.")


class OrderPlaced(Event):
    """A customer placed an order; starts an order saga."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    customer_id: str = Field(description="Customer who placed the order.")
    email: str = Field(description="Customer e-mail address for notifications.")
    amount_cents: int = Field(description="Amount in minor currency units (cents).")
    currency: str = Field(description="ISO 4217 currency code, e.g. EUR.")
    card_token: str = Field(description="Tokenised payment card; never a raw card number.")
    items: list[OrderItem] = Field(description="Ordered line items.")
    shipping_address: str = Field(description="Delivery address as one printable string.")
    priority: str = Field(default="normal", description="Order priority, e.g. normal or express.")
    has_app: bool = Field(
        default=False, description="Whether the customer has the mobile app (push notifications)."
    )


class ChargePayment(Command):
    """Command: charge the customer's card for an order."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    customer_id: str = Field(description="Customer who placed the order.")
    amount_cents: int = Field(description="Amount in minor currency units (cents).")
    currency: str = Field(description="ISO 4217 currency code, e.g. EUR.")
    card_token: str = Field(description="Tokenised payment card; never a raw card number.")


class RefundPayment(Command):
    """Command: refund a charge (compensation of ChargePayment)."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    payment_id: str | None = Field(
        default=None, description="Payment to act on; null if the charge's outcome is unknown."
    )
    amount_cents: int = Field(description="Amount in minor currency units (cents).")


class PaymentCharged(Event):
    """The card was charged."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    payment_id: str = Field(description="Payment id assigned by the payment service.")
    amount_cents: int = Field(description="Amount in minor currency units (cents).")


class PaymentFailed(Event):
    """The card could not be charged."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    reason: str = Field(description="Why it failed, human readable.")


class PaymentRefunded(Event):
    """The charge was refunded."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    payment_id: str | None = Field(
        default=None, description="Payment to act on; null if the charge's outcome is unknown."
    )


class ReserveInventory(Command):
    """Command: reserve stock for an order's items."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    items: list[OrderItem] = Field(description="Ordered line items.")


class ReleaseInventory(Command):
    """Command: release a reservation (compensation of ReserveInventory)."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    reservation_id: str | None = Field(
        default=None,
        description="Reservation to act on; null if the reservation's outcome is unknown.",
    )


class InventoryReserved(Event):
    """Stock was reserved."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    reservation_id: str = Field(
        description="Stock reservation id assigned by the inventory service."
    )


class InventoryFailed(Event):
    """Stock could not be reserved."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    reason: str = Field(description="Why it failed, human readable.")


class InventoryReleased(Event):
    """The reservation was released."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    reservation_id: str | None = Field(
        default=None,
        description="Reservation to act on; null if the reservation's outcome is unknown.",
    )


class CreateShipment(Command):
    """Command: create a shipment for an order."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    shipping_address: str = Field(description="Delivery address as one printable string.")
    items: list[OrderItem] = Field(description="Ordered line items.")


class CancelShipment(Command):
    """Command: cancel a shipment (compensation of CreateShipment)."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    shipment_id: str | None = Field(
        default=None, description="Shipment to act on; null if the shipment's outcome is unknown."
    )


class ShipmentCreated(Event):
    """A shipment was created."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    shipment_id: str = Field(description="Shipment id assigned by the shipping service.")


class ShipmentFailed(Event):
    """A shipment could not be created."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    reason: str = Field(description="Why it failed, human readable.")


class ShipmentCancelled(Event):
    """The shipment was cancelled."""

    order_id: str = Field(description="Order id; the saga key of an order saga.")
    shipment_id: str | None = Field(
        default=None, description="Shipment to act on; null if the shipment's outcome is unknown."
    )


class SendNotification(Command):
    """Command: notify a customer of a saga's outcome."""

    customer_id: str = Field(description="Customer who placed the order.")
    email: str = Field(description="Customer e-mail address for notifications.")
    channel: str = Field(description="Delivery channel, e.g. email or push.")
    template: str = Field(description="Notification template name.")
    outcome: str = Field(
        description="Saga outcome the notification reports, e.g. completed or compensated."
    )


class NotificationSent(Event):
    """A notification was sent."""

    customer_id: str = Field(description="Customer who placed the order.")
    channel: str = Field(description="Delivery channel, e.g. email or push.")
    template: str = Field(description="Notification template name.")


class NotificationFailed(Event):
    """A notification could not be sent on one channel."""

    customer_id: str = Field(description="Who it was for.")
    channel: str = Field(description="email, sms or push.")
    template: str = Field(description="Which message.")
    reason: str = Field(description="Why, human readable.")


class LoanApplied(Event):
    """An applicant asked for a loan; starts a loan saga."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    customer_id: str = Field(description="Applicant's customer id.")
    email: str = Field(description="Where to notify the applicant.")
    amount_cents: int = Field(description="Amount asked for, in cents.")
    term_months: Int32 = Field(description="Repayment term in months.")
    iban: str = Field(description="Account the loan is paid into.")


class CheckCredit(Command):
    """Ask the credit bureau for a decision."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    customer_id: str = Field(description="Applicant's customer id.")
    amount_cents: int = Field(description="Amount asked for, in cents.")


class CreditApproved(Event):
    """The credit check passed."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    credit_score: Int32 = Field(description="Score the bureau gave.")


class CreditRejected(Event):
    """The credit check failed."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    reason: str = Field(description="Why, human readable.")


class VerifyDocuments(Command):
    """Verify the applicant's documents."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    customer_id: str = Field(description="Applicant's customer id.")


class DocumentsVerified(Event):
    """The documents are in order."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")


class DocumentsRejected(Event):
    """The documents are not acceptable."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    reason: str = Field(description="Why, human readable.")


class RequestReview(Command):
    """Put a case in the human reviewers' queue."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    customer_id: str = Field(description="Applicant's customer id.")
    amount_cents: int = Field(description="Amount asked for, in cents.")
    credit_score: Int32 = Field(description="Score from the credit check.")


class DisburseLoan(Command):
    """Pay the loan out."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    amount_cents: int = Field(description="Amount to pay, in cents.")
    iban: str = Field(description="Account the loan is paid into.")


class ReverseDisbursement(Command):
    """Undo a disbursement."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    transfer_id: str | None = Field(default=None, description="Id of the transfer to reverse.")


class LoanDisbursed(Event):
    """The money was sent."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    transfer_id: str = Field(description="Id of the bank transfer.")


class DisbursementFailed(Event):
    """The money could not be sent."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    reason: str = Field(description="Why, human readable.")


class DisbursementReversed(Event):
    """A disbursement was undone."""

    loan_id: str = Field(description="Loan application id; the saga key of a loan saga.")
    transfer_id: str | None = Field(default=None, description="Id of the reversed transfer.")
