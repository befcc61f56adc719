"""sagastream on a secured broker (tests/integration/secured.py): every role under only the ACLs
`sagastream acls` generated for it, over SASL_SSL (SCRAM-SHA-512) and over mTLS; a role with one
ACL fewer fails naming the principal, the operation and the resource. The schema registry is
reached over HTTPS with basic auth (secured.RegistryGate); a wrong password stops a worker at
start; no credential appears in anything the CLI printed or a worker logged."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.topology import load_topology
from sagastream.local.proc import port_open
from sagastream.ops import acls
from sagastream.ops.admin import admin_client
from sagastream.ops.client import EventClient
from sagastream.ops.demo import WorkerSet, settings_env
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore
from sagastream.wire.registry import build_codec
from tests.integration.conftest import Namespace, SchemaRegistry
from tests.integration.helpers import (
    OUTCOMES,
    free_port,
    good_order,
    lifecycle,
    loan_applied,
    planted_dead_letter,
    wait_outcomes,
)
from tests.integration.secured import HOST, RegistryGate, SecuredBroker
from tests.unit import test_readme_secured as readme_secured

pytestmark = pytest.mark.integration

ORDER_HANDLERS = ("payment", "inventory", "shipping", "notification")
Connect = Callable[[Settings, str], Settings]


def cli(settings: Settings, *args: str, env: dict[str, str] | None = None) -> Any:
    """`sagastream ARGS` as a process with these settings (and no other SAGASTREAM_*)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGASTREAM_")}
    done = subprocess.run(
        [sys.executable, "-m", "sagastream.ops.cli", *args],
        env={**clean, **settings_env(settings), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    _CAPTURED.append(f"$ sagastream {' '.join(args)}\n{done.stdout}{done.stderr}")
    return done


# what every `cli` call printed, read by Deployment.assert_no_secret_shown
_CAPTURED: list[str] = []


class Deployment:
    """One test's world on the secured broker: a prefix, a principal per role, its ACLs."""

    def __init__(self, broker: SecuredBroker, gate: RegistryGate, tmp: Path, connect: str) -> None:
        self.prefix = f"s{uuid.uuid4().hex[:8]}-"
        self.tmp = tmp
        base = gate.settings(Settings(topic_prefix=self.prefix))
        self.base = base.model_copy(update={"data_dir": tmp / "data"})
        self.broker = broker
        self.gate = gate
        self.api_token = secrets.token_urlsafe(24)
        self.connect: Connect = broker.scram if connect == "scram" else broker.mtls
        self.admin = broker.admin(self.base)
        self.topology = load_topology(self.base.topology_file, self.base.schemas_path)
        self.workers: list[WorkerSet] = []

    def name(self, role: str) -> str:
        return f"{self.prefix}{role}"

    def principal(self, role: str) -> str:
        return (
            f"User:{self.name(role)}"
            if self.connect == self.broker.scram
            else (f"User:CN={self.name(role)}")
        )

    def settings(self, role: str) -> Settings:
        return self.connect(self.base, self.name(role))

    def grant(
        self, roles: list[str], drop: acls.Acl | None = None, principal: str | None = None
    ) -> list[acls.Acl]:
        """The generated ACLs of `roles` (each as its own principal, or all as `principal`)
        applied by the admin, less `drop`."""
        found = acls.generate(
            self.base, self.topology, roles, {r: principal or self.principal(r) for r in roles}
        )
        acls.apply(self.admin, [a for a in found if a != drop])
        return found

    def start(self, role: str, as_role: str | None = None) -> WorkerSet:
        """A worker process of `role` (roles) connecting as the principal of `as_role`."""
        ws = WorkerSet(self.settings(as_role or role), self.tmp / f"logs-{as_role or role}")
        self.workers.append(ws)
        ws.start([role])
        return ws

    def api_signal(self, role: str, path: str) -> int:
        """`sagastream api` started as `role`'s principal, with a caller token of its own; the
        status of an approval POSTed to `path` with that token."""
        port = free_port()
        log_dir = self.tmp / "logs-api"
        log_dir.mkdir(parents=True, exist_ok=True)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGASTREAM_")}
        env = {**clean, **settings_env(self.settings(role))}
        env["SAGASTREAM_API_TOKENS"] = f"reviewer={self.api_token}"
        with open(log_dir / "api.log", "ab") as log:
            api = subprocess.Popen(
                [sys.executable, "-m", "sagastream.ops.cli", "api", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while not port_open(HOST, port) and api.poll() is None:
                assert time.monotonic() < deadline, "sagastream api did not listen in 60 s"
                time.sleep(0.2)
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
            headers = {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.api_token}",
            }
            conn.request("POST", path, b'{"outcome": "approved"}', headers)
            return conn.getresponse().status
        finally:
            api.terminate()
            api.wait(30)

    def secrets(self) -> list[str]:
        """Every credential of this world: the principals' Kafka passwords, the registry's,
        the API's caller token."""
        return [*self.broker.passwords.values(), self.gate.password, self.api_token]

    def assert_no_secret_shown(self) -> None:
        """No credential in what the CLI printed nor in any worker's log."""
        shown = {f"cli output {n}": text for n, text in enumerate(_CAPTURED)}
        shown |= {str(p): p.read_text(errors="replace") for p in self.tmp.rglob("*.log")}
        assert shown, "nothing was captured to check"
        leaks = [
            (where, s[:4] + "...") for where, t in shown.items() for s in self.secrets() if s in t
        ]
        assert not leaks, f"credentials shown: {leaks}"

    def namespace(self, role: str) -> Namespace:
        settings = self.settings(role)
        client = EventClient(settings, self.topology, build_codec(settings), "test")
        return Namespace(settings, self.topology, client)


@pytest.fixture(params=["scram", "mtls"])
def deployment(
    request: pytest.FixtureRequest,
    secured_broker: SecuredBroker,
    registry: SchemaRegistry,
    registry_gate: RegistryGate,
    tmp_path: Path,
) -> Iterator[Deployment]:
    from sagastream.ops.admin import delete_topics
    from sagastream.wire.registry import Registry, delete_subjects, plan_subjects, register_subjects

    _CAPTURED.clear()
    found = Deployment(secured_broker, registry_gate, tmp_path, request.param)
    subjects = plan_subjects(found.topology, SchemaStore(found.base.schemas_path), found.base)
    schemas = Registry(registry.url)
    assert not [o for o in register_subjects(schemas, subjects) if o.failed]
    yield found
    for ws in found.workers:
        ws.stop()
    delete_topics(found.admin, found.prefix)
    delete_subjects(schemas, subjects)


def test_acls_command_prints_bindings_and_commands_and_applies_them(
    deployment: Deployment,
) -> None:
    """`sagastream acls --role ... --apply` as the admin: the bindings, the kafka-acls.sh lines,
    and the ACLs really on the broker afterwards."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    principal = deployment.principal("payment")
    done = cli(
        deployment.admin,
        *("acls", "--role", "payment", "--principal-map", f"payment={principal}", "--apply"),
    )
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith("kafka-acls.sh")]
    assert (
        f"--allow-principal '{principal}' --operation Read --topic "
        f"'{deployment.prefix}payments.commands'" in "\n".join(commands)
    )
    assert "created 7 ACLs" in done.stdout
    deployment.assert_no_secret_shown()

    admin = admin_client(deployment.admin)

    def described(principal: str, until: Callable[[list[Any]], bool]) -> list[Any]:
        """The principal's ACLs on the broker once `until(them)` holds, or as they are after
        30 s: the node's authorizer takes them from the metadata log a moment after the
        controller accepted them."""
        query = AclBindingFilter(
            ResourceType.ANY,
            None,
            ResourcePatternType.ANY,
            principal,
            None,
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        deadline = time.monotonic() + 30
        while not until(found := list(admin.describe_acls(query).result(30))):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return found

    on_broker = described(principal, lambda found: len(found) >= 7)
    assert len(on_broker) == len(commands) == 7

    # README's "Running against a secured Kafka" applies them as written, run by the admin
    (written,) = [c for c in readme_secured.commands() if "--apply" in c]
    done = readme_secured.run_as_written(written, settings_env(deployment.admin), deployment.tmp)
    _CAPTURED.append(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr
    assert "created 7 ACLs" in done.stdout
    named = re.search(r"payment=(\S+)", written)
    assert named is not None, written

    def what(bindings: list[Any]) -> set[tuple[str, str, str]]:
        return {(str(b.restype), b.name, str(b.operation)) for b in bindings}

    def mine(bindings: list[Any]) -> list[Any]:
        # the CLUSTER one is shared by every prefix (an earlier test's README run made it too)
        return [
            b for b in bindings if b.name.startswith(deployment.prefix) or b.name == acls.CLUSTER
        ]

    # the same ACLs as the command above made, for the README's principal
    found = described(named.group(1), lambda found: what(mine(found)) == what(on_broker))
    assert what(mine(found)) == what(on_broker)


def test_order_saga_each_role_under_its_generated_acls_only(deployment: Deployment) -> None:
    """Topics made by the topic creator, the orchestrator and four handler processes as their
    own principals, an order started by the client role: the saga completes; the operators show
    it and list the dead letters; the read-only operator may not signal."""
    roles = ["orchestrator", *ORDER_HANDLERS, "client", "topic-creator", "operator"]
    deployment.grant([*roles, "operator-readonly"])
    # the loan's checks as one process and principal with both roles' ACLs
    deployment.grant(["credit", "documents"], principal=deployment.principal("loan-checks"))
    created = cli(deployment.settings("topic-creator"), "topics", "create")
    assert created.returncode == 0, created.stderr
    started = [deployment.start(role) for role in ("orchestrator", *ORDER_HANDLERS)]
    started.append(deployment.start("credit,documents", as_role="loan-checks"))
    for ws in started:
        ws.wait_ready()

    shop = deployment.namespace("client")
    shop.client.publish("OrderPlaced", "o-1", good_order("o-1"))
    shop.client.flush()
    shop.client.close()
    viewer = deployment.namespace("operator-readonly")
    outcome = wait_outcomes(viewer, {"o-1"}, timeout=90)["o-1"]
    viewer.client.close()
    assert outcome.event_type == "SagaCompleted"

    for role in ("operator", "operator-readonly"):
        shown = cli(deployment.settings(role), "saga", "show", "order", "o-1")
        assert shown.returncode == 0, shown.stderr
        assert "completed" in shown.stdout.lower()
        listed = cli(deployment.settings(role), "dlq", "list")
        assert listed.returncode == 0, listed.stderr
        assert "Traceback" not in listed.stderr

    # a dead letter the orchestrator wrote (planted here by the admin), fixed: the operator
    # sends it back to its source topic and the saga runs
    planted = deployment.namespace("admin-planter")
    planted.settings = deployment.admin
    planted.client = EventClient(
        deployment.admin, deployment.topology, build_codec(deployment.admin), "test"
    )
    planted_dead_letter(planted, "o-2")
    planted.client.flush()
    planted.client.close()
    redriven = cli(
        deployment.settings("operator"), "dlq", "redrive", "--topic", "orders.events", "--execute"
    )
    assert redriven.returncode == 0, redriven.stderr + redriven.stdout
    viewer = deployment.namespace("operator-readonly")
    assert wait_outcomes(viewer, {"o-2"}, timeout=90)["o-2"].event_type == "SagaCompleted"
    viewer.client.close()

    # a loan waiting for its human review: WRITE on sagas.signals decides it
    shop = deployment.namespace("client")
    shop.client.publish("LoanApplied", "l-1", loan_applied("l-1").fields())
    shop.client.flush()
    shop.client.close()
    viewer = deployment.namespace("operator-readonly")
    lifecycle(viewer, "l-1", until="step_started", step="review", timeout=60)
    viewer.client.close()
    if deployment.connect == deployment.broker.scram:
        # the signals API as the operator principal, its caller authenticated by a token (once:
        # its start costs seconds); its token joins the credentials no output may show
        status = deployment.api_signal("operator", "/sagas/loan/l-1/steps/review/signal")
        assert status == 202
    signal = ("signal", "loan", "l-1", "review", "--outcome", "approved")
    sent = cli(deployment.settings("operator"), *signal)
    assert sent.returncode == 0, sent.stderr
    refused = cli(deployment.settings("operator-readonly"), *signal)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr, refused.stderr
    assert deployment.principal("operator-readonly") in refused.stderr
    assert f"{deployment.prefix}sagas.signals" in refused.stderr
    deployment.assert_no_secret_shown()


def _stops_naming(deployment: Deployment, ws: WorkerSet, role: str, *expected: str) -> None:
    """The worker of `role` exits non-zero by itself, its log saying each of `expected` and
    holding no traceback."""
    proc = ws.procs[role]
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    log = (ws.log_dir / f"{role}.log").read_text()
    assert proc.returncode not in (None, 0), log[-4000:]
    assert "Traceback" not in log, log
    for text in expected:
        assert text in log, log
    deployment.assert_no_secret_shown()


def test_a_role_one_acl_short_fails_naming_what_it_lacks(deployment: Deployment) -> None:
    """The orchestrator without its transactional id ACL: its worker stops with a message
    naming its principal, the operation and the resource, and no traceback."""
    tid = f"{deployment.base.group('orchestrator')}-"
    principal = deployment.principal("orchestrator")
    drop = acls.Acl(principal, "TRANSACTIONAL_ID", tid, "PREFIXED", "WRITE")
    deployment.grant(["orchestrator", "topic-creator"], drop=drop)
    created = cli(deployment.settings("topic-creator"), "topics", "create")
    assert created.returncode == 0, created.stderr
    ws = deployment.start("orchestrator")
    _stops_naming(
        deployment,
        ws,
        "orchestrator",
        f"{principal} is not allowed",
        f"WRITE on transactional id {tid}",
    )


@pytest.mark.parametrize("deployment", ["scram"], indirect=True)
def test_a_wrong_registry_password_stops_a_worker_at_start(deployment: Deployment) -> None:
    """The registry behind HTTPS and basic auth refuses a handler's password: the worker stops
    at start with a configuration error naming the settings to check, no traceback, and
    shows no password, the wrong one included."""
    deployment.grant(["payment"])
    wrong = secrets.token_urlsafe(12)
    settings = deployment.gate.settings(deployment.settings("payment"), password=wrong)
    ws = WorkerSet(settings, deployment.tmp / "logs-wrong-password")
    deployment.workers.append(ws)
    ws.start(["payment"])
    _stops_naming(
        deployment,
        ws,
        "payment",
        f"schema registry at {deployment.gate.url} refused the credentials",
        "SAGASTREAM_SCHEMA_REGISTRY_PASSWORD",
    )
    assert wrong not in (ws.log_dir / "payment.log").read_text()


@pytest.mark.parametrize("deployment", ["scram"], indirect=True)
def test_a_restore_without_read_on_the_changelog_stops_naming_it(deployment: Deployment) -> None:
    """The orchestrator may not READ its changelog, which holds states to restore: its worker
    stops naming its principal, READ and the changelog, rather than wait with warnings."""
    from confluent_kafka import Producer

    changelog = deployment.base.changelog_topic()
    principal = deployment.principal("orchestrator")
    drop = acls.Acl(principal, "TOPIC", changelog, "LITERAL", "READ")
    deployment.grant(["orchestrator", "topic-creator"], drop=drop)
    created = cli(deployment.settings("topic-creator"), "topics", "create")
    assert created.returncode == 0, created.stderr
    # what an earlier run leaves: a state in the changelog (written here by the admin)
    planter = Producer(deployment.admin.producer_config())
    planter.produce(changelog, key=b"o-1", value=b"{}", partition=0)
    assert planter.flush(30) == 0
    ws = deployment.start("orchestrator")
    _stops_naming(
        deployment, ws, "orchestrator", f"{principal} is not allowed READ on topic {changelog}"
    )


@pytest.mark.parametrize("deployment", ["scram"], indirect=True)
def test_a_handler_without_write_on_its_results_stops_naming_it(deployment: Deployment) -> None:
    """The payment handler may not WRITE its results topic: at its first result its worker
    stops naming its principal, WRITE and the topic (the command is neither dead-lettered nor
    committed: it runs again once the ACL is there)."""
    results = deployment.base.topic("payments.events")
    principal = deployment.principal("payment")
    drop = acls.Acl(principal, "TOPIC", results, "LITERAL", "WRITE")
    deployment.grant(["orchestrator", "payment", "client", "topic-creator"], drop=drop)
    created = cli(deployment.settings("topic-creator"), "topics", "create")
    assert created.returncode == 0, created.stderr
    started = [deployment.start(role) for role in ("orchestrator", "payment")]
    for ws in started:
        ws.wait_ready()
    shop = deployment.namespace("client")
    shop.client.publish("OrderPlaced", "o-1", good_order("o-1"))
    shop.client.flush()
    shop.client.close()
    _stops_naming(
        deployment, started[1], "payment", f"{principal} is not allowed WRITE on topic {results}"
    )


@pytest.mark.parametrize("deployment", ["scram"], indirect=True)
def test_an_orchestrator_killed_mid_run_restarts_under_its_acls_and_each_saga_ends_once(
    deployment: Deployment,
) -> None:
    """SIGKILL of the orchestrator with orders in flight, started again as the same
    least-privilege principal: it restores its state from the changelog and every saga ends
    exactly once (outcomes read read_committed, as every client reads)."""
    deployment.grant(["orchestrator", "client", "topic-creator", "operator-readonly"])
    # the four order handlers as one process and principal with their roles' ACLs
    deployment.grant(list(ORDER_HANDLERS), principal=deployment.principal("order-handlers"))
    created = cli(deployment.settings("topic-creator"), "topics", "create")
    assert created.returncode == 0, created.stderr
    orchestrator = deployment.start("orchestrator")
    handlers = deployment.start(",".join(ORDER_HANDLERS), as_role="order-handlers")
    for ws in (orchestrator, handlers):
        ws.wait_ready()

    shop = deployment.namespace("client")
    viewer = deployment.namespace("operator-readonly")
    first, second = [f"o-{i:02d}" for i in range(12)], [f"o-{i:02d}" for i in range(12, 24)]
    for key in first:
        shop.client.publish("OrderPlaced", key, good_order(key))
    shop.client.flush()
    viewer.client.read([viewer.topic("sagas.outcomes")], lambda m: len(m) >= 3, timeout=60)
    # the second batch is in flight when the orchestrator dies
    for key in second:
        shop.client.publish("OrderPlaced", key, good_order(key))
    shop.client.flush()
    shop.client.close()
    orchestrator.kill("orchestrator")

    deployment.start("orchestrator").wait_ready()
    wait_outcomes(viewer, {*first, *second}, timeout=120)
    outcomes = [
        m
        for m in viewer.client.read_to_end([viewer.topic("sagas.outcomes")])
        if m.event_type in OUTCOMES
    ]
    viewer.client.close()
    assert Counter(m.key.decode() for m in outcomes if m.key) == dict.fromkeys([*first, *second], 1)
    assert {m.event_type for m in outcomes} == {"SagaCompleted"}
    deployment.assert_no_secret_shown()
