"""sagastream.testing on the demo's sagas and services: no broker, a virtual clock."""

import asyncio
import shutil
from pathlib import Path

import pytest

from sagastream import testing
from sagastream.core.state import StateEncodingError
from sagastream.core.topology import QUEUE_ALLOWANCE_MS
from sagastream.events import SagaCompensated, SagaCompleted, records_of, write_schemas
from sagastream.examples.events import LoanApplied, OrderItem, OrderPlaced, PaymentCharged
from sagastream.runtime.settings import Settings
from sagastream.testing import SagaTest
from tests.binary import write_project
from tests.binary.app import ArchiveDocument, DocumentFiled, seal_of
from tests.scenarios.jobs import write_project as write_jobs
from tests.scenarios.jobs.app import JobSubmitted, ReportRequested

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def saga(tmp_path: Path) -> SagaTest:
    settings = Settings(data_dir=tmp_path, handler_latency_ms=0)
    return SagaTest.load(ROOT / "topology.yaml", settings=settings)


def _order(order_id: str = "o-1", **changes: object) -> OrderPlaced:
    fields = {
        "order_id": order_id,
        "customer_id": "c-1",
        "email": "buyer@example.com",
        "amount_cents": 1200,
        "currency": "EUR",
        "card_token": "tok_visa",
        "items": [OrderItem(sku="SKU-1", quantity=2)],
        "shipping_address": "1 Main Street",
        "priority": "normal",
        "has_app": False,
    }
    return OrderPlaced.model_validate({**fields, **changes})


def test_an_order_completes_with_every_step_and_a_notification(saga: SagaTest) -> None:
    key = saga.start(_order())
    assert sorted(saga.sent(key)) == ["ChargePayment", "CreateShipment", "ReserveInventory"]
    assert saga.run() == 4  # three steps, then one notification
    assert saga.status(key) == "completed"
    outcome = saga.outcome(key)
    assert isinstance(outcome, SagaCompleted)
    assert sorted(outcome.completed_steps) == ["inventory", "payment", "shipping"]
    assert saga.sent(key)[-1] == "SendNotification"
    assert [what for _, what, _ in saga.timeline(key)][0] == "started"


def test_a_declined_card_is_compensated_in_reverse(saga: SagaTest) -> None:
    key = saga.start(_order(card_token="tok_decline"))
    saga.run()
    outcome = saga.outcome(key)
    assert isinstance(outcome, SagaCompensated)
    assert outcome.failed_step == "payment" and "card declined" in outcome.reason
    assert {"ReleaseInventory", "CancelShipment"} <= set(saga.sent(key))
    assert "RefundPayment" not in saga.sent(key)  # the charge never happened


def test_a_lost_command_times_out_and_is_retried_with_a_new_attempt(saga: SagaTest) -> None:
    key = saga.start(_order())
    charge = next(c for c in saga.pending(key) if c.event_type == "ChargePayment")
    saga.drop(charge)
    saga.run()
    assert saga.status(key) == "running"
    saga.advance(15_000 + QUEUE_ALLOWANCE_MS)  # the step timeout, and time to queue
    retry = [c for c in saga.commands(key) if c.event_type == "ChargePayment"]
    assert [c.attempt for c in retry] == [1]  # backoff first
    saga.advance(5_000)
    retry = [c for c in saga.commands(key) if c.event_type == "ChargePayment"]
    assert [c.attempt for c in retry] == [1, 2]
    assert retry[0].fields["idempotency_key"] == retry[1].fields["idempotency_key"]
    saga.run()
    assert saga.status(key) == "completed"
    assert ("step_retry_scheduled", "payment") in [(w, s) for _, w, s in saga.timeline(key)]


def test_a_duplicate_result_changes_nothing(saga: SagaTest) -> None:
    key = saga.start(_order())
    charged = PaymentCharged(order_id=key, payment_id="p-1", amount_cents=1200)
    saga.deliver(charged, key, event_id="00000000-0000-4000-8000-0000000000aa")
    before = saga.state(key)
    saga.deliver(charged, key, event_id="00000000-0000-4000-8000-0000000000aa")
    assert saga.state(key) == before


