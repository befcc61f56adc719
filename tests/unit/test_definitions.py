"""The definitions topic's records and the book's choices: numbering, policy updates, lowest,
which spec decides a shape, and the versions listing (nothing running)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.topology import Topology, parse_topology
from sagastream.ops.versions import format_versions, version_rows
from sagastream.runtime.definitions import (
    Definition,
    DefinitionBook,
    DefinitionError,
    RefusedChange,
    policies,
)
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore, new_meta

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = SchemaStore(ROOT / "schemas")
DATA = yaml.safe_load((ROOT / "topology.yaml").read_text())


def topology(change: Any = None) -> Topology:
    data = copy.deepcopy(DATA)
    if change is not None:
        change(data)
    return parse_topology(data, "topology.yaml", ROOT / "schemas")


def book(of: Topology, *records: Definition) -> DefinitionBook:
    found = DefinitionBook(Settings(topic_prefix="unit-"), of, SCHEMAS)
    found.take((r.key, r.encode()) for r in records)
    return found


def added_step(data: dict[str, Any]) -> None:
    """v2: a second inventory check after shipping (a step routed by its name, like the first)."""
    steps = data["sagas"]["order"]["steps"]
    steps["recheck"] = {**copy.deepcopy(steps["inventory"]), "depends_on": ["shipping"]}
    del steps["recheck"]["compensation"]


def slower_payment(data: dict[str, Any]) -> None:
    data["sagas"]["order"]["steps"]["payment"]["timeout_ms"] = 30_000


def test_a_record_round_trips_with_its_spec_and_every_event_it_uses() -> None:
    v1 = topology()
    (order,) = [d for d in book(v1).unpublished("unit", 1_000) if d.saga == "order"]
    back = Definition.decode(order.key, order.encode())
    assert back == order
    assert order.key == f"order/{v1.sagas['order'].shape}".encode()
    assert back.spec == v1.sagas["order"] and back.spec.shape == v1.sagas["order"].shape
    assert back.events["ChargePayment"].topics == ("payments.commands",)
    assert back.events["ChargePayment"].schema == SCHEMAS.raw("ChargePayment")
    assert set(back.events) >= {"OrderPlaced", "PaymentCharged", "RefundPayment"}
    body = json.loads(order.encode())
    assert body["format"] == 1 and body["version"] == 1 and body["published_by"] == "unit"


def test_a_record_whose_definition_does_not_have_its_shape_is_refused_by_name() -> None:
    (order, _) = book(topology()).unpublished("unit", 1)
    body = json.loads(order.encode())
    body["shape"] = "000000000000"
    with pytest.raises(DefinitionError, match=r"order/.*has shape .*not 000000000000"):
        Definition.decode(order.key, json.dumps(body).encode())
    with pytest.raises(DefinitionError, match="not a saga definition"):
        Definition.decode(b"order/x", b"{not json")


def test_a_new_shape_is_one_more_than_the_highest_version_read() -> None:
    first = book(topology()).unpublished("v1", 1)
    assert [(d.saga, d.version) for d in first] == [("order", 1), ("loan", 1)]
    v2 = topology(added_step)
    due = book(v2, *first).unpublished("v2", 2)
    assert [(d.saga, d.version) for d in due] == [("order", 2)]  # loan is published already
    assert due[0].shape == v2.sagas["order"].shape != first[0].shape


def test_a_policy_update_is_published_again_under_the_same_number() -> None:
    v1 = book(topology()).unpublished("v1", 1)
    v2 = book(topology(added_step), *v1).unpublished("v2", 2)
    slower = topology(slower_payment)
    assert slower.sagas["order"].shape == v1[0].shape  # a policy is not part of the shape
    due = book(slower, *v1, *v2).unpublished("v1-slower", 3)
    assert [(d.saga, d.version, d.shape) for d in due] == [("order", 1, v1[0].shape)]
    assert policies(due[0].spec)["steps"]["payment"]["timeout_ms"] == 30_000
    again = book(slower, *v1, *v2, *due)
    assert again.unpublished("v1-slower", 4) == []
    assert again.highest("order") == 2
    assert again.spec("order", v1[0].shape) == slower.sagas["order"]


def keyed_by_customer(data: dict[str, Any]) -> None:
    data["sagas"]["order"]["key_field"] = "customer_id"


def test_a_file_that_changes_a_deployed_sagas_key_is_refused_naming_the_change() -> None:
    v1 = book(topology()).unpublished("v1", 1)
    rekeyed = book(topology(keyed_by_customer), *v1)
    with pytest.raises(RefusedChange) as refused:
        rekeyed.refuse_changes(allowed=False)
    text = str(refused.value)
    assert "order.key_field: order_id -> customer_id" in text and "(deployed: v1)" in text
    assert "SAGASTREAM_ALLOW_REFUSED_CHANGES=true" in text
    rekeyed.refuse_changes(allowed=True)  # allowed: it goes through


def test_a_rollback_is_checked_against_the_newest_version() -> None:
    """v2 (a step added) was deployed after v1: going back to v1's file is a version change,
    allowed; going back to a v1 keyed otherwise is refused, though v1's shape is published."""
    v1 = book(topology()).unpublished("v1", 1)
    v2 = book(topology(added_step), *v1).unpublished("v2", 2)
    book(topology(), *v1, *v2).refuse_changes(allowed=False)
    book(topology(slower_payment), *v1, *v2).refuse_changes(allowed=False)
    assert book(topology(), *v1, *v2).newest()["order"].version == 2
    with pytest.raises(RefusedChange, match=r"order.key_field: .*\(deployed: v2\)"):
        book(topology(keyed_by_customer), *v1, *v2).refuse_changes(allowed=False)


