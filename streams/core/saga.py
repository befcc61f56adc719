"""The pure saga core: decide(definition, state, event, now) -> Decision. No Kafka, faust or I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, cast

from sagastream.core.state import (
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
    TERMINAL,
    UNDO_FAILED,
    UNDOING,
    UNDONE,
    WAITING_RETRY,
    SagaState,
    StepState,
    seen_digest,
)
from sagastream.core.topology import (
    ATTEMPT_FAILED_EVENT,
    SIGNAL_EVENT,
    START,
    TIMER_EVENT,
    Fills,
    RetryPolicy,
    SagaSpec,
    StepSpec,
)

SEEN_LIMIT = 64


@dataclass(frozen=True)
class Event:
    """What decide consumes: a decoded event (or a fired timer) reduced to what the core needs."""

    event_type: str
    event_id: str
    fields: dict[str, Any]
    attempt: int = 1
    hop: int = 0
    correlation_id: str | None = None
    traceparent: str | None = None
    # meta.step: the step whose command this result answers (null from producers that predate it)
    step: str | None = None


@dataclass(frozen=True)
class Command:
    """An event to produce: its type, its payload (meta is added by the runtime) and attempt."""

    event_type: str
    fields: dict[str, Any]
    attempt: int = 1
    step: str | None = None


@dataclass(frozen=True)
class Timer:
    """A durable timer: due time, kind (step_timeout, retry, deadline, undo_timeout, undo_retry,
    max_wait)."""

    due_ms: int
    kind: str
    step: str
    attempt: int

    @property
    def key(self) -> str:
        return f"{self.kind}|{self.step}|{self.attempt}"


@dataclass
class Decision:
    """The new state (None: nothing to store), what to send, the timers armed, and why to DLQ."""

    state: SagaState | None
    commands: list[Command] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    dead_letter: str | None = None
    duplicate: bool = False
    lifecycle: list[tuple[str, str | None]] = field(default_factory=list)


def timer_event(timer: Timer, event_id: str) -> Event:
    """The event a fired timer delivers to decide."""
    return Event(
        TIMER_EVENT,
        event_id,
        {"kind": timer.kind, "step": timer.step, "attempt": timer.attempt, "due_ms": timer.due_ms},
    )


def backoff_ms(policy: RetryPolicy, attempt: int, rng: random.Random) -> int:
    """Exponential backoff after `attempt` failed: min(cap, base*m^(n-1)), by default full-jittered
    (uniform in [0, that]) so retries of many sagas do not arrive together."""
    ceiling = min(
        policy.max_backoff_ms, policy.initial_backoff_ms * policy.multiplier ** (attempt - 1)
    )
    return int(ceiling if policy.jitter == "none" else rng.uniform(0, ceiling))


def idempotency_key(saga: str, key: str, step: str, undo: bool = False) -> str:
    """Stable per saga and step, so a retried side effect can never happen twice."""
    return f"{saga}:{key}:{step}:undo" if undo else f"{saga}:{key}:{step}"


class _Run:
    """One decide call: a working copy of the state plus what it emits."""

    def __init__(self, saga_type: str, spec: SagaSpec, state: SagaState, now: int) -> None:
        self.saga_type = saga_type
        self.spec = spec
        self.s = state
        self.now = now
        self.out = Decision(state)

    # -- emitting -------------------------------------------------------------------------
    def emit(
        self, event_type: str, fields: dict[str, Any], attempt: int = 1, step: str | None = None
    ) -> None:
        self.out.commands.append(Command(event_type, fields, attempt, step))

    def arm(self, delay_ms: int, kind: str, step: str, attempt: int) -> None:
        timer = Timer(self.now + delay_ms, kind, step, attempt)
        self.s.timers[timer.key] = timer.due_ms
        self.out.timers.append(timer)

    def arm_backoff(self, policy: RetryPolicy, kind: str, step: str, attempt: int) -> None:
        """A retry timer. Its jitter is a function of the saga and the timer, not of the clock,
        so history replayed at another speed (a shadow replay) arms the same backoffs."""
        rng = random.Random(f"{self.saga_type}:{self.s.key}:{kind}|{step}|{attempt}")
        self.arm(backoff_ms(policy, attempt, rng), kind, step, attempt)

    def disarm(self, kind: str, step: str, attempt: int) -> None:
        self.s.timers.pop(f"{kind}|{step}|{attempt}", None)

    def disarm_step(self, step: str, attempt: int) -> None:
        """Every timer of a step's attempt: it has an answer, or nobody waits for one any more."""
        for kind in ("step_timeout", "retry", "max_wait"):
            self.disarm(kind, step, attempt)

    def note(self, what: str, step: str | None = None) -> None:
        self.out.lifecycle.append((what, step))

    def fill(self, fills: Fills) -> dict[str, Any]:
        """A command's fields from its inputs and params; what a skipped step would give is left
        out, so the schema's default applies."""
        data = self.s.data
        fields = dict(fills.params)
        for target, source, name in fills.bindings:
            values = data.get(source)
            if values is not None and name in values:
                fields[target] = values[name]
        return fields

    # -- forward path ---------------------------------------------------------------------
    def step(self, name: str) -> StepState:
        return self.s.steps[name]

    def send_step(self, name: str) -> None:
        spec = self.spec.steps[name]
        st = self.step(name)
        st.status = STARTED
        st.sent, st.done = self.now, None
        if st.first_sent is None:
            st.first_sent = self.now
        if spec.command:
            fields = self.fill(spec)
            fields["idempotency_key"] = idempotency_key(self.saga_type, self.s.key, name)
            self.emit(spec.command, fields, st.attempt, name)
        if not spec.human or spec.escalation:
            # a person's wait ends by max_wait_ms or the deadline; timeout_ms says when to
            # escalate; a command's answer may queue before it runs (answer_within_ms)
            delay = spec.timeout_ms if spec.human else spec.answer_within_ms
            self.arm(delay, "step_timeout", name, st.attempt)
        if spec.human and spec.max_wait_ms is not None:
            self.arm(spec.max_wait_ms, "max_wait", name, st.attempt)
        self.note("step_started", name)

    def start_ready(self) -> None:
        if self.s.status != RUNNING:
            return
        skipped = True
        while skipped:  # a step skipped by its `when` may make steps declared before it ready
            skipped = False
            for name, spec in self.spec.steps.items():
                st = self.step(name)
                if st.status != PENDING or not all(
                    self.step(d).status in (SUCCEEDED, SKIPPED) for d in spec.depends_on
                ):
                    continue
                if spec.condition is not None and not spec.condition(self.s.data):
                    st.status = SKIPPED
                    self.note("step_skipped", name)
                    skipped = True
                    continue
                st.attempt = 1
                self.send_step(name)
        if all(st.status in (SUCCEEDED, SKIPPED) for st in self.s.steps.values()):
            self.finish(COMPLETED)

    def step_succeeded(self, name: str, fields: dict[str, Any]) -> None:
        st = self.step(name)
        self.disarm_step(name, st.attempt)
        st.status = SUCCEEDED
        st.done = self.now
        self.s.order.append(name)
        kept = _used(fields, self.spec.used_fields.get(name))
        if kept:
            self.s.data[name] = kept
        self.note("step_succeeded", name)
        if self.s.status == RUNNING:
            self.start_ready()
        else:
            # a success after the saga gave up: its side effect happened, so undo it too
            self.compensate_next()

    def step_failed(self, name: str, reason: str, retry_on: str) -> None:
        spec, st = self.spec.steps[name], self.step(name)
        self.disarm_step(name, st.attempt)
        st.done = self.now
        if (
            self.s.status == RUNNING
            and retry_on in spec.retry.on
            and st.attempt < spec.retry.max_attempts
        ):
            st.status = WAITING_RETRY
            self.arm_backoff(spec.retry, "retry", name, st.attempt)
            self.note("step_retry_scheduled", name)
            return
        self.note("step_failed", name)
        if spec.optional:
            st.status = SKIPPED
            if self.s.status == RUNNING:
                self.start_ready()
            else:
                self.compensate_next()
            return
        st.status = STEP_FAILED
        if self.s.status == RUNNING:
            self.begin_compensation(f"{name}: {reason}", name)
        else:
            self.compensate_next()

    # -- compensation ---------------------------------------------------------------------
    def begin_compensation(self, reason: str, failed_step: str) -> None:
        self.s.status = COMPENSATING
        self.s.reason, self.s.failed_step = reason, failed_step
        self.disarm("deadline", "", 0)
        self.note("compensating", failed_step)
        for name, st in self.s.steps.items():
            waits_for_a_person = st.status == STARTED and self.spec.steps[name].human
            if st.status in (PENDING, WAITING_RETRY) or waits_for_a_person:
                # a person's decision has no side effect to wait for: nobody needs it now
                self.disarm_step(name, st.attempt)
                st.status = CANCELLED
                if waits_for_a_person:
                    st.done = self.now
                    self.note("step_cancelled", name)
        self.compensate_next()

    def compensate_next(self) -> None:
        """Undo one completed step at a time, in reverse completion order; end when none is left."""
        steps = self.s.steps
        if any(st.status == UNDOING for st in steps.values()):
            return
        for name in reversed(self.s.order):
            if steps[name].status != SUCCEEDED:
                continue
            comp = self.spec.steps[name].compensation
            if comp is None:
                steps[name].status = UNDONE  # nothing to undo; not listed among compensated steps
                continue
            steps[name].status = UNDOING
            steps[name].undo_attempt = 1
            self.send_undo(name)
            return
        if self.s.status == COMPENSATING and not any(st.status == STARTED for st in steps.values()):
            failed = any(st.status == UNDO_FAILED for st in steps.values())
            self.finish(FAILED if failed else COMPENSATED)

    def send_undo(self, name: str) -> None:
        comp = self.spec.steps[name].compensation
        assert comp is not None
        st = self.step(name)
        st.undo_sent, st.undo_done = self.now, None
        fields = self.fill(comp)
        fields["step"] = name  # the encoder drops it when the undo command has no such field
        fields["idempotency_key"] = idempotency_key(self.saga_type, self.s.key, name, undo=True)
        self.emit(comp.command, fields, st.undo_attempt, name)
        self.arm(comp.answer_within_ms, "undo_timeout", name, st.undo_attempt)
        self.note("compensation_started", name)

    def undo_result(self, name: str, ok: bool, reason: str, retry_on: str) -> None:
        comp = self.spec.steps[name].compensation
        assert comp is not None
        st = self.step(name)
        self.disarm("undo_timeout", name, st.undo_attempt)
        st.undo_done = self.now
        if ok:
            self.disarm("undo_retry", name, st.undo_attempt)
            if st.status == UNDO_FAILED:  # its last attempt had timed out, but the undo happened
                errors = self.s.undo_errors
                errors[:] = [e for e in errors if not e.startswith(f"{name}: ")]
            st.status = UNDONE
            self.s.undone.append(name)
            self.note("step_compensated", name)
        elif retry_on in comp.retry.on and st.undo_attempt < comp.retry.max_attempts:
            self.arm_backoff(comp.retry, "undo_retry", name, st.undo_attempt)
            self.note("compensation_retry_scheduled", name)
            return
        else:
            st.status = UNDO_FAILED
            self.s.undo_errors.append(f"{name}: {reason}")
            self.note("compensation_failed", name)
            if self.s.status in TERMINAL:
                # undoing a late success of an ended saga: its outcome stays, a person must know
                self.out.dead_letter = (
                    f"saga {self.saga_type} {self.s.key} ended {self.s.status}, "
                    f"then compensating its late step {name} failed: {reason}"
                )
        self.compensate_next()

    # -- the end --------------------------------------------------------------------------
    def finish(self, status: str) -> None:
        if self.s.status in TERMINAL:
            return
        self.s.status = status
        self.s.ended = self.now
        self.s.timers.clear()
        # the orchestrator's store drops the saga then, so ended sagas do not pile up forever
        retention = self.spec.retention_ms
        self.s.expires = None if retention < 0 else self.now + retention
        self.note(status)
        saga = self.saga_type
        if status == COMPLETED:
            self.emit("SagaCompleted", {"saga_type": saga, "completed_steps": list(self.s.order)})
        elif status == COMPENSATED:
            self.emit(
                "SagaCompensated",
                {
                    "saga_type": saga,
                    "reason": self.s.reason or "",
                    "failed_step": self.s.failed_step or "",
                    "compensated_steps": list(self.s.undone),
                },
            )
        else:
            reason = "; ".join([self.s.reason or "", *self.s.undo_errors]).strip("; ")
            self.emit(
                "SagaFailed",
                {"saga_type": saga, "reason": reason, "failed_step": self.s.failed_step},
            )
            self.out.dead_letter = f"saga {saga} {self.s.key} failed: {reason}"
        notify = self.spec.notify
        if notify is None:
            return
        data = self.s.data
        templates: dict[str, str] = cast(dict[str, str], notify.templates)
        for rule in notify.rules:
            if rule.condition is None or rule.condition(data):
                fields = self.fill(notify)
                fields["template"] = templates[status]
                fields["outcome"] = status
                fields["channel"] = rule.channel
                fields["idempotency_key"] = idempotency_key(
                    saga, self.s.key, f"notify-{rule.channel}"
                )
                self.emit(notify.command, fields)


