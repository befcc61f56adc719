"""The demo's simulated services, written on sagastream's public API as a team writes its own.

`app` is what `sagastream worker --app sagastream.examples` (or `app:` in topology.yaml) runs.
"""

from sagastream.examples import (
    credit,
    disbursement,
    documents,
    events,
    inventory,
    notification,
    payment,
    shipping,
)
from sagastream.examples.app import app

__all__ = [
    "app",
    "credit",
    "disbursement",
    "documents",
    "events",
    "inventory",
    "notification",
    "payment",
    "shipping",
]
