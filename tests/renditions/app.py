"""The media saga's events and services: a video is published once it has four renditions, a
transcript, a thumbnail, a watermark and a person's approval.

Which videos misbehave is decided by a hash of the saga key (`misbehaves`), so a test can compute
each saga's expected outcome and attempts from the same rules the handlers follow:
* the transcriber fails the first attempt of 30 % of the videos (by raising), and succeeds next;
* the thumbnailer hangs on the first attempt of 10 % of them (far past the step's timeout_ms);
* the watermark service always raises for 10 % of them, so those sagas compensate; the other
  rules spare these videos, so each saga's attempts do not depend on how fast it compensated;
* a reviewer approves 60 % of them (`misbehaves("approve", key)` is the test's choice of whom to
  signal); the others wait out the approval's max_wait_ms and are rejected.
"""

from __future__ import annotations

import asyncio
import hashlib

import sagastream

app = sagastream.App()

RENDITIONS = ("r240", "r480", "r720", "r1080")  # the four steps sending RenderRendition
HANG_S = 3600.0  # far past the thumbnail step's timeout_ms: only its bound ends the attempt
PERCENT = {"flaky": 30, "hang": 10, "raise": 10, "approve": 60}


def _bucket(rule: str, key: str) -> int:
    """0..99, fixed per rule and key (not Python's salted hash: the same in every process)."""
    return int.from_bytes(hashlib.sha256(f"{rule}:{key}".encode()).digest()[:4], "big") % 100


def misbehaves(rule: str, key: str) -> bool:
    """Whether the video `key` falls under `rule` (flaky, hang, raise or approve)."""
    if rule != "raise" and misbehaves("raise", key):
        return False
    return _bucket(rule, key) < PERCENT[rule]


class VideoUploaded(sagastream.Event):
    """A video to publish; starts the media saga."""

    video_id: str
    title: str


class RenderRendition(sagastream.Command):
    video_id: str


class RenditionRendered(sagastream.Event):
    rendition_id: str


class DeleteRendition(sagastream.Command):
    rendition_id: str


class RenditionDeleted(sagastream.Event):
    rendition_id: str


class TranscribeAudio(sagastream.Command):
    video_id: str


class TranscriptReady(sagastream.Event):
    words: int


class MakeThumbnail(sagastream.Command):
    video_id: str


class ThumbnailMade(sagastream.Event):
    thumbnail_id: str


class ApplyWatermark(sagastream.Command):
    video_id: str


class WatermarkApplied(sagastream.Event):
    video_id: str


@app.handler
def render(cmd: RenderRendition, ctx: sagastream.Context) -> RenditionRendered:
    # one function for the four steps: the idempotency key names the step (media:<id>:r720)
    return RenditionRendered(rendition_id=ctx.idempotency_key)


@app.handler
def delete_rendition(cmd: DeleteRendition) -> RenditionDeleted:
    return RenditionDeleted(rendition_id=cmd.rendition_id)


@app.handler
def transcribe(cmd: TranscribeAudio, ctx: sagastream.Context) -> TranscriptReady:
    if ctx.attempt == 1 and misbehaves("flaky", cmd.video_id):
        raise ConnectionError(f"transcriber dropped the connection for {cmd.video_id}")
    return TranscriptReady(words=len(cmd.video_id))


@app.handler
async def thumbnail(cmd: MakeThumbnail, ctx: sagastream.Context) -> ThumbnailMade:
    if ctx.attempt == 1 and misbehaves("hang", cmd.video_id):
        # async, so the kit's virtual clock runs it too; the handler loop cancels it at its bound
        await asyncio.sleep(HANG_S)
    return ThumbnailMade(thumbnail_id=f"thumb-{cmd.video_id}")


@app.handler
def watermark(cmd: ApplyWatermark) -> WatermarkApplied:
    if misbehaves("raise", cmd.video_id):
        raise RuntimeError(f"watermark service refused {cmd.video_id}")
    return WatermarkApplied(video_id=cmd.video_id)
