"""Topic administration from topology.yaml: create what is missing with the durability the
topology asks for, check what exists."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, TopicMetadata

from sagastream.core.topology import Defaults, Topology
from sagastream.errors import NotAuthorized, SagastreamError, UsageError
from sagastream.runtime.definitions import TOPIC as DEFINITIONS_TOPIC
from sagastream.runtime.kafka_io import refused
from sagastream.runtime.settings import Settings

# a replica fewer than this many brokers leaves no room for one to be down
MAX_DEFAULT_REPLICAS = 3


@dataclass(frozen=True)
class TopicReport:
    created: list[str]
    existing: list[str]
    # existing topics with fewer replicas or a lower min.insync.replicas than chosen: each a line
    weaker: list[str] = field(default_factory=list)


class TopicMismatch(SagastreamError, RuntimeError):
    """An existing topic whose partition count differs from topology.yaml."""


class DurabilityUnavailable(SagastreamError, RuntimeError):
    """The cluster cannot give the replication topology.yaml asks for."""


@dataclass(frozen=True)
class Durability:
    """How sagastream's topics are replicated; min_insync_replicas None: the broker's setting."""

    replication_factor: int
    min_insync_replicas: int | None

    def topic_config(self) -> dict[str, str]:
        if self.min_insync_replicas is None:
            return {}
        return {"min.insync.replicas": str(self.min_insync_replicas)}


def durability(defaults: Defaults, brokers: int, where: str = "the cluster") -> Durability:
    """The replication factor and min.insync.replicas for a cluster of `brokers`.

    Unless topology.yaml sets them: min(3, brokers) replicas, and from 3 replicas on a
    min.insync.replicas of one fewer, so an acknowledged write (acks=all) is on two brokers and
    survives losing one, while one broker may be down without stopping writes.
    """
    rf = defaults.replication_factor or min(MAX_DEFAULT_REPLICAS, brokers)
    if rf > brokers:
        raise DurabilityUnavailable(
            f"topology.yaml defaults.replication_factor is {rf}, but {where} has {brokers} "
            f"broker(s): add brokers or lower replication_factor"
        )
    isr = defaults.min_insync_replicas
    if isr is None and rf >= MAX_DEFAULT_REPLICAS:
        isr = rf - 1
    return Durability(rf, isr)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.librdkafka())


def create_topics(
    settings: Settings,
    topology: Topology,
    timeout: float = 30.0,
    only: Collection[str] | None = None,
    role: str = "topic-creator",
) -> TopicReport:
    """Create every topic and dead-letter topic of the topology (or the physical topics `only`
    names), asking for CREATE only for what is missing; running it twice is a no-op."""
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=timeout)
    chosen = durability(topology.defaults, len(metadata.brokers), settings.bootstrap_servers)
    wanted = {
        settings.topic(n): (p, {**conf, **chosen.topic_config()})
        for n, p, conf in topology.all_topic_configs()
    }
    if topology.sagas:
        inputs = topology.orchestrator_inputs()
        # the orchestrator's state changelog: compacted, one partition per input partition
        wanted[settings.changelog_topic()] = (
            topology.partitions(inputs[0]),
            {"cleanup.policy": "compact", **chosen.topic_config()},
        )
        # every published shape of every saga: one partition keeps them in publish order
        wanted[settings.topic(DEFINITIONS_TOPIC)] = (
            1,
            {"cleanup.policy": "compact", **chosen.topic_config()},
        )
    if only is not None:
        wanted = {name: spec for name, spec in wanted.items() if name in only}
    existing = sorted(t for t in wanted if t in metadata.topics)
    for name in existing:
        have = len(metadata.topics[name].partitions)
        if have != wanted[name][0]:
            raise TopicMismatch(
                f"topic {name} has {have} partitions but topology.yaml wants {wanted[name][0]}; "
                "partition counts cannot shrink and must match across a saga's topics"
            )
    missing = [
        NewTopic(
            name, num_partitions=parts, replication_factor=chosen.replication_factor, config=conf
        )
        for name, (parts, conf) in wanted.items()
        if name not in metadata.topics
    ]
    created: list[str] = []
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:  # a concurrent creator is fine
                code = exc.args[0].code()
                if code in (
                    KafkaError.TOPIC_AUTHORIZATION_FAILED,
                    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                ):
                    raise NotAuthorized(
                        refused(
                            settings,
                            "CREATE",
                            f"topic {name}, which it does not see (missing, or no DESCRIBE "
                            "or READ on it for this principal)",
                            role,
                        )
                        + "; or create the topics first: `sagastream topics create` as the "
                        "topic creator"
                    ) from None
                if code != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                existing.append(name)
    weaker = _weaker(
        admin, {n: metadata.topics[n] for n in existing if n in metadata.topics}, chosen, timeout
    )
    return TopicReport(sorted(created), sorted(existing), weaker)


def _weaker(
    admin: AdminClient, topics: Mapping[str, TopicMetadata], chosen: Durability, timeout: float
) -> list[str]:
    """Existing topics replicated less than `chosen`: created before, or by someone else."""
    out = []
    for name, meta in sorted(topics.items()):
        replicas = min(len(p.replicas) for p in meta.partitions.values())
        if replicas < chosen.replication_factor:
            out.append(f"{name}: {replicas} replicas, {chosen.replication_factor} wanted")
    if chosen.min_insync_replicas is None or not topics:
        return out
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in sorted(topics)]
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            have = int(future.result()["min.insync.replicas"].value)
        except KafkaException as exc:  # not allowed to describe configs, say: say so, go on
            out.append(f"{resource.name}: min.insync.replicas unknown ({exc.args[0].str()})")
            continue
        if have < chosen.min_insync_replicas:
            out.append(
                f"{resource.name}: min.insync.replicas {have}, {chosen.min_insync_replicas} wanted"
            )
    return out


def delete_topics(settings: Settings, prefix: str, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with `prefix` (demo and test clean-up)."""
    if not prefix:
        raise UsageError("refusing to delete topics without a prefix")
    admin = admin_client(settings)
    names = [t for t in admin.list_topics(timeout=timeout).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=timeout).values():
            future.result()
    return names
