"""The pure parts of `sagastream bench`: rates, CPU accounting, percentiles, ratios, report, plot."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.topology import load_topology
from sagastream.ops import bench, bench_run
from sagastream.ops.pipeline_baseline import STRUCTURAL_WRITES, BaselineTopics, commit_due
from sagastream.runtime.settings import Settings


def point(rate: Any, sagas_per_s: float, p50: float, cpu_total: float) -> dict[str, Any]:
    return {
        "rate": rate,
        "orders": 100,
        "completed": 100,
        "stuck": 0,
        "elapsed_s": 100 / sagas_per_s,
        "sagas_per_s": sagas_per_s,
        "to_quiet_s": 125 / sagas_per_s,
        "sagas_per_s_to_quiet": sagas_per_s * 0.8,
        "latency_ms": {"p50": p50, "p95": p50 * 2, "p99": p50 * 3},
        "cpu_ms_per_saga": {
            "orchestrator": cpu_total / 2,
            "broker": cpu_total / 2,
            "total": cpu_total,
        },
    }


def test_rates_are_positive_numbers_and_max_always_comes_first() -> None:
    assert bench.parse_rates("100, 300,max,,100") == (100.0, 300.0)
    assert bench.parse_rates("") == ()
    for bad in ("fast", "-5", "0", "inf"):
        with pytest.raises(ValueError, match="--rates"):
            bench.parse_rates(bad)
    options = bench.BenchOptions(rates=(10.0, 600.0))
    assert options.points() == [(None, 20_000), (10.0, 50), (600.0, 2000)]
    assert bench.BenchOptions(orders=7, rates=(10.0,)).points() == [(None, 20_000), (10.0, 7)]
    assert [bench.rate_label(r) for r in (None, 100.0, 2.5)] == ["max", "100/s", "2.5/s"]


def test_the_steady_window_is_the_max_point_and_the_warmup_no_point_of_it() -> None:
    options = bench.BenchOptions(steady=300, warmup=40, orders=9, rates=(100.0,))
    assert options.points() == [(None, 300), (100.0, 9)]
    assert 40 not in [n for _, n in options.points()]
    for bad in ({"steady": 0}, {"warmup": -1}, {"orders": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            bench.BenchOptions(**bad)


def test_throughput_by_outcome_and_to_quiet_from_the_first_publish() -> None:
    figures = bench.throughput(first=10.0, last_outcome=20.0, quiet_at=25.0, sagas=1000)
    assert figures == pytest.approx(
        {
            "elapsed_s": 10.0,
            "sagas_per_s": 100.0,
            "to_quiet_s": 15.0,
            "sagas_per_s_to_quiet": 66.67,
        },
        rel=1e-3,
    )
    # topics found still before the last outcome was read: quiet is never before it
    early = bench.throughput(first=10.0, last_outcome=20.0, quiet_at=15.0, sagas=1000)
    assert early["to_quiet_s"] == 10.0 and early["sagas_per_s_to_quiet"] == 100.0
    nothing = bench.throughput(first=10.0, last_outcome=math.nan, quiet_at=12.0, sagas=0)
    assert math.isnan(nothing["sagas_per_s"]) and math.isnan(nothing["sagas_per_s_to_quiet"])


def test_cpu_ticks_are_read_after_the_command_name_whatever_it_holds() -> None:
    # fields 14 and 15 (utime, stime) are 1111 and 222; the name has spaces and parentheses
    rest = "S 1 2 3 4 5 6 7 8 9 10 1111 222 33 44 20 0 1 0 100 0 0"
    assert bench.stat_cpu_ticks(f"4242 (a (weird) name) {rest}") == 1333


def test_cpu_of_this_process_grows_and_a_missing_process_is_nan() -> None:
    before = bench.process_cpu_s(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert bench.process_cpu_s(os.getpid()) > before
    assert math.isnan(bench.process_cpu_s(2**22 + 12345))
    snapshot = bench.cpu_snapshot({"driver": [os.getpid()], "none": []})
    assert snapshot["driver"] > 0 and snapshot["none"] == 0


def test_cpu_ms_per_saga_per_process_and_in_total() -> None:
    before = {"orchestrator": 1.0, "broker": 10.0}
    after = {"orchestrator": 1.5, "broker": 10.2}
    per = bench.cpu_ms_per_saga(before, after, 100)
    assert per == pytest.approx({"orchestrator": 5.0, "broker": 2.0, "total": 7.0})
    assert all(math.isnan(v) for v in bench.cpu_ms_per_saga(before, after, 0).values())


def test_latency_percentiles() -> None:
    assert bench.latency_summary([float(v) for v in range(1, 101)]) == {
        "p50": 51.0,
        "p95": 95.0,
        "p99": 99.0,
    }
    assert bench.latency_summary([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert all(math.isnan(v) for v in bench.latency_summary([]).values())


def test_ratios_divide_every_figure_by_the_baselines() -> None:
    assert bench.ratio(3.0, 2.0) == 1.5
    for value, base in ((1.0, 0.0), (math.nan, 1.0), (1.0, None), (None, 1.0)):
        assert bench.ratio(value, base) is None
    vs = bench.ratios(point("max", 100.0, 400.0, 20.0), point("max", 10_000.0, 100.0, 0.5))
    assert vs["sagas_per_s"] == pytest.approx(0.01)
    assert vs["latency_ms"] == pytest.approx({"p50": 4.0, "p95": 4.0, "p99": 4.0})
    assert vs["cpu_ms_per_saga"] == pytest.approx(
        {"orchestrator": 40.0, "broker": 40.0, "total": 40.0}
    )


def test_writes_per_saga_by_topic_without_the_prefix_most_first() -> None:
    counts = {"p-orders.events": 100, "p-sagas.lifecycle": 450, "p-x.dlq": 0}
    writes = bench.writes_per_saga(counts, 100, "p-")
    assert writes["total"] == pytest.approx(5.5)
    assert list(writes["by_topic"].items()) == [("sagas.lifecycle", 4.5), ("orders.events", 1.0)]


def test_the_baseline_writes_ten_records_per_saga_before_filler() -> None:
    topics = BaselineTopics("b-")
    assert STRUCTURAL_WRITES == 10
    assert len(set(topics.all())) == len(topics.all())
    assert all(t.startswith("b-") for t in topics.all())


def test_fanout_summary_compares_with_the_largest_branch_and_the_sum() -> None:
    summary = bench.fanout_summary(point(4.0, 4.0, 220.0, 1.0), point(4.0, 4.0, 495.0, 1.0))
    assert summary["largest_branch_ms"] == 200 and summary["sum_ms"] == 450
    assert summary["p50_to_largest_branch"] == pytest.approx({"parallel": 1.1, "sequential": 2.475})
    assert summary["p50_to_sum"]["sequential"] == pytest.approx(1.1)
    assert summary["sequential_to_parallel_p50"] == pytest.approx(2.25)


def test_chained_topology_runs_the_steps_one_after_the_other(tmp_path: Path) -> None:
    source = Settings().topology_file
    chained = load_topology(bench.chained_topology(source, tmp_path))
    steps = chained.sagas["order"].steps
    assert list(steps["inventory"].depends_on) == ["payment"]
    assert list(steps["shipping"].depends_on) == ["inventory"]
    assert not steps["payment"].depends_on
    assert chained.sagas["loan"] == load_topology(source).sagas["loan"]


def results() -> dict[str, Any]:
    ss = point("max", 95.0, 1200.0, 17.0)
    ss["vs_baseline"] = bench.ratios(ss, point("max", 9500.0, 60.0, 0.5))
    slow = point(100.0, 99.0, math.nan, 20.0)
    writes = {"total": 34.6, "by_topic": {"sagas.lifecycle": 9.2}}
    policy = {"interval_ms": 100, "linger_ms": 20}
    return {
        "sagastream": {
            "commit_policy": policy,
            "warmup": point("max", 41.0, 3000.0, 33.0),
            "points": [ss, slow],
            "writes_per_saga": writes,
        },
        "baseline": {
            "commit_policy": policy,
            "not_compared": None,
            "warmup": point("max", 7000.0, 90.0, 0.9),
            "points": [point("max", 9500.0, 60.0, 0.5), point(100.0, 100.0, 20.0, 2.0)],
            "writes_per_saga": writes,
        },
        "fanout": bench.fanout_summary(point(4.0, 4.0, 220.0, 1.0), point(4.0, 4.0, 495.0, 1.0)),
    }


def test_report_has_a_row_per_point_ratios_and_the_fanout() -> None:
    text = "\n".join(bench.format_report(results()))
    assert "sagastream max" in text and "sagastream 100/s" in text and "baseline 100/s" in text
    assert "0.010x" in text  # 95 against 9500 sagas/s, by outcome and to quiet alike
    lines = text.splitlines()
    rows = [line.split()[:3] for line in lines if line.startswith("  sagastream")]
    assert rows[0] == ["sagastream", "warm-up", "100"]  # first, and apart from the points
    warm = next(line for line in lines if line.startswith("  sagastream warm-up"))
    assert "41.0" in warm and "32.8" in warm  # by outcome, and to quiet
    after_warm = lines[lines.index(warm) + 1]
    assert "/ baseline" not in after_warm  # the warm-up is compared with nothing
    assert text.count("0.010x") == 2
    assert "34.6" in text and "sagas.lifecycle" in text
    assert "sequential / parallel p50: 2.25x" in text
    assert bench.format_report({}) == []


def test_json_has_no_nan() -> None:
    encoded = json.dumps(bench.json_safe(results()), allow_nan=False)
    assert json.loads(encoded)["sagastream"]["points"][1]["latency_ms"]["p50"] is None


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "latency.png"
    data = results()
    series = {name: data[name]["points"] for name in ("sagastream", "baseline")}
    assert bench.write_plot(series, path) is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_plot_is_skipped_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    reason = bench.write_plot({"sagastream": []}, tmp_path / "latency.png")
    assert reason is not None and "matplotlib" in reason
    assert not (tmp_path / "latency.png").exists()


def test_tracing_is_reported_against_off_per_process() -> None:
    summary = bench.trace_summary(
        {
            "off": point("max", 500.0, 100.0, 2.0),
            "sampled 0.1": point("max", 480.0, 110.0, 2.2),
            "sampled 1.0": point("max", 400.0, 150.0, 3.0),
        }
    )
    assert summary["cpu_to_off"]["sampled 1.0"] == {
        "orchestrator": 1.5,
        "broker": 1.5,
        "total": 1.5,
    }
    assert summary["cpu_to_off"]["sampled 0.1"]["total"] == pytest.approx(1.1)
    lines = bench.format_trace(summary)
    assert [line.split()[0] for line in lines[2:]] == ["off", "sampled", "/", "sampled", "/"]
    assert "1.50x" in lines[-1] and "1.10x" in lines[-3]
    text = "\n".join(bench.format_report({"tracing": summary}))
    assert "sampled 0.1" in text


@pytest.mark.parametrize(
    ("argv", "trace", "saga_phases"),
    [
        ([], None, True),
        (["--trace"], 1000, False),
        (["--trace", "300"], 300, False),
        (["--trace", "300", "--orders", "50"], 300, True),
    ],
)
def test_trace_alone_runs_only_the_tracing_points(
    argv: list[str], trace: int | None, saga_phases: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = bench_options(argv, monkeypatch)
    assert (options.trace, options.saga_phases) == (trace, saga_phases)


def test_steady_and_warmup_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (bench_options([], monkeypatch).steady, bench_options([], monkeypatch).warmup) == (
        20_000,
        2_000,
    )
    options = bench_options(["--steady", "500", "--warmup", "50"], monkeypatch)
    assert (options.steady, options.warmup) == (500, 50)


def bench_options(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> bench.BenchOptions:
    """The options `sagastream bench ARGV` would run the bench with (the bench not run)."""
    from sagastream.ops.cli import parser

    seen: list[bench.BenchOptions] = []

    def run_bench(options: bench.BenchOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(bench_run, "run_bench", run_bench)
    args = parser().parse_args(["bench", *argv])
    assert args.func(args) == 0
    return seen[0]


def test_the_baseline_commits_by_sagastreams_policy_or_at_the_interval_only() -> None:
    # sagastream's: at the interval under load, after the linger once the inputs ran dry
    assert commit_due(0.1, 0.1, 0.02, drained=False)
    assert not commit_due(0.05, 0.1, 0.02, drained=False)
    assert commit_due(0.02, 0.1, 0.02, drained=True)
    assert not commit_due(0.019, 0.1, 0.02, drained=True)
    # interval only: a drained input does not commit before the interval
    assert not commit_due(0.05, 0.1, None, drained=True)
    assert commit_due(0.1, 0.1, None, drained=True)


def test_the_commit_policy_comes_from_the_settings_the_linger_within_the_interval() -> None:
    settings = Settings(commit_interval_ms=50, commit_linger_ms=80)
    assert bench.commit_policy(settings) == {"interval_ms": 50, "linger_ms": 50}
    assert bench.commit_policy(settings, linger=False) == {"interval_ms": 50, "linger_ms": None}
    assert bench.policy_label({"interval_ms": 100, "linger_ms": 20}) == (
        "commit interval 100 ms, linger 20 ms"
    )
    assert bench.policy_label({"interval_ms": 100, "linger_ms": None}).endswith("no linger")


def test_ratios_only_between_the_same_policy_and_the_same_points() -> None:
    data = results()
    ss, base = data["sagastream"], data["baseline"]
    assert bench.unlike(ss, base) is None
    other = {**base, "commit_policy": {"interval_ms": 100, "linger_ms": None}}
    reason = bench.unlike(ss, other)
    assert reason is not None and "no linger" in reason and "linger 20 ms" in reason
    fewer = {**base, "points": [{**base["points"][0], "orders": 20_000}, base["points"][1]]}
    assert "other points" in (bench.unlike(ss, fewer) or "")


def test_the_report_names_each_policy_and_why_there_are_no_ratios() -> None:
    data = results()
    text = "\n".join(bench.format_report(data))
    assert "sagastream: commit interval 100 ms, linger 20 ms" in text
    assert "baseline: commit interval 100 ms, linger 20 ms" in text
    assert "no ratios" not in text
    data["baseline"]["not_compared"] = "other commit policies (...)"
    for p in data["sagastream"]["points"]:
        p.pop("vs_baseline", None)
    text = "\n".join(bench.format_report(data))
    assert "no ratios to the baseline: other commit policies" in text
    assert "/ baseline" not in text


def test_the_workers_of_another_install_are_named_by_package_and_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = bench_options(["--worker-python", sys.executable], monkeypatch)
    assert options.worker_python == Path(sys.executable)
    assert bench_options([], monkeypatch).worker_python is None
    found = bench_run.worker_release(sys.executable)
    import sagastream

    assert found["package"] == str(Path(sagastream.__file__).resolve().parent)
    assert found["python"] == sys.executable and found["package"] in found["label"]
    # this checkout's commit, as git names it
    assert len(found["commit"]) >= 7 and found["commit"] in found["label"]
    with pytest.raises(ValueError, match="--worker-python .*cannot import sagastream"):
        bench_run.worker_release(
            "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "false"
        )


def test_baseline_commit_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    assert bench_options([], monkeypatch).baseline_commit == "same"
    options = bench_options(["--baseline-commit", "interval"], monkeypatch)
    assert options.baseline_commit == "interval"
    with pytest.raises(ValueError, match="--baseline-commit"):
        bench.BenchOptions(baseline_commit="never")


class BatchingConsumer:
    """A consumer with one message in hand and more to come: records how it is waited on."""

    def __init__(self) -> None:
        self.waits: list[tuple[str, float]] = []
        self.pending = ["m1", "m2"]

    def _take(self, n: int) -> list[Any]:
        taken, self.pending = self.pending[:n], self.pending[n:]
        return [Message(t) for t in taken]

    def poll(self, timeout: float) -> Any:
        self.waits.append(("poll", timeout))
        got = self._take(1)
        return got[0] if got else None

    def consume(self, num: int, timeout: float) -> list[Any]:
        # librdkafka's batch consume blocks for the whole timeout unless `num` messages come
        self.waits.append(("consume", timeout))
        return self._take(num)

    def assignment(self) -> list[int]:
        return [0]


@dataclass
class Message:
    value: str

    def error(self) -> None:
        return None


def test_the_baseline_waits_for_the_first_message_only_never_for_a_full_batch() -> None:
    from sagastream.ops import pipeline_baseline

    consumer, stop = BatchingConsumer(), threading.Event()
    batches = pipeline_baseline._batches(consumer, stop)  # type: ignore[arg-type]
    assert [m.value for m in next(batches)] == ["m1", "m2"]
    assert next(batches) == []
    # a batch wait (consume with a timeout) would hold every hop up to its timeout
    assert all(timeout == 0 for kind, timeout in consumer.waits if kind == "consume")
    assert any(kind == "poll" and timeout > 0 for kind, timeout in consumer.waits)
