"""Every saga ends: from any state a run can reach, once time passes every timer, a saga reaches
exactly one outcome. Property-tested on the demo sagas (topology.yaml) and on random DAGs with
human steps (maximum waits, escalations), optional steps, conditions, retries and deadlines.

A run delivers, drops or never produces handler results (success, business failure, a failed
attempt of any kind), signals waiting human steps and fires timers, in an order hypothesis
chooses; then the world goes silent (no handler answers, nobody decides) and every timer fires in
due order. The only state allowed not to end then is a human step still waiting with nothing to
bound its wait (no max_wait_ms and no saga deadline): a person may yet decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sagastream.core.saga import (
    STARTED,
    TERMINAL,
    Command,
    Event,
    Timer,
    decide,
    timer_event,
)
from sagastream.core.topology import (
    CompensationSpec,
    RetryPolicy,
    SagaSpec,
    StepSpec,
    load_topology,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas
OUTCOMES = ("SagaCompleted", "SagaCompensated", "SagaFailed")
KINDS = ("exception", "timeout", "contract", "too_large")
NAMES = ("a", "b", "c", "d", "e")
MAX_STEPS = 400  # deliveries of the silent phase; a saga that needs more does not end


def _policy(draw: st.DrawFn) -> RetryPolicy:
    classes = st.sampled_from(("timeout", "error", "failure"))
    return RetryPolicy(
        max_attempts=draw(st.integers(1, 3)),
        initial_backoff_ms=draw(st.sampled_from((0, 100, 5_000))),
        on=tuple(draw(st.lists(classes, unique=True))),
    )


@st.composite
def random_sagas(draw: st.DrawFn) -> SagaSpec:
    """A random DAG: step i depends only on steps before it; some are human, optional or `when`."""
    steps: dict[str, StepSpec] = {}
    for i in range(draw(st.integers(1, 5))):
        name = NAMES[i]
        deps = tuple(draw(st.lists(st.sampled_from(NAMES[:i]), unique=True))) if i else ()
        when = draw(st.sampled_from((None, None, "start.n >= 1", "start.n >= 2")))
        if draw(st.integers(0, 3)) == 0:
            steps[name] = StepSpec(
                human=True,
                command=draw(st.sampled_from((None, f"Ask_{name}"))),
                depends_on=deps,
                when=when,
                optional=draw(st.booleans()),
                escalation=draw(st.sampled_from((None, "StepEscalated"))),
                timeout_ms=draw(st.sampled_from((1_000, 86_400_000))),
                max_wait_ms=draw(st.sampled_from((None, 5_000, 7 * 86_400_000))),
                on_expiry=draw(st.sampled_from(("rejected", "approved"))),
            )
            continue
        compensation = None
        if draw(st.booleans()):
            compensation = CompensationSpec(
                command="Undo",  # one undo command and result shared by every step
                success="Undone",
                failure=("UndoFailed",),
                timeout_ms=draw(st.sampled_from((500, 60_000))),
                retry=_policy(draw),
            )
        steps[name] = StepSpec(
            command="Do",  # one command and result type shared by every step: meta.step routes
            success="Done",
            failure=("Failed",),
            depends_on=deps,
            when=when,
            optional=draw(st.booleans()),
            timeout_ms=draw(st.sampled_from((1_000, 3_600_000))),
            retry=_policy(draw),
            compensation=compensation,
        )
    return SagaSpec(
        start_event="Start",
        key_field="id",
        deadline_ms=draw(st.sampled_from((None, None, 3_000, 14 * 86_400_000))),
        steps=steps,
    )


@dataclass
class World:
    """One saga and what surrounds it: handlers' answers in flight, people, and the clock."""

    name: str
    spec: SagaSpec
    data: st.DataObject
    now: int = 0
    state: dict[str, Any] | None = None
    in_flight: list[Event] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    ids: int = 0

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def deliver(self, event: Event) -> None:
        decision = decide((self.name, self.spec), self.state, event, self.now)
        if decision.state is not None:
            self.state = decision.state
        for command in decision.commands:
            if command.event_type in OUTCOMES:
                self.outcomes.append(command.event_type)
            else:
                self.answer(command)

    def event(self, event_type: str, fields: dict[str, Any], **meta: Any) -> Event:
        self.ids += 1
        return Event(event_type, f"ev{self.ids}", fields, **meta)

    def answer(self, command: Command) -> None:
        """What a handler will say to a command, if anything: drawn now, delivered later."""
        step = self.spec.steps.get(command.step or "")
        if step is None:
            return  # a notification or an escalation: answers no step
        undo = step.compensation is not None and command.event_type == step.compensation.command
        ends = step.compensation if undo and step.compensation else step
        results = [ends.success, *ends.failure[:1]] if ends.success else []
        choice = self.draw(st.sampled_from([*results, "StepAttemptFailed", None]))
        if choice is None:
            return
        fields: dict[str, Any] = {}
        if choice == "StepAttemptFailed":
            fields = {
                "saga_type": self.name,
                "step": command.step,
                "kind": self.draw(st.sampled_from(KINDS)),
                "error_type": "E",
                "message": "m",
                "compensation": undo,
            }
        self.in_flight.append(
            self.event(choice, fields, attempt=command.attempt, step=command.step)
        )

    def fire_next_timer(self) -> bool:
        timers = self.state.timers if self.state else {}
        if not timers:
            return False
        key, due = min(timers.items(), key=lambda kv: (kv[1], kv[0]))
        kind, step, attempt = key.split("|")
        self.now = max(self.now, due)
        self.deliver(timer_event(Timer(due, kind, step, int(attempt)), f"t:{key}:{due}"))
        return True

    def signal_a_waiting_person(self) -> None:
        assert self.state is not None
        waiting = [n for n, s in self.state.steps.items() if s.status == STARTED]
        waiting = [n for n in waiting if self.spec.steps[n].human]
        if waiting:
            fields = {
                "saga_type": self.name,
                "step": self.draw(st.sampled_from(waiting)),
                "outcome": self.draw(st.sampled_from(("approved", "rejected"))),
                "decided_by": "ann",
            }
            self.deliver(self.event("StepSignal", fields))

    def run(self, start: dict[str, Any]) -> None:
        self.deliver(self.event(self.spec.start_event, start))
        # any reachable state: answers in any order or never, people, timers
        for _ in range(self.draw(st.integers(0, 30))):
            move = self.draw(st.sampled_from(("answer", "drop", "timer", "signal")))
            if move in ("answer", "drop") and self.in_flight:
                event = self.in_flight.pop(self.draw(st.integers(0, len(self.in_flight) - 1)))
                if move == "answer":
                    self.now += self.draw(st.sampled_from((0, 10, 2_000)))
                    self.deliver(event)
            elif move == "timer":
                self.fire_next_timer()
            elif move == "signal":
                self.signal_a_waiting_person()
        # then silence: nobody answers or decides, and time passes every timer
        self.in_flight.clear()
        for _ in range(MAX_STEPS):
            if not self.fire_next_timer():
                break
        self.check_ended()

    def check_ended(self) -> None:
        state = self.state
        assert state is not None
        assert not state.timers, f"timers left after time passed them all: {state.timers}"
        if state.status in TERMINAL:
            assert len(self.outcomes) == 1, self.outcomes
            assert (
                self.outcomes[0]
                == {
                    "completed": "SagaCompleted",
                    "compensated": "SagaCompensated",
                    "failed": "SagaFailed",
                }[state.status]
            )
            return
        # a person may still decide: a human step waits, and nothing bounds its wait
        assert self.outcomes == [], self.outcomes
        assert self.spec.deadline_ms is None, state
        waiting = [n for n, s in state.steps.items() if s.status == STARTED]
        assert waiting and all(
            self.spec.steps[n].human and self.spec.steps[n].max_wait_ms is None for n in waiting
        ), state


@settings(max_examples=300, deadline=None)
@given(spec=random_sagas(), n=st.integers(0, 3), data=st.data())
def test_every_random_saga_reaches_one_outcome_once_time_passes(
    spec: SagaSpec, n: int, data: st.DataObject
) -> None:
    World("sim", spec, data).run({"id": "k1", "n": n})


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(DEMO)), data=st.data())
def test_every_demo_saga_reaches_one_outcome_once_time_passes(
    name: str, data: st.DataObject
) -> None:
    spec = DEMO[name]
    World(name, spec, data).run({spec.key_field: "k1", "priority": "high", "has_app": True})
