"""The registry side without a registry: confluent-kafka's mock client plus what it lacks."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from sagastream.core.topology import TopologyError, load_topology, parse_topology
from sagastream.ops import cli
from sagastream.runtime.inputs import Decoded, Rejected, Unavailable, read_input
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import (
    AvroCodec,
    DecodeError,
    RegistryRefused,
    RegistryUnavailable,
    SchemaStore,
    new_meta,
)
from sagastream.wire.registry import (
    Registry,
    RegistrySchemaIds,
    Schema,
    SchemaRegistryClient,
    SchemaRegistryError,
    check_subjects,
    plan_subjects,
    register_subjects,
    report,
    retry_delay,
    subject_name,
)

STORE = SchemaStore(Settings().schemas_path)
SETTINGS = Settings(topic_prefix="p-", schema_registry_url="mock://unit")
TOPOLOGY = load_topology(SETTINGS.topology_file, STORE.directory)
# confluent-kafka's in-memory client for mock:// URLs (the class itself is not exported)
MockSchemaRegistryClient = type(SchemaRegistryClient.new_client({"url": "mock://unit"}))


class FakeRegistryClient(MockSchemaRegistryClient):
    """The mock client plus compatibility levels and a BACKWARD check it does not have.

    The check is the part of BACKWARD these tests need: a new field must have a default
    and a kept field must keep its type.
    """

    def __init__(self) -> None:
        super().__init__({"url": "mock://unit", "max.retries": 0})
        self.levels: dict[str, str] = {}
        self.calls: list[str] = []

    def get_compatibility(self, subject_name: str | None = None) -> str:
        self.calls.append("get_compatibility")
        if subject_name not in self.levels:
            raise SchemaRegistryError(404, 40408, "no subject-level compatibility")
        return self.levels[subject_name]

    def set_compatibility(self, subject_name: str | None = None, level: str | None = None) -> Any:
        self.calls.append("set_compatibility")
        self.levels[str(subject_name)] = str(level)
        return {"compatibility": level}

    def test_compatibility(self, subject_name: str, schema: Schema, *args: Any, **kw: Any) -> bool:
        latest = self._store.get_latest_version(subject_name)
        return latest is None or _backward(latest.schema.schema_str, schema.schema_str)

    def register_schema(self, subject_name: str, schema: Schema, normalize: bool = False) -> int:
        self.calls.append("register_schema")
        known = self._store.get_registered_schema_by_schema(subject_name, schema)
        if known is None and not self.test_compatibility(subject_name, schema):
            raise SchemaRegistryError(409, 409, "Incompatible artifact")
        return super().register_schema(subject_name, schema, normalize)

    def get_schema(self, schema_id: int, *args: Any, **kw: Any) -> Schema:
        self.calls.append("get_schema")
        return super().get_schema(schema_id, *args, **kw)

    def get_schema_types(self) -> list[str]:
        self.calls.append("get_schema_types")
        return ["JSON", "PROTOBUF", "AVRO"]

    def lookup_schema(self, subject_name: str, schema: Schema, *args: Any, **kw: Any) -> Any:
        self.calls.append("lookup_schema")
        if not self._store.get_versions(subject_name):
            raise SchemaRegistryError(404, 40401, "Subject not found")
        return super().lookup_schema(subject_name, schema, *args, **kw)


def _backward(old_text: str, new_text: str) -> bool:
    old = {f["name"]: f for f in json.loads(old_text)["fields"]}
    for field in json.loads(new_text)["fields"]:
        kept = old.get(field["name"])
        if kept is None and "default" not in field:
            return False
        if kept is not None and kept["type"] != field["type"]:
            return False
    return True


def _store_with(directory: Path, change: Any) -> SchemaStore:
    """The repo's schemas with OrderPlaced's JSON changed by `change`."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in STORE.directory.glob("*.avsc"):
        (directory / path.name).write_text(path.read_text())
    schema = json.loads((directory / "OrderPlaced.avsc").read_text())
    change(schema)
    (directory / "OrderPlaced.avsc").write_text(json.dumps(schema, indent=2))
    return SchemaStore(directory)


def _add_gift_note(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "gift_note", "type": ["null", "string"], "default": None})


def _add_required_field(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "loyalty_tier", "type": "string"})


