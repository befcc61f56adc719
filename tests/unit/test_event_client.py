"""EventClient builds its producer on the first write only (no broker needed to see it)."""

from __future__ import annotations

import pytest

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
    assert client._decoded(b"x") == ("OrderPlaced", {"n": 1})
    answers[:] = [RegistryRefused("401")]
    with pytest.raises(RegistryRefused):
        client._decoded(b"x")
    answers[:] = [DecodeError("not avro", "bad_magic")]
    assert client._decoded(b"x") == (None, None)
