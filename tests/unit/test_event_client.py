"""EventClient builds its producer on the first write only (no broker needed to see it)."""

from __future__ import annotations

from sagastream.core.topology import load_topology
from sagastream.ops.client import EventClient
from sagastream.runtime.settings import Settings
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
