"""Comparing a shadow replay with the live run, saga by saga (pure: records in, differences out),
and telling the differences a topology diff explains from the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sagastream.core.topology import Topology, parse_topology
from sagastream.ops.shadow import (
    Decided,
    Difference,
    Explanation,
    Output,
    compare,
    decisions,
    explanations,
    headline,
)

ROOT = Path(__file__).resolve().parents[2]

STARTED = {"o-1": "order", "o-2": "order", "l-1": "loan"}


def command(key: str, event_type: str, step: str, attempt: int, at: int, **fields: Any) -> Output:
    record = {
        "meta": {"occurred_at": at, "attempt": attempt},
        "idempotency_key": f"order:{key}:{step}",
        **fields,
    }
    return Output("payments.commands", 0, at, key, event_type, record)


def outcome(key: str, event_type: str, at: int, **fields: Any) -> Output:
    record = {"meta": {"occurred_at": at, "attempt": 1}, "saga_type": "order", **fields}
    return Output("sagas.outcomes", 0, at, key, event_type, record)


def test_decisions_group_commands_per_step_in_decision_order() -> None:
    review = {"meta": {"occurred_at": 1, "attempt": 1}}
    runs = decisions(
        [
            command("o-1", "RefundPayment", "payment:undo", 1, at=50),
            command("o-1", "ChargePayment", "payment", 2, at=30),
            command("o-1", "ChargePayment", "payment", 1, at=10),
            command("o-1", "SendNotification", "notify-email", 1, at=60),
            outcome("o-1", "SagaCompensated", 60, reason="inventory: out of stock"),
            Output("reviews.commands", 0, 1, "l-1", "RequestReview", review),
        ],
        STARTED,
    )
    assert runs[("order", "o-1")] == Decided(
        {
            "event_type": "SagaCompensated",
            "saga_type": "order",
            "reason": "inventory: out of stock",
        },
        {
            "payment": ["ChargePayment#1", "ChargePayment#2", "RefundPayment#1"],
            "notify-email": ["SendNotification#1"],
        },
    )
    # no idempotency key: the saga started with that key, the step by command type
    assert runs[("loan", "l-1")].commands == {"RequestReview": ["RequestReview#1"]}


def test_the_same_decisions_show_no_difference() -> None:
    live = [command("o-1", "ChargePayment", "payment", 1, 5), outcome("o-1", "SagaCompleted", 9)]
    # the shadow decides at other times (event time): only the order counts
    shadow = [command("o-1", "ChargePayment", "payment", 1, 3), outcome("o-1", "SagaCompleted", 4)]
    sagas = [("order", "o-1"), ("order", "o-2")]
    assert compare(sagas, decisions(live, STARTED), decisions(shadow, STARTED)) == []


def test_differences_name_the_outcome_and_each_step_that_changed() -> None:
    live = decisions(
        [
            command("o-1", "ChargePayment", "payment", 1, 1),
            command("o-1", "ChargePayment", "payment", 2, 2),
            command("o-1", "ReserveInventory", "inventory", 1, 1),
            outcome("o-1", "SagaCompleted", 3),
            command("o-2", "ChargePayment", "payment", 1, 1),
            outcome("o-2", "SagaCompensated", 5, reason="inventory: out of stock"),
        ],
        STARTED,
    )
    shadow = decisions(
        [
            command("o-1", "ChargePayment", "payment", 1, 1),
            command("o-1", "ReserveInventory", "inventory", 1, 1),
            command("o-1", "ReleaseInventory", "inventory:undo", 1, 2),
            command("o-2", "ChargePayment", "payment", 1, 1),
            outcome("o-2", "SagaCompensated", 4, reason="payment: declined"),
        ],
        STARTED,
    )
    found = compare([("order", "o-1"), ("order", "o-2")], live, shadow)
    assert found == [
        Difference(
            "order",
            "o-1",
            ("SagaCompleted", "no outcome"),
            (
                ("inventory", "ReserveInventory#1", "ReserveInventory#1 ReleaseInventory#1"),
                ("payment", "ChargePayment#1 ChargePayment#2", "ChargePayment#1"),
            ),
        ),
        Difference(
            "order",
            "o-2",
            ("SagaCompensated (inventory: out of stock)", "SagaCompensated (payment: declined)"),
            (),
        ),
    ]
    assert found[0].line() == (
        "order o-1: outcome SagaCompleted -> no outcome; "
        "inventory: ReserveInventory#1 -> ReserveInventory#1 ReleaseInventory#1; "
        "payment: ChargePayment#1 ChargePayment#2 -> ChargePayment#1"
    )


def test_an_outcome_that_differs_only_in_its_details_says_which() -> None:
    live = decisions([outcome("o-1", "SagaCompensated", 1, compensated_steps=["a", "b"])], STARTED)
    shadow = decisions(
        [outcome("o-1", "SagaCompensated", 1, compensated_steps=["b", "a"])], STARTED
    )
    [found] = compare([("order", "o-1")], live, shadow)
    assert found.outcome == (
        "SagaCompensated (compensated_steps=['a', 'b'])",
        "SagaCompensated (compensated_steps=['b', 'a'])",
    )
    assert compare([("order", "o-2")], live, {}) == []  # no decisions on either side


def _topology(edit: Any = None) -> Topology:
    data = yaml.safe_load((ROOT / "topology.yaml").read_text())
    if edit is not None:
        edit(data["sagas"]["order"]["steps"])
    return parse_topology(data, "topology.yaml", ROOT / "schemas")


def _rename(steps: dict[str, Any], after: list[str] | None = None) -> None:
    """shipping renamed ship (after `after`, if given), as README's topology-v2.yaml does."""
    ship = steps.pop("shipping")
    ship["compensation"]["inputs"] = {"start": ["order_id"], "ship": ["shipment_id"]}
    if after is not None:
        ship["depends_on"] = after
    steps["ship"] = ship


