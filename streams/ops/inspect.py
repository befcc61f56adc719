"""Sagas as an operator sees them: the view `Client.describe` returns and `saga show` prints,
and the one-line summaries `Client.list_sagas` returns and `saga list` prints.

Pure: it turns a saga state (as the orchestrator's changelog holds it) and the saga's lifecycle
changes into a `SagaView` or a `SagaSummary`, and those into text or JSON. Reading them from
Kafka is the client's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sagastream.core.spans import trace_of
from sagastream.core.state import SagaState, StateHead, StepState
from sagastream.ops.terminal import printable

# lifecycle changes that begin or end a step's forward run and its compensation
_STARTS = "step_started"
_ENDS = frozenset({"step_succeeded", "step_failed"})
_UNDO_STARTS = "compensation_started"
_UNDO_ENDS = frozenset({"step_compensated", "compensation_failed"})


@dataclass(frozen=True)
class Change:
    """One lifecycle change: when it was recorded (ms), what happened, and to which step."""

    at_ms: int
    what: str
    step: str | None = None


@dataclass(frozen=True)
class TimerView:
    """An armed timer; `step` is None for the saga's deadline."""

    kind: str
    step: str | None
    attempt: int
    due_ms: int


@dataclass(frozen=True)
class StepView:
    """A step's state, its attempts and undo attempts, and when (ms) its runs started and ended."""

    name: str
    state: str
    attempts: int
    compensation_attempts: int
    started_ms: int | None = None
    ended_ms: int | None = None
    compensation_started_ms: int | None = None
    compensation_ended_ms: int | None = None


@dataclass(frozen=True)
class SagaView:
    """A saga's status, steps, pending timers and lifecycle history (times in epoch ms).

    Step and history times are those of the lifecycle records, written when the orchestrator
    commits (up to a commit interval after the decision); `started_ms` and `ended_ms` are the
    decisions' own. `history_complete` is False when reading the history hit its scan limit.
    """

    saga: str
    key: str
    partition: int
    status: str
    started_ms: int
    ended_ms: int | None
    reason: str | None
    failed_step: str | None
    steps: list[StepView]
    timers: list[TimerView]
    history: list[Change]
    history_complete: bool = True
    # when the orchestrator removes the ended saga from its store (its retention_ms)
    expires_ms: int | None = None
    # the definition's shape it runs on (None: a state from before shapes)
    shape: str | None = None
    # its trace's id (its start event's traceparent's, else derived from the saga)
    trace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SagaSummary:
    """One saga in a list: type, key, status, when it started and ended (ms), why it failed."""

    saga: str
    key: str
    partition: int
    status: str
    started_ms: int
    ended_ms: int | None
    failed_step: str | None
    reason: str | None
    # the definition's shape it runs on (None: a state from before shapes)
    shape: str | None = None


Summary = TypeVar("Summary", bound=SagaSummary)


@dataclass(frozen=True)
class SagaFilter:
    """Which sagas a list keeps: any of `statuses` (all if empty), of one type, started before."""

    statuses: frozenset[str] = frozenset()
    saga: str | None = None
    older_than_ms: int | None = None

    def keeps(self, summary: SagaSummary, now_ms: int) -> bool:
        return (
            (not self.statuses or summary.status in self.statuses)
            and (self.saga is None or summary.saga == self.saga)
            and (self.older_than_ms is None or now_ms - summary.started_ms >= self.older_than_ms)
        )


@dataclass(frozen=True)
class SagaList:
    """Matching sagas, oldest first and at most the limit; how many matched and were read."""

    sagas: list[SagaSummary]
    matched: int
    scanned: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_timers(timers: Mapping[str, int]) -> list[TimerView]:
    """The state's armed timers (`kind|step|attempt` -> due ms), soonest first."""
    out = []
    for name, due in timers.items():
        kind, step, attempt = name.split("|")
        out.append(TimerView(kind, step or None, int(attempt), int(due)))
    return sorted(out, key=lambda t: (t.due_ms, t.kind, t.step or ""))


def step_views(steps: Mapping[str, StepState], history: Iterable[Change]) -> list[StepView]:
    """Steps in the saga's order; a run's start is its first start, its end its last end."""
    times: dict[str, dict[str, int]] = {name: {} for name in steps}
    for change in history:
        slot = times.get(change.step or "")
        if slot is None:
            continue
        if change.what == _STARTS:
            slot.setdefault("started", change.at_ms)
        elif change.what in _ENDS:
            slot["ended"] = change.at_ms
        elif change.what == _UNDO_STARTS:
            slot.setdefault("undo_started", change.at_ms)
        elif change.what in _UNDO_ENDS:
            slot["undo_ended"] = change.at_ms
    return [
        StepView(
            name,
            st.status,
            st.attempt,
            st.undo_attempt,
            times[name].get("started"),
            times[name].get("ended"),
            times[name].get("undo_started"),
            times[name].get("undo_ended"),
        )
        for name, st in steps.items()
    ]


def build_view(
    saga: str,
    key: str,
    partition: int,
    state: SagaState,
    history: list[Change],
    history_complete: bool = True,
) -> SagaView:
    """The view of a saga state and its history."""
    return SagaView(
        saga=saga,
        key=key,
        partition=partition,
        status=state.status,
        started_ms=state.started,
        ended_ms=state.ended,
        reason=state.reason,
        failed_step=state.failed_step,
        steps=step_views(state.steps, history),
        timers=parse_timers(state.timers),
        history=history,
        history_complete=history_complete,
        expires_ms=state.expires,
        shape=state.shape,
        trace_id=trace_of(state)[0],
    )