def caused_by(state: SagaState, meta: dict[str, Any]) -> dict[str, Any]:
    """The parent meta of what a saga sends while handling an input with `meta`: the saga's own
    trace and correlation, and its start's hop, so every event it causes is one hop past its
    start however many steps it has (a long saga is no loop; the hop limit counts sagas)."""
    return {
        **meta,
        "correlation_id": state.correlation_id or meta["correlation_id"],
        "traceparent": state.traceparent or meta["traceparent"],
        # states written before the hop was kept take the input's
        "hop": meta["hop"] if state.hop is None else state.hop,
    }


def new_state(saga_type: str, spec: SagaSpec, key: str, event: Event, now: int) -> SagaState:
    """The state of a saga that its start event has just created."""
    state = SagaState(
        saga_type,
        key,
        spec.shape,
        RUNNING,
        {START: _used(event.fields, spec.used_fields.get(START))},
        {name: StepState() for name in spec.steps},
        now,
    )
    state.correlation_id, state.traceparent = event.correlation_id, event.traceparent
    state.hop = event.hop  # the start event's: what every event the saga causes is one hop past
    return state


def carry_on(saga_type: str, spec: SagaSpec, state: SagaState, now: int, change: str) -> Decision:
    """A state changed outside decide (re-pinned by a migration) going on under `spec`: the
    `change` recorded, then the steps now ready start (or the saga completes)."""
    run = _Run(saga_type, spec, state, now)
    run.note(change)
    run.start_ready()
    return run.out


