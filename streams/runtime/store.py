"""Saga state of one partition: RocksDB (rocksdict) or an in-memory twin, behind one small interface.

A store holds three key spaces:

* `s<saga key>` -> the saga state (`sagastream.core.state`'s bytes), as last committed;
* `t<due, 13 digits><timer>\\0<saga key>` -> empty: the due-index, derived from the states'
  armed timers and, as timer `expire`, the time an ended saga leaves the store; written in the
  same batch, so a tick reads only what is due (sorted keys);
* `m:checkpoint` -> the changelog offset the states reach;
* `m:changelog-id` -> the topic id of the changelog that offset is in (a topic recreated under
  the same name has another id, and its offsets mean other records).

Writes arrive only through `apply`, once per committed transaction, as one atomic batch with the
new checkpoint; so after a crash the store is at some committed transaction, never past Kafka,
and restore replays the changelog from the checkpoint on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, cast

from rocksdict import Options, Rdict, WriteBatch

from sagastream.core.state import SagaState, decode_state

STATE, TIMER = b"s", b"t"
CHECKPOINT_KEY = b"m:checkpoint"
CHANGELOG_ID_KEY = b"m:changelog-id"
# changelog records carry the state's due-index entries here, so restore need not parse the state
TIMERS_HEADER = "timers"
DUE_DIGITS = 13
# the due-index entry of an ended saga's removal (armed timers are named `kind|step|attempt`)
EXPIRY = "expire"


def timer_index_key(due_ms: int, timer: str, saga_key: bytes) -> bytes:
    return TIMER + b"%013d" % due_ms + timer.encode() + b"\0" + saga_key


def parse_timer_index_key(raw: bytes) -> tuple[int, str, bytes]:
    """(due, timer, saga key) of a due-index key."""
    due = int(raw[1 : 1 + DUE_DIGITS])
    timer, saga_key = raw[1 + DUE_DIGITS :].split(b"\0", 1)
    return due, timer.decode(), saga_key


def timers_of(state: SagaState | None) -> dict[str, int]:
    """What the due-index holds for a state: its armed timers and, once ended, its expiry."""
    if state is None:
        return {}
    timers = dict(state.timers)
    if state.expires is not None:
        timers[EXPIRY] = state.expires
    return timers


def changelog_headers(state: SagaState | None) -> list[tuple[str, bytes]]:
    """Headers of a state's changelog record: its due-index entries, so restore need not parse it."""
    return [(TIMERS_HEADER, json.dumps(timers_of(state)).encode())]


def timer_changes(
    saga_key: bytes, old: Mapping[str, int], new: Mapping[str, int]
) -> tuple[list[bytes], list[bytes]]:
    """Due-index keys to delete and to add when a saga's armed timers go from `old` to `new`."""
    gone = [timer_index_key(due, t, saga_key) for t, due in old.items() if new.get(t) != due]
    added = [timer_index_key(due, t, saga_key) for t, due in new.items() if old.get(t) != due]
    return gone, added


class PartitionStore(Protocol):
    """What the orchestrator needs of one partition's state."""

    def get(self, saga_key: bytes) -> bytes | None:
        """The committed state of a saga (`encode_state` bytes), or None."""
        ...

    def checkpoint(self) -> int | None:
        """The changelog offset the committed states reach; None if never written."""
        ...

    def changelog_id(self) -> str | None:
        """The topic id of the changelog the checkpoint is an offset of; None if never set."""
        ...

    def set_changelog_id(self, topic_id: str) -> None: ...

    def due(self, now_ms: int, limit: int) -> list[tuple[int, str, bytes]]:
        """(due, timer, saga key) of committed timers due at `now_ms`, oldest first."""
        ...

    def apply(
        self,
        states: Mapping[bytes, bytes | None],
        checkpoint: int,
        timers: Mapping[bytes, tuple[Mapping[str, int], Mapping[str, int]]] | None = None,
    ) -> None:
        """Write states (None deletes) and the checkpoint in one atomic batch; index follows.

        `timers` gives, per saga, the armed timers before and after where the caller knows
        them, which saves reading and parsing those states again.
        """
        ...

    def states(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (saga key, state) in key order."""
        ...

    def size(self) -> int:
        """Approximate number of sagas held."""
        ...

    def wipe(self) -> None:
        """Forget everything (a checkpoint the changelog no longer has)."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """The in-memory twin of RocksStore, for unit tests of the orchestrator's logic."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, saga_key: bytes) -> bytes | None:
        return self._data.get(STATE + saga_key)

    def checkpoint(self) -> int | None:
        raw = self._data.get(CHECKPOINT_KEY)
        return None if raw is None else int(raw)

    def changelog_id(self) -> str | None:
        raw = self._data.get(CHANGELOG_ID_KEY)
        return None if raw is None else raw.decode()

    def set_changelog_id(self, topic_id: str) -> None:
        self._data[CHANGELOG_ID_KEY] = topic_id.encode()

    def due(self, now_ms: int, limit: int) -> list[tuple[int, str, bytes]]:
        found = sorted(parse_timer_index_key(k) for k in self._data if k[:1] == TIMER)
        return [t for t in found if t[0] <= now_ms][:limit]

    def apply(
        self,
        states: Mapping[bytes, bytes | None],
        checkpoint: int,
        timers: Mapping[bytes, tuple[Mapping[str, int], Mapping[str, int]]] | None = None,
    ) -> None:
        for key, op in _batch(self, states, checkpoint, timers):
            if op is None:
                self._data.pop(key, None)
            else:
                self._data[key] = op

    def states(self) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self._data if k[:1] == STATE):
            yield key[1:], self._data[key]

    def size(self) -> int:
        return sum(1 for k in self._data if k[:1] == STATE)

    def wipe(self) -> None:
        self._data.clear()

    def close(self) -> None:
        pass


