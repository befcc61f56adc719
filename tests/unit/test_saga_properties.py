"""Property-based tests of the saga core against a simulated world of handlers, timers and redelivery.

A world runs one random saga (a random DAG of 1-5 steps) to quiescence: handler outcomes are drawn
per command (success, failure, no answer, or an effect whose answer is lost), results are delivered
in any order, late, or more than once, and timers fire when the world chooses or when nothing else
is pending. Handlers keep a ledger by idempotency key, as the real ones do: a retry of a command
whose earlier attempt had an effect answers success without a second effect.

Every step's command takes fields from the start event and from some of the steps it depends on,
and every step result has a field `ref` of the same name, so a command carrying another step's
value would show. Some steps have a `when` on the start event, so they are skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import event as note_coverage
from hypothesis import given, settings
from hypothesis import strategies as st

from sagastream.core.saga import (
    CANCELLED,
    COMPENSATED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    STARTED,
    SUCCEEDED,
    TERMINAL,
    UNDO_FAILED,
    UNDOING,
    UNDONE,
    WAITING_RETRY,
    Command,
    Decision,
    Event,
    Timer,
    backoff_ms,
    decide,
    timer_event,
)
from sagastream.core.state import SagaState
from sagastream.core.topology import (
    NOTIFY_FIELDS,
    UNDO_FIELDS,
    CompensationSpec,
    Fills,
    NotifySpec,
    RetryPolicy,
    SagaSpec,
    StepSpec,
)

NAMES = ("a", "b", "c", "d", "e")
START_FIELDS = ("id", "amount", "n")
# conditions that hold for every start event the tests send
TRUE_WHENS = (
    "start.n >= 0",
    "start.id == 'k1'",
    "start.amount in [5, 6] and not start.n < 0",
    "start.nothing == None or start.n > 99",
    "True",
)
STEP_TIMEOUT_MS, UNDO_TIMEOUT_MS = 1_000, 800
MAX_DELIVERIES = 600
SAGA_END = {"SagaCompleted": COMPLETED, "SagaCompensated": COMPENSATED, "SagaFailed": FAILED}
# handler behaviour per command: answer ok (effect), answer failure (no effect), no answer and no
# effect (handler down), or an effect whose answer is lost. Listed so shrinking goes towards "ok".
FORWARD = ("ok", "ok", "ok", "fail", "silent", "lost")
REPEAT = ("ok", "ok", "silent")  # a retry after an effect: the ledger answers, unless down
DELAYS = (0, 5, 50, 400, 1_500)
INTERESTING = {
    "stale_success_accepted",
    "step_retry_scheduled",
    "compensation_retry_scheduled",
    "compensation_failed",
    "step_failed",
}


def _policy(draw: st.DrawFn, max_attempts: int) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=draw(st.integers(1, max_attempts)),
        initial_backoff_ms=draw(st.integers(0, 300)),
        multiplier=draw(st.sampled_from((1.0, 1.5, 2.0, 3.0))),
        max_backoff_ms=draw(st.integers(0, 2_000)),
        on=tuple(draw(st.lists(st.sampled_from(("timeout", "failure")), unique=True))),
        jitter=draw(st.sampled_from(("full", "full", "none"))),
    )


def _inputs(draw: st.DrawFn, sources: list[str]) -> dict[str, Any]:
    """Same-named fields of the start event, and each chosen step's `ref` under its own name."""
    inputs: dict[str, Any] = {"start": draw(st.lists(st.sampled_from(START_FIELDS), unique=True))}
    for source in draw(st.lists(st.sampled_from(sources), unique=True)) if sources else []:
        inputs[source] = {f"{source}_ref": "ref"}
    return inputs


def _when(draw: st.DrawFn, deps: list[str], on_steps: bool) -> str | None:
    """No condition, one on the start event, or (if asked) one true only if a dependency ran."""
    if on_steps and deps and draw(st.booleans()):
        dep = draw(st.sampled_from(deps))
        return f"{dep}.ref == 'ref-{dep}'"
    threshold = draw(st.sampled_from((None, None, None, 0, 1, 2, 3)))
    return None if threshold is None else f"start.n >= {threshold}"


