"""Which partition stores this orchestrator process owns, from what the group assigned it.

Stores are keyed by partition number, and the range assignor puts partition p of every input
topic on one member only while all members subscribe to the same topics with the same partition
counts; a rolling deploy that adds an input topic breaks that, and two processes would write one
changelog partition. So ownership is by construction instead: every member also subscribes to
an anchor topic every version has (the changelog itself, paused forever, never read), and a
process owns store p iff it holds partition p of the anchor and partition p of every input it
subscribes to. The group gives each anchor partition to one member, so no two processes own a
store; an input partition held without its store (members disagree on the topology) waits,
paused, for a rebalance that brings them together. An input topic whose partition count
differs from the changelog's would hash keys to other stores: then nothing is owned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ownership:
    """The stores owned, the input partitions that wait, and why."""

    owned: frozenset[int]
    anchor: str = ""
    waiting: frozenset[tuple[str, int]] = frozenset()
    refused: str | None = None  # partition counts differ: nothing may be processed
    disagreement: str | None = None  # members disagree on the topology: some inputs wait
    counts: Mapping[str, int] = field(default_factory=dict)

    def owns(self, topic: str, partition: int) -> bool:
        """Whether this input partition is processed here (never the anchor: it is not read)."""
        return (
            topic != self.anchor
            and partition in self.owned
            and (topic, partition) not in self.waiting
        )


def ownership(
    anchor: str,
    inputs: Iterable[str],
    assigned: Iterable[tuple[str, int]],
    counts: Mapping[str, int],
) -> Ownership:
    """Owned stores of an assignment; `counts` gives the partition count of every topic the
    cluster has (an input it lacks is reported by the consumer, and waits for nothing here)."""
    held = set(assigned)
    inputs = list(inputs)
    held_inputs = {(t, p) for t, p in held if t != anchor}
    expected = counts.get(anchor)
    if expected is None:
        why = (
            f"the state changelog {anchor} is not in the cluster's metadata, so no store can "
            "be owned and no input is processed; create it (`sagastream topics create`)"
        )
        return Ownership(frozenset(), anchor, frozenset(held_inputs), why, counts=dict(counts))
    wrong = {t: counts[t] for t in inputs if t in counts and counts[t] != expected}
    if wrong:
        listed = ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
        why = (
            f"partition counts differ: {listed}, but the state changelog {anchor} has "
            f"{expected}; keys would hash to other partitions than their sagas' stores, so no "
            "input is processed. Give every input topic the changelog's partition count again "
            "(recreate it) or migrate the sagas to a new application id"
        )
        return Ownership(frozenset(), anchor, frozenset(held_inputs), why, counts=dict(counts))
    anchors = {p for t, p in held if t == anchor}
    # a topic missing from the cluster can be held by no member: it cannot take a store away
    present = [t for t in inputs if t in counts]
    owned = {p for p in anchors if all((t, p) in held for t in present)}
    waiting = {(t, p) for t, p in held_inputs if p not in owned}
    disagreement = None
    if waiting or anchors - owned:
        parts = []
        if waiting:
            parts.append(
                "holds " + ", ".join(f"{t}[{p}]" for t, p in sorted(waiting)) + " without "
                "its store (another member owns it)"
            )
        if anchors - owned:
            parts.append(
                "owns no store of "
                + ", ".join(f"partition {p}" for p in sorted(anchors - owned))
                + " (another member holds some of its inputs)"
            )
        disagreement = (
            "members disagree on the topology (a rolling deploy changed the input topics?): "
            "this process " + "; ".join(parts) + "; those inputs wait until every member runs "
            "the same topology"
        )
    return Ownership(
        frozenset(owned), anchor, frozenset(waiting), disagreement=disagreement, counts=dict(counts)
    )
