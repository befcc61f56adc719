"""docker-compose.yml end to end on a Docker engine, with the images of scripts/docker-images.

Opt-in: `make test` does not collect tests/compose (pyproject's testpaths), so it needs no
Docker; `pytest tests/compose` runs it (CI does), and fails without an engine. The stack runs
as its own compose project on free loopback ports; orders go in from this process through
`sagastream.Client`, every saga's outcome is read back from sagas.outcomes (read_committed),
one orchestrator container is SIGKILLed while a second batch runs, and the sagas must still
each end once, as built for. Prometheus must scrape every worker replica, and Jaeger must be
healthy with its query API on its published port, and the console must show the overview on
its, its counts those of sagas.outcomes. Once the handler replicas stop, the alert
SagastreamWorkerRoleDown fires (the shipped rules, loaded with `for: 0s` through a compose
override, so the test need not wait minutes). Everything is torn down (volumes too),
whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream import Client, Settings
from sagastream.examples.events import OrderPlaced
from sagastream.ops.demo import order_fields

ROOT = Path(__file__).resolve().parents[2]
OUTCOMES = ("SagaCompleted", "SagaCompensated", "SagaFailed")
WORKERS = {"orchestrator": 2, "handlers": 2}  # the replicas docker-compose.yml asks for
HEALTHY_TIMEOUT_S = 300.0
ORDERS = 150  # per batch
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    kafka_port: int
    registry_port: int
    prometheus_port: int
    jaeger_port: int
    console_port: int
    override: Path  # a compose file of the test's own, over docker-compose.yml

    def compose(self, *args: str, timeout: float = 600) -> str:
        files = ("-f", str(ROOT / "docker-compose.yml"), "-f", str(self.override))
        cmd = ["docker-compose", "-p", self.project, *files]
        proc = subprocess.run(
            [*cmd, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"`docker-compose {' '.join(args)}` failed ({proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr)[-4000:]}"
            )
        return proc.stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def inspect(self, container: str, template: str) -> str:
        return _docker("inspect", "--format", template, container)

    def settings(self) -> Settings:
        return Settings(
            bootstrap_servers=f"127.0.0.1:{self.kafka_port}",
            schema_registry_url=f"http://127.0.0.1:{self.registry_port}/apis/ccompat/v7",
            topology_file=ROOT / "topology.yaml",
        )

    def logs(self) -> str:
        with contextlib.suppress(Exception):
            return self.compose("logs", "--no-color", "--tail", "40", timeout=60)
        return "(no logs)"


def _wait_healthy(stack: Stack) -> None:
    """Every worker replica's HEALTHCHECK (/healthz) passes."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while True:
        states = {
            container: stack.inspect(container, "{{.State.Health.Status}}")
            for service in WORKERS
            for container in stack.containers(service)
        }
        counts = {service: len(stack.containers(service)) for service in WORKERS}
        if counts == WORKERS and set(states.values()) == {"healthy"}:
            return
        assert time.monotonic() < deadline, f"workers not healthy: {counts} {states}"
        time.sleep(2)


