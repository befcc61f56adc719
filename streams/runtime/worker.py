"""A consumer-group worker process: the orchestrator and/or handler roles, each on its own thread.

SIGTERM or SIGINT sets one stop event; every role stops fetching, commits what finished and
leaves its group within `drain_timeout_s`. A role that has not ended a few seconds after that
is abandoned and the process exits anyway (os._exit): a worker never ignores SIGTERM. Plain
handler functions run on daemon threads, so one that never returns does not hold the process
either.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from sagastream.core.topology import Topology, load_topology
from sagastream.errors import SagastreamError, UsageError
from sagastream.runtime import health, logs
from sagastream.runtime.definitions import DefinitionBook
from sagastream.runtime.health import Check
from sagastream.runtime.limits import RecordLimits, discover
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, RegistryRefused, RegistryUnavailable, SchemaStore
from sagastream.wire.registry import build_codec, retry_delay

if TYPE_CHECKING:
    from sagastream.app import App, RoleHandler

log = logging.getLogger("sagastream.worker")

ORCHESTRATOR = "orchestrator"
# past the drain bound, how long a role may take to close its clients before it is abandoned
CLOSE_GRACE_S = 5.0
# new container objects between two young collections of the cyclic GC (Python's default: 700).
# Each input allocates hundreds that reference counting frees anyway, so at 700 the GC ran
# every few inputs; tests/perf/orchestrator_profile measures it (see settle_heap).
GC_YOUNG_THRESHOLD = 10_000


def roles_of(topology: Topology) -> list[str]:
    """Every role a worker can run: the orchestrator and each handler in topology.yaml."""
    return [ORCHESTRATOR, *topology.handlers]


def parse_roles(spec: str, topology: Topology) -> list[str]:
    """'all', one role, or a comma-separated list of roles."""
    known = roles_of(topology)
    roles = known if spec == "all" else [r.strip() for r in spec.split(",") if r.strip()]
    unknown = [r for r in roles if r not in known]
    if unknown or not roles:
        raise UsageError(
            f"unknown role(s) {', '.join(unknown) or spec!r}; choose from all, {', '.join(known)}"
        )
    return roles


def written_topics(settings: Settings, topology: Topology, roles: list[str]) -> list[str]:
    """The physical topics the `roles` write: all a worker asks the broker about."""
    from sagastream.ops.acls import handler_topics, orchestrator_topics

    topics: list[str] = []
    for role in roles:
        if role == ORCHESTRATOR:
            topics += orchestrator_topics(settings, topology)[1]
        else:
            topics += handler_topics(role, settings, topology)[1]
    return list(dict.fromkeys(topics))


def record_limits(
    settings: Settings, topology: Topology, roles: list[str] | None = None
) -> RecordLimits:
    """max_record_bytes, lowered for every topic the `roles` (default: all) write that accepts
    less."""
    return discover(settings, written_topics(settings, topology, roles or roles_of(topology)))


def _create_topics(settings: Settings, topology: Topology, failures: int) -> bool:
    """One try at creating what is missing of the orchestrator's own topics (the changelog above
    all), with no CREATE asked for when they are there; False, and said, while the brokers do
    not answer (after `failures` tries already)."""
    from confluent_kafka import KafkaError, KafkaException

    from sagastream.ops.acls import orchestrator_topics
    from sagastream.ops.admin import create_topics

    reads, writes = orchestrator_topics(settings, topology)
    try:
        report = create_topics(
            settings, topology, timeout=10, only={*reads, *writes}, role=ORCHESTRATOR
        )  # idempotent
    except KafkaException as exc:
        log.warning(
            "waiting for the brokers at %s to create the topics (%s); next try in %.1fs",
            settings.bootstrap_servers,
            exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc,
            retry_delay(failures),
        )
        return False
    for weaker in report.weaker:
        log.warning("topic less durable than topology.yaml asks: %s", weaker)
    if failures:
        log.warning("the brokers at %s answer; the topics are there", settings.bootstrap_servers)
    return True


def _after_topics(
    settings: Settings,
    topology: Topology,
    run: Callable[[threading.Event], None],
    alive: Callable[[], None],
    stop: threading.Event,
) -> None:
    """`run` once the topics are there: a worker started before its brokers (its first try at
    start failed) waits for them with backoff until `stop`; a wait on purpose, so each try
    tells `alive`."""
    failures = 1
    while not stop.wait(retry_delay(failures - 1)):
        alive()
        if _create_topics(settings, topology, failures):
            run(stop)
            return
        failures += 1


def bind_handlers(
    settings: Settings, topology: Topology, roles: list[str]
) -> tuple[App, dict[str, RoleHandler]]:
    """The app's functions bound to each handler role: what a worker checks before it starts
    (and `sagastream validate` too): the app module imports, every command of each role has a
    function, and each function's declared return type keeps the handler contract."""
    from sagastream.app import AppError, load_app

    module = settings.app or topology.app
    if not module:
        raise AppError(
            f"handler roles {', '.join(roles)} need the module of their functions: "
            f"pass --app MODULE or set `app:` in {settings.topology_file}"
        )
    app = load_app(module)
    return app, {role: app.role_handler(role, topology) for role in roles}


