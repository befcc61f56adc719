"""SAGASTREAM_LOG_FORMAT=json on real workers: every line both workers write is one JSON object,
the orchestrator writes a line per decision and the handlers one per handled command, all of
one saga under its correlation id and trace, and no payload (the card token) is logged."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from sagastream.ops.demo import WorkerSet
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import every_dead_letter, good_order, wait_outcomes

KEY = "order-json-logs"
SECRET = "tok_json_logs_secret"
HEX = re.compile(r"[0-9a-f]+")
TRACE = "0af7651916cd43dd8448eb211c80319c"
UPSTREAM = f"00-{TRACE}-b7ad6b7169203331-01"


def lines_of(log: Path) -> list[dict[str, Any]]:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = []
    for n, line in enumerate(lines, 1):
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{log.name} line {n} is not JSON: {line!r}") from None
    return parsed


def test_json_logs_give_a_line_per_decision_and_per_handled_command(
    ns: Any, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    workers = WorkerSet(ns.settings, logs)
    env = {"SAGASTREAM_LOG_FORMAT": "json"}
    workers.start(["orchestrator", HANDLERS], env)
    try:
        workers.wait_ready()
        # the upstream service's trace, as a W3C traceparent on the start event
        ns.client.publish(
            "OrderPlaced", KEY, {**good_order(KEY), "card_token": SECRET}, traceparent=UPSTREAM
        )
        ns.client.flush()
        outcome = wait_outcomes(ns, {KEY}, timeout=60)[KEY]
        assert outcome.event_type == "SagaCompleted"
        # the notifications go out with the outcome, one per channel its rules pick (this
        # order's: two): the workers stop once every one is handled, not just the first
        notices = ns.client.read_to_end([ns.topic("notifications.commands")])
        sent = sum(1 for m in notices if m.key == KEY.encode())
        assert sent, "the order sent no notification"
        handlers_log = logs / f"{HANDLERS}.log"
        deadline = time.monotonic() + 30
        while (done := handlers_log.read_text().count("handled SendNotification")) < sent:
            assert time.monotonic() < deadline, f"{done} of {sent} notifications were handled"
            time.sleep(0.2)
        assert every_dead_letter(ns) == []
        workers.check_alive()
    finally:
        workers.stop()

    texts = [(logs / f"{role}.log").read_text() for role in ("orchestrator", HANDLERS)]
    assert all(SECRET not in text for text in texts)
    orchestrator, handlers = lines_of(logs / "orchestrator.log"), lines_of(logs / f"{HANDLERS}.log")
    assert {"time", "level", "logger", "message"} <= set().union(*orchestrator, *handlers)

    decisions = [d for d in orchestrator if d["logger"] == "sagastream.decisions"]
    handled = [h for h in handlers if h["logger"] == "sagastream.commands"]
    assert decisions[0]["event_type"] == "OrderPlaced"
    assert decisions[-1]["status"] == "completed"
    # the order's commands (payment, inventory, shipping, its notification) and its outcome
    sent = [c for d in decisions for c in d["commands"] if c != outcome.event_type]
    assert sorted(h["command"] for h in handled) == sorted(sent)
    assert {h["role"] for h in handled} == {"payment", "inventory", "shipping", "notification"}
    for line in decisions + handled:
        # a command several saga types send (the notification) names them all
        assert "order" in line["saga"].split(",") and line["key"] == KEY, line
        assert line["correlation_id"] == decisions[0]["correlation_id"], line
        assert line["trace_id"] == TRACE, line
        assert len(line["span_id"]) == 16 and HEX.fullmatch(line["span_id"]), line
        assert line["event_id"], line
    # a handled command's span is its command's own: each line names another span
    assert len({h["span_id"] for h in handled}) == len(handled)
