"""Ownership of partition stores by construction: the anchor partition and every input's.

Assignments here are what the range assignor gives members that subscribe to different
topics (a rolling deploy that adds an input topic); the integration test runs the deploy.
"""

from __future__ import annotations

from sagastream.runtime.ownership import ownership

ANCHOR = "app-orchestrator-sagas-changelog"
OLD = ["orders.events", "payments.events"]
NEW = [*OLD, "loans.events"]
COUNTS = {ANCHOR: 4, "orders.events": 4, "payments.events": 4, "loans.events": 4}


def _range(members: list[list[str]], topics: list[str]) -> list[set[tuple[str, int]]]:
    """The range assignor: each topic's partitions split in order among its subscribers."""
    held: list[set[tuple[str, int]]] = [set() for _ in members]
    for topic in topics:
        subscribers = [i for i, subscribed in enumerate(members) if topic in subscribed]
        share, extra = divmod(COUNTS[topic], len(subscribers))
        start = 0
        for n, i in enumerate(subscribers):
            size = share + (1 if n < extra else 0)
            held[i] |= {(topic, p) for p in range(start, start + size)}
            start += size
    return held


def test_members_that_subscribe_to_different_topics_never_own_one_store_twice() -> None:
    for members in ([NEW, OLD], [OLD, NEW], [OLD, NEW, NEW], [NEW, OLD, NEW], [NEW, NEW, OLD]):
        subscribed = [[*m, ANCHOR] for m in members]
        held = _range(subscribed, [ANCHOR, *NEW])
        owned = [ownership(ANCHOR, m, h, COUNTS).owned for m, h in zip(members, held, strict=True)]
        every = [p for o in owned for p in o]
        assert len(every) == len(set(every)), f"a store owned twice: {members} -> {owned}"


def test_without_the_anchor_rule_the_new_member_would_hold_every_loans_partition() -> None:
    new, old = _range([[*NEW, ANCHOR], [*OLD, ANCHOR]], [ANCHOR, *NEW])
    assert {p for t, p in new if t == "loans.events"} == {0, 1, 2, 3}  # today's stores 0-3
    mine = ownership(ANCHOR, NEW, new, COUNTS)
    theirs = ownership(ANCHOR, OLD, old, COUNTS)
    assert (mine.owned, theirs.owned) == ({0, 1}, {2, 3})
    assert mine.waiting == {("loans.events", 2), ("loans.events", 3)}
    assert mine.disagreement and "members disagree on the topology" in mine.disagreement
    assert not mine.owns("loans.events", 2) and mine.owns("loans.events", 1)
    assert not mine.owns(ANCHOR, 0)  # the anchor is never read
    assert theirs.disagreement is None and theirs.waiting == frozenset()


def test_the_same_topology_everywhere_owns_what_it_holds() -> None:
    held = _range([[*NEW, ANCHOR], [*NEW, ANCHOR]], [ANCHOR, *NEW])
    assert [ownership(ANCHOR, NEW, h, COUNTS).owned for h in held] == [{0, 1}, {2, 3}]
    assert all(ownership(ANCHOR, NEW, h, COUNTS).disagreement is None for h in held)


def test_an_input_with_another_partition_count_than_the_changelog_is_refused() -> None:
    counts = {**COUNTS, "orders.events": 6}
    held = {(t, p) for t in [ANCHOR, *NEW] for p in range(4)} | {("orders.events", 4)}
    found = ownership(ANCHOR, NEW, held, counts)
    assert found.owned == frozenset() and not found.owns("orders.events", 0)
    assert found.refused and "orders.events has 6" in found.refused and "has 4" in found.refused


def test_a_changelog_missing_from_the_metadata_is_refused_by_name() -> None:
    counts = {t: n for t, n in COUNTS.items() if t != ANCHOR}
    found = ownership(ANCHOR, NEW, {("orders.events", 0), (ANCHOR, 0)}, counts)
    assert found.owned == frozenset()
    assert found.refused and f"{ANCHOR} is not in the cluster's metadata" in found.refused


def test_an_input_topic_the_cluster_lacks_takes_no_store_away() -> None:
    counts = {t: n for t, n in COUNTS.items() if t != "loans.events"}
    held = {(t, p) for t in [ANCHOR, *OLD] for p in range(2)}
    assert ownership(ANCHOR, NEW, held, counts).owned == {0, 1}
