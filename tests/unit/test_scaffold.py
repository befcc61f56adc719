"""`sagastream init`: the project it writes, without running it (test_walkthrough runs one)."""

import ast
from pathlib import Path

import pytest

from sagastream.core.topology import load_topology
from sagastream.ops.scaffold import init, package_name


def test_the_package_is_named_after_the_folder(tmp_path: Path) -> None:
    assert package_name(tmp_path / "Travel-Booking") == "travel_booking"
    assert package_name(tmp_path / "2go") == "2go_app"
    assert package_name(tmp_path / "class") == "class_app"


def test_init_writes_a_project_whose_topology_loads(tmp_path: Path) -> None:
    project = tmp_path / "shopfront"
    written = {p.relative_to(project).as_posix() for p in init(project)}
    assert {"topology.yaml", "README.md", "run.py", "shopfront/handlers.py"} <= written
    assert "schemas/SubscriptionRequested.avsc" in written
    topology = load_topology(project / "topology.yaml", project / "schemas")
    assert topology.app == "shopfront.handlers"
    assert list(topology.sagas) == ["subscription"]
    for path in project.rglob("*.py"):
        ast.parse(path.read_text(), str(path))  # every template is valid Python
    assert "python -m pytest tests" in (project / "README.md").read_text()


def test_init_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        init(tmp_path)
