"""Settings: strict names, the librdkafka passthrough, mTLS, secrets from files, and what is printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagastream.runtime.settings import TOOL_VARIABLES, Settings, SettingsError, redact_url
from sagastream.wire.registry import Registry


def test_a_misspelt_variable_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: unknown SAGASTREAM_SSL_* variables were silently ignored, so a typo left the
    default (PLAINTEXT, the local broker) in place."""
    monkeypatch.setenv("SAGASTREAM_BOOTSTRAP_SERVER", "kafka:9093")
    monkeypatch.setenv("SAGASTREAM_SSL_CERTIFICATE", "/etc/client.pem")
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert str(caught.value) == (
        "SAGASTREAM_BOOTSTRAP_SERVER is not a sagastream setting (did you mean "
        "SAGASTREAM_BOOTSTRAP_SERVERS?); SAGASTREAM_SSL_CERTIFICATE is not a sagastream setting "
        "(did you mean SAGASTREAM_SSL_CERTFILE?)"
    )


def test_an_unknown_keyword_is_refused_naming_the_field() -> None:
    with pytest.raises(
        SettingsError, match=r"Settings has no 'topic_prefx' \(did you mean 'topic_prefix'\?\)"
    ):
        Settings(topic_prefx="p-")
    with pytest.raises(SettingsError, match=r"Settings has no 'zzz'$"):
        Settings(zzz=1)


def test_the_tools_own_variables_are_not_settings_and_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TOOL_VARIABLES:
        monkeypatch.setenv(name, "1")
    assert Settings().bootstrap_servers == "127.0.0.1:9092"


