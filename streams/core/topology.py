"""topology.yaml: loaded once, validated into typed models, and passed down."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

TIMER_EVENT = "TimerFired"
SIGNAL_EVENT = "StepSignal"
LIFECYCLE_EVENT = "SagaLifecycle"
OUTCOME_EVENTS = ("SagaCompleted", "SagaCompensated", "SagaFailed")
# events the engine itself consumes or produces, declared in topology.yaml like any other
ENGINE_INPUTS = (TIMER_EVENT, SIGNAL_EVENT)
ENGINE_EVENTS = (*ENGINE_INPUTS, LIFECYCLE_EVENT, *OUTCOME_EVENTS)


class TopologyError(ValueError):
    """A topology file that cannot be used; the message names the file, the field and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Model):
    partitions: int = Field(default=4, ge=1)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    dlq_retention_ms: int = Field(default=30 * 24 * 3600 * 1000, ge=-1)


class TopicSpec(_Model):
    name: str = Field(min_length=1)
    partitions: int | None = Field(default=None, ge=1)
    retention_ms: int | None = Field(default=None, ge=-1)
    compact: bool = False
    dlq: str | None = None


class EventSpec(_Model):
    schema_name: str = Field(alias="schema", min_length=1)
    topic: str | None = None
    topics: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_topic_field(self) -> EventSpec:
        if (self.topic is None) == (not self.topics):
            raise ValueError("give exactly one of 'topic' or 'topics'")
        return self

    @property
    def all_topics(self) -> tuple[str, ...]:
        return (self.topic,) if self.topic else self.topics


class HandlerSpec(_Model):
    consumes: str
    produces: str


class RetryPolicy(_Model):
    max_attempts: int = Field(default=1, ge=1)
    initial_backoff_ms: int = Field(default=200, ge=0)
    multiplier: float = Field(default=2.0, ge=1.0)
    max_backoff_ms: int = Field(default=10_000, ge=0)
    on: tuple[Literal["timeout", "failure"], ...] = ("timeout",)
    jitter: Literal["full", "none"] = "full"


class CompensationSpec(_Model):
    command: str
    success: str
    failure: tuple[str, ...] = ()
    timeout_ms: int = Field(default=15_000, ge=1)
    retry: RetryPolicy = RetryPolicy(max_attempts=5, on=("timeout", "failure"))


class StepSpec(_Model):
    """A step: a command answered by a success or failure event, or a human decision (signal)."""

    command: str | None = None
    success: str | None = None
    failure: tuple[str, ...] = ()
    human: bool = False
    escalation: str | None = None
    depends_on: tuple[str, ...] = ()
    optional: bool = False
    timeout_ms: int = Field(default=30_000, ge=1)
    retry: RetryPolicy = RetryPolicy()
    params: dict[str, Any] = Field(default_factory=dict)
    compensation: CompensationSpec | None = None

    @model_validator(mode="after")
    def _answered_somehow(self) -> StepSpec:
        if not self.human and (self.command is None or self.success is None):
            raise ValueError("a step needs 'command' and 'success', unless it is 'human: true'")
        if self.escalation and not self.human:
            raise ValueError("'escalation' is for human steps; other steps time out and retry")
        return self


class NotifyRule(_Model):
    """One row of the notification decision table: a channel, sent when every `when` matches."""

    channel: str
    when: dict[str, Any] = Field(default_factory=dict)


class NotifySpec(_Model):
    """Notifications when a saga ends: one independent command per matching channel rule."""

    command: str
    params: dict[str, Any] = Field(default_factory=dict)
    templates: dict[Literal["completed", "compensated", "failed"], str]
    rules: tuple[NotifyRule, ...] = (NotifyRule(channel="email"),)


class SagaSpec(_Model):
    start_event: str
    key_field: str
    outcome_topic: str
    deadline_ms: int = Field(default=300_000, ge=1)
    max_hops: int = Field(default=32, ge=1)
    # full: every change; outcomes: only a saga's start and end; off: no SagaLifecycle records
    audit: Literal["full", "outcomes", "off"] = "full"
    steps: dict[str, StepSpec] = Field(min_length=1)
    notify: NotifySpec | None = None


