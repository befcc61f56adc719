"""AvroCodec wire format and errors, schema loading, schema ids and EventMeta derivation."""

import datetime as dt
import json
import re
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from sagastream.runtime.settings import Settings
from sagastream.wire import codec as codec_module
from sagastream.wire.codec import (
    AvroCodec,
    DecodeError,
    EncodeError,
    LocalSchemaIds,
    SchemaStore,
    derive_meta,
    local_schema_id,
    new_meta,
)

STORE = SchemaStore(Path(__file__).parents[2] / "schemas")
IDS = LocalSchemaIds(STORE)
CODEC = AvroCodec(STORE, IDS)
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class FixedIds:
    """A SchemaIds with hand-picked ids, standing in for a schema registry."""

    suspected = False

    def __init__(self, ids: dict[str, int], store: SchemaStore = STORE) -> None:
        self._ids = ids
        self._store = store

    def id_for(self, event_type: str) -> int:
        return self._ids[event_type]

    def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
        event_type = next((t for t, i in self._ids.items() if i == schema_id), None)
        return None if event_type is None else self._store.raw(event_type)

    def forget_schema(self, schema_id: int) -> None:
        """Nothing is cached: every writer_schema reads the current ids."""

    def renumbered(self) -> bool:
        return False

    def suspect(self) -> None:
        self.suspected = True

    @property
    def config_error(self) -> str | None:
        return None


def order_placed(**changes: Any) -> dict[str, Any]:
    record = {
        "meta": new_meta("OrderPlaced", "order-1", "shop", now_ms=1_700_000_000_123),
        "order_id": "order-1",
        "customer_id": "cust-1",
        "email": "a@example.com",
        "amount_cents": 1299,
        "currency": "EUR",
        "card_token": "tok_1",
        "items": [{"sku": "sku-1", "quantity": 2}],
        "shipping_address": "1 Main Street",
        "priority": "normal",
        "has_app": False,
    }
    return record | changes


def payment_refunded(payment_id: str | None) -> dict[str, Any]:
    meta = new_meta("PaymentRefunded", "order-1", "payments")
    return {"meta": meta, "order_id": "order-1", "payment_id": payment_id}


# wire format


def test_header_is_magic_zero_then_schema_id() -> None:
    data = CODEC.encode("OrderPlaced", order_placed())
    assert data[0] == 0
    assert data[1:5] == struct.pack(">I", IDS.id_for("OrderPlaced"))


def test_schema_id_is_four_bytes_big_endian() -> None:
    codec = AvroCodec(STORE, FixedIds({"PaymentRefunded": 0x01020304}))
    record = payment_refunded("pay-1")
    data = codec.encode("PaymentRefunded", record)
    assert data[:5] == b"\x00\x01\x02\x03\x04"
    assert codec.decode(data) == ("PaymentRefunded", record)


def test_defaults_are_filled_in_and_decoded_records_are_json_friendly() -> None:
    full = order_placed()
    record = {k: v for k, v in full.items() if k not in ("priority", "has_app")}
    _, decoded = CODEC.decode(CODEC.encode("OrderPlaced", record))
    assert decoded == full
    assert json.loads(json.dumps(decoded)) == decoded


def test_encode_accepts_datetime_and_uuid_and_decode_returns_millis_and_str() -> None:
    event_id = uuid.uuid4()
    record = order_placed()
    record["meta"] = record["meta"] | {
        "event_id": event_id,
        "occurred_at": dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC),
    }
    _, decoded = CODEC.decode(CODEC.encode("OrderPlaced", record))
    assert decoded["meta"]["occurred_at"] == 1_700_000_000_123
    assert decoded["meta"]["event_id"] == str(event_id)


# decode errors


def _reason(data: bytes) -> str:
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(data)
    return caught.value.reason


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x01"])
def test_decode_of_empty_or_headerless_message(data: bytes) -> None:
    assert _reason(data) == "empty"


@pytest.mark.parametrize("data", [b"\x01\x00\x00\x00\x01\x00", b'{"order_id": "order-1"}'])
def test_decode_of_wrong_magic_byte(data: bytes) -> None:
    assert _reason(data) == "bad_magic"


@pytest.mark.parametrize("schema_id", [0, 9999, 2**32 - 1])
def test_decode_of_unknown_schema_id(schema_id: int) -> None:
    body = CODEC.encode("OrderPlaced", order_placed())[5:]
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(struct.pack(">BI", 0, schema_id) + body)
    assert caught.value.reason == "unknown_schema_id"
    assert caught.value.schema_id == schema_id
    assert str(schema_id) in str(caught.value)


