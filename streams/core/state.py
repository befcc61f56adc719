"""The saga state: its type (`SagaState`, `StepState`) and its bytes (`encode_state`,
`decode_state`, the only way in and out of the changelog).

Format 5 is `b"SS\\x05"` followed by compact JSON with short keys (docs/state-format.md): the
saga's and its steps' states as small codes, steps as `name: [state, attempt, undo attempt,
first sent, sent, done, undo sent, undo done]` (the times as short offsets; format 4 had none),
timers as `[kind, step, attempt, due]` with times after `started`, the event ids seen as 64-bit
digests, step names in `order` and `undone` as indices into the steps. Inside `data` (each
source's fields) every mapping and every value JSON cannot carry is a tagged one-key object, as
in format 3, so whatever a user's map keys are, decoding is unambiguous:

    {"m": {...}} record or map    {"b": "<base64>"} bytes, fixed    {"d": "12.30"} decimal
    {"ts": "<iso>"} datetime      {"dt": "<iso>"} date              {"t": "<iso>"} time
    {"u": "<uuid>"} UUID

Lists, strings, numbers, booleans and null are plain JSON; floats keep NaN and the infinities
(Python's JSON tokens). `decode_head` reads only what a list of sagas shows (`StateHead`).
Format 4 was format 5 without the steps' times; format 3 was
`b"SS\\x03"` and the in-memory dict as JSON; formats 1 and 2 were bare JSON objects (their first byte is `{`); `decode_state` reads all of them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from sagastream.core.topology import START
from sagastream.errors import SagastreamError

MAGIC = b"SS"
FORMAT = 5
PREFIX = MAGIC + bytes([FORMAT])
FORMAT_4 = MAGIC + bytes([4])
FORMAT_3 = MAGIC + bytes([3])

# a saga's status
RUNNING, COMPENSATING = "running", "compensating"
COMPLETED, COMPENSATED, FAILED = "completed", "compensated", "failed"
TERMINAL = frozenset({COMPLETED, COMPENSATED, FAILED})

# a step's state
PENDING, STARTED, WAITING_RETRY, SUCCEEDED = "pending", "running", "waiting_retry", "succeeded"
STEP_FAILED, SKIPPED, CANCELLED = "failed", "skipped", "cancelled"
UNDOING, UNDONE, UNDO_FAILED = "compensating", "compensated", "compensation_failed"

# format 4 and 5's codes: a code's position in its tuple; append only (the bytes depend on it)
_SAGA_CODES = (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED)
_STEP_CODES = (
    PENDING, STARTED, WAITING_RETRY, SUCCEEDED, STEP_FAILED,
    SKIPPED, CANCELLED, UNDOING, UNDONE, UNDO_FAILED,
)  # fmt: skip
_TIMER_CODES = ("step_timeout", "retry", "deadline", "undo_timeout", "undo_retry", "max_wait")
_SAGA_CODE = {name: code for code, name in enumerate(_SAGA_CODES)}
_STEP_CODE = {name: code for code, name in enumerate(_STEP_CODES)}
_TIMER_CODE = {name: code for code, name in enumerate(_TIMER_CODES)}

_DECODERS: dict[str, Callable[[Any], Any]] = {
    "b": lambda text: base64.b64decode(text, validate=True),
    "d": Decimal,
    "ts": dt.datetime.fromisoformat,
    "dt": dt.date.fromisoformat,
    "t": dt.time.fromisoformat,
    "u": uuid.UUID,
}


class StateEncodingError(SagastreamError, ValueError):
    """A saga state holds a value no Avro schema gives; the message names the source and field."""


class StateFormatError(SagastreamError, ValueError):
    """Bytes that are not a saga state of a format this version reads."""


@dataclass(slots=True)
class StepState:
    """One step of a saga: its state, the attempt last sent (0: never) and its undo's, and when
    (epoch ms, None: not yet) its first attempt was sent, its current attempt was sent and
    ended, and its undo's current attempt was sent and ended: what its spans and durations
    are made of, decided times, so a re-decided input gives the same ones."""

    status: str = PENDING
    attempt: int = 0
    undo_attempt: int = 0
    first_sent: int | None = None
    sent: int | None = None
    done: int | None = None
    undo_sent: int | None = None
    undo_done: int | None = None

    def copy(self) -> StepState:
        return StepState(
            self.status,
            self.attempt,
            self.undo_attempt,
            self.first_sent,
            self.sent,
            self.done,
            self.undo_sent,
            self.undo_done,
        )


@dataclass(slots=True)
class SagaState:
    """One saga instance: what decide reads and changes, and the changelog keeps."""

    saga: str
    key: str
    # the definition's shape it started on, which decides it to its end (None: a state of a
    # format before shapes)
    shape: str | None
    status: str
    # each source's fields that the saga uses, by source: start, then each step that succeeded
    data: dict[str, dict[str, Any]]
    steps: dict[str, StepState]
    started: int
    order: list[str] = field(default_factory=list)  # steps in the order they succeeded
    undone: list[str] = field(default_factory=list)  # steps compensated, in that order
    undo_errors: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  # digests of the last event ids decided
    timers: dict[str, int] = field(default_factory=dict)  # `kind|step|attempt` -> due ms
    ended: int | None = None
    expires: int | None = None  # when an ended saga leaves the store (None: never, or running)
    reason: str | None = None
    failed_step: str | None = None
    correlation_id: str | None = None
    traceparent: str | None = None
    # the start event's hop, which every event the saga causes is one past (None: a state
    # written before it was kept, where the input's hop is used)
    hop: int | None = None

    def copy(self) -> SagaState:
        """A copy decide may change; no generic deepcopy (several times slower). A source's
        fields are stored once and never changed, so their dicts are shared."""
        return SagaState(
            self.saga,
            self.key,
            self.shape,
            self.status,
            dict(self.data),
            {name: step.copy() for name, step in self.steps.items()},
            self.started,
            list(self.order),
            list(self.undone),
            list(self.undo_errors),
            list(self.seen),
            dict(self.timers),
            self.ended,
            self.expires,
            self.reason,
            self.failed_step,
            self.correlation_id,
            self.traceparent,
            self.hop,
        )


def seen_digest(event_id: str) -> str:
    """What a state keeps of an event id it decided: 64 bits of blake2b, base64 (11 chars)."""
    raw = _blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return _b64(raw, newline=False)[:11].decode("ascii")


_blake2b, _b64 = hashlib.blake2b, binascii.b2a_base64
# json.dumps with arguments builds a new JSONEncoder per call; every touched state is encoded
_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_state(state: SagaState) -> bytes:
    """The changelog bytes of a saga state; raises StateEncodingError naming what cannot be kept."""
    t0, steps, code = state.started, state.steps, _STEP_CODE
    body: dict[str, Any] = {
        "s": state.saga,
        "k": state.key,
        "st": _SAGA_CODE[state.status],
        "b": t0,
        "d": {source: _tag_fields(source, fields) for source, fields in state.data.items()},
        "p": {name: _step(st, code[st.status], t0) for name, st in steps.items()},
    }
    # what most states leave at its default is left out (tested in this order: cheapest)
    if state.shape is not None:
        body["h"] = state.shape
    if state.order or state.undone:
        index = {name: i for i, name in enumerate(state.steps)}
        body["o"] = [index[name] for name in state.order]
        body["u"] = [index[name] for name in state.undone]
    if state.undo_errors:
        body["ue"] = state.undo_errors
    if state.seen:
        body["n"] = state.seen
    if state.timers:
        body["t"] = [[*_timer(key), due - t0] for key, due in state.timers.items()]
    if state.ended is not None:
        body["e"] = state.ended - t0
    if state.expires is not None:
        body["x"] = state.expires - t0
    if state.reason is not None:
        body["r"] = state.reason
    if state.failed_step is not None:
        body["f"] = state.failed_step
    if state.correlation_id is not None:
        body["c"] = state.correlation_id
    if state.traceparent is not None:
        body["tp"] = state.traceparent
    if state.hop is not None:
        body["hp"] = state.hop
    text = _compact_json(body)
    # a lone surrogate is a valid Python str (and JSON escape); keep it rather than fail
    return PREFIX + text.encode("utf-8", "surrogatepass")


def _step(st: StepState, code: int, t0: int) -> list[int | None]:
    """A step as `[state, attempt, undo attempt, first sent, sent, done, undo sent, undo done]`;
    each time after the one it follows (first sent and undo sent after `started`, sent after
    first sent, done after sent, undo done after undo sent; after 0 where that one is unset, as
    in a state upgraded from format 4), so the numbers stay short; trailing unset ones left out."""
    first, sent, usent = st.first_sent, st.sent, st.undo_sent
    row = [
        code,
        st.attempt,
        st.undo_attempt,
        _after(first, t0),
        _after(sent, first),
        _after(st.done, sent),
        _after(usent, t0),
        _after(st.undo_done, usent),
    ]
    while row[-1] is None:
        row.pop()
    return row


def _after(ms: int | None, base: int | None) -> int | None:
    return None if ms is None else ms - (base or 0)


def _at(offset: int | None, base: int | None) -> int | None:
    return None if offset is None else offset + (base or 0)


def _step_state(row: list[Any], t0: int) -> StepState:
    """A step of format 4 (`[state, attempt, undo attempt]`: no times) or 5."""
    if len(row) == 3:
        return StepState(_STEP_CODES[row[0]], row[1], row[2])
    code, attempt, undo_attempt, *times = row
    times += [None] * (5 - len(times))
    first = _at(times[0], t0)
    sent = _at(times[1], first)
    undo_sent = _at(times[3], t0)
    return StepState(
        _STEP_CODES[code],
        attempt,
        undo_attempt,
        first,
        sent,
        _at(times[2], sent),
        undo_sent,
        _at(times[4], undo_sent),
    )


def _timer(key: str) -> tuple[int, str, int]:
    """(kind code, step, attempt) of a timer key: few keys recur in every saga, so kept."""
    parts = _TIMER_PARTS.get(key)
    if parts is None:
        kind, step, attempt = key.split("|")
        parts = (_TIMER_CODE[kind], step, int(attempt))
        if len(_TIMER_PARTS) < _TIMER_KEYS_KEPT:
            _TIMER_PARTS[key] = parts
            _TIMER_KEYS[parts] = key
    return parts


def _timer_key(kind: int, step: str, attempt: int) -> str:
    key = _TIMER_KEYS.get((kind, step, attempt))
    return f"{_TIMER_CODES[kind]}|{step}|{attempt}" if key is None else key


# timer keys parsed and built, both ways; bounded, as step names come from topologies
_TIMER_KEYS_KEPT = 10_000
_TIMER_PARTS: dict[str, tuple[int, str, int]] = {}
_TIMER_KEYS: dict[tuple[int, str, int], str] = {}


def decode_state(raw: bytes) -> SagaState:
    """The state of changelog bytes of format 1 to 5; raises StateFormatError."""
    head = raw[:3]
    if head in (PREFIX, FORMAT_4):
        # format 5 is format 4 with the steps' times appended to each step's row
        return _format_4(_json(raw[3:]), raw[2])
    if head == FORMAT_3:
        body = _json(raw[3:])
        body["data"] = _untag_data(body.get("data"), 3)
        return _from_dict(body, 3)
    if raw[:2] == MAGIC:
        raise StateFormatError(
            f"saga state format {raw[2] if len(raw) > 2 else '?'}: this sagastream reads formats "
            f"1 to {FORMAT}; run the version that wrote it, or a newer one"
        )
    if raw[:1] == b"{":
        return _bare(_json(raw))
    raise StateFormatError(f"not a saga state: starts with {raw[:8]!r}")


@dataclass(frozen=True, slots=True)
class StateHead:
    """What a list of sagas shows of a state (`saga list`, the console's index): no `data`, no
    timers, and of the steps only those running now (a human step running waits for a person)."""

    saga: str
    key: str
    shape: str | None
    status: str
    started: int
    ended: int | None
    reason: str | None
    failed_step: str | None
    running: tuple[str, ...]


def decode_head(raw: bytes) -> StateHead:
    """The head of changelog bytes of format 1 to 5, without decoding the saga's data (the most
    of a state, and of the time `decode_state` takes); raises StateFormatError."""
    if raw[:3] not in (PREFIX, FORMAT_4):
        return head_of(decode_state(raw))  # older formats are rare: upgraded whole
    body = _json(raw[3:])
    get = body.get
    try:
        t0, ended = body["b"], get("e")
        running = tuple(name for name, row in body["p"].items() if row[0] == _RUNNING_STEP)
        return StateHead(
            body["s"],
            body["k"],
            get("h"),
            _SAGA_CODES[body["st"]],
            t0,
            None if ended is None else t0 + ended,
            get("r"),
            get("f"),
            running,
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise StateFormatError(
            f"a format-{raw[2]} saga state that is incomplete: {exc!r}"
        ) from None


_RUNNING_STEP = _STEP_CODE[STARTED]


def head_of(state: SagaState) -> StateHead:
    """The head of a decoded state."""
    return StateHead(
        state.saga,
        state.key,
        state.shape,
        state.status,
        state.started,
        state.ended,
        state.reason,
        state.failed_step,
        tuple(name for name, step in state.steps.items() if step.status == STARTED),
    )


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8", "surrogatepass"))
    except ValueError as exc:
        raise StateFormatError(f"a saga state that is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise StateFormatError(f"a saga state must be a JSON object, not {type(body).__name__}")
    return body


def _format_4(body: dict[str, Any], version: int) -> SagaState:
    data = _untag_data(body.get("d"), version)
    get = body.get
    try:
        steps, t0 = body["p"], body["b"]
        order, undone, ended, expires = get("o"), get("u"), get("e"), get("x")
        names = list(steps) if order or undone else []
        # positional, in the fields' order: this runs for every state read
        return SagaState(
            body["s"],
            body["k"],
            get("h"),
            _SAGA_CODES[body["st"]],
            data,
            {name: _step_state(row, t0) for name, row in steps.items()},
            t0,
            [names[i] for i in order] if order else [],
            [names[i] for i in undone] if undone else [],
            get("ue") or [],
            get("n") or [],
            {_timer_key(k, s, a): t0 + due for k, s, a, due in get("t") or ()},
            None if ended is None else t0 + ended,
            None if expires is None else t0 + expires,
            get("r"),
            get("f"),
            get("c"),
            get("tp"),
            get("hp"),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise StateFormatError(
            f"a format-{version} saga state that is incomplete: {exc!r}"
        ) from None


def _bare(state: dict[str, Any]) -> SagaState:
    """Format 1 or 2 (bare JSON, its version in `v`)."""
    version = state.pop("v", None)
    if "ctx" in state:
        # format 1 merged every result into one context: each source reads all of it, as
        # format 1's commands did
        ctx = state.pop("ctx")
        state["data"] = {START: ctx, **dict.fromkeys(state.get("order", ()), ctx)}
        version = 1
    elif version not in (None, 2):
        raise StateFormatError(f"a bare-JSON saga state of version {version!r}: not 1 or 2")
    return _from_dict(state, version or 2)


def _from_dict(state: dict[str, Any], version: int) -> SagaState:
    """A state of format 1 to 3: the dict of short keys the in-memory state was until format 4.

    Its event ids become digests; fired timers' ids (uuid5) are dropped, as decide no longer
    keeps them: a fired timer is disarmed, so firing it again changes nothing anyway.
    """
    try:
        return SagaState(
            saga=state["saga"],
            key=state["key"],
            # formats 1 to 3 predate shapes (ad0bba4's format 3 wrote one before any was
            # published): decided by their saga's lowest published version (docs/versioning.md)
            shape=None,
            status=state["status"],
            data=state["data"],
            steps={
                name: StepState(st["st"], st["a"], st["ca"]) for name, st in state["steps"].items()
            },
            started=state["started"],
            order=list(state["order"]),
            undone=list(state["undone"]),
            undo_errors=list(state["undo_errors"]),
            seen=[seen_digest(i) for i in state["seen"] if not _fired_timer_id(i)],
            timers=dict(state["timers"]),
            ended=state.get("ended"),
            expires=state.get("expires"),  # format 2 before ended sagas expired had none
            reason=state.get("reason"),
            failed_step=state.get("failed_step"),
            correlation_id=state.get("corr"),
            traceparent=state.get("tp"),
            hop=state.get("hop"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise StateFormatError(f"a format-{version} saga state without {exc}") from None


def _fired_timer_id(event_id: str) -> bool:
    """A fired timer's event id: uuid5 (the orchestrator's, of saga key, timer and due time)."""
    try:
        return uuid.UUID(event_id).version == 5
    except ValueError:
        return False


def _untag_data(data: Any, version: int) -> dict[str, dict[str, Any]]:
    try:
        return {source: _untag_fields(source, fields, version) for source, fields in data.items()}
    except (KeyError, AttributeError, TypeError) as exc:
        raise StateFormatError(
            f"a format-{version} saga state without a usable data: {exc}"
        ) from None


# -- tagged values inside `data` ----------------------------------------------------------------


def _tag_fields(source: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if type(value) in _PLAIN:
            out[name] = value
            continue
        try:
            out[name] = _tag(value)
        except _Unstorable as exc:
            raise StateEncodingError(
                f"cannot keep {source}.{name}{exc.path} in the saga state: {exc.what}; "
                "state holds what Avro decodes to (records, maps, arrays, bytes, decimals, "
                "dates and times, UUIDs, strings, numbers, booleans, null)"
            ) from None
    return out


# what JSON carries as it is, and most fields are: checked first, by exact type, as it is cheapest
_PLAIN = frozenset({str, int, float, bool, type(None)})


class _Unstorable(Exception):  # noqa: N818 - internal: carries the path up to `_tag_fields`
    def __init__(self, what: str, path: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.path = path


def _tag(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, list | tuple):
        return [v if type(v) in _PLAIN else _item(i, v) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {"m": _map(value)}
    if isinstance(value, bool | int | float | str):  # subclasses: an IntEnum, a str enum
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Decimal):
        return {"d": str(value)}
    if isinstance(value, dt.datetime):  # before date: a datetime is a date too
        return {"ts": value.isoformat()}
    if isinstance(value, dt.date):
        return {"dt": value.isoformat()}
    if isinstance(value, dt.time):
        return {"t": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"u": str(value)}
    raise _Unstorable(f"a {type(value).__name__} is not a value Avro decodes to")


def _map(value: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            what = f"map key {key!r} is not a string, as Avro map keys are"
            raise _Unstorable(what)
        if type(item) in _PLAIN:
            out[key] = item
            continue
        try:
            out[key] = _tag(item)
        except _Unstorable as exc:
            raise _Unstorable(exc.what, f".{key}{exc.path}") from None
    return out


def _item(index: int, value: Any) -> Any:
    try:
        return _tag(value)
    except _Unstorable as exc:
        raise _Unstorable(exc.what, f"[{index}]{exc.path}") from None


def _untag_fields(source: str, fields: Mapping[str, Any], version: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        try:
            out[name] = _untag(value)
        except (ValueError, TypeError, AttributeError, InvalidOperation) as exc:
            raise StateFormatError(
                f"saga state field {source}.{name}: not a tagged value of format {version}: {exc}"
            ) from None
    return out


def _untag(value: Any) -> Any:
    if isinstance(value, list):
        return [_untag(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError(f"a tagged value has one key, not {sorted(value)}")
    ((tag, inner),) = value.items()
    if tag == "m":
        return {k: _untag(v) for k, v in inner.items()}
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise ValueError(f"unknown tag {tag!r}")
    return decoder(inner)