def _order(**extra: Any) -> dict[str, Any]:
    return {
        "meta": new_meta("OrderPlaced", "order-1", "shop", now_ms=1),
        "order_id": "order-1",
        "customer_id": "c",
        "email": "a@example.com",
        "amount_cents": 100,
        "currency": "EUR",
        "card_token": "tok",
        "items": [{"sku": "s", "quantity": 1}],
        "shipping_address": "here",
        "priority": "normal",
        "has_app": False,
        **extra,
    }


def _codec(store: SchemaStore, client: Any) -> AvroCodec:
    ids = RegistrySchemaIds(
        store, SETTINGS, topology=TOPOLOGY, registry=Registry("mock://unit", client=client)
    )
    return AvroCodec(store, ids)


@pytest.fixture
def client() -> FakeRegistryClient:
    return FakeRegistryClient()


# subjects


def test_subjects_are_prefixed_topic_dash_record_full_name() -> None:
    subjects = {s.name: s for s in plan_subjects(TOPOLOGY, STORE, SETTINGS)}
    placed = subjects["p-orders.events-sagastream.OrderPlaced"]
    assert (placed.topic, placed.event_type, placed.record) == (
        "orders.events",
        "OrderPlaced",
        "sagastream.OrderPlaced",
    )
    assert placed.schema == STORE.canonical("OrderPlaced")
    assert subject_name("orders.events", "sagastream.OrderPlaced") == (
        "orders.events-sagastream.OrderPlaced"
    )


def test_an_event_on_several_topics_has_a_subject_per_topic() -> None:
    subjects = plan_subjects(TOPOLOGY, STORE, SETTINGS)
    topics = TOPOLOGY.events["CompensationFailed"].all_topics
    assert len(topics) > 1
    assert sorted(s.topic for s in subjects if s.event_type == "CompensationFailed") == sorted(
        topics
    )
    assert len(subjects) == sum(len(e.all_topics) for e in TOPOLOGY.events.values())


def test_compatibility_is_backward_unless_overridden() -> None:
    levels = {s.name: s.compatibility for s in plan_subjects(TOPOLOGY, STORE, SETTINGS)}
    assert levels.pop("p-sagas.outcomes-sagastream.SagaCompleted") == "FULL"
    assert set(levels.values()) == {"BACKWARD"}


def _topology(registry_section: dict[str, Any]) -> Any:
    data = {
        "topics": [{"name": "orders.events"}, {"name": "payments.events"}],
        "events": {
            "OrderPlaced": {"schema": "OrderPlaced", "topic": "orders.events"},
            "PaymentFailed": {"schema": "PaymentFailed", "topic": "payments.events"},
        },
        "schema_registry": registry_section,
    }
    return parse_topology(data, "test.yaml", STORE.directory)


