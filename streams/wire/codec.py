"""Avro schemas, schema ids and the Confluent wire-format codec for events and their EventMeta."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import functools
import hashlib
import io
import json
import os
import random
import re
import struct
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import fastavro._read
import fastavro._write
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import SchemaParseException, UnknownType

from sagastream.core.topology import ENGINE_SCHEMAS_DIR
from sagastream.errors import NotFound, SagastreamError, SchemaError

META_RECORD = "EventMeta"

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "null": type(None),
    "boolean": bool,
    "int": int,
    "long": int,
    "float": (int, float),
    "double": (int, float),
    "bytes": (bytes, bytearray),
    "string": str,
}
_HEADER = struct.Struct(">BI")
_MAGIC = 0
_INT_RANGE = (-(2**31), 2**31 - 1)
# Registries number schemas with Java ints; the header is read unsigned, so ids above this
# exist nowhere, and asking would only earn an answer a registry may word as anything.
_MAX_SCHEMA_ID = 2**31 - 1
_LONG_RANGE = (-(2**63), 2**63 - 1)

ParsedSchema = dict[str, Any]
DecodeReason = Literal[
    "empty",
    "bad_magic",
    "unknown_schema_id",
    "schema_mismatch",
    "incompatible_schema",
    "truncated",
    "corrupt",
]


class SchemaStore:
    """Every record schema of the engine's and one project's .avsc files, parsed once, by name.

    The engine's own records (EventMeta, TimerFired, the outcomes, ...) ship inside the package
    and are always there; `directory` holds a project's events, which may refer to them.
    """

    def __init__(self, directory: Path | str, *, engine: bool = True) -> None:
        self.directory = Path(directory)
        sources = _read_sources(ENGINE_SCHEMAS_DIR) if engine else {}
        for name, (path, schema) in _read_sources(self.directory).items():
            if name in sources and sources[name][0] != path:
                raise SchemaError(
                    f"{path}: {name} is one of sagastream's own records "
                    f"({sources[name][0]}); remove it from {self.directory}"
                )
            sources[name] = (path, schema)
        named: dict[str, Any] = {}
        self._parsed: dict[str, ParsedSchema] = {}
        self._paths = {name: path for name, (path, _) in sources.items()}
        for name in _dependency_order(sources):
            path, schema = sources[name]
            try:
                self._parsed[name] = _parse(schema, named)
            except (SchemaParseException, UnknownType) as exc:
                raise SchemaError(f"{path}: invalid Avro schema: {exc}") from exc
        fullnames = {_fullname(s["name"], s.get("namespace")): n for n, (_, s) in sources.items()}
        self._raw = {
            name: _inline(schema, None, fullnames, sources, set())
            for name, (_, schema) in sources.items()
        }
        self._event_types = sorted(
            name for name, (_, schema) in sources.items() if _is_event(schema, fullnames)
        )

    def add(self, name: str, schema: dict[str, Any]) -> None:
        """Know one more event's record: a self-contained schema (as `raw` gives it) that a
        saga definition recorded, for an event type no longer in this project's schemas/. A
        name already known keeps its own schema."""
        if name in self._raw:
            return
        try:
            self._parsed[name] = _parse(copy.deepcopy(schema), {})
        except (SchemaParseException, UnknownType) as exc:
            raise SchemaError(f"the recorded schema of {name} is not valid Avro: {exc}") from exc
        self._raw[name] = copy.deepcopy(schema)
        self._event_types = sorted({*self._event_types, name})

    def source(self, name: str) -> str:
        """The .avsc text a record was read from."""
        return self._paths[name].read_text(encoding="utf-8")

    def event_types(self) -> list[str]:
        """Sorted names of the records that are events (first field `meta` of type EventMeta)."""
        return list(self._event_types)

    def schema(self, name: str) -> ParsedSchema:
        """The fastavro-parsed schema of a record (event or shared record such as EventMeta)."""
        try:
            return self._parsed[name]
        except KeyError:
            raise NotFound(self._unknown(name)) from None

    def raw(self, name: str) -> dict[str, Any]:
        """The record's schema JSON with referenced records inlined: self-contained, registrable."""
        try:
            return copy.deepcopy(self._raw[name])
        except KeyError:
            raise NotFound(self._unknown(name)) from None

    def fullname(self, name: str) -> str:
        """The record's full name (namespace.name), as registries and schema resolution see it."""
        raw = self._raw.get(name)
        if raw is None:
            raise NotFound(self._unknown(name))
        return _fullname(raw["name"], raw.get("namespace"))

    def canonical(self, name: str) -> str:
        """raw(name) as canonical JSON text (sorted keys, no whitespace).

        This is the exact text sent to a schema registry: registries that compare text
        (Apicurio) give a new id to the same schema formatted differently.
        """
        return canonical_json(self.raw(name))

    def _unknown(self, name: str) -> str:
        return f"no schema named {name!r} in {self.directory}; known: {', '.join(self._parsed)}"


