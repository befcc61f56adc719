"""The spans of a saga, in OpenTelemetry's model without importing it: which spans one decision
finished (`decision_spans`), built from the times the saga state keeps, with ids derived from the
saga, so that a re-decided input gives the same ids; the attempts a decision ended
(`attempts_ended`, what the step-duration metric counts), the traceparent a command carries (its
attempt's span as parent) and the critical path of a saga's steps. Pure: runtime/tracing.py
exports these spans, sagastream.testing keeps them for a test to assert.

One trace per saga, under the start event's traceparent:

    saga <type>                     start event decided -> outcome decided
      step <name>                   one per attempt: command decided -> its result decided
        handle <command>            the handler's (runtime/handler_loop.py), by the traceparent
      compensate <name>             one per undo attempt
      skip / escalate / dead letter <name>   an instant: what was decided, with what it saw
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sagastream.core.saga import Command, Decision, Event
from sagastream.core.state import (
    CANCELLED,
    FAILED,
    PENDING,
    SKIPPED,
    SUCCEEDED,
    TERMINAL,
    UNDO_FAILED,
    UNDOING,
    UNDONE,
    WAITING_RETRY,
    SagaState,
    StepState,
)
from sagastream.core.topology import TIMER_EVENT, SagaSpec

# the step states in which an attempt that just ended had succeeded
_SUCCEEDED = frozenset({SUCCEEDED, UNDOING, UNDONE, UNDO_FAILED})
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """Something that happened inside a span, when, and what it saw."""

    name: str
    at_ms: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Span:
    """A finished span: `kind` is saga, attempt, compensation or instant; `error` the status
    description of a span that ended in error (None: ok)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ms: int
    end_ms: int
    attributes: Mapping[str, Any]
    events: tuple[SpanEvent, ...] = ()
    error: str | None = None
    sampled: bool = True  # the start event's traceparent's flag


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """An attempt of a step (or of its undo) that a decision ended, and how: succeeded, failed,
    timeout or cancelled."""

    step: str
    attempt: int
    undo: bool
    start_ms: int
    end_ms: int
    result: str


@dataclass(frozen=True, slots=True)
class CriticalPath:
    """The steps that bounded a saga's run, first to last, and per step with times how much
    later it could have ended without delaying the saga (0 on the path)."""

    steps: tuple[str, ...]
    slack_ms: Mapping[str, int]


# -- ids ----------------------------------------------------------------------------------------


def trace_of(state: SagaState) -> tuple[str, str | None, bool]:
    """(trace id, the start event's span id, sampled) of a saga: its start event's traceparent,
    or for a start without a valid one, a trace id derived from the saga (no parent, sampled)."""
    match = _TRACEPARENT.fullmatch(state.traceparent or "")
    if match and match[1].strip("0") and match[2].strip("0"):
        return match[1], match[2], bool(int(match[3], 16) & 1)
    return _digest(16, state.saga, state.key, state.started), None, True


def span_id(state: SagaState, kind: str, step: str = "", attempt: int = 0) -> str:
    """A span's id, from the saga (type, key, start time: a key may be reused by a later saga)
    and what the span is: the same whichever process decides it, however often."""
    return _digest(8, state.saga, state.key, state.started, kind, step, attempt)


def command_traceparent(state: SagaState, step: str, attempt: int, undo: bool) -> str:
    """The traceparent a step's (or undo's) command carries: its attempt's span as the parent, so
    the handler's span is that span's child."""
    trace, _, sampled = trace_of(state)
    kind = "compensation" if undo else "attempt"
    return f"00-{trace}-{span_id(state, kind, step, attempt)}-{'01' if sampled else '00'}"


def traceparents(spec: SagaSpec, state: SagaState, commands: list[Command]) -> list[str | None]:
    """The traceparent of each command a decision sends: a step's or undo's carries its attempt's
    span; the rest (outcomes, escalations, notifications) None, a new child of the saga's."""
    out: list[str | None] = []
    for command in commands:
        step = spec.steps.get(command.step) if command.step is not None else None
        if step is None or command.step is None:
            out.append(None)
            continue
        undo = step.compensation is not None and command.event_type == step.compensation.command
        out.append(command_traceparent(state, command.step, command.attempt, undo))
    return out


