"""sagastream's events and topics for a team's own faust agents (``pip install 'sagastream[faust]'``).

The runtime does not use faust; this module lets faust agents start sagas and react to
their outcomes. Events travel as sagastream writes them (Confluent wire-format Avro, raw
string keys), and a faust value is the record dict AvroCodec reads and writes: its
``meta`` is the EventMeta and ``meta.event_type`` names the event type::

    app = faust.App("shop", broker="kafka://127.0.0.1:9092", web_enabled=False)
    order = saga_topics(app, "order")  # SAGASTREAM_* settings, topology.yaml, the registry

    @app.agent(order.outcomes)
    async def outcomes(stream):
        async for key, event in stream.items():  # every saga's outcomes: see saga_type
            print(key, event["meta"]["event_type"], event["saga_type"])

    @app.agent(app.topic("checkouts"))  # the team's own stream
    async def checkout(stream):
        async for cart in stream:
            await start_saga(order, {"order_id": cart["id"], ...}, producer="shop")

Outcomes are written in Kafka transactions; faust reads uncommitted data unless the app
runs with ``processing_guarantee="exactly_once"``, so without it an agent may see the
outcome of an aborted attempt too: deduplicate on the saga key. A message that cannot
be decoded is a faust ValueDecodeError, which faust logs and raises in the agent's stream
(Topic.on_value_decode_error decides).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faust
from faust.serializers.codecs import Codec
from faust.types.codecs import CodecT

from sagastream.core.topology import Topology, load_topology
from sagastream.errors import NotFound
from sagastream.runtime.settings import Settings, get_settings
from sagastream.wire.codec import AvroCodec, EncodeError, new_meta
from sagastream.wire.registry import build_codec


class EventCodec(Codec):
    """A faust codec between sagastream event records and their wire-format Avro bytes.

    Encoding writes the record as the event type its ``meta.event_type`` names; decoding
    returns the record (raising DecodeError, or RegistryUnavailable, as AvroCodec does).
    """

    def __init__(self, avro: AvroCodec, children: tuple[CodecT, ...] | None = None) -> None:
        # faust clones codecs as type(self)(children=..., **self.kwargs)
        super().__init__(children, avro=avro)
        self.avro = avro

    def _dumps(self, record: Any) -> bytes:
        meta = record.get("meta") if isinstance(record, Mapping) else None
        event_type = meta.get("event_type") if isinstance(meta, Mapping) else None
        if not isinstance(event_type, str):
            raise EncodeError(
                type(record).__name__,
                "meta.event_type",
                "a sagastream event is a mapping whose meta names its event type; "
                "build one with new_event()",
            )
        return self.avro.encode(event_type, record)

    def _loads(self, data: bytes) -> dict[str, Any]:
        return self.avro.decode(data)[1]


def topic(app: faust.App, name: str, codec: EventCodec, settings: Settings) -> faust.TopicT:
    """The faust topic of a topology topic: physical name, raw keys, sagastream values."""
    return app.topic(settings.topic(name), key_serializer="raw", value_serializer=codec)


@dataclass(frozen=True)
class SagaTopics:
    """One saga's faust topics: where its start event goes and where outcomes come out."""

    saga: str
    start_event: str
    key_field: str
    start: faust.TopicT
    outcomes: faust.TopicT


def saga_topics(
    app: faust.App,
    saga: str,
    *,
    settings: Settings | None = None,
    topology: Topology | None = None,
    codec: EventCodec | None = None,
) -> SagaTopics:
    """The saga's topics as topology.yaml declares them; settings default to SAGASTREAM_*."""
    settings = settings or get_settings()
    topology = topology or load_topology(settings.topology_file, settings.schemas_path)
    spec = topology.sagas.get(saga)
    if spec is None:
        raise NotFound(
            f"no saga {saga!r} in {settings.topology_file}; sagas: {', '.join(topology.sagas)}"
        )
    codec = codec or EventCodec(build_codec(settings))
    return SagaTopics(
        saga,
        spec.start_event,
        spec.key_field,
        topic(app, topology.event_topic(spec.start_event), codec, settings),
        topic(app, spec.outcome_topic, codec, settings),
    )


def new_event(
    event_type: str, saga_key: str, fields: Mapping[str, Any], *, producer: str, **meta: Any
) -> dict[str, Any]:
    """The fields plus a new EventMeta (keywords as for sagastream.wire.codec.new_meta)."""
    return {**fields, "meta": new_meta(event_type, saga_key, producer, **meta)}


async def start_saga(
    topics: SagaTopics, fields: Mapping[str, Any], *, producer: str, **meta: Any
) -> dict[str, Any]:
    """Send the saga's start event, keyed by its key field; returns the record sent.

    The send is queued like any faust send: the app's producer delivers it.
    """
    key = str(fields[topics.key_field])
    record = new_event(topics.start_event, key, fields, producer=producer, **meta)
    await topics.start.send(
        key=key.encode(), value=record, headers=[("event_type", topics.start_event.encode())]
    )
    return record
