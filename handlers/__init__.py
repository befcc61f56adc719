"""Stateless handler agents: simulated external services behind Kafka command topics."""

from handlers.base import Behaviour, SimulatedService
from handlers.credit import CreditService
from handlers.disbursement import DisbursementService
from handlers.documents import DocumentService
from handlers.inventory import InventoryService
from handlers.notification import NotificationService
from handlers.payment import PaymentService
from handlers.shipping import ShippingService

SERVICES: dict[str, type[SimulatedService]] = {
    "payment": PaymentService,
    "inventory": InventoryService,
    "shipping": ShippingService,
    "notification": NotificationService,
    "credit": CreditService,
    "documents": DocumentService,
    "disbursement": DisbursementService,
}

__all__ = ["SERVICES", "Behaviour", "SimulatedService"]