@st.composite
def saga_specs(draw: st.DrawFn, steps_in_when: bool = False) -> SagaSpec:
    """A random acyclic saga: step i may depend only on steps before it."""
    steps: dict[str, StepSpec] = {}
    ancestors: dict[str, set[str]] = {}
    for i in range(draw(st.integers(1, 5))):
        name = NAMES[i]
        deps = draw(st.lists(st.sampled_from(NAMES[:i]), unique=True)) if i else []
        ancestors[name] = set(deps).union(*(ancestors[d] for d in deps))
        before = sorted(ancestors[name])
        compensation = None
        if draw(st.booleans()):
            compensation = CompensationSpec(
                command=f"Undo_{name}",
                success=f"Undone_{name}",
                failure=("CompensationFailed",),  # shared by all steps: the `step` field routes it
                timeout_ms=UNDO_TIMEOUT_MS,
                retry=_policy(draw, 3),
                inputs=_inputs(draw, [name, *before]),
            )
        steps[name] = StepSpec(
            command=f"Do_{name}",
            success=f"Done_{name}",
            failure=(f"Failed_{name}",),
            depends_on=tuple(deps),
            optional=draw(st.booleans()),
            timeout_ms=STEP_TIMEOUT_MS,
            retry=_policy(draw, 3),
            compensation=compensation,
            inputs=_inputs(draw, before),
            when=_when(draw, deps, steps_in_when),
        )
    notify = None
    if draw(st.booleans()):
        templates = {COMPLETED: "done", COMPENSATED: "undone", FAILED: "broken"}
        notify = NotifySpec(
            command="Notify", templates=templates, inputs=_inputs(draw, list(steps))
        )
    return SagaSpec(
        start_event="Start",
        key_field="id",
        outcome_topic="outcomes",
        deadline_ms=draw(st.sampled_from((10**9, 10**9, 2_500, 6_000))),
        steps=steps,
        notify=notify,
    )


