"""What local infrastructure processes share: tools, locks, pid checks, termination.

``sagastream.local.kafka`` and ``sagastream.local.registry`` each run a JVM on loopback from
jars fetched with Maven; this module holds the parts they have in common:

- tools: the per-user cache directory, finding ``java``/``mvn`` on PATH (with an
  install hint when missing), the Java version check, running a tool to completion;
- locks: an exclusive advisory file lock around start/stop/download;
- processes: launching a detached JVM with its output in a log file, telling
  whether a pid is alive and is ours (``/proc``, ``ps`` without it), adopting a
  process whose pid file was lost, the tail of its log for error messages;
- ports: free ones for a server to bind, below the OS's ephemeral range;
- termination: SIGTERM (to the whole process group), wait, then SIGKILL.

Helpers that can fail take the caller's error class (a ``LocalToolError``
subclass) and the name of what needs them, so each module keeps its own errors
and messages. Only the standard library is imported.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "CHILDREN",
    "ENV_CACHE_DIR",
    "INSTALL_HINT",
    "KILL_TIMEOUT_S",
    "MIN_JAVA_VERSION",
    "Log",
    "LocalToolError",
    "cache_dir",
    "cmdline",
    "file_size",
    "find_process",
    "flock",
    "java_major",
    "live_pid",
    "parse_java_major",
    "pid_alive",
    "port_open",
    "require",
    "require_java",
    "run_tool",
    "signal_process",
    "spawn",
    "tail",
    "terminate",
    "wait_gone",
]

ENV_CACHE_DIR = "SAGASTREAM_CACHE_DIR"
MIN_JAVA_VERSION = 17
KILL_TIMEOUT_S = 10.0

INSTALL_HINT = (
    "install a Java 17+ runtime and Maven, e.g. "
    "`apt-get install openjdk-17-jre-headless maven` (Debian/Ubuntu) or "
    "`brew install openjdk@17 maven` (macOS)"
)

Log = Callable[[str], object]

# Popen objects of the processes this interpreter started (spawn()), so that they are
# reaped (no zombies, no ResourceWarning) when they are stopped from the same process.
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class LocalToolError(RuntimeError):
    """A local infrastructure process could not be installed, started or stopped."""


# ------------------------------------------------------------------------ tools


def cache_dir() -> Path:
    """``$SAGASTREAM_CACHE_DIR`` or ``~/.cache/sagastream`` (not created)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sagastream"


