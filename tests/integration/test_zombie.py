"""A zombie orchestrator with armed timers: stopped (SIGSTOP) past its session again and again
while a second one takes its partitions, then let go on (SIGCONT) with timers due at once.

The zombie's first tick fires those timers before it hears it lost its partitions, and with
no linger it commits them before its next poll would tell it: a timer-only transaction must
still be fenced by the group generation, and whatever the fenced transactions buffered
(commands, states, audit trail) must go with them. Checked from the topics, read_committed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagastream.ops.demo import WorkerSet
from tests.integration.faults import publish_paced, wait_all_ended
from tests.integration.helpers import every_dead_letter, good_order

CYCLES = 20
LONG_STOP_S = 7.0  # past the 6 s session: the other member takes every partition
SHORT_STOP_S = 0.5
RUN_S = 0.5
COMMANDS = ("payments.commands", "inventory.commands", "shipping.commands")
TERMINAL = ("completed", "compensated", "failed")


@pytest.fixture
def topology_patch() -> Any:
    def patch(data: dict[str, Any]) -> None:
        # no payment handler runs: every saga keeps payment timers armed until it compensates
        retry = {"max_attempts": 3, "initial_backoff_ms": 300, "jitter": "none"}
        # (no handler reports anything: the orchestrator's own timer, schedule_to_close_ms, ends
        # each attempt)
        data["sagas"]["order"]["steps"]["payment"].update(
            timeout_ms=1500, schedule_to_close_ms=1500, retry=retry
        )

    return patch


@pytest.fixture
def zombie(ns: Any, tmp_path: Path) -> Iterator[WorkerSet]:
    """An orchestrator that commits as soon as it has decided (no linger)."""
    worker = WorkerSet(ns.settings, tmp_path / "logs-zombie")
    worker.start(["orchestrator"], extra_env={"SAGASTREAM_COMMIT_LINGER_MS": "0"})
    worker.wait_ready()
    yield worker
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.procs["orchestrator"].pid, signal.SIGCONT)
    worker.stop()


def test_a_zombie_orchestrator_with_armed_timers_sends_no_command_twice(
    ns: Any, start_workers: Any, zombie: WorkerSet
) -> None:
    other = start_workers("orchestrator")
    start_workers("inventory,shipping,notification")
    keys = [f"order-zombie-{i:03d}" for i in range(240)]
    window = CYCLES * ((LONG_STOP_S + SHORT_STOP_S) / 2 + RUN_S)
    published = publish_paced(ns, [(k, good_order(k), "") for k in keys], window)
    pid = zombie.procs["orchestrator"].pid
    for cycle in range(CYCLES):
        os.killpg(pid, signal.SIGSTOP)
        time.sleep(LONG_STOP_S if cycle % 2 == 0 else SHORT_STOP_S)
        os.killpg(pid, signal.SIGCONT)
        time.sleep(RUN_S)
    assert published.wait(60)

    outcomes = wait_all_ended(ns, set(keys), other, timeout=120)
    per_saga = Counter(m.key.decode() for m in outcomes if m.key)
    assert sorted(set(keys) - set(per_saga)) == [], "sagas without an outcome"
    assert {k: n for k, n in per_saga.items() if n != 1} == {}, "sagas with several outcomes"
    for topic in COMMANDS:
        msgs = [m for m in ns.client.read_to_end([ns.topic(topic)]) if m.record]
        sent = Counter((m.record["idempotency_key"], m.record["meta"]["attempt"]) for m in msgs)
        assert {k: n for k, n in sent.items() if n > 1} == {}, f"duplicate commands on {topic}"
    assert every_dead_letter(ns) == [], "dead letters"
    _check_trail(ns, set(keys))
    zombie.check_alive()
    other.check_alive()


def _check_trail(ns: Any, keys: set[str]) -> None:
    """The audit trail holds what committed, once: a saga starts and ends once, and a record's
    status is the end it reports."""
    seen: Counter[tuple[str, str]] = Counter()
    for record in ns.client.read_to_end([ns.topic("sagas.lifecycle")]):
        assert record.record is not None and record.key is not None
        key = record.key.decode()
        whats = [c["what"] for c in record.record["changes"]]
        ended = [w for w in whats if w in TERMINAL]
        assert not ended or record.record["status"] == ended[-1], (key, record.record)
        seen.update((key, w) for w in whats if w == "started" or w in TERMINAL)
    assert {k: n for k, n in seen.items() if n > 1} == {}, "changes recorded twice"
    assert {k for k, w in seen if w in TERMINAL} == keys