def _loan() -> LoanApplied:
    return LoanApplied(
        loan_id="l-1",
        customer_id="c-1",
        email="a@example.com",
        amount_cents=100_000,
        term_months=12,
        iban="DE00",
    )


def test_a_human_step_escalates_then_a_signal_lets_the_loan_pay_out(saga: SagaTest) -> None:
    key = saga.start(_loan())
    saga.run()
    assert [c.event_type for c in saga.pending(key)] == ["RequestReview"]  # a person's inbox
    saga.advance(172_800_000)
    assert "StepEscalated" in saga.sent(key)
    saga.signal("loan", key, "review", "approved", note="fine", by="ana")
    saga.run()
    assert saga.status(key) == "completed"


# -- payloads: the state is stored and read back as the orchestrator does ---------------------


def test_binary_payloads_reach_the_next_command_intact(tmp_path: Path) -> None:
    vault = SagaTest.load(write_project(tmp_path))
    blob, digest = bytes(range(256)) * 3, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"
    filed = DocumentFiled(doc_id="d-1", blob=blob, digest=digest, fee=b"\x04\xce", note="private")
    key = vault.start(filed)
    assert vault.run() == 2 and vault.status(key) == "completed"
    archive = vault.commands(key)[-1].model()
    assert isinstance(archive, ArchiveDocument)
    assert (archive.blob, archive.seal, archive.fee) == (blob, seal_of(blob, digest), b"\x04\xce")
    state = vault.state(key)
    assert state is not None and state.data["start"]["blob"] == blob
    assert "note" not in state.data["start"]  # no step reads it: the changelog never has it