def test_overrides_and_the_default_level_come_from_the_topology() -> None:
    topology = _topology(
        {"compatibility": "FORWARD", "overrides": {"orders.events-sagastream.OrderPlaced": "NONE"}}
    )
    levels = {s.event_type: s.compatibility for s in plan_subjects(topology, STORE, SETTINGS)}
    assert levels["OrderPlaced"] == "NONE"
    # every other subject, the engine's own events included, takes the default
    assert set(levels.values()) == {"NONE", "FORWARD"}
    assert sum(level == "NONE" for level in levels.values()) == 1


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"compatibility": "SIDEWAYS"}, "schema_registry.compatibility"),
        ({"overrides": {"orders.events-sagastream.OrderPlaced": "full"}}, "overrides"),
        ({"overrides": {"nope.events-sagastream.OrderPlaced": "FULL"}}, "not a subject"),
        ({"overrides": {"orders.events-sagastream.PaymentFailed": "FULL"}}, "not a subject"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_registry_sections_are_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        _topology(section)


def test_an_override_with_the_wrong_namespace_names_no_subject() -> None:
    topology = _topology({"overrides": {"orders.events-other.OrderPlaced": "FULL"}})
    with pytest.raises(ValueError, match=r"orders\.events-other\.OrderPlaced names no subject"):
        plan_subjects(topology, STORE, SETTINGS)


# register and check


def test_register_twice_is_a_no_op(client: FakeRegistryClient) -> None:
    registry = Registry("mock://unit", client=client)
    subjects = plan_subjects(TOPOLOGY, STORE, SETTINGS)
    first = register_subjects(registry, subjects)
    assert {o.action for o in first} == {"registered"}
    assert all(client.levels[o.subject.name] == o.subject.compatibility for o in first)
    client.calls.clear()
    second = register_subjects(registry, subjects)
    assert {o.action for o in second} == {"unchanged"}
    assert [o.schema_id for o in second] == [o.schema_id for o in first]
    assert {client.get_versions(s.name)[0] for s in subjects} == {1}
    assert "register_schema" not in client.calls and "set_compatibility" not in client.calls
    assert report(second, checking=False)[-1] == f"{len(subjects)} unchanged"


def test_register_adds_a_compatible_version_and_refuses_an_incompatible_one(
    client: FakeRegistryClient, tmp_path: Path
) -> None:
    registry = Registry("mock://unit", client=client)
    register_subjects(registry, plan_subjects(TOPOLOGY, STORE, SETTINGS))
    v2 = _store_with(tmp_path / "v2", _add_gift_note)
    outcomes = {o.subject.event_type: o for o in register_subjects(registry, _plan(v2))}
    assert outcomes["OrderPlaced"].action == "new version"
    assert outcomes["OrderPlaced"].version == 2
    assert outcomes["PaymentFailed"].action == "unchanged"
    bad = _store_with(tmp_path / "bad", _add_required_field)
    rejected = {o.subject.event_type: o for o in register_subjects(registry, _plan(bad))}
    assert rejected["OrderPlaced"].failed and rejected["OrderPlaced"].action == "rejected"
    assert "Incompatible" in rejected["OrderPlaced"].detail


def test_register_restores_a_changed_level(client: FakeRegistryClient) -> None:
    registry = Registry("mock://unit", client=client)
    subjects = plan_subjects(TOPOLOGY, STORE, SETTINGS)
    register_subjects(registry, subjects)
    client.levels["p-orders.events-sagastream.OrderPlaced"] = "NONE"
    outcomes = {o.subject.event_type: o for o in register_subjects(registry, subjects)}
    assert outcomes["OrderPlaced"].level_was == "NONE"
    assert client.levels["p-orders.events-sagastream.OrderPlaced"] == "BACKWARD"
    line = next(x for x in report(list(outcomes.values()), False) if "OrderPlaced" in x)
    assert "BACKWARD (was NONE)" in line


def _plan(store: SchemaStore) -> list[Any]:
    return plan_subjects(load_topology(SETTINGS.topology_file, store.directory), store, SETTINGS)


def test_check_says_registered_new_compatible_or_incompatible(
    client: FakeRegistryClient, tmp_path: Path
) -> None:
    registry = Registry("mock://unit", client=client)
    subjects = plan_subjects(TOPOLOGY, STORE, SETTINGS)
    assert {o.action for o in check_subjects(registry, subjects)} == {"new"}
    register_subjects(registry, subjects)
    assert {o.action for o in check_subjects(registry, subjects)} == {"unchanged"}
    compatible = {
        o.subject.event_type: o
        for o in check_subjects(registry, _plan(_store_with(tmp_path / "v2", _add_gift_note)))
    }
    assert compatible["OrderPlaced"].action == "compatible" and not compatible["OrderPlaced"].failed
    bad = {
        o.subject.event_type: o
        for o in check_subjects(registry, _plan(_store_with(tmp_path / "bad", _add_required_field)))
    }
    assert bad["OrderPlaced"].action == "incompatible" and bad["OrderPlaced"].failed
    assert client.get_versions("p-orders.events-sagastream.OrderPlaced") == [1]


def _cli(client: FakeRegistryClient, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(
        "sagastream.wire.registry.SchemaRegistryClient.new_client", lambda conf: client
    )
    monkeypatch.setenv("SAGASTREAM_TOPIC_PREFIX", "p-")
    return cli.main(["schemas", *argv, "--url", "mock://unit"])


def test_cli_check_exits_one_on_an_incompatible_schema(
    client: FakeRegistryClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _cli(client, monkeypatch, "compat") == 0
    assert _cli(client, monkeypatch, "register") == 0
    out = capsys.readouterr().out
    assert "registered   p-orders.events-sagastream.OrderPlaced" in out
    v2 = str(_store_with(tmp_path / "v2", _add_gift_note).directory)
    assert _cli(client, monkeypatch, "compat", "--schemas", v2) == 0
    assert "compatible   p-orders.events-sagastream.OrderPlaced" in capsys.readouterr().out
    bad = str(_store_with(tmp_path / "bad", _add_required_field).directory)
    assert _cli(client, monkeypatch, "compat", "--schemas", bad) == 1
    out = capsys.readouterr().out
    assert "INCOMPATIBLE p-orders.events-sagastream.OrderPlaced" in out
    assert "1 incompatible" in out.splitlines()[-1]
    assert _cli(client, monkeypatch, "register", "--schemas", bad) == 1


def test_cli_without_a_registry_url_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SAGASTREAM_SCHEMA_REGISTRY_URL", raising=False)
    assert cli.main(["schemas", "compat"]) == 2
    assert "SAGASTREAM_SCHEMA_REGISTRY_URL" in capsys.readouterr().err


def test_cli_with_the_registry_down_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schemas", "register", "--url", "http://127.0.0.1:1/apis/ccompat/v7"]) == 2
    assert "unreachable" in capsys.readouterr().err


# the codec on the registry


def test_producer_ids_are_registered_once_and_cached(client: FakeRegistryClient) -> None:
    codec = _codec(STORE, client)
    data = codec.encode("OrderPlaced", _order())
    codec.encode("OrderPlaced", _order())
    assert client.calls.count("register_schema") == 1
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert client.get_schema(schema_id).schema_str == STORE.canonical("OrderPlaced")
    client.calls.clear()
    assert codec.decode(data)[0] == "OrderPlaced"
    assert client.calls == []  # its own schema: known without asking


def test_consumers_fetch_a_writer_schema_once(client: FakeRegistryClient) -> None:
    data = _codec(STORE, client).encode("OrderPlaced", _order())
    consumer = _codec(STORE, client)
    client.calls.clear()
    for _ in range(3):
        assert consumer.decode(data)[1] == _order() | {"meta": consumer.decode(data)[1]["meta"]}
    assert client.calls == ["get_schema"]


def test_v2_records_are_read_by_a_v1_consumer_and_v1_records_by_a_v2_one(
    client: FakeRegistryClient, tmp_path: Path
) -> None:
    v2 = _store_with(tmp_path, _add_gift_note)
    v1_record = _order()
    v2_record = v1_record | {"gift_note": "for mum"}
    v1_data = _codec(STORE, client).encode("OrderPlaced", v1_record)
    v2_data = _codec(v2, client).encode("OrderPlaced", v2_record)
    assert v1_data[1:5] != v2_data[1:5]
    assert _codec(STORE, client).decode(v2_data) == ("OrderPlaced", v1_record)
    assert _codec(v2, client).decode(v1_data) == ("OrderPlaced", v1_record | {"gift_note": None})


def test_an_unknown_id_is_a_decode_error_and_asked_for_once(client: FakeRegistryClient) -> None:
    codec = _codec(STORE, client)
    for _ in range(3):
        with pytest.raises(DecodeError) as caught:
            codec.decode(struct.pack(">BI", 0, 4242) + b"\x00")
        assert caught.value.reason == "unknown_schema_id"
    assert client.calls.count("get_schema") == 1


def test_an_unreachable_registry_is_unavailable_not_a_decode_error() -> None:
    registry = Registry("http://127.0.0.1:1/apis/ccompat/v7")
    codec = AvroCodec(
        STORE, RegistrySchemaIds(STORE, SETTINGS, topology=TOPOLOGY, registry=registry)
    )
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        codec.decode(struct.pack(">BI", 0, 7) + b"\x00")
    with pytest.raises(RegistryUnavailable):
        codec.encode("OrderPlaced", _order())
    assert not isinstance(RegistryUnavailable("x"), DecodeError)


def _answer(client: FakeRegistryClient, call: str, status: int, code: int) -> None:
    """Make the client's `call` fail with this HTTP status and error code (and record it)."""

    def answer(*args: Any, **kw: Any) -> Any:
        client.calls.append(call)
        raise SchemaRegistryError(status, code, "boom")

    setattr(client, call, answer)


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, 50001), (503, -1), (401, 40101), (403, 40301), (408, -1), (429, 42901)],
)
@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_failing_throttling_or_refusing_registries_are_unavailable(
    client: FakeRegistryClient, side: str, status: int, code: int
) -> None:
    codec = _codec(STORE, client)
    with pytest.raises(RegistryUnavailable):
        if side == "consumer":
            _answer(client, "get_schema", status, code)
            codec.decode(struct.pack(">BI", 0, 7) + b"\x00")
        else:
            _answer(client, "lookup_schema", status, code)
            codec.encode("OrderPlaced", _order())


