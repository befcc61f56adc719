"""Example-based tests of the pure saga core: one scenario per rule of DESIGN.md "The saga core"."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.saga import (
    CANCELLED,
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    STARTED,
    STEP_FAILED,
    SUCCEEDED,
    UNDO_FAILED,
    UNDOING,
    UNDONE,
    WAITING_RETRY,
    Decision,
    Event,
    Timer,
    backoff_ms,
    caused_by,
    decide,
    idempotency_key,
    saga_for,
    timer_event,
)
from sagastream.core.state import SagaState, decode_state, seen_digest
from sagastream.core.topology import (
    QUEUE_ALLOWANCE_MS,
    CompensationSpec,
    RetryPolicy,
    SagaSpec,
    StepSpec,
    load_topology,
)
from sagastream.wire.codec import derive_meta, new_meta

ROOT = Path(__file__).resolve().parents[2]
UNDO_RETRY = RetryPolicy(max_attempts=2, initial_backoff_ms=100, on=("timeout", "failure"))


def step(
    name: str,
    *deps: str,
    optional: bool = False,
    retry: RetryPolicy | None = None,
    undo: bool = True,
    timeout_ms: int = 1_000,
    inputs: dict[str, Any] | None = None,
    undo_inputs: dict[str, Any] | None = None,
    when: str | None = None,
) -> StepSpec:
    """A step X: DoX answered by XDone or XFailed, undone by UndoX (XUndone / CompensationFailed)."""
    compensation = None
    if undo:
        compensation = CompensationSpec(
            command=f"Undo{name}",
            success=f"{name}Undone",
            failure=("CompensationFailed",),
            timeout_ms=500,
            retry=UNDO_RETRY,
            inputs=undo_inputs or {},
        )
    return StepSpec(
        command=f"Do{name}",
        success=f"{name}Done",
        failure=(f"{name}Failed",),
        depends_on=deps,
        optional=optional,
        timeout_ms=timeout_ms,
        retry=retry or RetryPolicy(),
        compensation=compensation,
        inputs=inputs or {},
        when=when,
    )


def saga(*steps: tuple[str, StepSpec], deadline_ms: int = 600_000) -> SagaSpec:
    return SagaSpec(
        start_event="Begin",
        key_field="id",
        outcome_topic="outcomes",
        deadline_ms=deadline_ms,
        max_hops=8,
        steps=dict(steps),
    )


class Saga:
    """Drives decide like the orchestrator does: keeps the state, advances time, fires timers."""

    def __init__(self, spec: SagaSpec, name: str = "demo") -> None:
        self.definition = (name, spec)
        self.state: SagaState | None = None
        self.now = 0
        self.ids = 0
        self.decisions: list[Decision] = []

    def send(
        self,
        event_type: str,
        fields: dict[str, Any] | None = None,
        *,
        attempt: int = 1,
        at: int | None = None,
        event_id: str | None = None,
        hop: int = 0,
    ) -> Decision:
        self.ids += 1
        event = Event(event_type, event_id or f"ev-{self.ids}", fields or {}, attempt, hop)
        return self.deliver(event, at)

    def start(self, **fields: Any) -> Decision:
        return self.send("Begin", {"id": "k-1", **fields}, event_id="begin")

    def deliver(self, event: Event, at: int | None = None) -> Decision:
        if at is not None:
            self.now = at
        decision = decide(self.definition, self.state, event, self.now)
        if decision.state is not None:
            self.state = decision.state
        self.decisions.append(decision)
        return decision

    def due(self, kind: str, step_name: str, attempt: int) -> int:
        assert self.state is not None
        return self.state.timers[f"{kind}|{step_name}|{attempt}"]

    def fire(self, kind: str, step_name: str, attempt: int) -> Decision:
        due = self.due(kind, step_name, attempt)
        timer = Timer(due, kind, step_name, attempt)
        return self.deliver(timer_event(timer, f"timer-{kind}-{step_name}-{attempt}-{due}"), due)

    @property
    def status(self) -> str:
        assert self.state is not None
        return self.state.status

    def st(self, step_name: str) -> str:
        assert self.state is not None
        return self.state.steps[step_name].status

    def notes(self) -> list[tuple[str, str | None]]:
        return [note for d in self.decisions for note in d.lifecycle]


def sent(decision: Decision) -> list[tuple[str, str | None, int]]:
    return [(c.event_type, c.step, c.attempt) for c in decision.commands]


def diamond() -> SagaSpec:
    """a and b run in parallel; c needs both, and what each returned."""
    c = step("c", "a", "b", inputs={"start": ["id"], "a": ["a_ref"], "b": ["b_ref"]})
    return saga(("a", step("a", inputs={"start": ["id"]})), ("b", step("b")), ("c", c))


# -- fan-out and fan-in ---------------------------------------------------------------------------


def test_fan_out_starts_every_ready_step_together() -> None:
    s = Saga(diamond())
    d = s.start()
    assert sent(d) == [("Doa", "a", 1), ("Dob", "b", 1)]
    assert s.status == RUNNING and s.st("c") == PENDING
    assert {t.key for t in d.timers} == {"deadline||0", "step_timeout|a|1", "step_timeout|b|1"}
    assert d.commands[0].fields == {"id": "k-1", "idempotency_key": "demo:k-1:a"}
    assert d.commands[1].fields == {"idempotency_key": "demo:k-1:b"}  # b's inputs are none


def test_fan_in_waits_for_every_dependency() -> None:
    s = Saga(diamond())
    s.start()
    assert sent(s.send("bDone", {"b_ref": "B1"})) == []
    assert s.st("c") == PENDING
    d = s.send("aDone", {"a_ref": "A1"})
    assert sent(d) == [("Doc", "c", 1)]
    assert d.commands[0].fields == {
        "id": "k-1",
        "a_ref": "A1",
        "b_ref": "B1",
        "idempotency_key": "demo:k-1:c",
    }
    d = s.send("cDone")
    assert s.status == COMPLETED
    assert sent(d) == [("SagaCompleted", None, 1)]
    assert d.commands[0].fields["completed_steps"] == ["b", "a", "c"]
    assert s.state is not None and s.state.timers == {}


def test_optional_step_failure_does_not_fail_the_saga() -> None:
    spec = saga(("a", step("a")), ("b", step("b", optional=True)), ("c", step("c", "a", "b")))
    s = Saga(spec)
    s.start()
    s.send("aDone")
    d = s.send("bFailed", {"reason": "no loyalty account"})
    assert s.st("b") == SKIPPED and s.status == RUNNING
    assert sent(d) == [("Doc", "c", 1)]  # a skipped dependency counts as done
    s.send("cDone")
    assert s.status == COMPLETED


def test_optional_step_timing_out_for_good_is_skipped() -> None:
    s = Saga(saga(("a", step("a", optional=True))))
    s.start()
    d = s.fire("step_timeout", "a", 1)
    assert s.st("a") == SKIPPED and s.status == COMPLETED
    assert sent(d) == [("SagaCompleted", None, 1)]


# -- retries --------------------------------------------------------------------------------------


def test_retry_on_timeout_with_full_jitter_backoff() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_ms=100, multiplier=2.0, max_backoff_ms=150)
    s = Saga(saga(("a", step("a", retry=policy))))
    first = s.start().commands[0]
    waited = 1_000 + QUEUE_ALLOWANCE_MS  # its timeout_ms, and time to queue
    assert s.due("step_timeout", "a", 1) == waited

    d = s.fire("step_timeout", "a", 1)
    assert sent(d) == [] and s.st("a") == WAITING_RETRY
    assert waited <= s.due("retry", "a", 1) <= waited + 100  # min(150, 100 * 2^0)
    d = s.fire("retry", "a", 1)
    assert sent(d) == [("Doa", "a", 2)]
    second = d.commands[0]

    timed_out_at = s.due("step_timeout", "a", 2)
    s.fire("step_timeout", "a", 2)
    assert timed_out_at <= s.due("retry", "a", 2) <= timed_out_at + 150  # min(150, 100 * 2^1)
    d = s.fire("retry", "a", 2)
    assert sent(d) == [("Doa", "a", 3)]
    third = d.commands[0]

    key = first.fields["idempotency_key"]
    assert key == second.fields["idempotency_key"] == third.fields["idempotency_key"]
    assert key == idempotency_key("demo", "k-1", "a")
    assert [first.attempt, second.attempt, third.attempt] == [1, 2, 3]


def test_the_orchestrator_waits_for_an_answer_past_the_run_bound_to_allow_for_queueing() -> None:
    """timeout_ms bounds the run (the handler loop reports a run past it at once); the
    orchestrator's own timer, for an answer that never comes, allows for queueing too."""
    s = Saga(saga(("a", step("a"))))
    s.start()
    assert s.due("step_timeout", "a", 1) == 1_000 + QUEUE_ALLOWANCE_MS
    closing = saga(("a", step("a").model_copy(update={"schedule_to_close_ms": 5_000})))
    t = Saga(closing)
    t.start()
    assert t.due("step_timeout", "a", 1) == 5_000
    with pytest.raises(ValueError, match="schedule_to_close_ms .* is shorter than timeout_ms"):
        StepSpec(command="Doa", success="aDone", timeout_ms=2_000, schedule_to_close_ms=1_000)