def canonical_json(schema: Any) -> str:
    """One JSON text per schema, whatever its key order or formatting."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class SchemaIds(Protocol):
    """Wire-format schema ids: a schema registry, or the local stand-in.

    id_for and writer_schema may raise RegistryUnavailable; that is a reason to retry, never
    to dead-letter.
    """

    def id_for(self, event_type: str) -> int:
        """The id a producer writes for the event type's local schema; KeyError if it has none."""
        ...

    def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
        """The schema JSON an id stands for (what the producer wrote with); None if unknown."""
        ...

    def forget_schema(self, schema_id: int) -> None:
        """Drop what is cached for this id: the next writer_schema asks again."""
        ...

    def renumbered(self) -> bool:
        """Whether the producer ids were just re-resolved to other numbers (the registry lost
        or renumbered them); callers then drop every id they derived from the old ones."""
        ...

    def suspect(self) -> None:
        """Something read suggests the ids changed: the next renumbered() checks at once."""
        ...

    @property
    def config_error(self) -> str | None:
        """Why the registry refuses this worker (e.g. its credentials), while it does."""
        ...


class RegistryUnavailable(SagastreamError, RuntimeError):
    """The schema registry could not be asked (unreachable, timing out, failing): retry later."""


class RegistryRefused(RegistryUnavailable):
    """The registry refused the credentials (401/403): a configuration error, not an outage.

    It still makes inputs wait (nothing is dead-lettered for a wrong password), but the
    worker says so loudly and is not ready until the registry accepts it.
    """


class LocalSchemaIds:
    """Stand-in for a schema registry: an id per event type, from a hash of its record name.

    Ids depend only on each record's full name, so adding or removing a schema never
    renumbers the others and old messages stay readable on replay. Two names with the
    same hash are refused when the ids are built. Producer and consumer must share the
    schema files: the id says which record, not which version of it.
    """

    def __init__(self, store: SchemaStore) -> None:
        self._store = store
        self._ids: dict[str, int] = {}
        self._types: dict[int, str] = {}
        for event_type in store.event_types():
            fullname = store.fullname(event_type)
            schema_id = local_schema_id(fullname)
            clash = self._types.get(schema_id)
            if clash is not None:
                raise SchemaError(
                    f"{store.directory}: records {store.fullname(clash)} and {fullname} hash to "
                    f"the same local schema id {schema_id}; rename one, or use a schema registry"
                )
            self._ids[event_type] = schema_id
            self._types[schema_id] = event_type

    def id_for(self, event_type: str) -> int:
        try:
            return self._ids[event_type]
        except KeyError:
            raise NotFound(f"no schema id for event type {event_type!r}") from None

    def event_type_for(self, schema_id: int) -> str | None:
        return self._types.get(schema_id)

    def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
        event_type = self._types.get(schema_id)
        return None if event_type is None else self._store.raw(event_type)

    def forget_schema(self, schema_id: int) -> None:
        """Nothing to forget: local ids are a pure function of the record names."""

    def renumbered(self) -> bool:
        return False

    def suspect(self) -> None:
        """Local ids cannot change while the process runs."""

    @property
    def config_error(self) -> str | None:
        return None


