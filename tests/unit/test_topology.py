"""topology.yaml: the repo file loads; each mistake names the file, the field and why."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.core.topology import TopologyError, load_topology, parse_topology

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
        assert (SCHEMAS / f"{spec.schema_name}.avsc").is_file()


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
        (_unknown_handler_topic, "handlers.payment.produces", "unknown topic 'payment.events'"),
        (_partition_mismatch, "sagas.order", "same partition count"),
        (_extra_key, "sagas.order.steps.payment.timeout", "Extra inputs are not permitted"),
        (_wrong_type, "topics.{payments.events}.partitions", "valid integer"),
        (_bad_retry_literal, "sagas.order.steps.inventory.retry.on.1", "'timeout' or 'failure'"),
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


def test_sagas_need_the_timer_event(repo_data: dict[str, Any]) -> None:
    data = copy.deepcopy(repo_data)
    del data["events"]["TimerFired"]
    assert f"{SOURCE}: events: sagas need the TimerFired event" in _error(data)


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
