"""README's "Write your own saga", run as written: the wheel in a fresh venv outside the repository,
`sagastream init`, a second saga of parallel steps (sync, async, a slow optional one with a
`when:` whose handler raises on its first attempt and is retried, a hotel retried on a business
failure, a human approval that gives up after its maximum wait), the project's own tests, then
workers of the installed package on the real broker.

The outcomes are checked from the topics (read_committed), not from what the walkthrough prints.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.topology import load_topology
from sagastream.ops.client import EventClient
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore
from tests.conftest import run_lock

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Write your own saga"


@dataclass(frozen=True)
class Block:
    language: str
    options: tuple[str, ...]
    body: str


def walkthrough() -> list[Block]:
    """The fenced blocks of the README's walkthrough section, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [
        Block(language, tuple(options.split()), body)
        for language, options, body in re.findall(
            r"^```(\w+)([^\n]*)\n(.*?)^```$", section, re.S | re.M
        )
    ]


def test_the_walkthrough_names_its_files_and_commands() -> None:
    blocks = walkthrough()
    files = [b.options[0] for b in blocks if b.options]
    assert files == [
        "file=travel/events.py",
        "file=topology.yaml",
        "file=travel/handlers.py",
        "file=tests/test_trips.py",
        "file=book_trips.py",
    ]
    assert sum(b.language == "sh" for b in blocks) == 3


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """sagastream's wheel, built from this checkout, installed into a new venv."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    # pip builds in the checkout (its build/ and egg-info): two xdist workers whose tests of
    # this module need the fixture at once would build in the same directories, and one's
    # clean-up remove what the other is packing
    with run_lock(pytestconfig, "wheel-build"):
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(dist)])
    (wheel,) = dist.glob("sagastream-*.whl")
    env = base / "venv"
    _run([sys.executable, "-m", "venv", str(env)])
    _run([str(env / "bin" / "pip"), "install", "-q", str(wheel)])
    return env


def test_the_readme_walkthrough_runs_on_an_installed_wheel(
    broker: Any, venv: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prefix = f"w{uuid.uuid4().hex[:8]}-"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SAGASTREAM_", "PYTHON", "VIRTUAL"))
    }
    env |= {
        "PATH": f"{venv / 'bin'}:{env['PATH']}",
        "SAGASTREAM_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SAGASTREAM_TOPIC_PREFIX": prefix,
        "SAGASTREAM_DATA_DIR": str(tmp_path / "data"),
    }
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import sagastream; print(sagastream.__file__)"]
    )
    assert where.startswith(str(venv)), "the walkthrough must use the installed wheel"

    cwd, outputs = work, []
    for block in walkthrough():
        if block.language == "sh":
            out, cwd = _shell(block.body, cwd, env)
            outputs.append(out)
        else:
            _write(cwd, block)
    assert "3 passed" in outputs[0]  # the generated project's own tests
    assert "8 passed" in outputs[1]  # and the trip saga's
    trips_out = outputs[2]

    project = work / "travel"
    store = SchemaStore(project / "schemas")
    settings = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix)
    topology = load_topology(project / "topology.yaml", store.directory)
    client = EventClient(settings, topology, AvroCodec(store, LocalSchemaIds(store)))
    keys = dict(re.findall(r"^((lisbon|rome|atlantis|tokyo)-\d+): ", trips_out, re.M))
    assert set(keys.values()) == {"lisbon", "rome", "atlantis", "tokyo"}, trips_out
    trip = {kind: key for key, kind in keys.items()}

    outcomes = {m.key.decode(): m for m in client.read_to_end([settings.topic("sagas.outcomes")])}
    lisbon, rome, atlantis, tokyo = (
        outcomes[trip[k]] for k in ("lisbon", "rome", "atlantis", "tokyo")
    )
    assert lisbon.event_type == "SagaCompleted"
    assert sorted(lisbon.record["completed_steps"]) == ["car", "flight", "hotel"]
    assert rome.event_type == "SagaCompleted"
    assert sorted(rome.record["completed_steps"]) == ["flight", "hotel"]
    assert atlantis.event_type == "SagaCompensated"
    assert atlantis.record["failed_step"] == "hotel"
    assert tokyo.event_type == "SagaCompensated"
    assert tokyo.record["failed_step"] == "approval"

    commands = client.read_to_end(
        [settings.topic(t) for t in ("flights.commands", "cars.commands")]
    )
    sent = sorted((m.key.decode(), m.event_type) for m in commands)
    assert sent == sorted(
        [
            (trip["lisbon"], "BookFlight"),
            (trip["lisbon"], "RentCar"),  # its first attempt raised
            (trip["lisbon"], "RentCar"),
            (trip["rome"], "BookFlight"),
            (trip["atlantis"], "BookFlight"),
            (trip["atlantis"], "CancelFlight"),
            (trip["tokyo"], "BookFlight"),
            (trip["tokyo"], "CancelFlight"),
        ]
    )
    hotels = client.read_to_end([settings.topic("hotels.commands")])
    tries = [m.event_type for m in hotels if m.key == trip["atlantis"].encode()]
    assert tries == ["BookHotel", "BookHotel"]  # the failure was retried once (retry_on: failure)
    approvals = client.read_to_end([settings.topic("approvals.commands")])
    assert [m.key.decode() for m in approvals] == [trip["tokyo"]]
    cancels = {m.key.decode(): m.record for m in commands if m.event_type == "CancelFlight"}
    for kind in ("atlantis", "tokyo"):
        assert cancels[trip[kind]]["booking_ref"] == f"FL-trip:{trip[kind]}:flight"


def _run(argv: list[str], **kwargs: Any) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _shell(script: str, cwd: Path, env: dict[str, str]) -> tuple[str, Path]:
    """Run a README shell block; returns its output and the directory it ended in.

    Its output goes to a file, not a pipe, and its process group is killed once it ended: a
    block that fails before its `kill %1` (`bash -e`) leaves its background worker running,
    which held a pipe open until the 600 s timeout, with the block's output lost."""
    marker = cwd / ".walkthrough-cwd"
    with tempfile.TemporaryFile() as output:
        block = subprocess.Popen(
            ["bash", "-e", "-c", f"{script}\npwd > {marker}"],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = block.wait(timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(block.pid, signal.SIGKILL)  # what the block left running
            block.wait()
        output.seek(0)
        out = output.read().decode(errors="replace")
    assert code == 0, f"README block failed:\n{script}\n---\n{out}"
    ended = Path(marker.read_text().strip())
    marker.unlink()
    return out, ended


def _write(cwd: Path, block: Block) -> None:
    """A README file block: written, appended to, or (YAML) merged section by section."""
    path = cwd / block.options[0].removeprefix("file=")
    mode = block.options[1] if len(block.options) > 1 else "write"
    if mode == "append":
        path.write_text(path.read_text() + block.body)
    elif mode == "merge":
        document = yaml.safe_load(path.read_text())
        for section, value in yaml.safe_load(block.body).items():
            if isinstance(value, list):
                document.setdefault(section, []).extend(value)
            else:
                document.setdefault(section, {}).update(value)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.body)


def test_the_installed_demo_runs_outside_any_project(
    broker: Any, registry: Any, venv: Path, tmp_path: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SAGASTREAM_", "PYTHON", "VIRTUAL"))
    }
    env |= {
        "SAGASTREAM_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SAGASTREAM_SCHEMA_REGISTRY_URL": registry.url,
        "SAGASTREAM_DATA_DIR": str(tmp_path / "data"),
    }
    # exit 0 means every order reached the outcome it was built for
    out = _run([str(venv / "bin" / "sagastream"), "demo", "--orders", "20"], cwd=tmp_path, env=env)
    assert "published 20 orders" in out, out
    assert re.search(r"stuck\s+0\n", out) and re.search(r"total\s+20\n", out), out
