"""The handler microbenchmark (tests/perf/handler_profile.py) runs what it claims to: every
command it sends, to the plain and the async functions and to the demo's, is answered with its
success event through the handler loop, so its figures are the work of whole commands."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.perf.handler_profile import demo_cases, one_run, own_cases


@pytest.mark.parametrize("demo", [False, True])
def test_every_command_of_the_profile_is_answered_with_its_success(tmp_path: Path, demo: bool):
    cases = demo_cases(tmp_path) if demo else own_cases()
    assert [case.name for case in cases] == ["async", "plain"]
    for case in cases:
        cpu, wall, results = one_run(case, 40)
        success = b"NotificationSent" if case.command == "SendNotification" else b"PaymentCharged"
        assert results == Counter({success: 40})
        assert cpu > 0 and wall > 0