def _roles(step: StepSpec, event_type: str) -> list[str]:
    """What an event type is to one step: ok, fail, undo_ok or undo_fail (the loader refuses an
    event type with two roles in one step)."""
    comp = step.compensation
    roles = [
        ("ok", event_type == step.success),
        ("fail", event_type in step.failure),
        ("undo_ok", comp is not None and event_type == comp.success),
        ("undo_fail", comp is not None and event_type in comp.failure),
    ]
    return [role for role, matches in roles if matches]


def _candidates(spec: SagaSpec, event_type: str) -> list[tuple[str, str]]:
    """Every (step, role) an event type may answer; several when steps share a result type."""
    return [(name, role) for name, step in spec.steps.items() for role in _roles(step, event_type)]


# the step states in which a step waits for a result of each role, most expected first
_AWAITING = {
    "ok": (STARTED, WAITING_RETRY),
    "fail": (STARTED,),
    "undo_ok": (UNDOING, UNDO_FAILED),
    "undo_fail": (UNDOING,),
}


def _route(run: _Run, event: Event) -> tuple[str, str] | str:
    """(step, role) of a result, or why it cannot be routed. The step the command named
    (meta.step) decides; a result without one is routed by its type, and where steps share the
    type, by the step its payload names or the one step waiting for it."""
    spec, event_type = run.spec, event.event_type
    if event.step is not None:
        step = spec.steps.get(event.step)
        roles = _roles(step, event_type) if step is not None else []
        if not roles:
            return f"{event_type} is not a result of step {event.step!r} of saga {run.saga_type}"
        return event.step, roles[0]
    found = _candidates(spec, event_type)
    if not found:
        return f"{event_type} is not part of saga {run.saga_type}"
    named = _undo_step_of(spec, event.fields)
    for name, role in found:
        if name == named:
            return name, role
    if named is not None and all(role == "undo_fail" for _, role in found):
        return named, "undo_fail"  # a generic compensation failure that names its step
    if len(found) == 1:
        return found[0]
    if named is None and event.fields.get("step"):
        return (
            f"{event_type} names no step of saga {run.saga_type} "
            f"(step={event.fields.get('step')!r}), so whose result it is is unknown"
        )
    for _, role in found:
        for wanted in _AWAITING[role]:
            waiting = [(n, r) for n, r in found if r == role and run.step(n).status == wanted]
            if len(waiting) == 1:
                return waiting[0]
    steps = ", ".join(sorted({name for name, _ in found}))
    return (
        f"{event_type} answers steps {steps} of saga {run.saga_type} and names none "
        "(meta.step is null), so whose result it is is unknown"
    )


