"""The jobs project of the scenario suite: sagas whose handlers raise on a first attempt, for
what the demo's services never do. `write_project` lays it out (topology and derived schemas)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sagastream.events import records_of, write_schemas

APP = "tests.scenarios.jobs.app"


def write_project(directory: Path) -> Path:
    """The jobs project in `directory`: its topology.yaml and the schemas its models derive;
    returns the topology file."""
    directory.mkdir(parents=True, exist_ok=True)
    topology = directory / "topology.yaml"
    shutil.copy(Path(__file__).with_name("topology.yaml"), topology)
    write_schemas(records_of(APP), directory / "schemas")
    return topology
