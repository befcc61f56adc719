"""The Docker recipes without a Docker engine: one name per image everywhere, and the Kafka
image's configure script turning KAFKA_* variables into properties as Confluent's images do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KAFKA_RECIPE = ROOT / "scripts" / "docker" / "kafka"


def _tags() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docker-images"), "tags"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.split())


def test_every_file_names_the_images_the_script_builds() -> None:
    from tests.integration import conftest

    tags = _tags()
    assert tags["kafka"] == conftest.KAFKA_IMAGE
    assert tags["registry"] == conftest.REGISTRY_IMAGE
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    defaults = {
        name: re.fullmatch(r"\$\{\w+:-(.+)\}", spec["image"]).group(1)  # type: ignore[union-attr]
        for name, spec in compose.items()
    }
    assert defaults["kafka"] == tags["kafka"]
    assert defaults["schema-registry"] == tags["registry"]
    assert defaults["prometheus"] == tags["prometheus"]
    assert defaults["jaeger"] == tags["jaeger"]
    worker = tags["worker"].rsplit(":", 1)[0] + ":latest"
    assert {defaults[s] for s in ("setup", "orchestrator", "handlers")} == {worker}
    # every FROM starts from an image built here, unless a build argument says otherwise
    for dockerfile in [ROOT / "Dockerfile", *ROOT.glob("scripts/docker/*/Dockerfile")]:
        bases = re.findall(r"^ARG BASE=(\S+)$", dockerfile.read_text(), re.MULTILINE)
        assert bases and set(bases) <= set(tags.values()), dockerfile


def _configure(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """Run the image's configure script here, its paths moved under tmp_path."""
    script = (KAFKA_RECIPE / "confluent" / "configure").read_text()
    script = script.replace(
        "/etc/confluent/docker/bash-config", str(KAFKA_RECIPE / "confluent" / "bash-config")
    )
    script = script.replace("/etc/kafka/kafka.properties", str(tmp_path / "kafka.properties"))
    (tmp_path / "configure").write_text(script)
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("KAFKA_") and k != "CLUSTER_ID"
    }
    subprocess.run(["bash", str(tmp_path / "configure")], env={**clean, **env}, check=True)
    lines = (tmp_path / "kafka.properties").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if not line.startswith("#"))


def test_kafka_variables_become_properties(tmp_path: Path) -> None:
    props = _configure(
        tmp_path,
        {
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_NODE_ID": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_LISTENER_NAME_INTERNAL_SSL_KEY___PASSWORD": "x",
            "KAFKA_CONFLUENT_SUPPORT__METRICS": "y",
            "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://127.0.0.1:32768,BROKER://10.0.0.2:9092",
            "KAFKA_HEAP_OPTS": "-Xmx1g",
            "KAFKA_OPTS": "-Dx=y",
            "KAFKA_JMX_PORT": "9999",
            "KAFKA_LOG4J_ROOT_LOGLEVEL": "WARN",
            "KAFKA_VERSION": "4.1.1",
        },
    )
    assert props == {
        "advertised.listeners": "PLAINTEXT://127.0.0.1:32768,BROKER://10.0.0.2:9092",
        "confluent.support_metrics": "y",
        "listener.name.internal.ssl.key-password": "x",
        "log.dirs": "/var/lib/kafka/data",
        "node.id": "1",
        "process.roles": "broker,controller",
        "transaction.state.log.min.isr": "1",
    }


def test_kafka_configure_refuses_zookeeper_mode(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(KAFKA_RECIPE / "confluent" / "configure")],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