@dataclass
class World:
    """Handlers, the timer firer and the broker around one saga; checks invariants as it goes."""

    spec: SagaSpec
    data: st.DataObject
    dup_budget: int
    now: int = 0
    state: dict[str, Any] | None = None
    pending: list[Event] = field(default_factory=list)
    delivered: list[Event] = field(default_factory=list)
    trace: list[tuple[int, Event, bool]] = field(default_factory=list)
    ledger: set[str] = field(default_factory=set)  # idempotency keys whose effect happened
    effects: Counter[str] = field(default_factory=Counter)
    undo_effects: Counter[str] = field(default_factory=Counter)
    commands: list[Command] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)
    successes_told: set[str] = field(default_factory=set)
    order_when_compensating: list[str] | None = None
    failed_at_end: set[str] = field(default_factory=set)
    end_dead_letter: str | None = None
    late_undo_failures: int = 0
    undos_told: set[str] = field(default_factory=set)
    notes: Counter[str] = field(default_factory=Counter)
    ids: int = 0
    start_fields: dict[str, Any] = field(default_factory=dict)

    @property
    def when_false(self) -> set[str]:
        """Steps whose `when` (on the start event's n) is false: they must never run."""
        n = self.start_fields["n"]
        return {
            name
            for name, step in self.spec.steps.items()
            if step.when is not None and n < int(step.when.split(">=")[1])
        }

    @property
    def definition(self) -> tuple[str, SagaSpec]:
        return "sim", self.spec

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def new_id(self) -> str:
        self.ids += 1
        return f"ev{self.ids}"

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        self.start_fields = {"id": "k1", "amount": 5, "n": self.draw(st.integers(0, 3))}
        self.deliver(Event("Start", "start", dict(self.start_fields)), duplicate=False)
        for _ in range(MAX_DELIVERIES):
            timers = self.state.timers if self.state else {}
            if not self.pending and not timers:
                return
            choices = []
            if self.pending:
                choices.append("result")
            if timers:
                choices.append("timer")
            if self.dup_budget and self.delivered:
                choices.append("duplicate")
            choice = self.draw(st.sampled_from(choices)) if len(choices) > 1 else choices[0]
            if choice == "result":
                event = self.pending.pop(self.draw(st.integers(0, len(self.pending) - 1)))
                self.now += self.draw(st.sampled_from(DELAYS))
                self.deliver(event, duplicate=False)
            elif choice == "timer":
                key, due = min(timers.items(), key=lambda kv: (kv[1], kv[0]))
                kind, step, attempt = key.split("|")
                self.now = max(self.now, due)
                timer = Timer(due, kind, step, int(attempt))
                self.deliver(timer_event(timer, f"timer:{key}|{due}"), duplicate=False)
            else:
                self.dup_budget -= 1
                event = self.draw(st.sampled_from(self.delivered))
                self.deliver(event, duplicate=True)
        raise AssertionError(f"no quiescence after {MAX_DELIVERIES} deliveries: {self.state}")

    def deliver(self, event: Event, duplicate: bool) -> None:
        before = copy.deepcopy(self.state)
        if event.event_type.startswith("Done_") and not duplicate:
            self.successes_told.add(event.event_type.removeprefix("Done_"))
        if event.event_type.startswith("Undone_") and not duplicate:
            self.undos_told.add(event.event_type.removeprefix("Undone_"))
        decision = decide(self.definition, self.state, event, self.now)
        assert self.state == before, "decide mutated the state it was given"
        self.trace.append((self.now, event, duplicate))
        if not duplicate:
            self.delivered.append(event)
        if decision.duplicate:
            assert decision.state is None and not decision.commands and not decision.timers
            return
        self.notes.update(what for what, _ in decision.lifecycle)
        # every result here answers a command that was sent: none may be refused as unsent
        assert "was never" not in (decision.dead_letter or ""), decision.dead_letter
        if decision.dead_letter:
            self.dead_letters.append(decision.dead_letter)
        if decision.state is None:
            return
        old_status = before.status if before else None
        self.state = decision.state
        self.check_state(old_status)
        if old_status in TERMINAL:
            assert before is not None
            newly = {
                n
                for n, st_ in self.state.steps.items()
                if st_.status == UNDO_FAILED and before.steps[n].status != UNDO_FAILED
            }
            if newly:
                assert decision.dead_letter, "a late compensation failed after the end, unreported"
                self.late_undo_failures += 1
        elif self.state.status in TERMINAL:
            self.failed_at_end = {
                n for n, st_ in self.state.steps.items() if st_.status == UNDO_FAILED
            }
            self.end_dead_letter = decision.dead_letter
        for command in decision.commands:
            self.check_command(command)
            self.commands.append(command)
            self.handle(command)

    # -- invariants checked after every step --------------------------------------------------
    def check_state(self, old_status: str | None) -> None:
        s = self.state
        assert s is not None
        if old_status in TERMINAL:
            assert s.status == old_status, f"left terminal state {old_status} for {s.status}"
        if old_status == RUNNING and s.status not in (RUNNING, COMPLETED):
            self.order_when_compensating = list(s.order)
        steps = s.steps
        undoing = [n for n, st_ in steps.items() if st_.status == UNDOING]
        assert len(undoing) <= 1, f"undos in flight together: {undoing}"
        if s.status == RUNNING:
            # fan-out: nothing that could start is left waiting
            for name, step in self.spec.steps.items():
                if steps[name].status == PENDING:
                    assert not all(steps[d].status in (SUCCEEDED, SKIPPED) for d in step.depends_on)
        assert len(s.undone) == len(set(s.undone)), "a step was compensated twice"
        assert set(s.order) >= set(s.undone), "compensated a step that never succeeded"
        assert len(s.order) == len(set(s.order)), "a step completed twice"

    def check_command(self, command: Command) -> None:
        s = self.state
        assert s is not None
        if command.event_type in SAGA_END:
            assert SAGA_END[command.event_type] == s.status
            return
        if command.step is None:
            assert command.event_type == "Notify" and self.spec.notify is not None
            self.check_fields(command, self.spec.notify, NOTIFY_FIELDS)
            return
        assert command.step not in self.when_false, f"a step whose when is false ran: {command}"
        step = self.spec.steps[command.step]
        same = [
            c
            for c in self.commands
            if (c.event_type, c.step, c.attempt)
            == (command.event_type, command.step, command.attempt)
        ]
        assert not same, f"command sent twice: {command}"
        earlier = [c for c in self.commands if c.event_type == command.event_type]
        assert command.attempt == len(earlier) + 1, f"attempts must count up by one: {command}"
        key = command.fields["idempotency_key"]
        assert all(c.fields["idempotency_key"] == key for c in earlier), "idempotency key changed"
        if command.event_type == step.command:
            self.check_fields(command, step, ("idempotency_key",))
            assert command.attempt <= step.retry.max_attempts
            assert s.status == RUNNING, "a step started or retried after compensation began"
            for dep in step.depends_on:
                assert s.steps[dep].status in (SUCCEEDED, SKIPPED), "started before a dependency"
        else:
            assert step.compensation is not None
            assert command.event_type == step.compensation.command
            self.check_fields(command, step.compensation, UNDO_FIELDS)
            assert command.attempt <= step.compensation.retry.max_attempts
            assert command.step in self.successes_told, "undo of a step that never reported success"
            assert self.effects[command.step] == 1, "undo of a step that had no effect"
            forward_key = next(
                c.fields["idempotency_key"] for c in self.commands if c.event_type == step.command
            )
            assert key != forward_key, "the undo must not reuse the step's idempotency key"

    def check_fields(self, command: Command, fills: Fills, automatic: tuple[str, ...]) -> None:
        """Exactly the fields the inputs map, each with its source's value; a source that has not
        succeeded (skipped, failed, not yet) gives nothing."""
        assert self.state is not None
        expected: dict[str, Any] = {}
        for target, source, name in fills.bindings:
            if source == "start":
                expected[target] = self.start_fields[name]
            elif source in self.state.order:
                assert name == "ref"
                expected[target] = f"ref-{source}"
        given = {k: v for k, v in command.fields.items() if k not in automatic}
        assert given == expected, f"{command}: expected {expected}"
        assert set(automatic) <= set(command.fields), command

    # -- the handlers -------------------------------------------------------------------------
    def handle(self, command: Command) -> None:
        if command.step is None:
            return  # outcome events and notifications: nobody answers the saga
        name = command.step
        step = self.spec.steps[name]
        key = command.fields["idempotency_key"]
        undo = command.event_type != step.command
        outcome = self.draw(st.sampled_from(REPEAT if key in self.ledger else FORWARD))
        if outcome in ("ok", "lost") and key not in self.ledger:
            self.ledger.add(key)
            (self.undo_effects if undo else self.effects)[name] += 1
        if outcome in ("silent", "lost"):
            return
        if outcome == "ok":
            event_type = step.compensation.success if undo and step.compensation else step.success
            # every result has a `ref`: a command carrying the wrong step's would show
            fields: dict[str, Any] = {"ref": f"ref-{name}", "extra": name}
        elif undo:
            event_type = "CompensationFailed"
            # the step, its undo command, or (rarely) a name no step has: that one is DLQed
            named = self.draw(st.sampled_from((name, command.event_type, name, "nobody")))
            fields = {"step": named, "reason": "undo refused"}
        else:
            event_type, fields = f"Failed_{name}", {"reason": "refused"}
        self.pending.append(Event(event_type, self.new_id(), fields, attempt=command.attempt))

    # -- invariants at quiescence -------------------------------------------------------------
    def check_end(self) -> None:
        s = self.state
        assert s is not None
        status = s.status
        assert status in TERMINAL, f"quiescent but not terminal: {status}"
        assert not s.timers
        steps = s.steps
        live = {n for n, st_ in steps.items() if st_.status in (STARTED, WAITING_RETRY, UNDOING)}
        assert not live, f"steps still in flight at the end: {live}"
        ends = [c.event_type for c in self.commands if c.event_type in SAGA_END]
        assert ends == [next(k for k, v in SAGA_END.items() if v == status)], ends
        assert all(n <= 1 for n in self.effects.values()), f"a side effect twice: {self.effects}"
        assert all(n <= 1 for n in self.undo_effects.values()), f"undone twice: {self.undo_effects}"
        undo_types = {s_.compensation.command for s_ in self.spec.steps.values() if s_.compensation}
        undos = [c for c in self.commands if c.event_type in undo_types]
        for name in self.when_false:
            assert steps[name].status in (SKIPPED, CANCELLED) and steps[name].attempt == 0
        if status == COMPLETED:
            assert not undos and not s.undone and self.order_when_compensating is None
            for name, step in self.spec.steps.items():
                if name in self.when_false:
                    assert steps[name].status == SKIPPED
                    continue
                assert step.optional or steps[name].status == SUCCEEDED
                assert step.optional or self.effects[name] == 1
            assert not self.dead_letters and self.end_dead_letter is None
            return
        # FAILED exactly when a compensation had failed for good when the saga ended (a late
        # answer may still turn it into a success afterwards, but an outcome is never taken back)
        assert (status == FAILED) == bool(self.failed_at_end), self.failed_at_end
        # ...and then, and only then, the saga itself goes to the dead-letter topic
        assert (status == FAILED) == (self.end_dead_letter is not None), self.end_dead_letter
        # nothing the saga heard of is left behind: each success it was told of is undone
        for name in self.successes_told:
            spec = self.spec.steps[name]
            if spec.compensation is None:
                assert steps[name].status == UNDONE, f"{name}: {steps[name]}"
            else:
                assert steps[name].status in (UNDONE, UNDO_FAILED), f"{name}: {steps[name]}"
                assert self.undo_effects[name] == 1 or steps[name].status == UNDO_FAILED
        # an undo the saga was told had succeeded (maybe by an earlier attempt) is not a failure
        for name in self.undos_told:
            assert steps[name].status == UNDONE, f"told {name} was undone, but: {steps[name]}"
        # compensation order: reverse completion order for what succeeded before it began
        before = self.order_when_compensating or []
        first_undos = [c.step for c in undos if c.attempt == 1]
        expected = [n for n in reversed(before) if self.spec.steps[n].compensation]
        assert [n for n in first_undos if n in before] == expected


