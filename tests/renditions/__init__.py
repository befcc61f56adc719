"""A media project written as the README teaches (events as models, handlers, topology.yaml):
four parallel renditions sharing one undo, a flaky step, a hanging step, a step that raises and a
human approval with a maximum wait; for the kit (tests/unit) and real workers (tests/integration)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from sagastream.events import records_of, write_schemas

APP = "tests.renditions.app"


def write_project(directory: Path) -> Path:
    """The media project in `directory`: its topology.yaml and the schemas its models derive;
    returns the topology file."""
    directory.mkdir(parents=True, exist_ok=True)
    topology = directory / "topology.yaml"
    shutil.copy(Path(__file__).with_name("topology.yaml"), topology)
    write_schemas(records_of(APP), directory / "schemas")
    return topology


@dataclass(frozen=True)
class Expected:
    """How a media saga must end, and the attempts each of its steps must take."""

    outcome: str  # completed or compensated
    failed_step: str | None
    attempts: dict[str, int]


def expected(key: str) -> Expected:
    """The outcome and attempts of the saga of `key`, from the rules its handlers follow."""
    from tests.renditions.app import RENDITIONS, misbehaves

    attempts = dict.fromkeys([*RENDITIONS, "watermark"], 1)
    attempts["transcript"] = 2 if misbehaves("flaky", key) else 1
    attempts["thumbnail"] = 2 if misbehaves("hang", key) else 1
    if misbehaves("raise", key):
        return Expected("compensated", "watermark", attempts)
    if not misbehaves("approve", key):
        return Expected("compensated", "approval", attempts)
    return Expected("completed", None, attempts)
