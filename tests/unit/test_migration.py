"""The migration planner: what a running saga's steps become in another version, and every
reason it cannot move."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event as note_coverage
from hypothesis import given, settings
from hypothesis import strategies as st

from sagastream.core.migration import MigrationPlan, StepStatus, parse_mapping, plan
from sagastream.core.saga import (
    COMPENSATING,
    COMPLETED,
    PENDING,
    SKIPPED,
    STARTED,
    SUCCEEDED,
    UNDOING,
    WAITING_RETRY,
)
from sagastream.core.topology import SagaSpec, load_topology
from sagastream.errors import UsageError
from tests.unit.test_saga_properties import saga_specs

ROOT = Path(__file__).resolve().parents[2]

V1: dict[str, Any] = {
    "start_event": "Placed",
    "key_field": "id",
    "steps": {
        "pay": {
            "command": "Charge",
            "success": "Charged",
            "failure": ["Declined"],
            "inputs": {"start": ["id", "amount"]},
            "retry": {"max_attempts": 3},
            "compensation": {
                "command": "Refund",
                "success": "Refunded",
                "inputs": {"pay": ["charge_id"]},
            },
        },
        "stock": {"command": "Reserve", "success": "Reserved", "inputs": {"start": ["id"]}},
        "ship": {
            "command": "Ship",
            "success": "Shipped",
            "depends_on": ["pay", "stock"],
            "inputs": {"start": ["id", "address"]},
        },
    },
}
NOTHING_YET: dict[str, StepStatus] = {
    "pay": (STARTED, 1, 0),
    "stock": (STARTED, 1, 0),
    "ship": (PENDING, 0, 0),
}


def _spec(edit: Any = None) -> SagaSpec:
    """V1, changed by `edit` (a function of its dict) when given."""
    data = copy.deepcopy(V1)
    if edit is not None:
        edit(data)
    return SagaSpec.model_validate(data)


def _steps(**changes: StepStatus) -> dict[str, StepStatus]:
    return {**NOTHING_YET, **changes}


def _by_step(result: MigrationPlan) -> dict[str, tuple[str | None, str, int, int, bool]]:
    return {s.step: (s.source, s.status, s.attempt, s.undo_attempt, s.ready) for s in result.steps}


def _rename_ship(data: dict[str, Any]) -> None:
    data["steps"]["deliver"] = data["steps"].pop("ship")


def test_the_same_version_keeps_every_step_as_it_is() -> None:
    steps = _steps(pay=(SUCCEEDED, 2, 0), stock=(WAITING_RETRY, 1, 0))
    result = plan(_spec(), _spec(), {}, steps)
    assert result.can_move and result.blockers == ()
    assert _by_step(result) == {
        "pay": ("pay", SUCCEEDED, 2, 0, False),
        "stock": ("stock", WAITING_RETRY, 1, 0, False),
        "ship": ("ship", PENDING, 0, 0, False),
    }
    assert result.mapping == {"pay": "pay", "stock": "stock", "ship": "ship"}
    assert result.renamed == {} and result.dropped == () and result.notes == ()


def _add_fraud(data: dict[str, Any]) -> None:
    data["steps"]["fraud"] = {
        "command": "Screen",
        "success": "Screened",
        "depends_on": ["pay"],
        "inputs": {"start": ["id"], "pay": ["charge_id"]},
    }


def test_an_added_step_is_pending_and_ready_once_its_dependencies_are_done() -> None:
    waiting = plan(_spec(), _spec(_add_fraud), {}, NOTHING_YET)
    assert waiting.can_move
    assert _by_step(waiting)["fraud"] == (None, PENDING, 0, 0, False)

    paid = plan(_spec(), _spec(_add_fraud), {}, _steps(pay=(SUCCEEDED, 1, 0)))
    assert paid.can_move
    assert _by_step(paid)["fraud"] == (None, PENDING, 0, 0, True)


def test_a_skipped_dependency_counts_as_done() -> None:
    def edit(data: dict[str, Any]) -> None:
        _add_fraud(data)
        data["steps"]["fraud"]["inputs"] = {"start": ["id"]}

    result = plan(_spec(), _spec(edit), {}, _steps(pay=(SKIPPED, 1, 0)))
    assert _by_step(result)["fraud"][-1] is True


def test_a_renamed_step_moves_to_the_step_the_mapping_names() -> None:
    steps = _steps(pay=(SUCCEEDED, 1, 0), stock=(SUCCEEDED, 1, 0), ship=(SUCCEEDED, 2, 0))
    result = plan(_spec(), _spec(_rename_ship), {"ship": "deliver"}, steps)
    assert result.can_move, result.blockers
    assert _by_step(result)["deliver"] == ("ship", SUCCEEDED, 2, 0, False)
    assert result.renamed == {"ship": "deliver"}


@pytest.mark.parametrize(
    ("status", "what"),
    [
        ((STARTED, 2, 0), "running (attempt 2)"),
        ((WAITING_RETRY, 1, 0), "waiting to retry (after attempt 1)"),
    ],
)
def test_a_renamed_step_in_flight_cannot_move(status: StepStatus, what: str) -> None:
    # its answer, retry or timer names the old step, which the moved instance no longer has
    steps = _steps(pay=(SUCCEEDED, 1, 0), stock=(SUCCEEDED, 1, 0), ship=status)
    result = plan(_spec(), _spec(_rename_ship), {"ship": "deliver"}, steps)
    assert result.blockers == (
        f"step ship is {what} and the new version renames it to deliver: what answers it "
        "names ship; wait until it ends",
    )


@pytest.mark.parametrize(
    ("status", "what"),
    [
        ((STARTED, 2, 0), "running (attempt 2)"),
        ((WAITING_RETRY, 1, 0), "waiting to retry (after attempt 1)"),
    ],
)
def test_a_step_in_flight_with_no_counterpart_cannot_move(status: StepStatus, what: str) -> None:
    steps = _steps(pay=(SUCCEEDED, 1, 0), stock=(SUCCEEDED, 1, 0), ship=status)
    result = plan(_spec(), _spec(_rename_ship), {}, steps)
    assert not result.can_move
    assert result.blockers == (
        f"step ship is {what} and has no counterpart in the new version: what it waits for "
        "would belong to no step; wait until it ends, or map it (--map ship=STEP)",
    )


def test_a_pending_or_finished_step_without_an_undo_is_left_behind() -> None:
    def drop(data: dict[str, Any]) -> None:
        del data["steps"]["stock"]
        data["steps"]["ship"]["depends_on"] = ["pay"]

    for stock in ((PENDING, 0, 0), (SUCCEEDED, 1, 0), (SKIPPED, 1, 0)):
        result = plan(_spec(), _spec(drop), {}, _steps(stock=stock))
        assert result.can_move and result.dropped == ("stock",)
        assert set(result.mapping) == {"pay", "ship"}


def test_a_succeeded_step_whose_undo_the_new_version_drops_cannot_move() -> None:
    def drop(data: dict[str, Any]) -> None:
        del data["steps"]["pay"]
        data["steps"]["ship"]["depends_on"] = ["stock"]

    removed = plan(_spec(), _spec(drop), {}, _steps(pay=(SUCCEEDED, 1, 0)))
    assert removed.blockers == (
        "step pay succeeded and its compensation (Refund) would be dropped: the new version "
        "has no step to undo it with; map it to a step with a compensation",
    )
    # not yet succeeded: nothing to undo, so it may go (here: it is pending)
    assert plan(_spec(), _spec(drop), {}, _steps(pay=(PENDING, 0, 0))).can_move

    def no_undo(data: dict[str, Any]) -> None:
        del data["steps"]["pay"]["compensation"]

    kept = plan(_spec(), _spec(no_undo), {}, _steps(pay=(SUCCEEDED, 1, 0)))
    assert kept.blockers == (
        "step pay succeeded and its compensation (Refund) would be dropped: pay has none in "
        "the new version",
    )


def test_a_mapping_naming_unknown_steps_is_refused() -> None:
    result = plan(
        _spec(), _spec(_rename_ship), {"shipping": "deliver", "ship": "send"}, NOTHING_YET
    )
    assert result.blockers == (
        "the mapping names shipping=deliver, but shipping is no step of the old version (its "
        "steps: pay, stock, ship)",
        "the mapping names ship=send, but send is no step of the new version (its steps: pay, "
        "stock, deliver)",
    )
    assert result.steps == ()


def test_two_steps_mapped_onto_one_are_refused() -> None:
    result = plan(_spec(), _spec(), {"stock": "pay"}, NOTHING_YET)
    assert result.blockers == (
        "steps pay and stock would both become pay: map one of them elsewhere",
    )


@pytest.mark.parametrize("status", [COMPENSATING, COMPLETED])
def test_only_a_running_saga_moves(status: str) -> None:
    steps = _steps(pay=(UNDOING, 1, 1)) if status == COMPENSATING else NOTHING_YET
    result = plan(_spec(), _spec(), {}, steps, status=status)
    assert result.blockers == (
        f"the saga is {status}: only a running saga moves (one that compensates or has ended "
        "finishes on its own version)",
    )


def test_steps_of_another_version_or_an_unknown_status_are_refused() -> None:
    other = {"pay": (SUCCEEDED, 1, 0), "deliver": (PENDING, 0, 0)}
    assert plan(_spec(), _spec(), {}, other).blockers == (
        "the instance's steps (pay, deliver) are not those of the old version (pay, stock, "
        "ship): is it on that version?",
    )
    odd = _steps(ship=("sleeping", 0, 0))
    (blocker,) = plan(_spec(), _spec(), {}, odd).blockers
    assert blocker.startswith("step ship has status 'sleeping', not one of pending, running,")


def test_a_running_step_whose_answer_the_new_step_does_not_take_cannot_move() -> None:
    def other_answer(data: dict[str, Any]) -> None:
        data["steps"]["pay"]["success"] = "Captured"

    result = plan(_spec(), _spec(other_answer), {}, NOTHING_YET)
    assert result.blockers == (
        "step pay is running and its answer (Charged) is no result of pay in the new version; "
        "wait until the attempt ends",
    )
    # once it has its answer, the new step's own command and results apply to its retries
    assert plan(_spec(), _spec(other_answer), {}, _steps(pay=(WAITING_RETRY, 1, 0))).can_move

    def a_person(data: dict[str, Any]) -> None:
        data["steps"]["stock"] = {"human": True}

    assert plan(_spec(), _spec(a_person), {}, NOTHING_YET).blockers == (
        "step stock is running and waits for an answer to Reserve, which stock does not take",
    )


def test_data_a_step_to_come_reads_must_have_been_kept() -> None:
    def reads_more(data: dict[str, Any]) -> None:
        data["steps"]["ship"]["inputs"] = {"start": ["id", "address", "phone"], "pay": ["card"]}
        data["steps"]["ship"]["when"] = "stock.warehouse != 'closed'"

    done = _steps(pay=(SUCCEEDED, 1, 0), stock=(SUCCEEDED, 1, 0))
    assert plan(_spec(), _spec(reads_more), {}, done).blockers == (
        "step ship reads start.phone, which this saga did not keep (the old version does not "
        "use it)",
        "step ship reads pay.card, which this saga did not keep (the old version does not use it)",
        "the when of ship reads stock.warehouse, which this saga did not keep (the old version "
        "does not use it)",
    )
    # a result still to come is kept by what the new version uses; the start event is not
    (blocker,) = plan(_spec(), _spec(reads_more), {}, NOTHING_YET).blockers
    assert blocker.startswith("step ship reads start.phone")
    # a step that already ran reads nothing more
    finished = {**done, "ship": (SUCCEEDED, 1, 0)}
    assert plan(_spec(), _spec(reads_more), {}, finished).can_move


def test_data_read_under_a_new_name_is_found_under_the_old_one() -> None:
    def rename_pay(data: dict[str, Any]) -> None:
        data["steps"]["charge"] = data["steps"].pop("pay")
        data["steps"]["charge"]["compensation"]["inputs"] = {"charge": ["charge_id"]}
        data["steps"]["ship"]["depends_on"] = ["charge", "stock"]

    result = plan(_spec(), _spec(rename_pay), {"pay": "charge"}, _steps(pay=(SUCCEEDED, 1, 0)))
    assert result.can_move, result.blockers
    assert result.renamed == {"pay": "charge"}


def test_what_moves_but_differs_is_noted() -> None:
    def fewer_attempts(data: dict[str, Any]) -> None:
        data["steps"]["pay"]["retry"] = {"max_attempts": 2}
        data["steps"]["stock"]["depends_on"] = ["ship"]
        data["steps"]["ship"]["depends_on"] = ["pay"]

    steps = _steps(pay=(STARTED, 2, 0), stock=(SUCCEEDED, 1, 0))
    result = plan(_spec(), _spec(fewer_attempts), {}, steps)
    assert result.can_move
    assert result.notes == (
        "pay allows 2 attempts and pay has made 2: the running one is its last",
        "stock succeeded before ship, which the new version runs first",
    )
    done = {name: (SUCCEEDED, 1, 0) for name in V1["steps"]}
    assert plan(_spec(), _spec(), {}, done).notes == (
        "every step is done: the saga completes as it moves",
    )


def test_the_dry_run_says_it_per_step() -> None:
    steps = _steps(pay=(SUCCEEDED, 1, 0), stock=(SUCCEEDED, 1, 0), ship=(STARTED, 2, 0))
    waiting = _steps(pay=(SUCCEEDED, 1, 0), stock=(STARTED, 1, 0))
    assert plan(_spec(), _spec(_rename_ship), {"ship": "deliver"}, waiting).describe() == [
        "can move:",
        "  pay (kept): succeeded, attempt 1",
        "  stock (kept): running, attempt 1",
        "  deliver (was ship): pending, attempt 0",
    ]
    assert plan(_spec(), _spec(_add_fraud), {}, _steps(pay=(SUCCEEDED, 1, 0))).describe()[-1] == (
        "  fraud (new): pending, attempt 0: ready, starts"
    )
    assert plan(_spec(), _spec(_rename_ship), {}, steps).describe()[:2] == [
        "cannot move:",
        "  - step ship is running (attempt 2) and has no counterpart in the new version: what "
        "it waits for would belong to no step; wait until it ends, or map it (--map ship=STEP)",
    ]


@settings(max_examples=100, deadline=None)
@given(saga_specs(), st.data())
def test_a_running_saga_moves_to_its_own_version_unchanged(
    spec: SagaSpec, data: st.DataObject
) -> None:
    statuses = st.sampled_from((PENDING, STARTED, WAITING_RETRY, SUCCEEDED, SKIPPED))
    steps = {name: (data.draw(statuses), 1, 0) for name in spec.steps}
    result = plan(spec, spec, {}, steps)
    assert result.can_move, result.blockers
    assert {s.step: (s.source, s.status) for s in result.steps} == {
        name: (name, status) for name, (status, _, _) in steps.items()
    }
    done = {n for n, (status, _, _) in steps.items() if status in (SUCCEEDED, SKIPPED)}
    assert {s.step for s in result.steps if s.ready} == {
        n
        for n, (status, _, _) in steps.items()
        if status == PENDING and set(spec.steps[n].depends_on) <= done
    }


def test_the_demo_order_saga_moves_to_the_readmes_version_2() -> None:
    """README's "Changing a saga": shipping renamed ship, after payment and inventory."""
    order = load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas["order"]
    data = order.model_dump(mode="json")
    data["steps"]["ship"] = data["steps"].pop("shipping")
    data["steps"]["ship"]["depends_on"] = ["payment", "inventory"]
    data["steps"]["ship"]["compensation"]["inputs"] = {
        "start": ["order_id"],
        "ship": ["shipment_id"],
    }
    v2 = SagaSpec.model_validate(data)
    running = {
        "payment": (SUCCEEDED, 1, 0),
        "inventory": (STARTED, 1, 0),
        "shipping": (SUCCEEDED, 1, 0),
    }
    assert plan(order, v2, {}, running).blockers == (
        "step shipping succeeded and its compensation (CancelShipment) would be dropped: the "
        "new version has no step to undo it with; map it to a step with a compensation",
    )
    moved = plan(order, v2, {"shipping": "ship"}, running)
    assert moved.can_move and moved.renamed == {"shipping": "ship"}
    assert moved.notes == ("ship succeeded before inventory, which the new version runs first",)


