"""`sagastream bench --scale-*`: CPU per saga against the work a saga and an orchestrator carry.

Three series, each point the order saga at the maximum rate under its own prefix (a warm-up
first, not counted), instant handlers:

``steps``          generated topologies: the order saga's steps repeated to 2, 5 and 10 steps
                   (payment, inventory, shipping, payment... each its own step, routed by
                   meta.step), run as a chain and as a fan-out;
``stored``         the order saga with 100,000 and 1,000,000 sagas already in the orchestrator's
                   store (its changelog filled as bench_restore fills it, restored before the
                   warm-up), and with none;
``orchestrators``  1, 2 and 4 orchestrator processes on the same partitions.

Read it as: CPU per saga grows linearly in steps (so CPU per saga per step stays flat) and stays
flat in stored sagas and in orchestrators; each row is also given against its series' first.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from sagastream.core.topology import Topology, load_topology
from sagastream.errors import UsageError
from sagastream.ops.bench import (
    WARMUP_ORDERS,
    BenchOptions,
    Point,
    Run,
    measure,
    num_cell,
    ratio,
    saga_phase,
    table_line,
)
from sagastream.ops.bench_restore import (
    AHEAD_MS,
    OrderStates,
    changelog_transactions,
    write_changelog,
)
from sagastream.runtime.settings import Settings

SAGA = "order"
DEFAULT_STEPS = (2, 5, 10)
DEFAULT_STORED = (100_000, 1_000_000)
DEFAULT_ORCHESTRATORS = (1, 2, 4)
NOT_HANDLERS = ("orchestrator", "broker", "driver", "total")


def parse_counts(spec: str, flag: str, least: int = 1) -> tuple[int, ...]:
    """'2,5,10' -> (2, 5, 10), each once, in order; every count `least` or more."""
    counts: list[int] = []
    for part in spec.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        try:
            count = int(part)
        except ValueError:
            raise UsageError(f"{flag}: {part!r} is not a whole number") from None
        if count < least:
            raise UsageError(f"{flag}: {count} is below {least}")
        counts.append(count)
    if not counts:
        raise UsageError(f"{flag}: give whole numbers separated by commas, e.g. 2,5,10")
    return tuple(dict.fromkeys(counts))


def sized_topology(source: Path, directory: Path, steps: int, chained: bool) -> Path:
    """A copy of a topology file whose order saga has `steps` steps: its own steps repeated
    in file order, renamed `<step>_<n>`, one after the other if `chained`, else all at once."""
    import yaml

    data = yaml.safe_load(source.read_text())
    saga = data["sagas"][SAGA]
    originals = saga["steps"]
    names = list(originals)
    sized: dict[str, Any] = {}
    for i in range(steps):
        base = names[i % len(names)]
        name = f"{base}_{i + 1}"
        spec = copy.deepcopy(originals[base])
        _rename_inputs(spec, base, name)
        spec.pop("depends_on", None)
        if chained and sized:
            spec["depends_on"] = [list(sized)[-1]]
        sized[name] = spec
    saga["steps"] = sized
    path = directory / f"{'chain' if chained else 'fanout'}-{steps}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_topology(path)  # fail here, with the file named, rather than in every worker
    return path


def _rename_inputs(spec: dict[str, Any], old: str, new: str) -> None:
    """A step's inputs (and its compensation's) that name the step itself name its new name."""
    for part in (spec, spec.get("compensation") or {}):
        inputs = part.get("inputs") or {}
        if old in inputs:
            inputs[new] = inputs.pop(old)


def scale_row(series: str, work: int, point: Point) -> dict[str, Any]:
    """One point of a series: CPU per saga in total, by the orchestrator(s), by every handler
    together, by the broker; and per step for the steps series."""
    cpu = point["cpu_ms_per_saga"]
    handlers = sum(v for name, v in cpu.items() if name not in NOT_HANDLERS)
    total = cpu.get("total", math.nan)
    return {
        "series": series,
        "work": work,
        "cpu_ms_per_saga": total,
        "orchestrator_ms": cpu.get("orchestrator", math.nan),
        "handlers_ms": handlers,
        "broker_ms": cpu.get("broker", math.nan),
        "per_step_ms": total / work if series in ("chain", "fan-out") and work else None,
        "point": point,
    }


LABELS = {
    "chain": "chain of {} steps",
    "fan-out": "fan-out of {} steps",
    "stored": "{:,} stored sagas",
    "orchestrators": "{} orchestrators",
}


def format_scale(result: dict[str, Any]) -> list[str]:
    """The table of the scale series, each row also against the first of its series."""
    widths = (-26, 6, 9, 8, 8, 9, 9, 8, 9, 8)
    head = ("work", "sagas", "sagas/s", "p99 ms", "total", "orchestr.", "handlers", "broker")
    lines = [
        "",
        f"  scale with work: {result['orders']} orders per point at the maximum rate "
        "(after a warm-up); CPU ms per saga",
        table_line(zip((*head, "per step", "/ first"), widths, strict=True)),
    ]
    first: dict[str, float] = {}
    for row in result["rows"]:
        p, series = row["point"], row["series"]
        first.setdefault(series, row["cpu_ms_per_saga"])
        cells = (
            LABELS[series].format(row["work"]),
            p["completed"],
            num_cell(p["sagas_per_s"]),
            num_cell(p["latency_ms"]["p99"], 0),
            *(num_cell(row[k], 3) for k in ("cpu_ms_per_saga", "orchestrator_ms")),
            *(num_cell(row[k], 3) for k in ("handlers_ms", "broker_ms", "per_step_ms")),
            num_cell(ratio(row["cpu_ms_per_saga"], first[series]), 2, "x"),
        )
        lines.append(table_line(zip(cells, widths, strict=True)))
    lines.append(
        "  expected: CPU per saga linear in steps (per step flat), flat in stored sagas and "
        "in orchestrators"
    )
    return lines


def scale_phase(run: Run, options: BenchOptions) -> dict[str, Any]:
    """Every series asked for, in turn: steps, stored sagas, orchestrators."""
    rows: list[dict[str, Any]] = []
    n = options.scale_orders
    run.say(f"\nscale with work: {n} orders per point at the maximum rate")
    with tempfile.TemporaryDirectory(prefix="sagastream-bench-") as tmp:
        for steps in options.scale_steps or ():
            for series, chained in (("chain", True), ("fan-out", False)):
                topology = sized_topology(run.settings.topology_file, Path(tmp), steps, chained)
                name = f"{'ch' if chained else 'fo'}{steps}"
                run.say(f"  {LABELS[series].format(steps)}")
                point = _point(run, options, run.phase(name, topology), n)
                rows.append(scale_row(series, steps, point))
    if options.scale_stored:
        for stored in (0, *options.scale_stored):
            run.say(f"  {LABELS['stored'].format(stored)}")
            point = _point(run, options, run.phase(f"st{stored}"), n, stored=stored)
            rows.append(scale_row("stored", stored, point))
    for count in options.scale_orchestrators or ():
        run.say(f"  {LABELS['orchestrators'].format(count)}")
        point = _point(run, options, run.phase(f"or{count}"), n, orchestrators=count)
        rows.append(scale_row("orchestrators", count, point))
    return {"orders": n, "rows": rows}


def _point(
    run: Run,
    options: BenchOptions,
    settings: Settings,
    orders: int,
    stored: int = 0,
    orchestrators: int = 1,
) -> Point:
    def fill(settings: Settings, topology: Topology) -> None:
        if stored:
            states = OrderStates(topology, time.time_ns() // 1_000_000 + AHEAD_MS, options.seed)
            t0 = time.monotonic()
            written = write_changelog(settings, changelog_transactions(states, stored))
            run.say(f"    {written:,} changelog records written in {time.monotonic() - t0:.1f}s")

    with saga_phase(run, settings, {}, options.seed, orchestrators=orchestrators, prepare=fill) as (
        source,
        make,
    ):
        # the warm-up also waits out the restore of the stored sagas
        measure(source, make(WARMUP_ORDERS, True), None, options.timeout, None)
        return measure(source, make(orders, True), None, options.timeout, run.out)
