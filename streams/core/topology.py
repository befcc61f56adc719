"""topology.yaml: loaded once, validated into typed models, and passed down."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sagastream.core.conditions import Condition, compile_condition
from sagastream.errors import SagastreamError

TIMER_EVENT = "TimerFired"
SIGNAL_EVENT = "StepSignal"
# `sagastream saga migrate --execute`: move one instance to another version of its saga
MIGRATE_EVENT = "SagaMigrate"
# a handler's runtime reports a failed attempt with it, on the handler role's `produces` topic
ATTEMPT_FAILED_EVENT = "StepAttemptFailed"
LIFECYCLE_EVENT = "SagaLifecycle"
OUTCOME_EVENTS = ("SagaCompleted", "SagaCompensated", "SagaFailed")
# events the engine itself consumes or produces, declared in topology.yaml like any other
ENGINE_INPUTS = (TIMER_EVENT, SIGNAL_EVENT, MIGRATE_EVENT)
ENGINE_EVENTS = (*ENGINE_INPUTS, LIFECYCLE_EVENT, *OUTCOME_EVENTS)
# the engine's own Avro records, shipped inside the package
ENGINE_SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
OUTCOMES_TOPIC = "sagas.outcomes"
# Merged into every topology: what a project declares itself (say, more partitions) wins.
ENGINE_TOPICS: dict[str, dict[str, Any]] = {
    OUTCOMES_TOPIC: {},
    "sagas.lifecycle": {},  # the audit trail: every state change of every saga
    "sagas.signals": {},  # human decisions for waiting steps, any saga
    "sagas.escalations": {},  # human steps that waited past their timeout
    "sagas.timers": {"retention_ms": 86_400_000},  # where fired timers dead-letter from
}
ENGINE_EVENT_TOPICS = {
    "SagaCompleted": OUTCOMES_TOPIC,
    "SagaCompensated": OUTCOMES_TOPIC,
    "SagaFailed": OUTCOMES_TOPIC,
    LIFECYCLE_EVENT: "sagas.lifecycle",
    SIGNAL_EVENT: "sagas.signals",
    MIGRATE_EVENT: "sagas.signals",
    "StepEscalated": "sagas.escalations",
    TIMER_EVENT: "sagas.timers",
}

START = "start"  # the source name of a saga's start event in `inputs:` and `when:`
# what a human step's signal gives the steps after it
HUMAN_FIELDS = ("note", "decided_by")
# fields sagastream fills itself: every command's, an undo's, a notification's
AUTOMATIC_FIELDS = ("idempotency_key",)
UNDO_FIELDS = (*AUTOMATIC_FIELDS, "step")
NOTIFY_FIELDS = (*AUTOMATIC_FIELDS, "template", "outcome", "channel")
# what an escalation (an event for people, or a command a handler sends on as a notification) gets
ESCALATION_FIELDS = (*AUTOMATIC_FIELDS, "saga_type", "step", "waited_ms")


class TopologyError(SagastreamError, ValueError):
    """A topology file that cannot be used; the message names the file, the field and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Model):
    partitions: int = Field(default=4, ge=1)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    dlq_retention_ms: int = Field(default=30 * 24 * 3600 * 1000, ge=-1)
    # None: min(3, the cluster's brokers)
    replication_factor: int | None = Field(default=None, ge=1)
    # None: replication_factor - 1 from 3 replicas on, else the broker's min.insync.replicas
    min_insync_replicas: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _writable(self) -> Defaults:
        rf, isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and isr is not None and isr > rf:
            raise ValueError(
                f"min_insync_replicas {isr} is more than replication_factor {rf}: no write "
                "could ever be acknowledged; lower min_insync_replicas"
            )
        return self


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
    # commands of different keys in flight at once, per process; default: the settings' bound
    concurrency: int | None = Field(default=None, ge=1)


RetryClass = Literal["timeout", "error", "failure"]