def test_map_options_become_the_mapping() -> None:
    assert parse_mapping(["shipping=ship", " pay = charge "]) == {
        "shipping": "ship",
        "pay": "charge",
    }
    assert parse_mapping([]) == {}
    for bad, why in [
        (["shipping"], "write OLD_STEP=NEW_STEP"),
        (["=ship"], "write OLD_STEP=NEW_STEP"),
        (["a=b", "a=c"], "names step a twice"),
    ]:
        with pytest.raises(UsageError, match=why):
            parse_mapping(bad)


STATUSES_OF_A_RUNNING_SAGA = (PENDING, STARTED, WAITING_RETRY, SUCCEEDED, SKIPPED)


@settings(max_examples=150, deadline=None)
@given(saga_specs(), saga_specs(), st.data())
def test_any_two_versions_give_a_plan_that_keeps_its_promises(
    old: SagaSpec, new: SagaSpec, data: st.DataObject
) -> None:
    """Between unrelated generated sagas (steps a..e), with any mapping and any running state:
    a plan, never an exception; and a plan that lets the instance move strands nothing."""
    steps = {n: (data.draw(st.sampled_from(STATUSES_OF_A_RUNNING_SAGA)), 1, 0) for n in old.steps}
    names = st.sampled_from("abcdef")
    mapping = data.draw(st.dictionaries(names, names, max_size=2), label="mapping")
    result = plan(old, new, mapping, steps)
    note_coverage("can move" if result.can_move else "cannot move")
    if not result.can_move:
        return
    assert [s.step for s in result.steps] == list(new.steps)
    for source, (status, _, _) in steps.items():
        target = result.mapping.get(source)
        if status in (STARTED, WAITING_RETRY):
            assert target is not None
        if status == SUCCEEDED and old.steps[source].compensation:
            assert target is not None and new.steps[target].compensation is not None
        if target is None:
            assert source in result.dropped
    planned = {s.step: s for s in result.steps}
    for step in result.steps:
        done = all(
            planned[d].status in (SUCCEEDED, SKIPPED) for d in new.steps[step.step].depends_on
        )
        assert step.ready == (step.status == PENDING and done)
