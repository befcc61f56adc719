"""README's "Changing a saga", run as written on a fresh prefix with real workers: the diff
example's setup makes topology-v2.yaml, then each command of the section's transcript runs in
the project's folder (shadow, check, topics create, the deploy, versions, migrate) and prints
output of the shape the README shows (numbers, times, shapes, list items and column
widths may differ; `...` stands for any lines)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.state import STARTED, SUCCEEDED
from sagastream.ops.demo import WorkerSet, settings_env
from sagastream.ops.migrate import running_on
from sagastream.runtime.settings import Settings
from tests.integration.helpers import place_order, wait_outcomes
from tests.unit.test_readme_changing_a_saga import ROOT, readme_blocks, transcript_of

pytestmark = [pytest.mark.integration, pytest.mark.once]

DEPLOY = "# restart the orchestrators on topology-v2.yaml, one by one"
ORDERS = 12  # placed before the change: the history the shadow replays
IN_FLIGHT = 3  # placed with no shipping handler: still on v1 when v2 is deployed
WAIT_S = 60.0  # a hang guard for what the workers must have done before the next command


# what may differ from run to run, and what it may be instead
TOKENS = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)|(?P<shape>\b[0-9a-f]{12}\b)"
    r"|(?P<list>\[[^]]*\])|(?P<number>\d+(?:\.\d+)?)|(?P<space>  +)"
)
ANY = {
    "time": r"[0-9-]+ [0-9:.]+",
    "shape": r"[0-9a-f]{12}",
    "list": r"\[[^]]*\]",  # a list's items (a compensation order, say)
    "number": r"\d+(?:\.\d+)?",
    "space": r" +",  # columns are as wide as their values
}


def shape(shown: str) -> re.Pattern[str]:
    """The README's output as a pattern: times, shapes, lists, numbers and column gaps are any
    such; `...` is any lines."""
    lines = []
    for line in shown.splitlines():
        if line.strip() == "...":
            lines.append(r"(?:[^\n]*\n)*?")
            continue
        parts, at = [], 0
        for token in TOKENS.finditer(line):
            parts += [re.escape(line[at : token.start()]), ANY[token.lastgroup or "space"]]
            at = token.end()
        lines.append("".join(parts) + re.escape(line[at:]) + r"\n")
    return re.compile("".join(lines))


def _shell(command: str, cwd: Path, env: dict[str, str], rc: int = 0) -> tuple[str, int]:
    """Run a command as a reader would, `$?` being `rc` (the command before it): its output
    (with its errors if it could not run) and its exit code."""
    done = subprocess.run(
        ["bash", "-c", f"(exit {rc}); {command}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    failed = f"[exit {done.returncode}] {done.stderr}" if done.returncode > 1 else ""
    return done.stdout + failed, done.returncode


def wait_waiting_for_shipping(settings: Settings, shape: str, keys: set[str]) -> None:
    """Until each order of `keys` has its payment and stock done and waits for its shipment,
    by the changelog."""

    def waiting() -> set[str]:
        return {
            key
            for key, state in running_on(settings, "order", shape, True)
            if key in keys
            and state.steps["shipping"].status == STARTED
            and state.steps["payment"].status == state.steps["inventory"].status == SUCCEEDED
        }

    deadline = time.monotonic() + WAIT_S
    while waiting() != keys:
        assert time.monotonic() < deadline, f"not paid, reserved and shipping: {keys - waiting()}"
        time.sleep(0.5)


def test_the_readme_flow_prints_what_the_readme_shows(ns: Any, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "topology.yaml").write_text((ROOT / "topology.yaml").read_text())
    (project / "schemas").symlink_to(ROOT / "schemas")
    blocks = readme_blocks()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGASTREAM_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    v1 = ns.settings.model_copy(update={"topology_file": project / "topology.yaml"})
    env |= settings_env(v1)
    assert _shell("set -e\n" + blocks[0][1], project, env)[1] == 0
    v2 = v1.model_copy(update={"topology_file": project / "topology-v2.yaml"})

    handlers = WorkerSet(v1, tmp_path / "handlers")
    shipping = WorkerSet(v1, tmp_path / "shipping")
    orchestrators = [WorkerSet(v1, tmp_path / "v1")]
    try:
        handlers.start(["payment,inventory,notification"])
        handlers.wait_ready()
        shipping.start(["shipping"])
        shipping.wait_ready()
        orchestrators[0].start(["orchestrator"])
        orchestrators[0].wait_ready()
        done = {f"order-42-{i:05d}" for i in range(ORDERS)}
        for key in sorted(done):
            place_order(ns, key, mixed=True)
        wait_outcomes(ns, done, timeout=120)
        # no shipping handler now: these stay on v1's shipping step while v2 is deployed
        shipping.stop()
        running = {f"order-43-{i:05d}" for i in range(IN_FLIGHT)}
        for key in sorted(running):
            place_order(ns, key)
        # paid and reserved before the deploy, as the README's migrate output shows them: the
        # shipping commands go out with the others, but their results come later
        wait_waiting_for_shipping(v1, ns.topology.sagas["order"].shape, running)
        transcript = transcript_of(blocks[2][1])
        assert DEPLOY in [command for command, _ in transcript]
        outputs, rc = [], 0
        for command, _ in transcript:
            if command == DEPLOY:
                orchestrators[0].terminate("orchestrator")
                orchestrators.append(WorkerSet(v2, tmp_path / "v2"))
                orchestrators[-1].start(["orchestrator"])
                orchestrators[-1].wait_ready()
                outputs.append("")
                continue
            out, rc = _shell(command, project, env, rc)
            host = f"-{socket.gethostname()}-"  # in the instance ids of the definitions' publishers
            outputs.append(out.replace(ns.settings.topic_prefix, "").replace(host, "-web-"))
        for (command, shown), out in zip(transcript, outputs, strict=True):
            assert shape(shown + "\n" if shown else "").fullmatch(out), f"$ {command}\n{out}"
    finally:
        for workers in (handlers, shipping, *orchestrators):
            workers.stop()
