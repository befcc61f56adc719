"""Unit tests for sagastream.local.kafka: the pure parts only (no JVM, no broker, no mvn)."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest

from sagastream.local import kafka as lk

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(lk.ENV_CACHE_DIR, str(cache))
    monkeypatch.delenv(lk.ENV_DATA_DIR, raising=False)
    monkeypatch.delenv(lk.ENV_PORT, raising=False)
    monkeypatch.delenv(lk.ENV_CLUSTER_PORT, raising=False)
    return cache


def parse_properties(text: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        assert key not in props, f"duplicate key {key}"
        props[key] = value
    return props


# ------------------------------------------------------------------ paths


def test_cache_dir_env_override(_isolated_env: Path) -> None:
    assert lk.cache_dir() == _isolated_env
    assert lk.libs_dir() == _isolated_env / f"kafka-{lk.KAFKA_VERSION}" / "libs"


def test_data_dirs_default_under_cache(_isolated_env: Path) -> None:
    (single,) = lk.node_specs()
    assert single.data_dir == _isolated_env / "data" / "single"
    assert [n.data_dir for n in lk.node_specs(cluster=True)] == [
        _isolated_env / "data" / "cluster" / f"node-{i}" for i in (1, 2, 3)
    ]


def test_data_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(lk.ENV_DATA_DIR, str(tmp_path / "kdata"))
    assert lk.node_specs()[0].data_dir == tmp_path / "kdata"
    assert lk.node_specs(cluster=True)[2].data_dir == tmp_path / "kdata" / "cluster" / "node-3"


def test_single_ports_and_bootstrap() -> None:
    (node,) = lk.node_specs()
    assert (node.node_id, node.port, node.controller_port) == (1, 9092, 9093)
    assert lk.bootstrap_servers() == "127.0.0.1:9092"


def test_single_port_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lk.ENV_PORT, "29092")
    (node,) = lk.node_specs()
    assert (node.port, node.controller_port) == (29092, 29093)
    assert lk.bootstrap_servers() == "127.0.0.1:29092"


@pytest.mark.parametrize("bad", ["abc", "0", "65535", "-1"])
def test_single_port_env_rejects_garbage(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(lk.ENV_PORT, bad)
    with pytest.raises(lk.LocalKafkaError, match=lk.ENV_PORT):
        lk.node_specs()


def test_cluster_bootstrap_and_ports() -> None:
    nodes = lk.node_specs(cluster=True)
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [
        (1, 19092, 19192),
        (2, 19093, 19193),
        (3, 19094, 19194),
    ]
    assert lk.bootstrap_servers(cluster=True) == ("127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094")


def test_cluster_port_env_moves_every_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lk.ENV_CLUSTER_PORT, "23000")
    nodes = lk.node_specs(cluster=True)
    assert [(n.port, n.controller_port) for n in nodes] == [
        (23000, 23100),
        (23001, 23101),
        (23002, 23102),
    ]
    monkeypatch.setenv(lk.ENV_CLUSTER_PORT, "65500")  # the last controller would be past 65535
    with pytest.raises(lk.LocalKafkaError, match=lk.ENV_CLUSTER_PORT):
        lk.node_specs(cluster=True)


# --------------------------------------------------------- server.properties


def test_single_node_server_properties() -> None:
    nodes = lk.node_specs()
    props = parse_properties(lk.render_server_properties(nodes[0], nodes))
    data = nodes[0].data_dir
    expected = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@127.0.0.1:9093",
        "listeners": "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:9092",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data / "kafka-logs"),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "num.partitions": "4",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
    }
    assert {k: props.get(k) for k in expected} == expected
    # Static voters: no dynamic-quorum settings that would need `format --standalone`.
    assert "controller.quorum.bootstrap.servers" not in props


def test_single_node_port_override_flows_into_properties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(lk.ENV_PORT, "29092")
    nodes = lk.node_specs()
    props = parse_properties(lk.render_server_properties(nodes[0], nodes))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_cluster_node_server_properties(index: int) -> None:
    nodes = lk.node_specs(cluster=True)
    node = nodes[index]
    props = parse_properties(lk.render_server_properties(node, nodes))
    port, controller_port = 19092 + index, 19192 + index
    assert props["node.id"] == str(index + 1)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
    )
    assert props["listeners"] == (
        f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"
    )
    assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{port}"
    assert props["log.dirs"] == str(node.data_dir / "kafka-logs")
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"


def test_cluster_nodes_have_distinct_dirs_and_listeners() -> None:
    nodes = lk.node_specs(cluster=True)
    rendered = [parse_properties(lk.render_server_properties(n, nodes)) for n in nodes]
    for key in ("node.id", "listeners", "log.dirs"):
        assert len({r[key] for r in rendered}) == 3, key


def test_properties_values_escape_backslashes(tmp_path: Path) -> None:
    node = lk.NodeSpec(1, 9092, 9093, tmp_path / "odd\\dir")
    text = lk.render_server_properties(node, [node])
    assert "odd\\\\dir" in text


def test_log4j2_config_writes_to_server_log_not_stdout() -> None:
    (node,) = lk.node_specs()
    text = lk.render_log4j2_properties(node)
    assert f"fileName = {node.server_log}" in text
    assert "Console" not in text
    assert "rootLogger.appenderRef.server.ref = server" in text


# -------------------------------------------------------------- cluster id


def test_cluster_id_format() -> None:
    ids = {lk.new_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid), cid
        assert not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_cluster_id_is_persisted(tmp_path: Path) -> None:
    first = lk._cluster_id(tmp_path / "root")
    assert (tmp_path / "root" / "cluster.id").read_text().strip() == first
    assert lk._cluster_id(tmp_path / "root") == first


# ----------------------------------------------------------- tools / errors


def test_missing_java_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        lk.shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name)
    )
    with pytest.raises(lk.LocalKafkaError) as excinfo:
        lk.start()
    message = str(excinfo.value)
    assert "`java` was not found" in message
    assert "apt-get install openjdk-17-jre-headless maven" in message
    assert isinstance(excinfo.value, RuntimeError)


def test_missing_mvn_on_first_download_gives_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        lk.shutil,
        "which",
        lambda name, *a, **k: None if name == "mvn" else f"/usr/bin/{name}",
    )
    with pytest.raises(lk.LocalKafkaError, match=r"`mvn` was not found.*apt-get install"):
        lk.ensure_kafka(log=lambda _m: None)


def test_ensure_kafka_skips_mvn_when_marker_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libs = lk.libs_dir()
    libs.mkdir(parents=True)
    for name in (
        f"kafka_2.13-{lk.KAFKA_VERSION}.jar",
        f"kafka-clients-{lk.KAFKA_VERSION}.jar",
        f"kafka-server-{lk.KAFKA_VERSION}.jar",
        "log4j-core-2.24.3.jar",
        "log4j-slf4j-impl-2.24.3.jar",
    ):
        (libs / name).touch()
    (libs / ".complete").write_text("{}")
    monkeypatch.setattr(lk.shutil, "which", lambda *a, **k: None)  # mvn would be needed
    assert lk.ensure_kafka(log=lambda _m: None) == libs


def test_incomplete_download_is_not_trusted() -> None:
    libs = lk.libs_dir()
    libs.mkdir(parents=True)
    (libs / f"kafka_2.13-{lk.KAFKA_VERSION}.jar").touch()  # no marker, jars missing
    assert not lk._libs_complete(libs)
    (libs / ".complete").write_text("{}")
    assert not lk._libs_complete(libs)  # marker alone is not enough


def test_status_when_nothing_ever_ran() -> None:
    info = lk.status()
    assert info == {
        "running": False,
        "bootstrap": "127.0.0.1:9092",
        "pids": [],
        "version": lk.KAFKA_VERSION,
        "data_dir": str(lk.node_specs()[0].data_dir),
    }


def test_stale_pid_file_is_dropped() -> None:
    (node,) = lk.node_specs()
    node.data_dir.mkdir(parents=True)
    node.pid_file.write_text("999999999\n")  # above pid_max: never a live process
    assert lk._node_pid(node) is None
    assert not node.pid_file.exists()


def test_cli_status_exit_code_when_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    assert lk.main(["status", "--cluster"]) == 3
    assert '"running": false' in capsys.readouterr().out


def test_cli_reports_errors_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lk.shutil, "which", lambda *a, **k: None)
    assert lk.main(["start"]) == 1
    assert "`java` was not found" in capsys.readouterr().err


# ------------------------------------------------------------------- pom


def test_repo_pom_matches_embedded_copy() -> None:
    pom = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
    assert pom.read_text() == lk.POM_XML, "keep scripts/kafka/pom.xml and POM_XML identical"


def test_embedded_pom_pins_kafka_version() -> None:
    assert f"<kafka.version>{lk.KAFKA_VERSION}</kafka.version>" in lk.POM_XML
    assert "<artifactId>kafka_2.13</artifactId>" in lk.POM_XML
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in lk.POM_XML
