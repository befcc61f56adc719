"""`sagastream replay shadow` on a real broker with real worker processes: unchanged history
shows no difference and replays to the same decisions twice; a changed retry policy shows
exactly the sagas whose live payments were to be retried."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.ops import cli
from sagastream.ops.admin import admin_client
from sagastream.ops.demo import WorkerSet, settings_env
from sagastream.ops.shadow import remove_shadow, shadow_settings
from sagastream.wire.codec import SchemaStore
from tests.integration.helpers import place_order, wait_outcomes

pytestmark = pytest.mark.integration

ORDERS = 30
METADATA_S = 10.0  # a hang guard for the broker's metadata to follow a topic deletion


@pytest.fixture
def topology_patch() -> Any:
    def patch(data: dict[str, Any]) -> None:
        # a payment that fails is retried (3 attempts), so some sagas have retries to change
        retry = data["sagas"]["order"]["steps"]["payment"]["retry"]
        retry["on"] = ["timeout", "failure"]
        # its retry timer due seconds after the failure, not 200 ms: the shadow decides in event
        # time, and a live orchestrator that took a saga's other result after the timer was due
        # but before it fired (the documented limit: within a timer tick, more on a loaded
        # machine) replays in the other order. With the other steps running in parallel, their
        # results come within milliseconds of the failure, far from a timer 3 s away. A CI run
        # saw the race at 200 ms: a shipment failure taken live before an overdue payment retry.
        retry["initial_backoff_ms"] = 3000

    return patch


@pytest.fixture
def live(ns, tmp_path: Path, monkeypatch) -> Any:
    """~30 orders run by live workers: some declined, out of stock or undeliverable, and about
    a third of the payments failing by chance (a failed charge fails on every attempt)."""
    for name, value in settings_env(ns.settings).items():
        monkeypatch.setenv(name, value)
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    try:
        workers.start(["orchestrator", "inventory,shipping,notification"])
        # one after the other: every handler process opens every service's ledger at start
        workers.wait_ready()
        workers.start(["payment"], {"SAGASTREAM_HANDLER_FAILURE_RATE": "0.3"})
        workers.wait_ready()
        keys = {f"order-shadow-{i:02d}" for i in range(ORDERS)}
        for key in sorted(keys):
            place_order(ns, key, mixed=True)
        wait_outcomes(ns, keys, timeout=120)
        yield keys
    finally:
        workers.stop()


def differing(out: str) -> dict[str, str]:
    """The printed differences: saga key -> what differs."""
    found = {}
    for line in out.splitlines():
        if line.startswith("order ") and ": " in line:
            key, what = line.removeprefix("order ").split(": ", 1)
            found[key] = what
    return found


def shadow_state(ns, prefix: str) -> tuple[dict[bytes, bytes], list[Any]]:
    """A kept shadow's last state per saga (bytes) and its commands without their random ids."""
    settings = shadow_settings(ns.settings, prefix, ns.settings.topology_file)
    states = {
        m.key: m.value
        for m in ns.client.read_to_end([settings.changelog_topic()])
        if m.key and m.value
    }
    commands = sorted(
        (
            m.key,
            m.event_type,
            m.record["meta"]["occurred_at"],
            m.record["meta"]["attempt"],
            json.dumps({k: v for k, v in m.record.items() if k != "meta"}, sort_keys=True),
        )
        for m in ns.client.read_to_end(
            [settings.topic(t) for t in ("payments.commands", "inventory.commands")]
        )
        if m.record
    )
    return states, commands


