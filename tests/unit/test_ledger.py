"""The demo services' idempotency ledger, opened by several processes at once."""

import multiprocessing
from pathlib import Path

from sagastream.examples.ledger import IdempotencyLedger


def _open_and_record(path: str) -> None:
    IdempotencyLedger(Path(path)).put("order:o-1:payment", "PaymentCharged", {"n": 1})


def test_processes_that_open_one_ledger_together_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        path = str(tmp_path / f"ledger-{round_}.sqlite")
        workers = [context.Process(target=_open_and_record, args=(path,)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        assert IdempotencyLedger(Path(path)).effects() == {"order:o-1:payment": 1}  # one effect
