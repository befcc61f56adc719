"""Golden replay: recorded event sequences through decide with the order saga of topology.yaml.

Each golden/*.json holds the events as the orchestrator would see them (fired timers included, at
their due time) and what must come out: the final status, every command in order as
[event_type, step, attempt], the steps compensated and whether the saga went to the DLQ. Every
command must also encode against its Avro schema, as the orchestrator would send it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.saga import Command, Event, decide
from sagastream.core.topology import TIMER_EVENT, UNDO_FIELDS, Topology, load_topology
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore, new_meta

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.json"))


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(ROOT / "topology.yaml", ROOT / "schemas")


@pytest.fixture(scope="module")
def store() -> SchemaStore:
    return SchemaStore(ROOT / "schemas")


def _replay(topology: Topology, golden: dict[str, Any]) -> dict[str, Any]:
    definition = (golden["saga"], topology.sagas[golden["saga"]])
    state: dict[str, Any] | None = None
    commands: list[list[Any]] = []
    sent: list[Command] = []
    dead_letters: list[str] = []
    now = golden["now_start"]
    for record in golden["events"]:
        assert record["at"] >= now, f"{record['event_id']}: events must be in time order"
        now = record["at"]
        fields = record["fields"]
        if record["event_type"] == TIMER_EVENT:
            # a recording is only valid if the timer was armed, with that due time, and is due
            assert state is not None
            key = f"{fields['kind']}|{fields['step']}|{fields['attempt']}"
            assert state.timers.get(key) == fields["due_ms"], (key, state.timers)
            assert now >= fields["due_ms"]
        event = Event(record["event_type"], record["event_id"], fields, record["attempt"])
        decision = decide(definition, state, event, now)
        assert not decision.duplicate, record["event_id"]
        if decision.state is not None:
            state = decision.state
        commands += [[c.event_type, c.step, c.attempt] for c in decision.commands]
        sent += decision.commands
        if decision.dead_letter:
            dead_letters.append(decision.dead_letter)
    assert state is not None
    return {
        "status": state.status,
        "commands": commands,
        "compensated": state.undone,
        "dead_letter": bool(dead_letters),
        "sent": sent,
    }


def test_there_are_golden_files() -> None:
    names = {p.stem for p in GOLDEN}
    assert {
        "order_happy_path",
        "order_payment_failed",
        "order_timeout_retry",
        "order_compensation_failed",
    } <= names


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_replay(topology: Topology, path: Path) -> None:
    golden = json.loads(path.read_text())
    got = _replay(topology, golden)
    expect = golden["expect"]
    assert got["status"] == expect["status"]
    assert got["commands"] == expect["commands"]
    assert got["compensated"] == expect["compensated"]
    assert got["dead_letter"] == expect.get("dead_letter", False)


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_commands_fit_their_schemas(
    topology: Topology, store: SchemaStore, path: Path
) -> None:
    """Each command carries what its schema asks for and nothing else (an undo's automatic `step`
    aside, which the encoder drops where the schema has no such field)."""
    golden = json.loads(path.read_text())
    codec = AvroCodec(store, LocalSchemaIds(store), validate=True)
    for command in _replay(topology, golden)["sent"]:
        names = {f["name"] for f in store.raw(command.event_type)["fields"]}
        assert set(command.fields) - names <= set(UNDO_FIELDS), command
        record = {k: v for k, v in command.fields.items() if k in names}
        codec.encode(command.event_type, {**record, "meta": new_meta(command.event_type, "k", "t")})


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_replay_with_every_event_twice(topology: Topology, path: Path) -> None:
    """Redelivery (same event id) changes nothing: at-least-once input, same outcome."""
    golden = json.loads(path.read_text())
    definition = (golden["saga"], topology.sagas[golden["saga"]])
    state = None
    for record in golden["events"]:
        event = Event(record["event_type"], record["event_id"], record["fields"], record["attempt"])
        decision = decide(definition, state, event, record["at"])
        if decision.state is not None:
            state = decision.state
        again = decide(definition, state, event, record["at"])
        assert again.duplicate and again.state is None and not again.commands
    assert state is not None and state.status == golden["expect"]["status"]
    assert state.undone == golden["expect"]["compensated"]
