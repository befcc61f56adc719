"""A partition paused for the schema registry is read again after a rebalance hands it back.

The registry here is this test's own (its own port, stored in a file so its ids survive its
restart), stopped and started by the test: the shared one is never stopped.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from sagastream.local import registry as localregistry
from sagastream.ops.client import EventClient
from sagastream.ops.demo import WorkerSet
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, SchemaStore
from sagastream.wire.partitioner import partition_for
from sagastream.wire.registry import (
    Registry,
    RegistrySchemaIds,
    build_codec,
    plan_subjects,
    register_subjects,
)
from tests.integration.conftest import Namespace
from tests.integration.helpers import every_dead_letter, free_port, good_order, wait_in_log

pytestmark = pytest.mark.integration

EVOLUTION = Path(__file__).parent / "evolution"


@pytest.fixture
def own_registry() -> Iterator[int]:
    """The port of a running registry of this test's own; removed with its storage after."""
    port = free_port()
    localregistry.start(log=lambda m: None, port=port, persist=True)
    yield port
    localregistry.stop(log=lambda m: None, port=port)
    shutil.rmtree(localregistry.db_path(port).parent, ignore_errors=True)


def _join_and_leave(settings: Settings, topics: list[str]) -> set[tuple[str, int]]:
    """A second member of the orchestrator's group takes some partitions, then leaves: what
    it took. Its member id sorts before the orchestrator's ("rdkafka-..."), so the range
    assignor gives it the first partitions of each topic."""
    member = Consumer(
        settings.consumer_config(
            settings.group("orchestrator"),
            **{"partition.assignment.strategy": "range", "client.id": "a-joiner"},
        )
    )
    member.subscribe(topics)
    deadline = time.monotonic() + 60
    while not member.assignment() and time.monotonic() < deadline:
        member.poll(0.5)
    taken = {(tp.topic, tp.partition) for tp in member.assignment()}
    member.close()
    return taken


def _key_on_partition_0(ns: Namespace) -> str:
    partitions = ns.topology.partitions("orders.events")
    while partition_for((key := f"gift-{uuid.uuid4().hex[:6]}").encode(), partitions) != 0:
        pass
    return key


def test_a_partition_paused_for_the_registry_is_read_after_a_rebalance(
    ns: Namespace, own_registry: int, tmp_path: Path
) -> None:
    url = localregistry.base_url(own_registry)
    settings = ns.settings.model_copy(update={"schema_registry_url": url})
    subjects = plan_subjects(ns.topology, SchemaStore(Settings().schemas_path), settings)
    assert not [o for o in register_subjects(Registry(url), subjects) if o.failed]
    workers = WorkerSet(settings, tmp_path / "logs")
    workers.start(["orchestrator"])
    log = workers.log_dir / "orchestrator.log"
    try:
        workers.wait_ready()
        # a producer with a newer OrderPlaced (one optional field more), its id resolved while
        # the registry is up: the orchestrator does not know that id yet
        v2 = tmp_path / "v2"
        shutil.copytree(settings.schemas_path, v2)
        shutil.copy(EVOLUTION / "v2" / "OrderPlaced.avsc", v2 / "OrderPlaced.avsc")
        store = SchemaStore(v2)
        codec = AvroCodec(store, RegistrySchemaIds(store, settings, topology=ns.topology))
        codec.prepare(["OrderPlaced"])
        producer = EventClient(settings, ns.topology, codec, "test")

        localregistry.stop(log=lambda m: None, port=own_registry)
        key = _key_on_partition_0(ns)
        producer.publish("OrderPlaced", key, {**good_order(key), "gift_note": "for mum"})
        producer.flush()
        producer.close()
        wait_in_log(log, "waits, retry in")  # its partition is paused for the registry

        assigned = log.read_text(errors="replace").count("assigned partitions")
        taken = _join_and_leave(
            settings, [settings.topic(t) for t in ns.topology.orchestrator_inputs()]
        )
        assert (settings.topic("orders.events"), 0) in taken  # the paused one moved and came back
        wait_in_log(log, "assigned partitions", count=assigned + 2)  # shared, then all back

        localregistry.start(log=lambda m: None, port=own_registry, persist=True)
        reader = EventClient(settings, ns.topology, build_codec(settings), "test")
        charges = reader.read(
            [ns.topic("payments.commands")],
            lambda ms: any(m.key == key.encode() for m in ms),
            timeout=90,
        )
        assert [m.event_type for m in charges if m.key == key.encode()] == ["ChargePayment"]
        workers.check_alive()
        assert every_dead_letter(Namespace(settings, ns.topology, reader)) == []
        reader.close()
    finally:
        workers.stop()
