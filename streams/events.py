"""Events written once, as pydantic models; their Avro schemas (.avsc) are derived from them.

A project subclasses `Event` for what happens, `Command` for what a handler is asked to do (it
carries the idempotency key) and `Record` for a nested part such as a line item. The framework
adds the `meta` envelope (EventMeta) to every event's schema; a model never declares it.

    class BookFlight(sagastream.Command):
        \"\"\"Book a seat.\"\"\"
        trip_id: str = Field(description="The trip; the saga key.")
        seats: Int32 = 1

`sagastream schemas generate` writes schemas/<Name>.avsc for every model of a project and
`sagastream schemas check` fails when one is missing or stale, so the files that a registry and
other languages read are always the ones the code implies.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sagastream.errors import ModelError, NotFound

ENGINE_NAMESPACE = "sagastream"
META_RECORD = f"{ENGINE_NAMESPACE}.EventMeta"
META_DOC = "Envelope shared by every event."
ENGINE_MODULE = __name__


@dataclass(frozen=True)
class AvroType:
    """An explicit Avro type for a field, where the Python type alone would pick another."""

    schema: Any


Int32 = Annotated[int, AvroType("int")]
Float32 = Annotated[float, AvroType("float")]
TimestampMillis = Annotated[int, AvroType({"type": "long", "logicalType": "timestamp-millis"})]
UuidStr = Annotated[str, AvroType({"type": "string", "logicalType": "uuid"})]

_RECORDS: list[type[Record]] = []
_BASES = ("Event", "Command")


class Record(BaseModel):
    """A named Avro record; its namespace is the top-level package of its module, unless given
    as `class Seat(Record, avro_namespace="travel")`."""

    model_config = ConfigDict(extra="forbid")
    avro_namespace: ClassVar[str]

    def __init_subclass__(cls, avro_namespace: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.avro_namespace = avro_namespace or cls.__module__.split(".")[0]
        if not (cls.__module__ == __name__ and cls.__name__ in _BASES):
            _RECORDS.append(cls)

    @classmethod
    def avro_fullname(cls) -> str:
        return f"{cls.avro_namespace}.{cls.__name__}"

    def fields(self) -> dict[str, Any]:
        """The values to encode (without meta), in Avro's plain types."""
        return self.model_dump(mode="python")


class Event(Record):
    """Something that happened, carried on a topic; its schema starts with the `meta` envelope."""

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> typing.Self:
        """The model of a decoded record (its meta stays with the runtime)."""
        return cls.model_validate({k: v for k, v in record.items() if k != "meta"})


class Command(Event):
    """What a handler is asked to do; the idempotency key is stable across retries of one step."""

    idempotency_key: str = Field(
        description="Stable per saga and step: a retried command must not repeat its effect."
    )


def avro_schema(model: type[Record]) -> dict[str, Any]:
    """The Avro record schema of a model; other records are referred to by name."""
    schema: dict[str, Any] = {"type": "record", "name": model.__name__}
    schema["namespace"] = model.avro_namespace
    doc = _doc(model)
    if doc:
        schema["doc"] = doc
    fields = []
    if issubclass(model, Event):
        meta = EventMeta.__name__ if model.avro_namespace == ENGINE_NAMESPACE else META_RECORD
        fields.append({"name": "meta", "type": meta, "doc": META_DOC})
    for name, info in model.model_fields.items():
        field: dict[str, Any] = {"name": name}
        try:
            field["type"] = _avro_type(info.annotation, info.metadata, model.avro_namespace)
        except TypeError as exc:
            raise ModelError(f"{model.__module__}.{model.__name__}.{name}: {exc}") from None
        if info.description:
            field["doc"] = info.description
        default = _default(info)
        if default is not PydanticUndefined:
            field["default"] = default
        fields.append(field)
    schema["fields"] = fields
    return schema


def schema_text(model: type[Record]) -> str:
    """The .avsc file's text: stable formatting, so an unchanged model leaves the file as it is."""
    return json.dumps(avro_schema(model), indent=2, ensure_ascii=False) + "\n"


def records_of(module: str) -> list[type[Record]]:
    """The models defined in a module or its package (not sagastream's own), sorted by name."""
    __import__(module)
    package = module if hasattr(sys.modules[module], "__path__") else module.rpartition(".")[0]
    prefixes = (module, f"{package}.") if package else (module,)
    found = {
        r.__name__: r
        for r in _RECORDS
        if r.__module__ != ENGINE_MODULE
        and (r.__module__ == module or r.__module__.startswith(prefixes))
    }
    return [found[name] for name in sorted(found)]


