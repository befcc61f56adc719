"""The pure parts of `sagastream bench --scale-*`: counts, generated topologies, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagastream.core.topology import load_topology
from sagastream.ops import bench_run
from sagastream.ops import bench_scale as bs
from sagastream.runtime.settings import Settings
from tests.unit.test_bench import bench_options, point


def test_counts_are_whole_numbers_each_once() -> None:
    assert bs.parse_counts("2, 5,10,,5", "--scale-steps") == (2, 5, 10)
    assert bs.parse_counts("100_000,1000000", "--scale-stored") == (100_000, 1_000_000)
    for bad in ("two", "0", "", "-1"):
        with pytest.raises(ValueError, match="--scale-steps"):
            bs.parse_counts(bad, "--scale-steps")


@pytest.mark.parametrize("steps", [2, 5, 10])
def test_a_chain_runs_its_generated_steps_one_after_the_other(tmp_path: Path, steps: int) -> None:
    path = bs.sized_topology(Settings().topology_file, tmp_path, steps, chained=True)
    saga = load_topology(path).sagas["order"]
    names = list(saga.steps)
    assert len(names) == steps
    assert names[:4] == ["payment_1", "inventory_2", "shipping_3", "payment_4"][:steps]
    assert not saga.steps[names[0]].depends_on
    for before, step in zip(names, names[1:], strict=False):
        assert list(saga.steps[step].depends_on) == [before]


def test_a_fanout_runs_them_all_at_once_each_undone_with_its_own_result(tmp_path: Path) -> None:
    path = bs.sized_topology(Settings().topology_file, tmp_path, 5, chained=False)
    topology = load_topology(path)
    saga = topology.sagas["order"]
    assert len(saga.steps) == 5 and not any(s.depends_on for s in saga.steps.values())
    # the refund of payment_4 takes payment_4's payment_id, not a step that is not there
    undo = saga.steps["payment_4"].compensation
    assert undo is not None and "payment_4" in undo.inputs and "payment" not in undo.inputs
    # the other sagas and the handlers are the file's
    assert topology.sagas["loan"] == load_topology(Settings().topology_file).sagas["loan"]
    assert set(topology.handlers_for("order")) == {
        "payment",
        "inventory",
        "shipping",
        "notification",
    }


def test_a_row_sums_the_handlers_and_gives_cpu_per_step_for_sized_sagas() -> None:
    p = point("max", 500.0, 40.0, 6.0)
    p["cpu_ms_per_saga"] = {
        "orchestrator": 1.0,
        "payment": 0.5,
        "notification": 0.25,
        "broker": 3.0,
        "driver": 0.25,
        "total": 5.0,
    }
    row = bs.scale_row("chain", 5, p)
    assert (row["handlers_ms"], row["orchestrator_ms"], row["broker_ms"]) == (0.75, 1.0, 3.0)
    assert row["per_step_ms"] == pytest.approx(1.0)
    assert bs.scale_row("stored", 100_000, p)["per_step_ms"] is None


def test_the_table_gives_each_row_against_the_first_of_its_series() -> None:
    rows = [
        bs.scale_row("chain", 2, point("max", 900.0, 50.0, 2.0)),
        bs.scale_row("chain", 10, point("max", 300.0, 90.0, 10.0)),
        bs.scale_row("stored", 0, point("max", 800.0, 50.0, 3.0)),
        bs.scale_row("stored", 1_000_000, point("max", 780.0, 55.0, 3.3)),
        bs.scale_row("orchestrators", 4, point("max", 700.0, 60.0, 3.6)),
    ]
    result = {"orders": 2000, "rows": rows}
    lines = bs.format_scale(result)
    by_label = {line[2:28].strip(): line.split() for line in lines[3:-1]}
    assert by_label["chain of 10 steps"][-1] == "5.00x"
    assert by_label["chain of 10 steps"][-2] == "1.000"  # per step, as for 2 steps
    assert by_label["1,000,000 stored sagas"][-1] == "1.10x"
    assert by_label["4 orchestrators"][-1] == "1.00x"  # the first of its series
    assert "linear in steps" in lines[-1]
    assert "scale with work" in "\n".join(bench_run.report({"scale": result}))
    rows[3]["point"]["stuck"] = 2
    assert any(p["stuck"] for p in bench_run.measured_points({"scale": result}))


@pytest.mark.parametrize(
    ("argv", "expected", "saga_phases"),
    [
        ([], (None, None, None), True),
        (["--scale-steps"], ((2, 5, 10), None, None), False),
        (
            ["--scale-stored", "--scale-orchestrators"],
            (None, (100_000, 1_000_000), (1, 2, 4)),
            False,
        ),
        (["--scale-orchestrators", "3", "--steady", "100"], (None, None, (3,)), True),
    ],
)
def test_scale_flags_alone_run_only_the_series(
    argv: list[str],
    expected: tuple[tuple[int, ...] | None, ...],
    saga_phases: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = bench_options(argv, monkeypatch)
    got = (options.scale_steps, options.scale_stored, options.scale_orchestrators)
    assert (got, options.saga_phases, options.scale_orders) == (expected, saga_phases, 2000)
