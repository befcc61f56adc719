"""A real trace backend on loopback: Jaeger v2, built from the Go module proxy.

No Docker and no release download: ``go mod download`` fetches the source of the module
``github.com/jaegertracing/jaeger`` at ``v1.75.0`` (the Jaeger release v1.75.0; its Go
module keeps the v1.x tags while the binary it builds, ``cmd/jaeger``, is Jaeger v2, an
OpenTelemetry Collector distribution). ``go install MODULE/cmd/jaeger@v1.75.0`` cannot be
used: the module's go.mod has a ``replace`` directive, which Go honours only in the main
module, so the source is copied into the cache and built there as the main module. The
binary is cached and reused; the copied source is removed after a successful build.

It runs with a small config of ours (not the embedded all-in-one config, which also opens
ports 5778, 5779, 6831, 6832, 9411, 13133, 14250, 14268, 27777, 27778 and 8888): OTLP
receivers on ``127.0.0.1:4317`` (gRPC) and ``:4318`` (HTTP), memory storage, and the
query service (API and UI) on ``:16686`` (HTTP) and ``:16685`` (gRPC). Traces are lost
at stop. The module on the proxy holds no built UI assets (Jaeger's release builds embed
them from the jaeger-ui npm build), so ``/`` serves Jaeger's placeholder page; the query
API (``/api/services``, ``/api/traces``, ``/api/v3/...``), which tests read, is complete.

Paths
    cache:  ``$SAGASTREAM_CACHE_DIR`` or ``~/.cache/sagastream``
    binary: ``<cache>/jaeger/v1.75.0/jaeger`` (``.complete`` marker, with the build time)
    run:    ``<cache>/jaeger/run/jaeger-<query port>.pid``, ``.log`` and ``.yaml`` (its config)

Command line: ``python -m sagastream.local.jaeger build|start|stop|status``.

Only the standard library and ``sagastream.local.proc`` are imported, like the local
Kafka and registry, so this works before the project's dependencies are installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sagastream.local import proc as localproc
from sagastream.local.proc import LocalToolError, Log, cache_dir

__all__ = [
    "JAEGER_MODULE",
    "JAEGER_VERSION",
    "JaegerPorts",
    "LocalJaegerError",
    "binary_path",
    "build_command",
    "ensure_jaeger",
    "jaeger_command",
    "jaeger_ports",
    "main",
    "query_url",
    "render_config",
    "start",
    "status",
    "stop",
]

JAEGER_MODULE = "github.com/jaegertracing/jaeger"
JAEGER_VERSION = "v1.75.0"  # the module version of the release; newer are not approved
JAEGER_PACKAGE = "./cmd/jaeger"
HOST = "127.0.0.1"

DEFAULT_QUERY_PORT = 16686
DEFAULT_QUERY_GRPC_PORT = 16685
DEFAULT_OTLP_GRPC_PORT = 4317
DEFAULT_OTLP_HTTP_PORT = 4318
ENV_QUERY_PORT = "SAGASTREAM_LOCAL_JAEGER_QUERY_PORT"
ENV_QUERY_GRPC_PORT = "SAGASTREAM_LOCAL_JAEGER_QUERY_GRPC_PORT"
ENV_OTLP_GRPC_PORT = "SAGASTREAM_LOCAL_JAEGER_OTLP_GRPC_PORT"
ENV_OTLP_HTTP_PORT = "SAGASTREAM_LOCAL_JAEGER_OTLP_HTTP_PORT"

MAX_TRACES = 100_000  # memory storage: the oldest traces are dropped beyond this
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 10.0

# A static binary (no cgo, as Jaeger's own release builds): it runs on any Linux of the same
# architecture, e.g. in the Debian image for compose whatever the host's glibc.
BUILD_ENV = {"CGO_ENABLED": "0"}
GO_HINT = "install Go 1.24+ (https://go.dev/dl/, or `apt-get install golang-go` if recent enough)"

_NAME = "Jaeger"
_NEEDED_BY = f"{_NAME} {JAEGER_VERSION} build"
_MARKER = ".complete"
_LOG_TAIL_LINES = 25


class LocalJaegerError(LocalToolError):
    """The local Jaeger could not be built, started or stopped."""


# --------------------------------------------------------------------------- paths


def jaeger_home(version: str = JAEGER_VERSION) -> Path:
    return cache_dir() / "jaeger" / version


def binary_path(version: str = JAEGER_VERSION) -> Path:
    return jaeger_home(version) / "jaeger"


def run_dir() -> Path:
    return cache_dir() / "jaeger" / "run"


def pid_file(query_port: int) -> Path:
    return run_dir() / f"jaeger-{query_port}.pid"


def log_file(query_port: int) -> Path:
    return run_dir() / f"jaeger-{query_port}.log"


def config_file(query_port: int) -> Path:
    return run_dir() / f"jaeger-{query_port}.yaml"


@dataclass(frozen=True)
class JaegerPorts:
    """The loopback ports of one local Jaeger; the query port names its files."""

    query: int = DEFAULT_QUERY_PORT
    query_grpc: int = DEFAULT_QUERY_GRPC_PORT
    otlp_grpc: int = DEFAULT_OTLP_GRPC_PORT
    otlp_http: int = DEFAULT_OTLP_HTTP_PORT

    def all(self) -> dict[str, int]:
        return {
            "query": self.query,
            "query_grpc": self.query_grpc,
            "otlp_grpc": self.otlp_grpc,
            "otlp_http": self.otlp_http,
        }


def jaeger_ports() -> JaegerPorts:
    """The ports from ``SAGASTREAM_LOCAL_JAEGER_*_PORT``, or the defaults (16686, ...)."""
    ports = JaegerPorts(
        query=localproc.env_port(ENV_QUERY_PORT, DEFAULT_QUERY_PORT, LocalJaegerError),
        query_grpc=localproc.env_port(
            ENV_QUERY_GRPC_PORT, DEFAULT_QUERY_GRPC_PORT, LocalJaegerError
        ),
        otlp_grpc=localproc.env_port(ENV_OTLP_GRPC_PORT, DEFAULT_OTLP_GRPC_PORT, LocalJaegerError),
        otlp_http=localproc.env_port(ENV_OTLP_HTTP_PORT, DEFAULT_OTLP_HTTP_PORT, LocalJaegerError),
    )
    values = list(ports.all().values())
    if len(set(values)) != len(values):
        raise LocalJaegerError(
            f"the local Jaeger's ports must differ, got {ports.all()}; "
            f"change one of the SAGASTREAM_LOCAL_JAEGER_*_PORT variables"
        )
    return ports


def query_url(ports: JaegerPorts | None = None) -> str:
    """Base URL of the query service (API and UI), e.g. ``http://127.0.0.1:16686``."""
    return f"http://{HOST}:{(ports or jaeger_ports()).query}"