def _digest(size: int, *parts: object) -> str:
    text = "|".join(map(str, parts)).encode("utf-8", "surrogatepass")
    value = hashlib.blake2b(text, digest_size=size).hexdigest()
    return value if value.strip("0") else "1".rjust(size * 2, "0")  # all-zero ids are invalid


# -- what a decision ended ----------------------------------------------------------------------


def attempts_ended(
    before: SagaState | None, after: SagaState, event: Event | None = None
) -> list[AttemptEnded]:
    """The attempts `after` ended that `before` had running, with their decided times. An
    attempt sent before the state kept times (format 4) has no start, so none is counted."""
    timed_out = _timed_out(event)
    ended: list[AttemptEnded] = []
    for name, st in after.steps.items():
        old = before.steps.get(name) if before is not None else None
        if _ends(st.done, st.sent, st.attempt, None if old is None else (old.done, old.attempt)):
            assert st.done is not None and st.sent is not None
            result = _result(st, st.status in _SUCCEEDED, timed_out == ("step_timeout", name))
            ended.append(AttemptEnded(name, st.attempt, False, st.sent, st.done, result))
        undo = None if old is None else (old.undo_done, old.undo_attempt)
        if _ends(st.undo_done, st.undo_sent, st.undo_attempt, undo):
            assert st.undo_done is not None and st.undo_sent is not None
            late = timed_out == ("undo_timeout", name)
            result = _result(st, st.status == UNDONE, late)
            ended.append(
                AttemptEnded(name, st.undo_attempt, True, st.undo_sent, st.undo_done, result)
            )
    return ended


def _ends(
    done: int | None, sent: int | None, attempt: int, old: tuple[int | None, int] | None
) -> bool:
    """An attempt ended now: done, with a known start, and not done (or another attempt) before.
    A late success of an attempt already ended sets its end again, but ends no span twice."""
    if done is None or sent is None:
        return False
    return old is None or old[0] is None or old[1] != attempt


def _result(st: StepState, ok: bool, timed_out: bool) -> str:
    if ok:
        return "succeeded"
    if st.status == CANCELLED:
        return "cancelled"
    return "timeout" if timed_out else "failed"


def _timed_out(event: Event | None) -> tuple[str, str] | None:
    if event is None or event.event_type != TIMER_EVENT:
        return None
    return str(event.fields.get("kind")), str(event.fields.get("step"))


def decision_spans(
    spec: SagaSpec,
    before: SagaState | None,
    decision: Decision,
    event: Event,
    now: int,
    topic_of: Callable[[str], str] | None = None,
    where: Mapping[str, Any] | None = None,
) -> list[Span]:
    """The spans `decision` (of `event` at `now`, on a saga in state `before`) finished: attempts and
    undo attempts ended, instants (a step skipped by its `when`, an escalation, a dead letter)
    and, at the outcome, the saga's. `topic_of` gives a command's topic by its event type; `where`
    is the messaging attributes of the input decided (its topic, partition and offset)."""
    after = decision.state
    if after is None:
        # a refused input changes nothing stored, but its saga's trace says it was refused
        if before is None or decision.dead_letter is None:
            return []
        trace, _, sampled = trace_of(before)
        ids = (trace, span_id(before, "saga"))
        span = _dead_letter_span(before, decision, event, now, ids, _attributes(before, where))
        return [span if sampled else replace(span, sampled=False)]
    trace, _, sampled = trace_of(after)
    saga_id = span_id(after, "saga")
    base = _attributes(after, where)
    spans = [
        _attempt_span(spec, after, ended, trace, saga_id, base, topic_of)
        for ended in attempts_ended(before, after, event)
    ]
    spans += _instants(spec, before, decision, event, now, (trace, saga_id), base)
    if after.status in TERMINAL and (before is None or before.status not in TERMINAL):
        spans.append(_saga_span(spec, after, decision, base))
    elif decision.dead_letter is not None and not any(s.kind == "instant" for s in spans):
        spans.append(_dead_letter_span(after, decision, event, now, (trace, saga_id), base))
    return spans if sampled else [replace(span, sampled=False) for span in spans]


