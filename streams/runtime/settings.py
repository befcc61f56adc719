"""Typed settings, read once from SAGASTREAM_* environment variables.

Strict: an environment variable SAGASTREAM_<X> that is no setting (nor one of the tools'
variables, TOOL_VARIABLES) and an unknown keyword argument are refused, naming the nearest
setting, so a misspelt SAGASTREAM_BOOTSTRAP_SERVER cannot silently leave the default in place.
Any librdkafka property passes through as SAGASTREAM_LIBRDKAFKA_<PROPERTY> (dots as underscores:
SAGASTREAM_LIBRDKAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM) or a properties file
(`librdkafka_file`), and librdkafka validates it when the first client is built
(`check_librdkafka`). A secret may come from a file: SAGASTREAM_<SECRET>_FILE (a Docker or
Kubernetes secret).
"""

from __future__ import annotations

import difflib
import logging
import os
import urllib.parse
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sagastream.errors import SagastreamError
from sagastream.runtime.http import Limits

PREFIX = "SAGASTREAM_"
# librdkafka's first retry of a transactional request (see transactional_producer_config)
TRANSACTION_RETRY_BACKOFF_MS = 10
# how long a producer gathers records into one request (librdkafka's linger.ms)
PRODUCER_LINGER_MS = 5
PASSTHROUGH = PREFIX + "LIBRDKAFKA_"
# SAGASTREAM_* variables read by sagastream's tools, not by Settings: the test fixtures, the
# local broker, registry and Jaeger, docker-compose.yml
TOOL_VARIABLES = frozenset(
    PREFIX + name
    for name in (
        "TEST_BROKER",
        "TEST_KAFKA_IMAGE",
        "TEST_REGISTRY_IMAGE",
        "TEST_LATENCY_MS",
        "CACHE_DIR",
        "KAFKA_DATA_DIR",
        "LOCAL_KAFKA_PORT",
        "LOCAL_KAFKA_CLUSTER_PORT",
        "LOCAL_REGISTRY_PORT",
        "LOCAL_JAEGER_QUERY_PORT",
        "LOCAL_JAEGER_QUERY_GRPC_PORT",
        "LOCAL_JAEGER_OTLP_GRPC_PORT",
        "LOCAL_JAEGER_OTLP_HTTP_PORT",
        "JAEGER_QUERY_PORT",
        "KAFKA_PORT",
        "REGISTRY_PORT",
        "PROMETHEUS_PORT",
        "IMAGE",
        "COMPOSE_PROJECT",
    )
)
# the settings a file may hold (SAGASTREAM_<NAME>_FILE)
SECRETS = (
    "sasl_password",
    "ssl_key_password",
    "schema_registry_password",
    "schema_registry_token",
    "api_tokens",
)


class SettingsError(SagastreamError, ValueError):
    """A setting that does not exist, or a secret file that cannot be read."""


class _Strict(PydanticBaseSettingsSource):
    """The SAGASTREAM_* variables that are no field: librdkafka properties, secrets in files,
    and the refusal of anything else."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the environment itself

    def __call__(self) -> dict[str, Any]:
        fields = set(self.settings_cls.model_fields)
        found: dict[str, Any] = {}
        passthrough: dict[str, str] = {}
        unknown: list[str] = []
        for name, value in sorted(os.environ.items()):
            if not name.startswith(PREFIX) or name in TOOL_VARIABLES:
                continue
            field = name[len(PREFIX) :].lower()
            if name.startswith(PASSTHROUGH) and field not in fields:
                passthrough[name[len(PASSTHROUGH) :].lower().replace("_", ".")] = value
            elif field.endswith("_file") and field[: -len("_file")] in SECRETS:
                found[field[: -len("_file")]] = _read_secret(name, value)
            elif field not in fields:
                unknown.append(name)
        if unknown:
            raise SettingsError("; ".join(_unknown(name, fields) for name in unknown))
        if passthrough:
            found["librdkafka_properties"] = passthrough
        return found


def redact_url(url: str) -> str:
    """A URL as it may be printed: credentials in it (user:password@) replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _read_secret(variable: str, path: str) -> str:
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{variable}: cannot read {path}: {exc.strerror}") from None


def _unknown(name: str, fields: set[str]) -> str:
    known = [PREFIX + f.upper() for f in fields] + [PREFIX + f.upper() + "_FILE" for f in SECRETS]
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    hint = f"did you mean {near[0]}?" if near else "README.md lists the settings"
    return f"{name} is not a sagastream setting ({hint})"