def test_failure_is_retried_only_when_the_policy_says_so() -> None:
    on_failure = RetryPolicy(max_attempts=2, initial_backoff_ms=0, on=("failure",))
    s = Saga(saga(("a", step("a", retry=on_failure)), ("b", step("b"))))
    s.start()
    s.send("aFailed", {"reason": "busy"})
    assert s.st("a") == WAITING_RETRY
    assert sent(s.fire("retry", "a", 1)) == [("Doa", "a", 2)]
    # the default policy retries timeouts only: b's failure ends the forward path at once
    d = s.send("bFailed", {"reason": "declined"})
    assert s.status == COMPENSATING and s.st("b") == STEP_FAILED
    assert sent(d) == []  # nothing succeeded yet; a is still in flight


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8])
def test_backoff_bounds(attempt: int) -> None:
    policy = RetryPolicy(initial_backoff_ms=200, multiplier=2.0, max_backoff_ms=1_000)
    ceiling = min(1_000, 200 * 2 ** (attempt - 1))
    delays = [backoff_ms(policy, attempt, random.Random(seed)) for seed in range(200)]
    assert all(0 <= delay <= ceiling for delay in delays)
    assert max(delays) > ceiling * 0.9 and min(delays) < ceiling * 0.1  # the whole range is used


def test_backoff_spreads_retries() -> None:
    policy = RetryPolicy(initial_backoff_ms=1_000, multiplier=2.0, max_backoff_ms=10_000)
    delays = {backoff_ms(policy, 3, random.Random(seed)) for seed in range(100)}
    assert len(delays) > 50  # full jitter, not a fixed delay