class RetryPolicy(_Model):
    """When a failed attempt is tried again. `on` (YAML: `retry_on`, or `"on"` quoted) lists the
    classes retried: timeout (no result in time, or a run past its bound), error (the handler
    raised, broke its contract or made a result too large) and failure (a business failure event:
    only if listed, as Temporal retries a non-retryable error never)."""

    max_attempts: int = Field(default=1, ge=1)
    initial_backoff_ms: int = Field(default=200, ge=0)
    multiplier: float = Field(default=2.0, ge=1.0)
    max_backoff_ms: int = Field(default=10_000, ge=0)
    on: tuple[RetryClass, ...] = ("timeout", "error")
    jitter: Literal["full", "none"] = "full"

    @model_validator(mode="before")
    @classmethod
    def _retry_on(cls, data: Any) -> Any:
        """`retry_on` is `on` by a name YAML 1.1 cannot misread; an unquoted `on` arrives as
        the boolean true, which is said rather than a bare "Keys should be strings"."""
        if not isinstance(data, dict):
            return data
        if True in data:
            raise ValueError(
                "a key here was read as the boolean true: YAML 1.1 reads an unquoted `on` "
                "(and yes, y, true) as true. Write `retry_on: [timeout, error]` (or quote it: "
                '`"on": [...]`)'
            )
        if "retry_on" in data:
            if "on" in data:
                raise ValueError("give one of 'retry_on' and 'on', not both")
            data = {("on" if k == "retry_on" else k): v for k, v in data.items()}
        return data


# (command field, source, source field)
Binding = tuple[str, str, str]


class Fills(_Model):
    """A command's fields: from the start event or step results (`inputs`), or constants."""

    # source (start or a step) -> its same-named fields, or {command field: source field}
    inputs: dict[str, tuple[str, ...] | dict[str, str]] = Field(default_factory=dict)
    # command field -> a constant value
    params: dict[str, Any] = Field(default_factory=dict)

    @cached_property
    def bindings(self) -> tuple[Binding, ...]:
        """Every input as (command field, source, source field), in file order."""
        out: list[Binding] = []
        for source, fields in self.inputs.items():
            pairs = fields.items() if isinstance(fields, dict) else ((f, f) for f in fields)
            out += [(target, source, field) for target, field in pairs]
        return tuple(out)


class _Conditional(_Model):
    """Something that happens only when `when` holds (conditions.py has the grammar)."""

    # e.g. "start.nights > 0 and flight.arrives_at != ''"; None: always
    when: str | None = None

    @field_validator("when")
    @classmethod
    def _parses(cls, text: str | None) -> str | None:
        if text is not None:
            compile_condition(text)
        return text

    @cached_property
    def condition(self) -> Condition | None:
        """The compiled `when`, once per topology load."""
        return None if self.when is None else compile_condition(self.when)


# How long a command may wait to start (in the brokers, in a busy handler's queue) on top of
# its run-time bound, unless a step sets schedule_to_close_ms.
QUEUE_ALLOWANCE_MS = 60_000


class _Timed(_Model):
    """An attempt's two bounds, as Temporal's start-to-close and schedule-to-close.

    `timeout_ms` bounds the run: the handler loop abandons an attempt that runs longer (a
    heartbeat starts it again) and reports it failed at once. `schedule_to_close_ms` bounds the
    wait for an answer, queueing included: past it the orchestrator counts the attempt as timed
    out even without a report (a worker that died). Default: timeout_ms + QUEUE_ALLOWANCE_MS,
    so that queueing under load causes no retry."""

    timeout_ms: int = Field(default=30_000, ge=1)
    schedule_to_close_ms: int | None = Field(default=None, ge=1)

    @property
    def answer_within_ms(self) -> int:
        """How long the orchestrator waits for an attempt's answer."""
        return self.schedule_to_close_ms or self.timeout_ms + QUEUE_ALLOWANCE_MS

    @model_validator(mode="after")
    def _closes_after_it_runs(self) -> _Timed:
        if self.schedule_to_close_ms is not None and self.schedule_to_close_ms < self.timeout_ms:
            raise ValueError(
                f"schedule_to_close_ms ({self.schedule_to_close_ms}) is shorter than timeout_ms "
                f"({self.timeout_ms}): an attempt could never run for its whole bound"
            )
        return self


class CompensationSpec(Fills, _Timed):
    command: str
    success: str
    failure: tuple[str, ...] = ()
    timeout_ms: int = Field(default=15_000, ge=1)
    retry: RetryPolicy = RetryPolicy(max_attempts=5, on=("timeout", "error", "failure"))


