"""Every .avsc is derived from its pydantic model, and round-trips through AvroCodec and the model."""

import functools
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from sagastream import events as ev
from sagastream.core.topology import ENGINE_SCHEMAS_DIR
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore

SCHEMAS_DIR = Path(__file__).parents[2] / "schemas"
DEMO_MODELS = ev.records_of("sagastream.examples.events")
MODELS = {m.__name__: m for m in DEMO_MODELS + ev.engine_records() if issubclass(m, ev.Event)}
STORE = SchemaStore(SCHEMAS_DIR)
CODEC = AvroCodec(STORE, LocalSchemaIds(STORE))
EVENT_TYPES = STORE.event_types()
RECORD_NAMES = sorted(
    path.stem for folder in (SCHEMAS_DIR, ENGINE_SCHEMAS_DIR) for path in folder.glob("*.avsc")
)

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_PRIMITIVE_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "double": st.floats(allow_nan=False),
    "string": _TEXT,
    "bytes": st.binary(max_size=12),
}


@functools.cache
def _standalone(event_type: str) -> dict[str, Any]:
    """The event's raw() schema parsed on its own, as a schema registry client would."""
    return parse_schema(STORE.raw(event_type), {})


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def records_of(schema: Any, namespace: str | None = None, named: dict | None = None):
    """Hypothesis strategy of valid records for a self-contained (inlined) Avro schema."""
    named = {} if named is None else named
    if isinstance(schema, list):
        return st.one_of([records_of(branch, namespace, named) for branch in schema])
    if isinstance(schema, str):
        if schema in _PRIMITIVE_STRATEGIES:
            return _PRIMITIVE_STRATEGIES[schema]
        return named[_fullname(schema, namespace)]
    kind, logical = schema["type"], schema.get("logicalType")
    if logical == "uuid":
        return st.uuids().map(str)
    if kind == "record":
        inner = schema.get("namespace", namespace)
        strategy = st.fixed_dictionaries(
            {f["name"]: records_of(f["type"], inner, named) for f in schema["fields"]}
        )
        named[_fullname(schema["name"], inner)] = strategy
        return strategy
    if kind == "array":
        return st.lists(records_of(schema["items"], namespace, named), max_size=3)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=5), records_of(schema["values"], namespace, named), max_size=3
        )
    return records_of(kind, namespace, named)


def test_every_schema_file_is_derived_from_its_model() -> None:
    assert ev.stale_schemas(DEMO_MODELS, SCHEMAS_DIR) == []
    assert ev.stale_schemas(ev.engine_records(), ENGINE_SCHEMAS_DIR) == []
    assert [m.__name__ for m in DEMO_MODELS + ev.engine_records()] == [
        *sorted(p.stem for p in SCHEMAS_DIR.glob("*.avsc")),
        *sorted(p.stem for p in ENGINE_SCHEMAS_DIR.glob("*.avsc")),
    ]
    assert sorted(m.__name__ for m in MODELS.values()) == EVENT_TYPES


def test_every_record_and_field_has_a_doc() -> None:
    for name in RECORD_NAMES:
        schema = json.loads(STORE.source(name))
        assert schema["namespace"] == "sagastream"
        assert schema.get("doc"), name
        assert all(f.get("doc") for f in schema["fields"]), name


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_raw_schema_defines_each_shared_record_once(event_type: str) -> None:
    text = json.dumps(STORE.raw(event_type))
    assert text.count('"name": "EventMeta"') == 1
    assert text.count('"name": "OrderItem"') <= 1


def events_of(event_type: str) -> st.SearchStrategy[dict[str, Any]]:
    """Records of an event type whose meta names that type, as every producer writes them
    (the decoder refuses a record whose meta names another type than its schema id)."""

    def named(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "meta": {**record["meta"], "event_type": event_type}}

    return records_of(STORE.raw(event_type)).map(named)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_event_round_trips_through_codec(event_type: str, data: st.DataObject) -> None:
    record = data.draw(events_of(event_type))
    encoded = CODEC.encode(event_type, record)
    assert CODEC.decode(encoded) == (event_type, record)
    body = io.BytesIO()
    schemaless_writer(body, _standalone(event_type), record)
    assert encoded[5:] == body.getvalue(), "raw() must be self-contained and equivalent"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_model_round_trips_through_codec(event_type: str, data: st.DataObject) -> None:
    model = MODELS[event_type]
    record = data.draw(events_of(event_type))
    instance = model.from_record(record)
    assert instance.fields() == {k: v for k, v in record.items() if k != "meta"}
    decoded_type, decoded = CODEC.decode(CODEC.encode(event_type, record))
    assert decoded_type == event_type
    assert model.from_record(decoded) == instance
