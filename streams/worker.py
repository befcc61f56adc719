"""A consumer-group worker process for one or more roles."""

from __future__ import annotations

import logging

from streams.app import Runtime, make_runtime
from streams.settings import Settings

HANDLER_ROLES = ("payment", "inventory", "shipping", "notification")
ROLES = ("orchestrator", *HANDLER_ROLES)


def parse_roles(spec: str) -> list[str]:
    """'all', one role, or a comma-separated list of roles."""
    roles = list(ROLES) if spec == "all" else [r.strip() for r in spec.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(f"unknown role(s) {', '.join(unknown) or spec!r}; choose from all, {', '.join(ROLES)}")
    return roles


def build_worker(settings: Settings, roles: list[str]) -> Runtime:
    """A faust app with the agents of the given roles; its consumer group is named after them."""
    from handlers.agent import install_handler
    from streams.orchestrator import install_orchestrator

    name = "all" if sorted(roles) == sorted(ROLES) else "_".join(roles)
    # Handlers are at-least-once with idempotency keys; only the orchestrator needs transactions.
    guarantee = None if "orchestrator" in roles else "at_least_once"
    rt = make_runtime(settings, name, guarantee)
    if "orchestrator" in roles:
        install_orchestrator(rt)
    for role in roles:
        if role in HANDLER_ROLES:
            install_handler(rt, role)
    return rt


def run_worker(settings: Settings, roles: list[str], loglevel: str = "warning") -> None:
    """Run until SIGTERM/SIGINT; faust's Worker stops the consumer cleanly (leaves the group)."""
    from faust.worker import Worker

    rt = build_worker(settings, roles)
    rt.metrics.serve(settings.metrics_port)
    logging.basicConfig(level=loglevel.upper())
    Worker(rt.app, loglevel=loglevel, quiet=True).execute_from_commandline()