class StepSpec(Fills, _Conditional, _Timed):
    """A step: a command answered by a success or failure event, or a human decision (signal).

    A step whose `when` is false when it becomes ready is skipped, like an optional one.
    """

    command: str | None = None
    success: str | None = None
    failure: tuple[str, ...] = ()
    human: bool = False
    # a human step: `escalation` is sent once it has waited timeout_ms; after max_wait_ms (None:
    # no bound but the saga deadline) it gives up as if a person had decided `on_expiry`
    escalation: str | None = None
    max_wait_ms: int | None = Field(default=None, ge=1)
    on_expiry: Literal["rejected", "approved"] = "rejected"
    depends_on: tuple[str, ...] = ()
    optional: bool = False
    timeout_ms: int = Field(default=30_000, ge=1)
    retry: RetryPolicy = RetryPolicy()
    compensation: CompensationSpec | None = None

    @model_validator(mode="after")
    def _answered_somehow(self) -> StepSpec:
        if not self.human and (self.command is None or self.success is None):
            raise ValueError("a step needs 'command' and 'success', unless it is 'human: true'")
        if self.escalation and not self.human:
            raise ValueError("'escalation' is for human steps; other steps time out and retry")
        if self.max_wait_ms is not None and not self.human:
            raise ValueError("'max_wait_ms' is for human steps; other steps time out and retry")
        if self.command is None and (self.inputs or self.params):
            raise ValueError("'inputs' and 'params' fill the step's command, and it has none")
        return self


class NotifyRule(_Conditional):
    """One row of the notification decision table: a channel, sent when `when` holds (or always)."""

    channel: str


class NotifySpec(Fills):
    """Notifications when a saga ends: one independent command per matching channel rule."""

    command: str
    templates: dict[Literal["completed", "compensated", "failed"], str]
    rules: tuple[NotifyRule, ...] = (NotifyRule(channel="email"),)


class SagaSpec(_Model):
    start_event: str
    key_field: str
    outcome_topic: str = OUTCOMES_TOPIC
    # None: no deadline; else the saga compensates once it has run this long, whatever it waits on
    deadline_ms: int | None = Field(default=None, ge=1)
    max_hops: int = Field(default=32, ge=1)
    # full: every change; outcomes: only a saga's start and end; off: no SagaLifecycle records
    audit: Literal["full", "outcomes", "off"] = "full"
    # how long an ended saga stays in the orchestrator's store; -1 keeps it forever
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    steps: dict[str, StepSpec] = Field(min_length=1)
    notify: NotifySpec | None = None

    @cached_property
    def shape(self) -> str:
        """The identity of this definition's shape, which every saga started on it is pinned to
        (sagastream.core.definition)."""
        from sagastream.core.definition import shape_of  # it reads the topology's types

        return shape_of(self)

    @cached_property
    def used_fields(self) -> dict[str, frozenset[str]]:
        """Per source (start or a step), the fields the saga reads: those named by an `inputs`
        (steps, compensations, notify) or a `when:`, and the saga key. The state keeps these
        alone, so data no step uses never reaches the changelog."""
        used: dict[str, set[str]] = {START: {self.key_field}}
        fills: list[Fills] = [*self.steps.values()]
        fills += [s.compensation for s in self.steps.values() if s.compensation]
        rules: list[_Conditional] = [*self.steps.values()]
        if self.notify is not None:
            fills.append(self.notify)
            rules += self.notify.rules
        for fill in fills:
            for _, source, field in fill.bindings:
                used.setdefault(source, set()).add(field)
        for rule in rules:
            for source, field in rule.condition.references if rule.condition else ():
                used.setdefault(source, set()).add(field)
        return {source: frozenset(fields) for source, fields in used.items()}


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
    # the module whose import registers the handler functions (a worker's --app overrides it)
    app: str | None = None
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
        for event in saga_event_types(spec):
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

    def orchestrator_inputs(self, recorded: Iterable[SagaSpec] = ()) -> list[str]:
        """Topics the orchestrator consumes: start events, step results, signals, and every
        handler role's `produces` topic (where failed attempts are reported), of its sagas and
        of the `recorded` definitions it decides too (their events declared here).

        Timers are not among them: the orchestrator fires them from its own state, inline.
        """
        names: list[str] = []
        for spec in [*self.sagas.values(), *recorded]:
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
        failed = self.events.get(ATTEMPT_FAILED_EVENT)
        names += [t for t in (failed.all_topics if failed else ()) if t not in names]
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


