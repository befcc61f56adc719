"""sagastream.wire.faust without a broker: faust's codec API round trip, topics and start_saga."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import faust
import pytest
from faust.exceptions import ValueDecodeError
from faust.serializers import codecs

from sagastream.core.topology import load_topology
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, EncodeError, LocalSchemaIds, SchemaStore, new_meta
from sagastream.wire.faust import EventCodec, new_event, saga_topics, start_saga
from tests.unit.test_codec import order_placed

STORE = SchemaStore(Settings().schemas_path)
AVRO = AvroCodec(STORE, LocalSchemaIds(STORE))
CODEC = EventCodec(AVRO)
SETTINGS = Settings(topic_prefix="p-")
TOPOLOGY = load_topology(SETTINGS.topology_file, STORE.directory)

# an order as test_codec builds it, without the meta the framework adds
ORDER = {k: v for k, v in order_placed().items() if k != "meta"}
COMPLETED = {"saga_type": "order", "completed_steps": ["payment", "inventory", "shipping"]}


def app() -> faust.App:
    return faust.App("unit", broker="kafka://127.0.0.1:1", web_enabled=False)


@pytest.mark.parametrize(
    ("event_type", "fields"), [("OrderPlaced", ORDER), ("SagaCompleted", COMPLETED)]
)
def test_dumps_then_loads_gives_the_same_record(event_type: str, fields: dict[str, Any]) -> None:
    record = new_event(event_type, "order-1", fields, producer="shop")
    data = codecs.dumps(CODEC, record)
    assert codecs.loads(CODEC, data) == record
    # the bytes are sagastream's own wire format, both ways
    assert AVRO.decode(data) == (event_type, record)
    assert codecs.loads(CODEC, AVRO.encode(event_type, record)) == record


def test_topics_serialize_values_with_the_codec_even_when_chained() -> None:
    serializers = app().serializers
    record = new_event("SagaCompleted", "order-1", COMPLETED, producer="orchestrator")
    for codec in (CODEC, CODEC | codecs.binary()):
        data = serializers.dumps_value(None, record, serializer=codec)
        assert data is not None
        assert serializers.loads_value(None, data, serializer=codec) == record


@pytest.mark.parametrize(
    "value", [ORDER, {"meta": {"saga_key": "order-1"}}, "OrderPlaced", None, [("meta", {})]]
)
def test_a_value_without_meta_event_type_is_refused_by_name(value: Any) -> None:
    with pytest.raises(EncodeError, match=r"meta\.event_type.*new_event\(\)"):
        codecs.dumps(CODEC, value)


def test_a_record_that_does_not_fit_its_schema_names_the_field() -> None:
    record = new_event("OrderPlaced", "order-1", ORDER | {"amount_cents": "12"}, producer="shop")
    with pytest.raises(EncodeError, match="amount_cents"):
        codecs.dumps(CODEC, record)


def test_undecodable_bytes_reach_faust_as_a_value_decode_error() -> None:
    with pytest.raises(ValueDecodeError, match="magic byte"):
        app().serializers.loads_value(None, b'{"order_id": 1}', serializer=CODEC)


def test_saga_topics_are_the_prefixed_topology_topics_with_raw_keys() -> None:
    order = saga_topics(app(), "order", settings=SETTINGS, topology=TOPOLOGY, codec=CODEC)
    assert (order.start_event, order.key_field) == ("OrderPlaced", "order_id")
    assert order.start.get_topic_name() == "p-orders.events"
    assert order.outcomes.get_topic_name() == "p-sagas.outcomes"
    for topic in (order.start, order.outcomes):
        assert (topic.key_serializer, topic.value_serializer) == ("raw", CODEC)


def test_saga_topics_of_an_unknown_saga_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="order, loan"):
        saga_topics(app(), "refund", settings=SETTINGS, topology=TOPOLOGY, codec=CODEC)


class SentTopic:
    """Stands in for a faust topic: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, **message: Any) -> None:
        self.sent.append(message)


def test_start_saga_sends_the_start_event_keyed_by_the_key_field() -> None:
    order = saga_topics(app(), "order", settings=SETTINGS, topology=TOPOLOGY, codec=CODEC)
    start = SentTopic()
    order = dataclasses.replace(order, start=start)  # type: ignore[arg-type]
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = asyncio.run(start_saga(order, ORDER, producer="shop", traceparent=traceparent))
    (message,) = start.sent
    assert message == {
        "key": b"order-1",
        "value": record,
        "headers": [("event_type", b"OrderPlaced")],
    }
    expected = new_meta("OrderPlaced", "order-1", "shop")
    assert record.keys() == ORDER.keys() | {"meta"}
    assert record["meta"].keys() == expected.keys()
    meta = record["meta"]
    assert (meta["event_type"], meta["saga_key"], meta["producer"]) == (
        "OrderPlaced",
        "order-1",
        "shop",
    )
    assert meta["traceparent"] == traceparent
    assert meta["correlation_id"] == meta["event_id"]
    assert AVRO.decode(codecs.dumps(CODEC, record)) == ("OrderPlaced", record)
