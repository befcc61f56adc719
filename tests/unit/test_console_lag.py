"""The overview's consumer lag per role: the arithmetic over a group's input partitions, the
transaction marker a caught-up group stays short of, and a group that never committed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from sagastream.console import lag
from sagastream.console.lag import PartitionOffsets, role_inputs, role_lag
from sagastream.core.topology import load_topology
from sagastream.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def offsets(committed: int | None, low: int, high: int, left: bool = True) -> PartitionOffsets:
    return PartitionOffsets("t", 0, low, high, committed, records_left=left)


def test_a_partition_lags_from_its_committed_offset_or_its_first_record_to_its_end() -> None:
    assert offsets(committed=7, low=0, high=10).lag == 3
    assert offsets(committed=None, low=4, high=10).lag == 6  # the workers start at the earliest
    # records deleted past the committed offset (retention): the group reads on from the first
    assert offsets(committed=2, low=5, high=10).lag == 5
    assert offsets(committed=10, low=0, high=10).lag == 0


def test_a_group_one_commit_marker_short_of_the_end_has_no_lag() -> None:
    # the probe found no committed record between the committed offset and the end
    assert offsets(committed=9, low=0, high=10, left=False).lag == 0
    assert offsets(committed=4, low=0, high=10, left=False).lag == 0  # aborted records too


def test_a_role_sums_its_partitions_and_names_those_never_committed() -> None:
    parts = [
        PartitionOffsets("a", 0, 0, 10, 7),
        PartitionOffsets("a", 1, 0, 5, 4, records_left=False),
        PartitionOffsets("b", 0, 2, 6, None),
        PartitionOffsets("b", 1, 3, 3, None),  # empty: never committed, nothing to say
    ]
    lag = role_lag("payments", "g-payments", 2, parts)
    assert (lag.lag, lag.partitions, lag.uncommitted) == (3 + 0 + 4, 4, 1)
    assert lag.shown() == "7 (1 of 4 partitions never committed)"
    assert role_lag("payments", "g", 1, parts[:2]).shown() == "3"


def test_a_group_that_never_committed_shows_so_not_zero() -> None:
    never = [PartitionOffsets("a", 0, 0, 10, None), PartitionOffsets("a", 1, 0, 0, None)]
    absent = role_lag("shipping", "g-shipping", 0, never)
    assert absent.lag is None and absent.shown() == "no members, never committed"
    assert role_lag("shipping", "g", 1, never).shown() == "never committed"
    # no input partition at all (its topics not created yet): nothing committed either
    assert role_lag("shipping", "g", 0, []).shown() == "no members, never committed"


def test_each_role_reads_the_topics_its_group_commits_on() -> None:
    settings = Settings(topic_prefix="p-", input_prefix="live-")
    topology = load_topology(ROOT / "topology.yaml", ROOT / "schemas")
    inputs = role_inputs(settings, topology)
    assert list(inputs) == ["orchestrator", *sorted(topology.handlers)]
    assert inputs["orchestrator"] == [f"live-{t}" for t in topology.orchestrator_inputs()]
    for role, spec in topology.handlers.items():
        assert inputs[role] == [f"p-{spec.consumes}"]


def test_groups_are_probed_together_unless_they_share_a_partition(monkeypatch: Any) -> None:
    """One read for every group's partitions that seem behind; a partition two groups read (from
    different offsets) goes to a second read. What each read finds goes back to its group."""
    reads: list[dict[tuple[str, int], tuple[int, int]]] = []

    def read(consumer: object, ranges: dict[tuple[str, int], tuple[int, int]]) -> set[Any]:
        reads.append(dict(ranges))
        return {tp for tp, (start, _) in ranges.items() if start < 5}  # records left below 5

    monkeypatch.setattr(lag, "records_left", read)
    found = lag.probe(
        None,  # type: ignore[arg-type] - the read is faked
        {
            "orchestrator": [PartitionOffsets("events", 0, 0, 10, 2)],
            "payment": [
                PartitionOffsets("cmds", 0, 0, 10, 9),
                PartitionOffsets("cmds", 1, 0, 4, 4),
            ],
            "audit": [PartitionOffsets("events", 0, 0, 10, 7)],
        },
    )
    assert reads == [{("events", 0): (2, 10), ("cmds", 0): (9, 10)}, {("events", 0): (7, 10)}]
    assert found == {"orchestrator": {("events", 0)}, "payment": set(), "audit": set()}


def test_a_group_the_console_may_not_describe_names_the_acls_to_grant() -> None:
    settings = Settings(sasl_username="viewer")
    refusal = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED)
    said = lag.unreadable(settings, "shop-payment", refusal)
    assert said.startswith("User:viewer is not allowed DESCRIBE on group shop-payment")
    assert "`sagastream acls --role operator-readonly`" in said
    other = lag.unreadable(settings, "shop-payment", KafkaError(KafkaError._TIMED_OUT))
    assert other.startswith("cannot read group shop-payment: ")