def saga_event_types(spec: SagaSpec) -> list[str]:
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
    records = _Records(topology, schemas_dir)
    for name, event in topology.events.items():
        for topic in event.all_topics:
            if topic not in topics:
                field = "topic" if event.topic else "topics"
                problems.append((f"events.{name}.{field}", f"unknown topic '{topic}'"))
        file = f"{event.schema_name}.avsc"
        if (
            schemas_dir is not None
            and not (schemas_dir / file).is_file()
            and not (ENGINE_SCHEMAS_DIR / file).is_file()
        ):
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
        if START in saga.steps:
            problems.append(
                (
                    f"{base}.steps.{START}",
                    f"'{START}' names the start event in inputs and conditions; rename the step",
                )
            )
        if saga.notify:
            refs.append((f"{base}.notify.command", saga.notify.command))
        for path, ref in refs:
            if ref not in topology.events:
                problems.append((path, f"event '{ref}' is not declared under events (no schema)"))
        problems += _ambiguous(base, saga)
        cycle = _find_cycle({n: s.depends_on for n, s in saga.steps.items()})
        if cycle:
            problems.append((f"{base}.steps", "dependency cycle: " + " -> ".join(cycle)))
        if START not in saga.steps:
            problems += _check_data_flow(base, saga, records)
        if not problems:
            counts = {t: topology.partitions(t) for t in topology.saga_topics(saga_name)}
            if len(set(counts.values())) > 1:
                detail = ", ".join(f"{t}={n}" for t, n in counts.items())
                problems.append(
                    (base, f"topics of one saga must have the same partition count ({detail})")
                )
    return problems


def _results(step: StepSpec) -> list[tuple[str, str]]:
    """(role, event type) of every result a step's commands may get."""
    out = [("success", step.success)] if step.success else []
    out += [("failure", f) for f in step.failure]
    if step.compensation:
        comp = step.compensation
        out += [("compensation.success", comp.success)]
        out += [("compensation.failure", f) for f in comp.failure]
    return out


def _ambiguous(base: str, saga: SagaSpec) -> list[tuple[str, str]]:
    """Layouts no result can be routed in, even with the step its command named (meta.step):
    one event type in two roles of one step, or a result type that is also the saga's start
    event or another step's command. Steps may share a result type in any other way."""
    problems: list[tuple[str, str]] = []
    commands = {
        c: name
        for name, step in saga.steps.items()
        for c in (step.command, step.compensation.command if step.compensation else None)
        if c
    }
    for name, step in saga.steps.items():
        seen: dict[str, str] = {}
        for role, event in _results(step):
            path = f"{base}.steps.{name}.{role}"
            if event in seen and seen[event] != role:
                problems.append(
                    (
                        path,
                        f"{event} is both the {seen[event]} and the {role} of step {name}: "
                        "a result of it could mean either; give each its own event type",
                    )
                )
            seen.setdefault(event, role)
            if event == saga.start_event:
                problems.append(
                    (path, f"{event} is the saga's start event and a result of step {name}")
                )
            elif event in commands:
                problems.append(
                    (
                        path,
                        f"{event} is the command of step {commands[event]} and a result of "
                        f"step {name}: a handler's result cannot also be a command",
                    )
                )
    return problems


class _Records:
    """The fields of the Avro records a topology names, read once per load (None: unknown)."""

    def __init__(self, topology: Topology, schemas_dir: Path | None) -> None:
        self.topology = topology
        self.schemas_dir = schemas_dir
        self._fields: dict[str, dict[str, bool] | None] = {}

    def fields(self, event: str) -> dict[str, bool] | None:
        """An event's fields, each with whether it has a default; the envelope `meta` left out."""
        spec = self.topology.events.get(event)
        if self.schemas_dir is None or spec is None:
            return None
        name = spec.schema_name
        if name not in self._fields:
            self._fields[name] = _read_fields(name, (self.schemas_dir, ENGINE_SCHEMAS_DIR))
        return self._fields[name]


def _read_fields(name: str, directories: tuple[Path, ...]) -> dict[str, bool] | None:
    for directory in directories:
        path = directory / f"{name}.avsc"
        if not path.is_file():
            continue
        try:
            schema = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # the codec reports an unreadable schema, with its own detail
        fields = schema.get("fields") if isinstance(schema, dict) else None
        if not isinstance(fields, list):
            return None
        return {
            f["name"]: "default" in f
            for f in fields
            if isinstance(f, dict) and isinstance(f.get("name"), str) and f["name"] != "meta"
        }
    return None


def _ancestors(steps: dict[str, StepSpec], name: str) -> set[str]:
    """The steps `name` depends on, directly or not (cycles and unknown steps left out)."""
    seen: set[str] = set()
    todo = [d for d in steps[name].depends_on if d in steps]
    while todo:
        dep = todo.pop()
        if dep not in seen and dep != name:
            seen.add(dep)
            todo += [d for d in steps[dep].depends_on if d in steps]
    return seen


