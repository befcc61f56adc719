"""Run a saga and its handler functions in a unit test: no broker, the pure core, a virtual clock.

    from sagastream.testing import SagaTest

    def test_a_trip_books_everything():
        saga = SagaTest.load("topology.yaml")          # the app named in it, or app="..."
        key = saga.start(TripRequested(trip_id="t-1", ...))
        saga.run()                                     # handlers answer every command sent
        assert saga.status(key) == "completed"
        assert saga.sent(key) == ["BookFlight", "BookHotel"]

Every command and result goes through the project's Avro schemas, as on Kafka, and every saga
state is stored and read back as the orchestrator's changelog keeps it (`sagastream.core.state`),
so a payload the runtime cannot keep fails here too. Time stands still until `advance` (or
`result`), which fires the timers (timeouts, retries, the deadline) that come due, in order.

Handlers run as the handler loop runs them, under the same contract
(`sagastream.runtime.contract`): an attempt that raises, runs past its run-time bound, answers
a type its command may not, or makes a result that does not encode or is too large, is answered
with the StepAttemptFailed the worker would send (`failed_attempts` lists them); the commands
pending at once run concurrently (attempts of one idempotency key in order), and async handlers
on an event loop whose clock is the kit's virtual clock, so `await asyncio.sleep(3600)` in a
handler moves the saga's time on by an hour (firing the saga's timers that come due meanwhile)
and takes no real time. Plain functions run as the worker runs them, on pool threads: their
time is real, and while one runs the kit's clock follows the real one, so a plain
function that hangs is abandoned at its run-time bound (in real time: give such a step a short
`timeout_ms` in a test). The kit's calls are plain functions that work in async tests too: the
handlers' loop runs in a thread of its own while a call lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sagastream.app import App, RoleHandler, load_app
from sagastream.core.saga import Event, Timer, decide, saga_for, timer_event
from sagastream.core.spans import Span, decision_spans, traceparents
from sagastream.core.state import SagaState, StateEncodingError, decode_state, encode_state
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
from sagastream.runtime import contract
from sagastream.runtime.contract import AttemptError, Contract
from sagastream.runtime.handler_loop import PlainPool, command_bounds
from sagastream.runtime.limits import RecordLimits, RecordTooLarge, check_fits
from sagastream.runtime.outputs import Encoder
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore, new_meta

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PRODUCER = "sagastream.testing"
# the threads of plain handler functions, shared by every kit of the process
_PLAIN_POOL = PlainPool("sagastream-testing")


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
    state: SagaState | None = None
    sent: list[Sent] = field(default_factory=list)
    outcomes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    timeline: list[tuple[int, str, str | None]] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)
    failed_attempts: list[tuple[Sent, AttemptError]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)


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
        self._orchestrator_reads = frozenset(topology.orchestrator_inputs())
        # the handler side's rules, the very ones the handler loop applies
        self._contract = Contract(topology)
        self._limits = RecordLimits(Settings().max_record_bytes)

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

    def handle(self, command: Sent) -> tuple[str, dict[str, Any]] | None:
        """Run the app's function for one pending command and deliver its answer: its result,
        or the StepAttemptFailed that says why there is none (None for a notification whose
        attempt failed: nobody is told, as in the handler loop)."""
        self._pending.remove(command)
        answers = self._in_handlers_loop(self._attempts([command], 1))
        return answers[0] if answers else None

    def run(self, max_commands: int = 10_000) -> int:
        """Handle pending commands (and those they lead to) until only unhandled ones remain,
        such as a human step's inbox; returns how many ran. Commands pending together run
        concurrently, as in the handler loop; each answer is delivered when it is ready."""
        return len(self._in_handlers_loop(self._attempts(None, max_commands)))

    def advance(self, ms: int) -> None:
        """Move the clock forward, firing each timer that comes due, at its due time."""
        self._advance_to(self.now_ms + ms)

    def _advance_to(self, until: int) -> None:
        while True:
            due = sorted(
                (when, timer, key)
                for key, saga in self._sagas.items()
                if saga.state is not None
                for timer, when in saga.state.timers.items()
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
        self.now_ms = max(self.now_ms, until)

    def result(self, key: str, within_ms: int = 365 * 86_400_000) -> EventModel:
        """The saga's outcome, as `Client.result` waits for it: handlers run and the clock moves
        on from timer to timer until the saga ends. AssertionError, saying where the saga is,
        if it has not ended within `within_ms` of virtual time (a human step waits, say)."""
        until = self.now_ms + within_ms
        self.run()
        while self.outcome(key) is None:
            state = self.state(key)
            timers = {} if state is None else state.timers
            upcoming = [when for when in timers.values() if when <= until]
            if not upcoming:
                raise AssertionError(
                    f"saga {key!r} has no outcome after {self.now_ms - self._t0} ms of virtual "
                    f"time: it is {self.status(key)}, waiting for "
                    f"{[c.event_type for c in self.pending(key)] or 'nothing'}"
                )
            self._advance_to(min(upcoming))
            self.run()
        outcome = self.outcome(key)
        assert outcome is not None
        return outcome

    # -- looking -------------------------------------------------------------------------
    def status(self, key: str) -> str:
        """running, compensating, completed, compensated or failed."""
        state = self._saga(key).state
        return "not started" if state is None else state.status

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

    def failed_attempts(self, key: str) -> list[tuple[str, int, str, str]]:
        """(command type, attempt, kind, "ErrorType: message") of every attempt that ended
        without a result: it raised, ran past its bound, answered a type it may not, or made
        a result too large to send. Each was reported to the saga as a StepAttemptFailed."""
        return [
            (c.event_type, c.attempt, e.kind, f"{e.error_type}: {e.message}")
            for c, e in self._saga(key).failed_attempts
        ]

    def spans(self, key: str) -> list[Span]:
        """The spans the orchestrator would export for this saga (sagastream.core.spans), in
        the order its decisions finished them: each step attempt's and undo attempt's, instants
        (a step a `when:` skipped, an escalation, a dead letter) and, once it ended, the saga's,
        with its critical path. The ids and times are the runtime's: derived from the saga, on
        the virtual clock."""
        return list(self._saga(key).spans)

    def dead_letters(self, key: str) -> list[str]:
        """Why events for this saga were refused (they would go to a dead-letter topic)."""
        return list(self._saga(key).dead_letters)

    def saga_keys(self) -> list[str]:
        """The keys of every saga an event was delivered to, in that order."""
        return list(self._sagas)

    def state(self, key: str) -> SagaState | None:
        """The saga's stored state, as the orchestrator keeps it (read back from its bytes)."""
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
        step: str | None = None,
        traceparent: str | None = None,
    ) -> tuple[dict[str, Any], Event]:
        """An event caused by `parent`, encoded as the orchestrator and handler loops do; `step`
        goes into its meta (the step a command is for, or the one a result answers), and
        `traceparent` (a command's: its attempt's span)."""
        out = self._encoder.derived(
            event_type, key.encode(), fields, parent, attempt, self.now_ms, step, traceparent
        )
        assert out.value is not None
        return self._received(out.value)

    def _received(self, value: bytes) -> tuple[dict[str, Any], Event]:
        """(meta, event) of a record as a consumer decodes it, and as the orchestrator reads it."""
        event_type, record = self._codec.decode(value)
        meta = record.pop("meta")
        return meta, Event(
            event_type,
            meta["event_id"],
            record,
            attempt=meta["attempt"],
            hop=meta["hop"],
            correlation_id=meta["correlation_id"],
            traceparent=meta["traceparent"],
            step=meta.get("step"),
        )

    def _apply(self, key: str, received: tuple[dict[str, Any], Event]) -> None:
        parent, event = received
        saga = self._sagas.setdefault(key, _Saga())
        if saga.state is not None:
            definition = (saga.state.saga, self.topology.sagas[saga.state.saga])
        elif (found := saga_for(self.topology.sagas, event.event_type)) is not None:
            definition = found
        else:
            saga.dead_letters.append(f"{event.event_type} starts no saga and none is running")
            return
        decision = decide(definition, saga.state, event, self.now_ms)
        if decision.duplicate:
            return
        before, spec = saga.state, definition[1]
        if decision.state is not None:
            try:
                stored = encode_state(decision.state)
            except StateEncodingError as exc:
                # as the orchestrator does: the input is dead-lettered and changes nothing
                saga.dead_letters.append(f"state_encoding: {exc}")
                return
            saga.state = decode_state(stored)
            spans = decision_spans(
                spec, before, decision, event, self.now_ms, self._encoder.topic_of
            )
            saga.spans += spans
        saga.timeline += [(self.now_ms, what, step) for what, step in decision.lifecycle]
        if decision.dead_letter:
            saga.dead_letters.append(decision.dead_letter)
        new = decision.state
        parents = (
            traceparents(spec, new, decision.commands)
            if new is not None
            else [None] * len(decision.commands)
        )
        for command, traceparent in zip(decision.commands, parents, strict=True):
            meta, out = self._derived(
                command.event_type,
                key,
                command.fields,
                parent,
                command.attempt,
                command.step,
                traceparent,
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

    # -- the handler side -----------------------------------------------------------------
    def _in_handlers_loop(self, work: Coroutine[Any, Any, list[Answer]]) -> list[Answer]:
        """Run `work` on the handlers' virtual-time loop, in a thread of its own, so that a
        test's own running loop (an async test) is neither needed nor disturbed."""
        loop = _VirtualLoop(self)
        done: list[list[Answer]] = []
        failed: list[BaseException] = []

        def drive() -> None:
            loop.thread = threading.current_thread()
            try:
                done.append(loop.run_until_complete(work))
            except BaseException as exc:  # handed to the caller's thread
                failed.append(exc)
            finally:
                loop.close()

        thread = threading.Thread(target=drive, name="sagastream-testing-handlers")
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return done[0]

    async def _attempts(self, commands: list[Sent] | None, most: int) -> list[Answer]:
        """Run `commands` (None: every pending command a handler takes, and those their
        answers lead to) concurrently; each answer is delivered as it comes, in virtual time.
        As in the handler loop, only the attempts of one idempotency key run in order."""
        running: dict[asyncio.Task[Answer | None], int] = {}
        tails: dict[str, asyncio.Task[Answer | None]] = {}
        answers: list[Answer] = []
        queued = list(commands) if commands is not None else []
        while True:
            if commands is None:
                queued = [c for c in self._pending if self._handled(c.event_type)]
            for command in queued:
                if len(answers) + len(running) == most:
                    raise RuntimeError(f"more than {most} commands: is a saga looping?")
                if command in self._pending:
                    self._pending.remove(command)
                order = str(command.fields.get("idempotency_key") or command.key)
                task = asyncio.ensure_future(self._attempt(command, tails.get(order)))
                running[task] = len(answers) + len(running)
                tails[order] = task
            queued = []
            if not running:
                return answers
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=running.__getitem__):  # as sent, when they tie
                del running[task]
                answer = task.result()
                if answer is not None:
                    answers.append(answer)

    async def _attempt(
        self, command: Sent, previous: asyncio.Task[Answer | None] | None
    ) -> Answer | None:
        """One attempt of one command, as the handler loop runs it (after the previous attempt
        of its idempotency key): its answer, or the StepAttemptFailed that says why there is
        none, delivered to the saga if the orchestrator reads its topic."""
        if previous is not None:
            await asyncio.wait([previous])  # for order only: its outcome is its own
        record = {**command.fields, "meta": command.meta}
        answer = await self._run(command, record)
        if answer is None:
            return None
        result = self._encoded(command, record, answer)
        if result is None:
            return None
        answer = (result[1].event_type, result[1].fields)
        if self.topology.event_topic(answer[0]) in self._orchestrator_reads:
            self._apply(command.key, result)  # a notification's reply is read by no saga
        return answer

    async def _run(self, command: Sent, record: dict[str, Any]) -> Answer | None:
        """The function's result within the run-time bound (a heartbeat starts it again), if
        the contract allows it; else the StepAttemptFailed (None for a notification)."""
        role = self._role_for(command.event_type)
        bound = command_bounds(self.topology, [command.event_type], None)[command.event_type]
        limit = asyncio.timeout(bound)
        loop = asyncio.get_running_loop()
        token = contract.HEARTBEAT.set(partial(_heartbeat, loop, limit, bound))
        try:
            async with limit:
                result_type, fields = await self._call(role, command.event_type, record)
        except Exception as exc:
            if limit.expired():
                overran = f"ran past its bound of {bound:.1f}s (the step's timeout_ms); abandoned"
                return self._failed(command, record, AttemptError.of("timeout", overran))
            return self._failed(command, record, AttemptError.from_exception(exc))
        finally:
            contract.HEARTBEAT.reset(token)
        why = self._contract.check_result(command.event_type, result_type)
        if why is not None:
            return self._failed(command, record, AttemptError.of("contract", why))
        return result_type, fields

    def _encoded(
        self, command: Sent, record: dict[str, Any], answer: Answer
    ) -> tuple[dict[str, Any], Event] | None:
        """The answer as the saga receives it; one that cannot be encoded, or is too large to
        send, is answered by a StepAttemptFailed instead, as in the handler loop."""
        try:
            return self._sent_result(command, *answer)
        except RecordTooLarge as exc:
            error = AttemptError.of("too_large", f"{exc.reason}: {exc}")
        except Exception as exc:  # fields its schema does not take: the function's bug
            error = AttemptError.from_exception(exc)
        failed = self._failed(command, record, error)
        return None if failed is None else self._sent_result(command, *failed)

    def _sent_result(
        self, command: Sent, result_type: str, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], Event]:
        out = self._encoder.derived(
            result_type,
            command.key.encode(),
            fields,
            command.meta,
            command.attempt,
            self.now_ms,
            command.step,
        )
        check_fits(self._limits, [(result_type, out.topic, out.key, out.value, out.headers)])
        assert out.value is not None
        return self._received(out.value)

    def _failed(self, command: Sent, record: dict[str, Any], error: AttemptError) -> Answer | None:
        """The StepAttemptFailed answering a failed attempt (kept for `failed_attempts`); None
        for a command no step sends (a notification), whose failure the handler loop logs."""
        self._saga(command.key).failed_attempts.append((command, error))
        if not self._contract.reports_failures(command.event_type):
            return None
        return self._contract.attempt_failed(command.event_type, record, error)

    async def _call(self, role: RoleHandler, command_type: str, record: dict[str, Any]) -> Answer:
        """Async functions run on the loop; plain ones on pool threads, as the handler loop
        runs them, so that their bound holds (one that overran runs on, dropped, and its thread
        is not reused)."""
        if role.is_async(command_type):
            answer = role(command_type, record)
        else:
            loop = asyncio.get_running_loop()
            assert isinstance(loop, _VirtualLoop)
            loop.plain_calls += 1
            call = _PLAIN_POOL.submit(loop, role, command_type, record)
            try:
                answer = await call.future
            except asyncio.CancelledError:
                call.abandon()
                raise
            finally:
                loop.plain_calls -= 1
        if inspect.isawaitable(answer):
            answer = await answer
        return answer  # type: ignore[return-value]

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


