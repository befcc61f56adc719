"""One exception base for the package, and the CLI's two ways of ending on an error."""

import importlib
import inspect
import pkgutil

import pytest

import sagastream
from sagastream.errors import SagastreamError, UsageError
from sagastream.ops import cli

# a business result, not an error; internal carriers; local tooling kept free of sagastream
# imports (sagastream.local.proc imports the standard library only)
NOT_ERRORS = {
    "Fail",
    "_Unstorable",
    "LocalToolError",
    "LocalKafkaError",
    "LocalRegistryError",
    "LocalJaegerError",
}


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(sagastream.__path__, "sagastream."):
        if info.name.startswith(("sagastream.examples", "sagastream.testing")):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


def test_every_error_the_package_defines_is_a_sagastream_error() -> None:
    classes = _exception_classes()
    assert len(classes) >= 16
    outside = [c.__qualname__ for c in classes if not issubclass(c, SagastreamError)]
    assert set(outside) <= NOT_ERRORS
    assert sagastream.SagastreamError is SagastreamError


def test_an_expected_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["registry", "stop", "--memory"]) == 2
    err = capsys.readouterr().err
    assert err == "sagastream registry: --memory applies to `registry start` only\n"


def test_a_bug_shows_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_args: object) -> int:
        return {}["missing"]  # a bug: KeyError

    monkeypatch.setattr(cli, "_registry", broken)
    with pytest.raises(KeyError):
        cli.main(["registry", "status"])


def test_a_plain_value_error_is_a_bug_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_args: object) -> int:
        return int("not a number")

    monkeypatch.setattr(cli, "_registry", broken)
    with pytest.raises(ValueError, match="invalid literal"):
        cli.main(["registry", "status"])
    assert issubclass(UsageError, ValueError)  # code that caught ValueError still does
