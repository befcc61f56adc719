"""The saga state's bytes (format 5): every Avro value round-trips, formats 1 to 3 are read,
and what cannot be kept is refused with the field's name."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagastream.core.saga import Event, decide
from sagastream.core.state import (
    PREFIX,
    SagaState,
    StateEncodingError,
    StateFormatError,
    StepState,
    decode_head,
    decode_state,
    encode_state,
    seen_digest,
)
from sagastream.core.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
TAGS = ("m", "b", "d", "ts", "dt", "t", "u")


def _state(**data: dict[str, Any]) -> SagaState:
    """A running saga's state with these sources' fields."""
    return SagaState(
        saga="vault",
        key="doc-1",
        shape="5e2b0c4a9f13",
        status="running",
        data=data,
        steps={"seal": StepState("running", 1, 0)},
        started=0,
        seen=[seen_digest("e-1")],
        timers={"deadline||0": 60_000, "step_timeout|seal|1": 20_000},
        correlation_id="e-1",
        hop=0,
    )


def round_trips(state: SagaState) -> bool:
    """Decoding the state's bytes gives it back, its data value for value (see `same`)."""
    back = decode_state(encode_state(state))
    return same(back.data, state.data) and replace(back, data={}) == replace(state, data={})


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (True is not 1, b"x" is not "x"), with NaN
    equal to itself, decimals to their digits and datetimes to their offsets."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, dt.datetime | dt.time):
        return a == b and a.utcoffset() == b.utcoffset()
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# -- every value Avro decodes to ----------------------------------------------------------------

EVERY_TYPE = {
    "bytes": b"\x00\xff\xfe binary \x80",
    "fixed": bytes(range(16)),
    "decimal": Decimal("12.30"),
    "negative_decimal": Decimal("-0.000001"),
    "date": dt.date(2026, 12, 6),
    "time_millis": dt.time(23, 59, 59, 999_000),
    "timestamp": dt.datetime(2026, 12, 6, 21, 47, 56, 123_456, tzinfo=dt.UTC),
    "timestamp_in_lisbon_summer": dt.datetime(
        2026, 7, 1, 9, tzinfo=dt.timezone(dt.timedelta(hours=1))
    ),
    "local_timestamp": dt.datetime(2026, 12, 6, 21, 47, 56, 1),
    "uuid": uuid.UUID("3b0c1c1e-5a0e-4c4e-9d57-0c1d7a6e2f11"),
    "map": {"a": 1, "b": b"\x01"},
    "record": {"sku": "SKU-1", "quantity": 2, "photo": b"\x89PNG", "tags": {"gift": True}},
    "array_of_records": [{"sku": "a", "price": Decimal("1.5")}, {"sku": "b", "price": None}],
    "union_null": None,
    "union_long": 2**62,
    "enum": "EXPRESS",
    "nan": float("nan"),
    "infinity": float("inf"),
    "minus_infinity": float("-inf"),
    "double": 0.1,
    "boolean": False,
    "string": "Rua Augusta 120, 1100-053 Lisboa \u2603 \ud83d",
}


def test_every_avro_value_round_trips() -> None:
    state = _state(start=EVERY_TYPE, seal={"seal": b"\x00\xff"})
    assert encode_state(state).startswith(PREFIX)
    assert round_trips(state)


def test_the_state_outside_data_is_short_keys_and_codes() -> None:
    raw = encode_state(_state(start={"blob": b"\x00"}))
    assert raw.startswith(b"SS\x05")
    body = json.loads(raw[len(PREFIX) :])
    assert body["p"] == {"seal": [1, 1, 0]}  # running, attempt 1, no undo attempt
    assert body["t"] == [[2, "", 0, 60_000], [0, "seal", 1, 20_000]]  # deadline, step_timeout
    assert body["d"] == {"start": {"blob": {"b": "AA=="}}}  # tagged as in format 3
    assert body["n"] == [seen_digest("e-1")] and len(body["n"][0]) == 11
    # what is at its default is left out: no order, no end, no reason...
    assert set(body) == {"s", "k", "h", "st", "b", "d", "p", "n", "t", "c", "hp"}


def test_times_are_kept_after_the_start_and_read_back_whole() -> None:
    ended = replace(
        _state(), status="completed", started=1764547200100, ended=1764547200400,
        expires=1765152000400, timers={"retry|seal|2": 1764547200900},
        order=["seal"], undone=["seal"], undo_errors=["seal: gone"], reason="r", failed_step="seal",
    )  # fmt: skip
    body = json.loads(encode_state(ended)[len(PREFIX) :])
    assert (body["e"], body["x"], body["t"]) == (300, 604800300, [[1, "seal", 2, 800]])
    assert (body["o"], body["u"]) == ([0], [0])  # steps by their index
    assert round_trips(ended)


