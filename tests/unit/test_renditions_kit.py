"""The media project of tests/renditions on sagastream.testing (the kit): the same rules as on
real workers (tests/integration/test_renditions.py), with the approval's week-long max_wait_ms
as written, on the virtual clock. Each saga ends as the rules say and each step takes exactly
the attempts its rule says."""

from __future__ import annotations

from pathlib import Path

from sagastream.testing import SagaTest
from tests.renditions import expected, write_project
from tests.renditions.app import RENDITIONS, VideoUploaded, misbehaves

KEYS = [f"video-{i:03d}" for i in range(50)]
WEEK_MS = 7 * 86_400_000


def _attempts(saga: SagaTest, key: str) -> dict[str, int]:
    """The highest attempt of each step's forward command."""
    attempts: dict[str, int] = {}
    for command in saga.commands(key):
        if command.event_type != "DeleteRendition" and command.step is not None:
            attempts[command.step] = max(attempts.get(command.step, 0), command.attempt)
    return attempts


def test_the_media_sagas_end_as_their_rules_say_after_a_virtual_week(tmp_path: Path) -> None:
    saga = SagaTest.load(write_project(tmp_path / "media"))
    started_ms = saga.now_ms
    for key in KEYS:
        saga.start(VideoUploaded(video_id=key, title=f"clip {key}"))
        if expected(key).outcome == "completed":
            saga.signal("media", key, "approval", "approved", by="reviewer")
    saga.run()
    saga.advance(1_000)  # the retries' backoff
    saga.run()
    waiting = {k for k in KEYS if saga.status(k) == "running"}
    assert waiting == {k for k in KEYS if expected(k).failed_step == "approval"}
    saga.advance(started_ms + WEEK_MS - 1 - saga.now_ms)  # a week less 1 ms: nobody gave up
    saga.run()
    assert {k for k in KEYS if saga.status(k) == "running"} == waiting
    saga.advance(1)
    saga.run()

    for key in KEYS:
        want = expected(key)
        assert saga.status(key) == want.outcome, key
        assert _attempts(saga, key) == want.attempts, key
        undone = sorted(c.step for c in saga.commands(key) if c.event_type == "DeleteRendition")
        assert undone == (sorted(RENDITIONS) if want.outcome == "compensated" else []), key
        outcome = saga.outcome(key)
        assert outcome is not None
        if want.failed_step is not None:
            assert outcome.fields()["failed_step"] == want.failed_step, key
        if misbehaves("raise", key):
            assert "RuntimeError: watermark service refused" in outcome.fields()["reason"]
        assert saga.dead_letters(key) == [], key
    assert any(misbehaves(rule, k) for k in KEYS for rule in ("flaky", "hang", "raise"))