def _undo_step_of(spec: SagaSpec, fields: dict[str, Any]) -> str | None:
    """A generic compensation failure names the step (or the undo command) it is about."""
    named = fields.get("step")
    for name, step in spec.steps.items():
        if named == name or (step.compensation and named == step.compensation.command):
            return name
    return None


def decide(
    definition: tuple[str, SagaSpec], state: SagaState | None, event: Event, now: int
) -> Decision:
    """Apply one event to one saga's state. Pure: the same inputs always give the same decision."""
    saga_type, spec = definition
    digest = seen_digest(event.event_id)
    if state is not None and digest in state.seen:
        return Decision(None, duplicate=True)
    if state is None:
        # The loop guard: a saga's commands carry its start's hop + 1, whatever its length (the
        # runtime derives them from `hop` in the state), so hop counts sagas started one from
        # another's events, and a loop of them ends here. Within a saga, attempts are bounded.
        if event.hop > spec.max_hops:
            return Decision(None, dead_letter=f"hop limit exceeded ({event.hop} > {spec.max_hops})")
        if event.event_type != spec.start_event:
            return Decision(None, dead_letter=f"no saga found for {event.event_type}")
        if event.fields.get(spec.key_field) in (None, ""):
            return Decision(
                None, dead_letter=f"{event.event_type} has no {spec.key_field} (the saga key)"
            )
        key = str(event.fields[spec.key_field])
        run = _Run(saga_type, spec, new_state(saga_type, spec, key, event, now), now)
        run.s.seen.append(digest)
        run.note("started")
        if spec.deadline_ms is not None:
            run.arm(spec.deadline_ms, "deadline", "", 0)
        run.start_ready()
        return run.out
    run = _Run(saga_type, spec, state.copy(), now)
    s = run.s
    if event.event_type == TIMER_EVENT:
        # not kept among the seen: an armed timer fires once, as decide disarms it (and a
        # shadow replay orders a saga's inputs by its seen, which fired timers are not)
        fields = event.fields
        if s.timers.pop(f"{fields['kind']}|{fields['step']}|{fields['attempt']}", None) is None:
            return Decision(None, duplicate=True)  # disarmed: what it guarded has happened
        _on_timer(run, fields)
        return run.out
    s.seen.append(digest)
    del s.seen[:-SEEN_LIMIT]
    if event.event_type == spec.start_event:
        run.out.dead_letter = f"saga {saga_type} {s.key} already started"
        return run.out
    if event.event_type == SIGNAL_EVENT:
        _on_signal(run, event.fields)
        return run.out
    if event.event_type == ATTEMPT_FAILED_EVENT:
        return _on_attempt_failed(run, event)
    routed = _route(run, event)
    if isinstance(routed, str):
        # guessing would succeed, fail (or, later, retry) the wrong step
        run.out.dead_letter = routed
        return run.out
    name, role = routed
    st = s.steps[name]
    unsent = _unsent(name, st, role, event.attempt)
    if unsent is not None:
        # a result must be about an attempt that was sent; anything else changes nothing
        return Decision(
            None, dead_letter=f"{event.event_type} for saga {saga_type} {s.key}: {unsent}"
        )
    reason = str(event.fields.get("reason") or event.event_type)
    if role == "ok":
        # An earlier attempt's success counts: the retry reused its idempotency key. So does a
        # success after the step was given up on (timed out, cancelled, skipped as optional):
        # the side effect happened, so it is recorded and compensated unless the saga completed.
        given_up = (
            {STEP_FAILED, CANCELLED} if s.status == COMPLETED else {STEP_FAILED, CANCELLED, SKIPPED}
        )
        if (st.status in given_up or st.status in (STARTED, WAITING_RETRY)) and st.attempt > 0:
            if event.attempt != st.attempt:
                run.note("stale_success_accepted", name)
            run.disarm("retry", name, st.attempt)
            run.step_succeeded(name, event.fields)
    elif role == "fail":
        if st.status == STARTED and event.attempt == st.attempt:
            run.step_failed(name, reason, "failure")
        elif event.attempt != st.attempt:
            run.note("stale_result_ignored", name)
    elif role == "undo_ok":
        # As for steps: an earlier attempt's success counts (the undo's idempotency key is stable),
        # even after the last attempt timed out.
        if st.status in (UNDOING, UNDO_FAILED) and 0 < event.attempt <= st.undo_attempt:
            if event.attempt != st.undo_attempt:
                run.note("stale_success_accepted", name)
            run.undo_result(name, True, reason, "failure")
    elif st.status == UNDOING and event.attempt == st.undo_attempt:
        run.undo_result(name, False, reason, "failure")
    return run.out


