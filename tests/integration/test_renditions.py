"""A saga written as the README teaches, on real workers, under a burst of 200 (issue 15, Tests):
four parallel renditions sharing one compensation event, a flaky step, a step that hangs on its
first attempt, a human approval that gives up after its maximum wait, and a handler that raises
(tests/renditions). Every saga ends as the project's rules say, every step takes exactly the
attempts its rule says (none more from queueing alone), no command is sent twice, and no record
is dead-lettered."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.topology import SIGNAL_EVENT
from sagastream.ops.client import Received
from tests.integration.helpers import every_dead_letter, wait_outcomes
from tests.renditions import expected, write_project
from tests.renditions.app import RENDITIONS, misbehaves

pytestmark = pytest.mark.integration

SAGAS = 200
MAX_WAIT_MS = 30_000  # the project's week, shortened: real time passes here
KEYS = [f"video-{i:03d}" for i in range(SAGAS)]
APPROVED = {k for k in KEYS if expected(k).outcome == "completed"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "media")


@pytest.fixture
def topology_patch():
    def patch(data: dict[str, Any]) -> None:
        data["sagas"]["media"]["steps"]["approval"]["max_wait_ms"] = MAX_WAIT_MS

    return patch


def _approve_once_waiting(ns: Any, keys: set[str]) -> None:
    """Approve each saga of `keys` as soon as its approval step has started (a signal before
    that is ignored), so that no approval waits for the other sagas' and meets the max wait."""
    approved: set[str] = set()

    def started(msgs: list[Received]) -> bool:
        for m in msgs:
            key = m.key.decode() if m.key else ""
            if (
                key in keys
                and key not in approved
                and m.record
                and any(
                    c["what"] == "step_started" and c["step"] == "approval"
                    for c in m.record["changes"]
                )
            ):
                # straight to the signal topic: send_signal's check that the saga is stored
                # reads the changelog once a signal, too slow for a burst
                fields = {"saga_type": "media", "step": "approval", "outcome": "approved"}
                ns.client.publish(SIGNAL_EVENT, key, {**fields, "decided_by": "reviewer"})
                approved.add(key)
        ns.client.flush()
        return keys <= approved

    ns.client.read([ns.topic("sagas.lifecycle")], started, 90)
    assert keys <= approved, f"approval never started for {sorted(keys - approved)}"


def _commands(ns: Any) -> list[Received]:
    """Every committed command of every handler role (read_committed)."""
    topics = sorted({ns.topic(h.consumes) for h in ns.topology.handlers.values()})
    return [m for m in ns.client.read_to_end(topics) if m.event_type]


def test_a_burst_of_media_sagas_ends_as_their_rules_say(ns: Any, start_workers: Any) -> None:
    workers = start_workers("orchestrator", "renders", "media")
    for key in KEYS:
        ns.client.publish("VideoUploaded", key, {"video_id": key, "title": f"clip {key}"})
    ns.client.flush()

    _approve_once_waiting(ns, APPROVED)
    try:
        outcomes = wait_outcomes(ns, set(KEYS), timeout=90)
    finally:
        workers.check_alive()

    for key in KEYS:
        want, got = expected(key), outcomes[key]
        assert got.event_type == f"Saga{want.outcome.capitalize()}", (key, got.record)
        if want.outcome == "compensated":
            assert got.record["failed_step"] == want.failed_step, (key, got.record)
            assert sorted(got.record["compensated_steps"]) == sorted(RENDITIONS), key
    raised = [outcomes[k].record["reason"] for k in KEYS if misbehaves("raise", k)]
    assert raised and all("RuntimeError: watermark service refused" in r for r in raised), raised

    commands = _commands(ns)
    sent = Counter(
        (m.key.decode(), m.record["meta"]["step"], m.event_type, m.record["meta"]["attempt"])
        for m in commands
    )
    assert [c for c, n in sent.items() if n > 1] == [], "commands sent twice"
    attempts = {(k, s): a for (k, s, t, a) in sent if t != "DeleteRendition"}
    for key in KEYS:
        want = expected(key).attempts
        got = {s: max(a for (k, s2), a in attempts.items() if k == key and s2 == s) for s in want}
        assert got == want, f"{key}: attempts {got}, its rules say {want}"
    undone = sorted((k, s) for (k, s, t, _) in sent if t == "DeleteRendition")
    assert undone == sorted(
        (k, s) for k in KEYS if expected(k).outcome == "compensated" for s in RENDITIONS
    )
    assert every_dead_letter(ns) == []