def test_unchanged_history_shows_no_difference_and_replays_the_same(ns, live, capsys) -> None:
    runs = {}
    for prefix in ("shadow-a-", "shadow-b-"):
        code = cli.main(["replay", "shadow", "--shadow-prefix", prefix, "--keep", "--fail-on-diff"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert f"{ORDERS} sagas compared, 0 differ" in out, out
        assert not differing(out)
        runs[prefix] = shadow_state(ns, prefix)
        remove_shadow(
            shadow_settings(ns.settings, prefix, ns.settings.topology_file),
            ns.topology,
            SchemaStore(ns.settings.schemas_path),
        )
    states, commands = runs["shadow-a-"]
    assert len(states) == ORDERS and commands
    # the same history gives byte-for-byte the same decisions: states, timers, times, commands
    assert runs["shadow-b-"] == (states, commands)


def test_changed_retry_policy_shows_the_sagas_that_differ(ns, live, tmp_path, capsys) -> None:
    data = yaml.safe_load(ns.settings.topology_file.read_text())
    data["sagas"]["order"]["steps"]["payment"]["retry"]["max_attempts"] = 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))

    code = cli.main(["replay", "shadow", "--topology", str(changed)])
    out = capsys.readouterr().out
    assert code == 0, out
    reported = differing(out)

    # the live run's word: the sagas whose payment failure it answered with a retry
    retried = set()
    attempts: dict[str, list[int]] = defaultdict(list)
    for m in ns.client.read_to_end([ns.topic("sagas.lifecycle")]):
        if m.record and any(
            (c["what"], c["step"]) == ("step_retry_scheduled", "payment")
            for c in m.record["changes"]
        ):
            retried.add(m.key.decode())
    for m in ns.client.read_to_end([ns.topic("payments.commands")]):
        if m.event_type == "ChargePayment" and m.record:
            attempts[m.key.decode()].append(m.record["meta"]["attempt"])
    assert retried and len(retried) < ORDERS, "the live run should retry some payments, not all"
    assert set(reported) == retried, out
    assert f"{ORDERS} sagas compared, {len(retried)} differ" in out
    for key in retried:
        if max(attempts[key]) > 1:  # the live run sent the retries the shadow does not
            assert "payment: ChargePayment#1 ChargePayment#2" in reported[key], reported[key]

    # --fail-on-diff says so in the exit code; without --keep nothing of the shadow is left
    assert cli.main(["replay", "shadow", "--topology", str(changed), "--fail-on-diff"]) == 1
    capsys.readouterr()
    shadows = f"{ns.settings.topic_prefix}shadow-"
    admin = admin_client(ns.settings)
    # deleted by the controller when the command returned; the broker's metadata follows a
    # moment later
    deadline = time.monotonic() + METADATA_S
    while left := [t for t in admin.list_topics(timeout=10).topics if t.startswith(shadows)]:
        assert time.monotonic() < deadline, f"the shadow's topics are left: {left}"
        time.sleep(0.2)
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    assert not [g.group_id for g in groups if g.group_id.startswith(shadows)]
    assert not list(ns.settings.data_dir.glob(f"{shadows}*"))


def _changed(ns, tmp_path: Path, name: str, *edits: Any) -> str:
    """The live topology with the order saga's steps edited, as a file of its own."""
    data = yaml.safe_load(ns.settings.topology_file.read_text())
    for edit in edits:
        edit(data["sagas"]["order"]["steps"])
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def rename(steps: dict[str, Any]) -> None:
    ship = steps.pop("shipping")
    ship["compensation"]["inputs"]["ship"] = ship["compensation"]["inputs"].pop("shipping")
    steps["ship"] = ship


def after_payment(steps: dict[str, Any]) -> None:
    steps["ship"]["depends_on"] = ["payment", "inventory"]


def skip_shipping(steps: dict[str, Any]) -> None:
    steps["shipping"]["when"] = "start.has_app"


def test_the_gate_tells_a_rename_from_a_change_of_decisions(ns, live, tmp_path, capsys) -> None:
    """A renamed step differs only as the diff says; a step that now waits for others differs
    where it changes what is sent (not where it only comes later); a `when` that skips a step
    differs at every saga it skips."""
    renamed = _changed(ns, tmp_path, "rename.yaml", rename)
    code = cli.main(["replay", "shadow", "--topology", renamed, "--fail-on-diff"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (
        f"{ORDERS} sagas compared: {ORDERS} differ only as the diff says (order: shipping -> "
        "ship), 0 differ otherwise (live -> shadow)"
    ) in out
    assert not differing(out)

    outcomes = {
        m.key.decode(): m.event_type
        for m in ns.client.read_to_end([ns.topic("sagas.outcomes")])
        if m.record
    }
    cancelled = {
        m.key.decode()
        for m in ns.client.read_to_end([ns.topic("shipping.commands")])
        if m.event_type == "CancelShipment"
    }
    completed = {key for key, outcome in outcomes.items() if outcome == "SagaCompleted"}
    assert completed and cancelled, "the live run should complete some orders and cancel some"
    rewired = _changed(ns, tmp_path, "after.yaml", rename, after_payment)
    assert cli.main(["replay", "shadow", "--topology", rewired, "--fail-on-diff"]) == 1
    out = capsys.readouterr().out
    reported = differing(out)
    # a live shipment answered before the payment answers ship once v2 sends it: same outcome
    assert not completed & set(reported), out
    # v2 ships nothing for an order whose payment or stock failed: no shipment to cancel
    assert cancelled <= set(reported), out
    for key in cancelled:
        assert "ship: CreateShipment#1 CancelShipment#1 -> " in reported[key], reported[key]

    without_app = {
        m.key.decode()
        for m in ns.client.read_to_end([ns.topic("orders.events")])
        if m.event_type == "OrderPlaced" and not m.record["has_app"]
    }
    assert 0 < len(without_app) < ORDERS
    skipping = _changed(ns, tmp_path, "when.yaml", skip_shipping)
    assert cli.main(["replay", "shadow", "--topology", skipping, "--fail-on-diff"]) == 1
    out = capsys.readouterr().out
    assert set(differing(out)) == without_app, out
    assert f"{ORDERS} sagas compared, {len(without_app)} differ (live -> shadow)" in out
