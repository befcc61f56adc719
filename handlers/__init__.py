"""Stateless handler agents: simulated external services behind Kafka command topics."""

from handlers.base import Behaviour, SimulatedService
from handlers.inventory import InventoryService
from handlers.notification import NotificationService
from handlers.payment import PaymentService
from handlers.shipping import ShippingService

SERVICES: dict[str, type[SimulatedService]] = {
    "payment": PaymentService,
    "inventory": InventoryService,
    "shipping": ShippingService,
    "notification": NotificationService,
}

__all__ = ["SERVICES", "Behaviour", "SimulatedService"]
