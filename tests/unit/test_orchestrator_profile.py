"""The orchestrator microbenchmark (tests/perf/orchestrator_profile.py) runs what it claims to:
every order saga it starts reaches its outcome through the loop's code path, with nothing
dead-lettered, so its figures are the work of whole sagas."""

from __future__ import annotations

from pathlib import Path

from tests.perf.orchestrator_profile import main, run_sagas


def test_every_saga_of_the_profile_completes_on_rocksdb(tmp_path: Path) -> None:
    run = run_sagas(30, tmp_path)
    assert run.statuses == {"completed": 30}
    assert not [t for t, *_ in run.producer.committed if t.endswith(".dlq")]
    assert run.cpu > 0


def test_the_profile_prints_the_median_of_its_runs() -> None:
    lines: list[str] = []
    figures = main(["--sagas", "5", "--repeat", "3", "--memory"], out=lines.append)
    assert len(figures) == 3 and all(f > 0 for f in figures)
    assert lines[0].startswith("orchestrator CPU per saga over 5 order sagas: median ")
    assert lines[1].startswith("cyclic GC while deciding: ")
