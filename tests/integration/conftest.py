"""One broker fixture for every integration test; the backend is chosen by SAGASTREAM_TEST_BROKER.

- `local` (default): real Apache Kafka from Maven Central on 127.0.0.1 (sagastream.local.kafka);
- `testcontainers`: Kafka and Apicurio Registry in containers (a Docker engine and the images
  of `scripts/docker-images`, or others named by SAGASTREAM_TEST_KAFKA_IMAGE and
  SAGASTREAM_TEST_REGISTRY_IMAGE);
- `host:port[,host:port]`: an existing cluster.
One schema registry fixture: SAGASTREAM_SCHEMA_REGISTRY_URL, else the container's with
`testcontainers`, else the local Apicurio Registry (sagastream.local.registry). Each test gets
a unique topic prefix, consumer groups and schema subjects (see `ns`).

Under pytest-xdist each worker has its own session fixtures. The local broker and registry are
shared by the whole run: the first worker to need one starts it and the controller stops it
after the last worker (tests/conftest.py); containers are each worker's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import urllib.request
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
from tests.conftest import note_started, run_lock, say_in_summary
from tests.integration.tracing import jaeger  # noqa: F401 - the fixture, for every test here

HANDLERS = "payment,inventory,shipping,notification"

# Built here by scripts/docker-images (no registry can be reached); a unit test keeps these
# names equal to the script's. With Docker Hub: confluentinc/cp-kafka:7.6.0 (the Confluent
# contract, KRaft from 7.0.0) and apicurio/apicurio-registry-mem:2.6.13.Final.
KAFKA_IMAGE = "localhost/sagastream/kafka:8.1.1"
REGISTRY_IMAGE = "localhost/sagastream/apicurio-registry:2.6.13.Final"
ENV_KAFKA_IMAGE = "SAGASTREAM_TEST_KAFKA_IMAGE"
ENV_REGISTRY_IMAGE = "SAGASTREAM_TEST_REGISTRY_IMAGE"
# one node: what KafkaContainer leaves at the broker's defaults of 3 and 2, so that
# init_transactions would fail with INVALID_REPLICATION_FACTOR
SINGLE_NODE_ENV = {
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_MIN_INSYNC_REPLICAS": "1",
    "KAFKA_DEFAULT_REPLICATION_FACTOR": "1",
    "KAFKA_NUM_PARTITIONS": "4",
    "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "8",
    "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "8",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
}


LOG_TAIL_CHARS = 4000  # of each log a failed test leaves under its tmp_path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the tails of the logs its processes wrote under its
    tmp_path (workers, brokers): a failure seen once in CI must say why."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not isinstance(tmp, Path) or not tmp.is_dir():
        return
    # a broker's partition segments are named *.log too: digits only
    logs = [p for p in sorted(tmp.rglob("*.log")) if not p.stem.isdigit()]
    for log in logs[:12]:
        with contextlib.suppress(OSError):
            text = log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
            report.sections.append((f"log {log.relative_to(tmp)} (tail)", text))


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


def _container_image(env: str, default: str) -> str:
    """The image named by `env`, else `default`, which must have been built here."""
    image = os.environ.get(env) or default
    if image == default:
        import docker

        try:
            docker.from_env().images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(
                f"SAGASTREAM_TEST_BROKER=testcontainers: no image {image}; build it with "
                f"`scripts/docker-images build`, or name another with {env}"
            )
    return image


def _testcontainers() -> None:
    """Containers are reached on 127.0.0.1 at their published ports (not through a bridge
    address), and no Ryuk reaper is started (its image would be pulled): the fixtures stop
    what they start."""
    from testcontainers.core.config import ConnectionMode, testcontainers_config

    testcontainers_config.ryuk_disabled = True
    if not testcontainers_config.tc_host_override:
        testcontainers_config.tc_host_override = "127.0.0.1"
    if testcontainers_config.connection_mode_override is None:
        testcontainers_config.connection_mode_override = ConnectionMode.docker_host


def _publish_on_loopback(container: Any, port: int) -> None:
    """Publish `port` on 127.0.0.1 only, at a free port (docker-py's ("ip",) binding form)."""
    container.ports[str(port)] = ("127.0.0.1",)


def _start_kafka_container() -> tuple[Any, str, str]:
    """KafkaContainer (KRaft) with one node's transaction settings: (container, bootstrap,
    image)."""
    from testcontainers.community.kafka import KafkaContainer

    _testcontainers()
    image = _container_image(ENV_KAFKA_IMAGE, KAFKA_IMAGE)
    container = KafkaContainer(image).with_kraft()
    _publish_on_loopback(container, container.port)
    for name, value in SINGLE_NODE_ENV.items():
        container.with_env(name, value)
    container.start(timeout=120)
    return container, container.get_bootstrap_server(), image


def _kafka_version(container: Any) -> str:
    """KAFKA_VERSION of the container's environment (this project's image sets it)."""
    env = container.get_wrapped_container().attrs["Config"]["Env"] or []
    versions = [e.split("=", 1)[1] for e in env if e.startswith("KAFKA_VERSION=")]
    return versions[0] if versions else f"unknown (image {container.image})"


def _start_registry_container() -> tuple[Any, str, str]:
    """Apicurio Registry (in memory) in a container, answering its Confluent API; its global
    compatibility is BACKWARD, as the local one's: (container, url, image)."""
    from testcontainers.core.container import DockerContainer

    _testcontainers()
    image = _container_image(ENV_REGISTRY_IMAGE, REGISTRY_IMAGE)
    container = DockerContainer(image)
    _publish_on_loopback(container, 8080)
    container.with_env("REGISTRY_REST_ARTIFACT_DELETION_ENABLED", "true")
    container.start()
    try:
        url = (
            f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8080)}"
            "/apis/ccompat/v7"
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 120
        while True:
            try:
                with opener.open(f"{url}/subjects", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = b"".join(container.get_logs()).decode(errors="replace")[-3000:]
                raise RuntimeError(f"{image} did not answer {url}/subjects in 120 s:\n{logs}")
            time.sleep(0.5)
        request = urllib.request.Request(
            f"{url}/config",
            data=json.dumps({"compatibility": "BACKWARD"}).encode(),
            method="PUT",
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        opener.open(request, timeout=10).close()
    except BaseException:
        container.stop()
        raise
    return container, url, image


def _announce(request: pytest.FixtureRequest, line: str, remember: bool = True) -> None:
    """Say it now, past output capture, and again in the summary next to the test counts."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        (reporter.write_line if reporter else print)(line)
    if remember:
        say_in_summary(request.config, line)


def _start_shared(
    request: pytest.FixtureRequest,
    service: str,
    running: Callable[[], bool],
    start: Callable[[], str],
) -> str:
    """Start a local service once for the whole run (its xdist workers too): whoever finds it
    down starts it, and the run stops it at its end; one found running is left running."""
    with run_lock(request.config, service):
        if not running():
            found = start()
            note_started(request.config, service)
            return found
        return start()  # running: start() only waits until it answers


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    choice = os.environ.get("SAGASTREAM_TEST_BROKER", "local")
    stop = None
    if choice == "local":
        from sagastream.local import kafka as localkafka

        bootstrap = _start_shared(
            request,
            "local-kafka",
            lambda: bool(localkafka.status()["running"]),
            localkafka.start,
        )
        found = Broker("local Apache Kafka (Maven Central)", bootstrap, localkafka.KAFKA_VERSION)
    elif choice == "testcontainers":
        if not _docker_available():
            pytest.fail(
                "SAGASTREAM_TEST_BROKER=testcontainers needs a running Docker engine; none answered"
            )
        container, bootstrap, image = _start_kafka_container()
        found = Broker(f"testcontainers, image {image}", bootstrap, _kafka_version(container))
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
    """SAGASTREAM_SCHEMA_REGISTRY_URL, a container with the testcontainers backend, or the
    local Apicurio Registry (started if not running)."""

    def say(message: str) -> None:
        _announce(request, message, remember=False)

    url = os.environ.get("SAGASTREAM_SCHEMA_REGISTRY_URL")
    stop = None
    if url:
        found = SchemaRegistry("external schema registry", url)
    elif os.environ.get("SAGASTREAM_TEST_BROKER") == "testcontainers":
        container, url, image = _start_registry_container()
        found = SchemaRegistry(f"testcontainers, image {image}", url)
        stop = lambda log: container.stop()  # noqa: E731
    else:
        from sagastream.local import registry as localregistry

        name = f"local {localregistry.REGISTRY_NAME} {localregistry.REGISTRY_VERSION}"
        url = _start_shared(
            request,
            "local-registry",
            lambda: bool(localregistry.status()["running"]),
            # the first start downloads it (about 20 s): say so rather than look stuck
            lambda: localregistry.start(log=say),
        )
        found = SchemaRegistry(f"{name} (Maven Central)", url)
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
def project() -> Path | None:
    """Override in a test module with a topology file (its schemas/ beside it, its app named in
    it) to run that project instead of the demo's."""
    return None


@pytest.fixture
def ns(
    broker: Broker,
    registry: SchemaRegistry,
    tmp_path: Path,
    topology_patch: Any,
    project: Path | None,
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
    if project is not None:
        settings = settings.model_copy(
            update={"topology_file": project.absolute(), "schemas_dir": None}
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
    subjects = plan_subjects(topology, SchemaStore(settings.schemas_path), settings)
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


@pytest.fixture(scope="session")
def secured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A SASL_SSL + mTLS node with ACLs (tests/integration/secured.py), for the tests that ask."""
    from tests.integration.secured import start_secured

    found = start_secured(tmp_path_factory.mktemp("secured"))
    yield found
    found.stop()


@pytest.fixture(scope="session")
def registry_gate(secured_broker: Any, registry: SchemaRegistry) -> Iterator[Any]:
    """The registry behind HTTPS and basic auth (secured.RegistryGate), for the secured tests."""
    from tests.integration.secured import RegistryGate

    gate = RegistryGate(secured_broker.pki, registry.url, "sagastream")
    yield gate
    gate.stop()
