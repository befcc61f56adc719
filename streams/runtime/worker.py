"""A consumer-group worker process for one or more roles (the orchestrator, or handlers)."""

from __future__ import annotations

import contextlib
import logging

from streams.core.topology import Topology, load_topology
from streams.runtime.app import Runtime, make_runtime
from streams.runtime.settings import Settings
from streams.wire.codec import RegistryUnavailable

ORCHESTRATOR = "orchestrator"


def roles_of(topology: Topology) -> list[str]:
    """Every role a worker can run: the orchestrator and each handler in topology.yaml."""
    return [ORCHESTRATOR, *topology.handlers]


def parse_roles(spec: str, topology: Topology) -> list[str]:
    """'all', one role, or a comma-separated list of roles."""
    known = roles_of(topology)
    roles = known if spec == "all" else [r.strip() for r in spec.split(",") if r.strip()]
    unknown = [r for r in roles if r not in known]
    if unknown or not roles:
        raise ValueError(
            f"unknown role(s) {', '.join(unknown) or spec!r}; choose from all, {', '.join(known)}"
        )
    return roles


def group_role(roles: list[str], topology: Topology) -> str:
    """The name a worker's consumer group is derived from."""
    return "all" if sorted(roles) == sorted(roles_of(topology)) else "_".join(roles)


def build_worker(settings: Settings, roles: list[str]) -> Runtime:
    """A faust app with the agents of the given roles."""
    from handlers.agent import install_handler
    from streams.runtime.orchestrator import install_orchestrator

    topology = load_topology(settings.topology_file)
    # Handlers are at-least-once with idempotency keys; only the orchestrator needs transactions.
    guarantee = None if ORCHESTRATOR in roles else "at_least_once"
    rt = make_runtime(settings, group_role(roles, topology), guarantee)
    for role in roles:
        if role == ORCHESTRATOR:
            install_orchestrator(rt)
        else:
            install_handler(rt, role)
    return rt


def run_worker(settings: Settings, spec: str, loglevel: str = "warning") -> None:
    """Run until SIGTERM/SIGINT; faust's Worker stops the consumer cleanly (leaves the group)."""
    from faust.worker import Worker

    rt = build_worker(settings, parse_roles(spec, load_topology(settings.topology_file)))
    rt.metrics.serve(settings.metrics_port)
    # learn every schema id before consuming; if the registry is down, the first input retries
    with contextlib.suppress(RegistryUnavailable):
        rt.codec.prepare(rt.topology.events)

    @rt.app.task
    async def log_at_the_level_asked() -> None:
        # mode leaves the root logger at DEBUG and filters in its handler, so every debug call
        # in aiokafka's and faust's send path built a record: about 10% of the orchestrator's CPU
        logging.getLogger().setLevel(loglevel.upper())

    Worker(rt.app, loglevel=loglevel, quiet=True).execute_from_commandline()