# ------------------------------------------------------------------------- build


def build_command(go: str, output: Path, version: str = JAEGER_VERSION) -> list[str]:
    """``go build`` of ``cmd/jaeger``, run in the module's source; stripped, with the
    version that ``jaeger version`` prints stamped in."""
    ldflags = f"-s -w -X {JAEGER_MODULE}/internal/version.latestVersion={version}"
    return [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(output), JAEGER_PACKAGE]


def _download_source(go: str, version: str) -> Path:
    """The module's source directory in the Go module cache (read-only), fetched via GOPROXY."""
    done = localproc.run_tool(
        [go, "mod", "download", "-json", f"{JAEGER_MODULE}@{version}"], LocalJaegerError
    )
    try:
        source = Path(json.loads(done.stdout)["Dir"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalJaegerError(
            f"`go mod download -json {JAEGER_MODULE}@{version}` gave no Dir: {done.stdout[:500]!r}"
        ) from exc
    if not (source / "go.mod").is_file():
        raise LocalJaegerError(f"{source} (from go mod download) has no go.mod")
    return source


def _writable_copy(source: Path, dest: Path) -> None:
    """Copy the module cache's read-only tree into ``dest``, writable so it can be removed."""
    shutil.copytree(source, dest, copy_function=shutil.copyfile)
    for directory, _, _ in os.walk(dest):
        os.chmod(directory, 0o755)  # noqa: S103 - our own cache directory


def _binary_complete(home: Path) -> bool:
    return (home / _MARKER).is_file() and os.access(home / "jaeger", os.X_OK)


def ensure_jaeger(log: Log = print, version: str = JAEGER_VERSION) -> Path:
    """Path of the Jaeger binary; builds it with Go on the first call (minutes, cold).

    The marker is written only after a complete build, so an interrupted one is redone.
    """
    home = jaeger_home(version)
    if _binary_complete(home):
        return home / "jaeger"
    with localproc.flock(home.parent / f".jaeger-{version}.lock"):
        if _binary_complete(home):  # another process built it while we waited
            return home / "jaeger"
        go = localproc.require("go", _NEEDED_BY, LocalJaegerError, GO_HINT)
        home.mkdir(parents=True, exist_ok=True)
        src = home / "src"
        partial = home / "jaeger.partial"
        shutil.rmtree(src, ignore_errors=True)
        log(f"Building {_NAME} from {JAEGER_MODULE}@{version} with {go} (minutes when cold) ...")
        started = time.monotonic()
        _writable_copy(_download_source(go, version), src)
        localproc.run_tool(
            build_command(go, partial, version), LocalJaegerError, cwd=src, env=BUILD_ENV
        )
        partial.replace(home / "jaeger")
        shutil.rmtree(src, ignore_errors=True)
        seconds = time.monotonic() - started
        size = (home / "jaeger").stat().st_size
        (home / _MARKER).write_text(
            json.dumps(
                {"module": JAEGER_MODULE, "version": version, "bytes": size, "build_s": seconds},
                indent=2,
            )
            + "\n"
        )
        log(f"{_NAME} {version} built in {seconds:.0f}s: {home / 'jaeger'} ({size / 1e6:.0f} MB)")
        return home / "jaeger"


# ------------------------------------------------------------------------ config


def render_config(ports: JaegerPorts, max_traces: int = MAX_TRACES, host: str = HOST) -> str:
    """The Jaeger v2 (collector) YAML: OTLP in, memory storage, query service, on ``host``
    (loopback here; ``0.0.0.0`` in the compose image).

    Its own metrics are off (``level: none``) so it opens no Prometheus port (8888), and so is
    the query service's tracing of itself (``enable_tracing``).
    """
    return f"""\
# Written by sagastream.local.jaeger; rewritten at every start.
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {max_traces}
  jaeger_query:
    storage:
      traces: memstore
    # on by default: it would export its own query spans wherever the OTEL_* variables of its
    # environment point (a shell set up to export to it: every UI query a trace), and each stop
    # would wait 10 s on that export
    enable_tracing: false
    http:
      endpoint: {host}:{ports.query}
    grpc:
      endpoint: {host}:{ports.query_grpc}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {host}:{ports.otlp_grpc}
      http:
        endpoint: {host}:{ports.otlp_http}

processors:
  batch:

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


def jaeger_command(binary: Path, config: Path) -> list[str]:
    return [str(binary), "--config", str(config)]


# -------------------------------------------------------------------- processes


def _is_jaeger_process(pid: int, query_port: int) -> bool:
    args = localproc.cmdline(pid) or []
    return str(config_file(query_port)) in args and args[0].endswith("jaeger")


def _jaeger_pid(query_port: int) -> int | None:
    """Pid of the live Jaeger of ``query_port``; drops a stale pid file, adopts a lost one."""
    return localproc.live_pid(pid_file(query_port), lambda pid: _is_jaeger_process(pid, query_port))


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def _answers(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET <url>/api/services`` returns 200 with a JSON ``data`` list."""
    try:
        with _OPENER.open(f"{url}/api/services", timeout=timeout) as response:
            body = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return isinstance(body, dict) and isinstance(body.get("data"), list | type(None))


def _wait_ready(pid: int, ports: JaegerPorts, timeout: float) -> None:
    url = query_url(ports)
    log = log_file(ports.query)
    deadline = time.monotonic() + timeout
    while not _answers(url):
        child = localproc.CHILDREN.get(pid)  # fetched first: pid_alive drops a finished child
        if not localproc.pid_alive(pid):
            code = None if child is None else child.returncode
            raise LocalJaegerError(
                f"{_NAME} (pid {pid}) exited during startup"
                f"{'' if code is None else f' with exit code {code}'}; see {log}\n"
                f"{localproc.tail(log, lines=_LOG_TAIL_LINES)}"
            )
        if time.monotonic() >= deadline:
            raise LocalJaegerError(
                f"{_NAME} at {url} did not answer GET /api/services within {timeout:.0f}s "
                f"(pid {pid} is still running); see {log}\n"
                f"{localproc.tail(log, lines=_LOG_TAIL_LINES)}"
            )
        time.sleep(0.2)


def _check_ports_free(ports: JaegerPorts) -> None:
    busy = {name: port for name, port in ports.all().items() if localproc.port_open(HOST, port)}
    if busy:
        raise LocalJaegerError(
            f"ports {busy} on {HOST} are already in use by processes this tool did not start "
            f"(set the SAGASTREAM_LOCAL_JAEGER_*_PORT variables to use others)"
        )


def _terminate(pid: int, timeout: float, log: Log) -> None:
    localproc.terminate(pid, timeout, log, _NAME, LocalJaegerError, KILL_TIMEOUT_S)


# --------------------------------------------------------------------- public API


def start(
    log: Log = print, ports: JaegerPorts | None = None, timeout: float = START_TIMEOUT_S
) -> str:
    """Start Jaeger (idempotent; builds it first if needed); return the query base URL."""
    ports = ports or jaeger_ports()
    url = query_url(ports)
    with localproc.flock(run_dir() / f"jaeger-{ports.query}.lock"):
        pid = _jaeger_pid(ports.query)
        if pid is not None:
            _wait_ready(pid, ports, timeout)  # returns at once unless it is still booting
            log(f"{_NAME} {JAEGER_VERSION} already running at {url} (pid {pid})")
            return url
        _check_ports_free(ports)
        binary = ensure_jaeger(log)
        config = config_file(ports.query)
        config.write_text(render_config(ports))
        started = time.monotonic()
        pid = localproc.spawn(
            jaeger_command(binary, config), log_file(ports.query), run_dir(), pid_file(ports.query)
        )
        log(
            f"Starting {_NAME} {JAEGER_VERSION} (pid {pid}): query {url}, OTLP gRPC "
            f"{HOST}:{ports.otlp_grpc}, OTLP HTTP {HOST}:{ports.otlp_http}, memory storage"
        )
        log(f"  log: {log_file(ports.query)}")
        try:
            _wait_ready(pid, ports, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                _terminate(pid, 5.0, log)
            with contextlib.suppress(OSError):
                pid_file(ports.query).unlink()
            raise
        log(f"{_NAME} ready at {url} after {time.monotonic() - started:.1f}s")
        return url


def stop(
    log: Log = print, ports: JaegerPorts | None = None, timeout: float = STOP_TIMEOUT_S
) -> None:
    """SIGTERM Jaeger, wait up to ``timeout`` s, then SIGKILL it; its traces are lost."""
    ports = ports or jaeger_ports()
    with localproc.flock(run_dir() / f"jaeger-{ports.query}.lock"):
        pid = _jaeger_pid(ports.query)
        if pid is None:
            log(f"{_NAME} with query port {ports.query} is not running")
            return
        _terminate(pid, timeout, log)
        with contextlib.suppress(OSError):
            pid_file(ports.query).unlink()
        log(f"{_NAME} stopped (pid {pid})")


def status(ports: JaegerPorts | None = None) -> dict[str, object]:
    """Whether the Jaeger of these ports is alive and its query API answers."""
    ports = ports or jaeger_ports()
    pid = _jaeger_pid(ports.query)
    return {
        "running": pid is not None and _answers(query_url(ports)),
        "pid": pid,
        "query_url": query_url(ports),
        "otlp_grpc": f"{HOST}:{ports.otlp_grpc}",
        "otlp_http": f"http://{HOST}:{ports.otlp_http}",
        "version": JAEGER_VERSION,
        "binary": str(binary_path()),
        "built": _binary_complete(jaeger_home()),
        "log_file": str(log_file(ports.query)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jaeger-local",
        description=f"Local {_NAME} v2 ({JAEGER_MODULE}@{JAEGER_VERSION}, built with Go) on "
        f"loopback: OTLP in, memory storage, query API and UI. Ports: {ENV_QUERY_PORT} "
        f"({DEFAULT_QUERY_PORT}), {ENV_QUERY_GRPC_PORT} ({DEFAULT_QUERY_GRPC_PORT}), "
        f"{ENV_OTLP_GRPC_PORT} ({DEFAULT_OTLP_GRPC_PORT}), {ENV_OTLP_HTTP_PORT} "
        f"({DEFAULT_OTLP_HTTP_PORT}).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the binary into the cache (reused when present)")
    p_start = sub.add_parser("start", help="start (idempotent); prints the query base URL")
    p_start.add_argument("--timeout", type=float, default=START_TIMEOUT_S)
    p_stop = sub.add_parser("stop", help="stop (traces are lost)")
    p_stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S)
    sub.add_parser("status", help="print status as JSON; exit code 3 when not running")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.command == "build":
            print(ensure_jaeger(log), flush=True)
            return 0
        if args.command == "start":
            print(start(log=log, timeout=args.timeout), flush=True)
            return 0
        if args.command == "stop":
            stop(log=log, timeout=args.timeout)
            return 0
        info = status()
        print(json.dumps(info, indent=2), flush=True)
        return 0 if info["running"] else 3
    except LocalJaegerError as exc:
        print(f"jaeger-local: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
