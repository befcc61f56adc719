"""Stateless handler agents: simulated external services behind Kafka command topics."""

from sagastream.examples import events
from sagastream.examples.base import Behaviour, SimulatedService
from sagastream.examples.credit import CreditService
from sagastream.examples.disbursement import DisbursementService
from sagastream.examples.documents import DocumentService
from sagastream.examples.inventory import InventoryService
from sagastream.examples.notification import NotificationService
from sagastream.examples.payment import PaymentService
from sagastream.examples.shipping import ShippingService

SERVICES: dict[str, type[SimulatedService]] = {
    "payment": PaymentService,
    "inventory": InventoryService,
    "shipping": ShippingService,
    "notification": NotificationService,
    "credit": CreditService,
    "documents": DocumentService,
    "disbursement": DisbursementService,
}

__all__ = ["SERVICES", "Behaviour", "SimulatedService", "events"]
