"""The console's live index against the real broker: its pages match `saga list` once it has
caught up, a saga started or ended after the console started shows without a restart, and a
changelog recreated under it is read again from scratch. Pages are polled with a bound: the
index follows the changelog a moment behind, and says how far it has read."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sagastream.console.index import IndexFollower, Reading, SagaIndex, Topics, human_steps
from sagastream.console.readers import now_ms
from sagastream.examples.events import OrderPlaced
from sagastream.ops.admin import admin_client, create_topics, delete_topics
from sagastream.ops.bench_restore import write_changelog
from sagastream.ops.client import Client
from sagastream.ops.demo import settings_env
from sagastream.runtime.kafka_io import reader
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import (
    CONSOLE_BOUND_S,
    console_page,
    console_rows,
    good_order,
    loan_applied,
    wait_outcomes,
)
from tests.integration.test_console import LOAN_HANDLERS, running_console, wait_for_review
from tests.unit.states import state_bytes

pytestmark = pytest.mark.integration


def polled(port: int, path: str, wanted: Callable[[], list[tuple[str, str, str]]]) -> str:
    """The page at `path` once its rows are `wanted()`, asked again each time (it may change
    as sagas move on)."""
    return console_page(port, path, lambda text: console_rows(text) == wanted())


def listed(client: Client, *statuses: str, saga: str | None = None) -> list[tuple[str, str, str]]:
    return [(s.saga, s.key, s.status) for s in client.list_sagas(statuses, saga).sagas]


def newest(client: Client, part: str) -> list[tuple[str, str, str]]:
    """The sagas whose key has `part`, newest first (ties by type and key), as `saga list`
    reads them."""
    found = [s for s in client.list_sagas().sagas if part in s.key]
    found.sort(key=lambda s: (-s.started_ms, s.saga, s.key))
    return [(s.saga, s.key, s.status) for s in found]


def test_the_sagas_page_follows_the_changelog_and_matches_saga_list(
    ns: Any, start_workers: Any, tmp_path: Path
) -> None:
    start_workers("orchestrator")
    start_workers(f"{HANDLERS},{LOAN_HANDLERS}")
    completed = [f"idx-ok-{i}" for i in range(4)]
    with (
        running_console(settings_env(ns.settings), tmp_path / "console.log") as port,
        Client(ns.settings) as client,
    ):
        for key in completed:
            client.start(OrderPlaced(**good_order(key)), wait=False)
        client.start(OrderPlaced(**{**good_order("idx-declined"), "card_token": "tok_decline"}))
        wait_outcomes(ns, {*completed, "idx-declined"})

        shown = polled(port, "/sagas?status=completed", lambda: listed(client, "completed"))
        assert len(console_rows(shown)) == 4
        polled(
            port,
            "/sagas?saga=order&status=compensated",
            lambda: listed(client, "compensated", saga="order"),
        )
        polled(port, "/sagas?key=ok-&sort=newest", lambda: newest(client, "ok-"))

        # a saga started after the console: it shows, then waits for a person, then ends
        client.start(loan_applied("idx-loan"))
        wait_for_review(client, "idx-loan")
        polled(port, "/sagas?waiting=1", lambda: [("loan", "idx-loan", "running")])
        client.signal("loan", "idx-loan", "review", "approved", "looks fine", "tester")
        polled(port, "/sagas?saga=loan&status=completed", lambda: listed(client, saga="loan"))
        polled(port, "/sagas?waiting=1", lambda: [])
        assert listed(client, saga="loan") == [("loan", "idx-loan", "completed")]


def settle(done: Callable[[], bool]) -> None:
    """Wait until `done()` (a new admin client each time: one told of a topic keeps what it
    was told), within CONSOLE_BOUND_S."""
    deadline = time.monotonic() + CONSOLE_BOUND_S
    while not done():
        assert time.monotonic() < deadline, "the broker never settled"
        time.sleep(0.2)


def test_a_recreated_changelog_is_read_again_from_scratch(ns: Any, tmp_path: Path) -> None:
    """States written straight to the changelog (no worker) show; the topic deleted and made
    again with other states, the index rebuilds and shows only those."""
    settings, topic = ns.settings, ns.settings.changelog_topic()

    def write(*keys: str) -> None:
        records = [(k.encode(), state_bytes(key=k, started=1000 + i)) for i, k in enumerate(keys)]
        write_changelog(settings, [records])

    write("old-a", "old-b", "old-c")
    with running_console(settings_env(settings), tmp_path / "console.log") as port:
        old = [("order", k, "running") for k in ("old-a", "old-b", "old-c")]
        polled(port, "/sagas", lambda: old)
        assert delete_topics(settings, topic) == [topic]
        # the broker forgets a topic a moment after its deletion is accepted: made again
        # before that, it would not be made, and the records written would go with the old one
        settle(lambda: topic not in admin_client(settings).list_topics(timeout=10).topics)
        create_topics(settings, ns.topology, only=[topic])
        settle(lambda: topic in admin_client(settings).list_topics(timeout=10).topics)
        write("new-a")
        polled(port, "/sagas", lambda: [("order", "new-a", "running")])


class WritesMeanwhile:
    """A consumer through which, right after the broker said where each outcome partition's
    window starts, an outcome is written: what a busy orchestrator may do at that moment."""

    def __init__(self, consumer: Any, write: Callable[[], None]) -> None:
        self._consumer, self._write = consumer, write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)

    def offsets_for_times(self, partitions: Any, timeout: float) -> Any:
        found = self._consumer.offsets_for_times(partitions, timeout=timeout)
        self._write()
        return found


def test_an_outcome_written_while_the_index_takes_up_its_topic_is_counted(ns: Any) -> None:
    """The index takes up the outcome topic (empty: no outcome in the window) while an outcome
    is written: that outcome is counted. Started at OFFSET_END, a partition was read from its
    end as the consumer resolved it later, past the outcome, which was never counted."""
    outcomes = ns.topic(ns.topology.sagas["order"].outcome_topic)
    index = SagaIndex(human_steps(ns.topology.sagas.items()))
    topics = Topics(ns.settings.changelog_topic(), [outcomes], {})
    follower = IndexFollower(ns.settings, index, topics, ns.client.decoded, now_ms)

    def write() -> None:
        ns.client.publish("SagaCompleted", "late-1", {"saga_type": "order", "completed_steps": []})
        ns.client.flush()

    def served() -> bool:
        """The topic (made a moment ago) and a leader of each partition are known."""
        found = admin_client(ns.settings).list_topics(timeout=10).topics.get(outcomes)
        return bool(found and found.partitions) and all(
            p.leader >= 0 for p in found.partitions.values()
        )

    settle(served)
    consumer = reader(ns.settings, "test-index")
    try:
        reading = Reading(topics.changelog, 1)
        follower._take_up(WritesMeanwhile(consumer, write), admin_client(ns.settings), reading)
        assert reading.taken == {outcomes}

        def completed() -> int:
            return index.overview(["order"], now_ms())[0].totals["completed"]

        deadline = time.monotonic() + 20  # a hang guard: the outcome is there to be read
        while completed() == 0 and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                follower._handle(msg, reading)
        assert completed() == 1
    finally:
        consumer.close()
