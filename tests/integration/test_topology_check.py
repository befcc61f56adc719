"""`sagastream topology check` against the definitions topic and the changelog of a real broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.ops import cli
from sagastream.ops.demo import settings_env
from tests.integration.helpers import loan_applied, store_saga

pytestmark = pytest.mark.integration


def _run(
    ns: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any, *argv: str, **env: str
) -> tuple[int, str]:
    for name, value in {**settings_env(ns.settings), **env}.items():
        monkeypatch.setenv(name, value)
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_check_refuses_dropping_a_saga_that_runs_and_allows_a_policy_change(
    ns: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    assert _run(ns, monkeypatch, capsys, "topics", "create")[0] == 0  # publishes v1
    store_saga(ns, "loan", "loan-1", loan_applied("loan-1"))
    data = yaml.safe_load(ns.settings.topology_file.read_text())
    data["sagas"]["order"]["steps"]["payment"]["retry"]["max_attempts"] = 5
    data["sagas"].pop("loan")
    changed = tmp_path / "topology.yaml"
    changed.write_text(yaml.safe_dump(data))
    env = {"SAGASTREAM_TOPOLOGY_FILE": str(changed)}

    code, out = _run(ns, monkeypatch, capsys, "topology", "check", **env)
    assert code == 1, out
    assert "loan: deployed v1" in out and "1 running" in out
    assert "removed while 1 instances of it run" in out
    assert "order.steps.payment.retry.max_attempts: 3 -> 5: safe" in out

    data["sagas"]["loan"] = yaml.safe_load(ns.settings.topology_file.read_text())["sagas"]["loan"]
    changed.write_text(yaml.safe_dump(data))
    code, out = _run(ns, monkeypatch, capsys, "topology", "check", "--allow", "safe", **env)
    assert code == 0, out
    assert "loan: shape" in out and "unchanged" in out
