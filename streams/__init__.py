"""sagastream: sagas over Kafka. What a project imports: events, handler functions, the client.

import sagastream

class BookFlight(sagastream.Command): ...
app = sagastream.App()
sagastream.Client().start(TripRequested(...))
"""

from sagastream.app import App, Context, Fail
from sagastream.errors import SagastreamError
from sagastream.events import (
    AvroType,
    Command,
    Event,
    Float32,
    Int32,
    Record,
    TimestampMillis,
    UuidStr,
)
from sagastream.ops.client import AsyncClient, Client
from sagastream.runtime.contract import heartbeat
from sagastream.runtime.kafka_io import DeliveryFailed
from sagastream.runtime.settings import Settings

__all__ = [
    "App",
    "AsyncClient",
    "Client",
    "AvroType",
    "Command",
    "Context",
    "DeliveryFailed",
    "Event",
    "Fail",
    "Float32",
    "Int32",
    "Record",
    "SagastreamError",
    "Settings",
    "TimestampMillis",
    "UuidStr",
    "heartbeat",
]