Answer = tuple[str, dict[str, Any]]


def _heartbeat(loop: asyncio.AbstractEventLoop, limit: asyncio.Timeout, bound: float) -> None:
    """The attempt's function says it is alive: its bound starts again from now. Called on the
    loop (async functions) or from the function's own thread (plain ones)."""

    def extend() -> None:
        if not limit.expired():
            with contextlib.suppress(RuntimeError):  # the attempt has ended meanwhile
                limit.reschedule(loop.time() + bound)

    if threading.current_thread() is getattr(loop, "thread", None):  # the loop's own
        extend()
    else:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(extend)


class _VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is the kit's virtual clock: when nothing is ready to run but
    something waits for a time (a handler's sleep, a run-time bound), the kit's clock moves on
    to it, firing the saga timers due meanwhile, instead of the loop waiting in real time."""

    def __init__(self, kit: SagaTest) -> None:
        super().__init__()
        self._kit = kit
        self.plain_calls = 0  # plain functions running on their threads, in real time
        self.thread: threading.Thread | None = None  # the thread that runs the loop
        self._real_since: float | None = None  # while plain calls run: real time not yet counted

    def time(self) -> float:
        virtual = (self._kit.now_ms - self._kit._t0) / 1000
        if self._real_since is None:
            return virtual
        return virtual + time.monotonic() - self._real_since  # not yet added to the kit's clock

    def _run_once(self) -> None:
        # asyncio's own queues: `_ready` callbacks to run now, `_scheduled` a heap of timed ones
        if self.plain_calls:
            # a plain function's time is real: the loop waits for it (or for its bound) as an
            # event loop does, its clock running in real time from `_real_since`, and the kit's
            # clock then moves on by the whole milliseconds that passed (firing saga timers)
            if self._real_since is None:
                self._real_since = time.monotonic()
            super()._run_once()  # type: ignore[misc]
            passed_ms = int((time.monotonic() - self._real_since) * 1000)
            if passed_ms:
                self._real_since += passed_ms / 1000
                self._kit._advance_to(self._kit.now_ms + passed_ms)
            return
        self._real_since = None
        ready: deque[Any] = self._ready  # type: ignore[attr-defined]
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        waiting = [h.when() for h in scheduled if not h.cancelled()]
        if not ready and waiting:
            when = min(waiting)
            due_ms = self._kit._t0 + math.ceil(when * 1000 - 1e-6)
            if (due_ms - self._kit._t0) / 1000 < when:  # float rounding: never short of it
                due_ms += 1
            self._kit._advance_to(max(due_ms, self._kit.now_ms))
        super()._run_once()  # type: ignore[misc]
