"""The pure parts of `sagastream bench --tradeoff`: policies, the metrics it reads, its table."""

from __future__ import annotations

import math

import pytest

from sagastream.ops import bench_run
from sagastream.ops import bench_tradeoff as bt
from tests.unit.test_bench import bench_options, point

METRICS = """\
# HELP sagastream_transactions_total Orchestrator transactions by result
# TYPE sagastream_transactions_total counter
sagastream_transactions_total{result="committed"} 412.0
sagastream_transactions_total{result="aborted"} 3.0
# HELP sagastream_polls_total Polls
# TYPE sagastream_polls_total counter
sagastream_polls_total{role="orchestrator"} 9000.0
# HELP sagastream_commit_seconds How long committing one orchestrator transaction took
# TYPE sagastream_commit_seconds histogram
sagastream_commit_seconds_bucket{le="0.02"} 400.0
sagastream_commit_seconds_bucket{le="+Inf"} 415.0
sagastream_commit_seconds_count 415.0
sagastream_commit_seconds_sum 6.225
"""


def test_policies_are_interval_and_linger_pairs_each_once() -> None:
    assert bt.parse_policies("100:20, 50:0,,100:20") == ((100, 20), (50, 0))
    for bad in ("100", "fast:5", "0:5", "100:-1", ""):
        with pytest.raises(ValueError, match="--tradeoff"):
            bt.parse_policies(bad)


def test_committed_transactions_are_read_from_the_metrics_text() -> None:
    assert bt.counter_total(METRICS, bt.COMMITTED, result="committed") == 412.0
    assert bt.counter_total(METRICS, bt.COMMITTED) == 415.0  # every result
    assert bt.counter_total(METRICS, bt.COMMITTED, result="failed") == 0.0
    assert bt.counter_total("", bt.COMMITTED) == 0.0
    assert bt.counter_total(METRICS, bt.COMMIT_SECONDS + "_sum") == 6.225
    assert bt.counter_total(METRICS, bt.COMMIT_SECONDS + "_count") == 415.0


def test_a_row_gives_the_mean_commit_time_of_the_window_alone() -> None:
    before = bt.Commits(committed=100.0, seconds=10.0, commits=102.0)
    after = bt.Commits(committed=150.0, seconds=10.75, commits=152.0)
    row = bt.tradeoff_row((100, 20), point(300.0, 100.0, 60.0, 2.0), after.since(before))
    assert row["transactions"] == 50.0
    assert row["commit_ms"] == pytest.approx(15.0)  # 0.75 s over 50 commits
    assert math.isnan(
        bt.tradeoff_row((100, 20), point(300.0, 1.0, 1.0, 1.0), bt.Commits())["commit_ms"]
    )


def test_a_row_gives_transactions_per_second_over_the_window_to_quiet_and_per_saga() -> None:
    p = point(300.0, 100.0, 60.0, 2.0)  # 100 sagas, 1.25 s to quiet
    row = bt.tradeoff_row((100, 20), p, bt.Commits(committed=50.0))
    assert row["transactions_per_s"] == pytest.approx(40.0)
    assert row["transactions_per_saga"] == pytest.approx(0.5)
    assert (row["commit_interval_ms"], row["commit_linger_ms"]) == (100, 20)
    none = bt.tradeoff_row((100, 20), {**p, "completed": 0, "to_quiet_s": math.nan}, bt.Commits())
    assert math.isnan(none["transactions_per_s"]) and math.isnan(none["transactions_per_saga"])


def test_the_table_has_a_line_per_policy() -> None:
    rows = [
        bt.tradeoff_row((100, 20), point(300.0, 299.0, 61.0, 2.0), bt.Commits(50.0, 0.5, 50.0)),
        bt.tradeoff_row((50, 0), point(300.0, 300.0, 32.0, 2.4), bt.Commits(90.0, 0.9, 90.0)),
    ]
    warmup = point(None, 480.0, 900.0, 3.5)
    result = {"rate": 300.0, "orders": 1500, "rows": rows, "warmup": warmup}
    lines = bt.format_tradeoff(result)
    assert "300 sagas/s, 1500 orders each" in lines[1]
    cells = [line.split() for line in lines[3:5]]
    assert cells[0][:5] == ["100", "20", "299.0", "61", "183"]
    assert cells[1][:2] == ["50", "0"] and cells[1][5] == "216.0"  # 90 over 125 / 300 s
    assert cells[1][7] == "10.0"  # ms per commit
    assert (
        "warm-up of 100 orders at the maximum rate, 480.0 sagas/s, 3.500 CPU ms/saga" in lines[-1]
    )
    text = "\n".join(bench_run.report({"tradeoff": result}))
    assert "interval ms" in text
    # a stuck saga in any row fails the run
    rows[1]["point"]["stuck"] = 1
    assert any(p["stuck"] for p in bench_run.measured_points({"tradeoff": result}))


@pytest.mark.parametrize(
    ("argv", "tradeoff", "saga_phases"),
    [
        ([], None, True),
        (["--tradeoff"], ((100, 20), (100, 5), (100, 0), (50, 0), (200, 50)), False),
        (["--tradeoff", "20:0", "--orders", "30"], ((20, 0),), True),
    ],
)
def test_tradeoff_alone_runs_only_the_table(
    argv: list[str],
    tradeoff: tuple[tuple[int, int], ...] | None,
    saga_phases: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = bench_options(argv, monkeypatch)
    assert (options.tradeoff, options.saga_phases, options.tradeoff_rate) == (
        tradeoff,
        saga_phases,
        300.0,
    )
