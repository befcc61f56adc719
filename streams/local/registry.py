"""A real Confluent-compatible schema registry on loopback: Apicurio Registry from Maven Central.

No Docker: ``mvn dependency:copy`` fetches the Quarkus distribution
``io.apicurio:apicurio-registry-app:2.6.13.Final:tar.gz:all`` (runner jar + ``lib/``)
into a per-user cache once; the registry then runs as a plain
``java -jar apicurio-registry-app-2.6.13.Final-runner.jar`` process with its H2
storage in a file, so it needs neither Kafka nor a database server, and schemas and
their ids survive restarts, as the local Kafka keeps its topics: a registry that
forgot its ids would give the ids that kept records carry to other schemas.
``--memory`` (``start(persist=False)``) keeps the storage in memory instead, and every
such start begins empty.

Clients (``confluent_kafka.schema_registry.SchemaRegistryClient``, the Confluent
serializers) talk to its Confluent-compatible API at
``http://127.0.0.1:8081/apis/ccompat/v7`` (``SAGASTREAM_LOCAL_REGISTRY_PORT`` moves
it). On a fresh start the global compatibility level is set to ``BACKWARD``, the
Confluent default (Apicurio's own default is ``NONE``).

Why 2.6.13.Final and not 3.x: the 3.3.x distributions are compiled for Java 21
(this project's machines have Java 17), and the 3.0.9 distribution cannot be
resolved by Maven because its parent POM ``io.apicurio:apicurio-registry:3.0.9``
is not on the reachable Central. See ``docs/registry-findings.md``.

Paths
    cache:  ``$SAGASTREAM_CACHE_DIR`` or ``~/.cache/sagastream``
    dist:   ``<cache>/apicurio-registry-2.6.13.Final/dist`` (``.complete`` marker)
    run:    ``<cache>/registry/registry-<port>.pid`` and ``registry-<port>.log``
            (JVM stdout/stderr, i.e. the registry's log)
    data:   ``<cache>/registry/data-<port>/registry.mv.db`` (not with ``--memory``)

Command line: ``python -m sagastream.local.registry start|stop|status [--port N]``.

Only the standard library (and ``sagastream.local.proc``, the process helpers this shares
with ``sagastream.local.kafka``, itself stdlib-only) is imported, so this works before the
project's dependencies are installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from sagastream.local import proc as localproc
from sagastream.local.proc import ENV_CACHE_DIR as ENV_CACHE_DIR  # re-exported, like cache_dir
from sagastream.local.proc import INSTALL_HINT as INSTALL_HINT
from sagastream.local.proc import LocalToolError, Log, cache_dir, parse_java_major

__all__ = [
    "CCOMPAT_PATH",
    "DEFAULT_PORT",
    "LocalRegistryError",
    "REGISTRY_COORDINATES",
    "REGISTRY_NAME",
    "REGISTRY_VERSION",
    "base_url",
    "cache_dir",
    "ensure_registry",
    "main",
    "parse_java_major",
    "registry_command",
    "registry_port",
    "start",
    "status",
    "stop",
]

REGISTRY_NAME = "Apicurio Registry"
REGISTRY_VERSION = "2.6.13.Final"
REGISTRY_GROUP_ID = "io.apicurio"
REGISTRY_ARTIFACT_ID = "apicurio-registry-app"
# groupId:artifactId:version:type:classifier, as dependency:copy -Dartifact takes it.
REGISTRY_COORDINATES = f"{REGISTRY_GROUP_ID}:{REGISTRY_ARTIFACT_ID}:{REGISTRY_VERSION}:tar.gz:all"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
TARBALL_NAME = f"{REGISTRY_ARTIFACT_ID}-{REGISTRY_VERSION}-all.tar.gz"
RUNNER_JAR = f"{REGISTRY_ARTIFACT_ID}-{REGISTRY_VERSION}-runner.jar"
MIN_JAVA_VERSION = 17  # Quarkus 3.15, which this release is built on

CCOMPAT_PATH = "/apis/ccompat/v7"
DEFAULT_PORT = 8081
HOST = "127.0.0.1"
DEFAULT_COMPATIBILITY = "BACKWARD"

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
KILL_TIMEOUT_S = 10.0

JVM_OPTS = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

ENV_PORT = "SAGASTREAM_LOCAL_REGISTRY_PORT"

_MARKER = ".complete"
_MIN_LIB_JARS = 100  # the 2.6.13.Final distribution ships 309
_NEEDED_BY = f"{REGISTRY_NAME} {REGISTRY_VERSION}"  # "the local Apicurio Registry ... needs it"
_LOG_TAIL_LINES = 25


class LocalRegistryError(LocalToolError):
    """The local schema registry could not be installed, started or stopped."""


# --------------------------------------------------------------------------- paths


def registry_home() -> Path:
    return cache_dir() / f"apicurio-registry-{REGISTRY_VERSION}"


def dist_dir() -> Path:
    """The unpacked distribution: the runner jar and ``lib/``."""
    return registry_home() / "dist"


def run_dir() -> Path:
    return cache_dir() / "registry"


def pid_file(port: int) -> Path:
    return run_dir() / f"registry-{port}.pid"


def log_file(port: int) -> Path:
    return run_dir() / f"registry-{port}.log"


def db_path(port: int) -> Path:
    """H2 database of a persistent registry (the default); H2 adds ``.mv.db``."""
    return run_dir() / f"data-{port}" / "registry"


def registry_port() -> int:
    """``$SAGASTREAM_LOCAL_REGISTRY_PORT`` or 8081."""
    return localproc.env_port(ENV_PORT, DEFAULT_PORT, LocalRegistryError)


def base_url(port: int | None = None) -> str:
    """The Confluent-compatible base URL, e.g. ``http://127.0.0.1:8081/apis/ccompat/v7``."""
    return f"http://{HOST}:{registry_port() if port is None else port}{CCOMPAT_PATH}"