def _attributes(state: SagaState, where: Mapping[str, Any] | None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.kafka.message.key": state.key,
        "saga.type": state.saga,
        "saga.key": state.key,
    }
    if state.correlation_id:
        base["saga.correlation_id"] = state.correlation_id
    if where:
        base.update(where)
    return base


def _attempt_span(
    spec: SagaSpec,
    state: SagaState,
    ended: AttemptEnded,
    trace: str,
    parent: str,
    base: Mapping[str, Any],
    topic_of: Callable[[str], str] | None,
) -> Span:
    step = spec.steps.get(ended.step)
    comp = step.compensation if step is not None else None
    command = (comp.command if ended.undo and comp else step.command if step else None) or ""
    key = f"{state.saga}:{state.key}:{ended.step}" + (":undo" if ended.undo else "")
    attributes = {
        **base,
        "saga.step": ended.step,
        "saga.attempt": ended.attempt,
        "saga.idempotency_key": key,
        "saga.outcome": ended.result,
    }
    if command:
        attributes["saga.command"] = command
        if topic_of is not None:
            attributes["messaging.destination.name"] = topic_of(command)
    events = []
    st = state.steps[ended.step]
    if ended.result == "timeout":
        events.append(SpanEvent("timeout", ended.end_ms, {"saga.attempt": ended.attempt}))
    retry_kind = "undo_retry" if ended.undo else "retry"
    due = state.timers.get(f"{retry_kind}|{ended.step}|{ended.attempt}")
    if due is not None and (st.status == UNDOING if ended.undo else st.status == WAITING_RETRY):
        retry = {"saga.attempt": ended.attempt + 1, "saga.retry_at_ms": due}
        events.append(SpanEvent("retry scheduled", ended.end_ms, retry))
    condition = step.condition if step is not None and not ended.undo else None
    if condition is not None and ended.attempt == 1:
        seen = _seen(condition.references, state)
        events.append(
            SpanEvent("when", ended.start_ms, {"when": condition.text, "result": True, **seen})
        )
    kind = "compensation" if ended.undo else "attempt"
    ok = ended.result == "succeeded"
    return Span(
        f"{'compensate' if ended.undo else 'step'} {ended.step}",
        kind,
        trace,
        span_id(state, kind, ended.step, ended.attempt),
        parent,
        ended.start_ms,
        ended.end_ms,
        attributes,
        tuple(events),
        None if ok else f"attempt {ended.attempt} {ended.result}",
    )


def _seen(references: tuple[tuple[str, str], ...], state: SagaState) -> dict[str, Any]:
    """The values a `when:` read, as span attributes (a missing source or field: not set)."""
    seen: dict[str, Any] = {}
    for source, name in references:
        value = state.data.get(source, {}).get(name)
        if isinstance(value, bool | int | float | str):
            seen[f"when.{source}.{name}"] = value
        elif value is not None:
            seen[f"when.{source}.{name}"] = repr(value)
    return seen


def _instants(
    spec: SagaSpec,
    before: SagaState | None,
    decision: Decision,
    event: Event,
    now: int,
    ids: tuple[str, str],
    base: Mapping[str, Any],
) -> list[Span]:
    """Instant spans: steps a `when:` skipped (with the values it saw) and escalations sent."""
    after = decision.state
    assert after is not None
    trace, parent = ids
    spans = []
    for name, st in after.steps.items():
        old = before.steps[name].status if before is not None and name in before.steps else PENDING
        condition = spec.steps[name].condition if name in spec.steps else None
        if st.status == SKIPPED and old == PENDING and st.sent is None and condition is not None:
            seen = _seen(condition.references, after)
            when = SpanEvent("when", now, {"when": condition.text, "result": False, **seen})
            sid = span_id(after, "skip", name)
            attributes = {**base, "saga.step": name, "saga.outcome": "skipped"}
            spans.append(
                Span(f"skip {name}", "instant", trace, sid, parent, now, now, attributes, (when,))
            )
    for note, step in decision.lifecycle:
        if note == "step_escalated" and step is not None:
            attempt = after.steps[step].attempt
            escalation = spec.steps[step].escalation or ""
            attributes = {
                **base,
                "saga.step": step,
                "saga.attempt": attempt,
                "saga.command": escalation,
            }
            sid = span_id(after, "escalate", step, attempt)
            sent = SpanEvent("escalation", _due(event, now), {"saga.command": escalation})
            spans.append(
                Span(
                    f"escalate {step}", "instant", trace, sid, parent, now, now, attributes, (sent,)
                )
            )
    return spans


