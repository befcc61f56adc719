"""A real Apache Kafka (KRaft mode) on loopback, built from jars on Maven Central.

No Docker and no Kafka tarball: ``mvn dependency:copy-dependencies`` fetches
``org.apache.kafka:kafka_2.13`` plus a log4j2 binding into a per-user cache once,
then the broker runs as a plain ``java -cp '<libs>/*' kafka.Kafka`` process.

Single node (default)
    one combined broker+controller, ``127.0.0.1:9092`` (controller on 9093);
    ``SAGASTREAM_LOCAL_KAFKA_PORT`` moves both (controller = port + 1).
Cluster (``cluster=True`` / ``--cluster``)
    three combined nodes, brokers on 19092-19094, controllers on 19192-19194,
    replication factor 3 and min.insync.replicas 2; ``SAGASTREAM_LOCAL_KAFKA_CLUSTER_PORT``
    moves them (brokers on port+0..2, controllers on port+100..102).

Paths
    cache:  ``$SAGASTREAM_CACHE_DIR`` or ``~/.cache/sagastream``
    jars:   ``<cache>/kafka-4.1.1/libs``
    data:   ``$SAGASTREAM_KAFKA_DATA_DIR`` or ``<cache>/data/single``;
            cluster: ``<cache>/data/cluster/node-N``
            (``$SAGASTREAM_KAFKA_DATA_DIR/cluster/node-N`` when that is set).
    Each node directory holds ``server.properties``, ``log4j2.properties``,
    ``server.log`` (broker log), ``kafka.out`` (JVM stdout/stderr), ``kafka.pid`` and
    ``kafka-logs/`` (``log.dirs``, formatted once; data survives restarts).

Command line: ``python -m sagastream.local.kafka start|stop|status [--cluster]``
(also ``scripts/kafka-local`` and ``sagastream broker ...``).

Only the standard library (and ``sagastream.local.proc``, the process helpers this shares
with ``sagastream.local.registry``, itself stdlib-only) is imported at module level so this
works before the project's dependencies are installed; ``confluent_kafka`` is used, when
importable, for a real metadata request during the readiness check.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sagastream.local import proc as localproc
from sagastream.local.proc import ENV_CACHE_DIR as ENV_CACHE_DIR  # re-exported, like cache_dir
from sagastream.local.proc import INSTALL_HINT as INSTALL_HINT
from sagastream.local.proc import LocalToolError, Log, cache_dir

__all__ = [
    "KAFKA_VERSION",
    "LocalKafkaError",
    "NodeSpec",
    "bootstrap_servers",
    "cache_dir",
    "ensure_kafka",
    "main",
    "new_cluster_id",
    "node_specs",
    "render_log4j2_properties",
    "render_server_properties",
    "server_properties",
    "start",
    "status",
    "stop",
]

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
MIN_JAVA_VERSION = 17

DEFAULT_PORT = 9092
CLUSTER_PORT = 19092  # the first broker's; brokers on +0..2, controllers on +100..102
CLUSTER_SIZE = 3
CLUSTER_CONTROLLER_OFFSET = 100
HOST = "127.0.0.1"

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 10.0

JVM_HEAP_OPTS = ("-Xms256m", "-Xmx1g")
JVM_OPTS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

ENV_DATA_DIR = "SAGASTREAM_KAFKA_DATA_DIR"
ENV_PORT = "SAGASTREAM_LOCAL_KAFKA_PORT"
ENV_CLUSTER_PORT = "SAGASTREAM_LOCAL_KAFKA_CLUSTER_PORT"

# Keep byte-identical to scripts/kafka/pom.xml (a unit test checks this). The module
# uses this copy so it also works where the scripts/ directory is not shipped.
POM_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!--
  Jars for a local Apache Kafka broker (KRaft), fetched from Maven Central.
  Used by streams/local/kafka.py, which embeds an identical copy of this file
  (tests/unit/test_localkafka.py fails if the two drift apart).

  Manual use:
    mvn -q -f scripts/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=/some/libs
-->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.sagastream</groupId>
  <artifactId>sagastream-local-kafka</artifactId>
  <version>4.1.1</version>
  <packaging>pom</packaging>

  <properties>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
    <kafka.version>4.1.1</kafka.version>
    <!-- Kafka 4.1 is built against log4j2 2.24.3 and slf4j-api 1.7.36. -->
    <log4j.version>2.24.3</log4j.version>
  </properties>

  <dependencies>
    <!-- Broker + controller (kafka.Kafka) and kafka.tools.StorageTool. -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${kafka.version}</version>
    </dependency>
    <!-- kafka_2.13 only brings slf4j-api 1.7.x; the binding the Kafka distribution
         ships for that API is log4j-slf4j-impl (log4j-slf4j2-impl is for slf4j 2.x). -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>${log4j.version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>${log4j.version}</version>
    </dependency>
  </dependencies>

  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>3.8.1</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
"""