def test_a_steps_times_are_short_offsets_and_read_back_whole() -> None:
    t0 = 1764547200100
    retried = StepState("succeeded", 2, 0, t0 + 5, t0 + 900, t0 + 1_400)
    undone = StepState("compensated", 1, 1, t0 + 5, t0 + 5, t0 + 50, t0 + 2_000, t0 + 2_075)
    undoing = StepState("compensating", 1, 1, t0, t0, t0 + 7, t0 + 2_000)
    state = replace(
        _state(), started=t0, timers={},
        steps={"seal": retried, "stamp": undone, "file": undoing, "wait": StepState()},
    )  # fmt: skip
    body = json.loads(encode_state(state)[len(PREFIX) :])
    # first sent after the start, sent after first sent, done after sent; undo's alike
    assert body["p"] == {
        "seal": [3, 2, 0, 5, 895, 500],
        "stamp": [8, 1, 1, 5, 0, 45, 2_000, 75],
        "file": [7, 1, 1, 0, 0, 7, 2_000],  # its undo not done: left out
        "wait": [0, 0, 0],  # never sent: no times
    }
    assert round_trips(state)
    running = replace(state, steps={"seal": StepState("running", 1, 0, t0, t0)})
    assert json.loads(encode_state(running)[len(PREFIX) :])["p"] == {"seal": [1, 1, 0, 0, 0]}
    assert round_trips(running)


@pytest.mark.parametrize("tag", TAGS)
def test_map_keys_that_look_like_tags_stay_map_keys(tag: str) -> None:
    values = {
        "one_key": {tag: "2026-12-06"},
        "nested": {tag: {tag: b"\x00"}},
        "record_with_tag_field": {tag: 1, "other": 2},
        "list": [{tag: "AA=="}],
    }
    assert round_trips(_state(start=values))


def _timezones() -> st.SearchStrategy[dt.timezone]:
    offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: dt.timedelta(minutes=m))
    return st.one_of(st.just(dt.UTC), offsets.map(dt.timezone))


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and the infinities included
    st.text(st.characters(blacklist_categories=())),  # lone surrogates included
    st.binary(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.dates(),
    st.times(),
    st.times(timezones=_timezones()),
    st.datetimes(),
    st.datetimes(timezones=_timezones()),
    st.uuids(),
)
KEYS = st.one_of(st.sampled_from(TAGS), st.text())
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(("start", "seal", "archive")), st.dictionaries(KEYS, VALUES))
)
def test_any_avro_value_round_trips(data: dict[str, dict[str, Any]]) -> None:
    assert round_trips(_state(**data))


# -- what cannot be kept, and bytes that are not a state ----------------------------------------


def test_a_value_no_avro_schema_gives_is_refused_naming_its_field() -> None:
    with pytest.raises(
        StateEncodingError, match=r"start\.items\[1\]\.tags in the saga state: a set"
    ):
        encode_state(_state(start={"items": [{}, {"tags": {"a", "b"}}]}))
    with pytest.raises(
        StateEncodingError, match=r"seal\.counts in the saga state: map key 1 is not a string"
    ):
        encode_state(_state(seal={"counts": {1: "one"}}))


def test_bytes_that_are_no_state_of_a_known_format_are_refused() -> None:
    with pytest.raises(StateFormatError, match="format 6: this sagastream reads formats 1 to 5"):
        decode_state(b"SS\x06{}")
    with pytest.raises(StateFormatError, match="format-5 saga state without a usable data"):
        decode_state(b"SS\x05{}")
    with pytest.raises(StateFormatError, match="format-4 saga state without a usable data"):
        decode_state(b"SS\x04{}")
    with pytest.raises(StateFormatError, match="format-5 saga state that is incomplete"):
        decode_head(b"SS\x05{}")
    with pytest.raises(StateFormatError, match="format 6: this sagastream reads formats 1 to 5"):
        decode_head(b"SS\x06{}")
    with pytest.raises(StateFormatError, match="not a saga state"):
        decode_state(b"\x00\x01")
    with pytest.raises(StateFormatError, match="not JSON"):
        decode_state(PREFIX + b"{nope")
    with pytest.raises(StateFormatError, match=r"start\.blob"):
        decode_state(PREFIX + b'{"d":{"start":{"blob":{"zz":"1"}}}}')
    with pytest.raises(StateFormatError, match=r"start\.blob.* format 3"):
        decode_state(b'SS\x03{"data":{"start":{"blob":{"zz":"1"}}}}')


# -- formats 1 and 2: bare JSON, as earlier versions wrote them ---------------------------------

