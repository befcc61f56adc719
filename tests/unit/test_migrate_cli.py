"""`saga migrate`'s pure parts: which definition --from/--to name, and the dry run's lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from sagastream.core.saga import PENDING, STARTED, SUCCEEDED
from sagastream.core.state import SagaState, StepState
from sagastream.core.topology import SagaSpec
from sagastream.errors import UsageError
from sagastream.ops.migrate import dry_run_lines, plan_all, version_of
from sagastream.runtime.definitions import Definition
from tests.unit.test_migrate_repin import V1_SPEC, V2_SPEC


def _definition(spec: SagaSpec, version: int) -> Definition:
    return Definition("order", spec.shape, version, 0, "test", spec)


V1, V2 = _definition(V1_SPEC, 1), _definition(V2_SPEC, 2)


@dataclass
class Book:
    """What version_of reads of a DefinitionBook: the versions of a saga and the topic."""

    found: list[Definition] = field(default_factory=lambda: [V1, V2])
    topic: str = "sagas.definitions"

    def versions(self, saga: str) -> list[Definition]:
        return [d for d in self.found if d.saga == saga]


BOOK: Any = Book()  # stands in for a DefinitionBook


@pytest.mark.parametrize("named", ["2", "v2", "V2", V2_SPEC.shape[:5], V2_SPEC.shape])
def test_a_version_is_named_by_number_or_shape_prefix(named: str) -> None:
    assert version_of(BOOK, "order", named) is V2


def test_a_name_that_matches_none_or_several_lists_the_versions() -> None:
    with pytest.raises(UsageError, match=r"version '7' of saga order matches none of: v1 \("):
        version_of(BOOK, "order", "7")
    with pytest.raises(UsageError, match="matches several"):
        version_of(BOOK, "order", "")
    with pytest.raises(UsageError, match="no version of saga loan is published"):
        version_of(BOOK, "loan", "1")


def _state(key: str, pay: str) -> SagaState:
    steps = {"pay": StepState(pay, 1), "stock": StepState(STARTED, 1), "ship": StepState(PENDING)}
    return SagaState("order", key, V1_SPEC.shape, "running", {"start": {}}, steps, 0)


def test_the_dry_run_says_per_instance_and_sums_up() -> None:
    found = [("o-1", _state("o-1", SUCCEEDED)), ("o-2", _state("o-2", "waiting_retry"))]
    lines = dry_run_lines(V1, V2, plan_all(V1, V2, {"pay": "charge"}, found))
    assert lines[0] == "order o-1: can move:"
    assert "  charge (was pay): succeeded, attempt 1" in lines
    assert "order o-2: cannot move:" in lines
    assert lines[-1] == (
        f"2 running on order v1 ({V1_SPEC.shape}): 1 can move to v2 ({V2_SPEC.shape}), 1 cannot"
    )
