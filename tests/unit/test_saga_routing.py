"""Results routed by the step their command named (meta.step), and failed attempts reported by a
handler's runtime (StepAttemptFailed) retried by their class: timeout, error or failure."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.saga import (
    COMPENSATED,
    COMPENSATING,
    FAILED,
    STARTED,
    STEP_FAILED,
    SUCCEEDED,
    UNDO_FAILED,
    UNDOING,
    UNDONE,
    WAITING_RETRY,
    Event,
)
from sagastream.core.topology import (
    CompensationSpec,
    RetryPolicy,
    SagaSpec,
    StepSpec,
    TopologyError,
    load_topology,
    parse_topology,
)
from tests.unit.test_saga import Saga, saga, sent, step

ROOT = Path(__file__).resolve().parents[2]
RENDITIONS = ("r360", "r720", "r1080", "r4k")


def rendition(name: str) -> StepSpec:
    """One of four parallel renditions; each is undone by DeleteRendition -> RenditionDeleted."""
    return StepSpec(
        command="RenderRendition",
        success="RenditionRendered",
        failure=("RenditionFailed",),
        compensation=CompensationSpec(
            command="DeleteRendition",
            success="RenditionDeleted",
            failure=("RenditionDeleteFailed",),
            retry=RetryPolicy(max_attempts=2, on=("timeout", "error", "failure")),
        ),
    )


def video() -> SagaSpec:
    """Four renditions in parallel sharing every event type, then a publish step that may fail."""
    publish = StepSpec(
        command="Publish", success="Published", failure=("PublishFailed",), depends_on=RENDITIONS
    )
    return SagaSpec(
        start_event="VideoUploaded",
        key_field="id",
        steps={**{n: rendition(n) for n in RENDITIONS}, "publish": publish},
    )


def result(s: Saga, event_type: str, step_name: str | None, attempt: int = 1, **fields: Any) -> Any:
    s.ids += 1
    return s.deliver(Event(event_type, f"ev-{s.ids}", fields, attempt, step=step_name))


def test_renditions_sharing_one_event_type_each_get_their_own_result() -> None:
    s = Saga(video())
    d = s.send("VideoUploaded", {"id": "v-1"})
    assert sent(d) == [("RenderRendition", n, 1) for n in RENDITIONS]
    for name in reversed(RENDITIONS):  # answered in another order than sent
        result(s, "RenditionRendered", name)
        assert s.st(name) == SUCCEEDED
    assert s.st("publish") == STARTED


def test_compensation_sharing_one_success_event_undoes_every_rendition() -> None:
    """Finding 1: every RenditionDeleted went to the first rendition, which was not undoing, so
    compensation hung. Routed by meta.step, each undo completes and the saga is compensated."""
    s = Saga(video())
    s.send("VideoUploaded", {"id": "v-1"})
    for name in RENDITIONS:
        result(s, "RenditionRendered", name)
    d = result(s, "PublishFailed", "publish", reason="no channel")
    undone: list[str] = []
    while s.status == COMPENSATING:
        (undo,) = d.commands
        assert undo.event_type == "DeleteRendition" and undo.step is not None
        assert s.st(undo.step) == UNDOING
        undone.append(undo.step)
        d = result(s, "RenditionDeleted", undo.step)
    assert undone == list(reversed(RENDITIONS))
    assert s.status == COMPENSATED and all(s.st(n) == UNDONE for n in RENDITIONS)
    (outcome,) = d.commands
    assert outcome.fields["compensated_steps"] == list(reversed(RENDITIONS))


def test_a_shared_undo_success_without_a_step_goes_to_the_one_step_undoing() -> None:
    """A producer that predates meta.step: only one undo is in flight at a time, so its result is
    the undoing step's."""
    s = Saga(video())
    s.send("VideoUploaded", {"id": "v-1"})
    for name in RENDITIONS:
        result(s, "RenditionRendered", name)
    result(s, "PublishFailed", "publish")
    for _ in RENDITIONS:
        result(s, "RenditionDeleted", None)
    assert s.status == COMPENSATED


def test_a_shared_result_without_a_step_that_fits_several_steps_is_refused() -> None:
    s = Saga(video())
    s.send("VideoUploaded", {"id": "v-1"})
    before = copy.deepcopy(s.state)
    d = result(s, "RenditionRendered", None)
    assert d.dead_letter is not None
    assert "answers steps r1080, r360, r4k, r720" in d.dead_letter and "meta.step" in d.dead_letter
    assert s.state is not None and before is not None and s.state.steps == before.steps