def _run(outcome: str, steps: dict[str, list[str]], **fields: Any) -> Decided:
    return Decided({"event_type": outcome, "saga_type": "order", **fields}, steps)


LIVE = _run(
    "SagaCompleted",
    {"payment": ["ChargePayment#1"], "shipping": ["CreateShipment#1"]},
    completed_steps=["shipping", "payment", "inventory"],
)
DECLINED = _run(
    "SagaCompensated",
    {"payment": ["ChargePayment#1"], "shipping": ["CreateShipment#1", "CancelShipment#1"]},
    reason="payment: card declined",
    failed_step="payment",
    compensated_steps=["shipping", "inventory"],
)


def test_a_renamed_step_whose_commands_and_outcome_are_the_same_differs_only_as_the_diff_says() -> (
    None
):
    explain = explanations(_topology(), _topology(_rename))
    assert explain["order"] == Explanation({"shipping": "ship"})
    assert "loan" not in explain  # nothing of it changed
    shadow = _run(
        "SagaCompleted",
        {"payment": ["ChargePayment#1"], "ship": ["CreateShipment#1"]},
        completed_steps=["ship", "payment", "inventory"],
    )
    [found] = compare(
        [("order", "o-1")], {("order", "o-1"): LIVE}, {("order", "o-1"): shadow}, explain
    )
    assert found.explained
    assert headline(3, [found], explain) == (
        "3 sagas compared: 1 differ only as the diff says (order: shipping -> ship), "
        "0 differ otherwise (live -> shadow)"
    )
    # a failure of the renamed step, named by its new name: the same outcome
    failed = {"reason": "shipping: address undeliverable", "failed_step": "shipping"}
    live = _run("SagaCompensated", {"shipping": ["CreateShipment#1"]}, **failed)
    failed = {"reason": "ship: address undeliverable", "failed_step": "ship"}
    now = _run("SagaCompensated", {"ship": ["CreateShipment#1"]}, **failed)
    assert compare([("order", "o-2")], {("order", "o-2"): live}, {("order", "o-2"): now}, explain)[
        0
    ].explained


def test_other_commands_or_another_outcome_differ_otherwise_and_show_the_new_names() -> None:
    explain = explanations(_topology(), _topology(lambda s: _rename(s, ["payment", "inventory"])))
    assert explain["order"] == Explanation({"shipping": "ship"}, rewired=frozenset({"ship"}))
    # ship now comes after the payment: its place in the completion order is the diff's doing
    later = _run(
        "SagaCompleted",
        {"payment": ["ChargePayment#1"], "ship": ["CreateShipment#1"]},
        completed_steps=["payment", "inventory", "ship"],
    )
    # a declined payment no longer ships and cancels: ship's commands differ, not by name only
    declined = _run(
        "SagaCompensated",
        {"payment": ["ChargePayment#1"]},
        reason="payment: card declined",
        failed_step="payment",
        compensated_steps=["inventory"],
    )
    sagas = [("order", "o-1"), ("order", "o-2")]
    live = {sagas[0]: LIVE, sagas[1]: DECLINED}
    found = compare(sagas, live, {sagas[0]: later, sagas[1]: declined}, explain)
    assert [d.explained for d in found] == [True, False]
    assert found[1].line() == (
        "order o-2: outcome SagaCompensated (payment: card declined) "
        "(compensated_steps=['shipping', 'inventory']) -> SagaCompensated (payment: card "
        "declined) (compensated_steps=['inventory']); ship: CreateShipment#1 CancelShipment#1 -> none"
    )
    assert headline(2, found, explain).endswith(
        "1 differ only as the diff says (order: shipping -> ship, ship after other steps), "
        "1 differ otherwise (live -> shadow)"
    )
    # another outcome is never explained, whatever the commands
    stuck = _run("SagaCompleted", {"payment": ["ChargePayment#1"]}, completed_steps=["payment"])
    assert not compare(sagas[:1], live, {sagas[0]: stuck}, explain)[0].explained


def test_added_and_removed_steps_commands_are_explained_a_changed_condition_is_not() -> None:
    def add_and_remove(steps: dict[str, Any]) -> None:
        steps["fraud"] = {k: v for k, v in steps["inventory"].items() if k != "compensation"}
        del steps["shipping"]

    explain = explanations(_topology(), _topology(add_and_remove))
    assert explain["order"].text() == "fraud added, shipping removed"
    live = _run(
        "SagaCompleted",
        {"inventory": ["ReserveInventory#1"], "shipping": ["CreateShipment#1"]},
        completed_steps=["inventory", "shipping"],
    )
    shadow = _run(
        "SagaCompleted",
        {"inventory": ["ReserveInventory#1"], "fraud": ["ReserveInventory#1"]},
        completed_steps=["fraud", "inventory"],
    )
    assert compare(
        [("order", "o-1")], {("order", "o-1"): live}, {("order", "o-1"): shadow}, explain
    )[0].explained

    # a `when` that skips shipping is a change of decisions the diff cannot explain away
    def skip(steps: dict[str, Any]) -> None:
        steps["shipping"]["when"] = "start.has_app"

    explain = explanations(_topology(), _topology(skip))
    assert explain == {}
    skipped = _run(
        "SagaCompleted", {"payment": ["ChargePayment#1"]}, completed_steps=["payment", "inventory"]
    )
    [found] = compare(
        [("order", "o-1")], {("order", "o-1"): LIVE}, {("order", "o-1"): skipped}, explain
    )
    assert not found.explained
    assert headline(1, [found], explain) == "1 sagas compared, 1 differ (live -> shadow)"
