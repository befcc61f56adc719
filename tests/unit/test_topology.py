"""topology.yaml: the repo file loads; each mistake names the file, the field and why."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.topology import (
    ENGINE_SCHEMAS_DIR,
    TopologyError,
    load_topology,
    parse_topology,
)

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = ROOT / "topology.yaml"
SCHEMAS = ROOT / "schemas"
SOURCE = "topology.yaml"


@pytest.fixture(scope="module")
def repo_data() -> dict[str, Any]:
    return yaml.safe_load(TOPOLOGY.read_text())


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(TopologyError) as caught:
        parse_topology(data, SOURCE, SCHEMAS)
    return str(caught.value)


def _topic(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in data["topics"] if t["name"] == name)


def test_repo_topology_loads() -> None:
    topo = load_topology(TOPOLOGY, SCHEMAS)
    order = topo.sagas["order"]
    assert order.start_event == "OrderPlaced"
    assert set(order.steps) == {"payment", "inventory", "shipping"}
    assert {topo.partitions(t) for t in topo.saga_topics("order")} == {4}
    for spec in topo.events.values():
        file = f"{spec.schema_name}.avsc"
        assert (SCHEMAS / file).is_file() or (ENGINE_SCHEMAS_DIR / file).is_file()
    # sagastream's own topics and events, which topology.yaml does not declare
    assert topo.event_topic("SagaCompleted") == "sagas.outcomes"
    assert topo.partitions("sagas.timers") == 4


def test_repo_data_parses_unchanged(repo_data: dict[str, Any]) -> None:
    """The mutation tests below start from a document that is valid as it stands."""
    assert parse_topology(copy.deepcopy(repo_data), SOURCE, SCHEMAS).sagas["order"]


def _unknown_dependency(d: dict[str, Any]) -> None:
    d["sagas"]["order"]["steps"]["shipping"]["depends_on"] = ["packing"]


def _undeclared_event(d: dict[str, Any]) -> None:
    d["sagas"]["order"]["steps"]["payment"]["success"] = "PaymentCaptured"


def _missing_schema_file(d: dict[str, Any]) -> None:
    d["events"]["PaymentCharged"]["schema"] = "PaymentChargedV9"


def _unknown_topic(d: dict[str, Any]) -> None:
    d["events"]["PaymentFailed"]["topic"] = "payments.evnets"


def _unknown_handler_topic(d: dict[str, Any]) -> None:
    d["handlers"]["payment"]["produces"] = "payment.events"


def _partition_mismatch(d: dict[str, Any]) -> None:
    _topic(d, "inventory.events")["partitions"] = 8


def _extra_key(d: dict[str, Any]) -> None:
    d["sagas"]["order"]["steps"]["payment"]["timeout"] = 5000


def _wrong_type(d: dict[str, Any]) -> None:
    _topic(d, "payments.events")["partitions"] = "four"


def _bad_retry_literal(d: dict[str, Any]) -> None:
    d["sagas"]["order"]["steps"]["inventory"]["retry"]["on"] = ["timeout", "crash"]


def _missing_required(d: dict[str, Any]) -> None:
    del d["sagas"]["order"]["key_field"]


@pytest.mark.parametrize(
    ("mutate", "path", "why"),
    [
        (_unknown_dependency, "sagas.order.steps.shipping.depends_on", "unknown step 'packing'"),
        (
            _undeclared_event,
            "sagas.order.steps.payment.success",
            "'PaymentCaptured' is not declared",
        ),
        (
            _missing_schema_file,
            "events.PaymentCharged.schema",
            "no schema file PaymentChargedV9.avsc",
        ),
        (_unknown_topic, "events.PaymentFailed.topic", "unknown topic 'payments.evnets'"),
        (
            _unknown_handler_topic,
            "handlers.payment.produces",
            "unknown topic 'payment.events'",
        ),
        (_partition_mismatch, "sagas.order", "same partition count"),
        (_extra_key, "sagas.order.steps.payment.timeout", "Extra inputs are not permitted"),
        (_wrong_type, "topics.{payments.events}.partitions", "valid integer"),
        (
            _bad_retry_literal,
            "sagas.order.steps.inventory.retry.on.1",
            "'timeout', 'error' or 'failure'",
        ),
        (_missing_required, "sagas.order.key_field", "Field required"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_invalid_variant_names_file_field_and_reason(
    repo_data: dict[str, Any], mutate: Callable[[dict[str, Any]], None], path: str, why: str
) -> None:
    data = copy.deepcopy(repo_data)
    index = next(i for i, t in enumerate(data["topics"]) if t["name"] == "payments.events")
    path = path.replace("{payments.events}", str(index))
    mutate(data)
    message = _error(data)
    line = next((ln for ln in message.splitlines() if ln.startswith(f"{SOURCE}: {path}: ")), None)
    assert line is not None, message
    assert why in line, message


def test_partition_mismatch_lists_the_counts(repo_data: dict[str, Any]) -> None:
    data = copy.deepcopy(repo_data)
    _partition_mismatch(data)
    message = _error(data)
    assert "inventory.events=8" in message
    assert "payments.events=4" in message


def test_dependency_cycle_shows_the_cycle(repo_data: dict[str, Any]) -> None:
    data = copy.deepcopy(repo_data)
    steps = data["sagas"]["order"]["steps"]
    steps["payment"]["depends_on"] = ["shipping"]
    steps["shipping"]["depends_on"] = ["inventory"]
    steps["inventory"]["depends_on"] = ["payment"]
    message = _error(data)
    match = re.search(
        r"^topology\.yaml: sagas\.order\.steps: dependency cycle: (.+)$", message, re.M
    )
    assert match, message
    cycle = match.group(1).split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["inventory", "payment", "shipping"]
    # each hop follows a declared dependency
    for node, dep in zip(cycle, cycle[1:], strict=False):
        assert dep in steps[node]["depends_on"]


def test_self_dependency_is_a_cycle(repo_data: dict[str, Any]) -> None:
    data = copy.deepcopy(repo_data)
    data["sagas"]["order"]["steps"]["payment"]["depends_on"] = ["payment"]
    assert "dependency cycle: payment -> payment" in _error(data)


def test_every_problem_is_reported_not_just_the_first(repo_data: dict[str, Any]) -> None:
    data = copy.deepcopy(repo_data)
    _unknown_dependency(data)
    _missing_schema_file(data)
    _unknown_topic(data)
    lines = _error(data).splitlines()
    assert len(lines) == 3
    assert all(ln.startswith(f"{SOURCE}: ") for ln in lines)


def test_event_needs_exactly_one_topic_field(repo_data: dict[str, Any]) -> None:
    data = copy.deepcopy(repo_data)
    data["events"]["OrderPlaced"]["topics"] = ["orders.events"]
    message = _error(data)
    assert message.startswith(f"{SOURCE}: events.OrderPlaced: ")
    assert "exactly one of 'topic' or 'topics'" in message


def test_the_engine_events_are_merged_in_and_a_declaration_wins(
    repo_data: dict[str, Any],
) -> None:
    data = copy.deepcopy(repo_data)
    assert "TimerFired" not in data["events"]
    data["topics"].append({"name": "audit", "partitions": 4})
    data["events"]["SagaLifecycle"] = {"topic": "audit"}
    topology = parse_topology(data, SOURCE, SCHEMAS)
    assert topology.event_topic("SagaLifecycle") == "audit"
    assert topology.event_topic("TimerFired") == "sagas.timers"
    assert topology.events["SagaLifecycle"].schema_name == "SagaLifecycle"


def test_not_a_mapping_names_the_file() -> None:
    message = _error(["topics", "events"])  # type: ignore[arg-type]
    assert message.startswith(f"{SOURCE}: (top level): ")


def test_missing_file_is_a_topology_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(TopologyError, match=r"nowhere\.yaml: cannot read: No such file"):
        load_topology(path, SCHEMAS)


def test_unreadable_file_is_a_topology_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(TOPOLOGY.read_text())

    def denied(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    # chmod 0 does not stop root, which is who runs the tests in CI containers
    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(TopologyError, match=r"secret\.yaml: cannot read: Permission denied"):
        load_topology(path, SCHEMAS)


def test_directory_instead_of_file_is_a_topology_error(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path, SCHEMAS)


def test_invalid_yaml_is_a_topology_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("topics:\n  - {name: orders.events\nevents: {}\n")
    with pytest.raises(TopologyError) as caught:
        load_topology(path, SCHEMAS)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid YAML: ")
    assert "line" in message  # where the parser gave up


def test_load_names_the_real_path_in_validation_errors(
    tmp_path: Path, repo_data: dict[str, Any]
) -> None:
    data = copy.deepcopy(repo_data)
    _wrong_type(data)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    index = next(i for i, t in enumerate(data["topics"]) if t["name"] == "payments.events")
    where = rf"^{re.escape(str(path))}: topics\.{index}\.partitions: "
    with pytest.raises(TopologyError, match=where):
        load_topology(path, SCHEMAS)


def test_unknown_topic_in_a_topics_list_names_that_field(repo_data: dict[str, Any]) -> None:
    data = copy.deepcopy(repo_data)
    data["events"]["CompensationFailed"]["topics"].append("refunds.events")
    assert f"{SOURCE}: events.CompensationFailed.topics: unknown topic" in _error(data)


# -- data flow: inputs, params and when -----------------------------------------------------------


def _steps(d: dict[str, Any], saga: str = "order") -> dict[str, Any]:
    return d["sagas"][saga]["steps"]


def _source_not_a_dependency(d: dict[str, Any]) -> None:
    _steps(d)["shipping"]["inputs"]["payment"] = ["payment_id"]


def _undo_source_not_a_dependency(d: dict[str, Any]) -> None:
    _steps(d)["payment"]["compensation"]["inputs"]["inventory"] = ["reservation_id"]


def _source_field_missing(d: dict[str, Any]) -> None:
    _steps(d)["payment"]["compensation"]["inputs"]["payment"] = {"payment_id": "charge_id"}


def _command_field_missing(d: dict[str, Any]) -> None:
    _steps(d)["payment"]["inputs"]["start"].append("email")


def _two_sources_collide(d: dict[str, Any]) -> None:
    _steps(d)["payment"]["compensation"]["inputs"]["payment"] = ["payment_id", "amount_cents"]


def _input_collides_with_an_automatic_field(d: dict[str, Any]) -> None:
    _steps(d)["inventory"]["inputs"]["start"] = {
        "order_id": "order_id",
        "items": "items",
        "idempotency_key": "email",
    }


def _param_collides(d: dict[str, Any]) -> None:
    _steps(d)["payment"]["params"] = {"currency": "EUR"}


def _param_not_a_field(d: dict[str, Any]) -> None:
    _steps(d)["payment"]["params"] = {"express": True}


def _required_field_unfilled(d: dict[str, Any]) -> None:
    _steps(d)["payment"]["inputs"]["start"].remove("card_token")


def _required_field_from_a_skippable_step(d: dict[str, Any]) -> None:
    _steps(d, "loan")["credit_check"]["optional"] = True


def _required_field_from_a_step_with_when(d: dict[str, Any]) -> None:
    _steps(d, "loan")["credit_check"]["when"] = "start.amount_cents > 100"


def _notify_reads_a_step_that_may_not_have_run(d: dict[str, Any]) -> None:
    d["sagas"]["order"]["notify"]["inputs"] = {
        "start": ["email"],
        "payment": {"customer_id": "order_id"},
    }


def _when_not_in_the_grammar(d: dict[str, Any]) -> None:
    _steps(d)["inventory"]["when"] = "len(start.items) > 0"


def _when_not_an_expression(d: dict[str, Any]) -> None:
    _steps(d)["inventory"]["when"] = "start.priority =="


def _when_is_none(d: dict[str, Any]) -> None:
    _steps(d)["inventory"]["when"] = "start.priority is None"


def _when_reads_a_step_not_depended_on(d: dict[str, Any]) -> None:
    _steps(d)["shipping"]["when"] = "payment.payment_id != ''"


def _when_reads_a_field_the_event_lacks(d: dict[str, Any]) -> None:
    _steps(d)["shipping"]["when"] = "start.nights > 0"


def _notify_rule_reads_a_field_the_event_lacks(d: dict[str, Any]) -> None:
    d["sagas"]["order"]["notify"]["rules"][1]["when"] = "start.prio == 'high'"


def _notify_rule_in_the_old_mapping_form(d: dict[str, Any]) -> None:
    d["sagas"]["order"]["notify"]["rules"][1]["when"] = {"priority": "high"}


def _step_named_start(d: dict[str, Any]) -> None:
    _steps(d)["start"] = _steps(d).pop("payment")


def _inputs_without_a_command(d: dict[str, Any]) -> None:
    review = _steps(d, "loan")["review"]
    del review["command"]
    review["inputs"] = {"start": ["loan_id"]}


@pytest.mark.parametrize(
    ("mutate", "path", "why"),
    [
        (
            _source_not_a_dependency,
            "sagas.order.steps.shipping.inputs.payment",
            "'payment' is not start or a step shipping depends on",
        ),
        (
            _undo_source_not_a_dependency,
            "sagas.order.steps.payment.compensation.inputs.inventory",
            "'inventory' is not start, payment or a step payment depends on",
        ),
        (
            _source_field_missing,
            "sagas.order.steps.payment.compensation.inputs.payment",
            "PaymentCharged has no field 'charge_id' (for 'payment_id')",
        ),
        (
            _command_field_missing,
            "sagas.order.steps.payment.inputs.start",
            "ChargePayment has no field 'email'",
        ),
        (
            _two_sources_collide,
            "sagas.order.steps.payment.compensation.inputs.payment",
            "RefundPayment field 'amount_cents' collides: filled by start and by payment",
        ),
        (
            _input_collides_with_an_automatic_field,
            "sagas.order.steps.inventory.inputs.start",
            "ReserveInventory field 'idempotency_key' collides: filled by sagastream and by start",
        ),
        (
            _param_collides,
            "sagas.order.steps.payment.params",
            "ChargePayment field 'currency' collides: filled by start and by params",
        ),
        (
            _param_not_a_field,
            "sagas.order.steps.payment.params",
            "ChargePayment has no field 'express'",
        ),
        (
            _required_field_unfilled,
            "sagas.order.steps.payment.inputs",
            "ChargePayment field 'card_token' cannot be filled",
        ),
        (
            _required_field_from_a_skippable_step,
            "sagas.loan.steps.review.inputs.credit_check",
            "RequestReview field 'credit_score' comes from credit_check, which may be skipped",
        ),
        (
            _required_field_from_a_step_with_when,
            "sagas.loan.steps.review.inputs.credit_check",
            "must give 'credit_score' a default",
        ),
        (
            _notify_reads_a_step_that_may_not_have_run,
            "sagas.order.notify.inputs.payment",
            "SendNotification field 'customer_id' comes from payment, which may not have succeeded",
        ),
        (
            _when_not_in_the_grammar,
            "sagas.order.steps.inventory.when",
            "'len(start.items)' is not allowed",
        ),
        (
            _when_not_an_expression,
            "sagas.order.steps.inventory.when",
            "not a valid expression",
        ),
        (
            _when_is_none,
            "sagas.order.steps.inventory.when",
            "'is' is not allowed",
        ),
        (
            _when_reads_a_step_not_depended_on,
            "sagas.order.steps.shipping.when",
            "'payment.payment_id': 'payment' is not start or a step shipping depends on",
        ),
        (
            _when_reads_a_field_the_event_lacks,
            "sagas.order.steps.shipping.when",
            "'start.nights': OrderPlaced has no field 'nights'",
        ),
        (
            _notify_rule_reads_a_field_the_event_lacks,
            "sagas.order.notify.rules.1.when",
            "'start.prio': OrderPlaced has no field 'prio'",
        ),
        (
            _notify_rule_in_the_old_mapping_form,
            "sagas.order.notify.rules.1.when",
            "valid string",
        ),
        (_step_named_start, "sagas.order.steps.start", "rename the step"),
        (
            _inputs_without_a_command,
            "sagas.loan.steps.review",
            "'inputs' and 'params' fill the step's command, and it has none",
        ),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_data_flow_mistakes_name_file_step_and_field(
    repo_data: dict[str, Any], mutate: Callable[[dict[str, Any]], None], path: str, why: str
) -> None:
    data = copy.deepcopy(repo_data)
    mutate(data)
    message = _error(data)
    line = next((ln for ln in message.splitlines() if ln.startswith(f"{SOURCE}: {path}: ")), None)
    assert line is not None, message
    assert why in line, message


def test_a_field_from_a_skippable_step_is_fine_when_the_command_has_a_default(
    repo_data: dict[str, Any],
) -> None:
    data = copy.deepcopy(repo_data)
    steps = _steps(data)
    steps["inventory"]["when"] = "start.priority != 'digital'"
    steps["shipping"]["depends_on"] = ["inventory"]
    # CancelShipment.shipment_id has a default; a skipped inventory leaves it out
    steps["shipping"]["compensation"]["inputs"]["inventory"] = {"shipment_id": "reservation_id"}
    del steps["shipping"]["compensation"]["inputs"]["shipping"]
    saga = parse_topology(data, SOURCE, SCHEMAS).sagas["order"]
    assert saga.steps["inventory"].condition is not None
    assert saga.steps["inventory"].condition({"start": {"priority": "digital"}}) is False


def test_without_schemas_only_the_schema_checks_are_skipped(repo_data: dict[str, Any]) -> None:
    data = copy.deepcopy(repo_data)
    _command_field_missing(data)
    _required_field_unfilled(data)
    _source_not_a_dependency(data)
    _two_sources_collide(data)
    with pytest.raises(TopologyError) as caught:
        parse_topology(data, SOURCE, None)
    lines = str(caught.value).splitlines()
    assert [ln.split(": ")[1] for ln in lines] == [
        "sagas.order.steps.payment.compensation.inputs.payment",
        "sagas.order.steps.shipping.inputs.payment",
    ]
    assert "collides" in lines[0] and "shipping depends on" in lines[1]


def test_the_repo_topology_maps_every_command_field(repo_data: dict[str, Any]) -> None:
    topology = parse_topology(copy.deepcopy(repo_data), SOURCE, SCHEMAS)
    refund = topology.sagas["order"].steps["payment"].compensation
    assert refund is not None
    assert refund.bindings == (
        ("order_id", "start", "order_id"),
        ("amount_cents", "start", "amount_cents"),
        ("payment_id", "payment", "payment_id"),
    )
    rules = topology.sagas["order"].notify.rules  # type: ignore[union-attr]
    assert [r.when for r in rules] == [None, "start.priority == 'high'", "start.has_app"]


def test_ended_sagas_are_kept_seven_days_unless_retention_ms_says_otherwise(
    repo_data: dict[str, Any],
) -> None:
    assert load_topology(TOPOLOGY, SCHEMAS).sagas["order"].retention_ms == 7 * 24 * 3600 * 1000
    data = copy.deepcopy(repo_data)
    data["sagas"]["order"]["retention_ms"] = -2  # -1 keeps them forever; less means nothing
    assert f"{SOURCE}: sagas.order.retention_ms: " in _error(data)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys silently: the second `timeout_ms` of a step would
    change it without a word. The loader names the key and both lines."""
    text = (ROOT / "topology.yaml").read_text()
    doubled = text.replace("timeout_ms: 15000\n", "timeout_ms: 15000\n        timeout_ms: 99\n", 1)
    assert doubled != text
    path = tmp_path / "topology.yaml"
    path.write_text(doubled)
    with pytest.raises(TopologyError) as caught:
        load_topology(path, SCHEMAS)
    message = str(caught.value)
    first = doubled.splitlines().index("        timeout_ms: 15000") + 1
    assert message.startswith(f"{path}: not valid YAML: ")
    assert f"'timeout_ms' is given twice in one mapping (first on line {first})" in message
    assert f"line {first + 1}" in message


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    """`<<: *anchor` then a key of the anchor is YAML's override, not a key given twice."""
    text = (ROOT / "topology.yaml").read_text()
    text = text.replace(
        "retry: {max_attempts: 3, initial_backoff_ms: 200, multiplier: 2.0, max_backoff_ms: 5000}",
        "retry: &retry {max_attempts: 3, initial_backoff_ms: 200, multiplier: 2.0, "
        "max_backoff_ms: 5000}",
        1,
    ).replace(
        "retry: {max_attempts: 3, initial_backoff_ms: 200, multiplier: 2.0, max_backoff_ms: 5000}",
        "retry: {<<: *retry, max_attempts: 4}",
        1,
    )
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    steps = load_topology(path, SCHEMAS).sagas["order"].steps
    assert steps["payment"].retry.max_attempts == 3
    assert steps["inventory"].retry.max_attempts == 4
    assert steps["inventory"].retry.max_backoff_ms == 5000