def _replay(
    spec: SagaSpec, trace: list[tuple[int, Event]], twice: bool
) -> tuple[dict[str, Any] | None, list[tuple[str, str | None, int]]]:
    state: dict[str, Any] | None = None
    sent: list[tuple[str, str | None, int]] = []
    for now, event in trace:
        decision = decide(("sim", spec), state, event, now)
        if decision.state is not None:
            state = decision.state
        sent += [(c.event_type, c.step, c.attempt) for c in decision.commands]
        if twice:
            again = decide(("sim", spec), state, event, now)
            assert again.duplicate and not again.commands and again.state is None
    return state, sent


def _outcome(state: SagaState | None) -> SagaState:
    assert state is not None
    return dataclasses.replace(state, seen=[])


@settings(max_examples=300, deadline=None)
@given(spec=saga_specs(), data=st.data(), dups=st.integers(0, 6))
def test_every_saga_ends_once_and_leaves_nothing_behind(
    spec: SagaSpec, data: st.DataObject, dups: int
) -> None:
    """Terminal exactly once, compensation sequential and in reverse order, no double effects."""
    world = World(spec, data, dups)
    world.run()
    world.check_end()
    # coverage of the interesting paths, shown by --hypothesis-show-statistics
    note_coverage(f"ended {world.state.status if world.state else None}")
    for note in sorted(INTERESTING & set(world.notes)):
        note_coverage(note)
    if world.state and world.state.reason == "saga deadline exceeded":
        note_coverage("deadline fired")
    if world.late_undo_failures:
        note_coverage("late compensation failed after the end")