def _on_attempt_failed(run: _Run, event: Event) -> Decision:
    """A handler's runtime says an attempt of a step (or of its undo) ended without a result: it
    raised, ran past its bound, broke its contract or made a result too large. It fails at once
    and is retried under `timeout` (for a run past its bound) or `error` (the rest)."""
    fields = event.fields
    name, undo = fields.get("step"), bool(fields.get("compensation"))
    spec = run.spec.steps.get(name) if isinstance(name, str) else None
    if spec is None or fields.get("saga_type") != run.saga_type or (undo and not spec.compensation):
        what = "an undo of" if undo else "a step"
        return Decision(
            None,
            dead_letter=f"{ATTEMPT_FAILED_EVENT} for {what} {fields.get('saga_type')}/{name}: "
            f"saga {run.s.key} is a {run.saga_type} saga with no such step",
        )
    assert isinstance(name, str)
    st = run.step(name)
    unsent = _unsent(name, st, "undo_fail" if undo else "fail", event.attempt)
    if unsent is not None:
        return Decision(None, dead_letter=f"{ATTEMPT_FAILED_EVENT} for saga {run.s.key}: {unsent}")
    kind = str(fields.get("kind") or "exception")
    retry_on = "timeout" if kind == "timeout" else "error"
    reason = f"attempt {event.attempt} failed ({kind}): {fields.get('error_type')}: {fields.get('message')}"
    if undo and st.status == UNDOING and event.attempt == st.undo_attempt:
        run.undo_result(name, False, reason, retry_on)
    elif not undo and st.status == STARTED and event.attempt == st.attempt:
        run.step_failed(name, reason, retry_on)
    else:
        run.note("stale_result_ignored", name)
    return run.out