def test_nothing_published_yet_refuses_nothing() -> None:
    book(topology(keyed_by_customer)).refuse_changes(allowed=False)


def test_lowest_is_the_first_version_and_decides_states_without_a_shape() -> None:
    v1 = book(topology()).unpublished("v1", 1)
    v2 = book(topology(added_step), *v1).unpublished("v2", 2)
    later = book(topology(added_step), *v2, *v1)  # offset order does not pick the lowest
    lowest = later.lowest("order")
    assert lowest is not None and lowest.version == 1 and lowest.shape == v1[0].shape
    assert later.lowest("nothing") is None
    assert [d.version for d in later.versions("order")] == [1, 2]


def test_spec_is_the_files_for_its_shape_else_the_recorded_one_else_none() -> None:
    v1_topology = topology()
    v1 = book(v1_topology).unpublished("v1", 1)
    v2_topology = topology(added_step)
    on_v2 = book(v2_topology, *v1)
    assert on_v2.spec("order", v2_topology.sagas["order"].shape) is v2_topology.sagas["order"]
    assert on_v2.spec("order", v1[0].shape) == v1_topology.sagas["order"]
    assert "receipt" not in on_v2.spec("order", v1[0].shape).steps  # type: ignore[union-attr]
    assert on_v2.spec("order", "ffffffffffff") is None


def test_a_tombstone_removes_its_definition_and_a_bad_record_hides_no_other() -> None:
    v1 = book(topology()).unpublished("v1", 1)
    found = DefinitionBook(Settings(), topology(), SCHEMAS)
    found.take([(v1[0].key, b"garbage"), (v1[1].key, v1[1].encode()), (v1[0].key, None)])
    assert [d.saga for d in found.versions()] == ["loan"]


def test_versions_say_current_draining_and_retired_with_their_running_instances() -> None:
    v1 = book(topology()).unpublished("v1", 1_000)
    v2_topology = topology(added_step)
    v2 = book(v2_topology, *v1).unpublished("v2", 2_000)
    order_v1, loan_v1 = v1
    running = {("order", order_v1.shape): 3, ("order", None): 2, ("order", v2[0].shape): 5}
    rows = version_rows([*v1, *v2], running, v2_topology)
    assert [(r.saga, r.version, r.running, r.state) for r in rows] == [
        ("loan", 1, 0, "current"),
        ("order", 1, 5, "draining"),  # 3 pinned to v1, 2 from before versions: the lowest's
        ("order", 2, 5, "current"),
    ]
    drained = version_rows([*v1, *v2], {("order", v2[0].shape): 1}, v2_topology)
    assert drained[1].state == "retired" and drained[1].running == 0
    lines = format_versions(rows)
    assert "SHAPE" in lines[0] and order_v1.shape in lines[2] and "draining" in lines[2]


SHIPPING = (
    "CreateShipment",
    "CancelShipment",
    "ShipmentCreated",
    "ShipmentFailed",
    "ShipmentCancelled",
)


def without_shipping(data: dict[str, Any]) -> None:
    """A version of the order saga that dropped its shipping step, its events and topics."""
    del data["sagas"]["order"]["steps"]["shipping"]
    del data["handlers"]["shipping"]
    data["topics"] = [t for t in data["topics"] if not t["name"].startswith("shipping.")]
    for name in SHIPPING:
        del data["events"][name]
    failed = data["events"]["CompensationFailed"]
    failed["topics"] = [t for t in failed["topics"] if t != "shipping.events"]


def test_an_event_type_only_a_recorded_definition_has_joins_the_topology_and_schemas(
    tmp_path: Path,
) -> None:
    v1 = book(topology()).unpublished("v1", 1)
    directory = tmp_path / "schemas"
    directory.mkdir()
    for path in (ROOT / "schemas").glob("*.avsc"):
        if path.stem not in SHIPPING:
            (directory / path.name).write_text(path.read_text())
    data = copy.deepcopy(DATA)
    without_shipping(data)
    v2 = parse_topology(data, "v2.yaml", directory)
    store = SchemaStore(directory)
    found = DefinitionBook(Settings(), v2, store)
    found.take((d.key, d.encode()) for d in v1)

    assert sorted(found.recorded_events()) == sorted(SHIPPING)
    merged = found.with_recorded_events()
    assert sorted(set(merged.events) - set(v2.events)) == sorted(SHIPPING)
    assert found.recorded_events() == {}  # the book now runs on the merged topology
    assert merged.events["ShipmentCreated"].all_topics == ("shipping.events",)
    assert {"shipping.commands", "shipping.events"} <= set(merged.topic_map)
    assert "shipping.events" not in v2.orchestrator_inputs()
    assert "shipping.events" in merged.orchestrator_inputs(found.recorded_specs())
    codec = AvroCodec(store, LocalSchemaIds(store))
    command = {
        "order_id": "o-1",
        "shipping_address": "1 Main Street",
        "items": [],
        "idempotency_key": "k",
    }
    fields = {**command, "meta": new_meta("CreateShipment", "o-1", "unit")}
    assert codec.decode(codec.encode("CreateShipment", fields)) == ("CreateShipment", fields)
