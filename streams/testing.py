"""Run a saga and its handler functions in a unit test: no broker, the pure core, a virtual clock.

    from sagastream.testing import SagaTest

    def test_a_trip_books_everything():
        saga = SagaTest.load("topology.yaml")          # the app named in it, or app="..."
        key = saga.start(TripRequested(trip_id="t-1", ...))
        saga.run()                                     # handlers answer every command sent
        assert saga.status(key) == "completed"
        assert saga.sent(key) == ["BookFlight", "BookHotel"]

Every command and result goes through the project's Avro schemas, as on Kafka, so a handler
that returns a field its schema lacks fails here too; and every saga state is stored and read
back as the orchestrator's changelog keeps it (`sagastream.core.state`), so a payload the
runtime cannot keep fails here too. Time stands still until `advance`, which
fires the timers (timeouts, retries, the deadline) that come due, in order.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagastream.app import App, RoleHandler, load_app
from sagastream.core.saga import Event, Timer, decide, saga_for, timer_event
from sagastream.core.state import StateEncodingError, decode_state, encode_state
from sagastream.core.topology import (
    ENGINE_EVENT_TOPICS,
    OUTCOME_EVENTS,
    SIGNAL_EVENT,
    TIMER_EVENT,
    Topology,
    load_topology,
)
from sagastream.events import Event as EventModel
from sagastream.events import model_named
from sagastream.runtime.outputs import Encoder
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore, new_meta

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PRODUCER = "sagastream.testing"


@dataclass(frozen=True)
class Sent:
    """A command the saga sent: its type, fields, attempt and step, and when (virtual ms)."""

    event_type: str
    key: str
    fields: dict[str, Any]
    attempt: int
    step: str | None
    at_ms: int
    meta: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def model(self) -> EventModel:
        """The command as its pydantic model."""
        model = model_named(self.event_type)
        assert issubclass(model, EventModel)
        return model.model_validate(self.fields)


@dataclass
class _Saga:
    state: dict[str, Any] | None = None
    sent: list[Sent] = field(default_factory=list)
    outcomes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    timeline: list[tuple[int, str, str | None]] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)


class SagaTest:
    """One or more sagas of a topology, driven by hand, with a clock that moves only when told."""

    def __init__(
        self, topology: Topology, schemas: SchemaStore, app: App | None = None, now_ms: int = 0
    ) -> None:
        self.topology = topology
        self.now_ms = now_ms or START_MS
        self._t0 = self.now_ms
        self._codec = AvroCodec(schemas, LocalSchemaIds(schemas), validate=True)
        # what the orchestrator encodes a decision with: the schema's fields, derived meta
        self._encoder = Encoder(Settings(), topology, schemas, self._codec, PRODUCER)
        self._app = app
        self._roles: dict[str, RoleHandler] = {}
        self._sagas: dict[str, _Saga] = {}
        self._pending: deque[Sent] = deque()

    @classmethod
    def load(
        cls,
        topology_file: str | Path = "topology.yaml",
        app: str | App | None = None,
        settings: Any = None,
    ) -> SagaTest:
        """From a topology file (schemas/ beside it) and the app it names, or `app`; with
        `settings`, the app's startup hooks run first, as in a worker."""
        path = Path(topology_file)
        schemas = SchemaStore(path.parent / "schemas")
        topology = load_topology(path, schemas.directory)
        module = app if app is not None else topology.app
        loaded = load_app(module) if isinstance(module, str) else module
        if loaded is not None and settings is not None:
            loaded.start(settings)
        return cls(topology, schemas, loaded)

    # -- driving -------------------------------------------------------------------------
    def start(self, event: EventModel) -> str:
        """Deliver a start event; returns the saga key."""
        found = saga_for(self.topology.sagas, type(event).__name__)
        if found is None:
            raise ValueError(f"{type(event).__name__} starts no saga of this topology")
        key = str(event.fields()[found[1].key_field])
        self.deliver(event, key)
        return key

    def deliver(
        self, event: EventModel, key: str, attempt: int = 1, event_id: str | None = None
    ) -> None:
        """Deliver any event to the saga of `key` (a result out of order, a late success...).
        The same `event_id` twice is a duplicate, which the saga ignores."""
        self._decide(key, type(event).__name__, event.fields(), attempt, event_id)

    def signal(
        self, saga: str, key: str, step: str, outcome: str, note: str = "", by: str = "test"
    ) -> None:
        """A person's decision for a waiting (human) step."""
        fields = {"saga_type": saga, "step": step, "outcome": outcome, "note": note}
        self._decide(key, SIGNAL_EVENT, {**fields, "decided_by": by}, 1, None)

    def pending(self, key: str | None = None) -> list[Sent]:
        """Commands sent and not yet answered, oldest first."""
        return [c for c in self._pending if key is None or c.key == key]

    def drop(self, command: Sent) -> None:
        """Lose a command (or its answer): only a timeout will tell the saga."""
        self._pending.remove(command)

    def handle(self, command: Sent) -> tuple[str, dict[str, Any]]:
        """Run the app's function for one pending command and deliver its answer."""
        self._pending.remove(command)
        role = self._role_for(command.event_type)
        answer = role(command.event_type, {**command.fields, "meta": command.meta})
        if inspect.isawaitable(answer):
            answer = asyncio.run(_awaited(answer))
        result_type, fields = answer  # type: ignore[misc]
        result = self._derived(result_type, command.key, fields, command.meta, command.attempt)
        self._apply(command.key, result)
        return result_type, fields

    def run(self, max_commands: int = 10_000) -> int:
        """Handle pending commands (and those they lead to) until only unhandled ones remain,
        such as a human step's inbox; returns how many ran."""
        ran = 0
        while ran < max_commands:
            ready = [c for c in self._pending if self._handled(c.event_type)]
            if not ready:
                return ran
            self.handle(ready[0])
            ran += 1
        raise RuntimeError(f"more than {max_commands} commands: is a saga looping?")

    def advance(self, ms: int) -> None:
        """Move the clock forward, firing each timer that comes due, at its due time."""
        until = self.now_ms + ms
        while True:
            due = sorted(
                (when, timer, key)
                for key, saga in self._sagas.items()
                if saga.state is not None
                for timer, when in saga.state["timers"].items()
                if when <= until
            )
            if not due:
                break
            when, timer, key = due[0]
            self.now_ms = max(self.now_ms, when)
            kind, step, attempt = timer.split("|")
            meta = new_meta(TIMER_EVENT, key, PRODUCER, now_ms=self.now_ms)
            fired = timer_event(Timer(when, kind, step, int(attempt)), meta["event_id"])
            self._apply(key, (meta, fired))
        self.now_ms = until

    # -- looking -------------------------------------------------------------------------
    def status(self, key: str) -> str:
        """running, compensating, completed, compensated or failed."""
        state = self._saga(key).state
        return "not started" if state is None else str(state["status"])

    def outcome(self, key: str) -> EventModel | None:
        """The outcome event (SagaCompleted, SagaCompensated, SagaFailed), once the saga ended."""
        outcomes = self._saga(key).outcomes
        if not outcomes:
            return None
        event_type, fields = outcomes[-1]
        model = model_named(event_type)
        assert issubclass(model, EventModel)
        return model.model_validate(fields)

    def sent(self, key: str) -> list[str]:
        """The types of the commands sent, in order (retries appear again)."""
        return [c.event_type for c in self._saga(key).sent]

    def commands(self, key: str) -> list[Sent]:
        """The commands sent, in order, with fields, attempt, step and time."""
        return list(self._saga(key).sent)

    def timeline(self, key: str) -> list[tuple[int, str, str | None]]:
        """(ms since the test's clock started, what happened, step) for every change."""
        return [(at - self._t0, what, step) for at, what, step in self._saga(key).timeline]

    def dead_letters(self, key: str) -> list[str]:
        """Why events for this saga were refused (they would go to a dead-letter topic)."""
        return list(self._saga(key).dead_letters)

    def state(self, key: str) -> dict[str, Any] | None:
        """The saga's stored state, as the orchestrator keeps it."""
        return self._saga(key).state

    # -- inside --------------------------------------------------------------------------
    def _decide(
        self,
        key: str,
        event_type: str,
        fields: dict[str, Any],
        attempt: int,
        event_id: str | None,
    ) -> None:
        meta = new_meta(event_type, key, PRODUCER, attempt=attempt, now_ms=self.now_ms)
        if event_id is not None:
            meta["event_id"] = event_id
        encoded = self._codec.encode(event_type, {**fields, "meta": meta})
        self._apply(key, self._received(encoded))

    def _derived(
        self,
        event_type: str,
        key: str,
        fields: dict[str, Any],
        parent: dict[str, Any],
        attempt: int,
    ) -> tuple[dict[str, Any], Event]:
        """An event caused by `parent`, encoded as the orchestrator and handler loops do."""
        out = self._encoder.derived(event_type, key.encode(), fields, parent, attempt, self.now_ms)
        assert out.value is not None
        return self._received(out.value)

    def _received(self, value: bytes) -> tuple[dict[str, Any], Event]:
        """(meta, event) of a record as a consumer decodes it."""
        event_type, record = self._codec.decode(value)
        meta = record.pop("meta")
        return meta, Event(event_type, meta["event_id"], record, meta["attempt"], meta["hop"])

    def _apply(self, key: str, received: tuple[dict[str, Any], Event]) -> None:
        parent, event = received
        saga = self._sagas.setdefault(key, _Saga())
        if saga.state is not None:
            definition = (saga.state["saga"], self.topology.sagas[saga.state["saga"]])
        elif (found := saga_for(self.topology.sagas, event.event_type)) is not None:
            definition = found
        else:
            saga.dead_letters.append(f"{event.event_type} starts no saga and none is running")
            return
        decision = decide(definition, saga.state, event, self.now_ms)
        if decision.duplicate:
            return
        if decision.state is not None:
            try:
                stored = encode_state(decision.state)
            except StateEncodingError as exc:
                # as the orchestrator does: the input is dead-lettered and changes nothing
                saga.dead_letters.append(f"state_encoding: {exc}")
                return
            saga.state = decode_state(stored)
        saga.timeline += [(self.now_ms, what, step) for what, step in decision.lifecycle]
        if decision.dead_letter:
            saga.dead_letters.append(decision.dead_letter)
        for command in decision.commands:
            meta, out = self._derived(
                command.event_type, key, command.fields, parent, command.attempt
            )
            if command.event_type in OUTCOME_EVENTS:
                saga.outcomes.append((command.event_type, out.fields))
                continue
            sent = Sent(
                command.event_type,
                key,
                out.fields,
                command.attempt,
                command.step,
                self.now_ms,
                meta,
            )
            saga.sent.append(sent)
            if command.event_type not in ENGINE_EVENT_TOPICS:  # StepEscalated is for people
                self._pending.append(sent)

    def _saga(self, key: str) -> _Saga:
        if key not in self._sagas:
            raise KeyError(f"no saga with key {key!r}; started: {', '.join(self._sagas) or 'none'}")
        return self._sagas[key]

    def _role_of(self, command_type: str) -> str | None:
        topic = self.topology.event_topic(command_type)
        for name, handler in self.topology.handlers.items():
            if handler.consumes == topic:
                return name
        return None

    def _handled(self, command_type: str) -> bool:
        return self._app is not None and self._role_of(command_type) is not None

    def _role_for(self, command_type: str) -> RoleHandler:
        role = self._role_of(command_type)
        if role is None or self._app is None:
            raise ValueError(
                f"no handler role consumes {command_type} (or no app was given): answer it "
                "with deliver(...) instead"
            )
        if role not in self._roles:
            self._roles[role] = self._app.role_handler(role, self.topology)
        return self._roles[role]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