# Jars that must be present for a download to count as complete.
_REQUIRED_JARS = (
    f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar",
    f"kafka-clients-{KAFKA_VERSION}.jar",
    f"kafka-server-{KAFKA_VERSION}.jar",
    "log4j-core-",
    "log4j-slf4j-impl-",
)
_MARKER = ".complete"
_NEEDED_BY = f"Kafka {KAFKA_VERSION}"  # in messages: "the local Kafka 4.1.1 needs it"


class LocalKafkaError(LocalToolError):
    """The local Kafka could not be installed, started or stopped."""


# --------------------------------------------------------------------------- paths


def kafka_home() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}"


def libs_dir() -> Path:
    return kafka_home() / "libs"


def data_root(cluster: bool = False) -> Path:
    """Directory holding the node directories (single: the node directory itself)."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        base = Path(env).expanduser()
        return base / "cluster" if cluster else base
    return cache_dir() / "data" / ("cluster" if cluster else "single")


def _single_port() -> int:
    # the controller listens on the next port, hence 65534 at most
    return localproc.env_port(ENV_PORT, DEFAULT_PORT, LocalKafkaError, highest=65534)


@dataclass(frozen=True)
class NodeSpec:
    """One combined broker+controller process."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_dirs(self) -> Path:
        return self.data_dir / "kafka-logs"

    @property
    def meta_properties(self) -> Path:
        return self.log_dirs / "meta.properties"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.data_dir / "log4j2.properties"

    @property
    def server_log(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def stdout_file(self) -> Path:
        return self.data_dir / "kafka.out"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"


def node_specs(cluster: bool = False) -> list[NodeSpec]:
    root = data_root(cluster)
    if not cluster:
        port = _single_port()
        return [NodeSpec(1, port, port + 1, root)]
    first = localproc.env_port(
        ENV_CLUSTER_PORT,
        CLUSTER_PORT,
        LocalKafkaError,
        highest=65535 - CLUSTER_CONTROLLER_OFFSET - (CLUSTER_SIZE - 1),
    )
    return [
        NodeSpec(i + 1, first + i, first + CLUSTER_CONTROLLER_OFFSET + i, root / f"node-{i + 1}")
        for i in range(CLUSTER_SIZE)
    ]


def bootstrap_servers(cluster: bool = False) -> str:
    return ",".join(n.bootstrap for n in node_specs(cluster))


# ------------------------------------------------------------------ configuration


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID as 22 chars of unpadded base64url.

    Like Kafka's ``Uuid.randomUuid()`` it never starts with ``-`` (that would be
    parsed as an option by ``kafka-storage format -t``).
    """
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not raw.startswith("-"):
            return raw


def controller_quorum_voters(nodes: Sequence[NodeSpec]) -> str:
    return ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in nodes)


def server_properties(node: NodeSpec, nodes: Sequence[NodeSpec]) -> dict[str, str]:
    """Broker settings for ``node`` in a quorum made of ``nodes`` (ordered)."""
    replicas = len(nodes)
    min_isr = 1 if replicas == 1 else 2
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": controller_quorum_voters(nodes),
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.log_dirs),
        "num.partitions": "4",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        "group.initial.rebalance.delay.ms": "0",
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "share.coordinator.state.topic.num.partitions": "8",
        "num.recovery.threads.per.data.dir": "1",
        "num.network.threads": "3",
        "num.io.threads": "8",
    }


def _escape_properties_value(value: str) -> str:
    # java.util.Properties: backslash escapes; a leading space would be dropped.
    value = value.replace("\\", "\\\\")
    if value.startswith(" "):
        value = "\\" + value
    return value


def render_server_properties(node: NodeSpec, nodes: Sequence[NodeSpec]) -> str:
    lines = [
        f"# Generated by streams/local/kafka.py for Apache Kafka {KAFKA_VERSION}; "
        "rewritten on every start.",
    ]
    lines += [
        f"{key}={_escape_properties_value(value)}"
        for key, value in server_properties(node, nodes).items()
    ]
    return "\n".join(lines) + "\n"


def render_log4j2_properties(node: NodeSpec) -> str:
    log = str(node.server_log)
    return "\n".join(
        [
            "# Generated by streams/local/kafka.py: broker logs go to server.log, not stdout.",
            "status = warn",
            "name = sagastream-local-kafka",
            # Keep logging while Kafka's own shutdown hook runs (log4j's hook would
            # stop the appenders first and lose the shutdown messages).
            "shutdownHook = disable",
            "appender.server.type = RollingFile",
            "appender.server.name = server",
            f"appender.server.fileName = {log}",
            f"appender.server.filePattern = {log}.%i",
            "appender.server.layout.type = PatternLayout",
            "appender.server.layout.pattern = [%d] %p %m (%c)%n",
            "appender.server.policies.type = Policies",
            "appender.server.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.server.policies.size.size = 50MB",
            "appender.server.strategy.type = DefaultRolloverStrategy",
            "appender.server.strategy.max = 3",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.server.ref = server",
            "logger.request.name = kafka.request.logger",
            "logger.request.level = WARN",
            "logger.cleaner.name = kafka.log.LogCleaner",
            "logger.cleaner.level = WARN",
            "",
        ]
    )


# --------------------------------------------------------------------- download


def _libs_complete(libs: Path) -> bool:
    if not (libs / _MARKER).is_file():
        return False
    names = [p.name for p in libs.glob("*.jar")]
    return all(any(n.startswith(req) for n in names) for req in _REQUIRED_JARS)


def ensure_kafka(log: Log = print) -> Path:
    """Directory with every jar the broker needs; downloads them on the first call.

    The jars land in ``<cache>/kafka-4.1.1/libs`` via Maven (so ``~/.m2`` is reused).
    A marker file is written only after a complete download, so an interrupted one
    is redone on the next call.
    """
    libs = libs_dir()
    if _libs_complete(libs):
        return libs
    home = kafka_home()
    with localproc.flock(home.parent / f".kafka-{KAFKA_VERSION}.lock"):
        if _libs_complete(libs):  # another process finished it while we waited
            return libs
        mvn = localproc.require("mvn", _NEEDED_BY, LocalKafkaError)
        localproc.require("java", _NEEDED_BY, LocalKafkaError)
        home.mkdir(parents=True, exist_ok=True)
        pom = home / "pom.xml"
        pom.write_text(POM_XML)
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        log(f"Downloading Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ...")
        started = time.monotonic()
        localproc.run_tool(cmd, LocalKafkaError)
        jars = sorted(p.name for p in partial.glob("*.jar"))
        missing = [r for r in _REQUIRED_JARS if not any(j.startswith(r) for j in jars)]
        if missing:
            raise LocalKafkaError(f"Maven finished but {partial} lacks {missing}")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        (libs / _MARKER).write_text(
            json.dumps({"kafka_version": KAFKA_VERSION, "jars": jars}, indent=2) + "\n"
        )
        log(f"Downloaded {len(jars)} jars in {time.monotonic() - started:.1f}s")
        return libs


# -------------------------------------------------------------------- processes


def _is_node_process(pid: int, node: NodeSpec) -> bool:
    args = localproc.cmdline(pid)
    if not args:
        return False
    return "kafka.Kafka" in args and str(node.properties_file) in args


def _node_pid(node: NodeSpec) -> int | None:
    """Pid of the live JVM of ``node``; drops a stale pid file, adopts a lost JVM."""
    return localproc.live_pid(node.pid_file, lambda pid: _is_node_process(pid, node))


def _terminate(pids: Sequence[int], timeout: float, log: Log) -> None:
    localproc.terminate(pids, timeout, log, "Kafka JVM(s)", LocalKafkaError, KILL_TIMEOUT_S)


def _java_cmd(java: str, libs: Path, node: NodeSpec, main_class: str, *args: str) -> list[str]:
    return [
        java,
        *JVM_HEAP_OPTS,
        *JVM_OPTS,
        f"-Dlog4j2.configurationFile={node.log4j_file}",
        f"-Dkafka.logs.dir={node.data_dir}",
        "-cp",
        f"{libs}{os.sep}*",
        main_class,
        *args,
    ]


def _cluster_id(root: Path) -> str:
    path = root / "cluster.id"
    try:
        existing = path.read_text().strip()
    except OSError:
        existing = ""
    if existing:
        return existing
    cid = new_cluster_id()
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(cid + "\n")
    return cid


def _write_configs(node: NodeSpec, nodes: Sequence[NodeSpec]) -> None:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    node.properties_file.write_text(render_server_properties(node, nodes))
    node.log4j_file.write_text(render_log4j2_properties(node))


def _format_storage(
    to_format: Sequence[NodeSpec], cluster_id: str, java: str, libs: Path, log: Log
) -> None:
    """``kafka-storage format`` for nodes without meta.properties, in parallel."""
    procs: list[tuple[NodeSpec, subprocess.Popen[str]]] = []
    for node in to_format:
        log(f"Formatting KRaft storage of node {node.node_id} in {node.log_dirs}")
        cmd = _java_cmd(java, libs, node, "kafka.tools.StorageTool")
        # A short-lived tool: the C1 JIT alone starts faster.
        cmd[1:1] = ["-XX:TieredStopAtLevel=1"]
        cmd += ["format", "--cluster-id", cluster_id, "--config", str(node.properties_file)]
        cmd += ["--ignore-formatted"]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=node.data_dir,
        )
        procs.append((node, proc))
    failures = []
    for node, proc in procs:
        output, _ = proc.communicate()
        if proc.returncode != 0 or not node.meta_properties.is_file():
            failures.append(
                f"formatting {node.log_dirs} failed (exit code {proc.returncode}):\n"
                f"{output.strip()}"
            )
    if failures:
        raise LocalKafkaError("\n".join(failures))


def _launch(node: NodeSpec, java: str, libs: Path) -> int:
    cmd = _java_cmd(java, libs, node, "kafka.Kafka", str(node.properties_file))
    return localproc.spawn(cmd, node.stdout_file, node.data_dir, node.pid_file)


def _metadata_ready(bootstraps: Sequence[str], timeout: float) -> bool:
    """Every broker answers a real metadata request listing all the brokers, with no
    under-replicated partition (after a cluster restart followers catch up first).

    Each broker is asked on its own: their metadata caches converge independently.
    Without confluent_kafka (deps not installed yet) the TCP check has to do.
    """
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return True
    for bootstrap in bootstraps:
        admin = AdminClient(
            {
                "bootstrap.servers": bootstrap,
                "log_level": 0,  # no "connection refused" noise on stderr while it boots
                "socket.connection.setup.timeout.ms": 2000,
            }
        )
        try:
            metadata = admin.list_topics(timeout=timeout)
        except Exception:
            return False
        if len(metadata.brokers) < len(bootstraps):
            return False
        if any(
            len(partition.isrs) < len(partition.replicas)
            for topic in metadata.topics.values()
            for partition in topic.partitions.values()
        ):
            return False
    return True


def _wait_ready(
    nodes: Sequence[NodeSpec],
    pids: dict[int, int],
    bootstrap: str,
    timeout: float,
    log_offsets: dict[Path, int] | None = None,
) -> None:
    offsets = log_offsets or {}
    deadline = time.monotonic() + timeout
    while True:
        for node in nodes:
            pid = pids[node.node_id]
            child = localproc.CHILDREN.get(pid)  # fetched first: pid_alive drops a finished one
            if not localproc.pid_alive(pid):
                code = child.returncode if child is not None else None
                raise LocalKafkaError(
                    f"Kafka node {node.node_id} (pid {pid}) exited during startup"
                    f"{'' if code is None else f' with exit code {code}'}; see "
                    f"{node.server_log} and {node.stdout_file}\n"
                    f"{localproc.tail(node.server_log, offsets.get(node.server_log, 0))}\n"
                    f"{localproc.tail(node.stdout_file, offsets.get(node.stdout_file, 0), lines=10)}"
                )
        left = deadline - time.monotonic()
        if all(localproc.port_open(HOST, n.port) for n in nodes) and _metadata_ready(
            [n.bootstrap for n in nodes], timeout=max(0.5, min(5.0, left))
        ):
            return
        if time.monotonic() >= deadline:
            logs = ", ".join(str(n.server_log) for n in nodes)
            raise LocalKafkaError(
                f"Kafka at {bootstrap} was not ready (metadata listing every broker, no "
                f"under-replicated partition) within "
                f"{timeout:.0f}s; see {logs}\n"
                f"{localproc.tail(nodes[0].server_log, offsets.get(nodes[0].server_log, 0))}"
            )
        time.sleep(0.25)


# --------------------------------------------------------------------- public API


def start(cluster: bool = False, log: Log = print, timeout: float = START_TIMEOUT_S) -> str:
    """Start the local Kafka (single node or 3-node cluster); return bootstrap servers.

    Idempotent: when it already runs and answers, returns at once. Downloads the
    jars on first use and formats storage once; later starts keep topics and data.
    """
    nodes = node_specs(cluster)
    bootstrap = bootstrap_servers(cluster)
    root = data_root(cluster)
    with localproc.flock(root / ".lock"):
        running = {n.node_id: _node_pid(n) for n in nodes}
        if all(running.values()):
            if all(localproc.port_open(HOST, n.port) for n in nodes) and _metadata_ready(
                [n.bootstrap for n in nodes], timeout=5.0
            ):
                log(f"Kafka {KAFKA_VERSION} already running at {bootstrap}")
                return bootstrap
            # JVMs alive but not answering yet (e.g. still booting): wait for them.
            live = {k: v for k, v in running.items() if v is not None}
            _wait_ready(nodes, live, bootstrap, timeout)
            return bootstrap

        to_start = [n for n in nodes if running[n.node_id] is None]
        java = localproc.require_java(_NEEDED_BY, LocalKafkaError, MIN_JAVA_VERSION)
        for node in to_start:
            busy = [p for p in (node.port, node.controller_port) if localproc.port_open(HOST, p)]
            if busy:
                hint = f" (set {ENV_CLUSTER_PORT if cluster else ENV_PORT} to use other ports)"
                raise LocalKafkaError(
                    f"port(s) {busy} on {HOST} are already in use by a process this tool "
                    f"did not start{hint}"
                )
        libs = ensure_kafka(log)
        cluster_id = _cluster_id(root)
        for node in nodes:
            _write_configs(node, nodes)
        _format_storage(
            [n for n in to_start if not n.meta_properties.is_file()], cluster_id, java, libs, log
        )

        started = time.monotonic()
        launched: list[int] = []
        pids: dict[int, int] = {}
        offsets = {p: localproc.file_size(p) for n in nodes for p in (n.server_log, n.stdout_file)}
        try:
            for node in nodes:
                pid = running[node.node_id]
                if pid is None:
                    pid = _launch(node, java, libs)
                    launched.append(pid)
                pids[node.node_id] = pid
            log(
                f"Starting Kafka {KAFKA_VERSION} ({'3-node cluster' if cluster else 'single node'})"
                f" at {bootstrap}, pid(s) {list(pids.values())}, data in {root}"
            )
            _wait_ready(nodes, pids, bootstrap, timeout, offsets)
        except BaseException:
            if launched:
                with contextlib.suppress(Exception):
                    _terminate(launched, 5.0, log)
                for node in to_start:
                    with contextlib.suppress(OSError):
                        node.pid_file.unlink()
            raise
        log(f"Kafka ready at {bootstrap} after {time.monotonic() - started:.1f}s")
        return bootstrap


def stop(cluster: bool = False, log: Log = print, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the node JVM(s), wait up to ``timeout`` s, then SIGKILL what is left."""
    nodes = node_specs(cluster)
    root = data_root(cluster)
    with localproc.flock(root / ".lock"):
        pids = [pid for pid in (_node_pid(n) for n in nodes) if pid is not None]
        if not pids:
            log(f"Kafka ({'cluster' if cluster else 'single node'}) is not running")
            return
        started = time.monotonic()
        # All nodes at once: each broker's controlled shutdown still finds a quorum.
        _terminate(pids, timeout, log)
        for node in nodes:
            with contextlib.suppress(OSError):
                node.pid_file.unlink()
        log(f"Kafka stopped (pid(s) {pids}) in {time.monotonic() - started:.1f}s")