@settings(max_examples=300, deadline=None)
@given(spec=saga_specs(), data=st.data(), dups=st.integers(0, 6))
def test_duplicate_delivery_changes_nothing(spec: SagaSpec, data: st.DataObject, dups: int) -> None:
    """The same schedule with each event delivered twice, or without the stray duplicates, ends
    in the same state with the same commands."""
    world = World(spec, data, dups)
    world.run()
    sent = [(c.event_type, c.step, c.attempt) for c in world.commands]
    originals = [(now, event) for now, event, dup in world.trace if not dup]
    once, once_sent = _replay(spec, originals, twice=False)
    twice, twice_sent = _replay(spec, originals, twice=True)
    assert once == twice and once_sent == twice_sent
    assert _outcome(once) == _outcome(world.state)
    assert once_sent == sent


@settings(max_examples=300, deadline=None)
@given(
    initial=st.integers(0, 10_000),
    multiplier=st.floats(1.0, 10.0),
    cap=st.integers(0, 100_000),
    attempt=st.integers(1, 40),
    seed=st.integers(0, 2**32),
    jitter=st.sampled_from(("full", "none")),
)
def test_backoff_is_exponential_under_the_cap(
    initial: int, multiplier: float, cap: int, attempt: int, seed: int, jitter: str
) -> None:
    policy = RetryPolicy(
        initial_backoff_ms=initial, multiplier=multiplier, max_backoff_ms=cap, jitter=jitter
    )
    delay = backoff_ms(policy, attempt, random.Random(seed))
    ceiling = min(cap, initial * multiplier ** (attempt - 1))
    assert isinstance(delay, int)
    if jitter == "full":
        assert 0 <= delay <= ceiling
    else:
        assert delay == int(ceiling)


