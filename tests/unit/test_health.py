"""What a role tells /healthz and /readyz, on a fake clock, and the probes' answer."""

from __future__ import annotations

from http import HTTPStatus

from sagastream.runtime.health import Check, RoleHealth, body
from sagastream.runtime.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def role(**settings: float) -> tuple[RoleHealth, Clock]:
    clock = Clock()
    return RoleHealth(Settings(**settings), clock), clock


def test_a_loop_that_stops_advancing_is_not_alive():
    health, clock = role(health_stall_s=30)
    clock.now += 29
    assert health.alive().ok
    health.advanced()
    clock.now += 31
    assert health.alive() == Check(False, ("its loop has not advanced for 31s",))
    health.advanced()
    assert health.alive().ok


def test_transactions_that_keep_aborting_make_it_unready_until_one_commits():
    health, _ = role(health_aborts=3)
    health.aborted("fenced")
    health.aborted("fenced")
    assert health.ready().ok
    health.aborted("message too large")
    assert health.ready().reasons == ("3 transactions aborted in a row (last: message too large)",)
    health.committed()
    assert health.ready().ok


def test_an_input_read_error_lasts_until_the_topic_is_assigned_or_read():
    health, _ = role()
    health.input_failed("orders.events", "Broker: Topic authorization failed")
    health.input_failed("loans.events", "Broker: Unknown topic or partition")
    assert health.ready().reasons == (
        "input loans.events cannot be read: Broker: Unknown topic or partition",
        "input orders.events cannot be read: Broker: Topic authorization failed",
    )
    health.input_read(["orders.events"])
    assert not health.ready().ok
    health.input_read(iter(["loans.events"]))
    assert health.ready().ok


def test_a_registry_wait_counts_once_it_is_longer_than_the_threshold():
    health, clock = role(health_registry_wait_s=60)
    health.registry_waits(("orders.events", 2))
    clock.now += 50
    health.registry_waits(("orders.events", 2))  # a retry does not restart the wait
    assert health.ready().ok
    clock.now += 11
    assert health.ready().reasons == ("orders.events[2] has waited 61s for the schema registry",)
    health.registry_back(("orders.events", 2))
    assert health.ready().ok
    health.registry_waits(("orders.events", 1))
    clock.now += 61
    health.registry_only([("orders.events", 3)])  # partition 1 was revoked
    assert health.ready().ok


def test_the_role_adds_its_own_reasons():
    health, _ = role()
    assert health.ready("no partitions assigned yet") == Check(
        False, ("no partitions assigned yet",)
    )


def test_the_probe_body_lists_reasons_only_for_roles_that_are_not_ok():
    assert body({"payment": Check(True)}) == (
        HTTPStatus.OK,
        {"ok": True, "roles": {"payment": True}},
    )
    status, answer = body({"payment": Check(True), "orchestrator": Check.of(["restoring"])})
    assert status == HTTPStatus.SERVICE_UNAVAILABLE
    assert answer == {
        "ok": False,
        "roles": {"payment": True, "orchestrator": False},
        "reasons": {"orchestrator": ["restoring"]},
    }
    assert body({})[0] == HTTPStatus.SERVICE_UNAVAILABLE