def _fast_alerts(folder: Path) -> Path:
    """A compose override whose Prometheus loads the shipped alert rules with `for: 0s`."""
    rules = yaml.safe_load((ROOT / "scripts" / "prometheus-alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    (folder / "alerts.yml").write_text(yaml.safe_dump(rules))
    override = {
        "services": {
            "prometheus": {"volumes": [f"{folder / 'alerts.yml'}:/etc/prometheus/alerts.yml:ro"]}
        }
    }
    (folder / "override.yml").write_text(yaml.safe_dump(override))
    return folder / "override.yml"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
    kafka_port, registry_port, prometheus_port, jaeger_port, console_port = _free_ports(5)
    stack = Stack(
        # CI names it, to tear it down whatever becomes of this process
        os.environ.get("SAGASTREAM_COMPOSE_PROJECT") or f"sagastream-smoke-{os.getpid()}",
        {
            **os.environ,
            "SAGASTREAM_KAFKA_PORT": str(kafka_port),
            "SAGASTREAM_REGISTRY_PORT": str(registry_port),
            "SAGASTREAM_PROMETHEUS_PORT": str(prometheus_port),
            "SAGASTREAM_JAEGER_QUERY_PORT": str(jaeger_port),
            "SAGASTREAM_CONSOLE_PORT": str(console_port),
        },
        kafka_port,
        registry_port,
        prometheus_port,
        jaeger_port,
        console_port,
        _fast_alerts(tmp_path_factory.mktemp("compose")),
    )
    started = time.monotonic()
    try:
        stack.compose("up", "-d", "--no-build")
        _wait_healthy(stack)
        print(f"\ncompose stack {stack.project} healthy in {time.monotonic() - started:.1f}s")
        yield stack
    except BaseException:
        print(f"\n--- compose logs ---\n{stack.logs()}")
        raise
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "20")


def _outcomes(client: Client, keys: set[str], timeout: float) -> list[Any]:
    """The outcome events, once every key has one (or the timeout passed)."""
    topic = client.settings.topic("sagas.outcomes")
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in client.events.read_to_end([topic]) if m.event_type in OUTCOMES]
        if {m.key.decode() for m in found if m.key} >= keys or time.monotonic() > deadline:
            return found
        time.sleep(2)


def _check(expected: dict[str, str], outcomes: list[Any]) -> None:
    """Each saga ended once, and as it was built to."""
    ours = [m for m in outcomes if m.key and m.key.decode() in expected]
    per_saga = Counter(m.key.decode() for m in ours)
    assert sorted(set(expected) - set(per_saga)) == [], "sagas without an outcome"
    assert {k: n for k, n in per_saga.items() if n != 1} == {}, "sagas with several outcomes"
    wrong = {m.key.decode(): m.event_type for m in ours if m.event_type != expected[m.key.decode()]}
    assert wrong == {}, "sagas that ended otherwise than built for"


def _orders(name: str, rng: random.Random) -> dict[str, tuple[dict[str, Any], str]]:
    return {f"{name}-{i:04d}": order_fields(f"{name}-{i:04d}", rng) for i in range(ORDERS)}


def _crash(stack: Stack, container: str) -> None:
    """SIGKILL the container's main process from the host, as a crash would: the restart
    policy brings the container back (`docker kill` would count as a deliberate stop)."""
    pid = int(stack.inspect(container, "{{.State.Pid}}"))
    if os.geteuid() == 0:
        os.kill(pid, signal.SIGKILL)
    else:  # not root: the engine kills it, and it is started again by hand
        _docker("kill", "--signal", "KILL", container)
        _docker("start", container)


def _prometheus(stack: Stack, path: str) -> Any:
    url = f"http://127.0.0.1:{stack.prometheus_port}/api/v1/{path}"
    with _OPENER.open(url, timeout=10) as response:
        return json.load(response)["data"]


def _prometheus_targets(stack: Stack) -> list[dict[str, Any]]:
    return list(_prometheus(stack, "targets")["activeTargets"])