@settings(max_examples=200, deadline=None)
@given(spec=saga_specs(), data=st.data())
def test_decide_is_deterministic(spec: SagaSpec, data: st.DataObject) -> None:
    """Replaying a recorded schedule gives the same states and commands (timers included)."""
    world = World(spec, data, dup_budget=0)
    world.run()
    trace = [(now, event) for now, event, _ in world.trace]
    first = _replay(spec, trace, twice=False)
    assert first == _replay(spec, trace, twice=False)
    assert _outcome(first[0]) == _outcome(world.state)


def _with_whens(spec: SagaSpec, whens: dict[str, str | None]) -> SagaSpec:
    data = spec.model_dump()
    for name, when in whens.items():
        data["steps"][name]["when"] = when
    return SagaSpec.model_validate(data)


@settings(max_examples=200, deadline=None)
@given(spec=saga_specs(), data=st.data())
def test_results_for_attempts_never_sent_change_nothing(
    spec: SagaSpec, data: st.DataObject
) -> None:
    """In every state a saga passes through, a result for a step or compensation that never
    started, or for an attempt not sent (not yet, or never: zero, negative), changes nothing:
    no state, command, timer or note, and a dead letter that says which attempt was not sent."""
    world = World(spec, data, 0)
    world.run()
    state: dict[str, Any] | None = None
    for now, event, _ in world.trace:
        state = decide(world.definition, state, event, now).state or state
        assert state is not None
        name = data.draw(st.sampled_from(sorted(spec.steps)))
        step = spec.steps[name]
        undo = step.compensation is not None and data.draw(st.booleans())
        sent = state.steps[name].undo_attempt if undo else state.steps[name].attempt
        unsent = st.one_of(st.integers(max_value=0), st.integers(sent + 1, sent + 9))
        attempt = data.draw(unsent if sent else st.integers(-2, 3))
        if undo:
            assert step.compensation is not None
            results = [(step.compensation.success, {}), ("CompensationFailed", {"step": name})]
        else:
            assert step.success is not None
            results = [(step.success, {"ref": "r"}), (step.failure[0], {"reason": "no"})]
        event_type, fields = data.draw(st.sampled_from(results))
        before = copy.deepcopy(state)
        stray = Event(event_type, world.new_id(), fields, attempt=attempt)
        decision = decide(world.definition, state, stray, now)
        note_coverage(f"{'undo' if undo else 'step'} {'never started' if not sent else 'unsent'}")
        assert decision.state is None and not decision.commands and not decision.timers
        assert not decision.lifecycle and state == before
        what = f"the compensation of step {name}" if undo else f"step {name}"
        why = f"{what} was never started" if not sent else f"attempt {attempt} of {what} was never"
        assert decision.dead_letter is not None and why in decision.dead_letter