def test_retry_exhaustion_compensates() -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff_ms=10)
    s = Saga(saga(("a", step("a")), ("b", step("b", retry=policy))))
    s.start()
    s.send("aDone")
    s.fire("step_timeout", "b", 1)
    s.fire("retry", "b", 1)
    d = s.fire("step_timeout", "b", 2)
    assert s.status == COMPENSATING
    assert s.state is not None and s.state.failed_step == "b"
    assert "timed out" in s.state.reason
    assert sent(d) == [("Undoa", "a", 1)]
    d = s.send("aUndone")
    assert s.status == COMPENSATED
    assert sent(d) == [("SagaCompensated", None, 1)]
    assert d.commands[0].fields["compensated_steps"] == ["a"]
    assert d.dead_letter is None


# -- stale and late results -----------------------------------------------------------------------


def test_stale_failure_is_ignored() -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=3)))))
    s.start()
    s.fire("step_timeout", "a", 1)
    s.fire("retry", "a", 1)
    d = s.send("aFailed", {"reason": "late answer to attempt 1"}, attempt=1)
    assert sent(d) == [] and s.st("a") == STARTED and s.status == RUNNING
    assert ("stale_result_ignored", "a") in d.lifecycle
    s.send("aDone", attempt=2)
    assert s.status == COMPLETED


def test_success_of_an_earlier_attempt_is_accepted() -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=3)))))
    s.start()
    s.fire("step_timeout", "a", 1)
    s.fire("retry", "a", 1)
    d = s.send("aDone", attempt=1)
    assert s.status == COMPLETED
    assert ("stale_success_accepted", "a") in d.lifecycle
    assert s.state is not None and s.state.timers == {}


def test_success_while_waiting_for_a_retry_cancels_the_retry() -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=3))), ("b", step("b"))))
    s.start()
    s.fire("step_timeout", "a", 1)
    s.send("aDone", attempt=1)
    assert s.st("a") == SUCCEEDED
    assert s.state is not None and "retry|a|1" not in s.state.timers


# -- results for attempts never sent ------------------------------------------------------------


def _refused(s: Saga, d: Decision, before: dict[str, Any] | None, why: str) -> None:
    """The result changed nothing (not even the events seen) and went to the DLQ saying why."""
    assert d.state is None and d.commands == [] and d.timers == [] and d.lifecycle == []
    assert s.state == before
    assert d.dead_letter is not None and why in d.dead_letter, d.dead_letter


def test_a_success_for_an_attempt_never_sent_does_not_complete_a_declined_saga() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    s.send("aFailed", {"reason": "declined"})
    before = s.state
    d = s.send("aDone", attempt=9)
    _refused(s, d, before, "attempt 9 of step a was never sent (sent: 1 to 1)")
    s.send("bDone")
    s.send("bUndone")
    assert s.status == COMPENSATED and s.st("a") == STEP_FAILED
    assert ("Undoa", "a", 1) not in [c for d in s.decisions for c in sent(d)]


@pytest.mark.parametrize("attempt", [0, -1, 2])
def test_results_for_attempts_not_sent_are_refused(attempt: int) -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=3)))))
    s.start()
    for result in ("aDone", "aFailed"):
        before = s.state
        d = s.send(result, {"reason": "?"}, attempt=attempt)
        _refused(s, d, before, f"attempt {attempt} of step a was never sent")
    assert s.st("a") == STARTED
    assert s.send("aDone", attempt=1) and s.status == COMPLETED  # the attempt sent still counts


def test_a_result_of_a_step_that_never_started_is_refused() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b", "a")), ("c", step("c", when="start.go"))))
    s.start(go=False)
    for result in ("bDone", "bFailed", "cDone"):  # b waits for a; c was skipped by its when
        before = s.state
        d = s.send(result, {"reason": "?"})
        _refused(s, d, before, f"step {result[0]} was never started")
    assert s.st("b") == PENDING and s.st("c") == SKIPPED


def test_an_undo_result_of_a_compensation_never_started_or_sent_is_refused() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    s.send("aDone")
    before = s.state
    d = s.send("aUndone")  # a succeeded, nothing is being compensated
    _refused(s, d, before, "the compensation of step a was never started")
    s.send("bFailed", {"reason": "no"})
    assert s.st("a") == UNDOING
    for result, fields in (("aUndone", {}), ("CompensationFailed", {"step": "a"})):
        before = s.state
        d = s.send(result, fields, attempt=2)
        _refused(s, d, before, "attempt 2 of the compensation of step a was never sent")
    s.send("aUndone", attempt=1)
    assert s.status == COMPENSATED


def test_late_success_during_compensation_is_compensated() -> None:
    b = step("b", undo_inputs={"b": ["b_ref"]})
    s = Saga(saga(("a", step("a")), ("b", b), ("c", step("c"))))
    s.start()
    s.send("aDone")
    d = s.send("cFailed", {"reason": "out of stock"})
    assert sent(d) == [("Undoa", "a", 1)]  # b is still in flight: wait for it
    d = s.send("bDone", {"b_ref": "B7"})
    assert sent(d) == []  # one undo at a time: a's undo is in flight
    d = s.send("aUndone")
    assert sent(d) == [("Undob", "b", 1)]
    # the undo gets what the step returned, and which step it undoes
    assert d.commands[0].fields == {
        "b_ref": "B7",
        "step": "b",
        "idempotency_key": "demo:k-1:b:undo",
    }
    d = s.send("bUndone")
    assert s.status == COMPENSATED
    assert d.commands[0].fields["compensated_steps"] == ["a", "b"]