CompatibilityLevel = Literal[
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
]


class SchemaRegistrySpec(_Model):
    """Compatibility levels `sagastream schemas register` sets, per subject.

    Subjects are `<topic>-<record full name>` (TopicRecordNameStrategy); `overrides` keys
    use the logical topic, e.g. `orders.events-sagastream.OrderPlaced: FULL`.
    """

    compatibility: CompatibilityLevel = "BACKWARD"
    overrides: dict[str, CompatibilityLevel] = Field(default_factory=dict)


class Topology(_Model):
    defaults: Defaults = Defaults()
    topics: tuple[TopicSpec, ...]
    events: dict[str, EventSpec]
    handlers: dict[str, HandlerSpec] = Field(default_factory=dict)
    sagas: dict[str, SagaSpec] = Field(default_factory=dict)
    schema_registry: SchemaRegistrySpec = SchemaRegistrySpec()

    @cached_property
    def topic_map(self) -> dict[str, TopicSpec]:
        return {t.name: t for t in self.topics}

    def partitions(self, topic: str) -> int:
        return self.topic_map[topic].partitions or self.defaults.partitions

    def dlq(self, topic: str) -> str:
        return self.topic_map[topic].dlq or f"{topic}.dlq"

    def event_topic(self, event_type: str) -> str:
        """The topic an event type is produced to (the first, if it may travel on several)."""
        return self.events[event_type].all_topics[0]

    def saga_topics(self, saga: str) -> list[str]:
        """Every topic the saga reads or writes, in a stable order."""
        spec = self.sagas[saga]
        names: list[str] = []
        for event in _saga_event_types(spec):
            for topic in self.events[event].all_topics:
                if topic not in names:
                    names.append(topic)
        engine = [self.event_topic(e) for e in ENGINE_EVENTS if e in self.events]
        for topic in (spec.outcome_topic, *engine):
            if topic not in names:
                names.append(topic)
        return names

    def handlers_for(self, saga: str) -> list[str]:
        """The handlers a saga sends commands to."""
        topics = set(self.saga_topics(saga))
        return [name for name, h in self.handlers.items() if h.consumes in topics]

    def orchestrator_inputs(self) -> list[str]:
        """Topics the orchestrator consumes: start events, step results and signals.

        Timers are not among them: the orchestrator fires them from its own state, inline.
        """
        names: list[str] = []
        for spec in self.sagas.values():
            inputs = [spec.start_event, *(e for e in ENGINE_INPUTS if e in self.events)]
            inputs = [e for e in inputs if e != TIMER_EVENT]
            for step in spec.steps.values():
                inputs += [step.success] if step.success else []
                inputs += step.failure
                if step.compensation:
                    inputs += [step.compensation.success, *step.compensation.failure]
            for event in inputs:
                for topic in self.events[event].all_topics:
                    if topic not in names:
                        names.append(topic)
        return names

    def all_topic_configs(self) -> list[tuple[str, int, dict[str, str]]]:
        """(name, partitions, config) for every topic and its dead-letter topic."""
        out: list[tuple[str, int, dict[str, str]]] = []
        for t in self.topics:
            parts = t.partitions or self.defaults.partitions
            retention = t.retention_ms if t.retention_ms is not None else self.defaults.retention_ms
            conf = {"cleanup.policy": "compact"} if t.compact else {"retention.ms": str(retention)}
            out.append((t.name, parts, conf))
            out.append(
                (self.dlq(t.name), parts, {"retention.ms": str(self.defaults.dlq_retention_ms)})
            )
        return out


def _saga_event_types(spec: SagaSpec) -> list[str]:
    events = [spec.start_event]
    for step in spec.steps.values():
        events += [e for e in (step.command, step.success, step.escalation) if e]
        events += step.failure
        if step.compensation:
            c = step.compensation
            events += [c.command, c.success, *c.failure]
    if spec.notify:
        events.append(spec.notify.command)
    return events