@settings(max_examples=200, deadline=None)
@given(spec=saga_specs(steps_in_when=True), data=st.data())
def test_a_false_when_skips_its_step_and_the_saga_goes_on(
    spec: SagaSpec, data: st.DataObject
) -> None:
    """Every handler answers success, in any order: a step whose `when` is false never gets a
    command and is skipped, every other step (dependants of skipped ones too) runs once, and the
    saga completes."""
    n = data.draw(st.integers(0, 3))
    runs: set[str] = set()
    for name, step in spec.steps.items():  # declaration order is a dependency order here
        when = step.when
        if when is None:
            ok = True
        elif when.startswith("start.n >= "):
            ok = n >= int(when.split(">=")[1])
        else:  # "<dep>.ref == 'ref-<dep>'": the dependency ran
            ok = when.split(".")[0] in runs
        if ok:
            runs.add(name)
    state: dict[str, Any] | None = None
    pending = [Event("Start", "start", {"id": "k1", "amount": 5, "n": n})]
    commanded: list[str] = []
    skipped_notes: set[str | None] = set()
    while pending:
        event = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
        decision = decide(("sim", spec), state, event, 0)
        state = decision.state or state
        skipped_notes |= {step for what, step in decision.lifecycle if what == "step_skipped"}
        for command in decision.commands:
            if command.step is not None:
                commanded.append(command.step)
                done = {"ref": f"ref-{command.step}"}
                pending.append(Event(f"Done_{command.step}", f"done-{command.step}", done))
    assert state is not None and state.status == COMPLETED
    assert sorted(commanded) == sorted(runs)
    skipped = {name for name, st_ in state.steps.items() if st_.status == SKIPPED}
    assert skipped == set(spec.steps) - runs == skipped_notes


@settings(max_examples=200, deadline=None)
@given(spec=saga_specs(), data=st.data(), dups=st.integers(0, 3))
def test_a_true_when_changes_nothing(spec: SagaSpec, data: st.DataObject, dups: int) -> None:
    """Steps whose `when` holds decide exactly as without one: the same states, commands (fields
    included), timers, lifecycle notes and dead letters, event for event. Only the fields a state
    keeps differ: a `when` reads fields, so they are kept too."""
    plain = _with_whens(spec, dict.fromkeys(spec.steps))
    world = World(plain, data, dups)
    world.run()
    chosen = data.draw(st.lists(st.sampled_from(sorted(spec.steps)), unique=True, min_size=1))
    guarded = _with_whens(plain, {name: data.draw(st.sampled_from(TRUE_WHENS)) for name in chosen})
    without: SagaState | None = None
    with_when: SagaState | None = None
    for now, event, _ in world.trace:
        a = decide(("sim", plain), without, event, now)
        b = decide(("sim", guarded), with_when, event, now)
        assert _without_data(a) == _without_data(b), event
        if a.state is not None and b.state is not None:
            for source, fields in a.state.data.items():
                assert fields.items() <= b.state.data[source].items(), event
        without = a.state or without
        with_when = b.state or with_when


def _without_data(decision: Decision) -> Decision:
    """The decision with its state's kept fields and shape left out (a `when` is part of the
    shape, so the two definitions differ in it, as they should)."""
    state = decision.state
    return replace(decision, state=None if state is None else replace(state, data={}, shape=None))
