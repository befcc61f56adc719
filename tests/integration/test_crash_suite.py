"""The crash suite: orders flow while workers are SIGKILLed and the broker restarts.

Everything is checked from the topics (read_committed) and the services' own ledgers:
exactly one outcome per saga and the one it was built for, no command twice on a commands
topic, every commanded idempotency key applied once in its service's ledger, and no worker
that died of anything but a kill. CI runs it small; any size on demand:

    pytest tests/integration/test_crash_suite.py --crash-orders 5000 --crash-kills 20
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.integration.conftest import HANDLERS
from tests.integration.faults import (
    check_exactly_once,
    mixed_orders,
    publish_paced,
    wait_all_ended,
)

# it restarts the broker every other test of the run uses: alone, after the others (Makefile)
pytestmark = pytest.mark.serial

# each fault gets this long before the next, so that its effect (rebalance, restore) shows
SECONDS_PER_FAULT = 7.0


@dataclass
class Chaos:
    """What was done to the system, in order, with when."""

    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f}s {what}")


def plan_faults(kills: int, broker: bool, rng: random.Random) -> list[str]:
    """Two thirds orchestrator kills, a third handler kills, plus broker restarts (1 per 10 kills).
    The first orchestrator kill keeps it down longer than any step's timeout (`orchestrator-long`):
    the results that arrive meanwhile must be decided before the timeouts they disarm."""
    orchestrator = max(1, round(kills * 2 / 3)) if kills else 0
    faults = ["orchestrator"] * orchestrator + ["handlers"] * (kills - orchestrator)
    if broker:
        faults += ["broker"] * max(1, kills // 10)
    rng.shuffle(faults)
    if orchestrator:
        faults[faults.index("orchestrator")] = "orchestrator-long"
    return faults


def longest_step_timeout_s(topology: Any) -> float:
    """The longest the orchestrator waits for any step's or undo's answer in the order saga
    (its schedule_to_close_ms), in seconds."""
    steps = topology.sagas["order"].steps.values()
    timeouts = [s.answer_within_ms for s in steps]
    timeouts += [s.compensation.answer_within_ms for s in steps if s.compensation]
    return max(timeouts) / 1000


def restart_local_broker() -> None:
    from sagastream.local import kafka as localkafka

    localkafka.stop(log=lambda m: None)
    localkafka.start(log=lambda m: None)


def test_every_saga_ends_once_through_kills_and_a_broker_restart(
    ns: Any, start_workers: Any, broker: Any, request: pytest.FixtureRequest
) -> None:
    orders = int(request.config.getoption("--crash-orders"))
    kills = int(request.config.getoption("--crash-kills"))
    can_restart_broker = broker.backend.startswith("local")
    rng = random.Random(7)
    faults = plan_faults(kills, can_restart_broker, rng)
    workers = start_workers("orchestrator", HANDLERS)
    to_send = mixed_orders(orders, "crash", rng)
    expected = {key: outcome for key, _, outcome in to_send}

    window = max(10.0, SECONDS_PER_FAULT * len(faults))
    chaos = Chaos()
    published = publish_paced(ns, to_send, window)
    for n, fault in enumerate(faults):
        time.sleep(max(0.0, chaos.started + window * (n + 0.5) / len(faults) - time.monotonic()))
        if fault.startswith("orchestrator"):
            workers.kill("orchestrator")
            down = rng.uniform(0.2, 2.0)
            if fault == "orchestrator-long":
                down = longest_step_timeout_s(ns.topology) + 3
            chaos.note(f"SIGKILL orchestrator, down {down:.1f}s")
            time.sleep(down)
            workers.start(["orchestrator"])
        elif fault == "handlers":
            workers.kill(HANDLERS)
            chaos.note("SIGKILL handlers")
            time.sleep(rng.uniform(0.2, 2.0))
            workers.start([HANDLERS])
        else:
            chaos.note("broker stopping")
            restart_local_broker()
            chaos.note("broker restarted")
    assert published.wait(window + 180), "publishing did not finish"
    chaos.note("all orders published")

    outcomes = wait_all_ended(ns, set(expected), workers, timeout=240)
    chaos.note(f"{len({m.key for m in outcomes})} of {len(expected)} sagas ended")
    print("\n".join(chaos.log))
    check_exactly_once(ns, expected, outcomes)
    workers.check_alive()