def _check(topology: Topology, schemas_dir: Path | None) -> list[tuple[str, str]]:
    """Cross-reference checks pydantic cannot do alone: (field path, why) per problem."""
    problems: list[tuple[str, str]] = []
    topics = topology.topic_map
    if topology.sagas:
        for engine_event in (TIMER_EVENT, *OUTCOME_EVENTS):
            if engine_event not in topology.events:
                problems.append(("events", f"sagas need the {engine_event} event declared"))
    for name, event in topology.events.items():
        for topic in event.all_topics:
            if topic not in topics:
                field = "topic" if event.topic else "topics"
                problems.append((f"events.{name}.{field}", f"unknown topic '{topic}'"))
        if schemas_dir is not None and not (schemas_dir / f"{event.schema_name}.avsc").is_file():
            problems.append(
                (
                    f"events.{name}.schema",
                    f"no schema file {event.schema_name}.avsc in {schemas_dir}",
                )
            )
    for key in topology.schema_registry.overrides:
        topic, _, record = key.rpartition("-")
        declared = [e.schema_name for e in topology.events.values() if topic in e.all_topics]
        if record.rpartition(".")[2] not in declared:
            problems.append(
                (
                    f"schema_registry.overrides.{key}",
                    "not a subject: keys are <topic>-<record full name> of an event declared "
                    f"on that topic, e.g. {_example_subject(topology)}",
                )
            )
    for name, handler in topology.handlers.items():
        for field in ("consumes", "produces"):
            topic = getattr(handler, field)
            if topic not in topics:
                problems.append((f"handlers.{name}.{field}", f"unknown topic '{topic}'"))
    for saga_name, saga in topology.sagas.items():
        base = f"sagas.{saga_name}"
        if saga.outcome_topic not in topics:
            problems.append((f"{base}.outcome_topic", f"unknown topic '{saga.outcome_topic}'"))
        refs: list[tuple[str, str]] = [(f"{base}.start_event", saga.start_event)]
        for step_name, step in saga.steps.items():
            sp = f"{base}.steps.{step_name}"
            refs += [
                (f"{sp}.{k}", e)
                for k in ("command", "success", "escalation")
                if (e := getattr(step, k))
            ]
            refs += [(f"{sp}.failure", f) for f in step.failure]
            if step.compensation:
                c = step.compensation
                refs += [(f"{sp}.compensation.command", c.command)]
                refs += [(f"{sp}.compensation.success", c.success)]
                refs += [(f"{sp}.compensation.failure", f) for f in c.failure]
            for dep in step.depends_on:
                if dep not in saga.steps:
                    problems.append((f"{sp}.depends_on", f"depends on unknown step '{dep}'"))
        if saga.notify:
            refs.append((f"{base}.notify.command", saga.notify.command))
        for path, ref in refs:
            if ref not in topology.events:
                problems.append((path, f"event '{ref}' is not declared under events (no schema)"))
        cycle = _find_cycle({n: s.depends_on for n, s in saga.steps.items()})
        if cycle:
            problems.append((f"{base}.steps", "dependency cycle: " + " -> ".join(cycle)))
        if not problems:
            counts = {t: topology.partitions(t) for t in topology.saga_topics(saga_name)}
            if len(set(counts.values())) > 1:
                detail = ", ".join(f"{t}={n}" for t, n in counts.items())
                problems.append(
                    (base, f"topics of one saga must have the same partition count ({detail})")
                )
    return problems


def _example_subject(topology: Topology) -> str:
    for event in topology.events.values():
        return f"{event.all_topics[0]}-<namespace>.{event.schema_name}"
    return "<topic>-<namespace>.<Record>"


def _find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A dependency cycle as a path that starts and ends at the same step, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def parse_topology(data: Any, source: str, schemas_dir: Path | None = None) -> Topology:
    """Validate a parsed YAML document; errors name the source, the field path and why."""
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"{source}: {path}: {err['msg']}")
        raise TopologyError("\n".join(lines)) from None
    problems = _check(topology, schemas_dir)
    if problems:
        raise TopologyError("\n".join(f"{source}: {path}: {why}" for path, why in problems))
    return topology


def load_topology(path: Path, schemas_dir: Path | None = None) -> Topology:
    """Read and validate a topology file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from None
    return parse_topology(data, str(path), schemas_dir)