def test_saga_waits_for_in_flight_steps_before_ending() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    s.send("aFailed")
    assert s.status == COMPENSATING  # b may still succeed and then need undoing
    d = s.fire("step_timeout", "b", 1)
    assert s.status == COMPENSATED
    assert sent(d) == [("SagaCompensated", None, 1)]


def test_steps_waiting_for_a_retry_are_cancelled_by_compensation() -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=3))), ("b", step("b"))))
    s.start()
    s.fire("step_timeout", "a", 1)
    s.send("bFailed")
    assert s.st("a") == CANCELLED and s.status == COMPENSATED
    assert s.state is not None and s.state.timers == {}
    # the timed-out attempt did its work after all: undone, though the saga has ended
    d = s.send("aDone", attempt=1)
    assert sent(d) == [("Undoa", "a", 1)] and s.status == COMPENSATED
    d = s.send("aUndone")
    assert s.st("a") == UNDONE and s.status == COMPENSATED and sent(d) == []


def test_late_undo_failing_after_the_end_goes_to_the_dead_letter_topic() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    s.fire("step_timeout", "a", 1)
    s.send("bFailed")
    assert s.status == COMPENSATED
    s.send("aDone")
    s.send("CompensationFailed", {"step": "a", "reason": "refund rejected"})
    s.fire("undo_retry", "a", 1)
    d = s.send("CompensationFailed", {"step": "a", "reason": "refund rejected"}, attempt=2)
    assert s.st("a") == UNDO_FAILED
    assert s.status == COMPENSATED  # an outcome once published is never taken back
    assert d.dead_letter is not None and "a" in d.dead_letter and "refund rejected" in d.dead_letter


def test_skipped_optional_step_that_succeeds_late_is_compensated() -> None:
    s = Saga(saga(("a", step("a", optional=True)), ("b", step("b"))))
    s.start()
    s.fire("step_timeout", "a", 1)
    assert s.st("a") == SKIPPED
    s.send("aDone")  # it did happen: from now on it is a completed step like any other
    assert s.st("a") == SUCCEEDED and s.status == RUNNING
    d = s.send("bFailed")
    assert sent(d) == [("Undoa", "a", 1)]
    s.send("aUndone")
    assert s.status == COMPENSATED


def test_skipped_optional_step_that_succeeds_after_completion_changes_nothing() -> None:
    s = Saga(saga(("a", step("a", optional=True)), ("b", step("b"))))
    s.start()
    s.fire("step_timeout", "a", 1)
    s.send("bDone")
    assert s.status == COMPLETED
    d = s.send("aDone")
    assert sent(d) == [] and s.status == COMPLETED and s.st("a") == SKIPPED


# -- compensation ---------------------------------------------------------------------------------


def test_compensation_is_sequential_in_reverse_completion_order() -> None:
    spec = saga(
        ("a", step("a")),
        ("b", step("b")),
        ("c", step("c", undo=False)),
        ("d", step("d")),
        ("e", step("e", "a", "b", "c", "d")),
    )
    s = Saga(spec)
    s.start()
    for name in ("b", "d", "c", "a"):  # completion order differs from declaration order
        s.send(f"{name}Done")
    d = s.send("eFailed", {"reason": "rejected"})
    assert sent(d) == [("Undoa", "a", 1)]  # one undo in flight at a time
    d = s.send("aUndone")
    # c has nothing to undo, so it is passed over in order and d's undo goes out
    assert sent(d) == [("Undod", "d", 1)]
    d = s.send("dUndone")
    assert sent(d) == [("Undob", "b", 1)]
    d = s.send("bUndone")
    assert s.status == COMPENSATED
    # only steps actually undone: c had nothing to undo (finding 6 of issue 15)
    assert d.commands[0].fields["compensated_steps"] == ["a", "d", "b"]
    assert s.state is not None and s.state.undone == ["a", "d", "b"]


def test_compensation_failure_is_retried_then_the_saga_fails() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b")), ("c", step("c"))))
    s.start()
    s.send("aDone")
    s.send("bDone")
    assert sent(s.send("cFailed", {"reason": "no stock"})) == [("Undob", "b", 1)]
    d = s.send("CompensationFailed", {"step": "b", "reason": "gateway down"})
    assert sent(d) == [] and s.st("b") == UNDOING
    assert 0 <= s.due("undo_retry", "b", 1) - s.now <= 100
    d = s.fire("undo_retry", "b", 1)
    assert sent(d) == [("Undob", "b", 2)]
    key = d.commands[0].fields["idempotency_key"]
    assert (
        key == idempotency_key("demo", "k-1", "b", undo=True) != idempotency_key("demo", "k-1", "b")
    )
    # the generic failure event may name the undo command instead of the step
    d = s.send("CompensationFailed", {"step": "Undob", "reason": "gateway down"}, attempt=2)
    assert s.st("b") == UNDO_FAILED
    assert sent(d) == [("Undoa", "a", 1)]  # a failed undo does not stop the others
    assert s.status == COMPENSATING and d.dead_letter is None
    d = s.send("aUndone")
    assert s.status == FAILED
    assert sent(d) == [("SagaFailed", None, 1)]
    assert "no stock" in d.commands[0].fields["reason"]
    assert "b: gateway down" in d.commands[0].fields["reason"]
    assert d.dead_letter is not None and "gateway down" in d.dead_letter


