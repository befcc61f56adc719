"""The 3-broker local KRaft cluster (`sagastream broker start --cluster`), for reliability work."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sagastream.local import kafka as localkafka
from sagastream.local.proc import free_ports, pid_alive

pytestmark = pytest.mark.integration


def _free_cluster_port() -> int:
    """A first port whose six cluster ports (brokers +0..2, controllers +100..102) are free,
    below the ephemeral range, so that two checkouts can run this test at once."""
    offsets = [i + c for c in (0, localkafka.CLUSTER_CONTROLLER_OFFSET) for i in range(3)]
    return free_ports(localkafka.HOST, offsets)


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    # its own data and its own free ports: nobody else's cluster is touched or in the way
    monkeypatch.setenv(localkafka.ENV_DATA_DIR, str(tmp_path / "kafka"))
    monkeypatch.setenv(localkafka.ENV_CLUSTER_PORT, str(_free_cluster_port()))
    bootstrap = localkafka.start(cluster=True, log=lambda m: None)
    pids = list(localkafka.status(cluster=True)["pids"])
    try:
        yield bootstrap, pids
    finally:
        localkafka.stop(cluster=True, log=lambda m: None)


def test_cluster_replicates_to_three_brokers_and_stops_cleanly(cluster):
    bootstrap, pids = cluster
    assert bootstrap.count(",") == 2 and len(pids) == 3
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"rf3-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(30)  # default RF is 3
    # metadata may lag the creation by a moment: wait until both partitions have a leader
    deadline = time.monotonic() + 30
    while True:
        metadata = admin.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        if len(partitions) == 2 and all(p.leader >= 0 for p in partitions.values()):
            break
        assert time.monotonic() < deadline, f"topic {topic} has no leaders yet: {partitions}"
        time.sleep(0.2)
    assert len(metadata.brokers) == 3
    for partition in metadata.topics[topic].partitions.values():
        assert len(partition.replicas) == 3 and len(partition.isrs) == 3
    configs = admin.describe_configs([_broker_resource(metadata)])
    config = next(iter(configs.values())).result(10)
    assert config["min.insync.replicas"].value == "2"

    _changelog_is_replicated_and_compacted(admin, bootstrap)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    failures: list[str] = []

    def delivered(err, msg):
        if err is not None:
            failures.append(str(err))

    for i in range(10):
        producer.produce(topic, key=b"k", value=str(i).encode(), on_delivery=delivered)
    assert producer.flush(60) == 0 and not failures, f"not delivered: {failures[:3]}"
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest"}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    values, errors = [], []
    deadline = time.monotonic() + 60
    while len(values) < 10 and time.monotonic() < deadline:
        msg = consumer.poll(1)
        if msg is not None and msg.error():
            errors.append(str(msg.error()))
        elif msg is not None:
            values.append(int(msg.value()))
    consumer.close()
    assert len(values) == 10, f"{len(values)} of 10 messages came back; errors: {errors[-3:]}"
    assert sorted(values) == list(range(10))

    localkafka.stop(cluster=True, log=lambda m: None)
    assert not localkafka.status(cluster=True)["running"]
    assert not [pid for pid in pids if pid_alive(pid)], "a broker JVM outlived stop"


def _broker_resource(metadata):
    from confluent_kafka.admin import ConfigResource

    return ConfigResource(ConfigResource.Type.BROKER, str(next(iter(metadata.brokers))))


def _changelog_is_replicated_and_compacted(admin, bootstrap):
    """sagastream creates the orchestrator's changelog like the topology's topics: RF 3 and
    min.insync.replicas 2 here."""
    from confluent_kafka.admin import ConfigResource, ConfigSource

    from sagastream.core.topology import load_topology
    from sagastream.ops.admin import create_topics
    from sagastream.runtime.settings import Settings

    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=f"c{uuid.uuid4().hex[:6]}-")
    create_topics(settings, load_topology(settings.topology_file, settings.schemas_path))
    changelog = settings.changelog_topic()
    deadline = time.monotonic() + 30
    while True:
        partitions = admin.list_topics(changelog, timeout=10).topics[changelog].partitions
        if partitions and all(len(p.isrs) == 3 for p in partitions.values()):
            break
        assert time.monotonic() < deadline, f"{changelog} is not replicated 3 times: {partitions}"
        time.sleep(0.2)
    assert all(len(p.replicas) == 3 for p in partitions.values())
    resource = ConfigResource(ConfigResource.Type.TOPIC, changelog)
    while True:
        # the broker that answers may learn of the new topic a moment after the one that listed it
        try:
            config = next(iter(admin.describe_configs([resource]).values())).result(10)
            break
        except KafkaException as exc:
            retriable = exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
            assert retriable and time.monotonic() < deadline, f"{changelog}: {exc}"
            time.sleep(0.2)
    assert config["cleanup.policy"].value == "compact"
    # the topic's own setting, not the broker's: it holds wherever the changelog is moved
    isr = config["min.insync.replicas"]
    assert (isr.value, isr.source) == ("2", ConfigSource.DYNAMIC_TOPIC_CONFIG.value), isr