@pytest.mark.parametrize("schema_id", [2**31, 2**32 - 1])
def test_an_id_beyond_a_java_int_is_unknown_without_asking(schema_id: int) -> None:
    class NoIds(FixedIds):
        def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
            raise AssertionError(f"asked for schema id {schema_id}")

    codec = AvroCodec(STORE, NoIds({}))
    with pytest.raises(DecodeError) as caught:
        codec.decode(struct.pack(">BI", 0, schema_id) + b"\x00")
    assert (caught.value.reason, caught.value.schema_id) == ("unknown_schema_id", schema_id)


def test_decode_of_every_truncation_is_truncated() -> None:
    data = CODEC.encode("OrderPlaced", order_placed())
    for end in range(5, len(data)):
        with pytest.raises(DecodeError) as caught:
            CODEC.decode(data[:end])
        assert caught.value.reason == "truncated", end
        assert caught.value.event_type == "OrderPlaced"


def test_decode_of_trailing_bytes_is_corrupt() -> None:
    data = CODEC.encode("OrderPlaced", order_placed())
    assert _reason(data + b"\x00") == "corrupt"


def test_decode_of_invalid_utf8_is_corrupt() -> None:
    data = CODEC.encode("OrderPlaced", order_placed(order_id="zzzz"))
    assert _reason(data.replace(b"zzzz", b"\xff\xfe\xff\xfe")) == "corrupt"


def test_decode_of_bad_union_branch_is_corrupt_even_as_the_last_byte() -> None:
    data = CODEC.encode("PaymentRefunded", payment_refunded(None))
    assert data.endswith(b"\x00")  # union branch 0: null
    assert _reason(data[:-1] + b"\x04") == "corrupt"  # branch 2 of a 2-branch union


def test_decode_error_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="magic byte is 1"):
        CODEC.decode(b"\x01\x00\x00\x00\x01")


# encode errors


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (order_placed(amount_cents="12"), "amount_cents"),
        (order_placed(items=[{"sku": "s", "quantity": None}]), "items[0].quantity"),
        (order_placed(has_ap=True), "has_ap"),
        ({k: v for k, v in order_placed().items() if k != "email"}, "email"),
        (order_placed(email="\ud800"), "email"),
        (
            order_placed(meta={**new_meta("OrderPlaced", "k", "p"), "causation_id": 7}),
            "meta.causation_id",
        ),
    ],
)
def test_encode_error_names_event_type_and_field(record: dict[str, Any], field: str) -> None:
    with pytest.raises(EncodeError) as caught:
        CODEC.encode("OrderPlaced", record)
    assert caught.value.event_type == "OrderPlaced"
    assert caught.value.field == field
    assert "OrderPlaced" in str(caught.value)
    assert field in str(caught.value)


def test_encode_of_unknown_event_type() -> None:
    with pytest.raises(EncodeError, match="NoSuchEvent"):
        CODEC.encode("NoSuchEvent", order_placed())


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (order_placed(amount_cents=12.5), "amount_cents"),
        (order_placed(has_app=1), "has_app"),
        (order_placed(meta={**new_meta("OrderPlaced", "k", "p"), "hop": 2**31}), "meta.hop"),
    ],
)
def test_validating_codec_rejects_what_fastavro_would_coerce(
    record: dict[str, Any], field: str
) -> None:
    with pytest.raises(EncodeError) as caught:
        AvroCodec(STORE, IDS, validate=True).encode("OrderPlaced", record)
    assert caught.value.field == field


def test_validating_codec_encodes_the_same_bytes() -> None:
    record = order_placed()
    assert AvroCodec(STORE, IDS, validate=True).encode("OrderPlaced", record) == CODEC.encode(
        "OrderPlaced", record
    )


# schema ids


def test_local_schema_ids_are_a_hash_of_the_record_name() -> None:
    event_types = STORE.event_types()
    ids = [IDS.id_for(t) for t in event_types]
    assert ids == [local_schema_id(STORE.fullname(t)) for t in event_types]
    assert len(set(ids)) == len(ids)
    assert all(0 < i < 2**31 for i in ids)
    assert all(IDS.event_type_for(IDS.id_for(t)) == t for t in event_types)
    assert IDS.writer_schema(IDS.id_for("OrderPlaced")) == STORE.raw("OrderPlaced")
    assert IDS.event_type_for(0) is None and IDS.writer_schema(0) is None
    with pytest.raises(KeyError):
        IDS.id_for("EventMeta")


