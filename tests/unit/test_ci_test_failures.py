"""scripts/test-failures, which CI prints last: it names each failed and errored test of a real
pytest run's JUnit XML report, with its message's first line, and says when a report is missing."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test-failures"

TESTS = '''
import pytest

def test_passes():
    assert True

def test_fails():
    assert 1 + 1 == 3, "arithmetic drifted\\nsecond line"

@pytest.fixture
def broken():
    raise RuntimeError("the fixture could not start its broker")

def test_errors(broken):
    pass

@pytest.mark.skip(reason="not here")
def test_skipped():
    pass
'''


def test_the_failed_and_errored_tests_of_a_report_are_named_with_their_message(tmp_path: Path):
    (tmp_path / "test_sample.py").write_text(TESTS)
    report = tmp_path / "junit-test-parallel.xml"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         f"--junitxml={report}", "test_sample.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    missing = tmp_path / "junit-testcontainers-parallel.xml"

    out = subprocess.run([sys.executable, str(SCRIPT), str(report), str(missing)],
                         capture_output=True, text=True, timeout=60, check=True).stdout

    lines = out.splitlines()
    assert lines[0].startswith("  FAILED test_sample::test_fails: AssertionError: arithmetic drifted")
    assert "second line" not in lines[0]
    assert lines[1] == ("  ERROR test_sample::test_errors: failed on setup with "
                        '"RuntimeError: the fixture could not start its broker"')
    assert lines[2] == f"{report}: 4 tests, 1 failed, 1 errors, 1 skipped"
    assert lines[3].startswith(f"{missing}: no report (FileNotFoundError")
    assert len(lines) == 4


def test_a_report_of_many_failures_names_some_and_counts_the_rest(tmp_path: Path):
    cases = "".join(f'<testcase classname="tests.integration.test_x" name="test_{n}">'
                    f'<error message="broker not ready {n}">trace</error></testcase>'
                    for n in range(30))
    report = tmp_path / "report.xml"
    report.write_text(f'<testsuite tests="30" failures="0" errors="30" skipped="0">{cases}'
                      '</testsuite>')
    out = subprocess.run([sys.executable, str(SCRIPT), str(report)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()
    assert lines[:8] == [f"  ERROR tests.integration.test_x::test_{n}: broker not ready {n}"
                         for n in range(8)]
    assert lines[8:] == [f"  ... and 22 more in {report}",
                         f"{report}: 30 tests, 0 failed, 30 errors, 0 skipped"]


def test_a_long_message_is_cut_so_one_test_cannot_fill_the_kept_output(tmp_path: Path):
    report = tmp_path / "report.xml"
    report.write_text('<testsuites><testsuite tests="1" failures="1" errors="0" skipped="0">'
                      '<testcase classname="tests.unit.test_x" name="test_y">'
                      f'<failure message="{"x" * 1000}">trace</failure></testcase>'
                      '</testsuite></testsuites>')
    out = subprocess.run([sys.executable, str(SCRIPT), str(report)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    failed = out.splitlines()[0]
    assert failed.startswith("  FAILED tests.unit.test_x::test_y: xxx")
    assert failed.endswith("…")
    assert len(failed) == len("  FAILED tests.unit.test_x::test_y: ") + 240
