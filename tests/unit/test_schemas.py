"""Every .avsc round-trips through AvroCodec and agrees field by field with its pydantic model."""

import functools
import io
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.wire import models as events
from streams.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore
from streams.wire.models import MODELS, AvroRecord, Event

SCHEMAS_DIR = Path(__file__).parents[2] / "schemas"
SHARED_RECORDS = {"EventMeta", "LifecycleChange", "OrderItem"}
STORE = SchemaStore(SCHEMAS_DIR)
CODEC = AvroCodec(STORE, LocalSchemaIds(STORE))
EVENT_TYPES = STORE.event_types()
RECORD_NAMES = sorted(path.stem for path in SCHEMAS_DIR.glob("*.avsc"))

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
    return records_of(kind, namespace, named)


def _avro_shape(schema: Any) -> Any:
    """Python type a model should declare for an Avro type, in a comparable form."""
    if isinstance(schema, list):
        return ("union", tuple(sorted((_avro_shape(b) for b in schema), key=repr)))
    if isinstance(schema, dict):
        if schema["type"] == "array":
            return ("list", _avro_shape(schema["items"]))
        if schema["type"] == "record":
            return schema["name"]
        return _avro_shape(schema["type"])
    python = {
        "null": "NoneType",
        "boolean": "bool",
        "int": "int",
        "long": "int",
        "double": "float",
        "string": "str",
        "bytes": "bytes",
    }
    return python.get(schema, schema.rsplit(".", 1)[-1])


def _python_shape(annotation: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return ("union", tuple(sorted((_python_shape(a) for a in args), key=repr)))
    if origin is list:
        return ("list", _python_shape(args[0]))
    return annotation.__name__


def _bounds(metadata: list[Any]) -> tuple[Any, Any]:
    low = next((m.ge for m in metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in metadata if hasattr(m, "le")), None)
    return low, high


def test_every_schema_has_a_model_and_every_model_a_schema() -> None:
    models = {
        name
        for name, obj in vars(events).items()
        if isinstance(obj, type) and issubclass(obj, AvroRecord) and obj not in (AvroRecord, Event)
    }
    assert set(RECORD_NAMES) == models
    assert sorted(MODELS) == EVENT_TYPES == sorted(set(RECORD_NAMES) - SHARED_RECORDS)
    assert all(MODELS[name].__name__ == name for name in MODELS)


@pytest.mark.parametrize("name", RECORD_NAMES)
def test_model_agrees_with_schema_field_by_field(name: str) -> None:
    schema = json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())
    model = getattr(events, name)
    avro_fields = schema["fields"]
    model_fields = model.model_fields
    assert [f["name"] for f in avro_fields] == list(model_fields)
    for avro in avro_fields:
        field = model_fields[avro["name"]]
        where = f"{name}.{avro['name']}"
        assert _python_shape(field.annotation) == _avro_shape(avro["type"]), where
        if "default" in avro:
            assert not field.is_required(), where
            assert field.default == avro["default"], where
            assert type(field.default) is type(avro["default"]), where
        else:
            assert field.is_required(), where
        base = avro["type"]["type"] if isinstance(avro["type"], dict) else avro["type"]
        if base in ("int", "long"):
            bits = 32 if base == "int" else 64
            assert _bounds(field.metadata) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1), where


def test_every_record_and_field_has_a_doc() -> None:
    for name in RECORD_NAMES:
        schema = json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())
        assert schema["namespace"] == "sagastream"
        assert schema.get("doc"), name
        assert all(f.get("doc") for f in schema["fields"]), name


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_raw_schema_defines_each_shared_record_once(event_type: str) -> None:
    text = json.dumps(STORE.raw(event_type))
    assert text.count('"name": "EventMeta"') == 1
    assert text.count('"name": "OrderItem"') <= 1


@pytest.mark.parametrize("event_type", EVENT_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_event_round_trips_through_codec(event_type: str, data: st.DataObject) -> None:
    record = data.draw(records_of(STORE.raw(event_type)))
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
    record = data.draw(records_of(STORE.raw(event_type)))
    instance = model.from_avro(record)
    assert instance.to_avro() == record
    decoded_type, decoded = CODEC.decode(CODEC.encode(event_type, instance.to_avro()))
    assert decoded_type == event_type
    assert model.from_avro(decoded) == instance