def test_mtls_and_any_librdkafka_property_reach_the_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    properties = tmp_path / "client.properties"
    properties.write_text(
        "# from the platform team\nsocket.keepalive.enable = true\n! Java-style comment\n"
        "client.rack=eu-1a\n"
    )
    monkeypatch.setenv("SAGASTREAM_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("SAGASTREAM_SSL_CERTFILE", str(tmp_path / "client.pem"))
    monkeypatch.setenv("SAGASTREAM_SSL_KEYFILE", str(tmp_path / "client.key"))
    monkeypatch.setenv("SAGASTREAM_SSL_KEY_PASSWORD", "key-secret")
    monkeypatch.setenv("SAGASTREAM_LIBRDKAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "none")
    monkeypatch.setenv("SAGASTREAM_LIBRDKAFKA_CLIENT_RACK", "eu-1b")  # wins over the file
    monkeypatch.setenv("SAGASTREAM_LIBRDKAFKA_FILE", str(properties))
    conf = Settings().librdkafka()
    assert conf["security.protocol"] == "SSL"
    assert conf["ssl.certificate.location"] == str(tmp_path / "client.pem")
    assert conf["ssl.key.location"] == str(tmp_path / "client.key")
    assert conf["ssl.key.password"] == "key-secret"
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    assert conf["socket.keepalive.enable"] == "true"
    assert conf["client.rack"] == "eu-1b"
    consumer = Settings().consumer_config("g")
    assert consumer["ssl.key.password"] == "key-secret" and consumer["group.id"] == "g"


def test_a_transaction_begun_after_a_commit_retries_after_10_ms_not_100(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Back-to-back transactions are answered CONCURRENT_TRANSACTIONS while the coordinator
    writes the last one's markers; at librdkafka's 100 ms backoff each took over 100 ms. Only
    the transactional producer's first retry is shortened; the user's property wins."""
    assert Settings().transactional_producer_config("t")["retry.backoff.ms"] == 10
    assert "retry.backoff.ms" not in Settings().producer_config()
    monkeypatch.setenv("SAGASTREAM_LIBRDKAFKA_RETRY_BACKOFF_MS", "50")
    assert Settings().transactional_producer_config("t")["retry.backoff.ms"] == "50"


def test_a_producers_linger_is_5_ms_unless_the_users_properties_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """linger.ms trades requests (the broker's CPU) for latency per hop: the user may tune it.
    What the runtime's guarantees need (idempotence, acks=all, the partitioner) is not theirs
    to change."""
    assert Settings().producer_config()["linger.ms"] == 5
    monkeypatch.setenv("SAGASTREAM_LIBRDKAFKA_LINGER_MS", "25")
    monkeypatch.setenv("SAGASTREAM_LIBRDKAFKA_ACKS", "1")
    conf = Settings().transactional_producer_config("t")
    assert conf["linger.ms"] == "25" and conf["acks"] == "all"


def test_librdkafka_judges_the_properties_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGASTREAM_LIBRDKAFKA_SOCKET_KEEPALIVE_ENABLE", "true")
    Settings().check_librdkafka()
    monkeypatch.setenv("SAGASTREAM_LIBRDKAFKA_NO_SUCH_PROPERTY", "1")
    with pytest.raises(SettingsError, match="no.such.property"):
        Settings().check_librdkafka()


def test_secrets_come_from_files_and_are_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in (
        ("SASL_PASSWORD", "sasl-secret"),
        ("SCHEMA_REGISTRY_PASSWORD", "registry-secret"),
        ("SSL_KEY_PASSWORD", "key-secret"),
    ):
        (tmp_path / name).write_text(value + "\n")
        monkeypatch.setenv(f"SAGASTREAM_{name}_FILE", str(tmp_path / name))
    monkeypatch.setenv("SAGASTREAM_SCHEMA_REGISTRY_USERNAME", "svc")
    monkeypatch.setenv("SAGASTREAM_SCHEMA_REGISTRY_URL", "https://reg:8081/apis/ccompat/v7")
    settings = Settings()
    assert settings.librdkafka()["sasl.password"] == "sasl-secret"
    assert settings.schema_registry_config()["basic.auth.user.info"] == "svc:registry-secret"
    shown = repr(settings) + str(settings)
    for secret in ("sasl-secret", "registry-secret", "key-secret"):
        assert secret not in shown
    monkeypatch.setenv("SAGASTREAM_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="SAGASTREAM_SASL_PASSWORD_FILE: cannot read"):
        Settings()


def test_the_registry_client_gets_its_credentials_and_tls(tmp_path: Path) -> None:
    settings = Settings(
        schema_registry_url="https://reg:8081",
        schema_registry_token="bearer-secret",
        schema_registry_cafile=tmp_path / "ca.pem",
        schema_registry_certfile=tmp_path / "c.pem",
        schema_registry_keyfile=tmp_path / "c.key",
    )
    conf = settings.schema_registry_config()
    assert conf["bearer.auth.credentials.source"] == "STATIC_TOKEN"
    assert conf["bearer.auth.token"] == "bearer-secret"
    assert conf["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert conf["ssl.certificate.location"] == str(tmp_path / "c.pem")
    assert conf["ssl.key.location"] == str(tmp_path / "c.key")


def test_a_registry_url_with_credentials_is_printed_without_them() -> None:
    assert (
        redact_url("https://svc:pw@reg:8081/apis/ccompat/v7")
        == "https://***@reg:8081/apis/ccompat/v7"
    )
    assert redact_url("http://reg/x") == "http://reg/x"
    assert Registry("http://svc:pw@127.0.0.1:1/x").url == "http://***@127.0.0.1:1/x"
    assert "pw" not in repr(Settings(schema_registry_url="http://svc:pw@reg:1"))


def test_the_cli_says_a_misspelt_variable_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "SAGASTREAM_TOPIC_PREFX": "p-"}
    done = subprocess.run(
        [sys.executable, "-m", "sagastream.ops.cli", "topology", "versions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "sagastream topology: SAGASTREAM_TOPIC_PREFX is not a sagastream setting "
        "(did you mean SAGASTREAM_TOPIC_PREFIX?)"
    )


def test_the_cli_stops_quietly_when_its_reader_leaves() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        f"{sys.executable} -m sagastream.ops.cli acls --all | head -c 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        executable="/bin/bash",
    )
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