def env_port(name: str, default: int, error: type[Exception], highest: int = 65535) -> int:
    """A port number from an environment variable, or `default` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise error(f"{name}={raw!r} is not a port number") from None
    if not 1 <= port <= highest:
        raise error(f"{name}={port} is out of range (1-{highest})")
    return port


def require(
    tool: str, needed_by: str, error: type[LocalToolError], hint: str = INSTALL_HINT
) -> str:
    """Path of ``tool`` on PATH, or ``error`` saying the local ``needed_by`` needs it."""
    path = shutil.which(tool)
    if path is None:
        raise error(f"`{tool}` was not found on PATH; the local {needed_by} needs it: {hint}")
    return path


def parse_java_major(version_output: str) -> int | None:
    """Major version from ``java -version`` output (``17.0.15`` -> 17, ``1.8.0_392`` -> 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def java_major(java: str) -> int | None:
    """Major version of the ``java`` executable; None when it cannot be told."""
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_java_major(proc.stderr + proc.stdout)


def require_java(
    needed_by: str,
    error: type[LocalToolError],
    min_version: int = MIN_JAVA_VERSION,
    hint: str = INSTALL_HINT,
) -> str:
    """Path of a ``java`` of at least ``min_version``; an unknown version is let through
    (the launch itself then reports what is wrong)."""
    java = require("java", needed_by, error, hint)
    major = java_major(java)
    if major is not None and major < min_version:
        raise error(f"{java} is Java {major}; {needed_by} needs Java {min_version}+: {hint}")
    return java


def run_tool(
    cmd: Sequence[str],
    error: type[LocalToolError],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion; ``error`` with the last 30 output lines when it fails.

    ``env`` is added to this process's environment."""
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=cwd, env=full_env
        )
    except OSError as exc:
        raise error(f"could not run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise error(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{output}")
    return proc


# ------------------------------------------------------------------------ locks


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so concurrent start/stop/download calls serialise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------- logs


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes; 0 when it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def tail(path: Path, since: int = 0, lines: int = 20) -> str:
    """The last lines written to ``path`` after byte offset ``since``; errors first."""
    try:
        with path.open("rb") as handle:
            handle.seek(since if since <= file_size(path) else 0)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    all_lines = text.splitlines()
    errors = [ln for ln in all_lines if " ERROR " in ln or " FATAL " in ln][-5:]
    last = all_lines[-lines:]
    return "\n".join([*errors, *(["..."] if errors else []), *last])


# -------------------------------------------------------------------- processes


def spawn(cmd: Sequence[str], output: Path, cwd: Path, pid_file: Path) -> int:
    """Start ``cmd`` in its own session, stdout and stderr appended to ``output``; the
    pid is written to ``pid_file`` and returned."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {cmd}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    CHILDREN[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not); a finished child is dropped from
    ``CHILDREN``, so read its ``returncode`` before asking."""
    child = CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie answers kill(0) but is gone for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def cmdline(pid: int) -> list[str] | None:
    """Arguments of process ``pid`` (``/proc``, else ``ps``); None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None  # Linux: the process is gone
    except OSError:
        return None
    try:  # no procfs (macOS)
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return None
    return out.split() if out else None


def find_process(is_ours: Callable[[int], bool]) -> int | None:
    """A live process other than this one for which ``is_ours(pid)`` holds (Linux only)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if pid != os.getpid() and is_ours(pid) and pid_alive(pid):
                return pid
    return None


def live_pid(pid_file: Path, is_ours: Callable[[int], bool]) -> int | None:
    """Pid of the live process ``pid_file`` names when ``is_ours(pid)``; drops a stale
    pid file and adopts (rewrites the file for) a process of ours whose file was lost."""
    try:
        pid: int | None = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and pid_alive(pid) and is_ours(pid):
        return pid
    with contextlib.suppress(OSError):
        pid_file.unlink()
    found = find_process(is_ours)
    if found is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{found}\n")
    return found


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# The OS hands out ports from 32768 up (Linux's ip_local_port_range) to outgoing connections;
# a port chosen for a server lies below, so no connection takes it before the server binds it
# (a client's retries to a server that is down, a connection to a port nothing listens on that
# is given that very port as its source: a TCP self-connect, holding it).
FREE_PORTS_FROM, FREE_PORTS_BELOW = 20000, 32000


def free_ports(host: str, offsets: Sequence[int] = (0,)) -> int:
    """A port `first` on `host` such that `first + offset` is free for every offset (a broker
    and its controller, say), below the ephemeral range: a port the OS handed to a probe (bind
    to 0) is one it may hand to a client's connection too, in the seconds before the server's
    process binds it, and that server then dies at start. Free now; taken at random, so that
    two callers at once seldom choose the same."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(FREE_PORTS_FROM, FREE_PORTS_BELOW - max(offsets))
        with contextlib.ExitStack() as held:
            try:
                for offset in offsets:
                    held.enter_context(socket.socket()).bind((host, first + offset))
            except OSError:
                continue
        return first
    raise OSError(
        f"no free ports {list(offsets)} after a first port in {FREE_PORTS_FROM}-"
        f"{FREE_PORTS_BELOW} on {host}: free some, or close what holds them"
    )


# ------------------------------------------------------------------ termination


def signal_process(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``, or to its whole group when it leads one; a process
    that is gone or not ours is ignored."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        try:
            own_group = os.getpgid(pid) == pid
        except ProcessLookupError:
            return
        if own_group:  # started with start_new_session: take the whole group
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` s for every pid to end; the ones still alive."""
    deadline = time.monotonic() + timeout
    remaining = [p for p in pids if pid_alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.1)
        remaining = [p for p in remaining if pid_alive(p)]
    return remaining


def terminate(
    pids: int | Sequence[int],
    timeout: float,
    log: Log,
    what: str,
    error: type[LocalToolError],
    kill_timeout: float = KILL_TIMEOUT_S,
) -> None:
    """SIGTERM ``pids``, wait up to ``timeout`` s, then SIGKILL what is left.

    Messages name them as ``f"{what} {pids}"``: one pid as a number, a sequence as a
    list of the ones concerned. ``error`` when any survives ``kill_timeout`` s more.
    """
    group = [pids] if isinstance(pids, int) else list(pids)

    def named(left: list[int]) -> str:
        return f"{what} {left[0] if isinstance(pids, int) else left}"

    for pid in group:
        signal_process(pid, signal.SIGTERM)
    stubborn = wait_gone(group, timeout)
    if stubborn:
        log(f"{named(stubborn)} still alive after {timeout:.0f}s; sending SIGKILL")
        for pid in stubborn:
            signal_process(pid, signal.SIGKILL)
        left = wait_gone(stubborn, kill_timeout)
        if left:
            raise error(f"{named(left)} survived SIGKILL")
    for pid in group:
        CHILDREN.pop(pid, None)