def test_local_schema_ids_do_not_change_when_schemas_are_added(tmp_path: Path) -> None:
    for path in STORE.directory.glob("*.avsc"):
        (tmp_path / path.name).write_text(path.read_text())
    extra = _record("AaaFirstEvent", ("meta", "EventMeta"), ("x", "string"))
    extra["namespace"] = "sagastream"
    _write(tmp_path, extra)
    grown = LocalSchemaIds(SchemaStore(tmp_path))
    assert grown.id_for("AaaFirstEvent") not in [IDS.id_for(t) for t in STORE.event_types()]
    assert [grown.id_for(t) for t in STORE.event_types()] == [
        IDS.id_for(t) for t in STORE.event_types()
    ]


def test_local_schema_ids_refuse_a_hash_collision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OrderItem", "OrderPlaced", "PaymentFailed"):
        (tmp_path / f"{name}.avsc").write_text((STORE.directory / f"{name}.avsc").read_text())
    monkeypatch.setattr("sagastream.wire.codec.local_schema_id", lambda fullname: 7)
    with pytest.raises(
        ValueError,
        match=r"records sagastream\.\w+ and sagastream\.\w+ hash to the same local schema id 7",
    ):
        LocalSchemaIds(SchemaStore(tmp_path))


def test_local_schema_ids_are_deterministic() -> None:
    other = LocalSchemaIds(SchemaStore(STORE.directory))
    assert [other.id_for(t) for t in STORE.event_types()] == [
        IDS.id_for(t) for t in STORE.event_types()
    ]


# schema store


def _write(directory: Path, schema: dict[str, Any]) -> None:
    (directory / f"{schema['name']}.avsc").write_text(json.dumps(schema))