def test_undo_timeouts_are_retried_like_failures() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    s.send("aDone")
    s.send("bFailed")
    s.fire("undo_timeout", "a", 1)
    assert sent(s.fire("undo_retry", "a", 1)) == [("Undoa", "a", 2)]
    d = s.fire("undo_timeout", "a", 2)
    assert s.status == FAILED and d.dead_letter is not None


def test_undo_success_of_an_earlier_attempt_is_accepted() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    s.send("aDone")
    s.send("bFailed")
    s.fire("undo_timeout", "a", 1)
    s.fire("undo_retry", "a", 1)
    d = s.send("aUndone", attempt=1)  # same idempotency key: the refund happened once
    assert s.status == COMPENSATED and ("stale_success_accepted", "a") in d.lifecycle


def test_undo_success_after_the_last_attempt_timed_out_is_accepted() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b")), ("c", step("c"))))
    s.start()
    s.send("aDone")
    s.send("bDone")
    s.send("cFailed")
    s.fire("undo_timeout", "b", 1)
    s.fire("undo_retry", "b", 1)
    s.fire("undo_timeout", "b", 2)
    assert s.st("b") == UNDO_FAILED and s.status == COMPENSATING
    s.send("bUndone", attempt=2)  # slow, not failed: the saga has not ended yet
    assert s.st("b") == UNDONE
    s.send("aUndone")
    assert s.status == COMPENSATED
    assert s.state is not None and s.state.undo_errors == []


def test_stale_undo_failure_is_ignored() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    s.send("aDone")
    s.send("bFailed")
    s.fire("undo_timeout", "a", 1)
    s.fire("undo_retry", "a", 1)
    d = s.send("CompensationFailed", {"step": "a", "reason": "late"}, attempt=1)
    assert sent(d) == [] and s.st("a") == UNDOING


def test_generic_undo_failure_naming_no_step_is_dead_lettered() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b")), ("c", step("c"))))
    s.start()
    s.send("aDone")
    s.send("bDone")
    s.send("cFailed")
    d = s.send("CompensationFailed", {"step": "warehouse", "reason": "?"})
    assert d.dead_letter is not None and "warehouse" in d.dead_letter
    assert s.st("b") == UNDOING and s.st("a") == SUCCEEDED  # nobody's undo was failed


def test_deadline_compensates() -> None:
    spec = saga(("a", step("a")), ("b", step("b", timeout_ms=60_000)), deadline_ms=5_000)
    s = Saga(spec)
    s.start()
    s.send("aDone", at=100)
    d = s.fire("deadline", "", 0)
    assert s.now == 5_000
    assert s.status == COMPENSATING
    assert s.state is not None and s.state.reason == "saga deadline exceeded"
    assert sent(d) == [("Undoa", "a", 1)]
    s.send("aUndone")
    assert s.status == COMPENSATING  # b is still in flight
    d = s.fire("step_timeout", "b", 1)
    assert s.status == COMPENSATED


def test_deadline_is_disarmed_when_the_saga_ends() -> None:
    s = Saga(saga(("a", step("a")), deadline_ms=5_000))
    s.start()
    s.send("aDone")
    assert s.state is not None and s.state.timers == {}
    d = s.deliver(timer_event(Timer(5_000, "deadline", "", 0), "late-deadline"), 5_000)
    assert sent(d) == [] and s.status == COMPLETED


def test_an_ended_saga_expires_its_retention_after_the_end() -> None:
    s = Saga(saga(("a", step("a"))))
    s.start()
    assert s.state is not None and s.state.expires is None  # running: never removed
    s.send("aDone", at=1_000)
    assert s.state.ended == 1_000
    assert s.state.expires == 1_000 + SagaSpec.model_fields["retention_ms"].default
    # a late event changes the state, not when it goes
    s.send("aDone", at=9_000)
    assert s.state.expires == 1_000 + SagaSpec.model_fields["retention_ms"].default


def test_retention_minus_one_keeps_an_ended_saga() -> None:
    spec = saga(("a", step("a"))).model_copy(update={"retention_ms": -1})
    s = Saga(spec)
    s.start()
    s.send("aFailed")
    assert s.status == COMPENSATED and s.state is not None and s.state.expires is None


def test_timer_that_was_disarmed_does_nothing() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    due = s.due("step_timeout", "a", 1)
    s.send("aDone")
    d = s.deliver(timer_event(Timer(due, "step_timeout", "a", 1), "stale-timer"), due)
    assert sent(d) == [] and s.st("a") == SUCCEEDED and s.status == RUNNING


# -- what must not be processed -------------------------------------------------------------------


def test_duplicate_event_is_ignored() -> None:
    s = Saga(diamond())
    s.start()
    s.send("aDone", event_id="x-1")
    before = s.state
    d = s.send("aDone", event_id="x-1")
    assert d.duplicate and d.state is None and d.commands == [] and d.timers == []
    assert s.state == before


def test_duplicate_timer_is_ignored() -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=3)))))
    s.start()
    timer = Timer(s.due("step_timeout", "a", 1), "step_timeout", "a", 1)
    s.deliver(timer_event(timer, "t-1"), timer.due_ms)
    assert s.deliver(timer_event(timer, "t-1"), timer.due_ms).duplicate


def test_start_event_twice_goes_to_the_dead_letter_topic() -> None:
    s = Saga(diamond())
    s.start()
    d = s.send("Begin", {"id": "k-1"}, event_id="begin-again")
    assert d.dead_letter is not None and "already started" in d.dead_letter
    assert d.commands == [] and s.status == RUNNING
    assert s.send("Begin", {"id": "k-1"}, event_id="begin-again").duplicate