def test_a_result_naming_a_step_it_does_not_answer_is_refused() -> None:
    s = Saga(video())
    s.send("VideoUploaded", {"id": "v-1"})
    d = result(s, "Published", "r360")
    assert d.dead_letter == "Published is not a result of step 'r360' of saga demo"
    d = result(s, "RenditionRendered", "no-such-step")
    assert d.dead_letter is not None and "'no-such-step'" in d.dead_letter


def test_the_step_named_wins_over_routing_by_type() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b"))))
    s.start()
    result(s, "aDone", "a")
    d = result(s, "CompensationFailed", "b", reason="?")  # meta.step says b: b never undid
    assert d.dead_letter is not None and "compensation of step b was never started" in d.dead_letter


# -- the loader ---------------------------------------------------------------------------------


def _video_topology() -> dict[str, Any]:
    steps = {
        n: {
            "command": "RenderRendition",
            "success": "RenditionRendered",
            "compensation": {"command": "DeleteRendition", "success": "RenditionDeleted"},
        }
        for n in RENDITIONS
    }
    events = {
        e: {
            "topic": "video.commands"
            if e in ("RenderRendition", "DeleteRendition")
            else "video.events"
        }
        for e in (
            "VideoUploaded",
            "RenderRendition",
            "RenditionRendered",
            "DeleteRendition",
            "RenditionDeleted",
        )
    }
    return {
        "topics": [{"name": "video.commands"}, {"name": "video.events"}],
        "events": events,
        "handlers": {"render": {"consumes": "video.commands", "produces": "video.events"}},
        "sagas": {"video": {"start_event": "VideoUploaded", "key_field": "id", "steps": steps}},
    }


def test_steps_sharing_every_event_type_load() -> None:
    topology = parse_topology(_video_topology(), "video.yaml")
    assert set(topology.sagas["video"].steps) == set(RENDITIONS)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda st: st.update(failure=["RenditionRendered"]),
            "sagas.video.steps.r360.failure: RenditionRendered is both the success and the "
            "failure of step r360",
        ),
        (
            lambda st: st["compensation"].update(success="RenditionRendered"),
            "sagas.video.steps.r360.compensation.success: RenditionRendered is both the "
            "success and the compensation.success of step r360",
        ),
        (
            lambda st: st.update(success="VideoUploaded"),
            "sagas.video.steps.r360.success: VideoUploaded is the saga's start event and a "
            "result of step r360",
        ),
        (
            lambda st: st.update(success="DeleteRendition"),
            "sagas.video.steps.r360.success: DeleteRendition is the command of step",
        ),
    ],
)
def test_a_layout_no_step_can_disambiguate_is_refused(change: Any, why: str) -> None:
    data = _video_topology()
    change(data["sagas"]["video"]["steps"]["r360"])
    with pytest.raises(TopologyError) as err:
        parse_topology(data, "video.yaml")
    assert why in str(err.value)


def test_failed_attempts_travel_on_every_step_handlers_produces_topic() -> None:
    topology = load_topology(ROOT / "topology.yaml", ROOT / "schemas")
    failed = topology.events["StepAttemptFailed"].all_topics
    for role, handler in topology.handlers.items():
        serves_a_step = role != "notification"  # a notification answers no step
        assert (handler.produces in failed) == serves_a_step, role
        if serves_a_step:
            assert handler.produces in topology.orchestrator_inputs()
    assert "notifications.events" not in topology.orchestrator_inputs()


# -- failed attempts ------------------------------------------------------------------------------


def attempt_failed(
    s: Saga, step_name: str, kind: str = "exception", attempt: int = 1, undo: bool = False
) -> Any:
    fields = {
        "saga_type": "demo",
        "step": step_name,
        "kind": kind,
        "error_type": "ValueError",
        "message": "boom",
        "compensation": undo,
    }
    return result(s, "StepAttemptFailed", step_name, attempt, **fields)


def test_an_exception_is_a_failed_attempt_retried_at_once_by_default() -> None:
    """Finding 5's core side: a raised exception retries after backoff, not after the timeout."""
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=2)))))
    s.start()
    d = attempt_failed(s, "a")
    assert s.st("a") == WAITING_RETRY and d.dead_letter is None
    assert [t.kind for t in d.timers] == ["retry"]
    assert "step_timeout|a|1" not in s.state.timers  # type: ignore[index]
    d = s.fire("retry", "a", 1)
    assert sent(d) == [("Doa", "a", 2)]
    attempt_failed(s, "a", "timeout", attempt=2)
    assert s.status == COMPENSATED and s.st("a") == STEP_FAILED
    assert s.state is not None
    assert s.state.reason == "a: attempt 2 failed (timeout): ValueError: boom"