def _record(name: str, *fields: tuple[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": name,
        "namespace": "test",
        "fields": [{"name": n, "type": t} for n, t in fields],
    }


def test_store_resolves_references_whatever_the_file_order(tmp_path: Path) -> None:
    _write(tmp_path, _record("Zmeta", ("id", "string")))
    _write(tmp_path, _record("Yitem", ("sku", "string"), ("meta", "Zmeta")))
    _write(
        tmp_path,
        _record("Aevent", ("meta", "Zmeta"), ("items", {"type": "array", "items": "Yitem"})),
    )
    store = SchemaStore(tmp_path, engine=False)
    raw = json.dumps(store.raw("Aevent"))
    assert raw.count('"name": "Zmeta"') == 1 and raw.count('"name": "Yitem"') == 1
    assert store.schema("Aevent")["name"] == "test.Aevent"
    assert store.event_types() == []  # no EventMeta here, so nothing is an event


def test_store_rejects_a_file_named_unlike_its_record(tmp_path: Path) -> None:
    (tmp_path / "Other.avsc").write_text(json.dumps(_record("Thing", ("a", "string"))))
    with pytest.raises(ValueError, match=r"Other\.avsc.*'Thing'"):
        SchemaStore(tmp_path)


def test_store_names_the_file_with_an_unknown_type(tmp_path: Path) -> None:
    _write(tmp_path, _record("Thing", ("a", "Missing")))
    with pytest.raises(ValueError, match=r"Thing\.avsc.*Missing"):
        SchemaStore(tmp_path)


def test_store_raw_is_a_copy() -> None:
    STORE.raw("OrderPlaced")["fields"].clear()
    assert STORE.raw("OrderPlaced")["fields"]


def test_schemas_sit_beside_the_topology_unless_overridden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("SAGASTREAM_SCHEMAS_DIR", raising=False)
    monkeypatch.setenv("SAGASTREAM_TOPOLOGY_FILE", str(tmp_path / "topology.yaml"))
    assert Settings().schemas_path == tmp_path / "schemas"
    monkeypatch.setenv("SAGASTREAM_SCHEMAS_DIR", str(tmp_path / "elsewhere"))
    assert Settings().schemas_path == tmp_path / "elsewhere"


def test_a_project_cannot_redefine_an_engine_record(tmp_path: Path) -> None:
    (tmp_path / "EventMeta.avsc").write_text(
        '{"type": "record", "name": "EventMeta", "fields": []}'
    )
    with pytest.raises(ValueError, match="EventMeta is one of sagastream's own records"):
        SchemaStore(tmp_path)


# EventMeta


def test_new_meta_is_a_valid_root_envelope() -> None:
    meta = new_meta("OrderPlaced", "order-1", "shop", now_ms=42)
    assert uuid.UUID(meta["event_id"]).version == 4
    assert meta["correlation_id"] == meta["event_id"]
    assert (meta["causation_id"], meta["traceparent"], meta["hop"], meta["attempt"]) == (
        None,
        None,
        0,
        1,
    )
    assert meta["occurred_at"] == 42
    assert new_meta("X", "k", "p", correlation_id="c")["correlation_id"] == "c"


def test_event_ids_are_distinct_random_uuids_in_their_canonical_text() -> None:
    ids = [new_meta("X", "k", "p")["event_id"] for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == event_id
    # every bit but the version's and variant's varies
    ors = 0
    for event_id in ids:
        ors |= uuid.UUID(event_id).int
    assert ors == (1 << 128) - 1 & ~((0xB000 << 64) | (0x4000 << 48))


def test_derive_meta_follows_the_parent() -> None:
    parent = new_meta("OrderPlaced", "order-1", "shop", attempt=3, hop=4)
    parent["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    child = derive_meta(parent, "ChargePayment", "orchestrator", now_ms=7)
    assert child["event_type"] == "ChargePayment" and child["producer"] == "orchestrator"
    assert child["saga_key"] == "order-1"
    assert child["correlation_id"] == parent["correlation_id"]
    assert child["causation_id"] == parent["event_id"]
    assert child["event_id"] != parent["event_id"]
    assert child["hop"] == 5
    assert child["attempt"] == 3
    assert child["occurred_at"] == 7
    assert derive_meta(parent, "ChargePayment", "o", attempt=1)["attempt"] == 1
    match = TRACEPARENT.fullmatch(child["traceparent"])
    assert match is not None
    assert match[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert match[2] != "00f067aa0ba902b7"
    assert match[3] == "00"


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    ],
)
def test_derive_meta_starts_a_fresh_trace_without_a_valid_parent(traceparent: str | None) -> None:
    parent = new_meta("OrderPlaced", "order-1", "shop", traceparent=traceparent)
    child = derive_meta(parent, "ChargePayment", "orchestrator")
    match = TRACEPARENT.fullmatch(child["traceparent"])
    assert match is not None
    assert match[1].strip("0") and match[2].strip("0")
    assert match[3] == "01"
    assert traceparent is None or match[1] not in traceparent


def test_derived_envelopes_encode() -> None:
    root = new_meta("OrderPlaced", "order-1", "shop")
    child = derive_meta(derive_meta(root, "ChargePayment", "o"), "PaymentFailed", "payments")
    record = {"meta": child, "order_id": "order-1", "reason": "card declined"}
    assert CODEC.decode(CODEC.encode("PaymentFailed", record)) == ("PaymentFailed", record)


def test_the_compiled_path_writes_and_reads_as_fastavros_public_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsed schemas are written and read with fastavro's compiled functions directly (not
    re-parsed per call); the bytes and records are those of schemaless_writer/reader."""
    assert codec_module._WRITE_DATA is not None and codec_module._READ_DATA is not None
    v2 = _store_with(tmp_path, "OrderPlaced", _add_gift_note)
    ids, record = FixedIds({"OrderPlaced": 1}, STORE), order_placed()
    data = AvroCodec(STORE, ids).encode("OrderPlaced", record)
    resolved = AvroCodec(v2, ids).decode(data)
    plain = CODEC.encode("OrderPlaced", record)
    monkeypatch.setattr(codec_module, "_WRITE_DATA", None)
    monkeypatch.setattr(codec_module, "_READ_DATA", None)
    assert AvroCodec(STORE, ids).encode("OrderPlaced", record) == data
    assert AvroCodec(v2, ids).decode(data) == resolved
    assert AvroCodec(STORE, IDS).decode(plain) == CODEC.decode(plain)


# schema evolution: the writer's schema resolved to the reader's


def _store_with(tmp_path: Path, name: str, change: Any) -> SchemaStore:
    """A copy of the repo's schemas with one record's JSON changed by `change`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for path in STORE.directory.glob("*.avsc"):
        (tmp_path / path.name).write_text(path.read_text())
    schema = json.loads((tmp_path / f"{name}.avsc").read_text())
    change(schema)
    (tmp_path / f"{name}.avsc").write_text(json.dumps(schema, indent=4))
    return SchemaStore(tmp_path)


def _add_gift_note(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "gift_note", "type": ["null", "string"], "default": None})