def test_result_without_a_saga_goes_to_the_dead_letter_topic() -> None:
    s = Saga(diamond())
    d = s.send("aDone")
    assert d.state is None and d.commands == [] and d.dead_letter is not None


def test_foreign_event_goes_to_the_dead_letter_topic() -> None:
    s = Saga(diamond())
    s.start()
    d = s.send("SomethingElse")
    assert d.dead_letter is not None and "not part of saga demo" in d.dead_letter
    assert d.commands == [] and s.status == RUNNING


def test_hop_limit_goes_to_the_dead_letter_topic() -> None:
    s = Saga(diamond())  # max_hops=8
    d = s.send("Begin", {"id": "k-1"}, hop=9)
    assert d.state is None and d.commands == []
    assert d.dead_letter == "hop limit exceeded (9 > 8)"
    assert s.state is None


def test_the_hop_limit_counts_sagas_started_one_from_another_not_steps() -> None:
    """Finding 6 of issue 15: hop counted depth, so a linear saga of more than 16 steps hit the
    limit of 32. Meta derived as the runtime does (caused_by, then derive_meta for the command
    and again for the handler's result): every result of a 40-step saga is one hop past its
    command, and the next saga its outcome starts is two past this one's start."""
    s = Saga(saga(*((n, step(n, *prev)) for n, prev in _chain(40))))
    meta = new_meta("Begin", "k-1", "shop", hop=3)
    d = s.send("Begin", {"id": "k-1"}, hop=3, event_id="begin")
    for name, _ in _chain(40):
        assert s.state is not None
        (command,) = [c for c in d.commands if c.step == name]
        sent_meta = derive_meta(caused_by(s.state, meta), command.event_type, "orchestrator")
        meta = derive_meta(sent_meta, f"{name}Done", "handler")
        d = s.send(f"{name}Done", hop=meta["hop"])
        assert d.dead_letter is None and meta["hop"] == 5
    assert s.status == COMPLETED and s.state is not None
    outcome = derive_meta(caused_by(s.state, meta), "SagaCompleted", "orchestrator")
    assert outcome["hop"] == 4


def _chain(n: int) -> list[tuple[str, tuple[str, ...]]]:
    """Steps s0..s{n-1}, each depending on the one before."""
    return [(f"s{i}", (f"s{i - 1}",) if i else ()) for i in range(n)]


def test_hop_count_at_the_limit_is_processed() -> None:
    s = Saga(diamond())
    s.start()
    d = s.send("aDone", hop=8)
    assert d.dead_letter is None and s.st("a") == SUCCEEDED


def test_decide_does_not_mutate_its_input() -> None:
    s = Saga(diamond())
    s.start()
    assert s.state is not None
    frozen = repr(s.state)
    decide(s.definition, s.state, Event("aDone", "z", {"a_ref": 1}), 10)
    assert repr(s.state) == frozen


def test_a_fired_timer_is_no_seen_event_and_firing_it_again_stores_nothing() -> None:
    s = Saga(diamond())
    s.start()
    assert s.state is not None
    seen = list(s.state.seen)
    assert seen == [seen_digest("begin")]  # digests of input event ids, not the ids
    fired = s.fire("step_timeout", "a", 1)
    assert fired.state is not None and fired.state.seen == seen
    timer = Timer(fired.state.started, "step_timeout", "a", 1)
    again = decide(s.definition, fired.state, timer_event(timer, "timer-again"), s.now + 1)
    assert again.duplicate and again.state is None and not again.commands


def test_idempotency_keys_are_stable_per_saga_and_step() -> None:
    assert idempotency_key("order", "o-1", "payment") == "order:o-1:payment"
    assert idempotency_key("order", "o-1", "payment", undo=True) == "order:o-1:payment:undo"
    keys = {
        idempotency_key("order", "o-1", "payment"),
        idempotency_key("order", "o-2", "payment"),
        idempotency_key("order", "o-1", "shipping"),
        idempotency_key("loan", "o-1", "payment"),
    }
    assert len(keys) == 4


# -- data flow and conditions --------------------------------------------------------------------


def test_same_named_result_fields_do_not_overwrite_each_other() -> None:
    c = step("c", "a", "b", inputs={"a": {"first": "ref"}, "b": {"second": "ref"}})
    s = Saga(saga(("a", step("a")), ("b", step("b")), ("c", c)))
    s.start()
    s.send("aDone", {"ref": "A", "meta": {"event_id": "x"}})
    d = s.send("bDone", {"ref": "B"})
    assert d.commands[0].fields == {"first": "A", "second": "B", "idempotency_key": "demo:k-1:c"}
    assert s.state is not None and s.state.data == {
        "start": {"id": "k-1"},
        "a": {"ref": "A"},
        "b": {"ref": "B"},
    }


def test_params_are_constants_beside_the_inputs() -> None:
    a = StepSpec(
        command="Doa",
        success="aDone",
        inputs={"start": ["id"]},
        params={"channel": "web", "tries": 3},
    )
    d = Saga(saga(("a", a))).start()
    assert d.commands[0].fields == {
        "id": "k-1",
        "channel": "web",
        "tries": 3,
        "idempotency_key": "demo:k-1:a",
    }


def test_a_field_of_a_skipped_step_is_left_out() -> None:
    b = step("b", "a", inputs={"start": ["id"], "a": ["a_ref"]})
    s = Saga(saga(("a", step("a", optional=True)), ("b", b)))
    s.start()
    d = s.send("aFailed", {"reason": "no"})
    assert s.st("a") == SKIPPED
    # absent, not None: the command schema's default applies
    assert d.commands[0].fields == {"id": "k-1", "idempotency_key": "demo:k-1:b"}


