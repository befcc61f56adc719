"""`sagastream dlq` on a real broker: a fixed poison message is redriven and then processed."""

from __future__ import annotations

import json

import pytest

from sagastream.ops import cli
from sagastream.ops.demo import settings_env
from sagastream.wire.codec import new_meta
from sagastream.wire.dlq import REDRIVE_COUNT, Origin, dead_letter_headers, read_dead_letter_headers
from tests.integration.helpers import planted_dead_letter, wait_outcomes

pytestmark = pytest.mark.integration


@pytest.fixture
def sagastream(ns, monkeypatch, capsys):
    """Run the CLI against the test's namespace; returns (exit code, stdout)."""
    for name, value in settings_env(ns.settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> tuple[int, str]:
        code = cli.main(["dlq", *argv])
        captured = capsys.readouterr()
        return code, captured.out + captured.err  # an error's message shows in a failure

    return run


def _on(ns, topic: str, key: str):
    return [m for m in ns.client.read_to_end([ns.topic(topic)]) if m.key == key.encode()]


def test_a_fixed_poison_message_is_redriven_and_processed(ns, workers, sagastream):
    planted_dead_letter(ns, "order-fixed")
    planted_dead_letter(ns, "order-spent", redrives=3)
    ns.client.flush()

    code, out = sagastream("list")
    assert code == 0
    row = next(line.split() for line in out.splitlines() if "unknown_schema_id" in line)
    assert row[:3] == ["orders.events.dlq", "unknown_schema_id", "2"]

    code, out = sagastream("redrive", "--topic", "orders.events", "--reason", "unknown_schema_id")
    assert code == 0 and "would redrive" in out and "refused" in out
    assert not _on(ns, "orders.events", "order-fixed"), "a dry run published"

    code, out = sagastream("redrive", "--execute")
    assert code == 0 and "redrove 1 dead letters, refused 1" in out
    assert wait_outcomes(ns, {"order-fixed"})["order-fixed"].event_type == "SagaCompleted"

    [redriven] = _on(ns, "orders.events", "order-fixed")
    assert redriven.event_type == "OrderPlaced"
    assert read_dead_letter_headers(redriven.headers) == {"redrive.count": "1"}
    assert not _on(ns, "orders.events", "order-spent"), "a dead letter past the limit was redriven"

    letter = _on(ns, "orders.events.dlq", "order-spent")[0]
    code, out = sagastream("show", "orders.events.dlq", str(letter.partition), str(letter.offset))
    shown = json.loads(out)
    assert code == 0 and shown["key"] == "order-spent" and shown["redrive_count"] == 3
    assert shown["event_type"] == "OrderPlaced" and shown["record"]["order_id"] == "order-spent"
    assert ["dlq.reason", "unknown_schema_id"] in shown["headers"]


def test_the_runtime_carries_the_redrive_count_so_redrive_stops(ns, workers, sagastream):
    ns.client.publish_raw(
        ns.topic("orders.events"), b"bad", b"\x07garbage", [(REDRIVE_COUNT, b"2")]
    )
    ns.client.flush()
    dlq = ns.topic("orders.events.dlq")
    [letter] = ns.client.read([dlq], lambda m: any(x.key == b"bad" for x in m), 30.0)
    assert read_dead_letter_headers(letter.headers)["redrive.count"] == "2"

    code, out = sagastream("redrive", "--key", "bad", "--max-redrives", "2", "--execute")
    assert code == 0 and "redrove 0 dead letters, refused 1" in out


def test_a_planted_approval_is_not_redriven_to_the_signals_topic(ns, sagastream):
    """Issue 17: a principal that may write only payments.commands.dlq plants a "review
    approved" signal there whose header names sagas.signals. The operator's redrive refuses it,
    as it refuses a signal claiming to come from payments.commands, which carries no signals."""
    signal = {
        "saga_type": "loan",
        "step": "review",
        "outcome": "approved",
        "decided_by": "mallory",
        "note": "",
        "meta": new_meta("StepSignal", "loan-1", "test"),
    }
    value = ns.client.codec.encode("StepSignal", signal)
    for source in ("sagas.signals", "payments.commands"):
        headers = dead_letter_headers(
            Origin(ns.topic(source), 0, 0), "processing_error", "x", "someone"
        )
        ns.client.publish_raw(ns.topic("payments.commands.dlq"), b"loan-1", value, headers)
    ns.client.flush()

    code, out = sagastream("redrive", "--topic", "payments.commands", "--execute")
    assert code == 0 and "redrove 0 dead letters, refused 2" in out, out
    assert f"names {ns.topic('sagas.signals')}, but payments.commands.dlq takes dead letters" in out
    assert "it is a StepSignal, which" in out
    assert not _on(ns, "sagas.signals", "loan-1"), "a planted signal reached sagas.signals"
    assert not _on(ns, "payments.commands", "loan-1"), "a planted signal reached a commands topic"
