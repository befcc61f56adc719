"""The demo's App: each simulated service registers its handler functions here."""

from __future__ import annotations

from sagastream.app import App
from sagastream.examples.base import SimulatedService
from sagastream.runtime.settings import Settings

app = App()
_services: dict[str, SimulatedService] = {}


def service(role: str) -> SimulatedService:
    """The simulated service of a role, opened when a worker starts the app."""
    return _services.setdefault(role, SimulatedService(role))


@app.on_startup
def open_services(settings: Settings) -> None:
    for simulated in _services.values():
        simulated.open(settings)
