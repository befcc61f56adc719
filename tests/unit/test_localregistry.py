"""Unit tests for sagastream.local.registry: the pure parts only (no JVM, no mvn, no network)."""

from __future__ import annotations

import ast
import inspect
import io
import json
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sagastream.local import proc as lp
from sagastream.local import registry as lr

MODULE_PATH = Path(lr.__file__)
SOURCE_ROOT = MODULE_PATH.parents[2]  # the folder that holds the package sagastream/


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(lr.ENV_CACHE_DIR, str(cache))
    monkeypatch.delenv(lr.ENV_PORT, raising=False)
    return cache


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((lr.HOST, 0))
        return sock.getsockname()[1]


def _no_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"unexpected subprocess call: {args}")


def _fake_dist(dist: Path, jars: int = lr._MIN_LIB_JARS, marker: bool = True) -> None:
    (dist / "lib").mkdir(parents=True)
    (dist / lr.RUNNER_JAR).write_bytes(b"PK")
    for i in range(jars):
        (dist / "lib" / f"dep-{i}.jar").write_bytes(b"PK")
    if marker:
        (dist / lr._MARKER).write_text("{}\n")


# ------------------------------------------------------------------ module


def _top_level_imports(path: Path) -> set[str]:
    """Top-level modules ``path`` imports, following this project's own ``sagastream.*`` ones."""
    tree = ast.parse(path.read_text())
    top_level: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from sagastream.local import proc` imports the module sagastream.local.proc
            names = (
                [f"{node.module}.{a.name}" for a in node.names]
                if node.module == "sagastream.local"
                else [node.module]
            )
        else:
            continue
        for name in names:
            if name.startswith("sagastream."):  # e.g. sagastream.local.proc: check it in turn
                top_level |= _top_level_imports(
                    SOURCE_ROOT.joinpath(*name.split(".")).with_suffix(".py")
                )
            elif name != "sagastream":
                top_level.add(name.split(".")[0])
    return top_level


def test_module_imports_only_the_standard_library() -> None:
    top_level = _top_level_imports(MODULE_PATH)
    third_party = {m for m in top_level if m not in sys.stdlib_module_names and m != "__future__"}
    assert not third_party


def test_identity_constants() -> None:
    assert lr.REGISTRY_NAME == "Apicurio Registry"
    coordinates = f"io.apicurio:apicurio-registry-app:{lr.REGISTRY_VERSION}:tar.gz:all"
    runner = f"apicurio-registry-app-{lr.REGISTRY_VERSION}-runner.jar"
    assert coordinates == lr.REGISTRY_COORDINATES
    assert runner == lr.RUNNER_JAR


# ------------------------------------------------------------------ paths and ports


def test_cache_dir_env_override(_isolated_env: Path) -> None:
    assert lr.cache_dir() == _isolated_env
    assert lr.dist_dir() == _isolated_env / f"apicurio-registry-{lr.REGISTRY_VERSION}" / "dist"
    assert lr.pid_file(8081) == _isolated_env / "registry" / "registry-8081.pid"
    assert lr.log_file(8081) == _isolated_env / "registry" / "registry-8081.log"


def test_base_url_defaults_to_8081_ccompat() -> None:
    assert lr.registry_port() == 8081
    assert lr.base_url() == "http://127.0.0.1:8081/apis/ccompat/v7"
    assert lr.base_url(18181) == "http://127.0.0.1:18181/apis/ccompat/v7"


def test_port_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lr.ENV_PORT, " 28081 ")
    assert lr.registry_port() == 28081
    assert lr.base_url() == "http://127.0.0.1:28081/apis/ccompat/v7"


@pytest.mark.parametrize("raw", ["http", "0", "70000", "-1"])
def test_port_env_invalid(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(lr.ENV_PORT, raw)
    with pytest.raises(lr.LocalRegistryError, match=lr.ENV_PORT):
        lr.registry_port()


# ------------------------------------------------------------------ command line


def test_registry_command(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    cmd = lr.registry_command("/opt/java/bin/java", dist, 18181)
    assert cmd[0] == "/opt/java/bin/java"
    assert cmd[-2:] == ["-jar", str(dist / lr.RUNNER_JAR)]
    assert "-Dquarkus.http.port=18181" in cmd
    assert "-Dquarkus.http.host=127.0.0.1" in cmd
    assert "-Dregistry.rest.artifact.deletion.enabled=true" in cmd
    assert any(a.startswith("-Xmx") for a in cmd)
    # every JVM/system option comes before -jar (after it they would be program args)
    assert all(a.startswith("-") for a in cmd[1 : cmd.index("-jar")])


def test_registry_command_persistent_storage(tmp_path: Path) -> None:
    db = tmp_path / "data-8081" / "registry"
    cmd = lr.registry_command("java", tmp_path / "dist", 8081, db)
    assert f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{db}" in cmd
    assert cmd.index(f"-Dquarkus.datasource.jdbc.url=jdbc:h2:file:{db}") < cmd.index("-jar")
    memory = lr.registry_command("java", tmp_path / "dist", 8081)
    assert not any("datasource" in a for a in memory)
    assert lr.db_path(8081) == lr.run_dir() / "data-8081" / "registry"


def test_registry_command_is_recognised_as_ours(
    monkeypatch: pytest.MonkeyPatch, _isolated_env: Path
) -> None:
    cmd = lr.registry_command("java", lr.dist_dir(), 18181)
    monkeypatch.setattr(lp, "cmdline", lambda pid: cmd)
    assert lr._is_registry_process(1234, 18181)
    assert not lr._is_registry_process(1234, 8081)
    other = lr.registry_command("java", Path("/elsewhere"), 18181)
    monkeypatch.setattr(lp, "cmdline", lambda pid: other)
    assert not lr._is_registry_process(1234, 18181)


# ------------------------------------------------------------------ missing tools


def test_start_without_java_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lr.shutil, "which", lambda name: None)
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", _no_subprocess)
    with pytest.raises(lr.LocalRegistryError) as err:
        lr.start(log=lambda m: None, port=_free_port())
    message = str(err.value)
    assert "`java` was not found on PATH" in message
    assert "Java 17+" in message and "apt-get install" in message


def test_start_with_old_java_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lr.shutil, "which", lambda name: f"/usr/bin/{name}")

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd == ["/usr/bin/java", "-version"]
        return subprocess.CompletedProcess(cmd, 0, "", 'openjdk version "11.0.22" 2024-01-16\n')

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(subprocess, "Popen", _no_subprocess)
    with pytest.raises(lr.LocalRegistryError, match=r"Java 11; .* needs Java 17\+"):
        lr.start(log=lambda m: None, port=_free_port())


def test_ensure_registry_without_mvn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lr.shutil, "which", lambda name: None if name == "mvn" else "/x/java")
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    with pytest.raises(lr.LocalRegistryError, match="`mvn` was not found on PATH"):
        lr.ensure_registry(log=lambda m: None)


# ------------------------------------------------------------------ download cache


def test_ensure_registry_reuses_a_complete_download(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dist(lr.dist_dir())
    monkeypatch.setattr(lr.shutil, "which", lambda name: None)  # not even looked up
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert lr.ensure_registry(log=lambda m: None) == lr.dist_dir()


@pytest.mark.parametrize(("jars", "marker"), [(lr._MIN_LIB_JARS, False), (3, True)])
def test_incomplete_download_is_redone(tmp_path: Path, jars: int, marker: bool) -> None:
    _fake_dist(tmp_path / "dist", jars=jars, marker=marker)
    assert not lr._dist_complete(tmp_path / "dist")


def test_ensure_registry_runs_maven_then_unpacks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_mvn(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        out = Path(next(a for a in cmd if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
        out.mkdir(parents=True)
        with tarfile.open(out / lr.TARBALL_NAME, "w:gz") as archive:
            for name in [lr.RUNNER_JAR] + [f"lib/dep-{i}.jar" for i in range(lr._MIN_LIB_JARS)]:
                info = tarfile.TarInfo(name)
                info.size = 2
                archive.addfile(info, io.BytesIO(b"PK"))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(lr.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", fake_mvn)
    dist = lr.ensure_registry(log=lambda m: None)
    assert dist == lr.dist_dir()
    assert lr._dist_complete(dist)
    (cmd,) = calls
    assert cmd[0] == "/usr/bin/mvn"
    assert f"{lr.DEPENDENCY_PLUGIN}:copy" in cmd
    assert f"-Dartifact={lr.REGISTRY_COORDINATES}" in cmd
    marker = json.loads((dist / lr._MARKER).read_text())
    assert marker["version"] == lr.REGISTRY_VERSION
    assert marker["lib_jars"] == lr._MIN_LIB_JARS
    # second call: nothing is downloaded
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert lr.ensure_registry(log=lambda m: None) == dist


def test_maven_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_mvn(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "[ERROR] Could not find artifact\n")

    monkeypatch.setattr(lr.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", failing_mvn)
    with pytest.raises(lr.LocalRegistryError, match="Could not find artifact"):
        lr.ensure_registry(log=lambda m: None)
    assert not lr._dist_complete(lr.dist_dir())


def test_extract_refuses_paths_outside_the_destination(tmp_path: Path) -> None:
    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises((tarfile.TarError, lr.LocalRegistryError)):
        lr._extract(tarball, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


# ------------------------------------------------------------------ readiness errors


def test_process_that_dies_points_to_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    lr.run_dir().mkdir(parents=True)
    lr.log_file(18181).write_text("boom: UnsupportedClassVersionError\n")
    monkeypatch.setattr(lp, "pid_alive", lambda pid: False)
    with pytest.raises(lr.LocalRegistryError) as err:
        lr._wait_ready(4242, 18181, timeout=1)
    assert str(lr.log_file(18181)) in str(err.value)
    assert "UnsupportedClassVersionError" in str(err.value)


def test_registry_that_never_answers_points_to_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lp, "pid_alive", lambda pid: True)
    monkeypatch.setattr(lr, "_answers", lambda url, timeout=2.0: False)
    with pytest.raises(lr.LocalRegistryError, match="did not answer GET /subjects") as err:
        lr._wait_ready(4242, 18181, timeout=0)
    assert str(lr.log_file(18181)) in str(err.value)


# ------------------------------------------------------------------ status / CLI


def test_status_when_not_running() -> None:
    port = _free_port()
    info = lr.status(port=port)
    assert info["running"] is False
    assert info["pid"] is None
    assert info["url"] == f"http://127.0.0.1:{port}/apis/ccompat/v7"


def test_main_status_exit_code_3_when_not_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert lr.main(["status", "--port", str(_free_port())]) == 3
    assert json.loads(capsys.readouterr().out)["running"] is False


def test_main_stop_when_not_running_is_fine(capsys: pytest.CaptureFixture[str]) -> None:
    assert lr.main(["stop", "--port", str(_free_port())]) == 0
    assert "not running" in capsys.readouterr().err


def test_main_reports_errors_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lr.shutil, "which", lambda name: None)
    assert lr.main(["start", "--port", str(_free_port())]) == 1
    assert "registry-local: error: `java` was not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "persist"),
    [([], True), (["--persist"], True), (["--memory"], False)],
)
def test_start_keeps_schemas_in_a_file_unless_told_memory(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], persist: bool
) -> None:
    """Kept topics outlive a registry restart, so by default its ids do too."""
    assert inspect.signature(lr.start).parameters["persist"].default is True
    asked: dict[str, object] = {}

    def start(**kwargs: object) -> str:
        asked.update(kwargs)
        return "http://127.0.0.1:1/apis/ccompat/v7"

    monkeypatch.setattr(lr, "start", start)
    assert lr.main(["start", *argv]) == 0
    assert asked["persist"] is persist
