"""The scenario suite (tests/scenarios) on the test kit: the demo's sagas and handlers, no broker,
virtual time. tests/integration/test_scenarios.py runs the same scenarios on real workers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sagastream.events import Event
from sagastream.runtime.settings import Settings
from sagastream.testing import SagaTest
from tests.scenarios import SCENARIOS, Backend

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_scenario_on_the_kit(scenario: Callable[[Backend], None], tmp_path: Path) -> None:
    kit = SagaTest.load(ROOT / "topology.yaml", settings=Settings(data_dir=tmp_path))
    scenario(KitBackend(kit))
    for key in kit.saga_keys():  # and the kit saw no dead letter the runtime would not write
        assert kit.dead_letters(key) == []