def model_named(name: str) -> type[Record]:
    """The model of a record name: a project's own first, the latest definition if redefined."""
    for record in reversed(_RECORDS):
        if record.__name__ == name:
            return record
    raise NotFound(name)


def engine_records() -> list[type[Record]]:
    """sagastream's own records, whose schemas ship inside the package."""
    return sorted((r for r in _RECORDS if r.__module__ == ENGINE_MODULE), key=lambda r: r.__name__)


def write_schemas(models: Iterable[type[Record]], directory: Path) -> list[Path]:
    """Write each model's .avsc into `directory`; returns the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for model in models:
        path = directory / f"{model.__name__}.avsc"
        text = schema_text(model)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def stale_schemas(models: Iterable[type[Record]], directory: Path) -> list[str]:
    """What `write_schemas` would change, and .avsc files no model derives: one line each."""
    problems = []
    names = set()
    for model in models:
        names.add(model.__name__)
        path = directory / f"{model.__name__}.avsc"
        if not path.is_file():
            problems.append(f"{path}: missing; derived from {model.__module__}.{model.__name__}")
        elif path.read_text(encoding="utf-8") != schema_text(model):
            problems.append(f"{path}: stale; {model.__module__}.{model.__name__} has changed")
    for path in sorted(directory.glob("*.avsc")):
        if path.stem not in names:
            problems.append(f"{path}: no model derives it; delete it or write its model")
    return problems


def _doc(model: type[Record]) -> str:
    doc = model.__doc__ or ""
    for base in (Record, Event, Command, BaseModel):
        if doc == base.__doc__:
            return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return _plain(info.default_factory())  # type: ignore[call-arg]
    if info.default is PydanticUndefined:
        return PydanticUndefined
    return _plain(info.default)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_PRIMITIVES: dict[Any, str] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
}


def _avro_type(annotation: Any, metadata: list[Any], namespace: str) -> Any:
    for item in metadata:
        if isinstance(item, AvroType):
            return item.schema
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extra = typing.get_args(annotation)
        return _avro_type(inner, [*extra, *metadata], namespace)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(annotation)
        others = [a for a in args if a is not type(None)]
        if len(others) != 1:
            raise ModelError(f"only `X | None` unions map to Avro here, not {annotation}")
        return ["null", _avro_type(others[0], [], namespace)]
    if origin in (list, tuple, typing.Sequence) or annotation is list:
        (item,) = typing.get_args(annotation)[:1] or (None,)
        if item is None:
            raise ModelError("a list needs its item type, e.g. list[str]")
        return {"type": "array", "items": _avro_type(item, [], namespace)}
    if origin is dict:
        key, value = typing.get_args(annotation)
        if key is not str:
            raise ModelError("Avro maps have string keys: use dict[str, X]")
        return {"type": "map", "values": _avro_type(value, [], namespace)}
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        if all(isinstance(v, str) for v in values):
            return "string"
        raise ModelError(f"only string literals map to Avro here, not {annotation}")
    if isinstance(annotation, type) and issubclass(annotation, Event):
        raise ModelError(f"an event cannot nest another event ({annotation.__name__}); use Record")
    if isinstance(annotation, type) and issubclass(annotation, Record):
        same = annotation.avro_namespace == namespace
        return annotation.__name__ if same else annotation.avro_fullname()
    if annotation in _PRIMITIVES:
        return _PRIMITIVES[annotation]
    raise ModelError(
        f"no Avro type for {annotation!r}; use str, int, float, bool, bytes, X | None, list[X], "
        "dict[str, X], a Record, or Annotated[..., AvroType(...)]"
    )


# -- sagastream's own records: the envelope, the timers, the outcomes and the audit trail ------


class EventMeta(Record):
    """Envelope carried by every event as field meta."""

    event_id: UuidStr = Field(description="Unique id of this event (UUID).")
    event_type: str = Field(description="Record name of the event, e.g. OrderPlaced.")
    saga_key: str = Field(description="Saga key (order id, loan id); also the Kafka message key.")
    occurred_at: TimestampMillis = Field(
        description="When the event happened, epoch milliseconds UTC."
    )
    producer: str = Field(description="Service that produced the event.")
    correlation_id: str = Field(description="Shared by every event of one business flow.")
    causation_id: str | None = Field(
        default=None, description="event_id of the event that caused this one; null for a root."
    )
    traceparent: str | None = Field(
        default=None, description="W3C traceparent of the trace this event belongs to."
    )
    hop: Int32 = Field(
        default=0, description="Causation depth from the root event; stops event loops."
    )
    attempt: Int32 = Field(
        default=1, description="Attempt number of the step this event belongs to, from 1."
    )
    step: str | None = Field(
        default=None,
        description="The saga step a command is for, copied onto its result; null otherwise.",
    )


class TimerFired(Event):
    """A durable saga timer came due; the orchestrator sends it to itself on the timer topic."""

    kind: str = Field(
        description="step_timeout, retry, deadline, undo_timeout, undo_retry or max_wait."
    )
    step: str = Field(description="The step the timer guards; empty for the saga deadline.")
    attempt: Int32 = Field(description="The step attempt the timer belongs to.")
    due_ms: int = Field(description="When the timer was due, epoch milliseconds.")


class SagaCompleted(Event):
    """A saga finished with every step done."""

    saga_type: str = Field(description="Saga definition name from topology.yaml.")
    completed_steps: list[str] = Field(description="Steps that completed, in completion order.")


class SagaCompensated(Event):
    """A saga failed and its completed steps were undone."""

    saga_type: str = Field(description="Saga definition name from topology.yaml.")
    reason: str = Field(description="Why the saga was compensated, human readable.")
    failed_step: str = Field(description="Step whose failure ended the saga.")
    compensated_steps: list[str] = Field(
        description="Steps that were compensated, in compensation order."
    )


class SagaFailed(Event):
    """A saga ended without completing or being fully compensated."""

    saga_type: str = Field(description="Saga definition name from topology.yaml.")
    reason: str = Field(description="Why the saga failed, human readable.")
    failed_step: str | None = Field(
        default=None,
        description="Step whose failure ended the saga; null if no single step failed.",
    )


class LifecycleChange(Record):
    """One change: what happened, and the step it is about."""

    what: str = Field(
        description="started, step_started, step_succeeded, step_failed, compensating, "
        "completed, compensated, failed, ..."
    )
    step: str | None = Field(default=None, description="The step it is about, if any.")


class SagaLifecycle(Event):
    """A saga's audit trail: one record per saga per commit, with the changes its decisions made, in order."""

    saga_type: str = Field(description="Saga type.")
    status: str = Field(description="The saga's status after these changes.")
    changes: list[LifecycleChange] = Field(
        default_factory=list, description="The changes, oldest first."
    )