@pytest.mark.parametrize("side", ["consumer", "producer"])
def test_a_misaddressed_registry_is_unavailable(client: FakeRegistryClient, side: str) -> None:
    # what Apicurio's RESTEasy answers for a URL without /apis/ccompat/v7, whatever the call
    for name in ("get_schema", "get_schema_types", "lookup_schema"):
        _answer(client, name, 404, 0)
    codec = _codec(STORE, client)
    with pytest.raises(RegistryUnavailable, match="SAGASTREAM_SCHEMA_REGISTRY_URL"):
        if side == "consumer":
            codec.decode(struct.pack(">BI", 0, 7) + b"\x00")
        else:
            codec.encode("OrderPlaced", _order())


@pytest.mark.parametrize(("status", "code"), [(404, 0), (404, 404), (400, 400), (422, 42201)])
def test_an_id_the_registry_refuses_is_unknown_and_asked_for_once(
    client: FakeRegistryClient, status: int, code: int
) -> None:
    _answer(client, "get_schema", status, code)
    codec = _codec(STORE, client)
    for schema_id in (7, 7, 8):
        with pytest.raises(DecodeError) as caught:
            codec.decode(struct.pack(">BI", 0, schema_id) + b"\x00")
        assert caught.value.reason == "unknown_schema_id"
    # 7 is remembered as unknown; the URL is checked once, then trusted
    assert client.calls == ["get_schema", "get_schema_types", "get_schema"]


