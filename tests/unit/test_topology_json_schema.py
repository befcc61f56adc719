"""The JSON Schema of topology.yaml that editors use: shipped in the package as generated, every
topology file of this repository (and a new project's) passes it, and a wrong one does not."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from sagastream.core.topology import file_json_schema, load_topology
from sagastream.ops import cli

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "streams" / "topology.schema.json"
FILES = sorted(
    p
    for p in [
        ROOT / "topology.yaml",
        *ROOT.glob("handlers/topology.yaml"),
        *ROOT.glob("tests/**/topology.yaml"),
    ]
    if "build" not in p.parts
)


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SHIPPED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_the_generated_one() -> None:
    """Regenerate it with `sagastream topology schema > streams/topology.schema.json`."""
    assert json.loads(SHIPPED.read_text()) == file_json_schema()


def test_the_cli_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["topology", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == file_json_schema()


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_topology_file_here_passes_it(path: Path) -> None:
    load_topology(path, path.parent / "schemas" if (path.parent / "schemas").is_dir() else None)
    errors = [e.message for e in validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def test_a_new_projects_topology_passes_it(tmp_path: Path) -> None:
    assert cli.main(["init", str(tmp_path / "shop")]) == 0
    errors = list(
        validator().iter_errors(yaml.safe_load((tmp_path / "shop" / "topology.yaml").read_text()))
    )
    assert errors == []


def test_what_the_loader_refuses_by_shape_the_schema_refuses_too() -> None:
    data = yaml.safe_load((ROOT / "topology.yaml").read_text())
    data["sagas"]["order"]["steps"]["payment"]["retry"]["max_attemps"] = 5  # a typo
    data["sagas"]["order"]["deadline_ms"] = "two minutes"
    messages = " | ".join(e.message for e in validator().iter_errors(data))
    assert "max_attemps" in messages and "two minutes" in messages