def test_orders_end_once_through_an_orchestrator_crash(stack: Stack) -> None:
    rng = random.Random(2026)
    with Client(stack.settings()) as client:
        before = _orders("before", rng)
        for fields, _ in before.values():
            client.start(OrderPlaced.model_validate(fields), wait=False)
        client.events.flush()
        expected = {key: outcome for key, (_, outcome) in before.items()}
        _check(expected, _outcomes(client, set(expected), timeout=180))

        # a second batch, paced over ~8 s, with an orchestrator crashing 2 s in
        during = _orders("during", rng)
        victim = stack.containers("orchestrator")[0]
        restarts = int(stack.inspect(victim, "{{.RestartCount}}"))
        sent = threading.Event()

        def publish() -> None:
            for fields, _ in during.values():
                client.start(OrderPlaced.model_validate(fields), wait=False)
                time.sleep(8.0 / ORDERS)
            sent.set()

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        time.sleep(2)
        _crash(stack, victim)
        publisher.join(60)
        assert sent.is_set(), "the second batch was not published"
        client.events.flush()
        expected |= {key: outcome for key, (_, outcome) in during.items()}
        _check(expected, _outcomes(client, set(expected), timeout=240))

    # the crashed container came back by itself (root: a real crash and the restart policy)
    if os.geteuid() == 0:
        deadline = time.monotonic() + 60
        while int(stack.inspect(victim, "{{.RestartCount}}")) <= restarts:
            assert time.monotonic() < deadline, "the crashed orchestrator was not restarted"
            time.sleep(1)
    _wait_healthy(stack)

    # Prometheus scrapes every worker replica
    deadline = time.monotonic() + 60
    while True:
        targets = _prometheus_targets(stack)
        up = [t for t in targets if t.get("health") == "up"]
        if len(up) == sum(WORKERS.values()):
            break
        assert time.monotonic() < deadline, f"Prometheus targets: {targets}"
        time.sleep(2)


def test_jaeger_is_healthy_and_answers_on_its_published_port(stack: Stack) -> None:
    [container] = stack.containers("jaeger")
    deadline = time.monotonic() + 60
    while stack.inspect(container, "{{.State.Health.Status}}") != "healthy":
        assert time.monotonic() < deadline, f"jaeger: {stack.inspect(container, '{{json .State}}')}"
        time.sleep(1)
    url = f"http://127.0.0.1:{stack.jaeger_port}/api/services"
    with _OPENER.open(url, timeout=10) as response:
        assert response.status == 200
        assert isinstance(json.load(response)["data"], list | None)
    # the workers are told where to export (their spans come when tracing is on in them)
    [worker, *_] = stack.containers("orchestrator")
    env = stack.inspect(worker, "{{json .Config.Env}}")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318" in json.loads(env)


def test_the_console_shows_the_overview_on_its_published_port(stack: Stack) -> None:
    """Runs after the crash test: the overview counts its orders' outcomes."""
    [container] = stack.containers("console")
    deadline = time.monotonic() + 90
    while stack.inspect(container, "{{.State.Health.Status}}") != "healthy":
        state = stack.inspect(container, "{{json .State}}")
        assert time.monotonic() < deadline, f"console: {state}"
        time.sleep(1)
    with _OPENER.open(f"http://127.0.0.1:{stack.console_port}/", timeout=60) as response:
        assert response.status == 200
        overview = response.read().decode()
    with Client(stack.settings()) as client:
        topic = client.settings.topic("sagas.outcomes")
        outcomes = client.events.read_to_end([topic])
    row = re.search(r'<tr data-saga="order">(.*?)</tr>', overview, re.S)
    assert row is not None, overview[-3000:]
    for event, series in (("SagaCompleted", "completed"), ("SagaCompensated", "compensated")):
        count = sum(1 for m in outcomes if m.event_type == event)
        assert f'<td class="{series}">{count}</td>' in row.group(1)


def test_stopped_handlers_fire_the_role_down_alert(stack: Stack) -> None:
    """Runs after the crash test: the handler replicas were scraped, and now stop."""
    stack.compose("stop", "handlers", timeout=120)
    deadline = time.monotonic() + 150  # DNS discovery refresh, a scrape, a rule evaluation
    while True:
        alerts = _prometheus(stack, "alerts")["alerts"]
        down = [
            a
            for a in alerts
            if a["labels"]["alertname"] == "SagastreamWorkerRoleDown" and a["state"] == "firing"
        ]
        if down:
            break
        assert time.monotonic() < deadline, f"no SagastreamWorkerRoleDown firing: {alerts}"
        time.sleep(3)
    # the handlers' role fires; the orchestrator, still running, does not
    assert [a["labels"]["role"].split(",")[0] for a in down] == ["payment"]
