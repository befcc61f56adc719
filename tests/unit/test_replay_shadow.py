"""Comparing a shadow replay with the live run, saga by saga (pure: records in, differences out)."""

from __future__ import annotations

from typing import Any

from sagastream.ops.shadow import Decided, Difference, Output, compare, decisions

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
