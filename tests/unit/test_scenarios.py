"""The scenario suite (tests/scenarios) on the test kit: no broker, virtual time.
tests/integration/test_scenarios.py runs the same scenarios on real workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagastream.events import Event
from sagastream.ops.inspect import SagaView, build_view
from sagastream.runtime.settings import Settings
from sagastream.testing import SagaTest
from tests.scenarios import SCENARIOS, Scenario


class KitBackend:
    """The scenarios' Backend on sagastream.testing."""

    def __init__(self, kit: SagaTest) -> None:
        self.kit = kit

    def start(self, event: Event) -> str:
        return self.kit.start(event)

    def waiting(self, saga: str, key: str, step: str) -> None:
        self.kit.run()
        assert [c.step for c in self.kit.pending(key)] == [step], self.kit.pending(key)

    def signal(self, saga: str, key: str, step: str, outcome: str, by: str) -> None:
        self.kit.signal(saga, key, step, outcome, by=by)

    def result(self, saga: str, key: str) -> Event:
        return self.kit.result(key)

    def describe(self, saga: str, key: str) -> SagaView:
        state = self.kit.state(key)
        assert state is not None, f"no {saga} saga {key}"
        return build_view(saga, key, 0, state, [], True)  # as Client.describe builds it


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_scenario_on_the_kit(scenario: Scenario, tmp_path: Path) -> None:
    topology = scenario.project.topology(tmp_path / "project")
    kit = SagaTest.load(topology, settings=Settings(data_dir=tmp_path))
    scenario.run(KitBackend(kit))
    for key in kit.saga_keys():  # and the kit saw no dead letter the runtime would not write
        assert kit.dead_letters(key) == []
