"""A secured Kafka for the tests: one KRaft node from the jars `sagastream broker start` uses
(sagastream.local.kafka), on free ports and a data dir of its own, with
- a SASL_SSL listener (SCRAM-SHA-512) for password principals (User:<name>),
- an SSL listener that requires a client certificate (User:CN=<name>), also the inter-broker one,
- StandardAuthorizer, allow.everyone.if.no.acl.found=false, super users User:admin (SCRAM) and
  User:CN=broker, User:CN=admin (certificates).
Every certificate (a CA, the broker's, each client's) is made at test time with openssl.
The shared broker on 9092 is not touched.

The schema registry is secured the same way: `RegistryGate`, a small HTTPS reverse proxy with
basic auth (Apicurio 2.x has none of its own), in front of the shared local registry.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import http.client
import http.server
import secrets
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from sagastream.local import kafka as localkafka
from sagastream.local import proc as localproc
from sagastream.runtime.settings import Settings

HOST = localkafka.HOST
MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
# Kafka's default SSL principal is the certificate's whole subject: ours is just CN=<name>
BROKER_CN = "broker"
START_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr.strip()}")


@dataclass
class Pki:
    """A throwaway CA in `root` that signs the broker's and the clients' certificates."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    def create_ca(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _openssl(
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"),
            *("-subj", "/CN=sagastream-test-ca"),
            cwd=self.root,
        )

    def issue(self, name: str, server: bool = False) -> tuple[Path, Path]:
        """A certificate with subject CN=<name> and its key (PEM), made once: (cert, key)."""
        cert, key = self.root / f"{name}.crt", self.root / f"{name}.key"
        if cert.exists():
            return cert, key
        _openssl(
            *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", key.name, "-out", f"{name}.csr", "-subj", f"/CN={name}"),
            cwd=self.root,
        )
        ext = self.root / f"{name}.ext"
        # the broker is reached as 127.0.0.1: clients check its name (https identification)
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "")
        _openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-days", "2", "-out", cert.name, "-extfile", ext.name),
            cwd=self.root,
        )
        return cert, key

    def keystore(self, name: str, password: str) -> Path:
        """The broker's PKCS12 keystore: its key, certificate and the CA."""
        cert, key = self.issue(name, server=True)
        store = self.root / f"{name}.p12"
        _openssl(
            *("pkcs12", "-export", "-in", cert.name, "-inkey", key.name, "-certfile", "ca.crt"),
            *("-name", name, "-out", store.name, "-passout", f"pass:{password}"),
            cwd=self.root,
        )
        return store


