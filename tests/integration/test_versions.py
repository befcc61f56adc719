"""Versioned sagas on real workers: each instance finishes on the definition it started with.

v1 is the demo's order saga; v2 renames its shipping step (delivery), adds a step (recheck, a
second inventory check after it) and changes a retry policy. 1,000 orders are in flight on v1's
slow shipping step when the two v1 orchestrators are stopped, one by SIGTERM and one by SIGKILL,
and two v2 ones on fresh data directories (so every store is restored from the changelog) take
over: v1 sagas end with v1's steps, new ones run v2's, one outcome each, no command twice, no
dead letter.
And a state pinned to a shape no definitions record has makes its input wait (its reason on
/readyz), not dead-letter, until the definition is published.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from sagastream.core.saga import Event, decide
from sagastream.core.state import encode_state
from sagastream.core.topology import Topology, load_topology
from sagastream.ops.admin import admin_client
from sagastream.ops.demo import WorkerSet
from sagastream.ops.versions import versions
from sagastream.runtime.definitions import TOPIC, DefinitionBook
from sagastream.runtime.kafka_io import Publisher
from sagastream.runtime.outputs import Encoder
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore, new_meta
from tests.integration.faults import COMMAND_TOPICS
from tests.integration.helpers import every_dead_letter, free_port, good_order, http_get, metric

FAST_ROLES = "payment,inventory,notification"
V1_STEPS = {"payment", "inventory", "shipping"}
V2_STEPS = {"payment", "inventory", "delivery", "recheck"}
NOTIFICATION_EVENTS = ("SendNotification", "NotificationSent", "NotificationFailed")
IN_FLIGHT = 1000
AFTER = 100
# the slow shipping handler's time per command: under the step's timeout_ms (15 s), and long
# enough that no saga ends while the test stops orchestrators with their sagas in flight
SLOW_SHIPPING_MS = 10_000


def v2_data(data: dict[str, Any]) -> dict[str, Any]:
    """The demo topology with the order saga's v2: shipping renamed, a step added, a policy
    changed, and no notification (its command, results, handler and topics gone from the file:
    v1 sagas still notify, through the event types their recorded definition has)."""
    data = copy.deepcopy(data)
    for saga in data["sagas"].values():
        saga.pop("notify", None)
    del data["handlers"]["notification"]
    data["topics"] = [t for t in data["topics"] if not t["name"].startswith("notifications.")]
    for name in NOTIFICATION_EVENTS:
        del data["events"][name]
    steps = data["sagas"]["order"]["steps"]
    steps["delivery"] = steps.pop("shipping")
    undo = steps["delivery"]["compensation"]["inputs"]
    undo["delivery"] = undo.pop("shipping")
    steps["recheck"] = {**copy.deepcopy(steps["inventory"]), "depends_on": ["delivery"]}
    del steps["recheck"]["compensation"]
    steps["payment"]["retry"]["max_attempts"] = 4
    return data


@pytest.fixture
def v2(ns: Any, tmp_path: Path) -> tuple[Settings, Topology]:
    path = tmp_path / "topology-v2.yaml"
    path.write_text(yaml.safe_dump(v2_data(yaml.safe_load(ns.settings.topology_file.read_text()))))
    settings = ns.settings.model_copy(
        update={"topology_file": path, "schemas_dir": ns.settings.schemas_path}
    )
    topology = load_topology(path, settings.schemas_path)
    assert topology.sagas["order"].shape != ns.topology.sagas["order"].shape
    assert not set(NOTIFICATION_EVENTS) & set(topology.events)
    return settings, topology


def workers(settings: Settings, logs: Path, role: str, **env: str) -> WorkerSet:
    started = WorkerSet(settings, logs)
    started.start([role], extra_env=env)
    started.wait_ready()
    return started


def stopped_at_start(settings: Settings, logs: Path) -> str:
    """An orchestrator that must exit at start: it does (non-zero), and its log."""
    refused = WorkerSet(settings, logs)
    refused.start(["orchestrator"])
    try:
        code = refused.procs["orchestrator"].wait(90)
    finally:
        refused.stop()
    assert code != 0
    return (logs / "orchestrator.log").read_text()


def outcomes(ns: Any) -> list[Any]:
    found = ns.client.read_to_end([ns.topic("sagas.outcomes")])
    return [m for m in found if m.event_type in ("SagaCompleted", "SagaCompensated", "SagaFailed")]


def wait_outcomes(ns: Any, keys: set[str], running: list[WorkerSet], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        for worker in running:
            worker.check_alive()
        found = outcomes(ns)
        if {m.key.decode() for m in found} >= keys or time.monotonic() > deadline:
            return found
        time.sleep(2)


def test_sagas_in_flight_on_v1_end_on_v1_while_new_ones_run_v2(
    ns: Any, tmp_path: Path, v2: tuple[Settings, Topology]
) -> None:
    v2_settings, v2_topology = v2
    assert ns.topology.sagas["order"].steps["shipping"].timeout_ms > SLOW_SHIPPING_MS
    port = free_port()
    running = [
        workers(ns.settings, tmp_path / "fast", FAST_ROLES),
        # the slow step: every v1 saga is still on it when its orchestrator stops. All its
        # commands run at once (not in waves of 256 every 4 s, which ended 512 sagas 8 s after
        # the first command: sending 1,000 and stopping the orchestrators can take that long on
        # a loaded machine), each for 10 s, within the step's 15 s run-time bound
        workers(
            ns.settings,
            tmp_path / "slow",
            "shipping",
            SAGASTREAM_HANDLER_LATENCY_MS=str(SLOW_SHIPPING_MS),
            SAGASTREAM_HANDLER_CONCURRENCY=str(2 * IN_FLIGHT),
        ),
    ]
    old = [workers(ns.settings, tmp_path / f"v1-{n}", "orchestrator") for n in "ab"]
    # the v2 orchestrators start on an empty data directory: every store comes from the changelog
    v2_settings = v2_settings.model_copy(update={"data_dir": tmp_path / "v2-data"})
    try:
        first = [f"v1-{i:04d}" for i in range(IN_FLIGHT)]
        for key in first:
            ns.client.publish("OrderPlaced", key, good_order(key))
        ns.client.flush(60)
        shipping = ns.topic("shipping.commands")
        commanded = ns.client.read([shipping], lambda ms: len(ms) >= IN_FLIGHT, timeout=120)
        assert len(commanded) >= IN_FLIGHT
        code, _ = old[0].terminate("orchestrator")
        assert code == 0
        old[1].kill("orchestrator")
        ended_on_v1 = {m.key.decode() for m in outcomes(ns)}
        assert len(ended_on_v1) <= IN_FLIGHT // 2, "the v1 sagas were not in flight at the stop"

        running += [
            workers(
                v2_settings, tmp_path / "v2-a", "orchestrator", SAGASTREAM_METRICS_PORT=str(port)
            ),
            workers(v2_settings, tmp_path / "v2-b", "orchestrator"),
        ]
        second = [f"v2-{i:04d}" for i in range(AFTER)]
        for key in second:
            ns.client.publish("OrderPlaced", key, good_order(key))
        ns.client.flush(60)

        found = wait_outcomes(ns, {*first, *second}, running, timeout=240)
        per_saga = Counter(m.key.decode() for m in found)
        assert sorted({*first, *second} - set(per_saga)) == [], "sagas without an outcome"
        assert {k: n for k, n in per_saga.items() if n != 1} == {}, "several outcomes"
        steps = {m.key.decode(): (m.event_type, set(m.record["completed_steps"])) for m in found}
        assert {
            k: s for k, s in steps.items() if k in first and s != ("SagaCompleted", V1_STEPS)
        } == {}
        assert {
            k: s for k, s in steps.items() if k in second and s != ("SagaCompleted", V2_STEPS)
        } == {}

        # v1's notification, which only its recorded definition has: once per v1 saga (email)
        notified = Counter(
            m.key.decode()
            for m in ns.client.read_to_end([ns.topic("notifications.commands")])
            if m.event_type == "SendNotification"
        )
        assert {k: n for k, n in notified.items() if k in first and n < 1} == {}
        assert set(first) <= set(notified) and not set(second) & set(notified)

        for topic in (*COMMAND_TOPICS, "notifications.commands"):
            msgs = [m for m in ns.client.read_to_end([ns.topic(topic)]) if m.record]
            seen = Counter((m.record["idempotency_key"], m.record["meta"]["attempt"]) for m in msgs)
            assert {k: n for k, n in seen.items() if n > 1} == {}, f"a command twice on {topic}"
        assert every_dead_letter(ns) == []

        book = DefinitionBook(v2_settings, v2_topology, SchemaStore(v2_settings.schemas_path))
        rows = {r.version: r for r in versions(v2_settings, v2_topology, book) if r.saga == "order"}
        assert (rows[1].shape, rows[1].state) == (ns.topology.sagas["order"].shape, "retired")
        assert (rows[2].shape, rows[2].state) == (v2_topology.sagas["order"].shape, "current")
        # counted at restore and on each end: every v1 saga the v2 orchestrators restored ended
        assert metric(port, "sagastream_saga_versions_running", saga="order", version="1") == 0
        assert metric(port, "sagastream_saga_versions_running", saga="order", version="2") == 0
        for worker in running:
            worker.check_alive()
    finally:
        for worker in [*running, *old]:
            worker.stop()


def stored_on(ns: Any, settings: Settings, topology: Topology, key: str) -> None:
    """What an orchestrator running `topology` leaves when it starts an order: its state in the
    changelog and its first commands on their topics, as if it had run and stopped."""
    now = time.time_ns() // 1_000_000
    fields = good_order(key)
    decision = decide(
        ("order", topology.sagas["order"]),
        None,
        Event("OrderPlaced", uuid.uuid4().hex, fields),
        now,
    )
    assert decision.state is not None and decision.commands
    parent = new_meta("OrderPlaced", key, "test", now_ms=now)
    encoder = Encoder(
        settings, topology, SchemaStore(settings.schemas_path), ns.client.codec, "test"
    )
    publisher = Publisher(settings.producer_config())
    publisher.send(settings.changelog_topic(), key.encode(), encode_state(decision.state))
    for c in decision.commands:
        out = encoder.derived(c.event_type, key.encode(), c.fields, parent, c.attempt, now, c.step)
        publisher.send(out.topic, out.key, out.value, out.headers)
    publisher.close()


def test_a_state_of_an_unpublished_shape_waits_and_goes_on_once_it_is_published(
    ns: Any, tmp_path: Path, v2: tuple[Settings, Topology]
) -> None:
    v2_settings, v2_topology = v2
    shape = v2_topology.sagas["order"].shape
    stored_on(ns, v2_settings, v2_topology, "unpublished-1")
    port = free_port()
    running = [
        workers(ns.settings, tmp_path / "handlers", f"{FAST_ROLES},shipping"),
        workers(ns.settings, tmp_path / "v1", "orchestrator", SAGASTREAM_METRICS_PORT=str(port)),
    ]
    try:
        reason = ""
        deadline = time.monotonic() + 60
        while shape not in reason and time.monotonic() < deadline:
            time.sleep(1)
            status, body = http_get(port, "/readyz")
            reason = json.dumps(json.loads(body).get("reasons", {}))
        assert status == 503 and "saga order with shape " + shape in reason
        assert "aborted" not in reason  # a wait opens no transaction it could not commit
        assert outcomes(ns) == [] and every_dead_letter(ns) == []

        book = DefinitionBook(v2_settings, v2_topology, SchemaStore(v2_settings.schemas_path))
        published = book.publish("test", time.time_ns() // 1_000_000)
        # the loan saga's only change is a policy (no notification): an update of its v1
        assert {(d.saga, d.version) for d in published} == {("order", 2), ("loan", 1)}
        (ended,) = wait_outcomes(ns, {"unpublished-1"}, running, timeout=60)
        assert (ended.event_type, set(ended.record["completed_steps"])) == (
            "SagaCompleted",
            V2_STEPS,
        )
        assert every_dead_letter(ns) == []
        assert http_get(port, "/readyz")[0] == 200
    finally:
        for worker in running:
            worker.stop()


def refuse_definitions(ns: Any) -> None:
    """The broker refuses every record of 1,000 bytes or more on the definitions topic (a saga
    definition is several KB): set, then probed until it holds."""
    topic = ns.topic(TOPIC)
    entry = ConfigEntry("max.message.bytes", "1000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    admin = admin_client(ns.settings)  # kept: the futures die with their client
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    probe = Producer(ns.settings.producer_config())
    deadline = time.monotonic() + 30
    while True:
        answers: list[KafkaError | None] = []
        probe.produce(
            topic, b"x" * 2000, on_delivery=lambda err, _msg, into=answers: into.append(err)
        )
        probe.flush(30)
        if answers and answers[0] is not None:
            return
        assert time.monotonic() < deadline, f"{topic} still takes large records"
        time.sleep(0.2)


def test_an_orchestrator_whose_definitions_are_refused_does_not_start(
    ns: Any, tmp_path: Path
) -> None:
    refuse_definitions(ns)
    log = stopped_at_start(ns.settings, tmp_path / "refused")
    assert "records were not written" in log and ns.topic(TOPIC) in log
    assert "MSG_SIZE_TOO_LARGE" in log
    # it consumed nothing: no consumer group of the orchestrator was ever joined
    assert "orchestrator consuming" not in log


def test_a_definition_with_event_types_published_after_the_start_waits_for_a_restart(
    ns: Any, tmp_path: Path, v2: tuple[Settings, Topology]
) -> None:
    v2_settings, _ = v2
    stored_on(ns, ns.settings, ns.topology, "older-1")  # a v1 order, under way
    port = free_port()
    handlers = workers(ns.settings, tmp_path / "handlers", f"{FAST_ROLES},shipping")
    # v2 has no notifications, and no v1 record is there when it starts
    v2_env = {"SAGASTREAM_METRICS_PORT": str(port)}
    orchestrator = workers(v2_settings, tmp_path / "v2", "orchestrator", **v2_env)
    try:
        book = DefinitionBook(ns.settings, ns.topology, SchemaStore(ns.settings.schemas_path))
        assert book.publish("test", time.time_ns() // 1_000_000)  # v1, after v2 started
        reason = ""
        deadline = time.monotonic() + 60
        while "SendNotification" not in reason and time.monotonic() < deadline:
            time.sleep(1)
            reason = json.dumps(json.loads(http_get(port, "/readyz")[1]).get("reasons", {}))
        assert "uses event types this orchestrator did not load" in reason
        assert "SendNotification" in reason and "aborted" not in reason
        assert outcomes(ns) == [] and every_dead_letter(ns) == []

        code, _ = orchestrator.terminate("orchestrator")
        assert code == 0
        orchestrator.start(["orchestrator"], extra_env=v2_env)  # it reads them at start
        (ended,) = wait_outcomes(ns, {"older-1"}, [handlers, orchestrator], timeout=60)
        assert (ended.event_type, set(ended.record["completed_steps"])) == (
            "SagaCompleted",
            V1_STEPS,
        )
        notified = ns.client.read_to_end([ns.topic("notifications.commands")])
        sent = [m for m in notified if m.event_type == "SendNotification" and m.record]
        assert {m.key for m in sent} == {b"older-1"}  # a command per channel its rules choose
        assert len({m.record["idempotency_key"] for m in sent}) == len(sent)
        assert every_dead_letter(ns) == []
    finally:
        handlers.stop()
        orchestrator.stop()


def test_a_rollback_to_v1_leaves_the_v2_sagas_on_v2(
    ns: Any, tmp_path: Path, v2: tuple[Settings, Topology], monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 is published, v2 deployed; orders wait on v2's slow delivery step when v1's file goes
    back out. `topology check` of v1's file against what is deployed (v2) says version: allowed;
    the v1 orchestrator then finishes the v2 sagas on v2's steps and starts new ones on v1."""
    from sagastream.ops import cli
    from sagastream.ops.demo import settings_env

    v2_settings, v2_topology = v2
    for name, value in settings_env(ns.settings).items():
        monkeypatch.setenv(name, value)
    assert cli.main(["topics", "create"]) == 0  # publishes v1, as the first deploy did
    running = [
        workers(ns.settings, tmp_path / "fast", FAST_ROLES),
        # 10 s, not 6: the v2 orchestrator must stop while the shipments run, and sending the
        # orders, reading their commands and its graceful stop take seconds on a loaded machine
        workers(
            ns.settings,
            tmp_path / "slow",
            "shipping",
            SAGASTREAM_HANDLER_LATENCY_MS=str(SLOW_SHIPPING_MS),
        ),
    ]
    new = workers(v2_settings, tmp_path / "v2", "orchestrator")
    old: WorkerSet | None = None
    try:
        on_v2 = [f"v2-{i:03d}" for i in range(60)]
        for key in on_v2:
            ns.client.publish("OrderPlaced", key, good_order(key))
        ns.client.flush(60)
        shipping = ns.topic("shipping.commands")
        assert len(ns.client.read([shipping], lambda ms: len(ms) >= 60, timeout=90)) >= 60
        assert new.terminate("orchestrator")[0] == 0
        assert len(outcomes(ns)) <= 30, "the v2 sagas were not in flight at the rollback"

        assert cli.main(["topology", "check"]) == 0  # v1's file against the deployed v2
        assert cli.main(["topology", "check", "--allow", "safe"]) == 1

        old = workers(ns.settings, tmp_path / "v1", "orchestrator")
        running.append(old)
        on_v1 = [f"v1-{i:03d}" for i in range(30)]
        for key in on_v1:
            ns.client.publish("OrderPlaced", key, good_order(key))
        ns.client.flush(60)
        found = wait_outcomes(ns, {*on_v2, *on_v1}, running, timeout=150)
        per_saga = Counter(m.key.decode() for m in found)
        assert sorted({*on_v2, *on_v1} - set(per_saga)) == [], "sagas without an outcome"
        assert {k: n for k, n in per_saga.items() if n != 1} == {}, "several outcomes"
        steps = {m.key.decode(): set(m.record["completed_steps"]) for m in found}
        assert {k: s for k, s in steps.items() if k in on_v2 and s != V2_STEPS} == {}
        assert {k: s for k, s in steps.items() if k in on_v1 and s != V1_STEPS} == {}
        assert every_dead_letter(ns) == []
        book = DefinitionBook(ns.settings, ns.topology, SchemaStore(ns.settings.schemas_path))
        rows = {r.version: r for r in versions(ns.settings, ns.topology, book) if r.saga == "order"}
        assert (rows[1].state, rows[2].state) == ("current", "retired")
        assert rows[2].shape == v2_topology.sagas["order"].shape
    finally:
        for worker in [*running, new]:
            worker.stop()