def _due(event: Event, default: int) -> int:
    due = event.fields.get("due_ms") if event.event_type == TIMER_EVENT else None
    return due if isinstance(due, int) else default


def _dead_letter_span(
    state: SagaState,
    decision: Decision,
    event: Event,
    now: int,
    ids: tuple[str, str],
    base: Mapping[str, Any],
) -> Span:
    trace, parent = ids
    reason = decision.dead_letter or ""
    attributes = {**base, "saga.event_type": event.event_type, "saga.dead_letter": reason}
    sid = span_id(state, "dead letter", event.event_id)
    note = SpanEvent("dead letter", now, {"reason": reason})
    return Span("dead letter", "instant", trace, sid, parent, now, now, attributes, (note,), reason)


def _saga_span(
    spec: SagaSpec, state: SagaState, decision: Decision, base: Mapping[str, Any]
) -> Span:
    assert state.ended is not None
    trace, parent, _ = trace_of(state)
    path = critical_path(spec, state)
    attributes: dict[str, Any] = {
        **base,
        "saga.outcome": state.status,
        "saga.critical_path": list(path.steps),
        **{f"saga.slack_ms.{name}": ms for name, ms in path.slack_ms.items()},
    }
    if state.shape is not None:
        attributes["saga.shape"] = state.shape
    if state.reason:
        attributes["saga.reason"] = state.reason
    if state.failed_step:
        attributes["saga.failed_step"] = state.failed_step
    events = [SpanEvent(state.status, state.ended, {"saga.completed_steps": list(state.order)})]
    if decision.dead_letter is not None:
        events.append(SpanEvent("dead letter", state.ended, {"reason": decision.dead_letter}))
    error = None if state.status != FAILED else (state.reason or "failed")
    return Span(
        f"saga {state.saga}",
        "saga",
        trace,
        span_id(state, "saga"),
        parent,
        state.started,
        state.ended,
        attributes,
        tuple(events),
        error,
    )


# -- the critical path ----------------------------------------------------------------------------


def critical_path(spec: SagaSpec, state: SagaState) -> CriticalPath:
    """Which steps bounded the saga's forward run, and each step's slack (total float): how much
    later it could have ended without delaying the last step's end, given its dependents' runs.

    Only steps with both times count (sent and ended); a dependency without them (skipped, never
    sent) is passed over. The path starts at the step that ended last and goes back through the
    dependency that ended last (the one its start waited for)."""
    timed = {
        name: (st.first_sent, st.done)
        for name, st in state.steps.items()
        if st.first_sent is not None and st.done is not None and name in spec.steps
    }
    if not timed:
        return CriticalPath((), {})
    deps = {n: [d for d in spec.steps[n].depends_on if d in timed] for n in timed}
    end = max(done for _, done in timed.values())
    latest: dict[str, int] = {}
    # a dependency ends before its dependents start: latest end times, dependents first
    for name in sorted(timed, key=lambda n: timed[n][1], reverse=True):
        bounds = [
            latest[d] - (timed[d][1] - timed[d][0])
            for d in timed
            if name in deps[d] and d in latest
        ]
        latest[name] = min(bounds) if bounds else end
    slack = {name: max(0, latest[name] - timed[name][1]) for name in timed}
    order = list(spec.steps)
    last = max(timed, key=lambda n: (timed[n][1], -order.index(n)))
    path = [last]
    while deps[path[-1]]:
        path.append(max(deps[path[-1]], key=lambda n: (timed[n][1], -order.index(n))))
    return CriticalPath(tuple(reversed(path)), slack)
