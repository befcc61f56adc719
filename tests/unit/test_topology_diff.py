"""`topology diff`: each change of the demo topology in its class, in words, and the classes
agreeing with the shape (same shape <=> at most safe) on generated sagas."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sagastream.core.definition import shape_of
from sagastream.core.topology import SagaSpec, StepSpec, Topology, parse_topology
from sagastream.errors import UsageError
from sagastream.ops.topology_diff import (
    Finding,
    TopologyDiff,
    check_deployed,
    diff_sagas,
    diff_topologies,
    parse_allow,
)
from tests.unit.test_saga_properties import saga_specs

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "topology.yaml").read_text())
    return data


def _diff(demo: dict[str, Any], edit: Edit) -> TopologyDiff:
    """The demo topology against itself with `edit` applied (both validated with the schemas)."""
    new = copy.deepcopy(demo)
    edit(new)
    return diff_topologies(_load(demo), _load(new))


def _load(data: dict[str, Any]) -> Topology:
    return parse_topology(copy.deepcopy(data), "topology.yaml", SCHEMAS)


def _order(data: dict[str, Any]) -> dict[str, Any]:
    order: dict[str, Any] = data["sagas"]["order"]
    return order


def _step(data: dict[str, Any], name: str) -> dict[str, Any]:
    step: dict[str, Any] = _order(data)["steps"][name]
    return step


def _found(diff: TopologyDiff) -> list[tuple[str, str]]:
    return [(f.where, f.change) for f in diff.findings]


def test_the_same_topology_has_no_change(demo: dict[str, Any]) -> None:
    diff = _diff(demo, lambda d: None)
    assert diff.findings == []
    assert diff.lines() == [
        f"{s}: shape {_load(demo).sagas[s].shape}: unchanged" for s in ("order", "loan")
    ]


def _retry(d: dict[str, Any]) -> None:
    _step(d, "payment")["retry"]["max_attempts"] = 5


def test_a_retry_policy_is_safe_and_said_with_both_values(demo: dict[str, Any]) -> None:
    diff = _diff(demo, _retry)
    assert [str(f) for f in diff.findings] == [
        "order.steps.payment.retry.max_attempts: 3 -> 5: safe"
    ]
    order = diff.sagas[0]
    assert order.old_shape == order.new_shape and order.change == "safe"
    assert diff.not_allowed(("safe",)) == []


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda d: _step(d, "payment").update(timeout_ms=20000), "order.steps.payment.timeout_ms"),
        (
            lambda d: _step(d, "payment").update(schedule_to_close_ms=90000),
            "order.steps.payment.schedule_to_close_ms",
        ),
        (
            lambda d: _step(d, "payment")["compensation"].update(timeout_ms=9000),
            "order.steps.payment.compensation.timeout_ms",
        ),
        (lambda d: _order(d).update(deadline_ms=60000), "order.deadline_ms"),
        (lambda d: _order(d).update(audit="outcomes"), "order.audit"),
        (lambda d: _order(d).update(retention_ms=-1), "order.retention_ms"),
        (lambda d: _order(d).update(max_hops=8), "order.max_hops"),
        (
            lambda d: _order(d)["notify"]["rules"].append({"channel": "pager"}),
            "order.notify.rules",
        ),
        (
            lambda d: d["sagas"]["loan"]["steps"]["review"].update(max_wait_ms=1000),
            "loan.steps.review.max_wait_ms",
        ),
        (
            lambda d: d["sagas"]["loan"]["steps"]["review"].update(on_expiry="approved"),
            "loan.steps.review.on_expiry",
        ),
        (
            lambda d: d["sagas"]["loan"]["steps"]["review"].pop("escalation"),
            "loan.steps.review.escalation",
        ),
    ],
)
def test_policies_are_safe(demo: dict[str, Any], edit: Edit, where: str) -> None:
    diff = _diff(demo, edit)
    assert _found(diff) == [(where, "safe")]
    assert all(s.old_shape == s.new_shape for s in diff.sagas)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (
            lambda d: _step(d, "shipping").update(depends_on=["payment"]),
            "order.steps.shipping.depends_on",
        ),
        (
            lambda d: _step(d, "payment").update(failure=[]),
            "order.steps.payment.failure",
        ),
        (
            lambda d: _step(d, "inventory").update(optional=True),
            "order.steps.inventory.optional",
        ),
        (
            lambda d: _step(d, "inventory").update(when="start.amount_cents > 0"),
            "order.steps.inventory.when",
        ),
        (
            lambda d: _step(d, "inventory")["inputs"].update(
                start={"order_id": "order_id", "items": "items"}
            ),
            "order.steps.inventory.inputs.start",
        ),
        (
            lambda d: _step(d, "payment")["compensation"].update(
                inputs={"start": ["order_id", "amount_cents"]}
            ),
            "order.steps.payment.compensation.inputs.payment",
        ),
        (lambda d: _step(d, "shipping").pop("compensation"), "order.steps.shipping.compensation"),
    ],
)
def test_what_an_instance_depends_on_is_a_version(
    demo: dict[str, Any], edit: Edit, where: str
) -> None:
    diff = _diff(demo, edit)
    assert _found(diff) == [(where, "version")]
    order = diff.sagas[0]
    assert order.old_shape != order.new_shape and order.change == "version"
    assert diff.not_allowed(("safe",)) == list(diff.findings)


def test_a_reordered_dependency_list_is_no_change(demo: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["sagas"]["loan"]["steps"]["review"]["depends_on"] = ["documents", "credit_check"]

    assert _diff(demo, edit).findings == []


def test_a_step_added_and_one_removed_say_so(demo: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        steps = _order(d)["steps"]
        steps["packing"] = {
            "command": "ReserveInventory",
            "inputs": {"start": ["order_id", "items"]},
            "success": "InventoryReserved",
            "depends_on": ["payment"],
        }
        del steps["inventory"]

    diff = _diff(demo, edit)
    # the same command: a rename, said as what it is; then how the step changed besides its name
    assert [str(f) for f in diff.findings] == [
        "order.steps.inventory: renamed to packing? no: removed, and packing added with the same "
        "command (ReserveInventory); sagas in flight keep inventory (`saga migrate --map "
        "inventory=packing` moves them): version",
        "order.steps.packing.compensation: removed (was {command: ReleaseInventory, failure: "
        "[CompensationFailed], inputs: {inventory: [reservation_id], start: [order_id]}, "
        "params: {}, success: InventoryReleased}): version",
        "order.steps.packing.depends_on: [] -> [payment]: version",
        "order.steps.packing.failure: [InventoryFailed] -> []: version",
        "order.steps.packing.timeout_ms: 15000 -> 30000: safe",
        "order.steps.packing.retry.max_attempts: 3 -> 1: safe",
        "order.steps.packing.retry.max_backoff_ms: 5000 -> 10000: safe",
    ]
    assert diff.sagas[0].change == "version"


def test_an_added_and_a_removed_step_with_other_commands_are_no_rename(
    demo: dict[str, Any],
) -> None:
    def edit(d: dict[str, Any]) -> None:
        steps = _order(d)["steps"]
        steps["notice"] = {
            "command": "SendNotification",
            "inputs": {"start": ["customer_id", "email"]},
            "params": {"template": "order_paid", "outcome": "paid", "channel": "email"},
            "success": "NotificationSent",
            "depends_on": ["payment"],
            "optional": True,
        }
        del steps["shipping"]

    diff = _diff(demo, edit)
    assert [str(f) for f in diff.findings] == [
        "order.steps.shipping: removed: sagas in flight on the old shape keep it and finish on "
        "their version: version",
        "order.steps.notice: added (command SendNotification, after payment): sagas in flight "
        "on the old shape do not run it: version",
        "events.StepAttemptFailed.topics: topics follow the handler roles that run steps "
        "(sagastream derives them): safe",
    ]


@pytest.mark.parametrize(
    ("field", "value"), [("start_event", "LoanRequested"), ("key_field", "id")]
)
def test_a_start_event_or_key_changed_under_a_saga_name_is_refused(
    demo: dict[str, Any], field: str, value: str
) -> None:
    old = _load(demo).sagas["loan"]
    new = SagaSpec.model_validate({**old.model_dump(mode="json"), field: value})
    diff = diff_sagas("loan", old, new)
    assert [(f.where, f.change) for f in diff.findings] == [(f"loan.{field}", "refused")]
    assert diff.findings[0].what == (
        f"{getattr(old, field)} -> {value}: sagas in flight were started and keyed by "
        f"{getattr(old, field)}; give the changed saga a new name instead"
    )


def test_a_saga_removed_is_refused_and_a_saga_added_is_safe(demo: dict[str, Any]) -> None:
    removed = _diff(demo, lambda d: d["sagas"].pop("loan"))
    assert [f for f in removed.findings if f.change != "safe"] == [removed.sagas[1].findings[0]]
    assert removed.sagas[1].findings[0].where == "loan"
    assert removed.sagas[1].new_shape is None and removed.sagas[1].change == "refused"
    assert "topology versions" in removed.sagas[1].findings[0].what

    added = diff_sagas("loan2", None, _load(demo).sagas["loan"])
    assert [str(f) for f in added.findings] == ["loan2: a new saga: none of it is in flight: safe"]
    assert added.old_shape is None and added.change == "safe"


def test_an_event_topic_changed_under_a_saga_is_refused(demo: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["topics"].append({"name": "payments.results"})
        d["events"]["PaymentCharged"] = {"topic": "payments.results"}

    diff = _diff(demo, edit)
    assert _found(diff) == [
        ("events.PaymentCharged.topic", "refused"),
        ("topics.payments.results", "safe"),
    ]
    assert diff.findings[0].what.startswith(
        "[payments.events] -> [payments.results] while saga order uses it"
    )
    assert all(s.change is None for s in diff.sagas)  # the shapes are the same


def test_the_signal_topic_is_used_by_a_saga_with_a_human_step(demo: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["topics"].append({"name": "decisions"})
        d["events"]["StepSignal"] = {"topic": "decisions"}

    diff = _diff(demo, edit)
    assert diff.findings[0].where == "events.StepSignal.topic"
    assert diff.findings[0].change == "refused"
    assert "while saga loan uses it" in diff.findings[0].what


def test_an_event_no_saga_uses_may_move(demo: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["topics"].append({"name": "partner.events"})
        d["events"]["NotificationSent"] = {"topic": "partner.events"}  # notify ignores results
        d["events"]["NotificationFailed"] = {"topic": "partner.events"}

    diff = _diff(demo, edit)
    assert {f.change for f in diff.findings} == {"safe"}
    assert "(no saga uses it)" in diff.findings[0].what


def test_a_partition_count_under_a_saga_is_refused(demo: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["defaults"]["partitions"] = 8

    diff = _diff(demo, edit)
    refused = {f.where for f in diff.findings if f.change == "refused"}
    assert "topics.orders.events.partitions" in refused
    assert ("defaults.partitions", "safe") in _found(diff)


def test_deployment_changes_outside_the_sagas_are_safe(demo: dict[str, Any]) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["handlers"]["payment"]["concurrency"] = 8
        d["schema_registry"]["compatibility"] = "FULL"
        d["topics"][0]["retention_ms"] = 1000

    diff = _diff(demo, edit)
    assert _found(diff) == [
        ("topics.orders.events.retention_ms", "safe"),
        ("handlers.payment.concurrency", "safe"),
        ("schema_registry.compatibility", "safe"),
    ]
    assert diff.lines()[-4] == "outside the sagas: safe"


def test_allow_names_classes() -> None:
    assert parse_allow("version, safe") == ("safe", "version")
    assert parse_allow("refused") == ("refused",)
    for bad in ("safe,risky", ""):
        with pytest.raises(UsageError, match="give a comma list of safe, version, refused"):
            parse_allow(bad)


# --- the classes agree with the shape, on generated sagas ---------------------------------------

# edits of a saga's dump: (name, edit); each keeps the saga valid as a SagaSpec
SagaEdit = Callable[[dict[str, Any], st.DataObject], None]


def _some_step(saga: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    step: dict[str, Any] = saga["steps"][data.draw(st.sampled_from(sorted(saga["steps"])))]
    return step


def _rename(saga: dict[str, Any], data: st.DataObject) -> None:
    old = data.draw(st.sampled_from(sorted(saga["steps"])))
    saga["steps"] = {("z" if n == old else n): s for n, s in saga["steps"].items()}


def _add(saga: dict[str, Any], data: st.DataObject) -> None:
    saga["steps"]["z"] = StepSpec(command="Do_z", success="Done_z").model_dump(mode="json")


def _remove(saga: dict[str, Any], data: st.DataObject) -> None:
    if len(saga["steps"]) > 1:
        del saga["steps"][data.draw(st.sampled_from(sorted(saga["steps"])))]


def _undo(saga: dict[str, Any], data: st.DataObject) -> None:
    step = _some_step(saga, data)
    step["compensation"] = None if step["compensation"] else {"command": "U", "success": "Ud"}


EDITS: list[tuple[str, SagaEdit]] = [
    ("retry", lambda s, d: _some_step(s, d)["retry"].update(max_attempts=7)),
    ("timeout", lambda s, d: _some_step(s, d).update(timeout_ms=4321)),
    ("deadline", lambda s, d: s.update(deadline_ms=77)),
    ("notify", lambda s, d: s.update(notify=None)),
    ("command", lambda s, d: _some_step(s, d).update(command="Other")),
    ("success", lambda s, d: _some_step(s, d).update(success="Other")),
    ("optional", lambda s, d: _some_step(s, d).update(optional=True)),
    ("when", lambda s, d: _some_step(s, d).update(when="start.n > 5")),
    ("params", lambda s, d: _some_step(s, d).update(params={"x": 1})),
    ("inputs", lambda s, d: _some_step(s, d).update(inputs={"start": ["amount"]})),
    ("depends reordered", lambda s, d: _some_step(s, d)["depends_on"].reverse()),
    ("key", lambda s, d: s.update(key_field="amount")),
    ("rename", _rename),
    ("add", _add),
    ("remove", _remove),
    ("compensation", _undo),
]


@settings(max_examples=300, deadline=None)
@given(saga_specs(), st.data())
def test_same_shape_if_and_only_if_at_most_safe(old: SagaSpec, data: st.DataObject) -> None:
    dump = old.model_dump(mode="json")
    for _, edit in data.draw(st.lists(st.sampled_from(EDITS), max_size=3), label="edits"):
        edit(dump, data)
    new = SagaSpec.model_validate(dump)
    diff = diff_sagas("s", old, new)
    same_shape = shape_of(old) == shape_of(new)
    assert same_shape == (diff.change in (None, "safe")), [str(f) for f in diff.findings]
    assert (diff.findings == ()) == (_canonical(old) == _canonical(new))


def _canonical(spec: SagaSpec) -> Any:
    """A saga's dump with the lists the engine reads as sets in a fixed order."""
    dump = spec.model_dump(mode="json")
    for step in dump["steps"].values():
        step["depends_on"] = sorted(step["depends_on"])
        step["failure"] = sorted(step["failure"])
        if step["compensation"]:
            step["compensation"]["failure"] = sorted(step["compensation"]["failure"])
    return dump