def test_a_file_that_rekeys_a_deployed_saga_stops_the_orchestrator_and_topics_create(
    ns: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """v1 is deployed; a file keying the order saga by customer_id
    (`topology diff`'s refused class) is refused by name by `topics create` (exit 2) and by an
    orchestrator at start, before it publishes or consumes anything; allowed by the setting,
    the orchestrator starts and publishes it as v2."""
    from sagastream.ops import cli
    from sagastream.ops.demo import settings_env

    for name, value in settings_env(ns.settings).items():
        monkeypatch.setenv(name, value)
    assert cli.main(["topics", "create"]) == 0  # publishes v1
    data = yaml.safe_load(ns.settings.topology_file.read_text())
    data["sagas"]["order"]["key_field"] = "customer_id"
    rekeyed = tmp_path / "topology-rekeyed.yaml"
    rekeyed.write_text(yaml.safe_dump(data))
    settings = ns.settings.model_copy(
        update={"topology_file": rekeyed, "schemas_dir": ns.settings.schemas_path}
    )

    monkeypatch.setenv("SAGASTREAM_TOPOLOGY_FILE", str(rekeyed))
    monkeypatch.setenv("SAGASTREAM_SCHEMAS_DIR", str(ns.settings.schemas_path))
    capsys.readouterr()
    assert cli.main(["topics", "create"]) == 2
    err = capsys.readouterr().err
    assert "order.key_field: order_id -> customer_id" in err and "(deployed: v1)" in err

    log = stopped_at_start(settings, tmp_path / "refused")
    assert "order.key_field: order_id -> customer_id" in log
    assert "SAGASTREAM_ALLOW_REFUSED_CHANGES=true" in log
    assert "orchestrator consuming" not in log
    book = DefinitionBook(ns.settings, ns.topology, SchemaStore(ns.settings.schemas_path))
    book.read()
    assert book.highest("order") == 1, "the refused file was published"

    allowed = workers(
        settings, tmp_path / "allowed", "orchestrator", SAGASTREAM_ALLOW_REFUSED_CHANGES="true"
    )
    try:
        book.read()
        assert book.highest("order") == 2
        assert (
            "deploying a refused change, as allowed"
            in (tmp_path / "allowed" / "orchestrator.log").read_text()
        )
    finally:
        allowed.stop()