def test_a_v1_reader_reads_a_v2_record_without_the_new_field(tmp_path: Path) -> None:
    v2 = _store_with(tmp_path, "OrderPlaced", _add_gift_note)
    ids = FixedIds({"OrderPlaced": 2}, v2)
    v1_record = order_placed()
    data = AvroCodec(v2, ids).encode("OrderPlaced", v1_record | {"gift_note": "for mum"})
    assert AvroCodec(STORE, ids).decode(data) == ("OrderPlaced", v1_record)


def test_a_v2_reader_reads_a_v1_record_with_the_default(tmp_path: Path) -> None:
    v2 = _store_with(tmp_path, "OrderPlaced", _add_gift_note)
    ids = FixedIds({"OrderPlaced": 1}, STORE)
    v1_record = order_placed()
    data = AvroCodec(STORE, ids).encode("OrderPlaced", v1_record)
    assert AvroCodec(v2, ids).decode(data) == ("OrderPlaced", v1_record | {"gift_note": None})


def test_a_writer_schema_that_does_not_resolve_is_incompatible(tmp_path: Path) -> None:
    def add_required(schema: dict[str, Any]) -> None:
        schema["fields"].append({"name": "loyalty_tier", "type": "string"})

    v2 = _store_with(tmp_path, "OrderPlaced", add_required)
    data = CODEC.encode("OrderPlaced", order_placed())
    with pytest.raises(DecodeError) as caught:
        AvroCodec(v2, FixedIds({"OrderPlaced": IDS.id_for("OrderPlaced")})).decode(data)
    assert caught.value.reason == "incompatible_schema"
    assert "loyalty_tier" in str(caught.value)


def test_a_truncated_body_is_truncated_under_resolution_too(tmp_path: Path) -> None:
    v2 = _store_with(tmp_path, "OrderPlaced", _add_gift_note)
    ids = FixedIds({"OrderPlaced": 2}, v2)
    data = AvroCodec(v2, ids).encode("OrderPlaced", order_placed(gift_note="x"))
    with pytest.raises(DecodeError) as caught:
        AvroCodec(STORE, ids).decode(data[:-3])
    assert caught.value.reason == "truncated"


def test_a_writer_record_with_no_local_schema_is_an_unknown_id(tmp_path: Path) -> None:
    schema = json.loads((STORE.directory / "OrderPlaced.avsc").read_text())
    schema["name"] = "OrderPlacedV9"
    other = _store_with(tmp_path, "OrderItem", lambda s: None)
    (other.directory / "OrderPlacedV9.avsc").write_text(json.dumps(schema))
    other = SchemaStore(other.directory)
    ids = FixedIds({"OrderPlacedV9": 5}, other)
    data = AvroCodec(other, ids).encode("OrderPlacedV9", order_placed())
    with pytest.raises(DecodeError) as caught:
        AvroCodec(STORE, ids).decode(data)
    assert caught.value.reason == "unknown_schema_id"
    assert "sagastream.OrderPlacedV9" in str(caught.value)


def test_canonical_text_ignores_formatting_and_key_order(tmp_path: Path) -> None:
    def reorder(schema: dict[str, Any]) -> None:
        items = list(schema.items())
        schema.clear()
        schema.update(reversed(items))

    reformatted = _store_with(tmp_path, "OrderPlaced", reorder)
    assert reformatted.canonical("OrderPlaced") == STORE.canonical("OrderPlaced")
    assert json.loads(STORE.canonical("OrderPlaced")) == STORE.raw("OrderPlaced")
    assert "\n" not in STORE.canonical("OrderPlaced") and '", "' not in STORE.canonical(
        "OrderPlaced"
    )


def test_decoding_looks_each_id_up_once() -> None:
    class CountingIds(FixedIds):
        calls = 0

        def writer_schema(self, schema_id: int) -> dict[str, Any] | None:
            self.calls += 1
            return super().writer_schema(schema_id)

    ids = CountingIds({"OrderPlaced": 3})
    codec = AvroCodec(STORE, ids)
    data = codec.encode("OrderPlaced", order_placed())
    for _ in range(3):
        codec.decode(data)
    assert ids.calls == 1


