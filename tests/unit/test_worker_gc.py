"""A started worker's cyclic GC: what it loaded is frozen out of collections, and young
collections wait for GC_YOUNG_THRESHOLD new objects (tests/perf/orchestrator_profile measures
the effect)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sagastream.runtime.worker import GC_YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_settling_freezes_what_is_loaded_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    loaded = [{"kept": i} for i in range(1000)]
    middle, oldest = gc.get_threshold()[1:]
    settle_heap()
    assert gc.get_freeze_count() >= len(loaded)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, middle, oldest)
    assert gc.get_count()[0] < GC_YOUNG_THRESHOLD