def summarize(
    key: str,
    partition: int,
    state: SagaState | StateHead,
    # mypy cannot tell the default kind is one of the kinds the TypeVar allows
    kind: type[Summary] = SagaSummary,  # type: ignore[assignment]
    **more: Any,
) -> Summary:
    """The summary of a saga state, whole or only its head (`decode_head`): a SagaSummary, or
    of a kind that adds fields to it, given in `more`."""
    return kind(
        saga=state.saga,
        key=key,
        partition=partition,
        status=state.status,
        started_ms=state.started,
        ended_ms=state.ended,
        failed_step=state.failed_step,
        reason=state.reason,
        shape=state.shape,
        **more,
    )


def oldest_first(summaries: Iterable[SagaSummary], limit: int | None, scanned: int) -> SagaList:
    """The list of these sagas: oldest first, cut at `limit`."""
    ordered = sorted(summaries, key=lambda s: (s.started_ms, s.saga, s.key))
    return SagaList(ordered[:limit] if limit is not None else ordered, len(ordered), scanned)


def view_json(view: SagaView) -> str:
    return json.dumps(view.to_dict(), indent=2)


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _since(ms: int | None, origin: int) -> str:
    return "-" if ms is None else f"+{(ms - origin) / 1000:.3f}s"


def _until(due_ms: int, now_ms: int) -> str:
    left = (due_ms - now_ms) / 1000
    return f"in {left:.1f}s" if left >= 0 else f"{-left:.1f}s overdue"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned columns; cells hold user data (keys, reasons), escaped for the terminal."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def format_view(view: SagaView, now_ms: int) -> list[str]:
    """A readable report; step and history times are counted from the saga's start."""
    origin = view.started_ms
    lines = [
        f"saga     {view.saga} {printable(view.key)} (partition {view.partition})",
        f"status   {view.status}",
        f"started  {_clock(origin)}",
    ]
    if view.ended_ms is not None:
        lines.append(f"ended    {_clock(view.ended_ms)} ({_since(view.ended_ms, origin)})")
        if view.expires_ms is not None:
            left = view.expires_ms - now_ms
            when = f"in {age(left)}" if left > 0 else "due now"
            lines.append(f"removed  {_clock(view.expires_ms)} ({when}, its retention)")
    else:
        lines.append(f"running  for {(now_ms - origin) / 1000:.1f}s")
    if view.failed_step:
        lines.append(f"failed   {printable(view.failed_step)}")
    if view.reason:
        lines.append(f"reason   {printable(view.reason)}")
    lines += ["", "steps (times from the start, as committed)"]
    lines += _table(
        ["step", "state", "attempts", "undo attempts", "started", "ended", "undo", "undone"],
        [
            [
                s.name,
                s.state,
                str(s.attempts),
                str(s.compensation_attempts),
                _since(s.started_ms, origin),
                _since(s.ended_ms, origin),
                _since(s.compensation_started_ms, origin),
                _since(s.compensation_ended_ms, origin),
            ]
            for s in view.steps
        ],
    )
    lines += ["", "pending timers" + ("" if view.timers else ": none")]
    if view.timers:
        lines += _table(
            ["timer", "step", "attempt", "due"],
            [
                [
                    t.kind,
                    t.step or "-",
                    str(t.attempt),
                    f"{_clock(t.due_ms)} ({_until(t.due_ms, now_ms)})",
                ]
                for t in view.timers
            ],
        )
    lines += ["", f"history ({len(view.history)} changes)"]
    lines += _table(
        ["after", "what", "step"],
        [[_since(c.at_ms, origin), c.what, c.step or ""] for c in view.history],
    )
    if not view.history_complete:
        lines.append("  ... (stopped at the scan limit; later changes are not shown)")
    return lines


def age(ms: int) -> str:
    """A duration in its two largest units: 45s, 12m03s, 5h07m, 3d04h."""
    seconds = max(0, ms) // 1000
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hrs = divmod(hours, 24)
    if days:
        return f"{days}d{hrs:02d}h"
    if hours:
        return f"{hours}h{mins:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _why(summary: SagaSummary) -> str:
    """The failed step and the reason, once each (a step's reason begins with its name)."""
    step, reason = summary.failed_step, summary.reason
    if not reason:
        return step or ""
    return f"{step}: {reason}" if step and not reason.startswith(f"{step}: ") else reason


def format_list(listing: SagaList, now_ms: int) -> list[str]:
    """One line per saga, oldest first, and a last line saying how many matched and were read."""
    rows = [
        [s.saga, s.key, s.status, _clock(s.started_ms), age(now_ms - s.started_ms), _why(s)]
        for s in listing.sagas
    ]
    lines = _table(["saga", "key", "status", "started", "age", "failed"], rows) if rows else []
    count = f"{listing.matched} saga{'' if listing.matched == 1 else 's'}"
    if len(rows) < listing.matched:
        count = f"the oldest {len(rows)} of {count}"
    return [*lines, f"{count} (read {listing.scanned} changelog records)"]
