"""Unit tests for sagastream.local.jaeger: the pure parts (versions, paths, ports, config,
command lines) and the build's orchestration with a fake `go` (no Go, no network)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from sagastream.local import jaeger as lj
from sagastream.ops.cli import parser

_PORT_VARS = (
    lj.ENV_QUERY_PORT,
    lj.ENV_QUERY_GRPC_PORT,
    lj.ENV_OTLP_GRPC_PORT,
    lj.ENV_OTLP_HTTP_PORT,
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(lj.localproc.ENV_CACHE_DIR, str(cache))
    for name in _PORT_VARS:
        monkeypatch.delenv(name, raising=False)
    return cache


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((lj.HOST, 0))
        return int(sock.getsockname()[1])


def _no_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"unexpected subprocess call: {args}")


# ---------------------------------------------------------------- version, paths


def test_version_is_the_approved_release_of_the_v1_tagged_module() -> None:
    assert lj.JAEGER_MODULE == "github.com/jaegertracing/jaeger"
    assert lj.JAEGER_VERSION == "v1.75.0"


def test_paths_live_under_the_cache_dir_per_version(_isolated_env: Path) -> None:
    assert lj.binary_path() == _isolated_env / "jaeger" / "v1.75.0" / "jaeger"
    assert lj.binary_path("v1.74.0") == _isolated_env / "jaeger" / "v1.74.0" / "jaeger"
    assert lj.pid_file(16686) == _isolated_env / "jaeger" / "run" / "jaeger-16686.pid"
    assert lj.config_file(17000).name == "jaeger-17000.yaml"


# --------------------------------------------------------------------- ports


def test_default_ports_are_jaegers_usual_ones() -> None:
    ports = lj.jaeger_ports()
    assert ports.all() == {
        "query": 16686,
        "query_grpc": 16685,
        "otlp_grpc": 4317,
        "otlp_http": 4318,
    }
    assert lj.query_url() == "http://127.0.0.1:16686"


def test_ports_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lj.ENV_QUERY_PORT, "26686")
    monkeypatch.setenv(lj.ENV_OTLP_GRPC_PORT, "24317")
    ports = lj.jaeger_ports()
    assert (ports.query, ports.otlp_grpc, ports.otlp_http) == (26686, 24317, 4318)
    assert lj.query_url(ports) == "http://127.0.0.1:26686"


def test_a_bad_or_clashing_port_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lj.ENV_QUERY_PORT, "http")
    with pytest.raises(lj.LocalJaegerError, match=lj.ENV_QUERY_PORT):
        lj.jaeger_ports()
    monkeypatch.setenv(lj.ENV_QUERY_PORT, "4317")
    with pytest.raises(lj.LocalJaegerError, match="must differ"):
        lj.jaeger_ports()


# ------------------------------------------------------------ command lines


def test_build_command_builds_cmd_jaeger_stripped_with_its_version(tmp_path: Path) -> None:
    cmd = lj.build_command("/usr/bin/go", tmp_path / "out")
    assert cmd[:3] == ["/usr/bin/go", "build", "-trimpath"]
    assert cmd[-3:] == ["-o", str(tmp_path / "out"), "./cmd/jaeger"]
    ldflags = cmd[cmd.index("-ldflags") + 1]
    assert ldflags.split() == [
        "-s",
        "-w",
        "-X",
        "github.com/jaegertracing/jaeger/internal/version.latestVersion=v1.75.0",
    ]


def test_jaeger_command_passes_our_config(tmp_path: Path) -> None:
    binary, config = tmp_path / "jaeger", tmp_path / "j.yaml"
    assert lj.jaeger_command(binary, config) == [str(binary), "--config", str(config)]


def test_config_listens_on_loopback_only_with_memory_storage() -> None:
    ports = lj.JaegerPorts(query=1001, query_grpc=1002, otlp_grpc=1003, otlp_http=1004)
    config = yaml.safe_load(lj.render_config(ports, max_traces=7))
    otlp = config["receivers"]["otlp"]["protocols"]
    query = config["extensions"]["jaeger_query"]
    assert otlp["grpc"]["endpoint"] == "127.0.0.1:1003"
    assert otlp["http"]["endpoint"] == "127.0.0.1:1004"
    assert query["http"]["endpoint"] == "127.0.0.1:1001"
    assert query["grpc"]["endpoint"] == "127.0.0.1:1002"
    backend = query["storage"]["traces"]
    assert config["extensions"]["jaeger_storage"]["backends"][backend] == {
        "memory": {"max_traces": 7}
    }
    assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] == backend
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]  # no jaeger/zipkin receivers: no extra ports
    assert config["service"]["telemetry"]["metrics"]["level"] == "none"  # no :8888


# -------------------------------------------------------------------- build


def _fake_go(bin_dir: Path, module_dir: Path, calls: Path) -> None:
    """A `go` that answers `mod download -json` with ``module_dir`` and writes `-o` on build."""
    bin_dir.mkdir()
    script = bin_dir / "go"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$PWD CGO_ENABLED=$CGO_ENABLED $*" >> {calls}\n'
        'if [ "$1" = mod ]; then\n'
        f'  printf \'{{"Path": "x", "Dir": "{module_dir}"}}\\n\'\n'
        "  exit 0\n"
        "fi\n"
        'while [ "$1" != -o ]; do shift; done\n'
        'printf "#!/bin/sh\\n" > "$2"\n'
        'chmod +x "$2"\n'
    )
    script.chmod(0o755)


def _read_only_module(root: Path) -> Path:
    """A module tree as the module cache keeps it: files and directories read-only."""
    (root / "cmd" / "jaeger").mkdir(parents=True)
    (root / "go.mod").write_text("module github.com/jaegertracing/jaeger\n")
    (root / "cmd" / "jaeger" / "main.go").write_text("package main\n")
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(Path(directory) / name, 0o444)
        os.chmod(directory, 0o555)
    return root


def test_build_copies_the_module_builds_in_it_and_caches_the_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _read_only_module(tmp_path / "modcache" / "jaeger@v1.75.0")
    calls = tmp_path / "calls.log"
    _fake_go(tmp_path / "bin", module, calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")  # fake go first
    messages: list[str] = []

    binary = lj.ensure_jaeger(log=messages.append)

    assert binary == lj.binary_path()
    assert os.access(binary, os.X_OK)
    home = binary.parent
    mod_call, build_call = calls.read_text().splitlines()
    assert mod_call.endswith("mod download -json github.com/jaegertracing/jaeger@v1.75.0")
    # built in the copy, static
    assert build_call.startswith(f"{home / 'src'} CGO_ENABLED=0 build -trimpath")
    assert not (home / "src").exists()  # the copy is removed after the build
    assert json.loads((home / ".complete").read_text())["version"] == "v1.75.0"
    assert any("built in" in m for m in messages)

    monkeypatch.setattr(subprocess, "run", _no_subprocess)  # a second call reuses it
    assert lj.ensure_jaeger(log=messages.append) == binary
    for directory, _, _ in os.walk(tmp_path / "modcache"):  # restore, so tmp_path can go
        os.chmod(directory, stat.S_IRWXU)


def test_a_binary_without_its_marker_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lj.binary_path().parent.mkdir(parents=True)
    lj.binary_path().write_text("half-written")
    module = _read_only_module(tmp_path / "modcache" / "jaeger@v1.75.0")
    calls = tmp_path / "calls.log"
    _fake_go(tmp_path / "bin", module, calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")  # fake go first
    lj.ensure_jaeger(log=lambda _: None)
    assert lj.binary_path().read_text() == "#!/bin/sh\n"
    for directory, _, _ in os.walk(tmp_path / "modcache"):
        os.chmod(directory, stat.S_IRWXU)


def test_without_go_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(lj.LocalJaegerError, match=r"`go` was not found.*install Go 1\.24"):
        lj.ensure_jaeger(log=lambda _: None)


# ----------------------------------------------------------------- processes


def test_start_refuses_ports_it_did_not_take_before_building(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    with socket.socket() as busy:
        busy.bind((lj.HOST, 0))
        busy.listen()
        monkeypatch.setenv(lj.ENV_OTLP_GRPC_PORT, str(busy.getsockname()[1]))
        monkeypatch.setenv(lj.ENV_QUERY_PORT, str(_free_port()))
        with pytest.raises(lj.LocalJaegerError, match="otlp_grpc.*already in use"):
            lj.start(log=lambda _: None)
    assert not lj.binary_path().exists()


def test_status_of_a_jaeger_that_never_ran(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(lj.ENV_QUERY_PORT, str(_free_port()))
    args = parser().parse_args(["jaeger", "status"])
    assert args.func(args) == 3
    info = json.loads(capsys.readouterr().out)
    assert (info["running"], info["pid"], info["built"]) == (False, None, False)
    assert info["version"] == "v1.75.0"


def test_the_cli_accepts_the_port_variables_of_the_local_and_compose_jaeger() -> None:
    from sagastream.runtime.settings import TOOL_VARIABLES

    compose = (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()
    assert "SAGASTREAM_JAEGER_QUERY_PORT" in compose
    assert {*_PORT_VARS, "SAGASTREAM_JAEGER_QUERY_PORT"} <= TOOL_VARIABLES
