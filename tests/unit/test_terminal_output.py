"""What operator tools print of user data (saga keys, reasons, dead letters' headers, who
published a version) reaches a terminal escaped: a key cannot clear the screen, move the cursor
or forge a line of the report."""

from __future__ import annotations

import pytest

from sagastream.ops.dlq import Group, Redrive, describe, group_table
from sagastream.ops.inspect import build_view, format_list, format_view, oldest_first, summarize
from sagastream.ops.migrate import dry_run_lines, plan_all
from sagastream.ops.terminal import printable
from sagastream.ops.versions import VersionRow, format_versions
from tests.unit.test_dlq_tool import letter
from tests.unit.test_inspect import HISTORY, T0, state
from tests.unit.test_migrate_cli import V1, V2, _state

# clears the screen, then forges a line of its own
HOSTILE = "o-1\x1b[2J\nstatus   completed\r\x9b31m\u202e"
SHOWN = "o-1\\x1b[2J\\nstatus   completed\\r\\x9b31m\\u202e"


def assert_clean(lines: list[str]) -> None:
    """Nothing a terminal acts on, and no line forged: one printed line per line."""
    for line in lines:
        assert line.isprintable(), repr(line)
    assert not any(line.startswith("status   completed") for line in lines)


def test_printable_escapes_control_characters_and_keeps_the_rest() -> None:
    assert printable(HOSTILE) == SHOWN
    assert printable("café ünïcode-ключ 注文") == "café ünïcode-ключ 注文"
    assert printable("tab\there\x7f\x00") == "tab\\there\\x7f\\x00"


def test_saga_show_escapes_the_key_and_the_reason() -> None:
    hostile = state(reason=f"payment: {HOSTILE}")
    lines = format_view(build_view("order", HOSTILE, 2, hostile, HISTORY), T0 + 9_000)
    assert_clean(lines)
    assert f"saga     order {SHOWN} (partition 2)" in lines
    assert f"reason   payment: {SHOWN}" in lines


def test_saga_list_escapes_keys_and_reasons() -> None:
    found = [summarize(HOSTILE, 0, state(reason=f"payment: {HOSTILE}"))]
    lines = format_list(oldest_first(found, None, 1), T0)
    assert_clean(lines)
    assert SHOWN in lines[1] and f"payment: {SHOWN}" in lines[1]


def test_dlq_list_and_redrive_escape_reasons_and_keys() -> None:
    lines = group_table([Group("orders.events.dlq", HOSTILE, 1, T0, T0)])
    assert_clean(lines)
    assert SHOWN in lines[1]
    dead = letter(0, reason=HOSTILE, key=HOSTILE)
    said = describe(Redrive(dead, "orders.events", []))
    assert_clean([said])
    assert f"reason={SHOWN}" in said


def test_topology_versions_escape_who_published() -> None:
    lines = format_versions([VersionRow("order", 1, "abc", T0, HOSTILE, 0, "current")])
    assert_clean(lines)
    assert SHOWN in lines[1]


def test_saga_migrate_escapes_the_keys() -> None:
    lines = dry_run_lines(
        V1, V2, plan_all(V1, V2, {"pay": "charge"}, [(HOSTILE, _state("k", "succeeded"))])
    )
    assert_clean(lines)
    assert lines[0].startswith(f"order {SHOWN}: ")


def test_cli_errors_escape_what_they_echo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error message may echo a key or a value read from a topic: its control characters
    reach the terminal escaped, and its lines (a message listing several problems) stay lines."""
    from sagastream.errors import SagastreamError
    from sagastream.ops import cli

    def fails(_args: object) -> int:
        raise SagastreamError("no saga k\x1b[2J\x07 here\nsecond problem")

    monkeypatch.setattr(cli, "_topology_versions", fails)
    assert cli.main(["topology", "versions"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert err == "sagastream topology: no saga k\\x1b[2J\\x07 here\nsecond problem\n"