class Settings(BaseSettings):
    """Connection and runtime settings; defaults point at the local broker."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="forbid")

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(type(self).model_fields))
        if unknown:
            fields = set(type(self).model_fields)
            hints = []
            for name in unknown:
                near = difflib.get_close_matches(name, sorted(fields), n=1, cutoff=0.75)
                hints.append(f"{name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            raise SettingsError(f"Settings has no {', '.join(hints)}")
        super().__init__(**values)

    def __repr_args__(self) -> Any:
        """repr() without secrets: SecretStr fields show ***, a registry URL no userinfo."""
        for name, value in super().__repr_args__():
            if name == "schema_registry_url" and isinstance(value, str):
                value = redact_url(value)
            yield name, value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        return init_settings, env_settings, _Strict(settings_cls)

    # -- connection: Kafka -------------------------------------------------------------------
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # the broker's CA; and this client's certificate, key and key password (mTLS)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    # any other librdkafka property (SAGASTREAM_LIBRDKAFKA_<PROPERTY>, or a properties file of
    # `name=value` lines); these win over everything above
    librdkafka_properties: dict[str, str] = Field(default_factory=dict)
    librdkafka_file: Path | None = None

    # -- connection: schema registry ---------------------------------------------------------
    schema_registry_url: str | None = None
    # basic auth (user and password), or a bearer token; the registry's CA, and a client
    # certificate and key for mTLS
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    schema_registry_token: SecretStr | None = None
    schema_registry_cafile: Path | None = None
    schema_registry_certfile: Path | None = None
    schema_registry_keyfile: Path | None = None

    # -- the project -------------------------------------------------------------------------
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

    # -- worker tuning -----------------------------------------------------------------------
    session_timeout_ms: int = Field(default=6000, ge=1000)
    heartbeat_interval_ms: int = Field(default=1000, ge=100)
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # worker logs: text lines, or one JSON object per line (with a line per decision and per
    # handled command: ids, never payloads)
    log_format: Literal["text", "json"] = "text"
    # how often each consumer reports its positions for sagastream_consumer_lag; 0: no lag gauge
    consumer_lag_interval_ms: int = Field(default=5000, ge=0)
    # Jaeger's query API (`sagastream trace show` reads a saga's trace there), e.g.
    # http://127.0.0.1:16686; None: not set, the command says what to set
    traces_url: str | None = None
    # Jaeger's UI as the console's users' browsers reach it: a saga's page links its trace
    # there (/trace/<id>); None: traces_url's (Jaeger serves its UI and query API on one port);
    # neither set: no link
    traces_ui_url: str | None = None
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
    # per line in the file SAGASTREAM_API_TOKENS_FILE names); a caller sends `Authorization: Bearer <token>` (or basic
    # credentials principal:token) and is recorded as the signal's decided_by
    api_tokens: SecretStr | None = None
    # origins (scheme://host:port) a browser may call the API from; none by default
    api_allowed_origins: str = ""
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # `sagastream console`: where it listens (loopback: only this machine's browsers reach it)
    console_host: str = "127.0.0.1"
    console_port: int = Field(default=8089, ge=0, le=65535)
    # the console's approve/reject forms for waiting human steps; off: the console only reads
    console_actions: bool = False
    # an orchestrator (and `topics create`) refuses a topology file that changes a deployed
    # saga's start event or key field; true lets it through, for a saga none of which runs
    allow_refused_changes: bool = False
    transaction_timeout_ms: int = Field(default=10_000, ge=1000)
    instance_id: str | None = None
    # the largest record a worker produces, headers and framing included: under the producer's
    # default message.max.bytes (1,000,000) and the broker's (1,048,588), with room to spare
    max_record_bytes: int = Field(default=990_000, ge=10_000)
    # how often a worker looks its schema ids up again, to notice a registry that lost them
    schema_ids_recheck_s: float = Field(default=30.0, gt=0)

    # -- the demo's simulated services -------------------------------------------------------
    handler_latency_ms: int = Field(default=2, ge=0)
    handler_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    handler_seed: int = 7

    @field_validator(
        "topology_file",
        "schemas_dir",
        "data_dir",
        "librdkafka_file",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "schema_registry_cafile",
        "schema_registry_certfile",
        "schema_registry_keyfile",
    )
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        """Relative paths are the caller's, so a worker started elsewhere reads the same files."""
        return None if path is None else path.expanduser().absolute()

    @property
    def schemas_path(self) -> Path:
        """The project's .avsc directory."""
        return self.schemas_dir or self.topology_file.parent / "schemas"

    def traces_ui(self) -> str | None:
        """Jaeger's UI for the console's trace links: its own setting, else the query API's."""
        return self.traces_ui_url or self.traces_url

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
        if self.ssl_certfile:
            conf["ssl.certificate.location"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            conf["ssl.key.location"] = str(self.ssl_keyfile)
        if self.ssl_key_password:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        if self.log_format == "json":  # the clients' own lines too, as JSON lines
            conf["logger"] = logging.getLogger("sagastream.librdkafka")
        return {**conf, **self._properties_file(), **self.librdkafka_properties}

    def _properties_file(self) -> dict[str, str]:
        """`librdkafka_file`: `name=value` lines, `#` and `!` comments, as Java clients' files."""
        if self.librdkafka_file is None:
            return {}
        try:
            text = self.librdkafka_file.read_text()
        except OSError as exc:
            raise SettingsError(f"librdkafka_file {self.librdkafka_file}: {exc.strerror}") from None
        out: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line[0] in "#!":
                continue
            name, sep, value = line.partition("=")
            if not sep:
                raise SettingsError(
                    f"{self.librdkafka_file}:{number}: not a name=value line (its value is not shown)"
                )
            out[name.strip()] = value.strip()
        return out

    def check_librdkafka(self) -> None:
        """Let librdkafka judge the client configuration now, so that a property it does not
        know or a value it refuses stops a command or worker at start, naming the property."""
        from confluent_kafka import KafkaException, Producer

        try:
            Producer({**self.librdkafka(), "client.id": "sagastream-settings-check"})
        except KafkaException as exc:
            raise SettingsError(f"the Kafka client configuration is refused: {exc}") from None

    def schema_registry_config(self) -> dict[str, Any]:
        """The schema registry client's configuration (url, auth, TLS); None of it is printed."""
        conf: dict[str, Any] = {"url": self.schema_registry_url}
        if self.schema_registry_username or self.schema_registry_password:
            password = self.schema_registry_password
            conf["basic.auth.user.info"] = (
                f"{self.schema_registry_username or ''}:"
                f"{password.get_secret_value() if password else ''}"
            )
        if self.schema_registry_token:
            conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
            conf["bearer.auth.token"] = self.schema_registry_token.get_secret_value()
            # confluent-kafka's client requires it (Confluent Cloud's header); others ignore it
            conf["bearer.auth.logical.cluster"] = "sagastream"
        if self.schema_registry_cafile:
            conf["ssl.ca.location"] = str(self.schema_registry_cafile)
        if self.schema_registry_certfile:
            conf["ssl.certificate.location"] = str(self.schema_registry_certfile)
        if self.schema_registry_keyfile:
            conf["ssl.key.location"] = str(self.schema_registry_keyfile)
        return conf

    def producer_config(self) -> dict[str, Any]:
        """An idempotent producer (acks=all) that partitions keys like the Java client (murmur2).

        librdkafka's default (CRC32) would put a saga's start event on a different partition
        than the results the agents produce, splitting one saga across two state stores.
        """
        return {
            "linger.ms": PRODUCER_LINGER_MS,  # the user's librdkafka properties may change it
            **self.librdkafka(),
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            # what the runtime checks itself (max_record_bytes) must never be refused here
            "message.max.bytes": max(1_000_000, self.max_record_bytes),
        }

    def transactional_producer_config(self, transactional_id: str) -> dict[str, Any]:
        """The orchestrator's producer: outputs, changelog and input offsets in one transaction.

        A short transaction timeout bounds how long a crashed process's open transaction can
        hold back read_committed consumers when no successor with its id fences it sooner.

        A transaction begun right after a commit finds the coordinator still writing the last
        one's markers: its first AddPartitions/AddOffsets is answered CONCURRENT_TRANSACTIONS
        and retried after `retry.backoff.ms`. At librdkafka's 100 ms every back-to-back
        transaction took over 100 ms (15 ms at 10, on the local broker) and every saga hop waited
        for one; Kafka's Java producer retries this one case after 20 ms (KAFKA-5477). Other
        retries still back off exponentially from here up to `retry.backoff.max.ms` (1 s). A
        `retry.backoff.ms` of the user's librdkafka properties wins.
        """
        return {
            "retry.backoff.ms": TRANSACTION_RETRY_BACKOFF_MS,
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
