"""Scaling the orchestrator under load: a second process joins, the first leaves, one dies.

Partitions move between processes three times while orders flow; each move commits or
aborts the open transaction and restores the new owner's stores from the changelog. Checked
from the topics and the ledgers like the crash suite.
"""

from __future__ import annotations

import random
import time
from typing import Any

from sagastream.runtime.worker import CLOSE_GRACE_S
from tests.integration.conftest import HANDLERS
from tests.integration.faults import (
    check_exactly_once,
    mixed_orders,
    publish_paced,
    wait_all_ended,
)

WINDOW_S = 24.0


def test_orchestrators_join_leave_and_die_under_load_without_a_lost_or_doubled_saga(
    ns: Any, start_workers: Any
) -> None:
    first = start_workers("orchestrator")
    handlers = start_workers(HANDLERS)
    orders = mixed_orders(800, "scale", random.Random(11))
    expected = {key: outcome for key, _, outcome in orders}
    started = time.monotonic()

    def at(seconds: float) -> None:
        time.sleep(max(0.0, started + seconds - time.monotonic()))

    published = publish_paced(ns, orders, WINDOW_S)
    at(4)
    second = start_workers("orchestrator")  # the partitions are shared between two processes
    at(10)
    code, took = first.terminate("orchestrator")  # the second takes them all
    assert code == 0 and took <= ns.settings.drain_timeout_s + CLOSE_GRACE_S
    at(14)
    again = start_workers("orchestrator")  # shared again
    at(18)
    again.kill("orchestrator")  # SIGKILL: its open transaction must not count
    assert published.wait(WINDOW_S + 120), "publishing did not finish"

    outcomes = wait_all_ended(ns, set(expected), second, timeout=180)
    check_exactly_once(ns, expected, outcomes)
    second.check_alive()
    handlers.check_alive()
