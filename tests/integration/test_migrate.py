"""`sagastream saga migrate` on real workers: v1 orders shipped and waiting at inventory move to v2 (shipping
renamed delivery, a recheck step added) through the v2 orchestrator's transaction, and finish on
v2's steps; an order whose shipping is running (renamed, in flight) is refused and stays on v1.

v1 and v2 are test_versions.py's (v1's steps all start at once). No inventory handler runs until
the orders have moved, and the shipping handler stops before the stuck order starts, so where
each order waits is certain, not a matter of timing.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.saga import SUCCEEDED
from sagastream.core.topology import Topology, load_topology
from sagastream.ops import cli
from sagastream.ops.demo import settings_env
from sagastream.ops.migrate import running_on
from sagastream.runtime.settings import Settings
from tests.integration.faults import COMMAND_TOPICS
from tests.integration.helpers import every_dead_letter, free_port, good_order, metric
from tests.integration.test_versions import V1_STEPS, V2_STEPS, v2_data, wait_outcomes, workers

pytestmark = pytest.mark.integration
MOVED = 6


@pytest.fixture
def v2_files(ns: Any, tmp_path: Path) -> tuple[Settings, Topology]:
    path = tmp_path / "topology-v2.yaml"
    path.write_text(yaml.safe_dump(v2_data(yaml.safe_load(ns.settings.topology_file.read_text()))))
    settings = ns.settings.model_copy(
        update={"topology_file": path, "schemas_dir": ns.settings.schemas_path}
    )
    return settings, load_topology(path, settings.schemas_path)


def migrate(monkeypatch: Any, capsys: Any, settings: Settings, *argv: str) -> tuple[int, str]:
    """`sagastream saga migrate --saga order ARGV` against the test's namespace."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    code = cli.main(["saga", "migrate", "--saga", "order", *argv])
    return code, capsys.readouterr().out


def shipped(settings: Settings, shape: str) -> set[str]:
    """The running orders on `shape` whose shipping succeeded, by the changelog."""
    found = running_on(settings, "order", shape, True)
    return {key for key, state in found if state.steps["shipping"].status == SUCCEEDED}


def commanded(ns: Any, topic: str, keys: set[str]) -> None:
    """Wait until every key has a command on `topic`."""
    found = ns.client.read(
        [ns.topic(topic)], lambda ms: {m.key.decode() for m in ms} >= keys, timeout=60
    )
    assert {m.key.decode() for m in found} >= keys


def test_orders_waiting_on_v1_move_to_v2_and_finish_on_its_steps(
    ns: Any, tmp_path: Path, v2_files: tuple[Settings, Topology], monkeypatch: Any, capsys: Any
) -> None:
    v2_settings, v2_topology = v2_files
    v1_shape = ns.topology.sagas["order"].shape
    fast = workers(ns.settings, tmp_path / "fast", "payment,notification")
    shipping = workers(ns.settings, tmp_path / "shipping", "shipping")
    old = workers(ns.settings, tmp_path / "v1", "orchestrator")
    running = [fast, shipping, old]
    try:
        # shipped and paid, waiting for inventory (no inventory handler runs yet)
        moving = {f"move-{i}" for i in range(MOVED)}
        for key in sorted(moving):
            ns.client.publish("OrderPlaced", key, good_order(key))
        ns.client.flush(30)
        deadline = time.monotonic() + 60
        while not moving <= shipped(ns.settings, v1_shape):
            assert time.monotonic() < deadline, "the orders' shipping did not succeed"
            time.sleep(1)
        assert shipping.terminate("shipping")[0] == 0
        # and one whose shipping is still running when the orders move: it must stay on v1
        ns.client.publish("OrderPlaced", "stuck-0", good_order("stuck-0"))
        ns.client.flush(30)
        commanded(ns, "shipping.commands", {"stuck-0"})
        assert old.terminate("orchestrator")[0] == 0
        port = free_port()
        v2_env = {"SAGASTREAM_METRICS_PORT": str(port)}
        new = workers(v2_settings, tmp_path / "v2", "orchestrator", **v2_env)  # publishes v2
        running.append(new)

        code, out = migrate(monkeypatch, capsys, v2_settings, "--from", "1", "--to", "2")
        assert code == 0
        assert "order stuck-0: cannot move:" in out
        assert "step shipping is running (attempt 1) and has no counterpart" in out

        args = ("--from", "1", "--to", "2", "--map", "shipping=delivery")
        code, out = migrate(monkeypatch, capsys, v2_settings, *args)
        assert code == 0
        for key in moving:
            assert f"order {key}: can move:" in out
        assert "  delivery (was shipping): succeeded, attempt 1" in out
        assert "  recheck (new): pending, attempt 0: ready, starts" in out
        assert "step shipping is running (attempt 1) and the new version renames it" in out
        assert out.splitlines()[-1].endswith(
            f"{MOVED} can move to v2 ({v2_topology.sagas['order'].shape}), 1 cannot"
        )

        code, out = migrate(monkeypatch, capsys, v2_settings, *args, "--execute")
        assert code == 0
        sent = [line for line in out.splitlines() if line.startswith("sent SagaMigrate")]
        assert sorted(line.split()[4].rstrip(":") for line in sent) == sorted(
            moving
        )  # stuck-0: none

        # re-pinned in the changelog before any of them can go on
        v2_shape = v2_topology.sagas["order"].shape
        deadline = time.monotonic() + 60
        while {k for k, _ in running_on(ns.settings, "order", v2_shape, False)} != moving:
            assert time.monotonic() < deadline, "the orders were not moved to v2"
            time.sleep(1)

        # the orchestrator counts the moved instances under v2 once it committed their move
        def counted() -> tuple[float, float]:
            name = "sagastream_saga_versions_running"
            v1 = metric(port, name, saga="order", version="1")
            return v1, metric(port, name, saga="order", version="2")

        deadline = time.monotonic() + 30
        while counted() != (1, MOVED):
            assert time.monotonic() < deadline, f"running by version (v1, v2): {counted()}"
            time.sleep(0.5)

        handlers = workers(ns.settings, tmp_path / "rest", "inventory,shipping")
        running.append(handlers)
        found = wait_outcomes(ns, {*moving, "stuck-0"}, running, timeout=90)
        per_saga = Counter(m.key.decode() for m in found)
        assert per_saga == Counter({*moving, "stuck-0"}), "not one outcome each"
        steps = {m.key.decode(): (m.event_type, set(m.record["completed_steps"])) for m in found}
        assert steps == {
            **{k: ("SagaCompleted", V2_STEPS) for k in moving},
            "stuck-0": ("SagaCompleted", V1_STEPS),
        }
        for topic in COMMAND_TOPICS:
            msgs = [m for m in ns.client.read_to_end([ns.topic(topic)]) if m.record]
            seen = Counter((m.record["idempotency_key"], m.record["meta"]["attempt"]) for m in msgs)
            assert {k: n for k, n in seen.items() if n > 1} == {}, f"a command twice on {topic}"
        lifecycle = ns.client.read_to_end([ns.topic("sagas.lifecycle")])
        migrated = {
            m.key.decode()
            for m in lifecycle
            if m.record and any(c["what"] == "migrated" for c in m.record["changes"])
        }
        assert migrated == moving
        assert every_dead_letter(ns) == []
    finally:
        for worker in running:
            worker.stop()
