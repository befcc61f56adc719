"""The migration planner: can a running saga move from one version of its definition to another,
and what would each of its steps be there (`sagastream saga migrate`, docs/versioning.md).

Pure: the two definitions, a mapping of old step names to new ones, and the instance's steps
(status, attempt, undo attempt, as the saga state keeps them) in; a MigrationPlan out. Steps of
the same name map to each other unless the mapping says otherwise. A new step nothing maps to
starts pending; one whose dependencies are all done is ready, and the orchestrator starts it
after the move. The plan refuses (its `blockers`) what would strand or corrupt the instance:
an attempt in flight, a retry or an undo that the new version has no step for, or renames; a
side effect the new version could no longer undo; data a step still to run reads that the
instance never kept; a mapping naming unknown steps; a saga that is not running.

`repin` applies a plan to a state (the orchestrator's half of a `SagaMigrate` event): it plans
again with the state as it is now, and moves it or says why not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sagastream.core.saga import (
    CANCELLED,
    PENDING,
    RUNNING,
    SEEN_LIMIT,
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
    carry_on,
)
from sagastream.core.state import SagaState, StepState, seen_digest
from sagastream.core.topology import START, SagaSpec, StepSpec
from sagastream.errors import UsageError

STATUSES = (
    PENDING,
    STARTED,
    WAITING_RETRY,
    SUCCEEDED,
    STEP_FAILED,
    SKIPPED,
    CANCELLED,
    UNDOING,
    UNDONE,
    UNDO_FAILED,
)
# a step in one of these is waiting for something that names it: an answer, a retry, an undo
IN_FLIGHT = (STARTED, WAITING_RETRY, UNDOING)
DONE = (SUCCEEDED, SKIPPED)  # what a dependency must be for its dependants to start
# (status, attempt, undo attempt) of one step, as the saga state keeps it
StepStatus = tuple[str, int, int]


@dataclass(frozen=True)
class StepPlan:
    """One step of the new version as the instance would have it after the move."""

    step: str
    source: str | None  # the old step it takes over; None: new in this version
    status: str
    attempt: int
    undo_attempt: int
    ready: bool  # pending and every dependency done: the orchestrator starts it after the move

    def describe(self) -> str:
        if self.source is None:
            where = "new"
        elif self.source == self.step:
            where = "kept"
        else:
            where = f"was {self.source}"
        state = f"{self.status}, attempt {self.attempt}"
        if self.undo_attempt:
            state += f", undo attempt {self.undo_attempt}"
        return f"{self.step} ({where}): {state}" + (": ready, starts" if self.ready else "")


@dataclass(frozen=True)
class MigrationPlan:
    """What one instance would be on the new version, and why it cannot move (if it cannot)."""

    steps: tuple[StepPlan, ...]  # every step of the new version, in its order
    mapping: dict[str, str]  # old step -> new step, for every old step with a counterpart
    dropped: tuple[str, ...]  # old steps with no counterpart that the instance can leave behind
    blockers: tuple[str, ...]  # why it cannot move; empty: it can
    notes: tuple[str, ...] = field(default=())  # what moves but an operator should know

    @property
    def can_move(self) -> bool:
        return not self.blockers

    @property
    def renamed(self) -> dict[str, str]:
        """Old step -> new name, for the steps whose name changes: their data, timers and the
        completion order move to the new name."""
        return {old: new for old, new in self.mapping.items() if old != new}

    def describe(self) -> list[str]:
        """The dry run's lines for one instance."""
        lines = [f"  {s.describe()}" for s in self.steps]
        lines += [f"  {step}: left behind (not in the new version)" for step in self.dropped]
        lines += [f"  note: {n}" for n in self.notes]
        if self.blockers:
            return ["cannot move:", *(f"  - {b}" for b in self.blockers), *lines]
        return ["can move:", *lines]


