"""A rolling deploy whose new version reads one more input topic, under load.

The old version reads OrderPlaced from orders.events; the new one also from orders.priority.
While both run, the range assignor gives the new member every partition of orders.priority
(it alone subscribes to it) and the old member half of the other inputs: without ownership by
construction both processes would own those stores and write the same changelog partitions.
Checked from the topics (read_committed), every dead-letter topic and the services' ledgers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.topology import load_topology
from sagastream.ops.admin import create_topics
from sagastream.ops.demo import WorkerSet
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore
from sagastream.wire.registry import Registry, delete_subjects, plan_subjects, register_subjects
from tests.integration.conftest import HANDLERS
from tests.integration.faults import (
    check_exactly_once,
    mixed_orders,
    publish_paced,
    wait_all_ended,
)
from tests.integration.helpers import wait_in_log

WINDOW_S = 20.0
EXTRA = "orders.priority"


@pytest.fixture
def new_version(ns: Any, tmp_path: Path) -> Iterator[Settings]:
    """The new version's settings: its topology reads OrderPlaced from one more topic."""
    data = yaml.safe_load(ns.settings.topology_file.read_text())
    data["topics"].append({"name": EXTRA})
    data["events"]["OrderPlaced"] = {"topics": ["orders.events", EXTRA]}
    path = tmp_path / "topology-v2.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = ns.settings.model_copy(
        update={"topology_file": path, "schemas_dir": ns.settings.schemas_path}
    )
    topology = load_topology(path, settings.schemas_path)
    assert settings.topic(EXTRA) in topology_inputs(settings, topology)
    create_topics(settings, topology)  # the new version's deploy creates its topics first
    schemas = Registry(settings.schema_registry_url or "")
    subjects = plan_subjects(topology, SchemaStore(settings.schemas_path), settings)
    assert not [o for o in register_subjects(schemas, subjects) if o.failed]
    yield settings
    delete_subjects(schemas, subjects)


def topology_inputs(settings: Settings, topology: Any) -> list[str]:
    return [settings.input_topic(t) for t in topology.orchestrator_inputs()]


def test_a_rolling_deploy_that_adds_an_input_topic_keeps_one_owner_per_store(
    ns: Any, start_workers: Any, new_version: Settings, tmp_path: Path
) -> None:
    old = start_workers("orchestrator")
    handlers = start_workers(HANDLERS)
    rng = random.Random(14)
    orders = mixed_orders(500, "deploy", rng)
    priority = mixed_orders(250, "deploy-priority", rng)
    expected = {key: outcome for key, _, outcome in orders + priority}
    started = time.monotonic()
    new: list[WorkerSet] = []

    def at(seconds: float) -> None:
        time.sleep(max(0.0, started + seconds - time.monotonic()))

    def deploy() -> WorkerSet:
        worker = WorkerSet(new_version, tmp_path / f"logs-v2-{len(new)}")
        new.append(worker)
        worker.start(["orchestrator"])
        worker.wait_ready()
        # the group was stable before the new member joined it (the old member alone), so
        # ready is also when the new process has partitions: the old version leaves only after
        # it took them, and the two have run side by side
        wait_in_log(worker.log_dir / "orchestrator.log", "assigned partitions", timeout=120)
        return worker

    try:
        published = publish_paced(ns, orders, WINDOW_S)
        at(3)
        first = deploy()  # old and new side by side: they disagree on the topology
        extra = publish_paced(ns, priority, WINDOW_S - 6, topic=ns.topic(EXTRA))
        at(11)
        code, _ = old.terminate("orchestrator")  # the old version leaves
        assert code == 0
        at(13)
        deploy()
        assert published.wait(WINDOW_S + 120) and extra.wait(WINDOW_S + 120)

        outcomes = wait_all_ended(ns, set(expected), first, timeout=180)
        check_exactly_once(ns, expected, outcomes)
        for worker in new:
            worker.check_alive()
        handlers.check_alive()
        logs = (tmp_path / "logs-v2-0" / "orchestrator.log").read_text()
        assert "members disagree on the topology" in logs
    finally:
        for worker in new:
            worker.stop()
