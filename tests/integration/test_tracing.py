"""Spans in a real Jaeger (issue 18): real worker processes export by OTLP to the Jaeger of the
`jaeger` fixture (tests/integration/tracing.py; each test reads its own trace ids, so no other
test's spans meet these), and the test reads its query API: the seeds' notification fan-out
(tests/scenarios/notify), a retried step, a handler span under its attempt's span, and the
demo's declined order compensating."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from itertools import combinations, pairwise
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.spans import trace_of
from sagastream.ops.client import Client
from sagastream.ops.demo import WorkerSet, settings_env
from sagastream.ops.traces import from_jaeger, from_spans, parse_shape, render, shape
from sagastream.testing import SagaTest
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import (
    every_dead_letter,
    place_order,
    saga_state,
    wait_outcomes,
)
from tests.integration.tracing import Jaeger
from tests.scenarios.notify.app import NoticeRequested, write_project

pytestmark = pytest.mark.integration

TRACE_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def own_jaeger(jaeger: Jaeger) -> tuple[str, str]:
    """The session's Jaeger: (its OTLP HTTP endpoint, its query API's base URL)."""
    return jaeger.otlp_endpoint, jaeger.query_url


@pytest.fixture
def traced(
    ns: Any, tmp_path: Path, own_jaeger: tuple[str, str]
) -> Iterator[Callable[..., WorkerSet]]:
    """Start worker processes (one per role argument) exporting spans to the module's Jaeger."""
    started: list[WorkerSet] = []
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": own_jaeger[0],
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # batches leave within 0.2 s, not 5
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }

    def start(*roles: str) -> WorkerSet:
        ws = WorkerSet(ns.settings, tmp_path / f"logs-{len(started)}")
        started.append(ws)
        ws.start(list(roles), extra_env=env)
        ws.wait_ready()
        return ws

    yield start
    for ws in started:
        ws.stop()


def _trace(
    query: str, trace_id: str, until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The spans of one trace from Jaeger's query API, read until `until` holds of them."""
    deadline = time.monotonic() + TRACE_WITHIN_S
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{query}/api/traces/{trace_id}", timeout=5) as answer:
                data = json.load(answer)["data"]
            spans = data[0]["spans"] if data else []
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        if until(spans):
            return spans
        time.sleep(0.5)
    raise AssertionError(f"trace {trace_id} incomplete after {TRACE_WITHIN_S} s: {_names(spans)}")


def _names(spans: list[dict[str, Any]]) -> list[str]:
    return sorted(s["operationName"] for s in spans)


def _parent(span: dict[str, Any]) -> str | None:
    refs = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0] if refs else None


def _tag(span: dict[str, Any], key: str) -> Any:
    return next((t["value"] for t in span["tags"] if t["key"] == key), None)


def _named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return sorted((s for s in spans if s["operationName"] == name), key=lambda s: s["startTime"])


@pytest.fixture
def project(tmp_path: Path) -> Path | None:
    """The notify project for the fan-out test; the demo's for the order test (see below)."""
    return write_project(tmp_path / "project")


def test_the_fan_out_the_retry_and_the_handler_spans_in_jaeger(
    ns: Any,
    traced: Callable[..., WorkerSet],
    own_jaeger: tuple[str, str],
    project: Path,
    tmp_path: Path,
) -> None:
    traced("orchestrator", "notify")
    with Client(ns.settings) as client:
        fan_out = client.start(NoticeRequested(notice_id="n-fan"))
        retried = client.start(NoticeRequested(notice_id="n-retry", email_ms=-2000))
        for key in (fan_out, retried):
            assert type(client.result("notice", key, timeout=90)).__name__ == "SagaCompleted"
    query = own_jaeger[1]

    # the fan-out: three sibling step spans under the saga span, each with its handler's
    trace = trace_of(saga_state(ns, fan_out))[0]
    steps = ("step email", "step sms", "step push")
    handlers = ("handle SendEmail", "handle SendSms", "handle SendPush")
    spans = _trace(query, trace, lambda got: {"saga notice", *steps, *handlers} <= set(_names(got)))
    (saga,) = _named(spans, "saga notice")
    by_step = {name: _named(spans, name) for name in steps}
    assert all(len(found) == 1 for found in by_step.values()), _names(spans)
    assert {_parent(found[0]) for found in by_step.values()} == {saga["spanID"]}
    took = {name: found[0]["duration"] for name, found in by_step.items()}  # microseconds
    assert took["step email"] > took["step push"] > took["step sms"]
    # in parallel: the saga lasts about its longest branch, not the sum of the three
    assert took["step email"] <= saga["duration"] < sum(took.values())
    assert "email" in str(_tag(saga, "saga.critical_path"))
    assert "sms" not in str(_tag(saga, "saga.critical_path"))
    assert _tag(saga, "saga.slack_ms.email") == 0
    for step, handler in zip(steps, handlers, strict=True):
        (handled,) = _named(spans, handler)
        assert _parent(handled) == by_step[step][0]["spanID"]
        assert _tag(handled, "messaging.system") == "kafka"
        assert _tag(handled, "messaging.destination.name") == ns.topic("notices.commands")
    _check_text(ns, spans, project, own_jaeger[1], tmp_path / "trace-show.log")

    # the retried step: two attempt spans, the first failed, each with its handler's span
    trace = trace_of(saga_state(ns, retried))[0]
    spans = _trace(
        query,
        trace,
        lambda got: len(_named(got, "handle SendEmail")) == 2 and "saga notice" in _names(got),
    )
    first, second = _named(spans, "step email")
    assert (_tag(first, "saga.attempt"), _tag(second, "saga.attempt")) == (1, 2)
    assert _tag(first, "saga.outcome") == "failed" and _tag(second, "saga.outcome") == "succeeded"
    assert [log["fields"] for log in first["logs"]] and any(
        f["value"] == "retry scheduled" for log in first["logs"] for f in log["fields"]
    )
    handled = _named(spans, "handle SendEmail")
    assert [_parent(h) for h in handled] == [first["spanID"], second["spanID"]]
    assert every_dead_letter(ns) == []