def _unsent(name: str, st: StepState, role: str, attempt: int) -> str | None:
    """Why a result names no attempt this saga sent (a step or undo never started, an attempt
    not yet or never made), or None. An earlier attempt counts: it was sent."""
    undo = role in ("undo_ok", "undo_fail")
    sent: int = st.undo_attempt if undo else st.attempt
    what = f"the compensation of step {name}" if undo else f"step {name}"
    if sent < 1:
        return f"{what} was never started, so no attempt {attempt} of it was sent"
    if not 1 <= attempt <= sent:
        return f"attempt {attempt} of {what} was never sent (sent: 1 to {sent})"
    return None


def _on_timer(run: _Run, fields: dict[str, Any]) -> None:
    """A timer that was armed (and is now disarmed) has fired."""
    s = run.s
    kind, name, attempt = fields["kind"], fields["step"], int(fields["attempt"])
    if kind == "deadline":
        if s.status == RUNNING:
            run.begin_compensation("saga deadline exceeded", "")
        return
    st = s.steps[name]
    spec = run.spec.steps[name]
    if (
        kind == "step_timeout"
        and st.status == STARTED
        and st.attempt == attempt
        and spec.escalation
    ):
        # a person is slow: say so and keep waiting (max_wait_ms or the deadline bound it). No
        # step in its meta: what answers it is no result of the step.
        fields = {"saga_type": run.saga_type, "step": name, "waited_ms": spec.timeout_ms}
        key = idempotency_key(run.saga_type, s.key, f"{name}-escalation-{attempt}")
        run.emit(spec.escalation, {**fields, "idempotency_key": key})
        run.note("step_escalated", name)
    elif kind == "max_wait" and st.status == STARTED and st.attempt == attempt:
        _expire(run, name)
    elif kind == "step_timeout" and st.status == STARTED and st.attempt == attempt:
        waited = spec.timeout_ms if spec.human else spec.answer_within_ms
        run.step_failed(name, f"no answer within {waited} ms (timed out)", "timeout")
    elif kind == "retry" and st.status == WAITING_RETRY and st.attempt == attempt:
        st.attempt = attempt + 1
        run.send_step(name)
    elif kind == "undo_timeout" and st.status == UNDOING and st.undo_attempt == attempt:
        run.undo_result(name, False, "compensation timed out", "timeout")
    elif kind == "undo_retry" and st.status == UNDOING and st.undo_attempt == attempt:
        st.undo_attempt = attempt + 1
        run.send_undo(name)


