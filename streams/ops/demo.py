"""`sagastream demo`: broker, topics, worker processes, N orders, and a table of outcomes; with
`--console`, a console left running on the run's sagas, and `--stop` to end what it left."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr

from sagastream.core.topology import load_topology
from sagastream.errors import ClusterError, SagastreamError
from sagastream.runtime.settings import Settings
from sagastream.runtime.worker import parse_roles
from sagastream.wire.registry import build_codec, redact_url

OUTCOMES = ("SagaCompleted", "SagaCompensated", "SagaFailed")
# under the data dir: what `demo --console` left running, for `demo --stop`
LEFT_RUNNING = "demo-console.json"
CONSOLE_START_S = 60.0
CONSOLE_STOP_S = 20.0


@dataclass
class WorkerSet:
    """Worker processes started by the demo or a test, one per role (or role list)."""

    settings: Settings
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # process name -> its roles, if not it
    loglevel: str = "info"  # their logs are files, read when something went wrong
    # the interpreter that runs them; another install's lets the bench measure another release
    python: str = sys.executable

    def start(
        self, roles: list[str], extra_env: dict[str, str] | None = None, name: str | None = None
    ) -> None:
        """A process per role (or role list), named by it unless `name` is given (one role:
        a second process of a role needs a name of its own, for its log and its entry)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **settings_env(self.settings), **(extra_env or {})}
        for role in roles:
            proc = name or role
            if name:
                self.roles[name] = role
            log = open(self.log_dir / f"{proc}.log", "ab")  # noqa: SIM115 - owned by the process
            self.procs[proc] = subprocess.Popen(
                [
                    *(self.python, "-m", "sagastream.ops.cli", "worker"),
                    *("--role", role, "--loglevel", self.loglevel),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        for role, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{role}.log").read_text(errors="replace")[-3000:]
                raise SagastreamError(f"worker {role} exited with {proc.returncode}:\n{tail}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until every worker's consumer group is stable with partitions assigned."""
        from confluent_kafka import ConsumerGroupState

        from sagastream.ops.admin import admin_client

        admin = admin_client(self.settings)
        topology = load_topology(self.settings.topology_file, self.settings.schemas_path)
        groups = sorted(
            {
                self.settings.group(r)
                for proc in self.procs
                for r in parse_roles(self.roles.get(proc, proc), topology)
            }
        )
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            described = admin.describe_consumer_groups(groups, request_timeout=10)
            ready = 0
            for future in described.values():
                try:
                    group = future.result()
                except Exception:
                    continue
                if group.state == ConsumerGroupState.STABLE and any(
                    m.assignment.topic_partitions for m in group.members
                ):
                    ready += 1
            if ready == len(groups):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"workers not ready after {timeout}s ({ready}/{len(groups)} groups); logs in {self.log_dir}"
                )
            time.sleep(0.5)

    def kill(self, role: str) -> None:
        """SIGKILL one worker (crash tests)."""
        proc = self.procs.pop(role)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def terminate(self, role: str, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM one worker and wait: (exit code, seconds it took to exit)."""
        proc = self.procs.pop(role)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return code, time.monotonic() - started

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


@dataclass
class Infrastructure:
    """A run's broker and registry (without a prefix), its topic prefix and what it registered,
    and whether it started the broker and registry itself."""

    settings: Settings
    prefix: str
    subjects: list[Any] = field(default_factory=list)
    started_broker: bool = False
    started_registry: bool = False


def run_prefix(name: str) -> str:
    """`<name>-<time>-<random>-`: the time says when the run began; the random part keeps two
    runs begun in the same second (two test workers, two people on one broker) from sharing
    topics and groups, and one's clean-up from deleting the other's topics."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}-"


@contextlib.contextmanager
def local_infrastructure(
    name: str, keep: bool, out: TextIO, leave_running: bool = False
) -> Iterator[Infrastructure]:
    """The broker and registry of SAGASTREAM_* settings, else local ones started here; a prefix
    for the run (`run_prefix`); at the end its topics, stores, ledgers and subjects removed
    (unless `keep`) and what was started here stopped (unless `leave_running`: all is left for
    a console to show, until `demo --stop`)."""
    from sagastream.local import kafka as localkafka
    from sagastream.local import registry as localregistry

    def log(message: str) -> None:
        print(message, file=out, flush=True)

    env_settings = Settings()
    bootstrap, registry_url = env_settings.bootstrap_servers, env_settings.schema_registry_url
    started_broker = started_registry = False
    if "SAGASTREAM_BOOTSTRAP_SERVERS" not in os.environ:
        started_broker = not localkafka.status()["running"]
        bootstrap = localkafka.start(log=log)
    if not registry_url:
        started_registry = not localregistry.status()["running"]
        registry_url = localregistry.start(log=log)
    update: dict[str, Any] = {"bootstrap_servers": bootstrap, "schema_registry_url": registry_url}
    if not env_settings.topology_file.is_file() and "SAGASTREAM_TOPOLOGY_FILE" not in os.environ:
        # an installed sagastream, run outside a project: the demo's own files, in the package
        examples = Path(str(resources.files("sagastream.examples")))
        update |= {"topology_file": examples / "topology.yaml", "schemas_dir": examples / "schemas"}
    settings = env_settings.model_copy(update=update)
    infra = Infrastructure(
        settings,
        run_prefix(name),
        started_broker=started_broker,
        started_registry=started_registry,
    )
    left = False
    try:
        yield infra
        left = leave_running  # a run that failed leaves nothing running
    finally:
        if not left:
            _tear_down(infra, keep, log)


def _tear_down(infra: Infrastructure, keep: bool, log: Callable[[str], None]) -> None:
    """The run's topics, stores and subjects removed (unless `keep`), and the broker and
    registry stopped if the run started them."""
    from sagastream.local import kafka as localkafka
    from sagastream.local import registry as localregistry

    settings = infra.settings
    if not keep:
        remove_run(settings, infra.prefix, None if infra.started_registry else infra.subjects)
    if infra.started_broker:
        localkafka.stop(log=log)
    if infra.started_registry and keep:
        log(
            f"schema registry left running at {redact_url(str(settings.schema_registry_url))}: "
            "the kept topics' schema ids live only in its memory (`sagastream registry stop` "
            "when done)"
        )
    elif infra.started_registry:
        localregistry.stop(log=log)


def remove_run(settings: Settings, prefix: str, subjects: list[Any] | None) -> None:
    """A run's topics, stores and ledgers, and its registry subjects (None: leave them, in a
    registry that is stopped anyway) removed."""
    from sagastream.ops.admin import delete_topics
    from sagastream.wire.registry import Registry, delete_subjects

    delete_topics(settings, prefix)
    for path in settings.data_dir.glob(f"{prefix}*"):
        shutil.rmtree(path, ignore_errors=True)
    # the simulated services' idempotency ledgers (sagastream.examples.base.ledger_path)
    for path in (settings.data_dir / "external").glob(f"{prefix}*"):
        path.unlink(missing_ok=True)
    if subjects:
        delete_subjects(
            Registry.for_settings(settings, str(settings.schema_registry_url)), subjects
        )


def settings_env(settings: Settings) -> dict[str, str]:
    env = {
        "SAGASTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "SAGASTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "SAGASTREAM_DATA_DIR": str(settings.data_dir),
        "SAGASTREAM_TOPOLOGY_FILE": str(settings.topology_file),
        "SAGASTREAM_SCHEMAS_DIR": str(settings.schemas_path),
    }
    if settings.app:
        env["SAGASTREAM_APP"] = settings.app
    if settings.schema_registry_url:
        env["SAGASTREAM_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    return {**env, **_connection_env(settings)}


# the connection settings a worker inherits as they are (secrets included: its own environment)
_CONNECTION = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_key_password",
    "librdkafka_file",
    "schema_registry_username",
    "schema_registry_password",
    "schema_registry_token",
    "schema_registry_cafile",
    "schema_registry_certfile",
    "schema_registry_keyfile",
)


def _connection_env(settings: Settings) -> dict[str, str]:
    env = {}
    for name in _CONNECTION:
        value = getattr(settings, name)
        if value is not None:
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            env[f"SAGASTREAM_{name.upper()}"] = text
    return env


def order_fields(order_id: str, rng: random.Random) -> tuple[dict[str, Any], str]:
    """An order and the outcome it is built to reach (a seeded mix of failures)."""
    fields: dict[str, Any] = {
        "order_id": order_id,
        "customer_id": f"cust-{rng.randrange(1000)}",
        "email": "buyer@example.com",
        "amount_cents": rng.randrange(500, 50_000),
        "currency": "EUR",
        "card_token": "tok_visa",
        "items": [{"sku": f"SKU-{rng.randrange(100)}", "quantity": rng.randrange(1, 4)}],
        "shipping_address": "1 Main Street, Springfield",
        "priority": "high" if rng.random() < 0.2 else "normal",
        "has_app": rng.random() < 0.5,
    }
    roll = rng.random()
    if roll < 0.10:
        fields["card_token"] = "tok_decline"
    elif roll < 0.18:
        fields["items"].append({"sku": "OOS-42", "quantity": 1})
    elif roll < 0.25:
        fields["shipping_address"] = "Nowhere Lane 0"
    else:
        return fields, "SagaCompleted"
    return fields, "SagaCompensated"


def progress(out: TextIO, done: int, total: int, started: float) -> None:
    """A progress bar redrawn in place on a terminal; elsewhere (CI, a pipe) a line per 10%."""
    width = 30
    filled = int(width * done / max(total, 1))
    line = f"  [{'#' * filled}{'.' * (width - filled)}] {done}/{total} sagas ended  {time.monotonic() - started:5.1f}s"
    if out.isatty():
        out.write("\r" + line)
    elif done == total or done % max(1, total // 10) == 0:
        out.write(line + "\n")
    out.flush()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_demo(
    orders: int,
    seed: int,
    timeout: float,
    keep: bool,
    out: TextIO = sys.stdout,
    console: bool = False,
) -> int:
    """Run the order saga demo end to end; returns the exit code (non-zero if any saga is stuck).
    With `console`, the run's topics, the broker and the registry are left for a console on its
    sagas, started last; `stop_demo` ends them."""
    if console:
        stop_demo(Settings(), out, quiet=True)  # one demo console at a time: the last one's
    with local_infrastructure("demo", keep, out, leave_running=console) as infra:
        code = _run_orders(infra, orders, seed, timeout, out)
        if console:
            left = start_console(infra, out)
            print("\n".join(console_lines(left)), file=out)
    return code


def _run_orders(infra: Infrastructure, orders: int, seed: int, timeout: float, out: TextIO) -> int:
    from sagastream.ops.admin import create_topics
    from sagastream.ops.client import EventClient
    from sagastream.wire.codec import SchemaStore
    from sagastream.wire.registry import Registry, plan_subjects, register_subjects

    prefix = infra.prefix
    settings = infra.settings.model_copy(update={"topic_prefix": prefix})
    registry_url = str(settings.schema_registry_url)
    topology = load_topology(settings.topology_file, settings.schemas_path)
    report = create_topics(settings, topology)
    print(
        f"broker {settings.bootstrap_servers}: created {len(report.created)} topics with prefix "
        f"{prefix}",
        file=out,
    )
    subjects = plan_subjects(topology, SchemaStore(settings.schemas_path), settings)
    infra.subjects += subjects
    workers = WorkerSet(settings, settings.data_dir / "demo-logs" / prefix.rstrip("-"))
    client = EventClient(settings, topology, build_codec(settings), "demo")
    try:
        registered = register_subjects(Registry.for_settings(settings, registry_url), subjects)
        if any(o.failed for o in registered):
            refused = ", ".join(o.subject.name for o in registered if o.failed)
            raise ClusterError(
                f"schema registry {redact_url(registry_url)} refused schemas for {refused}"
            )
        print(
            f"schema registry {redact_url(registry_url)}: registered {len(subjects)} subjects",
            file=out,
        )
        t0 = time.monotonic()
        roles = ["orchestrator", *topology.handlers_for("order")]
        workers.start(roles)
        workers.wait_ready()
        print(f"{len(roles)} worker processes ready in {time.monotonic() - t0:.1f}s", file=out)
        rng = random.Random(seed)
        expected: dict[str, str] = {}
        sent_ms: dict[str, int] = {}
        published = time.monotonic()
        for i in range(orders):
            order_id = f"order-{seed}-{i:05d}"
            fields, expected[order_id] = order_fields(order_id, rng)
            sent_ms[order_id] = client.publish("OrderPlaced", order_id, fields)["occurred_at"]
        client.flush()
        print(f"published {orders} orders", file=out)
        results = _collect(
            client,
            settings.topic(topology.sagas["order"].outcome_topic),
            sent_ms,
            timeout,
            workers,
            out,
        )
        elapsed = time.monotonic() - published
    finally:
        client.close()
        workers.stop()
    return _report(results, expected, out, elapsed)


def _collect(
    client: Any,
    topic: str,
    sent_ms: dict[str, int],
    timeout: float,
    workers: WorkerSet,
    out: TextIO,
) -> dict[str, tuple[str, float]]:
    results: dict[str, tuple[str, float]] = {}
    started = time.monotonic()
    last_check = started
    for msg in client.stream([topic], timeout):
        if msg.event_type in OUTCOMES and msg.record is not None:
            key = msg.record["meta"]["saga_key"]
            if key in sent_ms and key not in results:
                results[key] = (
                    msg.event_type,
                    (msg.record["meta"]["occurred_at"] - sent_ms[key]) / 1000,
                )
                progress(out, len(results), len(sent_ms), started)
        if time.monotonic() - last_check > 2:
            workers.check_alive()
            last_check = time.monotonic()
        if len(results) == len(sent_ms):
            break
    out.write("\n")
    return results


def _report(
    results: dict[str, tuple[str, float]], expected: dict[str, str], out: TextIO, elapsed: float
) -> int:
    counts = {"completed": 0, "compensated": 0, "failed": 0}
    names = dict(zip(OUTCOMES, counts, strict=True))
    for outcome, _ in results.values():
        counts[names[outcome]] += 1
    stuck = len(expected) - len(results)
    unexpected = sum(1 for k, (o, _) in results.items() if o != expected[k])
    latencies = [lat for _, lat in results.values()]
    print("\n  outcome        sagas", file=out)
    print("  -------------  -----", file=out)
    for name, n in [*counts.items(), ("stuck", stuck)]:
        print(f"  {name:<13}  {n:5d}", file=out)
    print(f"  {'total':<13}  {len(expected):5d}", file=out)
    print(
        f"\n  saga latency  (OrderPlaced to outcome; all orders are sent at once, so queueing counts)"
        f"\n                p50 {percentile(latencies, 0.5) * 1000:.0f} ms   p99 {percentile(latencies, 0.99) * 1000:.0f} ms"
        f"\n  throughput    {len(results) / elapsed:.1f} sagas/s ({len(results)} ended {elapsed:.1f} s after the first order was published)",
        file=out,
    )
    if unexpected:
        print(
            f"  {unexpected} sagas ended differently from what their order was built for", file=out
        )
    return 1 if stuck or unexpected else 0


# ------------------------------------------------------------------------- the demo's console


@dataclass(frozen=True)
class LeftRunning:
    """What `demo --console` left running: the console's process and address, the run's topic
    prefix, broker, registry and subjects (none kept when the demo's own registry is stopped
    with it), and whether the demo started the broker and registry (`--stop` stops them)."""

    pid: int
    address: str
    prefix: str
    bootstrap: str
    registry_url: str
    subjects: list[str]
    started_broker: bool
    started_registry: bool


def console_lines(left: LeftRunning) -> list[str]:
    """What the demo prints last: where its console is, and how to stop it."""
    started = left.started_broker or left.started_registry
    also = ", and stops the local broker and registry it started" if started else ""
    return [
        "",
        f"  console: {left.address}  (this run's sagas, topic prefix {left.prefix})",
        f"  stop it: make demo-stop (sagastream demo --stop; it removes the run's topics{also})",
    ]


def start_console(infra: Infrastructure, out: TextIO) -> LeftRunning:
    """`sagastream console` on the run's sagas, in a session of its own (it outlives the demo),
    at SAGASTREAM_CONSOLE_PORT (8089); recorded under the data dir for `stop_demo`. An error
    with the console's words if it does not listen."""
    settings = infra.settings.model_copy(update={"topic_prefix": infra.prefix})
    log_path = settings.data_dir / "demo-logs" / f"{infra.prefix}console.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sagastream.ops.cli", "console"],
            env={**os.environ, **settings_env(settings)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    left = LeftRunning(
        pid=proc.pid,
        address=_listening(proc, log_path),
        prefix=infra.prefix,
        bootstrap=settings.bootstrap_servers,
        registry_url=str(settings.schema_registry_url),
        subjects=[] if infra.started_registry else [s.name for s in infra.subjects],
        started_broker=infra.started_broker,
        started_registry=infra.started_registry,
    )
    (settings.data_dir / LEFT_RUNNING).write_text(json.dumps(dataclasses.asdict(left)))
    return left


def _listening(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    """The console's address once it says it listens."""
    deadline = time.monotonic() + CONSOLE_START_S
    while not (found := re.search(r" on (http://\S+/)", log_path.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_console(proc.pid)
            raise SagastreamError(
                f"the demo's console did not start; its log ({log_path}) ends:\n"
                f"{log_path.read_text(errors='replace')[-2000:]}\nIf another process has its "
                "port, set SAGASTREAM_CONSOLE_PORT to a free one"
            )
        time.sleep(0.2)
    return found.group(1)


def stop_demo(settings: Settings, out: TextIO = sys.stdout, quiet: bool = False) -> int:
    """End what `demo --console` left running: its console, the run's topics, stores and
    subjects, and the broker and registry if the demo started them."""
    from sagastream.local import kafka as localkafka
    from sagastream.local import registry as localregistry
    from sagastream.wire.registry import Registry, delete_subject_names

    record = settings.data_dir / LEFT_RUNNING
    if not record.is_file():
        if not quiet:
            print(f"no demo console is running (none recorded in {record})", file=out)
        return 0
    left = LeftRunning(**json.loads(record.read_text()))
    _stop_console(left.pid)
    run = settings.model_copy(
        update={"bootstrap_servers": left.bootstrap, "schema_registry_url": left.registry_url}
    )
    remove_run(run, left.prefix, None)
    if left.subjects:
        delete_subject_names(Registry.for_settings(run, left.registry_url), left.subjects)
    if left.started_broker:
        localkafka.stop(log=lambda m: print(m, file=out))
    if left.started_registry:
        localregistry.stop(log=lambda m: print(m, file=out))
    record.unlink()
    print(f"stopped the demo's console ({left.address}); removed the run {left.prefix}", file=out)
    return 0


def _stop_console(pid: int) -> None:
    """SIGTERM the console's session and wait for it to end; only if that pid still is a
    console (it may have ended, and its pid gone to another process)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if b"sagastream.ops.cli" not in argv or b"console" not in argv:
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + CONSOLE_STOP_S
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.killpg(pid, signal.SIGKILL)
