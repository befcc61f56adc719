"""The least privilege of each part of a deployment, derived from topology.yaml, the topic prefix
and the app id: Kafka ACLs per role, printed as bindings and `kafka-acls.sh` commands, or
created through the Admin API.

The roles: the orchestrator, each handler role of the topology, the topic creator, the operator
(the CLI's reading and writing commands) and the read-only operator. What each needs was found
by running it under only these ACLs (tests/integration/test_secured.py); README.md, "Running
against a secured Kafka", says what each permission means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sagastream.core.topology import SIGNAL_EVENT, TIMER_EVENT, Topology
from sagastream.errors import NotAuthorized, UsageError
from sagastream.runtime.definitions import TOPIC as DEFINITIONS_TOPIC
from sagastream.runtime.kafka_io import refused
from sagastream.runtime.settings import Settings

ORCHESTRATOR = "orchestrator"
CLIENT = "client"  # an application that starts sagas (Client.start)
CREATOR = "topic-creator"
OPERATOR = "operator"
READONLY = "operator-readonly"
CLUSTER = "kafka-cluster"  # the one name of the CLUSTER resource

# kafka-acls.sh's spelling of each operation and resource option
_OPERATIONS = {
    "READ": "Read",
    "WRITE": "Write",
    "CREATE": "Create",
    "DESCRIBE": "Describe",
    "DESCRIBE_CONFIGS": "DescribeConfigs",
}
_OPTIONS = {
    "TOPIC": "--topic",
    "GROUP": "--group",
    "TRANSACTIONAL_ID": "--transactional-id",
    "CLUSTER": "--cluster",
}


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding: `principal` may do `operation` on the resource, from any host."""

    principal: str
    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID or CLUSTER
    name: str
    pattern: str  # LITERAL or PREFIXED
    operation: str
    why: str = field(default="", compare=False)

    def binding(self) -> str:
        """As `kafka-acls.sh --list` shows one."""
        return (
            f"ResourcePattern(resourceType={self.resource}, name={self.name}, "
            f"patternType={self.pattern}): (principal={self.principal}, host=*, "
            f"operation={self.operation}, permissionType=ALLOW)"
        )

    def command(self, bootstrap: str) -> str:
        """The `kafka-acls.sh` line that creates it (admin.properties: the admin's connection)."""
        resource = _OPTIONS[self.resource]
        if self.resource != "CLUSTER":
            resource += f" '{self.name}'"
        if self.pattern == "PREFIXED":
            resource += " --resource-pattern-type prefixed"
        return (
            f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config admin.properties "
            f"--add --allow-principal '{self.principal}' --operation "
            f"{_OPERATIONS[self.operation]} {resource}"
        )


@dataclass
class _Grants:
    """The ACLs of one principal, gathered without repeats."""

    principal: str
    acls: set[Acl] = field(default_factory=set)

    def topics(self, names: Iterable[str], operations: Iterable[str], why: str) -> None:
        for name in names:
            for operation in operations:
                self.acls.add(Acl(self.principal, "TOPIC", name, "LITERAL", operation, why))

    def add(self, resource: str, name: str, pattern: str, operation: str, why: str) -> None:
        self.acls.add(Acl(self.principal, resource, name, pattern, operation, why))


def roles(topology: Topology) -> list[str]:
    """Every role `sagastream acls` knows for this topology."""
    return [ORCHESTRATOR, *topology.handlers, CLIENT, CREATOR, OPERATOR, READONLY]


def default_principal(role: str) -> str:
    return f"User:{role}"


def parse_principal_map(pairs: Iterable[str], known: list[str]) -> dict[str, str]:
    """`role=User:name` pairs: the principal each role runs as."""
    out: dict[str, str] = {}
    for pair in pairs:
        role, sep, principal = pair.partition("=")
        if not sep or ":" not in principal:
            raise UsageError(f"--principal-map {pair!r}: give ROLE=User:NAME")
        if role not in known:
            raise UsageError(f"--principal-map {pair!r}: no role {role!r}; choose from {known}")
        out[role] = principal
    return out


