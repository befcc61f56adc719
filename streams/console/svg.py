"""The console's pictures as inline SVG, drawn on the server: a DAG with each step coloured by
its state, and a Gantt timeline. Every name drawn is escaped here (the pages put the SVG in as
markup); the colours are CSS classes of static/console.css.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

from sagastream.console.layout import Bar, DagLayout, Timeline

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 150, 34, 60, 18, 10
LABEL_W, PLOT_W, LANE_H, AXIS_H = 150, 640, 24, 22
TICKS = 5
# room right of the plot for the last tick's label
AXIS_LABEL_W = 60


def _text(x: float, y: float, text: str, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}"{klass}>{escape(text)}</text>'


def _node_box(layer: int, row: int) -> tuple[int, int]:
    return PAD + layer * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y)


def dag_svg(layout: DagLayout, states: Mapping[str, str] | None = None) -> Markup:
    """The DAG, left to right; a step's box has the class `state-<its state>` (`state-none`
    without one), and its title says the state."""
    states = states or {}
    where = {n.name: _node_box(n.layer, n.row) for n in layout.nodes}
    width = PAD * 2 + layout.layers * NODE_W + max(0, layout.layers - 1) * GAP_X
    height = PAD * 2 + layout.rows * NODE_H + max(0, layout.rows - 1) * GAP_Y
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
    ]
    for parent, child in layout.edges:
        (x1, y1), (x2, y2) = where[parent], where[child]
        parts.append(
            f'<line class="edge" x1="{x1 + NODE_W}" y1="{y1 + NODE_H / 2}" '
            f'x2="{x2}" y2="{y2 + NODE_H / 2}"/>'
        )
    for node in layout.nodes:
        x, y = where[node.name]
        state = states.get(node.name, "none")
        parts.append(
            f'<g class="step state-{escape(state)}"><title>{escape(node.name)}: '
            f'{escape(state)}</title><rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" '
            f'rx="6"/>{_text(x + 8, y + 21, node.name)}</g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _seconds(ms: int) -> str:
    return f"+{ms / 1000:.3f}s" if ms < 10_000 else f"+{ms / 1000:.1f}s"


def _bar(bar: Bar, row: int, timeline: Timeline) -> str:
    scale = PLOT_W / timeline.span_ms
    x = LABEL_W + (bar.start_ms - timeline.origin_ms) * scale
    width = max(2.0, (bar.end_ms - bar.start_ms) * scale)
    y = AXIS_H + row * LANE_H + 4
    what = f"{bar.step} {bar.kind.replace('_', ' ')} #{bar.attempt}"
    ended = "still open" if bar.open else (bar.result or "ended")
    title = (
        f"{what}: {_seconds(bar.start_ms - timeline.origin_ms)} to "
        f"{_seconds(bar.end_ms - timeline.origin_ms)} ({bar.end_ms - bar.start_ms} ms, {ended})"
    )
    opened = " open" if bar.open else ""
    return (
        f'<rect class="bar {escape(bar.kind)}{opened}" x="{x:.1f}" y="{y}" width="{width:.1f}" '
        f'height="{LANE_H - 8}"><title>{escape(title)}</title></rect>'
    )


def timeline_svg(timeline: Timeline) -> Markup:
    """The Gantt chart: a lane per step, time from the saga's start along the top."""
    height = AXIS_H + max(1, len(timeline.lanes)) * LANE_H + PAD
    width = LABEL_W + PLOT_W + AXIS_LABEL_W
    parts = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
    ]
    for i in range(TICKS + 1):
        x = LABEL_W + PLOT_W * i / TICKS
        parts.append(
            f'<line class="tick" x1="{x:.1f}" y1="{AXIS_H - 4}" x2="{x:.1f}" y2="{height}"/>'
        )
        parts.append(_text(x + 2, AXIS_H - 8, _seconds(timeline.span_ms * i // TICKS), "axis"))
    row_of = {step: row for row, step in enumerate(timeline.lanes)}
    for step, row in row_of.items():
        parts.append(_text(4, AXIS_H + row * LANE_H + 16, step, "lane"))
    parts += [_bar(bar, row_of[bar.step], timeline) for bar in timeline.bars]
    for mark in timeline.marks:
        x = LABEL_W + (mark.at_ms - timeline.origin_ms) * PLOT_W / timeline.span_ms
        y = AXIS_H + row_of[mark.step] * LANE_H
        parts.append(
            f'<circle class="mark {escape(mark.what)}" cx="{x:.1f}" cy="{y + LANE_H / 2}" r="4">'
            f"<title>{escape(mark.step)} {escape(mark.what)}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


RATE_BAR, RATE_ROW, RATE_LABEL = 6, 30, 96


def rate_svg(per_minute: Mapping[str, Sequence[int]], series: Sequence[str]) -> Markup:
    """Counts per minute, a row of bars per series scaled to its own largest minute (each
    bar's title says its count); the newest minute on the right."""
    minutes = max((len(per_minute[s]) for s in series), default=0)
    width, height = RATE_LABEL + minutes * RATE_BAR + PAD * 3, len(series) * RATE_ROW + AXIS_H
    parts = [
        f'<svg class="rates" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
    ]
    for row, name in enumerate(series):
        counts = per_minute[name]
        top, base = row * RATE_ROW + 4, (row + 1) * RATE_ROW
        parts.append(_text(0, base - 8, f"{name} {sum(counts)}", "lane"))
        peak = max(counts, default=0) or 1
        for i, count in enumerate(counts):
            if count:
                h = max(1.0, (base - top) * count / peak)
                ago = len(counts) - 1 - i
                parts.append(
                    f'<rect class="rate {escape(name)}" x="{RATE_LABEL + i * RATE_BAR}" '
                    f'y="{base - h:.1f}" width="{RATE_BAR - 1}" height="{h:.1f}">'
                    f"<title>{count} {escape(name)}, {ago} min ago</title></rect>"
                )
    axis = len(series) * RATE_ROW + 14
    parts.append(_text(RATE_LABEL, axis, f"-{minutes} min", "axis"))
    parts.append(_text(RATE_LABEL + minutes * RATE_BAR - 18, axis, "now", "axis"))
    parts.append("</svg>")
    return Markup("".join(parts))
