"""`when:` conditions: what the grammar allows, what it reads, and how it evaluates."""

from __future__ import annotations

from typing import Any

import pytest

from sagastream.core.conditions import ConditionError, compile_condition

DATA: dict[str, dict[str, Any]] = {
    "start": {"nights": 2, "city": "Oslo", "vip": False, "tags": ["a", "b"]},
    "flight": {"arrives_at": "18:00", "seats": 1},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("start.nights > 0", True),
        ("start.nights >= 2 and start.nights <= 2", True),
        ("0 < start.nights < 2", False),
        ("start.city == 'Oslo' or start.vip", True),
        ("not start.vip", True),
        ("start.city in ['Oslo', 'Bergen']", True),
        ("start.city not in ('Oslo',)", False),
        ("'a' in start.tags", True),
        ("start.nights != -1", True),
        ("flight.arrives_at != '' and flight.seats == 1", True),
        ("start.vip", False),
        ("True", True),
        # a field or source that is absent reads as None; an order against None is not met
        ("hotel.ref == None", True),
        ("start.missing > 0", False),
        ("not start.missing > 0", True),
        ("start.city > 3", False),  # str against int: no answer, so not met
    ],
)
def test_evaluates_like_python_on_the_data(text: str, expected: bool) -> None:
    assert compile_condition(text)(DATA) is expected


def test_references_are_the_source_fields_it_reads_once_each() -> None:
    condition = compile_condition("start.a == 1 or (flight.b != start.a and not start.c)")
    assert condition.references == (("start", "a"), ("flight", "b"), ("start", "c"))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("len(start.tags) > 0", "'len(start.tags)' is not allowed"),
        ("start.nights + 1 > 2", "'start.nights + 1' is not allowed"),
        ("start", "'start' is not allowed"),
        ("start.a.b == 1", "'start.a.b' is not allowed"),
        ("start['nights'] > 0", "is not allowed"),
        ("start.city in [flight.arrives_at]", "'flight.arrives_at' is not allowed"),
        ("__import__('os').system('x')", "is not allowed"),
        ("x if start.vip else y", "is not allowed"),
        ("start.nights >", "not a valid expression"),
        # comparisons and constants outside the grammar (`is` raised a bare KeyError)
        ("start.city is None", "'is' is not allowed"),
        ("start.city is not None", "'is not' is not allowed"),
        ("start.city == ...", "'...' is not allowed"),
        ("start.city == b'x'", "'b'x'' is not allowed"),
        ("start.vip; start.city", "not a valid expression"),
        # a RecursionError from the parser or the compiler, before the bound
        ("not " * 2000 + "start.vip", "nested too deeply (more than 64 levels)"),
        ("(" * 5000 + "start.vip" + ")" * 5000, "too many nested parentheses"),
        (" and ".join(["start.vip"] * 3) + " or " + "not " * 70 + "start.vip", "nested too deeply"),
    ],
)
def test_anything_else_is_refused_with_the_part_named(text: str, why: str) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition(text)
    assert why in str(caught.value)


def test_a_realistic_nesting_compiles() -> None:
    text = "(start.a > 0 and (start.b < 3 or not (start.c == 'x' or start.d))) or start.e != 1"
    assert compile_condition(text).references[0] == ("start", "a")
