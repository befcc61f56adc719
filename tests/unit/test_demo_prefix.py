"""A demo or bench run's topic prefix (sagastream.ops.demo.run_prefix): runs begun in the same
second on one broker get prefixes of their own, neither a prefix of the other, so they share no
topic or group and one's clean-up (every topic under its prefix) leaves the other's alone."""

from __future__ import annotations

import re
import time

import pytest

from sagastream.ops.demo import run_prefix


def test_runs_begun_in_the_same_second_have_prefixes_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: "20261207-151500")
    prefixes = {run_prefix("demo") for _ in range(20)}
    assert len(prefixes) > 1
    assert all(re.fullmatch(r"demo-20261207-151500-[0-9a-f]+-", p) for p in prefixes), prefixes
    assert not [(a, b) for a in prefixes for b in prefixes if a != b and b.startswith(a)]
