"""The AsyncAPI document of the demo topology: it parses, has a channel for every topic and
dead-letter topic at its prefixed address, a message for every event whose payload is the
event's Avro schema, and the CLI and the console serve the same document."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml

from sagastream.console.app import build_app
from sagastream.core.topology import load_topology
from sagastream.ops.asyncapi import AVRO, DEAD_LETTER, as_yaml, document
from sagastream.ops.dlq import dlq_topics
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore

PREFIX = "tenant-a."


@pytest.fixture
def demo() -> SimpleNamespace:
    settings = Settings(topic_prefix=PREFIX)
    return SimpleNamespace(
        settings=settings,
        topology=load_topology(settings.topology_file, settings.schemas_path),
        schemas=SchemaStore(settings.schemas_path),
    )


def refs(channel: dict[str, Any]) -> set[str]:
    return {m["$ref"].removeprefix("#/components/messages/") for m in channel["messages"].values()}


def test_every_topic_is_a_channel_and_every_event_a_message_with_its_avro_schema(
    demo: SimpleNamespace,
) -> None:
    found = yaml.safe_load(as_yaml(document(demo.topology, demo.schemas, demo.settings)))
    assert found["asyncapi"].startswith("3.")
    channels = {c["title"]: c for c in found["channels"].values()}
    topics = [t.name for t in demo.topology.topics]
    assert set(channels) == set(topics) | set(dlq_topics(demo.topology))
    for topic, channel in channels.items():
        assert channel["address"] == channel["bindings"]["kafka"]["topic"] == PREFIX + topic
    messages = found["components"]["messages"]
    assert set(messages) == set(demo.topology.events) | {DEAD_LETTER}
    for event, spec in demo.topology.events.items():
        payload = messages[event]["payload"]
        assert payload["schemaFormat"] == AVRO
        assert payload["schema"] == demo.schemas.raw(spec.schema_name)
        for topic in spec.all_topics:  # on each topic it is sent to
            assert event in refs(channels[topic])
    for topic in topics:
        assert refs(channels[topic]) <= set(demo.topology.events)
        assert refs(channels[demo.topology.dlq(topic)]) == {DEAD_LETTER}
    assert "dlq.reason" in messages[DEAD_LETTER]["headers"]["properties"]


def test_the_cli_prints_the_document_as_yaml_or_json(
    demo: SimpleNamespace, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sagastream.ops.cli import main

    monkeypatch.setenv("SAGASTREAM_TOPIC_PREFIX", PREFIX)
    expected = document(demo.topology, demo.schemas, demo.settings)
    assert main(["topology", "asyncapi"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == expected
    assert main(["topology", "asyncapi", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected


def test_the_console_serves_it_and_links_it_from_the_topology_page(demo: SimpleNamespace) -> None:
    app = build_app(demo, "127.0.0.1")  # type: ignore[arg-type] - reads no Kafka for these

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.get(path)

    served = asyncio.run(get("/asyncapi.yaml"))
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(served.text) == document(demo.topology, demo.schemas, demo.settings)
    assert 'href="/asyncapi.yaml"' in asyncio.run(get("/topology")).text
