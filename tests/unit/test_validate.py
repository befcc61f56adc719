"""`sagastream validate` and `schemas check` on a scaffolded project: what a worker start would
refuse makes them exit 1, for CI."""

from pathlib import Path

import pytest

from sagastream.ops import cli
from sagastream.ops.scaffold import init


def _project(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh `sagastream init` project (its own package name), as the working project."""
    directory = tmp_path / name
    init(directory)
    monkeypatch.setenv("SAGASTREAM_TOPOLOGY_FILE", str(directory / "topology.yaml"))
    monkeypatch.syspath_prepend(str(directory))
    return directory


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_valid_project_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _project(tmp_path, "shopok", monkeypatch)
    assert cli.main(["validate"]) == 0
    assert "are valid" in capsys.readouterr().out


def test_broken_inputs_fail_validate_and_schemas_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _project(tmp_path, "shopinputs", monkeypatch)
    _edit(
        directory / "topology.yaml",
        "inputs: {account: [account_id]}",
        "inputs: {account: [acount_id]}",
    )
    assert cli.main(["validate"]) == 1
    out = capsys.readouterr().out
    assert "steps.account.compensation.inputs.account" in out
    assert "AccountOpened has no field 'acount_id'" in out
    assert cli.main(["schemas", "check"]) == 1
    assert "AccountOpened has no field 'acount_id'" in capsys.readouterr().out


def test_a_handler_that_breaks_the_contract_fails_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _project(tmp_path, "shopcontract", monkeypatch)
    package = directory / "shopcontract"
    _edit(
        package / "handlers.py",
        "(cmd: CloseAccount) -> AccountClosed:",
        "(cmd: CloseAccount) -> AccountOpened:",
    )
    assert cli.main(["validate"]) == 1
    out = capsys.readouterr().out
    assert "handler role accounts:" in out
    assert "close_account declares it returns AccountOpened" in out
    assert "1 problems: a worker would not start" in out


def test_a_command_without_a_function_fails_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _project(tmp_path, "shopmissing", monkeypatch)
    _edit(
        directory / "shopmissing" / "handlers.py",
        "@app.handler\nasync def close_account",
        "async def close_account",
    )
    assert cli.main(["validate"]) == 1
    assert "no function for CloseAccount" in capsys.readouterr().out
