"""What `make demo` prints last: the address of the console it left running on its sagas, and
how to stop it (and what stopping also ends)."""

from __future__ import annotations

from sagastream.ops.demo import LeftRunning, console_lines


def left(started: bool) -> LeftRunning:
    return LeftRunning(
        pid=1234,
        address="http://127.0.0.1:8089/",
        prefix="demo-20261207-081500-",
        bootstrap="127.0.0.1:9092",
        registry_url="http://127.0.0.1:8081/apis/ccompat/v7",
        subjects=[],
        started_broker=started,
        started_registry=started,
    )


def test_the_demo_ends_naming_its_console_and_how_to_stop_it() -> None:
    lines = console_lines(left(started=True))
    assert lines[-2] == (
        "  console: http://127.0.0.1:8089/  (this run's sagas, topic prefix demo-20261207-081500-)"
    )
    assert lines[-1].startswith("  stop it: make demo-stop (sagastream demo --stop;")
    assert "stops the local broker and registry it started" in lines[-1]
    # on a broker and registry it did not start, stopping leaves them be
    assert "broker" not in console_lines(left(started=False))[-1]
