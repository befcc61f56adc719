"""Recovery: state rebuilt from the changelog alone, and SIGTERM under load ends a worker in bound."""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

from sagastream.runtime.worker import CLOSE_GRACE_S
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import OUTCOMES, good_order, place_order, wait_outcomes


def _commands_per_key(ns: Any, topic: str) -> Counter[tuple[str, int]]:
    msgs = [m for m in ns.client.read_to_end([ns.topic(topic)]) if m.record]
    return Counter((m.record["idempotency_key"], m.record["meta"]["attempt"]) for m in msgs)


def test_a_deleted_data_directory_rebuilds_from_the_changelog(ns: Any, start_workers: Any) -> None:
    orchestrator = start_workers("orchestrator")
    keys = {f"order-rebuild-{i}" for i in range(12)}
    for key in sorted(keys):
        place_order(ns, key)
    # the sagas wait for handlers that are not running: their state is all there is
    ns.client.read([ns.topic("payments.commands")], lambda m: len(m) >= len(keys), timeout=30)
    code, _ = orchestrator.terminate("orchestrator")
    assert code == 0
    data = ns.settings.data_dir / ns.settings.group("orchestrator")
    assert any(data.glob("instance-*/p*")), f"no stores under {data}"
    shutil.rmtree(data)

    start_workers("orchestrator", HANDLERS)
    outcomes = wait_outcomes(ns, keys, timeout=90)
    assert {m.event_type for m in outcomes.values()} == {"SagaCompleted"}
    # nothing was sent again: the rebuilt state knew the commands were out
    assert max(_commands_per_key(ns, "payments.commands").values()) == 1


def test_sigterm_under_load_ends_the_worker_in_bound_and_its_sagas_finish(
    ns: Any, start_workers: Any
) -> None:
    workers = start_workers("orchestrator", HANDLERS)
    keys = [f"order-term-{i:03d}" for i in range(300)]
    for key in keys:
        ns.client.publish("OrderPlaced", key, good_order(key))
    ns.client.flush()
    ns.client.read([ns.topic("sagas.outcomes")], lambda m: len(m) >= 20, timeout=60)
    code, took = workers.terminate("orchestrator")
    bound = ns.settings.drain_timeout_s + CLOSE_GRACE_S
    print(f"orchestrator exited {code} {took:.2f}s after SIGTERM (bound {bound:.0f}s)")
    assert code == 0 and took <= bound

    start_workers("orchestrator")
    wait_outcomes(ns, set(keys), timeout=120)
    outcomes = [
        m for m in ns.client.read_to_end([ns.topic("sagas.outcomes")]) if m.event_type in OUTCOMES
    ]
    per_saga = Counter(m.key for m in outcomes)
    assert {k: n for k, n in per_saga.items() if n > 1} == {}
    assert max(_commands_per_key(ns, "payments.commands").values()) == 1