def test_a_finding_reads_as_where_what_class() -> None:
    finding = Finding("order.steps.payment.retry.max_attempts", "3 -> 5", "safe")
    assert str(finding) == "order.steps.payment.retry.max_attempts: 3 -> 5: safe"
    assert finding.to_dict() == {
        "where": "order.steps.payment.retry.max_attempts",
        "what": "3 -> 5",
        "class": "safe",
    }


def test_check_against_the_deployed_versions(demo: dict[str, Any]) -> None:
    """`topology check`: each saga of the file against its newest published version; a saga the
    file drops is refused while instances of it run, and safe once none does."""
    deployed = _load(demo).sagas
    new = copy.deepcopy(demo)
    _step(new, "payment")["retry"]["max_attempts"] = 5
    _order(new)["steps"]["fraud"] = {
        "command": "ChargePayment",
        "success": "PaymentCharged",
        "failure": ["PaymentFailed"],
        "inputs": {"start": ["order_id", "customer_id", "amount_cents", "currency", "card_token"]},
    }
    new["sagas"].pop("loan")
    diff = check_deployed(deployed, {"loan": 2}, _load(new))
    assert [s.change for s in diff.sagas] == ["version", "refused"]
    assert diff.sagas[1].findings[0].what.startswith("removed while 2 instances of it run")
    assert diff.not_allowed(("safe", "version")) == [diff.sagas[1].findings[0]]

    drained = check_deployed(deployed, {"loan": 0}, _load(new))
    assert [s.change for s in drained.sagas] == ["version", "safe"]
    assert str(drained.sagas[1].findings[0]) == "loan: removed; no instance of it runs: safe"
    first = check_deployed({}, {}, _load(demo))
    assert [s.change for s in first.sagas] == ["safe", "safe"]
