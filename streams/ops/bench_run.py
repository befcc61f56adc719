"""`sagastream bench` as one run: which phases run, in what order, and what is printed and written.

The phases live in their own modules: the order saga, its baseline, the fan-out and tracing
points in sagastream.ops.bench (which the others build on), the restore in bench_restore, the
console's index and pages in bench_console, the commit policy trade-off in bench_tradeoff, the scale series in bench_scale. This module alone imports them all, so none of
them imports another's caller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, TextIO

from sagastream.errors import UsageError
from sagastream.ops.bench import (
    BenchOptions,
    Point,
    Run,
    baseline_phase,
    bench_infrastructure,
    broker_pids,
    fanout_phase,
    format_report,
    json_safe,
    ratios,
    sagastream_phase,
    trace_phase,
    unlike,
    write_plot,
)
from sagastream.ops.bench_console import console_phase, format_console
from sagastream.ops.bench_restore import format_restore, restore_phase
from sagastream.ops.bench_scale import format_scale, scale_phase
from sagastream.ops.bench_tradeoff import format_tradeoff, tradeoff_phase
from sagastream.ops.pipeline_baseline import STRUCTURAL_WRITES


def run_bench(options: BenchOptions, out: TextIO = sys.stdout) -> int:
    """Run every phase asked for, print the tables, write JSON and the plot; 1 if a saga stuck.

    If a phase fails, what the phases before it measured is still printed and written.
    """
    results: dict[str, Any] = {}
    try:
        with bench_infrastructure(options.keep, out) as run:
            results["run"] = {
                "prefix": run.prefix,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "cpus": os.cpu_count(),
                "bootstrap_servers": run.settings.bootstrap_servers,
                "broker_cpu_measured": bool(broker_pids(run.settings.bootstrap_servers)),
            }
            # which code the figures are of: this install's, or --worker-python's
            if options.worker_python is not None:
                run.worker_python = str(options.worker_python)
            results["run"]["workers"] = worker_release(run.worker_python)
            out.write(f"sagastream's workers: {results['run']['workers']['label']}\n")
            _run_phases(run, options, results)
    finally:
        if len(results) > 1:
            _write_results(results, options, out)
    return 1 if any(p["stuck"] for p in measured_points(results)) else 0


def worker_release(python: str) -> dict[str, str]:
    """Which sagastream another interpreter runs: its package directory, and the commit of
    that directory's checkout when it is one (what `--worker-python` measured)."""
    where = "import pathlib, sagastream; print(pathlib.Path(sagastream.__file__).resolve().parent)"
    try:
        found = subprocess.run(
            [python, "-c", where], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(
            f"--worker-python {python}: cannot import sagastream with it: {exc}"
        ) from None
    package = found.stdout.strip()
    commit = subprocess.run(
        ["git", "-C", package, "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    label = f"{python} (sagastream in {package}{', at ' + commit[:80] if commit else ''})"
    return {"python": python, "package": package, "commit": commit.split(" ")[0], "label": label}


def measured_points(results: dict[str, Any]) -> list[Point]:
    """Every point a run measured, warm-ups included: a saga stuck in any fails the run."""
    phases = [results.get("sagastream"), results.get("baseline")]
    points = [p for phase in phases if phase for p in phase["points"]]
    points += [phase["warmup"] for phase in phases if phase and phase.get("warmup")]
    fan = results.get("fanout")
    points += [fan["parallel"], fan["sequential"]] if fan else []
    points += list(results["tracing"]["points"].values()) if "tracing" in results else []
    for table in ("tradeoff", "scale"):
        points += [row["point"] for row in results.get(table, {}).get("rows", [])]
    return points


def report(results: dict[str, Any]) -> list[str]:
    """Every table of the run: the saga phases', then the restore's, the console's, the
    trade-off's and the scale series'."""
    lines = format_report(results)
    if "restore" in results:
        lines += format_restore(results["restore"])
    if "console" in results:
        lines += format_console(results["console"])
    if "tradeoff" in results:
        lines += format_tradeoff(results["tradeoff"])
    if "scale" in results:
        lines += format_scale(results["scale"])
    return lines


def _run_phases(run: Run, options: BenchOptions, results: dict[str, Any]) -> None:
    if options.restore is not None:
        results["restore"] = restore_phase(run, options.restore, options.timeout, options.seed)
    if options.console is not None:
        results["console"] = console_phase(run, options.console, options.timeout, options.seed)
    if options.trace is not None:
        results["tracing"] = trace_phase(run, options)
    if options.tradeoff is not None:
        results["tradeoff"] = tradeoff_phase(run, options)
    if options.scale_steps or options.scale_stored or options.scale_orchestrators:
        results["scale"] = scale_phase(run, options)
    if not options.saga_phases:
        return
    results["sagastream"] = sagastream_phase(run, options)
    if not options.skip_baseline:
        # as many writes per saga as sagastream made, whatever its runtime writes
        total = results["sagastream"]["writes_per_saga"]["total"]
        results["baseline"] = baseline_phase(run, options, max(0, round(total - STRUCTURAL_WRITES)))
        ss, base = results["sagastream"], results["baseline"]
        base["not_compared"] = unlike(ss, base)
        if base["not_compared"] is None:
            for point, base_point in zip(ss["points"], base["points"], strict=True):
                point["vs_baseline"] = ratios(point, base_point)
    if not options.skip_fanout:
        results["fanout"] = fanout_phase(run, options)


def _write_results(results: dict[str, Any], options: BenchOptions, out: TextIO) -> None:
    print("\n".join(report(results)), file=out)
    options.json_path.write_text(json.dumps(json_safe(results), indent=2) + "\n")
    print(f"\nresults written to {options.json_path}", file=out)
    series: dict[str, list[Point]] = {
        name: results[name]["points"] for name in ("sagastream", "baseline") if name in results
    }
    if series:
        skipped = write_plot(series, options.plot_path)
        print(skipped or f"latency plot written to {options.plot_path}", file=out)
