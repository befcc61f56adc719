"""The replication factor and min.insync.replicas sagastream gives its topics, per cluster size
and topology.yaml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.topology import Defaults, TopologyError, parse_topology
from sagastream.ops.admin import Durability, DurabilityUnavailable, durability

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("brokers", "rf", "isr"),
    [(1, 1, None), (2, 2, None), (3, 3, 2), (5, 3, 2)],
)
def test_by_default_three_replicas_at_most_and_one_fewer_in_sync(
    brokers: int, rf: int, isr: int | None
) -> None:
    assert durability(Defaults(), brokers) == Durability(rf, isr)


def test_below_three_replicas_the_broker_keeps_its_own_min_insync_replicas() -> None:
    assert durability(Defaults(), 2).topic_config() == {}
    assert durability(Defaults(), 3).topic_config() == {"min.insync.replicas": "2"}


def test_topology_yaml_chooses_replicas_and_min_insync_replicas() -> None:
    assert durability(Defaults(replication_factor=5), 6) == Durability(5, 4)
    assert durability(Defaults(min_insync_replicas=1), 3) == Durability(3, 1)
    assert durability(Defaults(replication_factor=1, min_insync_replicas=1), 3) == Durability(1, 1)
    assert durability(Defaults(min_insync_replicas=1), 1).topic_config() == {
        "min.insync.replicas": "1"
    }


def test_more_replicas_than_brokers_is_refused_naming_both() -> None:
    with pytest.raises(DurabilityUnavailable) as refused:
        durability(Defaults(replication_factor=3), 1, "127.0.0.1:9092")
    message = str(refused.value)
    assert "replication_factor is 3" in message and "127.0.0.1:9092 has 1 broker(s)" in message


def test_min_insync_replicas_above_the_replicas_is_a_topology_error() -> None:
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load((ROOT / "topology.yaml").read_text()))
    data["defaults"].update(replication_factor=2, min_insync_replicas=3)
    with pytest.raises(TopologyError) as caught:
        parse_topology(data, "topology.yaml", ROOT / "schemas")
    assert "topology.yaml: defaults: " in str(caught.value)
    assert "min_insync_replicas 3 is more than replication_factor 2" in str(caught.value)
