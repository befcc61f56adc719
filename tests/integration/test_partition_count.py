"""Partitions added to an input topic while the orchestrator runs are refused, not looped on.

Keys would hash to other partitions than the stores that hold their sagas, and the changelog
has no partition for the new ones: the orchestrator says so, processes nothing, and stays up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from confluent_kafka.admin import NewPartitions

from sagastream.ops.admin import admin_client
from tests.integration.helpers import place_order, wait_outcomes

REFUSED = "partition counts differ"


def test_partitions_added_to_an_input_while_running_are_refused_with_a_clear_message(
    ns: Any, start_workers: Any, tmp_path: Path
) -> None:
    workers = start_workers("orchestrator", "payment,inventory,shipping,notification")
    place_order(ns, "order-before")
    wait_outcomes(ns, {"order-before"}, timeout=60)

    topic = ns.topic("orders.events")
    admin = admin_client(ns.settings)
    admin.create_partitions([NewPartitions(topic, 6)])[topic].result()
    log = tmp_path / "logs-0" / "orchestrator.log"
    deadline = time.monotonic() + 90
    while REFUSED not in log.read_text() and time.monotonic() < deadline:
        workers.check_alive()
        time.sleep(1)
    text = log.read_text()
    refusal = next((line for line in text.splitlines() if REFUSED in line), "")
    assert f"{topic} has 6" in refusal and "has 4" in refusal, text[-3000:]
    time.sleep(15)  # a loop would fail and rejoin again and again meanwhile
    workers.check_alive()
    text = log.read_text()
    assert "session failed" not in text
    assert text.count(REFUSED) <= 3, text[-3000:]