def test_a_false_when_skips_the_step_and_its_dependants_still_run() -> None:
    spec = saga(
        ("a", step("a")),
        ("b", step("b", "a", when="start.nights > 0 and a.ref != ''")),
        ("c", step("c", "b", inputs={"b": ["b_ref"], "start": ["nights"]})),
    )
    s = Saga(spec)
    s.start(nights=0)
    d = s.send("aDone", {"ref": "A"})
    assert s.st("b") == SKIPPED and s.state is not None and s.state.steps["b"].attempt == 0
    assert ("step_skipped", "b") in d.lifecycle and ("step_started", "b") not in d.lifecycle
    assert sent(d) == [("Doc", "c", 1)]
    assert d.commands[0].fields == {"nights": 0, "idempotency_key": "demo:k-1:c"}
    d = s.send("cDone")
    assert s.status == COMPLETED
    assert d.commands[0].fields["completed_steps"] == ["a", "c"]


def test_a_true_when_runs_the_step() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b", "a", when="a.ref in ['A', 'B']"))))
    s.start()
    d = s.send("aDone", {"ref": "A"})
    assert sent(d) == [("Dob", "b", 1)]
    assert not any(what == "step_skipped" for what, _ in s.notes())


def test_a_skipped_source_reads_as_none_in_a_when() -> None:
    spec = saga(
        ("a", step("a", when="start.go")),
        ("b", step("b", "a", when="a.ref == None")),
        ("c", step("c", "a", when="a.ref > 'A'")),  # None > 'A' cannot be compared: false
    )
    s = Saga(spec)
    d = s.start(go=False)
    assert sent(d) == [("Dob", "b", 1)]
    assert s.st("a") == SKIPPED and s.st("c") == SKIPPED


def test_a_skip_readies_steps_declared_before_it() -> None:
    s = Saga(saga(("c", step("c", "b")), ("b", step("b", when="start.n < -1"))))
    d = s.start(n=0)
    assert sent(d) == [("Doc", "c", 1)] and s.st("b") == SKIPPED


def test_a_saga_whose_every_step_is_skipped_completes_at_once() -> None:
    s = Saga(saga(("a", step("a", when="not start.go")), ("b", step("b", "a", when="False"))))
    d = s.start(go=True)
    assert s.status == COMPLETED and s.state is not None and s.state.timers == {}
    assert sent(d) == [("SagaCompleted", None, 1)]
    assert d.commands[0].fields["completed_steps"] == []


def test_a_stray_success_of_a_step_skipped_by_its_when_is_refused() -> None:
    s = Saga(saga(("a", step("a", when="start.go")), ("b", step("b"))))
    s.start(go=False)
    d = s.send("aDone", {"ref": "?"})
    assert sent(d) == [] and s.st("a") == SKIPPED
    assert d.dead_letter is not None and "step a was never started" in d.dead_letter
    s.send("bFailed")
    assert s.status == COMPENSATED and s.state is not None and s.state.undone == []


def test_a_version_1_state_reads_its_merged_context_for_every_source() -> None:
    a = step("a", undo_inputs={"start": ["id"], "a": ["a_ref"]})
    s = Saga(saga(("a", a), ("b", step("b", "a"))))
    s.start()
    s.send("aDone", {"a_ref": "A1"})
    assert s.state is not None
    now = s.state
    v1 = {
        "v": 1,
        "saga": now.saga,
        "key": now.key,
        "status": now.status,
        "ctx": {"id": "k-1", "a_ref": "A1"},
        "steps": {
            n: {"st": x.status, "a": x.attempt, "ca": x.undo_attempt} for n, x in now.steps.items()
        },
        "order": now.order,
        "undone": [],
        "undo_errors": [],
        "seen": [],
        "timers": now.timers,
        "started": now.started,
        "ended": None,
        "reason": None,
        "failed_step": None,
        "corr": None,
        "tp": None,
    }
    upgraded = decode_state(json.dumps(v1).encode())
    d = decide(s.definition, upgraded, Event("bFailed", "b-failed", {"reason": "no"}), 5)
    assert d.commands[0].fields == {
        "id": "k-1",
        "a_ref": "A1",
        "step": "a",
        "idempotency_key": "demo:k-1:a:undo",
    }
    assert d.state is not None and d.state.data["a"] == {"id": "k-1", "a_ref": "A1"}


# -- the order saga of topology.yaml --------------------------------------------------------------


@pytest.fixture(scope="module")
def order() -> SagaSpec:
    return load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas["order"]


ORDER = {
    "order_id": "o-42",
    "customer_id": "c-1",
    "email": "c1@example.com",
    "amount_cents": 1999,
    "currency": "EUR",
    "card_token": "tok_ok",
    "items": [{"sku": "sku-1", "quantity": 2}],
    "shipping_address": "1 Main St",
    "priority": "normal",
    "has_app": False,
}


