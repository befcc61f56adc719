"""Deriving Avro schemas from pydantic event models, and spotting stale .avsc files."""

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from sagastream.events import (
    AvroType,
    Command,
    Event,
    Int32,
    Record,
    TimestampMillis,
    avro_schema,
    stale_schemas,
    write_schemas,
)
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore


class Seat(Record, avro_namespace="travel"):
    """A seat on a flight."""

    row: Int32
    letter: str


class BookFlight(Command, avro_namespace="travel"):
    """Book seats on a flight.

    Longer text after the first paragraph stays out of the schema.
    """

    trip_id: str = Field(description="The trip; the saga key.")
    seats: list[Seat] = Field(default_factory=list)
    notes: str | None = None
    fare: float = 0.0
    extras: dict[str, int] = Field(default_factory=dict)
    cabin: Literal["economy", "business"] = "economy"
    departs_at: TimestampMillis = 0
    ticket: bytes | None = None
    express: bool = False


class Remote(Record, avro_namespace="elsewhere"):
    code: str


class UsesRemote(Event, avro_namespace="travel"):
    remote: Remote
    fixed: int = Field(default=1, json_schema_extra={}, description="d")
    small: Int32 = 3
    typed: float = Field(default=1.5)


def test_a_command_gets_meta_first_then_its_idempotency_key() -> None:
    schema = avro_schema(BookFlight)
    assert schema["name"] == "BookFlight" and schema["namespace"] == "travel"
    assert schema["doc"] == "Book seats on a flight."
    names = [f["name"] for f in schema["fields"]]
    assert names[:3] == ["meta", "idempotency_key", "trip_id"]
    assert schema["fields"][0]["type"] == "sagastream.EventMeta"  # the engine's namespace


def test_python_types_map_to_avro_types_with_defaults() -> None:
    fields = {f["name"]: f for f in avro_schema(BookFlight)["fields"]}
    assert fields["trip_id"] == {
        "name": "trip_id",
        "type": "string",
        "doc": "The trip; the saga key.",
    }
    assert fields["seats"] == {
        "name": "seats",
        "type": {"type": "array", "items": "Seat"},
        "default": [],
    }
    assert fields["notes"] == {"name": "notes", "type": ["null", "string"], "default": None}
    assert fields["fare"]["type"] == "double"
    assert fields["extras"]["type"] == {"type": "map", "values": "long"}
    assert fields["cabin"] == {"name": "cabin", "type": "string", "default": "economy"}
    assert fields["departs_at"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert fields["ticket"]["type"] == ["null", "bytes"]
    assert fields["express"] == {"name": "express", "type": "boolean", "default": False}
    assert avro_schema(Seat)["fields"][0] == {"name": "row", "type": "int"}
    assert "meta" not in [f["name"] for f in avro_schema(Seat)["fields"]]


def test_a_record_of_another_namespace_is_named_in_full() -> None:
    fields = {f["name"]: f for f in avro_schema(UsesRemote)["fields"]}
    assert fields["remote"]["type"] == "elsewhere.Remote"
    assert fields["small"] == {"name": "small", "type": "int", "default": 3}


def test_the_namespace_defaults_to_the_top_level_package() -> None:
    class Local(Event):
        x: str

    assert Local.avro_namespace == "tests"


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (set[str], "no Avro type"),
        (int | str, r"only `X \| None` unions"),
        (dict[int, str], "Avro maps have string keys"),
        (Literal[1, 2], "only string literals"),
    ],
)
def test_an_unmappable_field_is_named(annotation: object, message: str) -> None:
    bad = type(
        "Bad",
        (Event,),
        {"__annotations__": {"odd": annotation}, "__module__": "tests.unit.test_events"},
    )
    with pytest.raises(TypeError, match=rf"tests\.unit\.test_events\.Bad\.odd: {message}"):
        avro_schema(bad)


def test_an_event_cannot_nest_an_event() -> None:
    class Outer(Event):
        inner: BookFlight

    with pytest.raises(TypeError, match="cannot nest another event"):
        avro_schema(Outer)


def test_an_explicit_avro_type_wins() -> None:
    from typing import Annotated

    class Money(Event):
        cents: Annotated[int, AvroType({"type": "long", "logicalType": "x-cents"})]

    assert avro_schema(Money)["fields"][1]["type"] == {"type": "long", "logicalType": "x-cents"}


def test_stale_missing_and_orphan_files_are_reported(tmp_path: Path) -> None:
    assert len(write_schemas([Seat, BookFlight], tmp_path)) == 2
    assert write_schemas([Seat, BookFlight], tmp_path) == []
    assert stale_schemas([Seat, BookFlight], tmp_path) == []
    (tmp_path / "Seat.avsc").write_text("{}")
    (tmp_path / "Gone.avsc").write_text("{}")
    problems = stale_schemas([Seat, BookFlight, UsesRemote], tmp_path)
    assert [p.split(":")[0] for p in problems] == [
        str(tmp_path / "Seat.avsc"),
        str(tmp_path / "UsesRemote.avsc"),
        str(tmp_path / "Gone.avsc"),
    ]
    assert "stale" in problems[0] and "missing" in problems[1] and "no model" in problems[2]


def test_derived_schemas_encode_and_decode_what_the_model_holds(tmp_path: Path) -> None:
    write_schemas([Seat, BookFlight], tmp_path)
    store = SchemaStore(tmp_path)
    codec = AvroCodec(store, LocalSchemaIds(store), validate=True)
    command = BookFlight(idempotency_key="k", trip_id="t1", seats=[Seat(row=3, letter="A")])
    meta = {
        "event_id": "00000000-0000-4000-8000-000000000001",
        "event_type": "BookFlight",
        "saga_key": "t1",
        "occurred_at": 1,
        "producer": "test",
        "correlation_id": "c",
    }
    event_type, record = codec.decode(
        codec.encode("BookFlight", {"meta": meta, **command.fields()})
    )
    assert event_type == "BookFlight"
    assert BookFlight.from_record(record) == command


def test_the_cli_generates_then_checks_a_projects_schemas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sagastream.ops import cli

    args = ["--app", "sagastream.examples", "--schemas", str(tmp_path)]
    assert cli.main(["schemas", "check", *args]) == 1
    assert "OrderPlaced.avsc: missing" in capsys.readouterr().out
    assert cli.main(["schemas", "generate", *args]) == 0
    assert "33 written" in capsys.readouterr().out
    assert cli.main(["schemas", "check", *args]) == 0
    (tmp_path / "OrderPlaced.avsc").write_text("{}")
    assert cli.main(["schemas", "check", *args]) == 1
    assert "OrderPlaced.avsc: stale" in capsys.readouterr().out