class StepSignal(Event):
    """A decision from outside (a human) for a step waiting on one, in any saga."""

    saga_type: str = Field(description="Saga the step belongs to.")
    step: str = Field(description="Name of the waiting step.")
    outcome: str = Field(description="The decision: approved or rejected.")
    note: str | None = Field(default=None, description="Why, from the one who decided.")
    decided_by: str = Field(description="Who decided.")


class SagaMigrate(Event):
    """Move one running saga instance from one version (shape) of its definition to another
    (sagastream saga migrate --execute); keyed by the saga key."""

    saga_type: str = Field(description="Saga the instance belongs to.")
    from_shape: str = Field(
        description="The shape the instance must be on; otherwise the event is dead-lettered."
    )
    to_shape: str = Field(description="The shape it moves to.")
    mapping: dict[str, str] = Field(
        default_factory=dict, description="Old step name to new step name, where they differ."
    )
    requested_by: str = Field(description="Who asked for the move.")


class StepEscalated(Event):
    """A human step waited past its timeout; someone should look at it."""

    saga_type: str = Field(description="Saga the step belongs to.")
    step: str = Field(description="Name of the waiting step.")
    waited_ms: int = Field(description="How long it has waited.")


class StepAttemptFailed(Event):
    """An attempt of a step (or of its undo) ended without a result; a handler's runtime says so."""

    saga_type: str = Field(description="Saga the step belongs to.")
    step: str = Field(description="The step whose attempt failed; meta.attempt is the attempt.")
    kind: str = Field(
        description="exception (the handler raised), timeout (it ran past its bound), contract "
        "(it returned a wrong result type) or too_large (its result was over the record limit)."
    )
    error_type: str = Field(description="The exception's class name, or what broke the contract.")
    message: str = Field(description="What went wrong, human readable.")
    compensation: bool = Field(
        default=False, description="True if the failed command was the step's undo."
    )


class CompensationFailed(Event):
    """An undo failed; any service may emit it."""

    step: str = Field(description="Saga step whose compensation failed.")
    reason: str = Field(description="Why the undo failed, human readable.")