def _check_data_flow(base: str, saga: SagaSpec, records: _Records) -> list[tuple[str, str]]:
    """Every command's fields can be filled from results that exist by then; `when`s too."""
    problems: list[tuple[str, str]] = []
    # a skipped step leaves no result, so what is taken from it may be absent
    skippable = {n for n, s in saga.steps.items() if s.when is not None or s.optional}

    def source_fields(source: str) -> tuple[str, dict[str, bool] | None]:
        """What a source is called in messages, and its fields (None: unknown)."""
        if source == START:
            return saga.start_event, records.fields(saga.start_event)
        step = saga.steps[source]
        if step.human:
            return f"the signal of {source}", dict.fromkeys(HUMAN_FIELDS, True)
        assert step.success is not None
        return step.success, records.fields(step.success)

    def check(path: str, fills: Fills, command: str, flow: _Flow) -> None:
        schema = records.fields(command)
        fillers: dict[str, str] = dict.fromkeys(flow.automatic, "sagastream")
        for source in fills.inputs:
            if source not in flow.sources:
                problems.append(
                    (
                        f"{path}.inputs.{source}",
                        f"'{source}' is not {flow.allowed}: its result would not exist yet",
                    )
                )
        for target, source, field in fills.bindings:
            where = f"{path}.inputs.{source}"
            if source not in flow.sources:
                continue
            if target in fillers:
                problems.append(
                    (
                        where,
                        f"{command} field '{target}' collides: filled by "
                        f"{fillers[target]} and by {source}",
                    )
                )
                continue
            fillers[target] = source
            event, available = source_fields(source)
            if available is not None and field not in available:
                problems.append((where, f"{event} has no field '{field}' (for '{target}')"))
            if schema is None:
                continue
            if target not in schema:
                problems.append((where, f"{command} has no field '{target}'"))
            elif source in flow.absent and not schema[target]:
                problems.append(
                    (
                        where,
                        f"{command} field '{target}' comes from {source}, which {flow.why}, "
                        f"so {command} must give '{target}' a default",
                    )
                )
        for target in fills.params:
            where = f"{path}.params"
            if target in fillers:
                problems.append(
                    (
                        where,
                        f"{command} field '{target}' collides: filled by "
                        f"{fillers[target]} and by params",
                    )
                )
                continue
            fillers[target] = "params"
            if schema is not None and target not in schema:
                problems.append((where, f"{command} has no field '{target}'"))
        for target, has_default in (schema or {}).items():
            if not has_default and target not in fillers:
                problems.append(
                    (
                        f"{path}.inputs",
                        f"{command} field '{target}' cannot be filled: no "
                        "input or param gives it and it has no default",
                    )
                )

    def check_when(path: str, rule: _Conditional, flow: _Flow) -> None:
        for source, field in rule.condition.references if rule.condition else ():
            if source not in flow.sources:
                problems.append((path, f"'{source}.{field}': '{source}' is not {flow.allowed}"))
                continue
            event, available = source_fields(source)
            if available is not None and field not in available:
                problems.append((path, f"'{source}.{field}': {event} has no field '{field}'"))

    skipped_why = "may be skipped (it has when: or optional: true)"
    for name, step in saga.steps.items():
        sp = f"{base}.steps.{name}"
        before = _ancestors(saga.steps, name)
        flow = _Flow(
            {START, *before},
            f"start or a step {name} depends on",
            before & skippable,
            skipped_why,
            AUTOMATIC_FIELDS,
        )
        check_when(f"{sp}.when", step, flow)
        if step.command is not None:
            check(sp, step, step.command, flow)
        if step.escalation is not None:
            problems += _check_escalation(sp, step.escalation, records)
        if step.compensation is not None:
            undo = _Flow(
                {START, name, *before},
                f"start, {name} or a step {name} depends on",
                flow.absent,
                skipped_why,
                UNDO_FIELDS,
            )
            check(f"{sp}.compensation", step.compensation, step.compensation.command, undo)
    if saga.notify is not None:
        notify = saga.notify
        flow = _Flow(
            {START, *saga.steps},
            "start or a step of this saga",
            set(saga.steps),
            "may not have succeeded when the saga ends",
            NOTIFY_FIELDS,
        )
        for i, rule in enumerate(notify.rules):
            check_when(f"{base}.notify.rules.{i}.when", rule, flow)
        check(f"{base}.notify", notify, notify.command, flow)
    return problems


