"""One broker fixture for every integration test; the backend is chosen by SAGASTREAM_TEST_BROKER.

- `local` (default): real Apache Kafka from Maven Central on 127.0.0.1 (streams.localkafka);
- `testcontainers`: Kafka in a container; needs a Docker engine;
- `host:port[,host:port]`: an existing cluster.
Each test gets a unique topic prefix and consumer groups (see `ns`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.app import build_codec
from streams.client import EventClient
from streams.demo import WorkerSet
from streams.settings import Settings
from streams.topology import Topology, load_topology

HANDLERS = "payment,inventory,shipping,notification"


@dataclass(frozen=True)
class Broker:
    backend: str
    bootstrap: str
    version: str


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    choice = os.environ.get("SAGASTREAM_TEST_BROKER", "local")
    stop = None
    if choice == "local":
        from streams import localkafka

        was_running = localkafka.status()["running"]
        found = Broker("local Apache Kafka (Maven Central)", localkafka.start(), localkafka.KAFKA_VERSION)
        if not was_running:
            stop = localkafka.stop
    elif choice == "testcontainers":
        if not _docker_available():
            pytest.fail("SAGASTREAM_TEST_BROKER=testcontainers needs a running Docker engine; none answered")
        from testcontainers.kafka import KafkaContainer

        image = os.environ.get("SAGASTREAM_TEST_KAFKA_IMAGE", "apache/kafka:4.1.1")
        container = KafkaContainer(image).with_kraft()
        container.start()
        found = Broker(f"testcontainers ({image})", container.get_bootstrap_server(), image.split(":")[-1])
        stop = container.stop
    else:
        found = Broker("external cluster", choice, "unknown (external cluster)")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = f"integration broker: {found.backend} at {found.bootstrap}, Kafka {found.version}"
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line)
    yield found
    if stop is not None:
        stop()


@dataclass
class Namespace:
    """A test's private world: settings with a unique prefix, its topology, a client."""

    settings: Settings
    topology: Topology
    client: EventClient

    def topic(self, name: str) -> str:
        return self.settings.topic(name)


@pytest.fixture
def ns(broker: Broker, tmp_path: Path) -> Iterator[Namespace]:
    from streams.admin import create_topics, delete_topics

    prefix = f"t{uuid.uuid4().hex[:10]}-"
    settings = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=prefix, data_dir=tmp_path / "data")
    topology = load_topology(settings.topology_file)
    create_topics(settings, topology)
    client = EventClient(settings, topology, build_codec(settings), "test")
    yield Namespace(settings, topology, client)
    client.close()
    delete_topics(settings, prefix)


@pytest.fixture
def workers(ns: Namespace, tmp_path: Path) -> Iterator[WorkerSet]:
    """An orchestrator process and a process with every handler, ready to consume."""
    ws = WorkerSet(ns.settings, tmp_path / "logs")
    ws.start(["orchestrator", HANDLERS])
    try:
        ws.wait_ready()
        yield ws
    finally:
        ws.stop()
