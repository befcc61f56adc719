"""Any payload: sagas whose start event and step result carry bytes, a fixed and a decimal run on
real workers. Their states keep those values (sagastream.core.state), the orchestrator never
stops, and the bytes reach the next command intact."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sagastream.ops.client import Received
from tests.binary import write_project
from tests.binary.app import seal_of
from tests.integration.helpers import events_for, every_dead_letter, saga_state, wait_outcomes

pytestmark = pytest.mark.integration

DOCUMENTS = {
    # every byte value, a few times over; and nothing at all
    "doc-all-bytes": (bytes(range(256)) * 40, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"),
    "doc-empty": (b"", b"\xff" * 8),
}
FEE = Decimal("1234.50")
FEE_BYTES = b"\x01\xe2\x3a"  # the unscaled 123450, big-endian, as Avro carries the decimal


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "vault")


def test_bytes_fixed_and_decimal_travel_through_the_saga_state(ns: Any, start_workers: Any) -> None:
    workers = start_workers("orchestrator", "vault")
    for key, (blob, digest) in DOCUMENTS.items():
        fields = {"doc_id": key, "blob": blob, "digest": digest, "fee": FEE, "note": "private"}
        ns.client.publish("DocumentFiled", key, fields)
    ns.client.flush()

    try:
        outcomes = wait_outcomes(ns, set(DOCUMENTS))
    finally:
        workers.check_alive()  # the orchestrator kept running: no exit (its log says why)
    assert {k: m.event_type for k, m in outcomes.items()} == dict.fromkeys(
        DOCUMENTS, "SagaCompleted"
    )

    for key, (blob, digest) in DOCUMENTS.items():
        commands = {c.event_type: c.record for c in _commands(ns, key)}
        seal, archive = commands["SealDocument"], commands["ArchiveDocument"]
        assert seal is not None and archive is not None
        # from the start event, through the state, into both commands
        assert (seal["blob"], seal["digest"], seal["fee"]) == (blob, digest, FEE_BYTES)
        # from the step result, through the state, into the next command
        assert (archive["blob"], archive["seal"], archive["fee"]) == (
            blob,
            seal_of(blob, digest),
            FEE_BYTES,
        )
        state = saga_state(ns, key)
        assert state.data["start"] == {
            "doc_id": key,
            "blob": blob,
            "digest": digest,
            "fee": FEE_BYTES,
        }
        assert state.data["seal"] == {"seal": seal_of(blob, digest)}  # the note is not kept

    assert every_dead_letter(ns) == []


def _commands(ns: Any, key: str) -> list[Received]:
    def archived(msgs: list[Received]) -> bool:
        return any(m.event_type == "ArchiveDocument" and m.key == key.encode() for m in msgs)

    return events_for(ns, ["vault.commands"], key, until=archived)
