"""README's "Changing a saga": its diff example, run as written on a copy of the demo project,
prints what the README shows; and the `topology diff` command's exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sagastream.ops import cli

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Changing a saga"
SEPARATOR = "\x1e"  # between the outputs of the transcript's commands


def readme_blocks() -> list[tuple[str, str]]:
    """(language, body) of the section's fenced blocks, dedented as a reader copies them."""
    readme = (ROOT / "README.md").read_text()
    section = re.split(r"\n##+ ", readme.split(SECTION, 1)[1], maxsplit=1)[0]
    found = re.findall(r"^( *)```(\w*)\n(.*?)^\1```$", section, re.S | re.M)
    return [(language, textwrap.dedent(body)) for _, language, body in found]


def transcript_of(body: str) -> list[tuple[str, str]]:
    """`$ command` lines, each with the output the README shows under it."""
    pairs: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            pairs[-1][1].append(line)
    return [(command, "\n".join(out)) for command, out in pairs]


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """The demo project's topology and schemas, in a folder of their own."""
    (tmp_path / "topology.yaml").write_text((ROOT / "topology.yaml").read_text())
    (tmp_path / "schemas").symlink_to(ROOT / "schemas")
    return tmp_path


def _shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGASTREAM_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the venv's `sagastream`
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_readme_diff_example_prints_what_the_readme_shows(project: Path) -> None:
    (setup_language, setup), (_, shown) = readme_blocks()[:2]
    assert setup_language == "sh"
    done = _shell("set -e\n" + setup, project)
    assert done.returncode == 0, done.stdout + done.stderr
    commands = transcript_of(shown)
    assert [c for c, _ in commands][0] == "sagastream topology diff topology.yaml topology-v2.yaml"
    # one shell, so that `echo $?` sees the command before it
    script = "".join(f"{c}\n__rc=$?\nprintf '{SEPARATOR}'\n(exit $__rc)\n" for c, _ in commands)
    done = _shell(script, project)
    outputs = [out.removesuffix("\n") for out in done.stdout.split(SEPARATOR)[:-1]]
    assert outputs == [out for _, out in commands], done.stderr


def _diff_files(project: Path, edit: tuple[str, str]) -> tuple[str, str]:
    old, new = project / "topology.yaml", project / "topology-v2.yaml"
    text = old.read_text()
    assert edit[0] in text
    new.write_text(text.replace(edit[0], edit[1]))
    return str(old), str(new)


RETRY = (
    "retry: {max_attempts: 3, initial_backoff_ms: 500",
    "retry: {max_attempts: 4, initial_backoff_ms: 500",
)
KEY = ("key_field: loan_id", "key_field: customer_id")


def test_exit_0_when_every_class_is_allowed_and_1_with_the_rest(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _diff_files(project, RETRY)
    assert cli.main(["topology", "diff", *files]) == 0
    out = capsys.readouterr().out
    assert "loan.steps.credit_check.retry.max_attempts: 3 -> 4: safe" in out
    assert cli.main(["topology", "diff", *files, "--allow", "safe"]) == 0

    files = _diff_files(project, KEY)
    assert cli.main(["topology", "diff", *files]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-2:] == [
        "1 changes of a class not allowed (--allow safe,version):",
        "  loan.key_field: loan_id -> customer_id: sagas in flight were started and keyed by "
        "loan_id; give the changed saga a new name instead: refused",
    ]
    assert cli.main(["topology", "diff", *files, "--allow", "safe,version,refused"]) == 0


def test_json_lists_each_saga_and_what_is_not_allowed(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _diff_files(project, KEY)
    assert cli.main(["topology", "diff", *files, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(s["saga"], s["class"]) for s in report["sagas"]] == [
        ("order", None),
        ("loan", "refused"),
    ]
    assert [f["where"] for f in report["not_allowed"]] == ["loan.key_field"]
    assert report["allow"] == ["safe", "version"]


def test_exit_2_when_a_file_cannot_be_read(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = str(project / "topology.yaml")
    assert cli.main(["topology", "diff", old, str(project / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err
    (project / "broken.yaml").write_text("sagas: [")
    assert cli.main(["topology", "diff", old, str(project / "broken.yaml")]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err
    # read with the schemas next to it: none there
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "topology.yaml").write_text((project / "topology.yaml").read_text())
    assert cli.main(["topology", "diff", old, str(elsewhere / "topology.yaml")]) == 2
    assert f"no schema file OrderPlaced.avsc in {elsewhere / 'schemas'}" in capsys.readouterr().err
    assert cli.main(["topology", "diff", old, old, "--allow", "safe,unsafe"]) == 2


def test_the_schemas_dir_setting_serves_a_file_with_no_schemas_beside_it(
    project: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "topology.yaml").write_text((project / "topology.yaml").read_text())
    monkeypatch.setenv("SAGASTREAM_SCHEMAS_DIR", str(ROOT / "schemas"))
    old = str(project / "topology.yaml")
    assert cli.main(["topology", "diff", old, str(elsewhere / "topology.yaml")]) == 0
    assert "order: shape" in capsys.readouterr().out