@pytest.mark.parametrize(
    ("on", "kind", "retried"),
    [
        (("timeout",), "timeout", True),
        (("timeout",), "exception", False),
        (("error",), "contract", True),
        (("error",), "too_large", True),
        (("error",), "timeout", False),
        (("failure",), "exception", False),
    ],
)
def test_failed_attempts_retry_by_their_class(
    on: tuple[Any, ...], kind: str, retried: bool
) -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=2, on=on)))))
    s.start()
    attempt_failed(s, "a", kind)
    assert s.st("a") == (WAITING_RETRY if retried else STEP_FAILED)


def test_business_failure_is_not_retried_by_default() -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=3)))))
    s.start()
    s.send("aFailed", {"reason": "card declined"})
    assert s.st("a") == STEP_FAILED and s.status == COMPENSATED


def test_a_failed_undo_attempt_is_retried_then_fails_the_saga() -> None:
    s = Saga(saga(("a", step("a")), ("b", step("b", "a"))))
    s.start()
    s.send("aDone")
    s.send("bFailed")
    assert s.st("a") == UNDOING
    d = attempt_failed(s, "a", "timeout", undo=True)  # the helper's undo policy: timeout, failure
    assert [t.kind for t in d.timers] == ["undo_retry"]
    s.fire("undo_retry", "a", 1)
    attempt_failed(s, "a", "timeout", attempt=2, undo=True)
    assert s.st("a") == UNDO_FAILED and s.status == FAILED


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"saga_type": "other"}, "StepAttemptFailed for a step other/a"),
        ({"step": "zz"}, "no such step"),
        ({"attempt": 5}, "attempt 5 of step a was never sent"),
        ({"step": "c", "compensation": True}, "an undo of demo/c"),
    ],
)
def test_a_failed_attempt_that_fits_no_attempt_sent_is_refused(
    fields: dict[str, Any], why: str
) -> None:
    spec = saga(("a", step("a")), ("c", step("c", undo=False)))
    s = Saga(spec)
    s.start()
    body = {
        "saga_type": "demo",
        "step": "a",
        "kind": "exception",
        "error_type": "E",
        "message": "m",
    }
    body.update({k: v for k, v in fields.items() if k != "attempt"})
    before = copy.deepcopy(s.state)
    d = s.deliver(Event("StepAttemptFailed", "x", body, fields.get("attempt", 1)))
    assert d.dead_letter is not None and why in d.dead_letter
    assert s.state == before


def test_a_stale_failed_attempt_changes_nothing() -> None:
    s = Saga(saga(("a", step("a", retry=RetryPolicy(max_attempts=3)))))
    s.start()
    attempt_failed(s, "a")
    s.fire("retry", "a", 1)
    d = attempt_failed(s, "a", attempt=1)  # attempt 1 again (a duplicate report)
    assert (
        s.st("a") == STARTED and d.commands == [] and ("stale_result_ignored", "a") in d.lifecycle
    )


# -- retry policy in YAML -------------------------------------------------------------------------


def test_retry_defaults_are_temporal_like() -> None:
    assert RetryPolicy().on == ("timeout", "error")
    assert CompensationSpec(command="U", success="D").retry.on == ("timeout", "error", "failure")


@pytest.mark.parametrize(
    ("text", "on"),
    [
        ("{max_attempts: 3, retry_on: [timeout, failure]}", ("timeout", "failure")),
        ('{max_attempts: 3, "on": [error]}', ("error",)),
        ("{max_attempts: 3}", ("timeout", "error")),
    ],
)
def test_retry_on_parses_unquoted_as_retry_on(text: str, on: tuple[str, ...]) -> None:
    assert RetryPolicy.model_validate(yaml.safe_load(text)).on == on


def test_an_unquoted_on_says_what_yaml_did() -> None:
    data = yaml.safe_load((ROOT / "topology.yaml").read_text())
    data["sagas"]["order"]["steps"]["payment"]["retry"] = yaml.safe_load(
        "{max_attempts: 3, on: [timeout, failure]}"
    )
    with pytest.raises(TopologyError) as err:
        parse_topology(data, "t.yaml", ROOT / "schemas")
    text = str(err.value)
    assert "t.yaml: sagas.order.steps.payment.retry:" in text
    assert "unquoted `on`" in text and "retry_on" in text and "Keys should be strings" not in text