class RocksStore:
    """One RocksDB database per partition, in raw (bytes) mode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), _options())
        # Every due-index key below this one is deleted: fired timers leave tombstones at the
        # front of the index until compaction, and seeking past them keeps a tick O(due).
        self._floor = TIMER

    def get(self, saga_key: bytes) -> bytes | None:
        value = self._db.get(STATE + saga_key)
        return None if value is None else bytes(value)

    def checkpoint(self) -> int | None:
        raw = self._db.get(CHECKPOINT_KEY)
        return None if raw is None else int(raw)

    def changelog_id(self) -> str | None:
        raw = self._db.get(CHANGELOG_ID_KEY)
        return None if raw is None else bytes(raw).decode()

    def set_changelog_id(self, topic_id: str) -> None:
        self._db.put(CHANGELOG_ID_KEY, topic_id.encode())

    def due(self, now_ms: int, limit: int) -> list[tuple[int, str, bytes]]:
        bound = TIMER + b"%013d" % (now_ms + 1)
        out: list[tuple[int, str, bytes]] = []
        first: bytes | None = None
        for key in self._db.keys(from_key=self._floor):
            raw = cast(bytes, key)
            if raw >= bound:
                break
            first = first or raw
            out.append(parse_timer_index_key(raw))
            if len(out) >= limit:
                break
        # what is returned stays until its saga's state changes; below it, nothing is left
        self._floor = first or bound
        return out

    def apply(
        self,
        states: Mapping[bytes, bytes | None],
        checkpoint: int,
        timers: Mapping[bytes, tuple[Mapping[str, int], Mapping[str, int]]] | None = None,
    ) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, op in _batch(self, states, checkpoint, timers):
            if op is None:
                batch.delete(key)
            else:
                batch.put(key, op)
                if key[:1] == TIMER and key < self._floor:
                    self._floor = key  # armed with a due time a tick has already passed
        self._db.write(batch)

    def states(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=STATE):
            raw = cast(bytes, key)
            if raw[:1] != STATE:
                break
            yield raw[1:], cast(bytes, value)

    def size(self) -> int:
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def wipe(self) -> None:
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = Rdict(str(self.path), _options())
        self._floor = TIMER

    def close(self) -> None:
        self._db.close()


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    # sagas keep small values; small buffers keep many partitions per process cheap
    opts.set_write_buffer_size(4 * 1024 * 1024)
    opts.set_target_file_size_base(8 * 1024 * 1024)
    return opts


def _batch(
    store: PartitionStore,
    states: Mapping[bytes, bytes | None],
    checkpoint: int,
    timers: Mapping[bytes, tuple[Mapping[str, int], Mapping[str, int]]] | None,
) -> Iterable[tuple[bytes, bytes | None]]:
    """The key writes of one committed transaction: states, their due-index changes, checkpoint."""
    for saga_key, value in states.items():
        known = timers.get(saga_key) if timers is not None else None
        if known is not None:
            before, after = known
        else:
            old = store.get(saga_key)
            before = timers_of(decode_state(old) if old else None)
            after = timers_of(decode_state(value) if value else None)
        gone, added = timer_changes(saga_key, before, after)
        for key in gone:
            yield key, None
        for key in added:
            yield key, b""
        yield STATE + saga_key, value
    yield CHECKPOINT_KEY, str(checkpoint).encode()