def test_a_state_the_runtime_cannot_store_is_dead_lettered_as_the_orchestrator_does(
    saga: SagaTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(state: dict[str, object]) -> bytes:
        raise StateEncodingError("cannot keep start.items in the saga state: a set")

    monkeypatch.setattr(testing, "encode_state", refuse)
    key = saga.start(_order())
    assert saga.status(key) == "not started" and saga.pending(key) == []
    assert saga.dead_letters(key) == [
        "state_encoding: cannot keep start.items in the saga state: a set"
    ]


# -- the kit runs handlers as the handler loop does ----------------------------------------


def test_a_notification_reply_is_no_dead_letter(saga: SagaTest) -> None:
    key = saga.start(_order())
    saga.run()
    assert saga.sent(key)[-1] == "SendNotification" and saga.status(key) == "completed"
    # NotificationSent goes to a topic no saga reads, as on Kafka: nothing refuses it
    assert saga.dead_letters(key) == []


def test_the_kit_works_inside_an_async_test(saga: SagaTest) -> None:
    async def an_async_test() -> str:
        key = saga.start(_order())
        saga.run()  # the demo's handlers are async: they run while this loop runs
        return saga.status(key)

    assert asyncio.run(an_async_test()) == "completed"


def test_handler_sleeps_are_virtual_and_commands_sent_together_run_together(
    tmp_path: Path,
) -> None:
    slow = Settings(data_dir=tmp_path, handler_latency_ms=20_000)  # 20 s per call
    kit = SagaTest.load(ROOT / "topology.yaml", settings=slow)
    key = kit.start(_loan())
    kit.run()  # credit and documents, sent together, each sleep 20 s of virtual time
    succeeded = {step: at for at, what, step in kit.timeline(key) if what == "step_succeeded"}
    assert succeeded == {"credit_check": 20_000, "documents": 20_000}
    assert [c.step for c in kit.pending(key)] == ["review"]


def test_result_runs_and_lets_time_pass_until_the_outcome(saga: SagaTest) -> None:
    key = saga.start(_order())
    charge = next(c for c in saga.pending(key) if c.event_type == "ChargePayment")
    saga.drop(charge)  # only the step timeout, then a retry, can finish this saga
    outcome = saga.result(key)
    assert isinstance(outcome, SagaCompleted)
    assert [c.attempt for c in saga.commands(key) if c.event_type == "ChargePayment"] == [1, 2]
    loan = saga.start(_loan())
    with pytest.raises(AssertionError, match="waiting for \\['RequestReview'\\]"):
        saga.result(loan, within_ms=86_400_000)


def test_commands_and_their_results_name_their_step_as_on_kafka(saga: SagaTest) -> None:
    key = saga.start(_order())
    saga.run()
    steps = {c.event_type: c.meta["step"] for c in saga.commands(key)}
    assert steps["ChargePayment"] == "payment" and steps["CreateShipment"] == "shipping"
    assert all(c.meta["step"] == c.step for c in saga.commands(key))


def test_a_handler_exception_is_a_failed_attempt_retried_at_once(tmp_path: Path) -> None:
    kit = SagaTest.load(write_jobs(tmp_path))
    key = kit.start(JobSubmitted(job_id="j-1"))
    assert isinstance(kit.result(key), SagaCompleted)
    # reported as the runtime's handler loop reports it: a StepAttemptFailed, not a dead letter
    assert kit.failed_attempts(key) == [
        ("RunJob", 1, "exception", "PartnerDown: partner down for j-1")
    ]
    assert kit.dead_letters(key) == []
    retried = [at for at, what, step in kit.timeline(key) if what == "step_started"][1]
    assert retried < 20_000  # after the backoff, not after the step's timeout_ms


def test_a_heartbeat_starts_the_run_time_bound_again_on_the_virtual_clock(
    tmp_path: Path,
) -> None:
    kit = SagaTest.load(write_jobs(tmp_path))
    built = kit.start(ReportRequested(report_id="r-1", parts=3))  # 24 s against a 10 s bound
    assert isinstance(kit.result(built), SagaCompleted)
    assert kit.failed_attempts(built) == []
    assert [at for at, what, _ in kit.timeline(built) if what == "step_succeeded"] == [24_000]


HUNG_APP = "tests.unit.data.hung.hung_app"


def _probes(tmp_path: Path) -> SagaTest:
    """The probe project (tests/unit/data/hung): one step run by a plain function, bound 0.4 s."""
    shutil.copy(Path(__file__).parent / "data" / "hung" / "topology.yaml", tmp_path)
    write_schemas(records_of(HUNG_APP), tmp_path / "schemas")
    return SagaTest.load(tmp_path / "topology.yaml")


def test_a_plain_function_that_hangs_is_abandoned_at_its_bound_as_the_worker_does(
    tmp_path: Path,
) -> None:
    """The kit ran plain functions inline: one that hung (a blocking call to a gateway) held
    the test for as long as it hung and then succeeded, where the worker abandons it at the
    step's bound and reports a timeout, and the saga retries and fails."""
    from tests.unit.data.hung.hung_app import ProbeRequested

    kit = _probes(tmp_path)
    key = kit.start(ProbeRequested(probe_id="p-1", seconds=3.0, parts=1))
    outcome = kit.result(key)
    assert isinstance(outcome, SagaCompensated), outcome  # nothing to undo
    assert [(t, a, kind) for t, a, kind, _ in kit.failed_attempts(key)] == [
        ("RunProbe", 1, "timeout"),
        ("RunProbe", 2, "timeout"),
    ]


def test_a_plain_function_that_says_it_is_alive_outlives_its_bound(tmp_path: Path) -> None:
    """The same work in parts, with a heartbeat from the function's thread after each: its
    bound starts again each time, and the step succeeds at its first attempt."""
    from tests.unit.data.hung.hung_app import ProbeRequested

    kit = _probes(tmp_path)
    key = kit.start(ProbeRequested(probe_id="p-2", seconds=1.2, parts=6))
    assert isinstance(kit.result(key), SagaCompleted)
    assert kit.failed_attempts(key) == []
