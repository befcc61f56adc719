"""Schemas in the real registry: register, check, and evolution through Kafka both ways."""

from __future__ import annotations

import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.topology import load_topology
from sagastream.ops import cli
from sagastream.ops.admin import admin_client
from sagastream.ops.client import EventClient
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, SchemaStore
from sagastream.wire.registry import Registry, RegistrySchemaIds, delete_subjects, plan_subjects

pytestmark = pytest.mark.integration

EVOLUTION = Path(__file__).parent / "evolution"
SUBJECT = "orders.events-sagastream.OrderPlaced"
LINE = re.compile(r"^\s+(\S+(?: \S+)?)\s+(\S+)\s+id (\d+) v(\d+)")


def _schemas_dir(tmp_path: Path, version: str) -> Path:
    """The repository's schemas with OrderPlaced (and what it uses) from evolution/<version>."""
    directory = tmp_path / version
    if directory.exists():
        return directory
    shutil.copytree(Settings().schemas_path, directory)
    for path in (EVOLUTION / version).glob("*.avsc"):
        shutil.copy(path, directory / path.name)
    return directory


@dataclass
class SchemasCli:
    """`sagastream schemas ...` in-process, under its own topic prefix."""

    prefix: str
    capsys: Any
    ran: bool = False

    def __call__(self, action: str, schemas: Path) -> tuple[int, str]:
        self.ran = True
        code = cli.main(["schemas", action, "--schemas", str(schemas)])
        return code, self.capsys.readouterr().out


