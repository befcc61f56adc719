"""README's "Running against a secured Kafka", as written: its `sagastream acls` commands (the
one that applies ACLs runs against the secured broker, in tests/integration/test_secured.py) and
the refusal it shows, which must be what sagastream prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sagastream.core.topology import load_topology
from sagastream.ops.acls import roles
from sagastream.runtime.kafka_io import refused
from sagastream.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Running against a secured Kafka"


def section() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.split(r"\n## ", readme.split(SECTION, 1)[1], maxsplit=1)[0]


def commands() -> list[str]:
    """The section's indented `sagastream ...` lines, as a reader copies them (comments too)."""
    return [line.strip() for line in section().splitlines() if line.startswith("    sagastream ")]


def run_as_written(
    command: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """One README line in a shell, with the venv's `sagastream` and only the SAGASTREAM_* of
    `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGASTREAM_")}
    clean["PATH"] = f"{Path(sys.executable).parent}:{clean['PATH']}"
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_section_prints_the_acls_of_every_role_as_written() -> None:
    listed = commands()
    assert [c.split("#")[0].split()[:3] for c in listed] == [["sagastream", "acls", "--all"]] + [
        ["sagastream", "acls", "--role"]
    ], listed
    done = run_as_written(listed[0], {}, ROOT)
    assert done.returncode == 0, done.stderr
    principals = set(re.findall(r"principal=(User:[\w-]+)", done.stdout))
    demo = Settings()
    every = roles(load_topology(demo.topology_file, demo.schemas_path))
    assert principals == {f"User:{role}" for role in every}, principals
    assert "kafka-acls.sh --bootstrap-server" in done.stdout


def test_the_refusal_shown_is_what_sagastream_prints() -> None:
    shown = [line.strip() for line in section().splitlines() if "is not allowed" in line]
    settings = Settings(bootstrap_servers="kafka:9093", sasl_username="orchestrator")
    tid = "transactional id sagastream-orchestrator-host1-0"
    assert shown == [refused(settings, "WRITE", tid, "orchestrator")]
