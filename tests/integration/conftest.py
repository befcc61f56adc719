"""One broker fixture for every integration test; the backend is chosen by SAGASTREAM_TEST_BROKER.

- `local` (default): real Apache Kafka from Maven Central on 127.0.0.1 (sagastream.local.kafka);
- `testcontainers`: Kafka in a container; needs a Docker engine;
- `host:port[,host:port]`: an existing cluster.
One schema registry fixture: SAGASTREAM_SCHEMA_REGISTRY_URL, else the local Apicurio Registry
(sagastream.local.registry). Each test gets a unique topic prefix, consumer groups and schema
subjects (see `ns`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.topology import Topology, load_topology
from sagastream.ops.client import EventClient
from sagastream.ops.demo import WorkerSet
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore
from sagastream.wire.registry import build_codec

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


ANNOUNCED: list[str] = []


def _announce(request: pytest.FixtureRequest, line: str, remember: bool = True) -> None:
    """Say it now, past output capture, and again in the summary next to the test counts."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        (reporter.write_line if reporter else print)(line)
    if remember:
        ANNOUNCED.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in ANNOUNCED:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    choice = os.environ.get("SAGASTREAM_TEST_BROKER", "local")
    stop = None
    if choice == "local":
        from sagastream.local import kafka as localkafka

        was_running = localkafka.status()["running"]
        found = Broker(
            "local Apache Kafka (Maven Central)", localkafka.start(), localkafka.KAFKA_VERSION
        )
        if not was_running:
            stop = localkafka.stop
    elif choice == "testcontainers":
        if not _docker_available():
            pytest.fail(
                "SAGASTREAM_TEST_BROKER=testcontainers needs a running Docker engine; none answered"
            )
        from testcontainers.kafka import KafkaContainer

        image = os.environ.get("SAGASTREAM_TEST_KAFKA_IMAGE", "apache/kafka:4.1.1")
        container = KafkaContainer(image).with_kraft()
        container.start()
        found = Broker(
            f"testcontainers ({image})", container.get_bootstrap_server(), image.split(":")[-1]
        )
        stop = container.stop
    else:
        found = Broker("external cluster", choice, "unknown (external cluster)")
    _announce(
        request, f"integration broker: {found.backend} at {found.bootstrap}, Kafka {found.version}"
    )
    yield found
    if stop is not None:
        stop()


@dataclass(frozen=True)
class SchemaRegistry:
    backend: str
    url: str


@pytest.fixture(scope="session")
def registry(request: pytest.FixtureRequest) -> Iterator[SchemaRegistry]:
    """SAGASTREAM_SCHEMA_REGISTRY_URL, or the local Apicurio Registry (started if not running)."""

    def say(message: str) -> None:
        _announce(request, message, remember=False)

    url = os.environ.get("SAGASTREAM_SCHEMA_REGISTRY_URL")
    stop = None
    if url:
        found = SchemaRegistry("external schema registry", url)
    else:
        from sagastream.local import registry as localregistry

        was_running = localregistry.status()["running"]
        name = f"local {localregistry.REGISTRY_NAME} {localregistry.REGISTRY_VERSION}"
        # the first start downloads it (about 20 s): say so rather than look stuck
        found = SchemaRegistry(f"{name} (Maven Central)", localregistry.start(log=say))
        if not was_running:
            stop = localregistry.stop
    _announce(request, f"integration schema registry: {found.backend} at {found.url}")
    yield found
    if stop is not None:
        stop(log=lambda m: None)


@dataclass
class Namespace:
    """A test's private world: settings with a unique prefix, its topology, a client."""

    settings: Settings
    topology: Topology
    client: EventClient

    def topic(self, name: str) -> str:
        return self.settings.topic(name)


@pytest.fixture
def topology_patch() -> Callable[[dict[str, Any]], None] | None:
    """Override in a test module to change topology.yaml (e.g. short timeouts) for its tests."""
    return None


@pytest.fixture
def ns(
    broker: Broker, registry: SchemaRegistry, tmp_path: Path, topology_patch: Any
) -> Iterator[Namespace]:
    from sagastream.ops.admin import create_topics, delete_topics
    from sagastream.wire.registry import Registry, delete_subjects, plan_subjects, register_subjects

    prefix = f"t{uuid.uuid4().hex[:10]}-"
    settings = Settings(
        bootstrap_servers=broker.bootstrap,
        schema_registry_url=registry.url,
        topic_prefix=prefix,
        data_dir=tmp_path / "data",
    )
    if topology_patch is not None:
        data = yaml.safe_load(settings.topology_file.read_text())
        topology_patch(data)
        patched = tmp_path / "topology.yaml"
        patched.write_text(yaml.safe_dump(data))
        settings = settings.model_copy(
            update={"topology_file": patched, "schemas_dir": settings.schemas_path}
        )
    topology = load_topology(settings.topology_file, settings.schemas_path)
    create_topics(settings, topology)
    schemas = Registry(registry.url)
    subjects = plan_subjects(topology, SchemaStore(Settings().schemas_path), settings)
    refused = [o for o in register_subjects(schemas, subjects) if o.failed]
    assert not refused, f"the registry refused {refused}"
    client = EventClient(settings, topology, build_codec(settings), "test")
    yield Namespace(settings, topology, client)
    client.close()
    delete_topics(settings, prefix)
    delete_subjects(schemas, subjects)


@pytest.fixture
def start_workers(ns: Namespace, tmp_path: Path) -> Iterator[Callable[..., WorkerSet]]:
    """Start worker processes (one per role argument) and wait until they consume; stopped after."""
    started: list[WorkerSet] = []

    def start(*roles: str) -> WorkerSet:
        ws = WorkerSet(ns.settings, tmp_path / f"logs-{len(started)}")
        started.append(ws)
        ws.start(list(roles))
        ws.wait_ready()
        return ws

    yield start
    for ws in started:
        ws.stop()


@pytest.fixture
def workers(start_workers: Callable[..., WorkerSet]) -> WorkerSet:
    """An orchestrator process and a process with every order handler, ready to consume."""
    return start_workers("orchestrator", HANDLERS)