# --------------------------------------------------------------------- download


def _dist_complete(dist: Path) -> bool:
    if not (dist / _MARKER).is_file() or not (dist / RUNNER_JAR).is_file():
        return False
    return sum(1 for _ in (dist / "lib").glob("*.jar")) >= _MIN_LIB_JARS


def _extract(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball, "r:gz") as archive:
        if hasattr(tarfile, "data_filter"):  # 3.11.4+: refuses absolute/.. paths, no chown
            archive.extractall(dest, filter="data")
            return
        root = dest.resolve()
        for member in archive.getmembers():
            target = (dest / member.name).resolve()
            if root != target and root not in target.parents:
                raise LocalRegistryError(f"{tarball} has an unsafe entry: {member.name!r}")
            if not (member.isfile() or member.isdir()):
                raise LocalRegistryError(f"{tarball} has an unexpected entry: {member.name!r}")
        archive.extractall(dest)  # noqa: S202 - every member was checked above


def ensure_registry(log: Log = print) -> Path:
    """Directory of the unpacked distribution; downloads it with Maven on the first call.

    Maven puts the tarball (about 142 MB) in the local repository (``~/.m2``, so it is
    reused); it is unpacked into ``<cache>/apicurio-registry-<version>/dist`` and a
    marker file is written only after a complete unpack, so an interrupted one is redone.
    """
    dist = dist_dir()
    if _dist_complete(dist):
        return dist
    home = registry_home()
    with localproc.flock(home.parent / f".apicurio-registry-{REGISTRY_VERSION}.lock"):
        if _dist_complete(dist):  # another process finished it while we waited
            return dist
        mvn = localproc.require("mvn", _NEEDED_BY, LocalRegistryError)
        localproc.require("java", _NEEDED_BY, LocalRegistryError)
        home.mkdir(parents=True, exist_ok=True)
        download = home / "download"
        partial = home / "dist.partial"
        shutil.rmtree(download, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            f"{DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact={REGISTRY_COORDINATES}",
            f"-DoutputDirectory={download}",
        ]
        log(f"Downloading {REGISTRY_NAME} ({REGISTRY_COORDINATES}) with Maven ...")
        started = time.monotonic()
        localproc.run_tool(cmd, LocalRegistryError, cwd=home)
        tarball = download / TARBALL_NAME
        if not tarball.is_file():
            raise LocalRegistryError(f"Maven finished but {tarball} is missing")
        size = tarball.stat().st_size
        try:
            _extract(tarball, partial)
        except (OSError, tarfile.TarError) as exc:
            raise LocalRegistryError(f"could not unpack {tarball}: {exc}") from exc
        jars = sum(1 for _ in (partial / "lib").glob("*.jar"))
        if not (partial / RUNNER_JAR).is_file() or jars < _MIN_LIB_JARS:
            raise LocalRegistryError(
                f"{tarball} unpacked to {partial} without {RUNNER_JAR} or its lib/ jars"
            )
        shutil.rmtree(dist, ignore_errors=True)
        partial.rename(dist)
        shutil.rmtree(download, ignore_errors=True)
        (dist / _MARKER).write_text(
            json.dumps(
                {
                    "registry": REGISTRY_NAME,
                    "version": REGISTRY_VERSION,
                    "coordinates": REGISTRY_COORDINATES,
                    "tarball_bytes": size,
                    "lib_jars": jars,
                },
                indent=2,
            )
            + "\n"
        )
        log(
            f"{REGISTRY_NAME} {REGISTRY_VERSION} ready in {dist} "
            f"({size / 1e6:.0f} MB, {jars} jars) after {time.monotonic() - started:.1f}s"
        )
        return dist


