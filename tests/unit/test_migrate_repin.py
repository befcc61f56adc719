"""A SagaMigrate applied to a stored saga (core.migration.repin): the state re-pinned to the new
shape, renamed steps' data, order and timers under their new name, ready steps started; or the
event refused because the instance moved on since the dry run; a redelivery a duplicate."""

from __future__ import annotations

import copy
from typing import Any

from sagastream.core.migration import MIGRATE_CHANGE, repin
from sagastream.core.saga import (
    COMPENSATING,
    PENDING,
    STARTED,
    SUCCEEDED,
    UNDOING,
    Event,
    decide,
)
from sagastream.core.state import SagaState
from sagastream.core.topology import MIGRATE_EVENT, SagaSpec
from tests.unit.test_migration import V1

SAGA = "order"


def _spec(edit: Any = None) -> SagaSpec:
    data = copy.deepcopy(V1)
    data["deadline_ms"] = 60_000
    if edit is not None:
        edit(data)
    return SagaSpec.model_validate(data)


def _rename_pay_add_fraud(data: dict[str, Any]) -> None:
    """v2: pay is called charge, and a fraud check runs after it."""
    steps = data["steps"]
    steps["charge"] = steps.pop("pay")
    steps["charge"]["compensation"]["inputs"] = {"charge": ["charge_id"]}
    steps["ship"]["depends_on"] = ["charge", "stock"]
    steps["fraud"] = {
        "command": "Screen",
        "success": "Screened",
        "depends_on": ["charge"],
        "inputs": {"start": ["id"], "charge": ["charge_id"]},
    }


V1_SPEC, V2_SPEC = _spec(), _spec(_rename_pay_add_fraud)


def _paid_stock_running() -> SagaState:
    """A v1 saga whose pay succeeded (charge c-1) and whose stock step is running."""
    start = Event("Placed", "e-start", {"id": "o-1", "amount": 5, "address": "here"})
    state = decide((SAGA, V1_SPEC), None, start, 1_000).state
    assert state is not None
    paid = Event("Charged", "e-paid", {"charge_id": "c-1"}, step="pay")
    state = decide((SAGA, V1_SPEC), state, paid, 2_000).state
    assert state is not None and state.steps["pay"].status == SUCCEEDED
    return state


def _migrate(state: SagaState, event_id: str = "e-move", from_shape: str | None = None) -> Any:
    fields = {
        "saga_type": SAGA,
        "from_shape": V1_SPEC.shape if from_shape is None else from_shape,
        "to_shape": V2_SPEC.shape,
        "mapping": {"pay": "charge"},
        "requested_by": "test",
    }
    return repin(SAGA, V1_SPEC, V2_SPEC, state, Event(MIGRATE_EVENT, event_id, fields), 3_000)


def test_a_renamed_step_keeps_its_data_order_and_timers_under_its_new_name() -> None:
    state = _paid_stock_running()
    state.timers["undo_retry|pay|1"] = 9_000  # what a renamed step's timer would be
    decision = _migrate(state)
    moved = decision.state
    assert decision.dead_letter is None and moved is not None
    assert moved.shape == V2_SPEC.shape != state.shape
    assert moved.data["charge"] == {"charge_id": "c-1"} and "pay" not in moved.data
    assert moved.order == ["charge"]
    assert moved.steps["charge"].status == SUCCEEDED
    assert moved.steps["stock"].status == STARTED
    assert moved.timers == {
        "deadline||0": state.timers["deadline||0"],
        "step_timeout|stock|1": state.timers["step_timeout|stock|1"],
        "undo_retry|charge|1": 9_000,
    } | {"step_timeout|fraud|1": moved.timers["step_timeout|fraud|1"]}
    assert (MIGRATE_CHANGE, None) in decision.lifecycle
    # the stored state is left as it was: decide works on copies
    assert state.shape == V1_SPEC.shape and "pay" in state.steps


def test_a_new_step_that_is_ready_starts_with_the_renamed_steps_data() -> None:
    decision = _migrate(_paid_stock_running())
    assert decision.state is not None
    assert decision.state.steps["fraud"].status == STARTED
    assert decision.state.steps["ship"].status == PENDING
    [screen] = decision.commands
    assert (screen.event_type, screen.step) == ("Screen", "fraud")
    assert screen.fields["charge_id"] == "c-1" and screen.fields["id"] == "o-1"
    assert decision.lifecycle == [(MIGRATE_CHANGE, None), ("step_started", "fraud")]


def test_the_moved_saga_goes_on_under_the_new_version() -> None:
    moved = _migrate(_paid_stock_running()).state
    assert moved is not None
    # the deadline fires: the renamed step is undone by its new name, with the data it kept
    fired = Event(
        "TimerFired",
        "t-1",
        {"kind": "deadline", "step": "", "attempt": 0, "due_ms": moved.timers["deadline||0"]},
    )
    decision = decide((SAGA, V2_SPEC), moved, fired, 70_000)
    assert decision.state is not None and decision.state.status == COMPENSATING
    assert decision.state.steps["charge"].status == UNDOING
    [refund] = [c for c in decision.commands if c.event_type == "Refund"]
    assert refund.step == "charge" and refund.fields["charge_id"] == "c-1"


def test_a_redelivered_migrate_is_a_duplicate() -> None:
    moved = _migrate(_paid_stock_running()).state
    assert moved is not None
    again = repin(
        SAGA,
        V2_SPEC,
        V2_SPEC,
        moved,
        Event(MIGRATE_EVENT, "e-move", {"saga_type": SAGA}),
        4_000,
    )
    assert again.duplicate and again.state is None


def test_an_instance_on_another_shape_now_is_refused() -> None:
    decision = _migrate(_paid_stock_running(), from_shape="0123456789ab")
    assert decision.state is None
    assert decision.dead_letter == (
        f"cannot migrate saga order o-1 from 0123456789ab to {V2_SPEC.shape}: the instance is "
        f"on shape {V1_SPEC.shape} now, not 0123456789ab (it moved since the dry run): run the "
        "dry run again"
    )


def test_an_instance_that_cannot_move_now_is_refused_with_the_blocker() -> None:
    # since the dry run, pay failed once and waits to retry: a renamed step in flight
    state = _paid_stock_running()
    state.steps["pay"].status, state.order = "waiting_retry", []
    decision = _migrate(state)
    assert decision.state is None and decision.dead_letter is not None
    assert decision.dead_letter.endswith(
        "step pay is waiting to retry (after attempt 1) and the new version renames it to "
        "charge: what answers it names pay; wait until it ends"
    )


def test_no_recorded_new_shape_is_refused() -> None:
    state = _paid_stock_running()
    fields = {"saga_type": SAGA, "from_shape": V1_SPEC.shape, "to_shape": "feedbeef0000"}
    decision = repin(SAGA, V1_SPEC, None, state, Event(MIGRATE_EVENT, "e-x", fields), 3_000)
    assert decision.state is None
    assert decision.dead_letter is not None
    assert decision.dead_letter.endswith(
        "no definition of shape feedbeef0000 is recorded for order"
    )


def test_the_new_state_is_kept_in_the_changelog_format() -> None:
    from sagastream.core.state import decode_state, encode_state

    moved = _migrate(_paid_stock_running()).state
    assert moved is not None
    assert decode_state(encode_state(moved)) == moved