@dataclass
class SecuredBroker:
    """One running secured node; `scram` and `mtls` give a principal's client settings."""

    root: Path
    pki: Pki
    sasl_port: int
    ssl_port: int
    node: localkafka.NodeSpec
    pid: int = 0
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def sasl_bootstrap(self) -> str:
        return f"{HOST}:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"{HOST}:{self.ssl_port}"

    def scram(self, base: Settings, user: str) -> Settings:
        """`base` connecting as User:<user> over SASL_SSL (the user is created if new)."""
        if user not in self.passwords:
            self.add_user(user)
        return base.model_copy(
            update={
                "bootstrap_servers": self.sasl_bootstrap,
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": MECHANISM,
                "sasl_username": user,
                "sasl_password": SecretStr(self.passwords[user]),
                "ssl_cafile": self.pki.ca,
            }
        )

    def mtls(self, base: Settings, name: str) -> Settings:
        """`base` connecting as User:CN=<name> with a client certificate only."""
        cert, key = self.pki.issue(name)
        return base.model_copy(
            update={
                "bootstrap_servers": self.ssl_bootstrap,
                "security_protocol": "SSL",
                "ssl_cafile": self.pki.ca,
                "ssl_certfile": cert,
                "ssl_keyfile": key,
            }
        )

    def admin(self, base: Settings | None = None) -> Settings:
        """A super user's settings (the certificate CN=admin)."""
        return self.mtls(base or Settings(), ADMIN)

    def add_user(self, user: str) -> None:
        """A SCRAM-SHA-512 credential for `user`, created by the super user."""
        from confluent_kafka.admin import (
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        password = secrets.token_urlsafe(18)
        admin = AdminClient(self.admin().librdkafka())
        upsert = UserScramCredentialUpsertion(
            user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), password.encode()
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(30)
        self.passwords[user] = password
        # the credential reaches the broker's cache through the metadata log: wait for it
        deadline = time.monotonic() + 30
        while True:
            try:
                probe = AdminClient(self.scram(Settings(), user).librdkafka() | {"log_level": 0})
                probe.list_topics(timeout=5)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def server_properties(self, store: Path, store_password: str) -> dict[str, str]:
        controller = self.node.controller_port
        ssl = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{controller}",
            "listeners": f"SASL_SSL://{HOST}:{self.sasl_port},SSL://{HOST}:{self.ssl_port},"
            f"CONTROLLER://{HOST}:{controller}",
            "advertised.listeners": f"SASL_SSL://{HOST}:{self.sasl_port},"
            f"SSL://{HOST}:{self.ssl_port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": ssl,
            "listener.name.ssl.ssl.client.auth": "required",
            "listener.name.controller.ssl.client.auth": "required",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(store),
            "ssl.keystore.password": store_password,
            "ssl.key.password": store_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.pki.ca),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN};User:CN={ADMIN};User:CN={BROKER_CN}",
            "log.dirs": str(self.node.log_dirs),
            "num.partitions": "4",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
        }

    def start(self) -> None:
        java = localproc.require_java("the secured test broker", RuntimeError, 17)
        libs = localkafka.ensure_kafka(log=lambda m: None)
        password = secrets.token_urlsafe(12)
        self.pki.create_ca()
        store = self.pki.keystore(BROKER_CN, password)
        self.pki.issue(ADMIN)
        self.node.data_dir.mkdir(parents=True, exist_ok=True)
        self.node.properties_file.write_text(
            "".join(f"{k}={v}\n" for k, v in self.server_properties(store, password).items())
        )
        self.node.log4j_file.write_text(localkafka.render_log4j2_properties(self.node))
        cmd = localkafka._java_cmd(java, libs, self.node, "kafka.tools.StorageTool")
        cmd += ["format", "--cluster-id", localkafka.new_cluster_id()]
        cmd += ["--config", str(self.node.properties_file)]
        formatted = subprocess.run(cmd, capture_output=True, text=True, cwd=self.node.data_dir)
        if formatted.returncode:
            raise RuntimeError(f"formatting the secured broker failed: {formatted.stdout}")
        cmd = localkafka._java_cmd(java, libs, self.node, "kafka.Kafka")
        self.pid = localproc.spawn(
            [*cmd, str(self.node.properties_file)],
            self.node.stdout_file,
            self.node.data_dir,
            self.node.pid_file,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not localproc.pid_alive(self.pid):
                raise RuntimeError(
                    f"the secured broker exited at start; see {self.node.server_log}\n"
                    f"{localproc.tail(self.node.server_log, 0)}"
                )
            with contextlib.suppress(Exception):
                conf = self.admin().librdkafka() | {"log_level": 0}
                if AdminClient(conf).list_topics(timeout=3).brokers:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the secured broker is not ready; see {self.node.server_log}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.pid:
            localproc.terminate(
                [self.pid], 30.0, lambda m: None, "secured Kafka", RuntimeError, 10.0
            )


def start_secured(root: Path) -> SecuredBroker:
    """A secured node under `root` (certificates in root/pki, data in root/kafka)."""
    node = localkafka.NodeSpec(1, _free_port(), _free_port(), root / "kafka")
    broker = SecuredBroker(root, Pki(root / "pki"), node.port, _free_port(), node)
    broker.start()
    return broker


class RegistryGate:
    """An HTTPS reverse proxy with basic auth in front of a registry: TLS with a certificate of
    `pki`, one user and password; a request without them earns 401 and never reaches the
    registry. `url` is the registry's URL through the gate (its API path kept)."""

    def __init__(self, pki: Pki, upstream: str, user: str) -> None:
        self.user, self.password = user, secrets.token_urlsafe(18)
        self._ca = pki.ca
        self._upstream = urllib.parse.urlsplit(upstream)
        cert, key = pki.issue("registry-gate", server=True)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self._server = http.server.ThreadingHTTPServer((HOST, 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://{HOST}:{self._server.server_address[1]}{self._upstream.path}"
        self.refused = 0  # requests answered 401
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _allowed(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header is not None and hmac.compare_digest(header, f"Basic {expected}")

    def _forward(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        upstream = http.client.HTTPConnection(
            self._upstream.hostname or HOST, self._upstream.port or 80, timeout=30
        )
        upstream.request(method, path, body=body or None, headers=headers)
        return upstream.getresponse()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        gate = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self) -> None:
                if not gate._allowed(self.headers.get("Authorization")):
                    gate.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="registry"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                passed = {
                    k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")
                }
                answer = gate._forward(self.command, self.path, body, passed)
                data = answer.read()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.getheader("Content-Type") or "")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the registry's clients say what failed; a line per request is noise

        return Handler

    def settings(self, base: Settings, password: str | None = None) -> Settings:
        """`base` reaching the registry through the gate, with its CA and credentials."""
        return base.model_copy(
            update={
                "schema_registry_url": self.url,
                "schema_registry_username": self.user,
                "schema_registry_password": SecretStr(password or self.password),
                "schema_registry_cafile": self._ca,
            }
        )

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