def _expire(run: _Run, name: str) -> None:
    """A human step waited its max_wait_ms: it ends as if a person had decided `on_expiry`."""
    spec = run.spec.steps[name]
    why = f"no decision within {spec.max_wait_ms} ms"
    run.note("step_expired", name)
    if spec.on_expiry == "approved":
        run.step_succeeded(name, {"note": why, "decided_by": "sagastream"})
    else:
        run.step_failed(name, f"{why}, so rejected", "signal")


def _on_signal(run: _Run, fields: dict[str, Any]) -> None:
    """A human decision for a waiting step; anything that does not fit goes to the DLQ."""
    name, outcome = fields.get("step"), fields.get("outcome")
    spec = run.spec.steps.get(name) if isinstance(name, str) else None
    if (
        not isinstance(name, str)
        or spec is None
        or fields.get("saga_type") != run.saga_type
        or not spec.human
    ):
        run.out.dead_letter = (
            f"signal for {fields.get('saga_type')}/{name}: saga {run.s.key} is a "
            f"{run.saga_type} saga with no human step of that name"
        )
        return
    if outcome not in ("approved", "rejected"):
        run.out.dead_letter = f"signal outcome must be approved or rejected, not {outcome!r}"
        return
    st = run.s.steps[name]
    if st.status != STARTED:
        run.note(
            "signal_ignored", name
        )  # not waiting (yet, or any more): a late or repeated decision
        return
    note = fields.get("note") or ""
    if outcome == "approved":
        run.step_succeeded(name, {"note": note, "decided_by": fields.get("decided_by", "")})
    else:
        run.step_failed(
            name,
            f"rejected by {fields.get('decided_by', 'a person')}: {note}".rstrip(": "),
            "signal",
        )


def _used(fields: dict[str, Any], used: frozenset[str] | None) -> dict[str, Any]:
    """What the saga keeps of a source's fields: those its inputs, `when`s or key read."""
    return {k: v for k, v in fields.items() if used and k in used}


def saga_for(specs: dict[str, SagaSpec], event_type: str) -> tuple[str, SagaSpec] | None:
    """The saga an event type belongs to (start or result event)."""
    for name, spec in specs.items():
        if event_type == spec.start_event or _candidates(spec, event_type):
            return name, spec
    return None
