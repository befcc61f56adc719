"""The saga state's bytes: `encode_state` and `decode_state` are the only way in and out.

Format 3 is `b"SS\\x03"` followed by compact JSON. The state's own keys (status, steps, timers...)
are plain JSON; inside `data` (each source's fields) every mapping and every value JSON cannot
carry is a tagged one-key object, so whatever a user's map keys are, decoding is unambiguous:

    {"m": {...}} record or map    {"b": "<base64>"} bytes, fixed    {"d": "12.30"} decimal
    {"ts": "<iso>"} datetime      {"dt": "<iso>"} date              {"t": "<iso>"} time
    {"u": "<uuid>"} UUID

Lists, strings, numbers, booleans and null are plain JSON; floats keep NaN and the infinities
(Python's JSON tokens). Formats 1 and 2 were bare JSON objects (their first byte is `{`), so the
prefix tells every format apart, and `decode_state` upgrades them to the current in-memory shape
(docs/state-format.md).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from sagastream.core.topology import START
from sagastream.errors import SagastreamError

MAGIC = b"SS"
FORMAT = 3
PREFIX = MAGIC + bytes([FORMAT])

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


def encode_state(state: Mapping[str, Any]) -> bytes:
    """The changelog bytes of a saga state; raises StateEncodingError naming what cannot be kept."""
    body = dict(state)
    body["data"] = {source: _tag_fields(source, fields) for source, fields in state["data"].items()}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    # a lone surrogate is a valid Python str (and JSON escape); keep it rather than fail
    return PREFIX + text.encode("utf-8", "surrogatepass")


def decode_state(raw: bytes) -> dict[str, Any]:
    """The in-memory state of changelog bytes of format 1, 2 or 3; raises StateFormatError."""
    if raw[:3] == PREFIX:
        body = _json(raw[3:])
        try:
            body["data"] = {
                source: _untag_fields(source, fields) for source, fields in body["data"].items()
            }
        except (KeyError, AttributeError, TypeError) as exc:
            raise StateFormatError(f"a format-3 saga state without a usable data: {exc}") from None
        return body
    if raw[:2] == MAGIC:
        raise StateFormatError(
            f"saga state format {raw[2] if len(raw) > 2 else '?'}: this sagastream reads formats "
            f"1 to {FORMAT}; run the version that wrote it, or a newer one"
        )
    if raw[:1] == b"{":
        return _upgrade(_json(raw))
    raise StateFormatError(f"not a saga state: starts with {raw[:8]!r}")


def _json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode("utf-8", "surrogatepass"))
    except ValueError as exc:
        raise StateFormatError(f"a saga state that is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise StateFormatError(f"a saga state must be a JSON object, not {type(body).__name__}")
    return body


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """Format 1 or 2 (bare JSON, its version in `v`) to the current in-memory shape."""
    version = state.pop("v", None)
    if "ctx" in state:
        # format 1 merged every result into one context: each source reads all of it, as
        # format 1's commands did
        ctx = state.pop("ctx")
        state["data"] = {START: ctx, **dict.fromkeys(state.get("order", ()), ctx)}
    elif version not in (None, 2):
        raise StateFormatError(f"a bare-JSON saga state of version {version!r}: not 1 or 2")
    state.setdefault("expires", None)  # format 2 before ended sagas expired
    return state


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


def _untag_fields(source: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        try:
            out[name] = _untag(value)
        except (ValueError, TypeError, AttributeError, InvalidOperation) as exc:
            raise StateFormatError(
                f"saga state field {source}.{name}: not a tagged value of format {FORMAT}: {exc}"
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
