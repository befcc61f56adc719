"""`create_topics` on the local broker (one node, so RF 1): min.insync.replicas is set on the
topics as topology.yaml chooses, and a replication the cluster cannot give is refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, ConfigSource

from sagastream.core.topology import Defaults, Topology, load_topology
from sagastream.ops.admin import DurabilityUnavailable, admin_client, create_topics, delete_topics
from sagastream.runtime.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(broker: Any) -> Iterator[Settings]:
    made = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=f"d{uuid.uuid4().hex[:8]}-")
    yield made
    delete_topics(made, made.topic_prefix)


def _topology(settings: Settings, **defaults: int) -> Topology:
    topology = load_topology(settings.topology_file, settings.schemas_path)
    return topology.model_copy(update={"defaults": Defaults(**defaults)})


def _min_isr(settings: Settings, topic: str) -> tuple[str, bool]:
    """The topic's min.insync.replicas, and whether it is the topic's own setting."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = admin_client(settings)  # held: a collected client never resolves its futures
    deadline = time.monotonic() + 30
    while True:
        # the broker answering learns of a new topic a moment after its creation returns
        try:
            [future] = admin.describe_configs([resource]).values()
            entry = future.result(30)["min.insync.replicas"]
            return entry.value, entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        except KafkaException as exc:
            unknown = exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            assert unknown and time.monotonic() < deadline, f"{topic}: {exc}"
            time.sleep(0.2)


def test_topology_yaml_sets_min_insync_replicas_on_every_topic_and_the_changelog(
    settings: Settings,
) -> None:
    report = create_topics(settings, _topology(settings, min_insync_replicas=1))
    assert settings.changelog_topic() in report.created
    for topic in (settings.changelog_topic(), settings.topic("orders.events.dlq")):
        assert _min_isr(settings, topic) == ("1", True), topic
    assert create_topics(settings, _topology(settings, min_insync_replicas=1)).weaker == []


def test_with_one_replica_the_broker_keeps_its_min_insync_replicas(settings: Settings) -> None:
    create_topics(settings, _topology(settings))
    value, own = _min_isr(settings, settings.changelog_topic())
    assert not own and value == "1"


def test_more_replicas_than_brokers_is_refused_and_nothing_is_created(settings: Settings) -> None:
    with pytest.raises(DurabilityUnavailable, match=r"replication_factor is 3, but .* 1 broker"):
        create_topics(settings, _topology(settings, replication_factor=3))
    names = admin_client(settings).list_topics(timeout=10).topics
    assert not [t for t in names if t.startswith(settings.topic_prefix)]
