"""Unit tests for sagastream.local.proc, what localkafka and localregistry share (no JVM, no mvn)."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from sagastream.local import kafka as lk
from sagastream.local import proc as lp
from sagastream.local import registry as lr

# A child that ignores SIGTERM and says when its handler is in place.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(1, flush=True); time.sleep(60)"
)


def test_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(lp.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in imported} - {"__future__"} <= sys.stdlib_module_names


def test_module_errors_share_the_base() -> None:
    assert issubclass(lp.LocalToolError, RuntimeError)
    assert issubclass(lk.LocalKafkaError, lp.LocalToolError)
    assert issubclass(lr.LocalRegistryError, lp.LocalToolError)


# ------------------------------------------------------------------ tools


@pytest.mark.parametrize("module", [lp, lk, lr], ids=["localproc", "localkafka", "localregistry"])
def test_cache_dir_defaults_to_home_cache(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType
) -> None:
    monkeypatch.delenv(lp.ENV_CACHE_DIR, raising=False)
    assert module.cache_dir() == Path.home() / ".cache" / "sagastream"


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(lp.ENV_CACHE_DIR, str(tmp_path / "cache"))
    assert lp.cache_dir() == lk.cache_dir() == lr.cache_dir() == tmp_path / "cache"


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("garbage", None),
        ("something else", None),
    ],
)
def test_java_version_parsing(
    monkeypatch: pytest.MonkeyPatch, output: str, major: int | None
) -> None:
    assert lp.parse_java_major(output) == major
    assert lr.parse_java_major is lp.parse_java_major  # still public in localregistry

    class Done:
        stdout = ""
        stderr = output

    monkeypatch.setattr(lp.subprocess, "run", lambda *a, **k: Done())
    assert lp.java_major("java") == major


def test_java_that_cannot_run_has_no_version(tmp_path: Path) -> None:
    assert lp.java_major(str(tmp_path / "no-such-java")) is None


def test_require_names_the_tool_and_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lp.shutil, "which", lambda name: None)
    with pytest.raises(lk.LocalKafkaError) as err:
        lp.require("mvn", "Thing 1.0", lk.LocalKafkaError)
    assert (
        str(err.value)
        == f"`mvn` was not found on PATH; the local Thing 1.0 needs it: {lp.INSTALL_HINT}"
    )


def test_run_tool_reports_exit_code_and_output(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('went wrong'); sys.exit(3)"]
    with pytest.raises(lp.LocalToolError, match=r"failed with exit code 3:\nwent wrong"):
        lp.run_tool(cmd, lp.LocalToolError)
    with pytest.raises(lp.LocalToolError, match="could not run"):
        lp.run_tool([str(tmp_path / "no-such-tool")], lp.LocalToolError)
    assert lp.run_tool([sys.executable, "-c", "print('ok')"], lp.LocalToolError).stdout == "ok\n"


# ------------------------------------------------------------------ logs


def test_tail_puts_errors_first_and_skips_what_came_before(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("[t] ERROR from an earlier run\n")
    since = lp.file_size(log)
    with log.open("a") as handle:
        handle.write("[t] INFO starting\n[t] ERROR bad config\n")
        handle.writelines(f"[t] INFO line {i}\n" for i in range(30))
    lines = lp.tail(log, since, lines=3).splitlines()
    assert lines == ["[t] ERROR bad config", "...", *(f"[t] INFO line {i}" for i in (27, 28, 29))]
    assert "earlier run" in lp.tail(log)
    assert lp.tail(tmp_path / "missing.log") == ""
    assert lp.file_size(tmp_path / "missing.log") == 0


# ------------------------------------------------------------------ processes


def test_pid_alive() -> None:
    assert lp.pid_alive(os.getpid())
    assert not lp.pid_alive(999999999)  # above pid_max: never a live process


def test_port_open() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert lp.port_open("127.0.0.1", port)
    assert not lp.port_open("127.0.0.1", port)


def test_spawn_live_pid_and_terminate(tmp_path: Path) -> None:
    marker = f"sagastream-test-{os.getpid()}"
    running = tmp_path / "running"
    # the child says it runs (so it has exec'd) by creating a file; only then is it checked
    code = f"import pathlib, time; pathlib.Path({str(running)!r}).touch(); time.sleep(60)"
    cmd = [sys.executable, "-c", f"{code}  # {marker}"]
    pid_file = tmp_path / "run" / "thing.pid"
    pid_file.parent.mkdir()
    pid = lp.spawn(cmd, tmp_path / "run" / "thing.log", tmp_path, pid_file)
    try:
        assert pid_file.read_text() == f"{pid}\n"
        assert lp.CHILDREN[pid].args == cmd
        # between fork and exec the child shows the parent's arguments, or none: wait for the
        # child's own word, however long a loaded machine takes to start a Python
        deadline = time.monotonic() + 120
        while not running.exists():
            assert lp.pid_alive(pid), f"the child exited: {lp.tail(tmp_path / 'run' / 'thing.log')}"
            assert time.monotonic() < deadline, "the child did not start within 120 s"
            time.sleep(0.01)
        args = lp.cmdline(pid)
        assert args is not None and any(marker in a for a in args)

        def is_ours(other: int) -> bool:
            return any(marker in a for a in lp.cmdline(other) or [])

        assert lp.live_pid(pid_file, is_ours) == pid
        pid_file.unlink()  # a lost pid file: the process is found again and adopted
        if Path("/proc").is_dir():
            assert lp.live_pid(pid_file, is_ours) == pid
            assert pid_file.read_text() == f"{pid}\n"
        lp.terminate(pid, 5.0, lambda m: None, "thing", lp.LocalToolError)
        assert not lp.pid_alive(pid)
        assert pid not in lp.CHILDREN
        assert lp.live_pid(pid_file, is_ours) is None
        assert not pid_file.exists()  # stale pid file dropped
        output = (tmp_path / "run" / "thing.log").read_text()
        assert output.startswith("\n--- ") and f" starting: {cmd}\n" in output
    finally:
        child = lp.CHILDREN.pop(pid, None)
        if child is not None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("as_list", [False, True], ids=["one pid", "list of pids"])
def test_terminate_falls_back_to_sigkill(as_list: bool) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True
    )
    lp.CHILDREN[proc.pid] = proc
    assert proc.stdout is not None and proc.stdout.readline()  # SIGTERM handler installed
    messages: list[str] = []
    try:
        lp.terminate(
            [proc.pid] if as_list else proc.pid, 0.3, messages.append, "JVM", lp.LocalToolError
        )
        assert proc.poll() is not None
        assert any("SIGKILL" in m for m in messages)
        shown = f"[{proc.pid}]" if as_list else str(proc.pid)
        assert messages == [f"JVM {shown} still alive after 0s; sending SIGKILL"]
        assert proc.pid not in lp.CHILDREN
    finally:
        lp.CHILDREN.pop(proc.pid, None)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