def _prepare_ids(codec: AvroCodec, topology: Topology) -> None:
    """Learn every schema id before consuming. If the registry is down, inputs wait and retry
    later; if it refuses the credentials, the worker stops now: waiting will not fix them."""
    try:
        codec.prepare(topology.events)
    except RegistryRefused as exc:
        raise RegistryRefused(
            f"{exc}. Not starting: check SAGASTREAM_SCHEMA_REGISTRY_USERNAME and "
            "SAGASTREAM_SCHEMA_REGISTRY_PASSWORD (or _TOKEN, or their _FILE forms)"
        ) from None
    except RegistryUnavailable:
        pass


def settle_heap() -> None:
    """Once the process has started: what it loaded (modules, topology, schemas, clients) lives
    as long as it does, so it is frozen out of every later collection (gc.freeze), and young
    collections wait for GC_YOUNG_THRESHOLD new objects. In the orchestrator's profile
    (2,000 order sagas) the GC took 124 µs per saga in 378 collections before, 48 in 20 after."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def run_worker(settings: Settings, spec: str, loglevel: str = "warning") -> int:
    """Run the roles of `spec` until SIGTERM/SIGINT; returns the exit code."""
    logs.setup(loglevel, settings.log_format)
    settings.check_librdkafka()
    topology = load_topology(settings.topology_file, settings.schemas_path)
    roles = parse_roles(spec, topology)
    schemas = SchemaStore(settings.schemas_path)
    # the topics first, so the limits read their configs; if the brokers are not up yet, the
    # orchestrator role waits for them (and for its topics), the process does not exit
    topics_there = ORCHESTRATOR not in roles or _create_topics(settings, topology, 0)
    book = None
    if ORCHESTRATOR in roles and topics_there:
        # what older instances need and the file no longer has joins the topology and schemas
        book = DefinitionBook(settings, topology, schemas)
        book.read()
        topology = book.with_recorded_events()
    codec = build_codec(settings, schemas, topology)
    metrics = Metrics.create(",".join(roles))
    _prepare_ids(codec, topology)
    limits = record_limits(settings, topology, roles)

    runners: dict[str, Callable[[threading.Event], None]] = {}
    # per role: is its loop advancing (/healthz), is it ready (/readyz)
    probes: dict[str, tuple[Callable[[], Check], Callable[[], Check]]] = {}
    handler_roles = [role for role in roles if role != ORCHESTRATOR]
    if handler_roles:
        from sagastream.runtime.handler_loop import HandlerLoop

        app, handlers = bind_handlers(settings, topology, handler_roles)
        app.start(settings)
        for role, handler in handlers.items():
            loop = HandlerLoop(
                settings,
                topology,
                schemas,
                codec,
                role,
                handler,
                handler.commands,
                metrics,
                is_async=handler.is_async,
                limits=limits,
            )
            runners[role] = loop.run
            probes[role] = (loop.health.alive, loop.readiness)
    if ORCHESTRATOR in roles:
        from sagastream.runtime.orchestrator import Orchestrator

        orchestrator = Orchestrator(settings, topology, schemas, codec, metrics, limits, book)
        runners[ORCHESTRATOR] = (
            orchestrator.run
            if topics_there
            else partial(
                _after_topics, settings, topology, orchestrator.run, orchestrator.health.advanced
            )
        )
        probes[ORCHESTRATOR] = (orchestrator.health.alive, orchestrator.readiness)

    stop = threading.Event()
    failed: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # a second signal: the operator means it
        log.warning("signal %d: draining (at most %.0fs)", signum, settings.drain_timeout_s)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def guarded(role: str, run: Callable[[threading.Event], None]) -> None:
        try:
            run(stop)
        except SagastreamError as exc:  # expected, and explained by its message
            log.error("role %s stopped the worker: %s", role, exc)
            failed.append(role)
            stop.set()
        except Exception:
            log.exception("role %s failed; stopping the worker", role)
            failed.append(role)
            stop.set()

    threads = [
        threading.Thread(target=guarded, args=(role, run), name=role, daemon=True)
        for role, run in runners.items()
    ]
    settle_heap()
    for thread in threads:
        thread.start()

    def alive() -> dict[str, Check]:
        stopped = Check.of(["stopping"])
        return {
            t.name: probes[t.name][0]() if t.is_alive() and not stop.is_set() else stopped
            for t in threads
        }

    if settings.metrics_port:
        server = health.serve(
            metrics.registry,
            alive,
            lambda: {role: probe[1]() for role, probe in probes.items()},
            settings.metrics_host,
            settings.metrics_port,
            settings.http_limits(),
        )
        log.info("serving /metrics, /healthz and /readyz on %s:%d", *server.server_address[:2])
    log.info("worker running %s", ", ".join(roles))
    while not stop.is_set():
        stop.wait(0.5)
    stopping = time.monotonic()
    deadline = stopping + settings.drain_timeout_s + CLOSE_GRACE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if not stuck:
        log.info("stopped in %.1fs", time.monotonic() - stopping)
    metrics.up.labels(",".join(roles)).set(0)
    if stuck:
        log.error("roles %s did not stop within the drain bound; exiting anyway", stuck)
        logging.shutdown()
        os._exit(1)
    return 1 if failed else 0