def plan(
    old: SagaSpec,
    new: SagaSpec,
    mapping: Mapping[str, str],
    steps: Mapping[str, StepStatus],
    *,
    status: str = RUNNING,
) -> MigrationPlan:
    """The plan for one instance of `old` with these `steps` (old step -> (status, attempt,
    undo attempt)) and saga `status`, moved to `new` with `mapping` (old step -> new step; steps
    of the same name map to each other unless named here)."""
    blockers = _bad_mapping(old, new, mapping) + _bad_steps(old, steps)
    if status != RUNNING:
        blockers.append(
            f"the saga is {status}: only a running saga moves (one that compensates or has "
            "ended finishes on its own version)"
        )
    if blockers:
        return MigrationPlan((), {}, (), tuple(blockers))
    moves = {o: mapping.get(o, o) for o in old.steps if mapping.get(o, o) in new.steps}
    blockers += _collisions(moves)
    if blockers:
        return MigrationPlan((), moves, (), tuple(blockers))
    dropped, blocked = _left_behind(old, steps, moves)
    blockers += blocked
    taken = {n: o for o, n in moves.items()}
    planned = _new_steps(new, steps, taken)
    blockers += _changed_under_way(old, new, steps, moves)
    blockers += _unkept_data(old, new, planned, taken)
    notes = _notes(old, new, steps, moves, planned)
    return MigrationPlan(tuple(planned.values()), moves, dropped, tuple(blockers), notes)


