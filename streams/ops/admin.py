"""Topic administration from topology.yaml: create what is missing, check what exists."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, NewTopic

from sagastream.core.topology import Topology
from sagastream.runtime.settings import Settings


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: list[str]


class TopicMismatch(RuntimeError):
    """An existing topic whose partition count differs from topology.yaml."""


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.librdkafka())


def create_topics(settings: Settings, topology: Topology, timeout: float = 30.0) -> TopicReport:
    """Create every topic and dead-letter topic of the topology; running it twice is a no-op."""
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=timeout)
    replication = min(3, len(metadata.brokers))
    wanted = {settings.topic(n): (p, conf) for n, p, conf in topology.all_topic_configs()}
    if topology.sagas:
        inputs = topology.orchestrator_inputs()
        # the orchestrator's state changelog: compacted, one partition per input partition
        wanted[settings.changelog_topic()] = (
            topology.partitions(inputs[0]),
            {"cleanup.policy": "compact"},
        )
    existing = sorted(t for t in wanted if t in metadata.topics)
    for name in existing:
        have = len(metadata.topics[name].partitions)
        if have != wanted[name][0]:
            raise TopicMismatch(
                f"topic {name} has {have} partitions but topology.yaml wants {wanted[name][0]}; "
                "partition counts cannot shrink and must match across a saga's topics"
            )
    missing = [
        NewTopic(name, num_partitions=parts, replication_factor=replication, config=conf)
        for name, (parts, conf) in wanted.items()
        if name not in metadata.topics
    ]
    created: list[str] = []
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result()
                created.append(name)
            except Exception as exc:  # a concurrent creator is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                existing.append(name)
    return TopicReport(sorted(created), sorted(existing))


def delete_topics(settings: Settings, prefix: str, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with `prefix` (demo and test clean-up)."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = admin_client(settings)
    names = [t for t in admin.list_topics(timeout=timeout).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=timeout).values():
            future.result()
    return names