@pytest.fixture
def schemas_cli(registry: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    prefix = f"r{uuid.uuid4().hex[:10]}-"
    monkeypatch.setenv("SAGASTREAM_TOPIC_PREFIX", prefix)
    monkeypatch.setenv("SAGASTREAM_SCHEMA_REGISTRY_URL", registry.url)
    run = SchemasCli(prefix, capsys)
    yield run
    if run.ran:
        settings = Settings()
        topology = load_topology(settings.topology_file, settings.schemas_path)
        store = SchemaStore(Settings().schemas_path)
        delete_subjects(Registry(registry.url), plan_subjects(topology, store, settings))


def _registered(out: str) -> dict[str, tuple[str, int, int]]:
    """subject -> (action, id, version) from the report lines that carry an id."""
    found = {}
    for line in out.splitlines():
        match = LINE.match(line)
        if match:
            found[match[2]] = (match[1], int(match[3]), int(match[4]))
    return found


def test_register_twice_is_a_no_op(schemas_cli: Any, registry: Any, tmp_path: Path) -> None:
    v1 = _schemas_dir(tmp_path, "v1")
    code, out = schemas_cli("register", v1)
    assert code == 0, out
    first = _registered(out)
    subjects = len(
        plan_subjects(load_topology(Settings().topology_file, v1), SchemaStore(v1), Settings())
    )
    assert len(first) == subjects
    assert {action for action, _, _ in first.values()} == {"registered"}
    assert f"{subjects} registered" in out.splitlines()[-1]

    code, out = schemas_cli("register", v1)
    assert code == 0, out
    second = _registered(out)
    assert {action for action, _, _ in second.values()} == {"unchanged"}
    assert {s: (i, v) for s, (_, i, v) in second.items()} == {
        s: (i, v) for s, (_, i, v) in first.items()
    }
    client = Registry(registry.url)
    placed = f"{schemas_cli.prefix}{SUBJECT}"
    latest = client.latest(placed)
    assert latest is not None and latest[0].version == 1
    assert client.compatibility(placed) == "BACKWARD"
    assert client.compatibility(f"{schemas_cli.prefix}sagas.outcomes-sagastream.SagaCompleted") == (
        "FULL"
    )


def test_check_passes_a_compatible_change_and_fails_an_incompatible_one(
    schemas_cli: Any, tmp_path: Path
) -> None:
    placed = f"{schemas_cli.prefix}{SUBJECT}"
    code, out = schemas_cli("compat", _schemas_dir(tmp_path, "v1"))
    assert code == 0 and f"new          {placed}" in out, out
    assert schemas_cli("register", _schemas_dir(tmp_path, "v1"))[0] == 0

    code, out = schemas_cli("compat", _schemas_dir(tmp_path, "v2"))
    assert code == 0, out
    assert re.search(rf"compatible\s+{re.escape(placed)}\s+change accepted after v1", out), out

    code, out = schemas_cli("compat", _schemas_dir(tmp_path, "incompatible"))
    assert code == 1, out
    line = next(x for x in out.splitlines() if placed in x)
    assert line.lstrip().startswith("INCOMPATIBLE") and "BACKWARD" in line
    assert "1 incompatible" in out.splitlines()[-1]

    code, out = schemas_cli("register", _schemas_dir(tmp_path, "incompatible"))
    assert code == 1 and "REJECTED" in out, out
    code, out = schemas_cli("register", _schemas_dir(tmp_path, "v2"))
    assert (
        code == 0
        and _registered(out)[placed][0] == "new version"
        and _registered(out)[placed][2] == 2
    )


# evolution through Kafka


def _codec(store: SchemaStore, settings: Settings, topology: Any) -> AvroCodec:
    """A codec with empty caches: everything it knows about ids comes from the registry."""
    return AvroCodec(store, RegistrySchemaIds(store, settings, topology=topology))


def _order(order_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": "cust-1",
        "email": "a@example.com",
        "amount_cents": 1299,
        "currency": "EUR",
        "card_token": "tok_visa",
        "items": [{"sku": "SKU-1", "quantity": 2}],
        "shipping_address": "1 Main Street",
        "priority": "normal",
        "has_app": False,
        **extra,
    }


@pytest.fixture
def evolution(ns: Any) -> Any:
    """Settings with a prefix of their own (fresh subjects), and its orders.events topic."""
    from confluent_kafka.admin import NewTopic

    settings = ns.settings.model_copy(update={"topic_prefix": ns.settings.topic_prefix + "evo-"})
    topic = settings.topic("orders.events")
    admin = admin_client(settings)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    yield settings
    Registry(str(settings.schema_registry_url)).delete(settings.topic(SUBJECT))


def _fields(record: dict[str, Any] | None) -> dict[str, Any]:
    assert record is not None
    return {k: v for k, v in record.items() if k != "meta"}


def test_v1_and_v2_consumers_read_each_others_events_through_kafka(
    ns: Any, evolution: Settings
) -> None:
    topic = evolution.topic("orders.events")
    v1, v2 = SchemaStore(EVOLUTION / "v1"), SchemaStore(EVOLUTION / "v2")
    for key, store, extra in (("evo-v1", v1, {}), ("evo-v2", v2, {"gift_note": "for mum"})):
        producer = EventClient(evolution, ns.topology, _codec(store, evolution, ns.topology))
        producer.publish("OrderPlaced", key, _order(key, **extra))
        producer.close()

    registry = Registry(str(evolution.schema_registry_url))
    subject = evolution.topic(SUBJECT)
    registered = {}
    for key, store in (("evo-v1", v1), ("evo-v2", v2)):
        found, _ = registry.lookup(subject, store.canonical("OrderPlaced"))
        assert found is not None, f"{key}'s schema is not registered under {subject}"
        registered[key] = (found.schema_id, found.version)
    assert registered["evo-v1"][1] == 1 and registered["evo-v2"][1] == 2

    read = {}
    for name, store in (("v1", v1), ("v2", v2)):
        consumer = EventClient(evolution, ns.topology, _codec(store, evolution, ns.topology))
        msgs = consumer.read([topic], lambda m: len(m) >= 2, timeout=20)
        consumer.close()
        assert [m.event_type for m in msgs] == ["OrderPlaced", "OrderPlaced"], msgs
        for m in msgs:
            key = (m.key or b"").decode()
            assert struct.unpack(">I", (m.value or b"")[1:5])[0] == registered[key][0]
            read[name, key] = _fields(m.record)

    # a v1 consumer reads the v2 event without the new field
    assert read["v1", "evo-v2"] == _order("evo-v2")
    assert read["v1", "evo-v1"] == _order("evo-v1")
    # a v2 consumer reads the v1 event with the new field's default
    assert read["v2", "evo-v1"] == _order("evo-v1", gift_note=None)
    assert read["v2", "evo-v2"] == _order("evo-v2", gift_note="for mum")
