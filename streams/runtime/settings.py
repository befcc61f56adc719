"""Typed settings, read once from SAGASTREAM_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Connection and runtime settings; defaults point at the local broker."""

    model_config = SettingsConfigDict(env_prefix="SAGASTREAM_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str | None = None
    data_dir: Path = Path.home() / ".local" / "share" / "sagastream"
    topology_file: Path = REPO_ROOT / "topology.yaml"
    topic_prefix: str = ""
    app_id: str = "sagastream"
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    session_timeout_ms: int = Field(default=6000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    metrics_port: int = 0
    handler_latency_ms: int = Field(default=2, ge=0)
    handler_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    handler_seed: int = 7
    timer_tick_ms: int = Field(default=500, ge=10)

    def topic(self, name: str) -> str:
        """Physical topic name for a topology topic (adds the test/tenant prefix)."""
        return f"{self.topic_prefix}{name}"

    def group(self, role: str) -> str:
        """Consumer group (faust app id) of one worker role."""
        return f"{self.topic_prefix}{self.app_id}-{role}"

    def librdkafka(self) -> dict[str, Any]:
        """The confluent-kafka configuration dict for these settings (the one boundary)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        return conf

    def producer_config(self) -> dict[str, Any]:
        """An idempotent producer that partitions keys like the Java client and faust (murmur2).

        librdkafka's default (CRC32) would put a saga's start event on a different partition
        than the results the agents produce, splitting one saga across two state stores.
        """
        return {
            **self.librdkafka(),
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings object."""
    return Settings()
