"""The pure parts of `sagastream bench --console`: the pages it times, its table, and that
--console alone runs only that measurement."""

from __future__ import annotations

import pytest

from sagastream.ops import bench_console as bc
from tests.unit.test_bench import bench_options


def test_the_timed_pages_ask_for_a_saga_and_a_page_in_the_middle() -> None:
    pages = bc.queries(100_000)
    assert pages["key search"] == "/sagas?key=order-050000"
    assert pages["deep page"] == "/sagas?page=1000"  # sagas 49,951 to 50,000 of 100,000
    assert bc.queries(10)["deep page"] == "/sagas?page=1"
    assert set(pages) >= {"all, first page", "status filter", "overview"}


def test_the_table_has_the_catch_up_and_a_row_per_page() -> None:
    result = {
        "sagas": 100_000,
        "partitions": 4,
        "changelog_records": 110_000,
        "held": 100_000,
        "catch_up_s": 4.25,
        "catch_up_cpu_s": 3.5,
        "repeats": 5,
        "pages": {
            "key search": {
                "path": "/sagas?key=order-050000",
                "median_ms": 80.04,
                "max_ms": 91.5,
                "cpu_ms": 40.0,
            },
            "deep page": {
                "path": "/sagas?page=1000",
                "median_ms": 310.0,
                "max_ms": 402.25,
                "cpu_ms": 90.1,
            },
        },
    }
    lines = bc.format_console(result)
    assert "100,000 sagas in 4 partitions, 110,000 changelog records" in lines[1]
    assert "caught up in 4.25s (3.50s CPU" in lines[2]
    rows = [line.split() for line in lines[4:]]
    assert rows == [
        ["key", "search", "/sagas?key=order-050000", "80.0", "91.5", "40.0"],
        ["deep", "page", "/sagas?page=1000", "310.0", "402.2", "90.1"],
    ]


@pytest.mark.parametrize(
    ("argv", "console", "saga_phases"),
    [
        ([], None, True),
        (["--console", "100000"], 100_000, False),
        (["--console", "1000", "--orders", "50"], 1000, True),
    ],
)
def test_console_alone_runs_only_the_console_measurement(
    argv: list[str], console: int | None, saga_phases: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = bench_options(argv, monkeypatch)
    assert (options.console, options.saga_phases) == (console, saga_phases)
