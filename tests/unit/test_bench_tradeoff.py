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


def test_a_row_gives_transactions_per_second_over_the_window_to_quiet_and_per_saga() -> None:
    p = point(300.0, 100.0, 60.0, 2.0)  # 100 sagas, 1.25 s to quiet
    row = bt.tradeoff_row((100, 20), p, 50.0)
    assert row["transactions_per_s"] == pytest.approx(40.0)
    assert row["transactions_per_saga"] == pytest.approx(0.5)
    assert (row["commit_interval_ms"], row["commit_linger_ms"]) == (100, 20)
    none = bt.tradeoff_row((100, 20), {**p, "completed": 0, "to_quiet_s": math.nan}, 0.0)
    assert math.isnan(none["transactions_per_s"]) and math.isnan(none["transactions_per_saga"])


def test_the_table_has_a_line_per_policy() -> None:
    rows = [
        bt.tradeoff_row((100, 20), point(300.0, 299.0, 61.0, 2.0), 50.0),
        bt.tradeoff_row((50, 0), point(300.0, 300.0, 32.0, 2.4), 90.0),
    ]
    result = {"rate": 300.0, "orders": 1500, "rows": rows}
    lines = bt.format_tradeoff(result)
    assert "300 sagas/s, 1500 orders each" in lines[1]
    cells = [line.split() for line in lines[3:5]]
    assert cells[0][:5] == ["100", "20", "299.0", "61", "183"]
    assert cells[1][:2] == ["50", "0"] and cells[1][5] == "216.0"  # 90 over 125 / 300 s
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