@pytest.mark.parametrize("schema_id", [2**31, 2**32 - 1])
def test_an_id_beyond_a_java_int_is_unknown_without_asking(
    client: FakeRegistryClient, schema_id: int
) -> None:
    _answer(client, "get_schema", 404, 0)
    with pytest.raises(DecodeError) as caught:
        _codec(STORE, client).decode(struct.pack(">BI", 0, schema_id) + b"\x00")
    assert (caught.value.reason, caught.value.schema_id) == ("unknown_schema_id", schema_id)
    assert client.calls == []


def test_a_non_avro_schema_id_is_dead_lettered(client: FakeRegistryClient) -> None:
    schema_id = client.register_schema("other", Schema('{"type": "object"}', "JSON"))
    with pytest.raises(DecodeError) as caught:
        _codec(STORE, client).decode(struct.pack(">BI", 0, schema_id) + b"\x00")
    assert caught.value.reason == "unknown_schema_id"
    assert "JSON" in str(caught.value)


def test_retry_delay_doubles_from_half_a_second_to_thirty() -> None:
    assert [retry_delay(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert retry_delay(10_000) == 30


# what the workers make of it (sagastream.runtime.inputs decides for both loops)


def _message(value: bytes) -> Message:
    return Message(topic="p-orders.events", partition=0, offset=5, key=b"order-1", value=value)


@pytest.mark.parametrize(
    ("schema_id", "status", "code"), [(2**31, 404, 0), (2**32 - 1, 404, 0), (7, 404, 0)]
)
def test_a_poison_schema_id_is_dead_lettered_not_waited_for(
    client: FakeRegistryClient, schema_id: int, status: int, code: int
) -> None:
    _answer(client, "get_schema", status, code)
    data = struct.pack(">BI", 0, schema_id) + b"\x00"
    got = read_input(_message(data), _codec(STORE, client), TOPOLOGY, SETTINGS)
    assert isinstance(got, Rejected) and got.reason == "unknown_schema_id"


@pytest.mark.parametrize(("status", "code"), [(503, -1), (429, 42901), (401, 40101)])
def test_a_registry_that_cannot_answer_makes_the_message_wait(
    client: FakeRegistryClient, status: int, code: int
) -> None:
    data = _codec(STORE, client).encode("OrderPlaced", _order())
    _answer(client, "get_schema", status, code)
    got = read_input(_message(data), _codec(STORE, client), TOPOLOGY, SETTINGS)
    assert isinstance(got, Unavailable)
    del client.get_schema  # the registry answers again
    again = read_input(_message(data), _codec(STORE, client), TOPOLOGY, SETTINGS)
    assert isinstance(again, Decoded) and again.record == _order() | {"meta": again.record["meta"]}


def test_after_a_failure_the_registry_is_not_asked_again_at_once(
    client: FakeRegistryClient,
) -> None:
    """While it is down, a batch of inputs or a timer tick costs one request, not one each."""
    _answer(client, "get_schema", 503, -1)
    codec = _codec(STORE, client)
    for _ in range(5):
        with pytest.raises(RegistryUnavailable, match="failed"):
            codec.decode(struct.pack(">BI", 0, 7) + b"\x00")
    assert client.calls.count("get_schema") == 1


def test_refused_credentials_are_a_configuration_error_that_waits(
    client: FakeRegistryClient,
) -> None:
    _answer(client, "lookup_schema", 401, 40101)
    codec = _codec(STORE, client)
    for _ in range(2):  # asked, then held back: still the configuration error
        with pytest.raises(RegistryRefused):
            codec.encode("OrderPlaced", _order())
    assert codec.config_error is not None
    assert "refused the credentials" in codec.config_error
    assert issubclass(RegistryRefused, RegistryUnavailable), "inputs wait, never dead-lettered"


def test_a_registry_that_lost_its_ids_is_noticed_and_the_schemas_registered_again(
    client: FakeRegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry("mock://unit", client=client)
    settings = SETTINGS.model_copy(update={"schema_ids_recheck_s": 30.0})
    ids = RegistrySchemaIds(STORE, settings, topology=TOPOLOGY, registry=registry)
    codec = AvroCodec(STORE, ids)
    codec.prepare(TOPOLOGY.events)
    before = codec.encode("OrderPlaced", _order())[1:5]
    # the registry restarts empty, and another producer registers a schema first
    restarted = FakeRegistryClient()
    restarted.register_schema("elsewhere", Schema(STORE.canonical("PaymentFailed"), "AVRO"))
    registry._client = restarted
    assert codec.encode("OrderPlaced", _order())[1:5] == before, "checked only when due"
    clock = time.monotonic() + 31
    monkeypatch.setattr(time, "monotonic", lambda: clock)
    after = codec.encode("OrderPlaced", _order())
    assert after[1:5] != before
    subject = subject_name("p-orders.events", "sagastream.OrderPlaced")
    found = restarted.lookup_schema(subject, Schema(STORE.canonical("OrderPlaced"), "AVRO"))
    assert struct.pack(">I", found.schema_id) == after[1:5], "registered again, new id written"
    assert codec.decode(after)[0] == "OrderPlaced"


def test_a_record_written_after_the_registry_gave_an_id_away_is_read_by_its_new_meaning(
    client: FakeRegistryClient,
) -> None:
    """A worker knows id 1 as the PaymentFailed it writes; the registry restarts empty and a
    new producer's OrderPlaced gets id 1: the worker reads it as an OrderPlaced."""
    registry = Registry("mock://unit", client=client)
    worker = AvroCodec(
        STORE, RegistrySchemaIds(STORE, SETTINGS, topology=TOPOLOGY, registry=registry)
    )
    worker.prepare(["PaymentFailed"])
    assert worker.encode("PaymentFailed", _payment_failed())[1:5] == struct.pack(">I", 1)
    restarted = FakeRegistryClient()
    registry._client = restarted
    written = _codec(STORE, restarted).encode("OrderPlaced", _order())
    assert written[1:5] == struct.pack(">I", 1)
    event_type, record = worker.decode(written)
    assert (event_type, record["order_id"]) == ("OrderPlaced", "order-1")


def _payment_failed() -> dict[str, Any]:
    meta = new_meta("PaymentFailed", "order-1", "payments", now_ms=1)
    return {"meta": meta, "order_id": "order-1", "reason": "declined"}
