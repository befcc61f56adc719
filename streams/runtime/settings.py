"""Typed settings, read once from SAGASTREAM_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sagastream.runtime.http import Limits


class Settings(BaseSettings):
    """Connection and runtime settings; defaults point at the local broker."""

    model_config = SettingsConfigDict(env_prefix="SAGASTREAM_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str | None = None
    data_dir: Path = Path.home() / ".local" / "share" / "sagastream"
    topology_file: Path = Path("topology.yaml")
    # default: schemas/ beside the topology file
    schemas_dir: Path | None = None
    # the module of handler functions; default: the topology's `app:`
    app: str | None = None
    topic_prefix: str = ""
    # where the orchestrator reads its inputs, if not under topic_prefix: a shadow replay reads
    # the live topics and writes under a prefix of its own
    input_prefix: str | None = None
    app_id: str = "sagastream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    session_timeout_ms: int = Field(default=6000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    handler_latency_ms: int = Field(default=2, ge=0)
    handler_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    handler_seed: int = 7
    timer_tick_ms: int = Field(default=100, ge=10)
    commit_interval_ms: int = Field(default=100, ge=1)
    commit_linger_ms: int = Field(default=20, ge=0)
    handler_concurrency: int = Field(default=64, ge=1)
    drain_timeout_s: float = Field(default=10.0, ge=0.0)
    # a handler's run-time bound for every command; None: its step's timeout_ms (the longest
    # of the steps that send it), 30 s for a command of no step (notifications)
    handler_timeout_ms: int | None = Field(default=None, ge=1)
    # how often a handler tries to deliver one result before it dead-letters the command
    handler_delivery_attempts: int = Field(default=3, ge=1)
    # /readyz: 503 after this many orchestrator transactions aborted in a row
    health_aborts: int = Field(default=3, ge=1)
    # /readyz: 503 while a partition has waited for the schema registry longer than this
    health_registry_wait_s: float = Field(default=60.0, gt=0.0)
    # /healthz: 503 when a role's loop has not advanced for this long
    health_stall_s: float = Field(default=120.0, gt=0.0)
    # every HTTP server (metrics/health, signals API): connections served at once (one more is
    # answered 503), and how long one may take to send its request or read its answer
    http_max_connections: int = Field(default=64, ge=1)
    http_timeout_s: float = Field(default=10.0, gt=0.0)
    # the signals API: who may call it, as principal=token pairs separated by commas (or one
    # per line in api_tokens_file); a caller sends `Authorization: Bearer <token>` (or basic
    # credentials principal:token) and is recorded as the signal's decided_by
    api_tokens: SecretStr | None = None
    api_tokens_file: Path | None = None
    # origins (scheme://host:port) a browser may call the API from; none by default
    api_allowed_origins: str = ""
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    transaction_timeout_ms: int = Field(default=10_000, ge=1000)
    instance_id: str | None = None
    # the largest record a worker produces, headers and framing included: under the producer's
    # default message.max.bytes (1,000,000) and the broker's (1,048,588), with room to spare
    max_record_bytes: int = Field(default=990_000, ge=10_000)
    # how often a worker looks its schema ids up again, to notice a registry that lost them
    schema_ids_recheck_s: float = Field(default=30.0, gt=0)

    @field_validator("topology_file", "schemas_dir", "data_dir", "api_tokens_file")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        """Relative paths are the caller's, so a worker started elsewhere reads the same files."""
        return None if path is None else path.expanduser().absolute()

    @property
    def schemas_path(self) -> Path:
        """The project's .avsc directory."""
        return self.schemas_dir or self.topology_file.parent / "schemas"

    def http_limits(self, body_bytes: int | None = None) -> Limits:
        """The limits of this process's HTTP servers."""
        return Limits(
            self.http_max_connections, self.http_timeout_s, body_bytes or self.api_max_body_bytes
        )

    def topic(self, name: str) -> str:
        """Physical topic name for a topology topic (adds the test/tenant prefix)."""
        return f"{self.topic_prefix}{name}"

    def input_topic(self, name: str) -> str:
        """Physical name of a topic the orchestrator consumes (the live one, in a shadow replay)."""
        return f"{self.topic_prefix if self.input_prefix is None else self.input_prefix}{name}"

    def group(self, role: str) -> str:
        """Consumer group of one worker role (the orchestrator, or one handler role)."""
        return f"{self.topic_prefix}{self.app_id}-{role}"

    def changelog_topic(self) -> str:
        """The orchestrator's compacted state changelog: saga key -> saga state."""
        return f"{self.group('orchestrator')}-sagas-changelog"

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
        """An idempotent producer (acks=all) that partitions keys like the Java client (murmur2).

        librdkafka's default (CRC32) would put a saga's start event on a different partition
        than the results the agents produce, splitting one saga across two state stores.
        """
        return {
            **self.librdkafka(),
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            # what the runtime checks itself (max_record_bytes) must never be refused here
            "message.max.bytes": max(1_000_000, self.max_record_bytes),
        }

    def transactional_producer_config(self, transactional_id: str) -> dict[str, Any]:
        """The orchestrator's producer: outputs, changelog and input offsets in one transaction.

        A short transaction timeout bounds how long a crashed process's open transaction can
        hold back read_committed consumers when no successor with its id fences it sooner.
        """
        return {
            **self.producer_config(),
            "transactional.id": transactional_id,
            "transaction.timeout.ms": self.transaction_timeout_ms,
        }

    def consumer_config(self, group: str, **extra: Any) -> dict[str, Any]:
        """A consumer of committed data only, committing offsets itself, never automatically."""
        return {
            **self.librdkafka(),
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_interval_ms,
            **extra,
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings object."""
    return Settings()