def test_order_saga_happy_path(order: SagaSpec) -> None:
    s = Saga(order, "order")
    d = s.send("OrderPlaced", ORDER)
    assert sent(d) == [
        ("ChargePayment", "payment", 1),
        ("ReserveInventory", "inventory", 1),
        ("CreateShipment", "shipping", 1),
    ]
    assert d.commands[0].fields == {
        "order_id": "o-42",
        "customer_id": "c-1",
        "amount_cents": 1999,
        "currency": "EUR",
        "card_token": "tok_ok",
        "idempotency_key": "order:o-42:payment",
    }
    assert d.commands[1].fields == {
        "order_id": "o-42",
        "items": [{"sku": "sku-1", "quantity": 2}],
        "idempotency_key": "order:o-42:inventory",
    }
    s.send("PaymentCharged", {"order_id": "o-42", "payment_id": "pay_1", "amount_cents": 1999})
    s.send("ShipmentCreated", {"order_id": "o-42", "shipment_id": "shp_1"})
    d = s.send("InventoryReserved", {"order_id": "o-42", "reservation_id": "res_1"})
    assert s.status == COMPLETED
    assert sent(d) == [("SagaCompleted", None, 1), ("SendNotification", None, 1)]
    assert d.commands[1].fields == {
        "customer_id": "c-1",
        "email": "c1@example.com",
        "template": "order_completed",
        "outcome": "completed",
        "channel": "email",
        "idempotency_key": "order:o-42:notify-email",
    }


def test_the_order_saga_uses_the_fields_of_its_inputs_whens_and_key(order: SagaSpec) -> None:
    assert order.used_fields == {
        # payment, inventory and shipping inputs; email and customer_id for notify; priority and
        # has_app for the notify rules' whens; order_id the key
        "start": {
            "order_id",
            "customer_id",
            "email",
            "amount_cents",
            "currency",
            "card_token",
            "items",
            "shipping_address",
            "priority",
            "has_app",
        },
        "payment": {"payment_id"},  # the refund's
        "inventory": {"reservation_id"},  # the release's
        "shipping": {"shipment_id"},  # the cancellation's
    }


def test_the_state_keeps_only_the_fields_the_saga_uses(order: SagaSpec) -> None:
    s = Saga(order, "order")
    s.send("OrderPlaced", {**ORDER, "gift_wrap": "gold", "birth_date": "1990-01-01"})
    s.send("PaymentCharged", {"order_id": "o-42", "payment_id": "pay_1", "amount_cents": 1999})
    s.send("ShipmentFailed", {"order_id": "o-42", "reason": "no address"})
    assert s.state is not None
    assert s.state.data == {"start": ORDER, "payment": {"payment_id": "pay_1"}}


def test_a_result_no_step_reads_leaves_nothing_in_the_state() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b", "a", inputs={"start": ["id"]}))))
    s.start(secret="not used")
    s.send("aDone", {"ref": "A1", "card": "4111"})
    assert s.state is not None and s.state.data == {"start": {"id": "k-1"}}
    assert sent(s.decisions[-1]) == [("Dob", "b", 1)]


def test_order_saga_notifies_every_matching_channel(order: SagaSpec) -> None:
    s = Saga(order, "order")
    s.send("OrderPlaced", {**ORDER, "priority": "high", "has_app": True})
    d = s.send("PaymentFailed", {"order_id": "o-42", "reason": "card declined"})
    assert s.status == COMPENSATING
    s.fire("step_timeout", "inventory", 1)
    d = s.send("ShipmentFailed", {"order_id": "o-42", "reason": "no courier"})
    assert s.status == COMPENSATED
    channels = [c.fields["channel"] for c in d.commands if c.event_type == "SendNotification"]
    assert channels == ["email", "sms", "push"]
    keys = {c.fields["idempotency_key"] for c in d.commands if c.event_type == "SendNotification"}
    assert len(keys) == 3  # one side effect per channel


def test_order_refund_failure_routes_by_step_field(order: SagaSpec) -> None:
    s = Saga(order, "order")
    s.send("OrderPlaced", ORDER)
    s.send("PaymentCharged", {"order_id": "o-42", "payment_id": "pay_1", "amount_cents": 1999})
    s.send("InventoryReserved", {"order_id": "o-42", "reservation_id": "res_1"})
    d = s.send("ShipmentFailed", {"order_id": "o-42", "reason": "no courier"})
    assert sent(d) == [("ReleaseInventory", "inventory", 1)]
    assert d.commands[0].fields == {
        "order_id": "o-42",
        "reservation_id": "res_1",
        "step": "inventory",
        "idempotency_key": "order:o-42:inventory:undo",
    }
    # CompensationFailed routes to payment by type; the step field says it is about inventory
    s.send("CompensationFailed", {"order_id": "o-42", "step": "inventory", "reason": "locked"})
    assert s.st("inventory") == UNDOING and s.st("payment") == SUCCEEDED
    assert s.state is not None and "undo_retry|inventory|1" in s.state.timers


def test_order_refund_gets_the_payment_id_of_the_charge(order: SagaSpec) -> None:
    s = Saga(order, "order")
    s.send("OrderPlaced", ORDER)
    s.send("PaymentCharged", {"order_id": "o-42", "payment_id": "pay_1", "amount_cents": 1999})
    d = s.send("InventoryFailed", {"order_id": "o-42", "reason": "out of stock"})
    assert sent(d) == [("RefundPayment", "payment", 1)]
    assert d.commands[0].fields == {
        "order_id": "o-42",
        "amount_cents": 1999,
        "payment_id": "pay_1",
        "step": "payment",
        "idempotency_key": "order:o-42:payment:undo",
    }


def test_saga_for_finds_the_saga_of_start_and_result_events(order: SagaSpec) -> None:
    specs = {"order": order}
    assert saga_for(specs, "OrderPlaced") == ("order", order)
    assert saga_for(specs, "PaymentRefunded") == ("order", order)
    assert saga_for(specs, "CompensationFailed") == ("order", order)
    assert saga_for(specs, "SagaCompleted") is None
