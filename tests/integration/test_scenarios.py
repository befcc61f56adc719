"""The scenario suite (tests/scenarios) on real workers: an orchestrator process and a process
with every handler role of the demo, on the shared broker. tests/unit/test_scenarios.py runs the
same scenarios on the test kit; both must pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagastream.events import Event
from sagastream.ops.client import Client
from sagastream.ops.inspect import SagaView
from tests.integration.helpers import every_dead_letter, lifecycle
from tests.scenarios import DEMO, SCENARIOS, Scenario

pytestmark = pytest.mark.integration

# the longest a scenario's saga may take on real workers
OUTCOME_WITHIN_S = 90.0


class WorkersBackend:
    """The scenarios' Backend on a running orchestrator and handlers, through `Client`."""

    def __init__(self, ns: Any, client: Client) -> None:
        self.ns = ns
        self.client = client

    def start(self, event: Event) -> str:
        return self.client.start(event)

    def waiting(self, saga: str, key: str, step: str) -> None:
        lifecycle(self.ns, key, until="step_started", step=step, timeout=OUTCOME_WITHIN_S)

    def signal(self, saga: str, key: str, step: str, outcome: str, by: str) -> None:
        self.client.signal(saga, key, step, outcome, decided_by=by)

    def result(self, saga: str, key: str) -> Event:
        return self.client.result(saga, key, timeout=OUTCOME_WITHIN_S)

    def describe(self, saga: str, key: str) -> SagaView:
        view = self.client.describe(saga, key)
        assert view is not None, f"no {saga} saga {key}"
        return view


@pytest.fixture
def project(scenario: Scenario, tmp_path: Path) -> Path | None:
    """The scenario's project (conftest's ns runs it); None: the demo's, which ns runs anyway."""
    return None if scenario.project is DEMO else scenario.project.topology(tmp_path / "project")


@pytest.fixture
def backend(ns: Any, start_workers: Any, scenario: Scenario) -> Iterator[WorkersBackend]:
    start_workers("orchestrator", scenario.project.roles)
    with Client(ns.settings) as client:
        yield WorkersBackend(ns, client)
    assert every_dead_letter(ns) == []  # no dead letter the kit would not show either


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_on_real_workers(scenario: Scenario, backend: WorkersBackend) -> None:
    scenario.run(backend)
