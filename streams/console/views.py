"""What the console's pages show, computed from what the readers return: the overview's counts
per minute, latency percentiles and running sagas per saga type; the sagas page's filtering and
paging; the version a saga runs on.

Pure: summaries (the console's index's, `saga list`'s), outcome records and definitions in,
rows out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sagastream.core.state import TERMINAL
from sagastream.ops.inspect import SagaSummary

MINUTE_MS = 60_000
WINDOW_MINUTES = 60
# an outcome event's type, and the status it ends a saga in
OUTCOME_STATUS = {
    "SagaCompleted": "completed",
    "SagaCompensated": "compensated",
    "SagaFailed": "failed",
}
SERIES = ("started", "completed", "compensated", "failed")


@dataclass(frozen=True)
class Outcome:
    """One record of an outcome topic: the saga type, its outcome event and when it was written."""

    saga: str
    event_type: str
    at_ms: int


@dataclass(frozen=True)
class TypeOverview:
    """One saga type over the window: counts per minute (oldest first) and in all, end-to-end
    latency percentiles (ms) of the sagas that ended in it, the sagas running now and the age
    (ms) of the oldest."""

    saga: str
    per_minute: dict[str, list[int]]
    totals: dict[str, int]
    latency_ms: dict[str, int | None]
    running: int
    oldest_running_ms: int | None


def minute_of(at_ms: int, now_ms: int, minutes: int) -> int | None:
    """The bucket of `at_ms` among the last `minutes` whole minutes up to now (the last is the
    minute now is in); None outside them."""
    back = (now_ms // MINUTE_MS) - (at_ms // MINUTE_MS)
    return None if back < 0 or back >= minutes else minutes - 1 - back


def percentile(values: Sequence[int], q: float) -> int | None:
    """The nearest-rank percentile `q` (0-100) of the values; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class _Tally:
    """One saga type's numbers while the records are counted."""

    per_minute: dict[str, list[int]]
    latencies: list[int] = field(default_factory=list)
    running: int = 0
    oldest_start: int | None = None


def overview(
    saga_types: Iterable[str],
    summaries: Iterable[SagaSummary],
    outcomes: Iterable[Outcome],
    now_ms: int,
    minutes: int = WINDOW_MINUTES,
) -> list[TypeOverview]:
    """Per saga type: starts (from the states), outcomes (from the outcome topics) per minute;
    latency of the sagas that ended in the window; running sagas and the oldest one's age."""
    tallies: dict[str, _Tally] = {
        name: _Tally({s: [0] * minutes for s in SERIES}) for name in saga_types
    }

    def tally(saga: str) -> _Tally:
        found = tallies.get(saga)  # made only when missing: this runs for every saga held
        if found is None:
            found = tallies[saga] = _Tally({s: [0] * minutes for s in SERIES})
        return found

    for summary in summaries:
        _count_state(tally(summary.saga), summary, now_ms, minutes)
    for outcome in outcomes:
        status = OUTCOME_STATUS.get(outcome.event_type)
        bucket = minute_of(outcome.at_ms, now_ms, minutes)
        if status is not None and bucket is not None:
            tally(outcome.saga).per_minute[status][bucket] += 1
    return [_finish(name, t, now_ms) for name, t in tallies.items()]


def _count_state(t: _Tally, summary: SagaSummary, now_ms: int, minutes: int) -> None:
    started = minute_of(summary.started_ms, now_ms, minutes)
    if started is not None:
        t.per_minute["started"][started] += 1
    if summary.status not in TERMINAL:
        t.running += 1
        if t.oldest_start is None or summary.started_ms < t.oldest_start:
            t.oldest_start = summary.started_ms
    elif summary.ended_ms is not None and minute_of(summary.ended_ms, now_ms, minutes) is not None:
        t.latencies.append(summary.ended_ms - summary.started_ms)


def _finish(saga: str, t: _Tally, now_ms: int) -> TypeOverview:
    return TypeOverview(
        saga=saga,
        per_minute=t.per_minute,
        totals={s: sum(counts) for s, counts in t.per_minute.items()},
        latency_ms={f"p{q}": percentile(t.latencies, q) for q in (50, 95, 99)},
        running=t.running,
        oldest_running_ms=None if t.oldest_start is None else now_ms - t.oldest_start,
    )


@dataclass(frozen=True)
class IndexedSaga(SagaSummary):
    """A saga as the console's index keeps it: its summary, when its state was last written
    (the changelog record's time) and the human steps it waits at; and its place in each of
    SORTS, made once when it is indexed rather than at every sort of every saga held."""

    updated_ms: int = 0
    waiting: tuple[str, ...] = ()
    places: tuple[Place, Place, Place] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        places = (
            (self.started_ms, self.saga, self.key),
            (-self.started_ms, self.saga, self.key),
            (-self.updated_ms, self.saga, self.key),
        )
        object.__setattr__(self, "places", places)


Place = tuple[int, str, str]
# the sagas page's orders, each a position in IndexedSaga.places (ties: by type and key)
SORTS = {"oldest": 0, "newest": 1, "updated": 2}


@dataclass(frozen=True)
class SagaQuery:
    """The sagas page's filters (empty: any), order and page. `key` matches a part of the key;
    `version` a version number (`2` or `v2`) or the start of a shape; `waiting` keeps the
    sagas waiting for a person; `sort` is one of SORTS."""

    saga: str = ""
    status: str = ""
    key: str = ""
    older_than_ms: int | None = None
    version: str = ""
    waiting: bool = False
    sort: str = "oldest"
    page: int = 1
    size: int = 50


@dataclass(frozen=True)
class SagaPage:
    """One page of the matching sagas, in the query's order, and how many matched in all."""

    rows: list[IndexedSaga]
    matched: int
    page: int
    pages: int


def version_matches(wanted: str, shape: str | None, versions: Mapping[str, int]) -> bool:
    """Whether a saga on `shape` runs on the version `wanted` (a number, or a shape's start)."""
    if not wanted:
        return True
    number = wanted.lower().removeprefix("v")
    if number.isdigit():
        return shape is not None and versions.get(shape) == int(number)
    return shape is not None and shape.startswith(wanted)


def page_of(
    sagas: Iterable[IndexedSaga], query: SagaQuery, versions: Mapping[str, int], now_ms: int
) -> SagaPage:
    """The query's page of the sagas, in its order; `versions` maps a shape to its version
    number. The cheapest tests come first: this runs over every saga the index holds."""
    saga, status, key, older = query.saga, query.status, query.key, query.older_than_ms
    version = query.version
    kept = [
        s
        for s in sagas
        if (not saga or s.saga == saga)
        and (not status or s.status == status)
        and (not query.waiting or s.waiting)
        and (not key or key in s.key)
        and (older is None or now_ms - s.started_ms >= older)
        and (not version or version_matches(version, s.shape, versions))
    ]
    place = SORTS[query.sort]
    kept.sort(key=lambda s: s.places[place])
    pages = max(1, math.ceil(len(kept) / query.size))
    page = min(max(1, query.page), pages)
    first = (page - 1) * query.size
    return SagaPage(kept[first : first + query.size], len(kept), page, pages)