# -------------------------------------------------------------------- processes


def registry_command(java: str, dist: Path, port: int, db_path: Path | None = None) -> list[str]:
    """The ``java`` command line of a registry listening on ``127.0.0.1:port``.

    Storage is Apicurio's in-memory H2 database unless ``db_path`` is given: then the
    same H2 storage lives in the file ``<db_path>.mv.db`` and survives restarts.
    """
    cmd = [
        java,
        *JVM_OPTS,
        f"-Dquarkus.http.host={HOST}",
        f"-Dquarkus.http.port={port}",
        "-Dquarkus.http.access-log.enabled=false",
        # Let tests clean up (the ccompat DELETE endpoints; off by default in Apicurio).
        "-Dregistry.rest.artifact.deletion.enabled=true",
    ]
    if db_path is not None:
        cmd.append(f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{db_path}")
    return [*cmd, "-jar", str(dist / RUNNER_JAR)]


def _is_registry_process(pid: int, port: int) -> bool:
    args = localproc.cmdline(pid)
    if not args:
        return False
    return f"-Dquarkus.http.port={port}" in args and str(dist_dir() / RUNNER_JAR) in args


def _registry_pid(port: int) -> int | None:
    """Pid of the live registry JVM on ``port``; drops a stale pid file, adopts a lost JVM."""
    return localproc.live_pid(pid_file(port), lambda pid: _is_registry_process(pid, port))


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def _http(
    method: str, url: str, body: dict[str, object] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/vnd.schemaregistry.v1+json, application/json")
    if data is not None:
        request.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
    with _OPENER.open(request, timeout=timeout) as response:
        return response.status, response.read()


def _answers(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET <url>/subjects`` returns 200."""
    try:
        status_code, _ = _http("GET", f"{url}/subjects", timeout=timeout)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return status_code == 200


def _terminate(pid: int, timeout: float, log: Log) -> None:
    localproc.terminate(
        pid, timeout, log, f"{REGISTRY_NAME} JVM", LocalRegistryError, KILL_TIMEOUT_S
    )


def _launch(cmd: list[str], port: int) -> int:
    return localproc.spawn(cmd, log_file(port), run_dir(), pid_file(port))


def _wait_ready(pid: int, port: int, timeout: float) -> None:
    url = base_url(port)
    deadline = time.monotonic() + timeout
    while True:
        child = localproc.CHILDREN.get(pid)  # fetched first: pid_alive drops a finished child
        if not localproc.pid_alive(pid):
            code = child.returncode if child is not None else None
            raise LocalRegistryError(
                f"{REGISTRY_NAME} (pid {pid}) exited during startup"
                f"{'' if code is None else f' with exit code {code}'}; see {log_file(port)}\n"
                f"{localproc.tail(log_file(port), lines=_LOG_TAIL_LINES)}"
            )
        if _answers(url):
            return
        if time.monotonic() >= deadline:
            raise LocalRegistryError(
                f"{REGISTRY_NAME} at {url} did not answer GET /subjects within {timeout:.0f}s "
                f"(pid {pid} is still running); see {log_file(port)}\n"
                f"{localproc.tail(log_file(port), lines=_LOG_TAIL_LINES)}"
            )
        time.sleep(0.25)


def _set_global_compatibility(url: str, level: str) -> None:
    try:
        _http("PUT", f"{url}/config", {"compatibility": level})
    except (OSError, urllib.error.URLError) as exc:
        raise LocalRegistryError(f"PUT {url}/config {level} failed: {exc}") from exc


# --------------------------------------------------------------------- public API


def start(
    log: Log = print,
    port: int | None = None,
    timeout: float = START_TIMEOUT_S,
    compatibility: str | None = DEFAULT_COMPATIBILITY,
    persist: bool = True,
) -> str:
    """Start the registry (idempotent); return its Confluent-compatible base URL.

    Downloads the distribution on first use. By default schemas (and their ids) are kept
    in an H2 file, ``db_path(port)``, across restarts, like the local Kafka keeps its
    topics; ``persist=False`` keeps them in memory, and every start begins empty. A new
    (empty) registry gets the global compatibility level ``compatibility`` (``BACKWARD``
    like Confluent; ``None`` keeps Apicurio's ``NONE``). When it already runs, nothing
    is changed (not even the storage kind) and the URL is returned once it answers.
    """
    port = registry_port() if port is None else port
    url = base_url(port)
    with localproc.flock(run_dir() / f"registry-{port}.lock"):
        pid = _registry_pid(port)
        if pid is not None:
            if not _answers(url):  # alive but still booting
                _wait_ready(pid, port, timeout)
            log(f"{REGISTRY_NAME} {REGISTRY_VERSION} already running at {url} (pid {pid})")
            return url
        if localproc.port_open(HOST, port):
            raise LocalRegistryError(
                f"port {port} on {HOST} is already in use by a process this tool did not "
                f"start (set {ENV_PORT} to use another port)"
            )
        java = localproc.require_java(_NEEDED_BY, LocalRegistryError, MIN_JAVA_VERSION)
        dist = ensure_registry(log)
        db = db_path(port) if persist else None
        fresh = db is None or not db.with_name(db.name + ".mv.db").exists()
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        pid = _launch(registry_command(java, dist, port, db), port)
        storage = "in memory" if db is None else f"in {db}.mv.db"
        log(f"Starting {REGISTRY_NAME} {REGISTRY_VERSION} at {url} (pid {pid}), storage {storage}")
        log(f"  log: {log_file(port)}")
        try:
            _wait_ready(pid, port, timeout)
            if compatibility and fresh:
                _set_global_compatibility(url, compatibility)
        except BaseException:
            with contextlib.suppress(Exception):
                _terminate(pid, 5.0, log)
            with contextlib.suppress(OSError):
                pid_file(port).unlink()
            raise
        log(f"{REGISTRY_NAME} ready at {url} after {time.monotonic() - started:.1f}s")
        return url


def stop(log: Log = print, port: int | None = None, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the registry JVM, wait up to ``timeout`` s, then SIGKILL it.

    A persistent registry keeps its H2 file; an in-memory one (``persist=False``) loses all.
    """
    port = registry_port() if port is None else port
    with localproc.flock(run_dir() / f"registry-{port}.lock"):
        pid = _registry_pid(port)
        if pid is None:
            log(f"{REGISTRY_NAME} on port {port} is not running")
            return
        started = time.monotonic()
        _terminate(pid, timeout, log)
        with contextlib.suppress(OSError):
            pid_file(port).unlink()
        log(f"{REGISTRY_NAME} stopped (pid {pid}) in {time.monotonic() - started:.1f}s")


def status(port: int | None = None) -> dict[str, object]:
    """Whether the registry JVM on ``port`` is alive and its API answers."""
    port = registry_port() if port is None else port
    url = base_url(port)
    pid = _registry_pid(port)
    answering = pid is not None and _answers(url)
    storage = None
    if pid is not None:
        prefix = "-Dquarkus.datasource.jdbc.url=jdbc:h2:file:"
        files = [
            a[len(prefix) :] + ".mv.db"
            for a in localproc.cmdline(pid) or []
            if a.startswith(prefix)
        ]
        storage = files[0] if files else "memory"
    return {
        "running": answering,
        "pid": pid,
        "url": url,
        "port": port,
        "storage": storage,
        "registry": REGISTRY_NAME,
        "version": REGISTRY_VERSION,
        "log_file": str(log_file(port)),
    }


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"HTTP port (default ${ENV_PORT} or {DEFAULT_PORT})",
    )
    parser = argparse.ArgumentParser(
        prog="registry-local",
        description=f"Local {REGISTRY_NAME} {REGISTRY_VERSION} (Confluent-compatible API, "
        "storage in an H2 file) on loopback, from Maven Central.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser(
        "start", parents=[common], help="start (idempotent); prints the ccompat base URL"
    )
    p_start.add_argument(
        "--timeout", type=float, default=START_TIMEOUT_S, help="readiness timeout, seconds"
    )
    p_start.add_argument(
        "--memory",
        dest="persist",
        action="store_false",
        help="keep schemas in memory: every start begins empty (default: an H2 file under "
        "the cache, kept across restarts)",
    )
    # the default now; still accepted from scripts written when memory was
    p_start.add_argument("--persist", dest="persist", action="store_true", help=argparse.SUPPRESS)
    p_start.add_argument(
        "--compatibility",
        default=DEFAULT_COMPATIBILITY,
        help="global compatibility level set on a fresh start ('' keeps Apicurio's NONE)",
    )
    p_stop = sub.add_parser(
        "stop", parents=[common], help="stop (schemas are kept, unless started with --memory)"
    )
    p_stop.add_argument(
        "--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds before SIGKILL"
    )
    sub.add_parser(
        "status", parents=[common], help="print status as JSON; exit code 3 when not running"
    )
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.command == "start":
            url = start(
                log=log,
                port=args.port,
                timeout=args.timeout,
                compatibility=args.compatibility,
                persist=args.persist,
            )
            print(url, flush=True)
            return 0
        if args.command == "stop":
            stop(log=log, port=args.port, timeout=args.timeout)
            return 0
        info = status(port=args.port)
        print(json.dumps(info, indent=2), flush=True)
        return 0 if info["running"] else 3
    except LocalRegistryError as exc:
        print(f"registry-local: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