def status(cluster: bool = False) -> dict[str, object]:
    """Whether every node JVM is alive and its broker port accepts connections."""
    nodes = node_specs(cluster)
    pids = [_node_pid(n) for n in nodes]
    running = all(pids) and all(localproc.port_open(HOST, n.port) for n in nodes)
    return {
        "running": running,
        "bootstrap": bootstrap_servers(cluster),
        "pids": [p for p in pids if p is not None],
        "version": KAFKA_VERSION,
        "data_dir": str(data_root(cluster)),
    }


def _emit(text: str) -> None:
    """Print to stdout; a closed pipe (``kafka-local status | head -1``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cluster",
        action="store_true",
        help=f"3-node KRaft cluster on 127.0.0.1:19092-19094 (${ENV_CLUSTER_PORT} moves it) "
        "instead of one node",
    )
    parser = argparse.ArgumentParser(
        prog="kafka-local",
        description=f"Local Apache Kafka {KAFKA_VERSION} (KRaft) on loopback, "
        "jars from Maven Central.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser(
        "start", parents=[common], help="start (idempotent); prints the bootstrap servers"
    )
    p_start.add_argument(
        "--timeout", type=float, default=START_TIMEOUT_S, help="readiness timeout, seconds"
    )
    p_stop = sub.add_parser("stop", parents=[common], help="stop; data is kept")
    p_stop.add_argument(
        "--timeout",
        type=float,
        default=STOP_TIMEOUT_S,
        help="seconds to wait after SIGTERM before SIGKILL",
    )
    sub.add_parser(
        "status", parents=[common], help="print status as JSON; exit code 3 when not running"
    )
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.command == "start":
            _emit(start(cluster=args.cluster, log=log, timeout=args.timeout))
            return 0
        if args.command == "stop":
            stop(cluster=args.cluster, log=log, timeout=args.timeout)
            return 0
        info = status(cluster=args.cluster)
        _emit(json.dumps(info, indent=2))
        return 0 if info["running"] else 3
    except LocalKafkaError as exc:
        print(f"kafka-local: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
