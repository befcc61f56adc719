"""Where things go on the console's pictures: a saga definition's DAG in layers, and one saga's
Gantt timeline of runs, retry waits, human waits and compensations, one lane per step.

Pure: a definition's dependencies and a saga's lifecycle changes in, positions and bars out.
Drawing them is `svg.py`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sagastream.ops.inspect import Change

# a lifecycle change that ends a step's forward run, and what the bar says of it
_RUN_ENDS = {
    "step_succeeded": "succeeded",
    "step_failed": "failed",
    "step_expired": "expired",
    "step_cancelled": "cancelled",
}
_UNDO_ENDS = {"step_compensated": "compensated", "compensation_failed": "compensation failed"}
# changes drawn as a mark on the step's lane rather than as a bar
_MARKS = frozenset({"step_escalated", "step_skipped"})


@dataclass(frozen=True)
class Node:
    """A step placed on the DAG: its layer (column, by longest dependency path) and row."""

    name: str
    layer: int
    row: int


@dataclass(frozen=True)
class DagLayout:
    """Every step placed, and each dependency as an edge (from the step depended on)."""

    nodes: list[Node]
    edges: list[tuple[str, str]]

    @property
    def layers(self) -> int:
        return 1 + max((n.layer for n in self.nodes), default=-1)

    @property
    def rows(self) -> int:
        return 1 + max((n.row for n in self.nodes), default=-1)


def layer_of(depends_on: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each step's layer: 0 for a step that depends on none, else one past its deepest
    dependency (so steps that may run in parallel share a layer)."""
    found: dict[str, int] = {}

    def depth(step: str, path: tuple[str, ...]) -> int:
        if step in found:
            return found[step]
        if step in path:  # topology validation refuses cycles; this keeps a bad one finite
            return 0
        parents = [p for p in depends_on.get(step, ()) if p in depends_on]
        found[step] = 1 + max((depth(p, (*path, step)) for p in parents), default=-1)
        return found[step]

    for step in depends_on:
        depth(step, ())
    return found


def dag_layout(depends_on: Mapping[str, Sequence[str]]) -> DagLayout:
    """Steps in layers left to right, each layer's steps top to bottom in declaration order."""
    layers = layer_of(depends_on)
    rows: dict[int, int] = {}
    nodes = []
    for step in depends_on:
        layer = layers[step]
        nodes.append(Node(step, layer, rows.get(layer, 0)))
        rows[layer] = rows.get(layer, 0) + 1
    edges = [(p, step) for step, parents in depends_on.items() for p in parents if p in layers]
    return DagLayout(nodes, edges)


def lane_order(depends_on: Mapping[str, Sequence[str]]) -> list[str]:
    """The steps as the timeline stacks them: by layer, then in declaration order."""
    layers = layer_of(depends_on)
    return sorted(depends_on, key=lambda step: layers[step])


@dataclass(frozen=True)
class Bar:
    """One span on a step's lane. `kind`: run, wait (a human step's), retry_wait, compensation
    or undo_wait; `attempt` counts runs (or undo runs) of the step; `open` when it had not
    ended at the timeline's end; `result` what ended it."""

    step: str
    kind: str
    attempt: int
    start_ms: int
    end_ms: int
    open: bool = False
    result: str = ""


@dataclass(frozen=True)
class Mark:
    """A moment on a step's lane: escalated, skipped."""

    step: str
    what: str
    at_ms: int


@dataclass(frozen=True)
class Timeline:
    """A saga's bars and marks on lanes, from its start to its end (or now, if running)."""

    origin_ms: int
    end_ms: int
    lanes: list[str]
    bars: list[Bar]
    marks: list[Mark] = field(default_factory=list)

    @property
    def span_ms(self) -> int:
        return max(1, self.end_ms - self.origin_ms)


@dataclass
class _Lane:
    """A step's bar being drawn while the changes are read."""

    runs: int = 0
    undos: int = 0
    kind: str = ""
    attempt: int = 0
    since: int = 0


class _Builder:
    """Reads lifecycle changes in order and closes each open bar at the change that ends it."""

    def __init__(self, human: frozenset[str]) -> None:
        self.human = human
        self.lanes: dict[str, _Lane] = {}
        self.bars: list[Bar] = []
        self.marks: list[Mark] = []

    def take(self, change: Change) -> None:
        step, what, at = change.step, change.what, change.at_ms
        if step is None:
            return
        lane = self.lanes.setdefault(step, _Lane())
        if what == "step_started":
            self._close(step, lane, at, "")
            lane.runs += 1
            self._open(lane, "wait" if step in self.human else "run", lane.runs, at)
        elif what == "compensation_started":
            self._close(step, lane, at, "")
            lane.undos += 1
            self._open(lane, "compensation", lane.undos, at)
        elif what == "step_retry_scheduled":
            self._close(step, lane, at, "retry")
            self._open(lane, "retry_wait", lane.runs, at)
        elif what == "compensation_retry_scheduled":
            self._close(step, lane, at, "retry")
            self._open(lane, "undo_wait", lane.undos, at)
        elif what in _RUN_ENDS or what in _UNDO_ENDS:
            self._close(step, lane, at, _RUN_ENDS.get(what) or _UNDO_ENDS[what])
        elif what in _MARKS:
            self.marks.append(Mark(step, what.removeprefix("step_"), at))

    def _open(self, lane: _Lane, kind: str, attempt: int, at: int) -> None:
        lane.kind, lane.attempt, lane.since = kind, attempt, at

    def _close(self, step: str, lane: _Lane, at: int, result: str, open_: bool = False) -> None:
        if lane.kind:
            self.bars.append(Bar(step, lane.kind, lane.attempt, lane.since, at, open_, result))
            lane.kind = ""

    def finish(self, end_ms: int) -> None:
        """Bars still open at the end run to it, marked open."""
        for step, lane in self.lanes.items():
            self._close(step, lane, max(end_ms, lane.since), "", open_=True)


def timeline(
    history: Iterable[Change],
    lanes: Sequence[str],
    human: Iterable[str],
    origin_ms: int,
    end_ms: int,
) -> Timeline:
    """The timeline of a saga's lifecycle changes: `lanes` in order (steps the history names
    but `lanes` lacks, say of another version, come after), human steps' runs drawn as
    waits, and what is still open at `end_ms` (its end, or now) drawn up to it."""
    builder = _Builder(frozenset(human))
    changes = list(history)
    for change in changes:
        builder.take(change)
    builder.finish(end_ms)
    named = list(dict.fromkeys(c.step for c in changes if c.step is not None))
    order = [*lanes, *(s for s in named if s not in lanes)]
    bars = sorted(builder.bars, key=lambda b: (order.index(b.step), b.start_ms))
    last = max([end_ms, *(b.end_ms for b in bars)])
    return Timeline(origin_ms, last, order, bars, builder.marks)