def _check_text(ns: Any, spans: list[dict[str, Any]], project: Path, query: str, log: Path) -> None:
    """The fan-out's trace as text: Jaeger's tree has the shape the kit's spans of the same
    saga render to, plus each handler under its step, and `sagastream trace show` prints it."""
    kit = SagaTest.load(project)
    key = kit.start(NoticeRequested(notice_id="n-fan"))
    kit.run()
    expected = shape(from_spans(kit.spans(key)))
    skip = ("handle ",)  # the kit builds no handler spans
    from_query = from_jaeger({"spans": spans})
    assert shape(from_query, skip=skip) == expected, render(from_query)
    handlers = [(d, n) for d, n in shape(from_query) if n.startswith(skip)]
    assert handlers == [(2, "handle SendEmail"), (2, "handle SendPush"), (2, "handle SendSms")]
    shown = subprocess.run(
        [sys.executable, "-m", "sagastream.ops.cli", "trace", "show", "notice", "n-fan"],
        env={**os.environ, **settings_env(ns.settings), "SAGASTREAM_TRACES_URL": query},
        capture_output=True,
        text=True,
        timeout=60,
    )
    log.write_text(f"{shown.returncode}\n{shown.stdout}\n{shown.stderr}", encoding="utf-8")
    assert shown.returncode == 0, (shown.stdout, shown.stderr)
    assert shown.stdout.startswith(f"trace {trace_of(saga_state(ns, 'n-fan'))[0]}  notice n-fan")
    assert parse_shape(shown.stdout, skip=skip) == expected, shown.stdout
    assert parse_shape(shown.stdout) == shape(from_query), shown.stdout
    assert "= critical path: email; slack: email 0 ms" in shown.stdout


@pytest.mark.parametrize("project", [None])
def test_a_declined_order_shows_its_compensations_in_jaeger(
    ns: Any, traced: Callable[..., WorkerSet], own_jaeger: tuple[str, str], project: Path | None
) -> None:
    traced("orchestrator", HANDLERS)
    key = "ord-declined-1"
    place_order(ns, key, card_token="tok_decline")
    outcome = wait_outcomes(ns, {key}, timeout=90)[key]
    assert outcome.event_type == "SagaCompensated"
    state = saga_state(ns, key)
    assert state.undone, "the declined order compensated nothing: no compensation span to show"
    wanted = [f"compensate {step}" for step in state.undone]
    spans = _trace(
        own_jaeger[1],
        trace_of(state)[0],
        lambda got: "saga order" in _names(got) and set(wanted) <= set(_names(got)),
    )
    (saga,) = _named(spans, "saga order")
    undone = sorted(
        (s for s in spans if s["operationName"].startswith("compensate ")),
        key=lambda s: s["startTime"],
    )
    # one at a time, in the order the saga compensated (reverse completion, late ones after)
    assert [s["operationName"] for s in undone] == wanted
    assert all(a["startTime"] + a["duration"] <= b["startTime"] for a, b in pairwise(undone))
    assert {_parent(s) for s in undone} == {saga["spanID"]}
    assert _tag(saga, "saga.outcome") == "compensated"
    assert _tag(saga, "saga.failed_step") == "payment"
    # the steps that had succeeded when the payment failed are undone in reverse completion
    # order, first; a success that came later is undone as it came
    (failed,) = _named(spans, "step payment")
    ends = {name: s["startTime"] + s["duration"] for s in spans if (name := s["operationName"])}
    failed_at = failed["startTime"] + failed["duration"]
    before = [step for step in state.undone if ends[f"step {step}"] <= failed_at]
    assert state.undone[: len(before)] == before
    # spans end at the millisecond their result was decided: results decided in one batch tie,
    # and their order is the saga's own (state.order); of two that do not, the later is undone first
    for a, b in combinations(before, 2):
        if ends[f"step {a}"] != ends[f"step {b}"]:
            assert ends[f"step {a}"] > ends[f"step {b}"], (a, b, ends)
    assert before == [s for s in reversed(state.order) if s in before]
    assert every_dead_letter(ns) == []