# the order saga of topology.yaml after OrderPlaced and PaymentCharged, as format 2 kept it
V2 = (
    b'{"v":2,"saga":"order","key":"ord-7f3a9c","status":"running","data":{"start":{"order_id":'
    b'"ord-7f3a9c","customer_id":"cust-1042","email":"ana.souza@example.com","amount_cents":12999,'
    b'"currency":"EUR","card_token":"tok_visa","items":[{"sku":"SKU-LAMP-02","quantity":1},'
    b'{"sku":"SKU-BULB-E27","quantity":4}],"shipping_address":"Rua Augusta 120, 1100-053 Lisboa",'
    b'"priority":"high","has_app":true},"payment":{"order_id":"ord-7f3a9c","payment_id":'
    b'"pay_5d1e77","amount_cents":12999}},"steps":{"payment":{"st":"succeeded","a":1,"ca":0},'
    b'"inventory":{"st":"running","a":1,"ca":0},"shipping":{"st":"running","a":1,"ca":0}},'
    b'"order":["payment"],"undone":[],"undo_errors":[],"seen":["3b0c1c1e-5a0e-4c4e-9d57-0c1d7a6e2f11"'
    b',"9a7f2d64-1c51-4b8e-a1f0-5e6d3c2b1a09"],"timers":{"deadline||0":1764547320000,'
    b'"step_timeout|inventory|1":1764547215000,"step_timeout|shipping|1":1764547215000},'
    b'"started":1764547200000,"ended":null,"expires":null,"reason":null,"failed_step":null,'
    b'"corr":"3b0c1c1e-5a0e-4c4e-9d57-0c1d7a6e2f11",'
    b'"tp":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'
)
# the same saga as format 1 kept it: one context every result was merged into, no `expires`
V1 = (
    b'{"v":1,"saga":"order","key":"ord-7f3a9c","status":"running","ctx":{"order_id":"ord-7f3a9c",'
    b'"customer_id":"cust-1042","email":"ana.souza@example.com","amount_cents":12999,"currency":'
    b'"EUR","card_token":"tok_visa","items":[{"sku":"SKU-LAMP-02","quantity":1},{"sku":'
    b'"SKU-BULB-E27","quantity":4}],"shipping_address":"Rua Augusta 120, 1100-053 Lisboa",'
    b'"priority":"high","has_app":true,"payment_id":"pay_5d1e77"},"steps":{"payment":{"st":'
    b'"succeeded","a":1,"ca":0},"inventory":{"st":"running","a":1,"ca":0},"shipping":{"st":'
    b'"running","a":1,"ca":0}},"order":["payment"],"undone":[],"undo_errors":[],"seen":'
    b'["3b0c1c1e-5a0e-4c4e-9d57-0c1d7a6e2f11","9a7f2d64-1c51-4b8e-a1f0-5e6d3c2b1a09"],"timers":'
    b'{"deadline||0":1764547320000,"step_timeout|inventory|1":1764547215000,'
    b'"step_timeout|shipping|1":1764547215000},"started":1764547200000,"ended":null,'
    b'"reason":null,"failed_step":null,"corr":"3b0c1c1e-5a0e-4c4e-9d57-0c1d7a6e2f11",'
    b'"tp":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'
)


@pytest.fixture(scope="module")
def order() -> tuple[str, Any]:
    return "order", load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas["order"]


def _declined_inventory(definition: tuple[str, Any], state: SagaState) -> list[Any]:
    """What the saga sends when its inventory step fails: the refund of the payment."""
    fields = {"order_id": "ord-7f3a9c", "reason": "out of stock"}
    decision = decide(definition, state, Event("InventoryFailed", "e-3", fields), 1764547201000)
    assert decision.state is not None
    assert round_trips(decision.state)  # and the upgraded saga is stored as format 5
    return [(c.event_type, c.fields) for c in decision.commands]


REFUND = (
    "RefundPayment",
    {
        "order_id": "ord-7f3a9c",
        "amount_cents": 12999,
        "payment_id": "pay_5d1e77",
        "step": "payment",
        "idempotency_key": "order:ord-7f3a9c:payment:undo",
    },
)


def test_format_2_is_read_as_it_was_kept(order: tuple[str, Any]) -> None:
    state = decode_state(V2)
    assert state.expires is None and state.shape is None and state.hop is None
    assert state.data["payment"] == {
        "order_id": "ord-7f3a9c",
        "payment_id": "pay_5d1e77",
        "amount_cents": 12999,
    }
    assert state.steps["inventory"] == StepState("running", 1, 0)
    assert state.seen == [seen_digest(i) for i in json.loads(V2)["seen"]]
    assert REFUND in _declined_inventory(order, state)


def test_format_1_gives_every_source_its_merged_context(order: tuple[str, Any]) -> None:
    state = decode_state(V1)
    assert state.expires is None
    assert set(state.data) == {"start", "payment"}
    assert state.data["payment"]["payment_id"] == "pay_5d1e77"
    assert state.data["start"]["card_token"] == "tok_visa"
    assert REFUND in _declined_inventory(order, state)


def test_a_bare_json_state_of_another_version_is_refused() -> None:
    with pytest.raises(StateFormatError, match="version 7"):
        decode_state(b'{"v":7,"data":{}}')
