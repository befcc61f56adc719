"""A schema registry that is down while the workers start, or restarts empty under them.

Real broker, real worker processes, and a registry of each test's own on a free port (never
the shared one), so that the test can stop and start it.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagastream.local import registry as localregistry
from sagastream.ops.client import EventClient, Received
from sagastream.ops.demo import WorkerSet
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore
from sagastream.wire.dlq import read_dead_letter_headers
from sagastream.wire.registry import Registry, plan_subjects, register_subjects
from sagastream.wire.registry import build_codec as registry_codec
from tests.integration.conftest import HANDLERS, Namespace
from tests.integration.faults import wait_all_ended
from tests.integration.helpers import every_dead_letter, free_port, good_order

pytestmark = pytest.mark.integration

# longer than the order saga's step timeouts (15 s): armed timers come due while it is down
OUTAGE_S = 25.0
# how often the workers of the restart test look their ids up again
RECHECK_S = "5"


def _quiet(message: str) -> None:
    """The registry's start and stop lines are not this test's output."""


@pytest.fixture
def own_registry() -> Iterator[int]:
    """The port of a registry this test starts and stops itself; stopped and removed after."""
    port = free_port()
    data = localregistry.db_path(port).parent
    shutil.rmtree(data, ignore_errors=True)
    yield port
    localregistry.stop(log=_quiet, port=port)
    shutil.rmtree(data, ignore_errors=True)


def _world(ns: Namespace, url: str, order_placed_last: bool = False) -> Namespace:
    """The test's topics, with its subjects registered in `url` and a client whose ids are
    all resolved (it goes on writing them while the registry is down)."""
    settings = ns.settings.model_copy(update={"schema_registry_url": url})
    subjects = plan_subjects(ns.topology, SchemaStore(Settings().schemas_path), settings)
    # OrderPlaced last: its id is the largest, so after a restart its new (first) id is one
    # that named another event before, which a worker that ran through has cached
    groups = (
        [[s for s in subjects if s.event_type != "OrderPlaced"]]
        + [[s for s in subjects if s.event_type == "OrderPlaced"]]
        if order_placed_last
        else [subjects]
    )
    for group in groups:
        refused = [o for o in register_subjects(Registry(url), group) if o.failed]
        assert not refused, f"the registry refused {refused}"
    # this producer keeps the ids it resolved now, whatever the registry does later
    return _client_world(ns, settings.model_copy(update={"schema_ids_recheck_s": 3600.0}))


def _client_world(ns: Namespace, settings: Settings) -> Namespace:
    codec = registry_codec(settings)
    codec.prepare(ns.topology.events)
    return Namespace(settings, ns.topology, EventClient(settings, ns.topology, codec, "test"))


def _publish(world: Namespace, keys: set[str]) -> None:
    for key in sorted(keys):
        world.client.publish("OrderPlaced", key, good_order(key))
    world.client.flush()


def _outcomes_by_header(world: Namespace, keys: set[str], workers: WorkerSet) -> list[Received]:
    """Outcome records of these sagas, typed by their event_type header (not by decoding:
    an outcome written with an id the registry has since given away would not decode)."""
    deadline = time.monotonic() + 150
    while True:
        workers.check_alive()
        found = [
            m
            for m in world.client.read_to_end([world.topic("sagas.outcomes")])
            if m.key and m.key.decode() in keys and dict(m.headers).get("event_type")
        ]
        if {m.key.decode() for m in found if m.key} >= keys or time.monotonic() > deadline:
            return found
        time.sleep(2)


def _stop_cleanly(workers: WorkerSet) -> None:
    """Every worker ends with exit code 0 on SIGTERM: none died on the way."""
    for role in list(workers.procs):
        code, _ = workers.terminate(role)
        assert code == 0, f"worker {role} exited with {code}; log in {workers.log_dir}"


def test_a_registry_down_while_the_workers_start_makes_them_wait_not_die(
    ns: Namespace, own_registry: int, tmp_path: Path
) -> None:
    """Issue 14, finding 4: sagas in flight, their timers armed; the orchestrator and the
    handlers start while the registry is down and more orders arrive; it comes back after
    the step timeouts. No worker dies, every saga completes, nothing is dead-lettered."""
    url = localregistry.start(log=_quiet, port=own_registry, persist=True)
    world = _world(ns, url)
    early = {f"early-{i}" for i in range(6)}
    first = WorkerSet(world.settings, tmp_path / "before")
    try:
        first.start(["orchestrator"])
        first.wait_ready()
        _publish(world, early)

        def commanded(msgs: list[Any]) -> bool:
            charged = {m.key.decode() for m in msgs if m.event_type == "ChargePayment"}
            return charged >= early

        # decided: the first commands are out (no handler runs yet) and their timers armed
        world.client.read([world.topic("payments.commands")], commanded, 60)
        _stop_cleanly(first)
    finally:
        first.stop()

    localregistry.stop(log=_quiet, port=own_registry)
    down_since = time.monotonic()
    workers = WorkerSet(world.settings, tmp_path / "during")
    try:
        workers.start(["orchestrator", HANDLERS])
        workers.wait_ready()
        late = {f"late-{i}" for i in range(6)}
        _publish(world, late)  # the client knows its ids: it writes while the registry is down
        while time.monotonic() - down_since < OUTAGE_S:
            workers.check_alive()
            time.sleep(1)
        localregistry.start(log=_quiet, port=own_registry, persist=True)

        outcomes = wait_all_ended(world, early | late, workers, 150)
        per_saga = Counter(m.key.decode() for m in outcomes if m.key)
        assert sorted((early | late) - set(per_saga)) == [], "sagas without an outcome"
        assert {k: n for k, n in per_saga.items() if n != 1} == {}, "sagas with several outcomes"
        assert {m.event_type for m in outcomes} == {"SagaCompleted"}
        assert [
            (m.topic, read_dead_letter_headers(m.headers)) for m in every_dead_letter(world)
        ] == []
        _stop_cleanly(workers)
    finally:
        workers.stop()
        world.client.close()


def test_a_registry_restarted_empty_under_running_producers(
    ns: Namespace, own_registry: int, tmp_path: Path
) -> None:
    """Issue 20, finding 2: the registry (in memory) restarts empty while the workers and a
    producer keep running with the ids they had, and a new producer registers anew, so old
    ids come to name other schemas. Sagas started after the restart complete; an orchestrator
    started after it cannot read what the old producer still writes, and dead-letters it
    saying why; nothing is decoded as the wrong type."""
    url = localregistry.start(log=_quiet, port=own_registry, persist=False)
    world = _world(ns, url, order_placed_last=True)
    assert world.settings.schema_ids_recheck_s > 600, "the old producer keeps its ids"
    workers = WorkerSet(world.settings, tmp_path / "workers")
    recheck = {"SAGASTREAM_SCHEMA_IDS_RECHECK_S": RECHECK_S}
    try:
        workers.start(["orchestrator", HANDLERS], extra_env=recheck)
        workers.wait_ready()
        before = {f"before-{i}" for i in range(6)}
        _publish(world, before)
        wait_all_ended(world, before, workers, 60)

        localregistry.stop(log=_quiet, port=own_registry)
        localregistry.start(log=_quiet, port=own_registry, persist=False)  # empty
        fresh = _client_world(ns, ns.settings.model_copy(update={"schema_registry_url": url}))
        after = {f"after-{i}" for i in range(6)}
        _publish(fresh, after)  # OrderPlaced gets an id that named another event before
        outcomes = _outcomes_by_header(fresh, after, workers)
        kinds = {m.key.decode(): dict(m.headers)["event_type"].decode() for m in outcomes if m.key}
        assert kinds == dict.fromkeys(after, "SagaCompleted"), (
            "sagas started after the restart must complete"
        )

        # an orchestrator that starts now knows no old id; the old producer still writes them
        code, _ = workers.terminate("orchestrator")
        assert code == 0
        workers.start(["orchestrator"], extra_env=recheck)
        workers.wait_ready()
        stale = {f"stale-{i}" for i in range(4)}
        _publish(world, stale)

        def parked(msgs: list[Received]) -> bool:
            return {m.key.decode() for m in msgs if m.key} >= stale

        dlq = world.topic(world.topology.dlq("orders.events"))
        world.client.read([dlq], parked, 60)
        letters = [(m.key, read_dead_letter_headers(m.headers)) for m in every_dead_letter(world)]
        assert {k.decode() for k, _ in letters if k} >= stale, "stale orders dead-lettered"
        wrong = [
            (key, h)
            for key, h in letters
            if h.get("reason") not in ("schema_mismatch", "unknown_schema_id")
            or "lost" not in h.get("error", "")
        ]
        assert wrong == [], "dead letters for another cause, or that do not name it"
        _stop_cleanly(workers)
    finally:
        workers.stop()
        world.client.close()