def _check_escalation(path: str, escalation: str, records: _Records) -> list[tuple[str, str]]:
    """sagastream fills an escalation's fields itself, so every other field needs a default: found
    at load, not when the escalation is due days later."""
    fields = records.fields(escalation) or {}
    unfilled = [f for f, default in fields.items() if not default and f not in ESCALATION_FIELDS]
    if not unfilled:
        return []
    return [
        (
            f"{path}.escalation",
            f"{escalation} field(s) {', '.join(unfilled)} cannot be filled: an escalation gets "
            f"only {', '.join(ESCALATION_FIELDS)} (idempotency_key for a command); give the "
            "others defaults, or escalate with an event such as StepEscalated",
        )
    ]


@dataclass(frozen=True)
class _Flow:
    """What a command or condition may read: sources, which of them may be absent, and why."""

    sources: set[str]
    allowed: str  # the sources, said in words
    absent: set[str]
    why: str  # why an absent source may be absent
    automatic: tuple[str, ...]  # fields sagastream fills


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


def with_engine(data: Any) -> Any:
    """The document with sagastream's own topics and events added where it does not declare them,
    and each event's schema defaulting to the event's name."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    topics = data.get("topics")
    if isinstance(topics, list):
        declared = {t.get("name") for t in topics if isinstance(t, dict)}
        data["topics"] = topics + [
            {"name": name, **conf} for name, conf in ENGINE_TOPICS.items() if name not in declared
        ]
    events = data.get("events")
    if isinstance(events, dict):
        events = {
            name: {"schema": name, **spec} if isinstance(spec, dict) else spec
            for name, spec in events.items()
        }
        for name, topic in ENGINE_EVENT_TOPICS.items():
            events.setdefault(name, {"schema": name, "topic": topic})
        produces = _step_result_topics(data, events)
        if produces:
            events.setdefault(
                ATTEMPT_FAILED_EVENT, {"schema": ATTEMPT_FAILED_EVENT, "topics": produces}
            )
        data["events"] = events
    return data


def _step_result_topics(data: dict[str, Any], events: dict[str, Any]) -> list[str]:
    """The `produces` topic of every handler role that runs a saga step or undo, in file order:
    where its failed attempts travel. (A notification's handler answers no step.)"""
    commands: set[str] = set()
    sagas = data.get("sagas")
    for saga in sagas.values() if isinstance(sagas, dict) else ():
        steps = saga.get("steps") if isinstance(saga, dict) else None
        for step in steps.values() if isinstance(steps, dict) else ():
            if not isinstance(step, dict):
                continue
            comp = step.get("compensation")
            commands |= {c for c in (step.get("command"),) if isinstance(c, str)}
            if isinstance(comp, dict) and isinstance(comp.get("command"), str):
                commands.add(comp["command"])
    command_topics: set[Any] = set()
    for name in commands:
        spec = events.get(name)
        if isinstance(spec, dict):
            topics = spec.get("topics")
            command_topics |= set(topics) if isinstance(topics, list) else {spec.get("topic")}
    handlers = data.get("handlers")
    produces = [
        h.get("produces")
        for h in (handlers.values() if isinstance(handlers, dict) else ())
        if isinstance(h, dict) and h.get("consumes") in command_topics
    ]
    return list(dict.fromkeys(t for t in produces if isinstance(t, str)))


def parse_topology(data: Any, source: str, schemas_dir: Path | None = None) -> Topology:
    """Validate a parsed YAML document; errors name the source, the field path and why."""
    try:
        topology = Topology.model_validate(with_engine(data))
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second `timeout_ms:` a few lines down would change a step without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: what it merges may be overridden here, as YAML says
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{key!r} is given twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_topology(path: Path, schemas_dir: Path | None = None) -> Topology:
    """Read and validate a topology file."""
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from None
    return parse_topology(data, str(path), schemas_dir)


def file_json_schema() -> dict[str, Any]:
    """The JSON Schema of a topology.yaml as a user writes it, for editors to complete and check
    the file (`sagastream topology schema`; shipped as sagastream/topology.schema.json). It is
    the model's own schema, less what `with_engine` fills in: an event's `schema` defaults to
    its name. Cross-references (a step's command is an event, a topic exists) are the loader's."""
    schema = Topology.model_json_schema()
    event = schema["$defs"]["EventSpec"]
    event["required"] = [f for f in event.get("required", []) if f != "schema"]
    if not event["required"]:
        del event["required"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "sagastream topology.yaml",
        "description": "Topics, events, handler roles and sagas of a sagastream project "
        "(README: Sagas, declared in topology.yaml). `sagastream validate` checks the rest.",
        **{k: v for k, v in schema.items() if k != "title"},
    }