def local_schema_id(fullname: str) -> int:
    """A positive 31-bit id from a record's full name (Confluent ids are Java ints)."""
    digest = hashlib.sha256(fullname.encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF or 1


class EncodeError(SagastreamError, ValueError):
    """A record does not fit its event type's schema; `field` is a path such as meta.hop."""

    def __init__(self, event_type: str, field: str | None, detail: str) -> None:
        where = f"field {field!r}: " if field else ""
        super().__init__(f"cannot encode {event_type}: {where}{detail}")
        self.event_type = event_type
        self.field = field
        self.detail = detail


class DecodeError(SagastreamError, ValueError):
    """A message is not a decodable event; `reason` is a short code for dead-letter headers."""

    def __init__(
        self,
        reason: DecodeReason,
        message: str,
        *,
        schema_id: int | None = None,
        event_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.schema_id = schema_id
        self.event_type = event_type


class AvroCodec:
    """Encodes and decodes events in the Confluent wire format: magic 0, schema id, Avro body.

    Decoding reads the body with the writer's schema (what the id stands for) resolved to
    the reader's (the local schema of the same record name), so a consumer reads events
    written with an older or newer compatible version of a schema. Decoded records hold
    Avro base types (logical types are not applied): occurred_at stays epoch millis and
    event_id a string, so records are JSON-friendly. Encoding accepts either form. With
    validate=True every record is checked before writing; otherwise only records fastavro
    rejects are diagnosed, which is cheaper but lets fastavro coerce, e.g. a float into a
    long. Schemas are looked up once per event type and once per id, then cached.
    """

    def __init__(self, store: SchemaStore, ids: SchemaIds, *, validate: bool = False) -> None:
        self._store = store
        self._ids = ids
        self._validate = validate
        self._writers: dict[str, tuple[bytes, ParsedSchema]] = {}
        self._readers: dict[int, tuple[str, ParsedSchema, ParsedSchema | None]] = {}
        self._by_fullname = {store.fullname(t): t for t in store.event_types()}
        self._meta = _parse(_without_logical_types(store.raw(META_RECORD)), {})
        self._prepared = False

    @property
    def config_error(self) -> str | None:
        """Why the schema registry refuses this worker (a configuration error), while it does.

        For readiness: inputs wait meanwhile, but waiting will not fix it.
        """
        return self._ids.config_error

    def prepare(self, event_types: Iterable[str]) -> None:
        """Resolve the ids of these event types now, so producing later needs no registry.

        A no-op once it has succeeded. Raises RegistryUnavailable; any other problem with
        an event type is left for encode to report when that type is produced.
        """
        self._drop_renumbered()
        if self._prepared:
            return
        for event_type in event_types:
            if event_type not in self._writers:
                with contextlib.suppress(EncodeError):
                    self._writer_for(event_type)
        self._prepared = True

    def encode(self, event_type: str, record: Mapping[str, Any]) -> bytes:
        """Serialize `record` as `event_type`; raises EncodeError naming the bad field."""
        self._drop_renumbered()
        writer = self._writers.get(event_type) or self._writer_for(event_type)
        header, schema = writer
        if self._validate:
            _raise_if_invalid(event_type, schema, record)
        try:
            return _write_body(header, schema, record)
        except Exception as exc:
            _raise_if_invalid(event_type, schema, record)
            raise EncodeError(event_type, None, f"{type(exc).__name__}: {exc}") from exc

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Return (event_type, record) from one message; raises DecodeError with a reason.

        Raises RegistryUnavailable when the writer's schema had to be fetched and could not be.
        A record whose meta names another type than its schema id is a `schema_mismatch`:
        the registry lost or renumbered its ids. The id is asked again once first, past
        every cache, since what is stale may be the cached meaning of the id, not the record.
        """
        size = len(data)
        if size < _HEADER.size:
            what = "empty message" if size == 0 else f"message of {size} bytes"
            raise DecodeError("empty", f"{what}: shorter than the 5-byte wire-format header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise DecodeError(
                "bad_magic",
                f"magic byte is {magic}, expected {_MAGIC}: not Confluent wire format",
            )
        try:
            decoder = self._readers.get(schema_id) or self._reader_for(schema_id, data)
            return self._read(data, schema_id, decoder)
        except DecodeError as exc:
            if exc.reason != "schema_mismatch":
                raise
        self._readers.pop(schema_id, None)
        self._ids.forget_schema(schema_id)
        return self._read(data, schema_id, self._reader_for(schema_id, data))

    def _read(
        self,
        data: bytes,
        schema_id: int,
        decoder: tuple[str, ParsedSchema, ParsedSchema | None],
    ) -> tuple[str, dict[str, Any]]:
        """The body read with the id's schema; a body that fails or says another type raises."""
        event_type, writer, reader = decoder
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = _read_body(body, writer, reader)
        except Exception as exc:
            self._raise_if_mismatch(data, schema_id, event_type)
            if isinstance(exc, SchemaResolutionError):
                raise DecodeError(
                    "incompatible_schema",
                    f"{event_type} (schema id {schema_id}): the writer's schema does not resolve "
                    f"to the local one: {exc}",
                    schema_id=schema_id,
                    event_type=event_type,
                ) from exc
            reason: DecodeReason = "truncated" if _runs_out(writer, reader, data) else "corrupt"
            raise DecodeError(
                reason,
                f"{event_type} (schema id {schema_id}): {reason} body: {type(exc).__name__}: {exc}",
                schema_id=schema_id,
                event_type=event_type,
            ) from exc
        meta = record.get("meta")
        declared = meta.get("event_type") if isinstance(meta, dict) else None
        if isinstance(declared, str) and declared != event_type:
            raise self._mismatch(schema_id, event_type, declared)
        size = len(data)
        if body.tell() != size:
            self._raise_if_mismatch(data, schema_id, event_type)
            raise DecodeError(
                "corrupt",
                f"{event_type} (schema id {schema_id}): "
                f"{size - body.tell()} unread bytes after the record",
                schema_id=schema_id,
                event_type=event_type,
            )
        return event_type, record

    def _declared_type(self, data: bytes) -> str | None:
        """The event type the producer wrote in the record's meta, read without its schema.

        Every event's first field is its EventMeta, so the meta reads the same whatever
        schema the id names; None when not even that can be read.
        """
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            meta = schemaless_reader(body, self._meta, None)
        except Exception:
            return None
        declared = meta.get("event_type") if isinstance(meta, dict) else None
        return declared if isinstance(declared, str) else None

    def _raise_if_mismatch(self, data: bytes, schema_id: int, event_type: str) -> None:
        """schema_mismatch when the record says it is another event type than the id names."""
        declared = self._declared_type(data)
        if declared is not None and declared != event_type:
            raise self._mismatch(schema_id, event_type, declared)

    def _mismatch(self, schema_id: int, event_type: str, declared: str) -> DecodeError:
        self._ids.suspect()
        return DecodeError(
            "schema_mismatch",
            f"schema id {schema_id} names {event_type}, the record says {declared}: the schema "
            "registry lost or renumbered its ids after this record was written (its bytes "
            "carry the old id, so a redrive cannot fix it)",
            schema_id=schema_id,
            event_type=event_type,
        )

    def _drop_renumbered(self) -> None:
        """Write the new ids once the registry renumbered them.

        Readings of ids are kept: records written before still carry the old ids, and every
        reading is checked against the record's own type, which asks the id again if needed.
        """
        if self._ids.renumbered():
            self._writers.clear()
            self._prepared = False

    def _writer_for(self, event_type: str) -> tuple[bytes, ParsedSchema]:
        try:
            schema = self._store.schema(event_type)
            schema_id = self._ids.id_for(event_type)
        except KeyError as exc:
            raise EncodeError(event_type, None, str(exc.args[0])) from None
        writer = (_HEADER.pack(_MAGIC, schema_id), schema)
        self._writers[event_type] = writer
        return writer

    def _reader_for(
        self, schema_id: int, data: bytes
    ) -> tuple[str, ParsedSchema, ParsedSchema | None]:
        if schema_id > _MAX_SCHEMA_ID:
            raise DecodeError(
                "unknown_schema_id",
                f"unknown schema id {schema_id}: above {_MAX_SCHEMA_ID}, the largest id a "
                "schema registry gives",
                schema_id=schema_id,
            )
        written = self._ids.writer_schema(schema_id)
        if written is None:
            declared = self._declared_type(data)
            if declared is not None:
                self._ids.suspect()  # a registry that lost its ids answers like this
            says = (
                ""
                if declared is None
                else f", though the record says it is {declared}: the schema registry may have "
                "lost its ids after it was written (its bytes carry the old id, so a redrive "
                "cannot fix it)"
            )
            raise DecodeError(
                "unknown_schema_id",
                f"unknown schema id {schema_id}{says}",
                schema_id=schema_id,
                event_type=declared,
            )
        fullname = _fullname(str(written.get("name")), written.get("namespace"))
        event_type = self._by_fullname.get(fullname)
        if event_type is None:
            raise DecodeError(
                "unknown_schema_id",
                f"schema id {schema_id} is {fullname}, which has no local schema",
                schema_id=schema_id,
            )
        local = self._store.raw(event_type)
        reader = _parse(_without_logical_types(local), {})
        decoder: tuple[str, ParsedSchema, ParsedSchema | None]
        if canonical_json(written) == canonical_json(local):
            decoder = (event_type, reader, None)
        else:
            try:
                writer = _parse(_without_logical_types(written), {})
            except (SchemaParseException, UnknownType, TypeError, KeyError) as exc:
                raise DecodeError(
                    "incompatible_schema",
                    f"schema id {schema_id} ({fullname}) is not a usable Avro schema: {exc}",
                    schema_id=schema_id,
                    event_type=event_type,
                ) from exc
            decoder = (event_type, writer, reader)
        self._readers[schema_id] = decoder
        return decoder


def new_meta(
    event_type: str,
    saga_key: str,
    producer: str,
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    traceparent: str | None = None,
    hop: int = 0,
    attempt: int = 1,
    now_ms: int | None = None,
    step: str | None = None,
) -> dict[str, Any]:
    """EventMeta for a new event; correlation_id defaults to the new event's own id."""
    event_id = _uuid4()
    return {
        "event_id": event_id,
        "event_type": event_type,
        "saga_key": saga_key,
        "occurred_at": time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        "producer": producer,
        "correlation_id": event_id if correlation_id is None else correlation_id,
        "causation_id": causation_id,
        "traceparent": traceparent,
        "hop": hop,
        "attempt": attempt,
        "step": step,
    }


def derive_meta(
    parent_meta: Mapping[str, Any],
    event_type: str,
    producer: str,
    *,
    attempt: int | None = None,
    now_ms: int | None = None,
    step: str | None = None,
    traceparent: str | None = None,
) -> dict[str, Any]:
    """EventMeta for an event caused by `parent_meta`: same saga and trace, one hop further.
    `step` is the saga step a command is for (a handler's result copies its command's);
    `traceparent` its own (a command's: its attempt's span), else a new child span's."""
    return new_meta(
        event_type,
        parent_meta["saga_key"],
        producer,
        correlation_id=parent_meta["correlation_id"],
        causation_id=parent_meta["event_id"],
        traceparent=traceparent or _child_traceparent(parent_meta.get("traceparent")),
        hop=parent_meta.get("hop", 0) + 1,
        attempt=parent_meta.get("attempt", 1) if attempt is None else attempt,
        now_ms=now_ms,
        step=step,
    )


# Event and span ids need to be unique, not secret: a PRNG seeded from the OS per process is
# several times cheaper than a system call per id.
_IDS = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _IDS.seed(os.urandom(16)))

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# the version (4) and variant (RFC 4122) bits of a random UUID, as uuid.UUID(version=4) sets them
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def _uuid4() -> str:
    """A random (version 4) UUID's text, formatted directly: uuid.UUID's init and str are
    several times dearer, and an event id is made for every event produced."""
    h = f"{_IDS.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _child_traceparent(parent: str | None) -> str:
    """W3C traceparent of a child span: parent's trace id and flags, new span id.

    A missing or invalid parent starts a new sampled trace, as W3C Trace Context says.
    """
    kept = _trace_of(parent) if parent else None
    if kept is not None:
        return f"00-{kept[0]}-{_random_hex(8)}-{kept[1]}"
    return f"00-{_random_hex(16)}-{_random_hex(8)}-01"


@functools.lru_cache(maxsize=4096)
def _trace_of(parent: str) -> tuple[str, str] | None:
    """The trace id and flags a valid traceparent's children keep; None if it is invalid.
    Kept for recent parents: a decision's outputs, and a saga's, share one."""
    match = _TRACEPARENT.fullmatch(parent)
    if match and match[1] != "ff" and match[2].strip("0") and match[3].strip("0"):
        return match[2], match[4]
    return None


def _random_hex(nbytes: int) -> str:
    while True:
        value = f"{_IDS.getrandbits(nbytes * 8):0{nbytes * 2}x}"
        if value.strip("0"):  # all-zero ids are invalid in W3C Trace Context
            return value


# fastavro's schemaless_writer and schemaless_reader parse their schema again on every call,
# which for a parsed one still copies its named-schema dict: every record of the engine's and
# the project's schemas, tens of entries, for each event. With fastavro's compiled module (its
# version is pinned) a parsed schema is written and read directly, as those functions do next.
def _compiled(module: Any, name: str) -> Any:
    """A function of fastavro's compiled module (not in its stubs); None if pure Python."""
    return getattr(module, name, None) if getattr(module, "CYTHON_MODULE", False) else None


_WRITE_DATA = _compiled(fastavro._write, "write_data")
_READ_DATA = _compiled(fastavro._read, "_read_data")
_WRITE_OPTIONS = {"strict": False, "strict_allow_default": True, "disable_tuple_notation": False}
_READ_OPTIONS = {
    "return_record_name": False,
    "return_record_name_override": False,
    "handle_unicode_errors": "strict",
    "return_named_type": False,
    "return_named_type_override": False,
}


def _write_body(header: bytes, schema: ParsedSchema, record: Mapping[str, Any]) -> bytes:
    """`header` followed by `record` written with `schema` (parsed), as schemaless_writer
    with strict_allow_default would: a field missing without a default is refused."""
    if _WRITE_DATA is None:
        out = io.BytesIO(header)
        out.seek(len(header))
        schemaless_writer(out, schema, record, strict_allow_default=True)
        return out.getvalue()
    buffer = bytearray(header)
    _WRITE_DATA(buffer, record, schema, schema["__named_schemas"], "", _WRITE_OPTIONS)
    return bytes(buffer)


def _read_body(
    body: io.BytesIO, writer: ParsedSchema, reader: ParsedSchema | None
) -> dict[str, Any]:
    """A record read from `body` with the parsed `writer` schema, resolved to the parsed
    `reader` one if given, as schemaless_reader would."""
    if _READ_DATA is None:
        return cast(dict[str, Any], schemaless_reader(body, writer, reader))
    named = {
        "writer": writer["__named_schemas"],
        "reader": {} if reader is None else reader["__named_schemas"],
    }
    return cast(dict[str, Any], _READ_DATA(body, writer, named, reader, _READ_OPTIONS))


def _read_sources(directory: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    if not directory.is_dir():
        raise SchemaError(
            f"{directory}: no such schemas directory; set SAGASTREAM_SCHEMAS_DIR "
            "(default: schemas/ beside the topology file)"
        )
    paths = sorted(directory.glob("*.avsc"))
    sources: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in paths:
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path}: invalid JSON: {exc}") from exc
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise SchemaError(f"{path}: must hold one Avro record schema")
        if schema.get("name") != path.stem:
            raise SchemaError(
                f"{path}: record is named {schema.get('name')!r}; the file must be named "
                "after the record it holds"
            )
        sources[path.stem] = (path, schema)
    return sources


def _parse(schema: dict[str, Any], named: dict[str, Any]) -> ParsedSchema:
    return cast(ParsedSchema, parse_schema(schema, named))


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _references(schema: Any, namespace: str | None) -> Iterator[str]:
    """Full names of the named types that `schema` refers to (not the ones it defines)."""
    if isinstance(schema, str):
        if schema not in _PRIMITIVES:
            yield _fullname(schema, namespace)
    elif isinstance(schema, list):
        for branch in schema:
            yield from _references(branch, namespace)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error"):
            inner = schema.get("namespace", namespace)
            for field in schema.get("fields", []):
                yield from _references(field["type"], inner)
        elif kind == "array":
            yield from _references(schema["items"], namespace)
        elif kind == "map":
            yield from _references(schema["values"], namespace)
        elif kind not in ("enum", "fixed"):
            yield from _references(kind, namespace)


def _dependency_order(sources: dict[str, tuple[Path, dict[str, Any]]]) -> list[str]:
    """Record names ordered so that every file comes after the files it refers to."""
    by_fullname = {_fullname(s["name"], s.get("namespace")): n for n, (_, s) in sources.items()}
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise SchemaError(f"{sources[name][0]}: schemas refer to each other in a cycle")
        state[name] = "visiting"
        path, schema = sources[name]
        for ref in _references(schema, schema.get("namespace")):
            dependency = by_fullname.get(ref)
            if dependency is not None and dependency != name:
                visit(dependency)
        state[name] = "done"
        order.append(name)

    for name in sources:
        visit(name)
    return order


def _inline(
    schema: Any,
    namespace: str | None,
    fullnames: dict[str, str],
    sources: dict[str, tuple[Path, dict[str, Any]]],
    defined: set[str],
) -> Any:
    """Copy of `schema` with the first reference to each other file's record replaced by it."""
    if isinstance(schema, str):
        fullname = _fullname(schema, namespace)
        if schema in _PRIMITIVES or fullname in defined or fullname not in fullnames:
            return schema
        definition = dict(sources[fullnames[fullname]][1])
        definition.setdefault("namespace", "")
        return _inline(definition, namespace, fullnames, sources, defined)
    if isinstance(schema, list):
        return [_inline(b, namespace, fullnames, sources, defined) for b in schema]
    if not isinstance(schema, dict):
        return schema
    kind = schema.get("type")
    out = dict(schema)
    if kind in ("record", "error", "enum", "fixed"):
        inner = schema.get("namespace", namespace)
        defined.add(_fullname(schema["name"], inner))
        if kind in ("record", "error"):
            out["fields"] = [
                {**f, "type": _inline(f["type"], inner, fullnames, sources, defined)}
                for f in schema["fields"]
            ]
    elif kind == "array":
        out["items"] = _inline(schema["items"], namespace, fullnames, sources, defined)
    elif kind == "map":
        out["values"] = _inline(schema["values"], namespace, fullnames, sources, defined)
    else:
        out["type"] = _inline(kind, namespace, fullnames, sources, defined)
    return out


def _is_event(schema: dict[str, Any], fullnames: dict[str, str]) -> bool:
    fields = schema.get("fields") or [{}]
    first = fields[0]
    meta_type = first.get("type")
    return (
        first.get("name") == "meta"
        and isinstance(meta_type, str)
        and fullnames.get(_fullname(meta_type, schema.get("namespace"))) == META_RECORD
    )


def _without_logical_types(schema: Any) -> Any:
    """Same wire format without logical types, so reading yields plain ints and strings."""
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") in _PRIMITIVES and "logicalType" in schema:
        return schema["type"]
    out = dict(schema)
    if "fields" in schema:
        out["fields"] = [{**f, "type": _without_logical_types(f["type"])} for f in schema["fields"]]
    for key in ("items", "values"):
        if key in schema:
            out[key] = _without_logical_types(schema[key])
    if isinstance(schema.get("type"), dict | list):
        out["type"] = _without_logical_types(schema["type"])
    return out


class _ShortReadSpy(io.BytesIO):
    """BytesIO that notes whether a reader ever asked for more bytes than were left."""

    ran_out = False

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        if size is not None and len(out) < size:
            self.ran_out = True
        return out


def _runs_out(writer: ParsedSchema, reader: ParsedSchema | None, data: bytes) -> bool:
    """Whether decoding fails because the body ends early (truncated) rather than is wrong."""
    spy = _ShortReadSpy(data)
    spy.seek(_HEADER.size)
    try:
        schemaless_reader(spy, writer, reader)
    except Exception:
        return spy.ran_out
    return False


def _raise_if_invalid(event_type: str, schema: ParsedSchema, record: Any) -> None:
    problem = _find_problem(schema, record, "", schema["__named_schemas"])
    if problem is not None:
        raise EncodeError(event_type, *problem)


def _find_problem(
    schema: Any, datum: Any, path: str, named: dict[str, Any]
) -> tuple[str, str] | None:
    """First (field path, what is wrong) where `datum` does not fit `schema`, or None."""
    if isinstance(schema, list):
        if any(_find_problem(branch, datum, path, named) is None for branch in schema):
            return None
        return path, f"{datum!r} matches no branch of {_type_names(schema)}"
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        schema = named[schema]
    if isinstance(schema, dict):
        kind = schema["type"]
        logical = schema.get("logicalType")
        if kind in ("record", "error"):
            return _find_record_problem(schema, datum, path, named)
        if kind == "array":
            if not isinstance(datum, list | tuple):
                return path, f"expected a list, got {type(datum).__name__}"
            for i, item in enumerate(datum):
                problem = _find_problem(schema["items"], item, f"{path}[{i}]", named)
                if problem is not None:
                    return problem
            return None
        if kind == "map":
            if not isinstance(datum, Mapping):
                return path, f"expected a mapping, got {type(datum).__name__}"
            for key, value in datum.items():
                problem = _find_problem(schema["values"], value, f"{path}[{key!r}]", named)
                if problem is not None:
                    return problem
            return None
        if kind == "enum":
            ok = datum in schema["symbols"]
            return None if ok else (path, f"{datum!r} is not one of {schema['symbols']}")
        if kind == "fixed":
            ok = isinstance(datum, bytes) and len(datum) == schema["size"]
            return None if ok else (path, f"expected {schema['size']} bytes, got {datum!r}")
        if logical in ("timestamp-millis", "timestamp-micros") and isinstance(datum, dt.datetime):
            return None
        if logical == "uuid" and isinstance(datum, uuid.UUID):
            return None
        schema = kind
    return _find_primitive_problem(schema, datum, path)


def _find_record_problem(
    schema: dict[str, Any], datum: Any, path: str, named: dict[str, Any]
) -> tuple[str, str] | None:
    if not isinstance(datum, Mapping):
        return path, f"expected a record ({schema['name']}), got {type(datum).__name__}"
    prefix = f"{path}." if path else ""
    names = {f["name"] for f in schema["fields"]}
    for key in datum:
        if key not in names:
            return f"{prefix}{key}", f"not a field of {schema['name']}"
    for field in schema["fields"]:
        name = field["name"]
        if name not in datum:
            if "default" in field:
                continue
            return f"{prefix}{name}", "missing and has no default"
        problem = _find_problem(field["type"], datum[name], f"{prefix}{name}", named)
        if problem is not None:
            return problem
    return None


def _find_primitive_problem(kind: str, datum: Any, path: str) -> tuple[str, str] | None:
    if not _has_type(datum, kind):
        return path, f"{datum!r} ({type(datum).__name__}) is not an Avro {kind}"
    if kind in ("int", "long"):
        low, high = _INT_RANGE if kind == "int" else _LONG_RANGE
        if not low <= datum <= high:
            return path, f"{datum} is out of range for an Avro {kind}"
    if kind == "string":
        try:
            datum.encode("utf-8")
        except UnicodeEncodeError as exc:
            return path, f"not encodable as UTF-8: {exc.reason}"
    return None


def _has_type(datum: Any, kind: str) -> bool:
    """isinstance for an Avro primitive; bool is an int to Python but not to Avro."""
    return isinstance(datum, _PYTHON_TYPES[kind]) and (kind == "boolean" or type(datum) is not bool)


def _type_names(union: list[Any]) -> str:
    names = [t if isinstance(t, str) else str(t.get("name", t.get("type"))) for t in union]
    return "[" + ", ".join(names) + "]"