def test_prepare_resolves_ids_and_leaves_errors_to_encode() -> None:
    codec = AvroCodec(STORE, FixedIds({"OrderPlaced": 3}))
    codec.prepare(["OrderPlaced", "PaymentFailed"])
    assert codec.encode("OrderPlaced", order_placed())[1:5] == struct.pack(">I", 3)
    with pytest.raises(EncodeError, match="PaymentFailed"):
        codec.encode("PaymentFailed", {})


def test_meta_carries_the_step_a_command_is_for() -> None:
    """A command names its step (meta.step), which the handler loop passes on to its result, so
    results of steps sharing an event type tell their steps apart; other events say null."""
    parent = new_meta("OrderPlaced", "order-1", "shop")
    assert parent["step"] is None
    command = derive_meta(parent, "ChargePayment", "orchestrator", step="payment")
    assert command["step"] == "payment"
    assert (
        derive_meta(command, "SagaLifecycle", "orchestrator")["step"] is None
    )  # given, not inherited
    record = order_placed(meta={**new_meta("OrderPlaced", "order-1", "shop"), "step": "x"})
    _, decoded = CODEC.decode(CODEC.encode("OrderPlaced", record))
    assert decoded["meta"]["step"] == "x"


# a registry that lost or renumbered its ids


def failed(event_type: str) -> dict[str, Any]:
    """A PaymentFailed or an InventoryFailed: two events with the very same fields."""
    meta = new_meta(event_type, "order-1", "svc", now_ms=1_700_000_000_000)
    return {"meta": meta, "order_id": "order-1", "reason": "declined"}


@pytest.mark.parametrize(
    ("written", "record", "named"),
    [
        # the same layout: without the check it would be read as the other type
        ("PaymentFailed", failed("PaymentFailed"), "InventoryFailed"),
        # a body that does not fit: without the check it is reported as a corrupt PaymentRefunded
        ("OrderPlaced", order_placed(), "PaymentRefunded"),
    ],
)
def test_a_record_whose_schema_id_names_another_type_is_a_schema_mismatch(
    written: str, record: dict[str, Any], named: str
) -> None:
    data = AvroCodec(STORE, FixedIds({written: 7})).encode(written, record)
    ids = FixedIds({named: 7})  # the registry gave id 7 to another schema since
    with pytest.raises(DecodeError) as caught:
        AvroCodec(STORE, ids).decode(data)
    assert caught.value.reason == "schema_mismatch"
    assert f"schema id 7 names {named}, the record says {written}" in str(caught.value)
    assert ids.suspected, "a mismatch makes the codec check its own ids soon"


def test_a_cached_reading_that_a_record_contradicts_is_asked_again() -> None:
    ids = FixedIds({"InventoryFailed": 7})
    consumer = AvroCodec(STORE, ids)
    old = AvroCodec(STORE, FixedIds({"InventoryFailed": 7})).encode(
        "InventoryFailed", failed("InventoryFailed")
    )
    assert consumer.decode(old)[0] == "InventoryFailed"  # id 7 is cached now
    ids._ids = {"PaymentFailed": 7}  # the registry restarted and gave 7 to PaymentFailed
    record = failed("PaymentFailed")
    new = AvroCodec(STORE, FixedIds({"PaymentFailed": 7})).encode("PaymentFailed", record)
    assert consumer.decode(new) == ("PaymentFailed", record)
    with pytest.raises(DecodeError) as caught:
        consumer.decode(old)
    assert caught.value.reason == "schema_mismatch"


def test_an_unknown_id_says_which_type_the_record_claims() -> None:
    data = AvroCodec(STORE, FixedIds({"OrderPlaced": 7})).encode("OrderPlaced", order_placed())
    ids = FixedIds({})
    with pytest.raises(DecodeError) as caught:
        AvroCodec(STORE, ids).decode(data)
    assert caught.value.reason == "unknown_schema_id"
    assert "unknown schema id 7, though the record says it is OrderPlaced" in str(caught.value)
    assert ids.suspected


def test_the_codec_writes_the_new_ids_once_the_registry_renumbered_them() -> None:
    class Renumbering(FixedIds):
        moved = False

        def renumbered(self) -> bool:
            moved, self.moved = self.moved, False
            return moved

    ids = Renumbering({"OrderPlaced": 7})
    codec = AvroCodec(STORE, ids)
    codec.prepare(["OrderPlaced"])
    assert codec.encode("OrderPlaced", order_placed())[1:5] == struct.pack(">I", 7)
    ids._ids = {"OrderPlaced": 9}
    ids.moved = True
    assert codec.encode("OrderPlaced", order_placed())[1:5] == struct.pack(">I", 9)
