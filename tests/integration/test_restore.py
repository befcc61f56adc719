"""Restore against the real changelog while another producer's transaction is open on it.

Records committed after the open transaction began lie beyond the last stable offset; restore
must read to the high watermark (KAFKA-10167), and must not take a checkpoint there for one
the changelog has lost.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import Producer

from sagastream.core.state import decode_state
from sagastream.runtime.restore import restore
from sagastream.runtime.store import MemoryStore, changelog_headers
from tests.unit.states import state_bytes


def _state(status: str) -> bytes:
    return state_bytes(status=status)


def _transaction(producer: Producer, topic: str, records: dict[bytes, bytes]) -> list[int]:
    """Write `records` to partition 0 in one committed transaction; their offsets."""
    offsets: list[int] = []
    producer.begin_transaction()
    for key, value in records.items():
        headers: list[tuple[str, str | bytes | None]] = [*changelog_headers(decode_state(value))]
        producer.produce(
            topic,
            key=key,
            value=value,
            partition=0,
            headers=headers,
            on_delivery=lambda err, msg: offsets.append(msg.offset()),
        )
    producer.commit_transaction(30)
    return offsets


def test_restore_reads_past_an_open_transaction_to_the_high_watermark(ns: Any) -> None:
    settings = ns.settings
    changelog = settings.changelog_topic()

    def transactional(name: str) -> Producer:
        producer = Producer(settings.transactional_producer_config(f"{changelog}-{name}"))
        producer.init_transactions(30)
        return producer

    owner, other = transactional("owner"), transactional("other")
    _transaction(owner, changelog, {b"saga-1": _state("running")})
    # another producer (a zombie, or the previous owner) opens a transaction and holds it
    other.begin_transaction()
    other.produce(changelog, key=b"saga-open", value=_state("running"), partition=0)
    other.flush(10)
    # committed after the open transaction began: beyond the LSO, below the high watermark
    [last] = _transaction(owner, changelog, {b"saga-2": _state("completed")})

    kept = MemoryStore()  # a store whose checkpoint is that last committed record
    kept.apply({b"saga-1": _state("running"), b"saga-2": _state("completed")}, last)
    fresh = MemoryStore()
    done: dict[str, Any] = {}

    def restoring(name: str, store: MemoryStore) -> threading.Thread:
        def run() -> None:
            done[name] = restore(settings, changelog, {0: store}, timeout=60)[0]

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # both restore while the transaction is open; it ends as they wait (a zombie's would time out)
    threads = [restoring("fresh", fresh), restoring("kept", kept)]
    threading.Timer(3.0, lambda: other.abort_transaction(30)).start()
    for thread in threads:
        thread.join(90)

    assert dict(fresh.states()) == {b"saga-1": _state("running"), b"saga-2": _state("completed")}
    assert done["fresh"].records == 2 and fresh.checkpoint() == last
    # the checkpoint was in the changelog: kept and read on from, not wiped and rebuilt
    assert (done["kept"].from_offset, done["kept"].records) == (last + 1, 0)
    assert kept.checkpoint() == last
    assert dict(kept.states()) == dict(fresh.states())