def acls_for(role: str, principal: str, settings: Settings, topology: Topology) -> list[Acl]:
    """The minimal ACLs of `role` running as `principal`."""
    grants = _Grants(principal)
    if role == ORCHESTRATOR:
        _orchestrator(grants, settings, topology)
    elif role in topology.handlers:
        _handler(grants, role, settings, topology)
    elif role == CLIENT:
        starts = {topology.event_topic(spec.start_event) for spec in topology.sagas.values()}
        grants.topics(
            sorted(settings.topic(t) for t in starts), ["WRITE"], "Client.start: start events"
        )
    elif role == CREATOR:
        _creator(grants, settings, topology)
    elif role in (OPERATOR, READONLY):
        _reader(grants, settings, topology)
        if role == OPERATOR:
            _operator_writes(grants, settings, topology)
    else:
        raise UsageError(f"no role {role!r}; choose from {', '.join(roles(topology))}")
    return sorted(grants.acls)


def orchestrator_topics(settings: Settings, topology: Topology) -> tuple[list[str], list[str]]:
    """The physical topics the orchestrator reads and those it writes (its changelog in both)."""
    inputs = [settings.input_topic(t) for t in topology.orchestrator_inputs()]
    logical_inputs = set(topology.orchestrator_inputs())
    outputs: list[str] = []
    for saga in topology.sagas:
        for topic in topology.saga_topics(saga):
            if topic not in logical_inputs and settings.topic(topic) not in outputs:
                outputs.append(settings.topic(topic))
    # what it cannot decode or place goes to its inputs' DLQs; a timer it cannot fire, the
    # timers' DLQ
    dead = [settings.topic(topology.dlq(t)) for t in topology.orchestrator_inputs()]
    if TIMER_EVENT in topology.events:
        dead.append(settings.topic(topology.dlq(topology.event_topic(TIMER_EVENT))))
    changelog = settings.changelog_topic()
    # every saga's published shapes: read at start, the missing ones published
    definitions = settings.topic(DEFINITIONS_TOPIC)
    return [*inputs, changelog, definitions], [
        *outputs,
        *dict.fromkeys(dead),
        changelog,
        definitions,
    ]


def handler_topics(role: str, settings: Settings, topology: Topology) -> tuple[str, list[str]]:
    """The command topic a handler role reads, and the topics it writes (results, its DLQ)."""
    spec = topology.handlers[role]
    return settings.topic(spec.consumes), [
        settings.topic(spec.produces),
        settings.topic(topology.dlq(spec.consumes)),
    ]


def _orchestrator(grants: _Grants, settings: Settings, topology: Topology) -> None:
    reads, writes = orchestrator_topics(settings, topology)
    grants.topics(reads, ["READ"], "its inputs (start events, results, signals) and changelog")
    grants.topics(writes, ["WRITE"], "commands, outcomes, lifecycle, timers, DLQs, changelog")
    grants.topics(writes, ["DESCRIBE_CONFIGS"], "max.message.bytes, read at start")
    group = settings.group(ORCHESTRATOR)
    grants.add("GROUP", group, "PREFIXED", "READ", "its consumer group and its restore reader")
    grants.add(
        "TRANSACTIONAL_ID",
        f"{group}-",
        "PREFIXED",
        "WRITE",
        "transactional ids <group>-<hostname>-<slot> (or <group>-<instance_id>)",
    )
    grants.add("CLUSTER", CLUSTER, "LITERAL", "DESCRIBE_CONFIGS", "the broker's message.max.bytes")


def _handler(grants: _Grants, role: str, settings: Settings, topology: Topology) -> None:
    consumes, writes = handler_topics(role, settings, topology)
    grants.topics([consumes], ["READ"], "its commands")
    grants.topics(writes, ["WRITE"], "its results (forgeable by whoever may write them), its DLQ")
    grants.topics(writes, ["DESCRIBE_CONFIGS"], "max.message.bytes, read at start")
    grants.add("GROUP", settings.group(role), "LITERAL", "READ", "its consumer group")
    grants.add("CLUSTER", CLUSTER, "LITERAL", "DESCRIBE_CONFIGS", "the broker's message.max.bytes")