def parse_mapping(pairs: Iterable[str]) -> dict[str, str]:
    """`--map old=new` options as a mapping; a malformed or repeated one is a usage error."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        source, sep, target = (part.strip() for part in pair.partition("="))
        if not sep or not source or not target:
            raise UsageError(f"--map {pair!r}: write OLD_STEP=NEW_STEP, e.g. --map shipping=ship")
        if source in mapping:
            raise UsageError(
                f"--map names step {source} twice ({source}={mapping[source]}, {pair})"
            )
        mapping[source] = target
    return mapping


MIGRATE_CHANGE = "migrated"  # the lifecycle change a move records


def repin(
    saga_type: str, old: SagaSpec, new: SagaSpec | None, state: SagaState, event: Event, now: int
) -> Decision:
    """A `SagaMigrate` event applied to the stored `state` (decided by `old`): planned again
    with the state as it is now, and moved to `new` (the event's to_shape; None: not recorded),
    or refused with why (the orchestrator dead-letters it). A redelivered one is a duplicate."""
    digest = seen_digest(event.event_id)
    if digest in state.seen:
        return Decision(None, duplicate=True)
    fields = event.fields
    refused = _refusal(saga_type, old, new, state, fields)
    if refused is None and new is not None:
        steps = {n: (s.status, s.attempt, s.undo_attempt) for n, s in state.steps.items()}
        found = plan(old, new, fields.get("mapping") or {}, steps, status=state.status)
        if found.can_move:
            moved = _moved(state, new, found)
            moved.seen.append(digest)
            del moved.seen[:-SEEN_LIMIT]
            return carry_on(saga_type, new, moved, now, MIGRATE_CHANGE)
        refused = "; ".join(found.blockers)
    where = f"{saga_type} {state.key} from {fields.get('from_shape')} to {fields.get('to_shape')}"
    return Decision(None, dead_letter=f"cannot migrate saga {where}: {refused}")


def _refusal(
    saga_type: str,
    old: SagaSpec,
    new: SagaSpec | None,
    state: SagaState,
    fields: Mapping[str, object],
) -> str | None:
    """Why the event does not fit the instance as it is now, before any plan."""
    if fields.get("saga_type") != saga_type:
        return f"the event is for saga {fields.get('saga_type')}, the instance is a {saga_type}"
    if fields.get("from_shape") != old.shape:
        return (
            f"the instance is on shape {old.shape} now, not {fields.get('from_shape')} (it moved "
            "since the dry run): run the dry run again"
        )
    if new is None:
        return f"no definition of shape {fields.get('to_shape')} is recorded for {saga_type}"
    return None


def _moved(state: SagaState, new: SagaSpec, found: MigrationPlan) -> SagaState:
    """A copy of `state` on `new`: its steps as planned; the data, timers, completion order and
    undone list of each renamed step under its new name; what belongs to dropped steps gone."""
    moves = found.mapping
    s = state.copy()
    s.shape = new.shape
    s.steps = {p.step: _step_moved(state, p) for p in found.steps}
    s.data = {
        (source if source == START else moves[source]): fields
        for source, fields in state.data.items()
        if source == START or source in moves
    }
    s.order = [moves[n] for n in state.order if n in moves]
    s.undone = [moves[n] for n in state.undone if n in moves]
    s.timers = {}
    for key, due in state.timers.items():
        kind, step, attempt = key.split("|")
        if not step:  # the saga's own (its deadline)
            s.timers[key] = due
        elif step in moves:
            s.timers[f"{kind}|{moves[step]}|{attempt}"] = due
    if s.failed_step is not None and s.failed_step in moves:
        s.failed_step = moves[s.failed_step]
    return s


def _bad_mapping(old: SagaSpec, new: SagaSpec, mapping: Mapping[str, str]) -> list[str]:
    out = []
    for source, target in mapping.items():
        if source not in old.steps:
            out.append(
                f"the mapping names {source}={target}, but {source} is no step of the old "
                f"version (its steps: {', '.join(old.steps)})"
            )
        if target not in new.steps:
            out.append(
                f"the mapping names {source}={target}, but {target} is no step of the new "
                f"version (its steps: {', '.join(new.steps)})"
            )
    return out


def _bad_steps(old: SagaSpec, steps: Mapping[str, StepStatus]) -> list[str]:
    """The instance's steps must be the old version's, each in a status the saga core has."""
    out = []
    unknown = [s for s in steps if s not in old.steps]
    missing = [s for s in old.steps if s not in steps]
    if unknown or missing:
        out.append(
            f"the instance's steps ({', '.join(steps)}) are not those of the old version "
            f"({', '.join(old.steps)}): is it on that version?"
        )
    for name, (status, _, _) in steps.items():
        if status not in STATUSES:
            out.append(f"step {name} has status {status!r}, not one of {', '.join(STATUSES)}")
    return out


def _step_moved(state: SagaState, planned: StepPlan) -> StepState:
    """A step as planned, with its old step's times (its spans and durations go on)."""
    old = state.steps.get(planned.source) if planned.source is not None else None
    step = StepState() if old is None else old.copy()
    step.status, step.attempt, step.undo_attempt = (
        planned.status,
        planned.attempt,
        planned.undo_attempt,
    )
    return step


def _collisions(moves: dict[str, str]) -> list[str]:
    by_target: dict[str, list[str]] = {}
    for source, target in moves.items():
        by_target.setdefault(target, []).append(source)
    return [
        f"steps {' and '.join(sources)} would both become {target}: map one of them elsewhere"
        for target, sources in by_target.items()
        if len(sources) > 1
    ]


def _left_behind(
    old: SagaSpec, steps: Mapping[str, StepStatus], moves: dict[str, str]
) -> tuple[tuple[str, ...], list[str]]:
    """Old steps with no counterpart: those the instance may leave, and why others may not."""
    dropped, blockers = [], []
    for name, (status, attempt, undo) in steps.items():
        if name in moves:
            continue
        comp = old.steps[name].compensation
        if status in IN_FLIGHT:
            what = _in_flight(status, attempt, undo)
            blockers.append(
                f"step {name} is {what} and has no counterpart in the new version: what it "
                f"waits for would belong to no step; wait until it ends, or map it "
                f"(--map {name}=STEP)"
            )
        elif status == SUCCEEDED and comp is not None:
            blockers.append(
                f"step {name} succeeded and its compensation ({comp.command}) would be "
                "dropped: the new version has no step to undo it with; map it to a step "
                "with a compensation"
            )
        else:
            dropped.append(name)
    return tuple(dropped), blockers


def _in_flight(status: str, attempt: int, undo: int) -> str:
    if status == STARTED:
        return f"running (attempt {attempt})"
    if status == WAITING_RETRY:
        return f"waiting to retry (after attempt {attempt})"
    return f"compensating (undo attempt {undo})"


def _new_steps(
    new: SagaSpec, steps: Mapping[str, StepStatus], taken: dict[str, str]
) -> dict[str, StepPlan]:
    """Each new step with the status of the old step it takes over, or pending; then which of
    the pending ones are ready."""
    status = {n: steps[taken[n]] if n in taken else (PENDING, 0, 0) for n in new.steps}
    planned = {}
    for name, spec in new.steps.items():
        st, attempt, undo = status[name]
        ready = st == PENDING and all(status[d][0] in DONE for d in spec.depends_on)
        planned[name] = StepPlan(name, taken.get(name), st, attempt, undo, ready)
    return planned


def _changed_under_way(
    old: SagaSpec, new: SagaSpec, steps: Mapping[str, StepStatus], moves: dict[str, str]
) -> list[str]:
    """A mapped step whose counterpart could not take what it waits for or must undo."""
    out = []
    for source, target in moves.items():
        was, now = old.steps[source], new.steps[target]
        status, attempt, undo = steps[source]
        if source != target and status in IN_FLIGHT:
            # what answers it (a result, a timer, an undo) names the old step, which the moved
            # instance no longer has: the smallest sound rule is to wait for it to end
            out.append(
                f"step {source} is {_in_flight(status, attempt, undo)} and the new version "
                f"renames it to {target}: what answers it names {source}; wait until it ends"
            )
        if status == STARTED:
            out += _answer_fits(source, target, was, now)
        comp = was.compensation
        if status == SUCCEEDED and comp is not None and now.compensation is None:
            out.append(
                f"step {source} succeeded and its compensation ({comp.command}) would be "
                f"dropped: {target} has none in the new version"
            )
    return out


def _answer_fits(source: str, target: str, was: StepSpec, now: StepSpec) -> list[str]:
    """An attempt in flight is answered by the old step's results: the new step must take them."""
    if was.human != now.human:
        who = "a person's decision" if was.human else f"an answer to {was.command}"
        return [f"step {source} is running and waits for {who}, which {target} does not take"]
    unknown = [e for e in (was.success, *was.failure) if e and e not in (now.success, *now.failure)]
    if not unknown:
        return []
    return [
        f"step {source} is running and its answer ({', '.join(unknown)}) is no result of "
        f"{target} in the new version; wait until the attempt ends"
    ]


def _unkept_data(
    old: SagaSpec, new: SagaSpec, planned: dict[str, StepPlan], taken: dict[str, str]
) -> list[str]:
    """Fields the new version still reads from the start event or a step that already
    succeeded, which the instance did not keep (its state keeps what the old version uses)."""
    out = []
    for reader, source, name in _reads_to_come(new, planned):
        if source == START:
            kept = old.used_fields.get(START, frozenset())
        elif planned[source].status == SUCCEEDED:
            kept = old.used_fields.get(taken[source], frozenset())
        else:
            continue  # its result is still to come, and kept by what the new version uses
        if name not in kept:
            out.append(
                f"{reader} reads {source}.{name}, which this saga did not keep (the old "
                "version does not use it)"
            )
    return list(dict.fromkeys(out))


def _reads_to_come(new: SagaSpec, planned: dict[str, StepPlan]) -> list[tuple[str, str, str]]:
    """(who reads, source, field) for every read still to happen in the new version: commands
    of steps yet to start or retry, conditions of steps yet to start, the compensations of
    steps that may yet be undone, and the notifications at the end."""
    reads: list[tuple[str, str, str]] = []
    for name, spec in new.steps.items():
        status = planned[name].status
        if status in (PENDING, STARTED, WAITING_RETRY):
            reads += [(f"step {name}", s, f) for _, s, f in spec.bindings]
        if status == PENDING and spec.condition is not None:
            reads += [(f"the when of {name}", s, f) for s, f in spec.condition.references]
        if spec.compensation and status in (PENDING, STARTED, WAITING_RETRY, SUCCEEDED):
            reads += [
                (f"the compensation of {name}", s, f) for _, s, f in spec.compensation.bindings
            ]
    if new.notify is not None:
        reads += [("notify", s, f) for _, s, f in new.notify.bindings]
        for rule in new.notify.rules:
            refs = rule.condition.references if rule.condition else ()
            reads += [(f"notify rule {rule.channel}", s, f) for s, f in refs]
    return [(who, source, name) for who, source, name in reads if source in (START, *planned)]


def _notes(
    old: SagaSpec,
    new: SagaSpec,
    steps: Mapping[str, StepStatus],
    moves: dict[str, str],
    planned: dict[str, StepPlan],
) -> tuple[str, ...]:
    """What moves, but not quite as the new version would have run it."""
    notes = []
    for source, target in moves.items():
        status, attempt, _ = steps[source]
        limit = new.steps[target].retry.max_attempts
        fewer = limit < old.steps[source].retry.max_attempts
        if fewer and status in (STARTED, WAITING_RETRY) and attempt >= limit:
            notes.append(
                f"{target} allows {limit} attempts and {source} has made {attempt}: the "
                "running one is its last"
            )
    for name, step in planned.items():
        early = [d for d in new.steps[name].depends_on if planned[d].status not in DONE]
        if step.status in (SUCCEEDED, STARTED, WAITING_RETRY) and early:
            did = {SUCCEEDED: "succeeded", STARTED: "started", WAITING_RETRY: "started"}
            notes.append(
                f"{name} {did[step.status]} before {', '.join(early)}, which the new version "
                "runs first"
            )
    if all(s.status in DONE for s in planned.values()):
        notes.append("every step is done: the saga completes as it moves")
    return tuple(notes)
