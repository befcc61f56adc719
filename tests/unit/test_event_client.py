"""EventClient builds its producer on the first write only (no broker needed to see it)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from sagastream.core.topology import load_topology
from sagastream.ops.client import EventClient
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import DecodeError, RegistryRefused, RegistryUnavailable
from sagastream.wire.registry import build_codec


def test_a_read_only_client_builds_no_producer() -> None:
    """Issue 17: `saga show` and `dlq list` under a read-only principal failed, as the client
    always built an idempotent producer (IDEMPOTENT_WRITE on the cluster, WRITE on topics)."""
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    topology = load_topology(settings.topology_file, settings.schemas_path)
    client = EventClient(settings, topology, build_codec(settings))
    assert client.flush(timeout=0.1) == []
    client.close()
    assert client._writer is None
    queued = EventClient(settings, topology, build_codec(settings))
    queued.publish_raw("t", b"k", b"v")
    assert queued._writer is not None


def test_a_read_waits_for_a_registry_that_does_not_answer_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`dlq redrive` under a slow-starting registry exited 2 at its first unanswered lookup;
    a read asks again for a while, as the workers do, and wrong credentials still fail at once."""
    from sagastream.ops import client as module

    monkeypatch.setattr(module.time, "sleep", lambda s: None)
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    topology = load_topology(settings.topology_file, settings.schemas_path)
    client = EventClient(settings, topology, build_codec(settings))
    answers: list[Exception | tuple[str, dict[str, int]]] = [
        RegistryUnavailable("timed out"),
        RegistryUnavailable("timed out"),
        ("OrderPlaced", {"n": 1}),
    ]

    def decode(value: bytes) -> tuple[str, dict[str, int]]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(client.codec, "decode", decode)
    assert client.decoded(b"x") == ("OrderPlaced", {"n": 1})
    answers[:] = [RegistryRefused("401")]
    with pytest.raises(RegistryRefused):
        client.decoded(b"x")
    answers[:] = [DecodeError("not avro", "bad_magic")]
    assert client.decoded(b"x") == (None, None)


class _Metadata:
    def __init__(self, topics: dict[str, dict[int, object]]) -> None:
        self.topics = {t: type("T", (), {"partitions": parts})() for t, parts in topics.items()}


class _BrokerJustBack:
    """A consumer whose broker first does not answer, then serves a topic without partitions
    (its leader not yet back), then the whole topic."""

    def __init__(self) -> None:
        self.answers: list[Exception | _Metadata] = [
            KafkaException(KafkaError(KafkaError._TRANSPORT)),
            _Metadata({"t": {}}),
            _Metadata({"t": {0: object(), 1: object()}}),
        ]

    def list_topics(self, timeout: float) -> _Metadata:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_read_waits_for_the_partitions_of_a_broker_just_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a frozen broker resumed, a read found no partitions (or no answer) at once and
    read nothing for its whole timeout; it asks again until its partitions are known."""
    from sagastream.ops import client as module

    monkeypatch.setattr(module.time, "sleep", lambda s: None)
    assert module._known_partitions(_BrokerJustBack(), ["t"], 0, 60) == [("t", 0), ("t", 1)]  # type: ignore[arg-type]
    # a broker that never answers is an error once the wait is over, not an empty read
    gone = _BrokerJustBack()
    gone.answers = gone.answers[:1]
    with pytest.raises(KafkaException):
        module._known_partitions(gone, ["t"], 0)  # type: ignore[arg-type]
    # a topic that does not exist beside one that does is given up after the short wait
    one = _BrokerJustBack()
    one.answers = one.answers[2:]
    assert module._known_partitions(one, ["t", "missing"], 0, 60) == [("t", 0), ("t", 1)]  # type: ignore[arg-type]