def _all_topics(settings: Settings, topology: Topology) -> list[str]:
    names = [settings.topic(name) for name, _, _ in topology.all_topic_configs()]
    if not topology.sagas:
        return names
    return [*names, settings.changelog_topic(), settings.topic(DEFINITIONS_TOPIC)]


def _creator(grants: _Grants, settings: Settings, topology: Topology) -> None:
    topics = _all_topics(settings, topology)
    grants.topics(topics, ["CREATE"], "creates the topology's topics (sagastream topics create)")
    grants.topics(topics, ["DESCRIBE", "DESCRIBE_CONFIGS"], "checks partitions and durability")
    if topology.sagas:
        definitions = [settings.topic(DEFINITIONS_TOPIC)]
        grants.topics(definitions, ["READ", "WRITE"], "publishes the sagas' definitions")
        grants.add("GROUP", reader_group(settings), "PREFIXED", "READ", "its definitions reader")


def reader_group(settings: Settings) -> str:
    """The prefix of the operator tools' reader groups (never joined, they only name a client)."""
    return f"{settings.group('ops')}-"


def _reader(grants: _Grants, settings: Settings, topology: Topology) -> None:
    grants.topics(
        _all_topics(settings, topology), ["READ"], "saga show/list, dlq list/show read them"
    )
    grants.add("GROUP", reader_group(settings), "PREFIXED", "READ", "the tools' reader groups")
    for role in [ORCHESTRATOR, *topology.handlers]:
        why = "the console's consumer lag: its members and committed offsets"
        grants.add("GROUP", settings.group(role), "LITERAL", "DESCRIBE", why)


def _operator_writes(grants: _Grants, settings: Settings, topology: Topology) -> None:
    signals = settings.topic(topology.event_topic(SIGNAL_EVENT))
    grants.topics([signals], ["WRITE"], "sagastream signal: approval authority over every saga")
    sources = sorted(
        {settings.topic(t.name) for t in topology.topics if t.name in _redrivable(topology)}
    )
    grants.topics(sources, ["WRITE"], "dlq redrive: a dead letter goes back to its source topic")


def _redrivable(topology: Topology) -> set[str]:
    """Topics whose dead letters the operator may send back: those the orchestrator or a handler
    reads (a record of an output topic is sent back by no one)."""
    handlers = {h.consumes for h in topology.handlers.values()}
    return {*topology.orchestrator_inputs(), *handlers}


def generate(
    settings: Settings, topology: Topology, chosen: list[str], principals: dict[str, str]
) -> list[Acl]:
    """The ACLs of the `chosen` roles, each as its mapped principal (default User:<role>)."""
    out: list[Acl] = []
    for role in chosen:
        out += acls_for(role, principals.get(role, default_principal(role)), settings, topology)
    return list(dict.fromkeys(out))  # roles run as one principal share some


def apply(settings: Settings, acls: list[Acl], timeout: float = 30.0) -> int:
    """Create the ACLs through the Admin API (as the principal of `settings`); how many."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from sagastream.ops.admin import admin_client

    bindings = [
        AclBinding(
            # librdkafka names Kafka's CLUSTER resource type (code 4) BROKER
            ResourceType.BROKER if acl.resource == "CLUSTER" else ResourceType[acl.resource],
            acl.name,
            ResourcePatternType[acl.pattern],
            acl.principal,
            "*",
            AclOperation[acl.operation],
            AclPermissionType.ALLOW,
        )
        for acl in acls
    ]
    if not bindings:
        return 0
    admin = admin_client(settings)  # held until every answer is in
    for future in admin.create_acls(bindings, request_timeout=timeout).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.CLUSTER_AUTHORIZATION_FAILED:
                raise
            raise NotAuthorized(
                refused(settings, "ALTER", "the cluster (creating ACLs)", "a super user")
            ) from None
    return len(bindings)
