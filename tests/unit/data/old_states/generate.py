"""How the states in this folder were made: run once against ad0bba4 (the last commit that wrote
format 3), never since; the bytes are the record of what that release wrote.

    git worktree add /tmp/ad0bba4 ad0bba4 && cd /tmp/ad0bba4 && make install
    .venv/bin/python /path/to/tests/unit/data/old_states/generate.py /path/to/tests/unit/data/old_states

It drives the demo's order and loan sagas (topology.yaml) through decide to the points below and
writes, per point, format 3 (`<name>.v3`, that release's `encode_state`) and the same state as
formats 2 and 1 kept it (`<name>.v2.json`, `<name>.v1.json`: bare JSON, `v` inside; format 2 had
no `shape` nor `hop`, format 1 one merged `ctx` and no `expires`), and every command the saga
sent up to that point, with the time of its last decision (`<name>.commands.json`: what the
restore test hands its handlers, as if the release that wrote the state had sent them).

`<name>.v4` is format 3's state decoded and written again by the last release of format 4
(before the steps' times of format 5), pinned to the demo topology's shape, as that release
kept a state it had upgraded or started on that shape.
"""

from __future__ import annotations

import json
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any

from sagastream.core.saga import Event, decide
from sagastream.core.state import encode_state
from sagastream.core.topology import SIGNAL_EVENT, START, TIMER_EVENT, load_topology

ROOT = Path(__file__).resolve().parents[4]
T0 = 1764547200000
ORDER = {
    "order_id": "ord-7f3a9c",
    "customer_id": "cust-1042",
    "email": "ana.souza@example.com",
    "amount_cents": 12999,
    "currency": "EUR",
    "card_token": "tok_visa",
    "items": [{"sku": "SKU-LAMP-02", "quantity": 1}, {"sku": "SKU-BULB-E27", "quantity": 4}],
    "shipping_address": "Rua Augusta 120, 1100-053 Lisboa",
    "priority": "high",
    "has_app": True,
}
LOAN = {
    "loan_id": "loan-2b81",
    "customer_id": "cust-2210",
    "email": "rui.matos@example.com",
    "amount_cents": 1500000,
    "iban": "PT50000201231234567890154",
}


class Driver:
    def __init__(self, saga: str, key: str) -> None:
        topology = load_topology(ROOT / "topology.yaml", ROOT / "schemas")
        self.definition = (saga, topology.sagas[saga])
        self.key = key
        self.state: Any = None
        self.now = T0
        self.n = 0
        self.commands: list[dict[str, Any]] = []

    def send(
        self,
        event_type: str,
        fields: dict[str, Any],
        *,
        attempt: int = 1,
        step: str | None = None,
        after_ms: int = 100,
    ) -> None:
        self.now += after_ms
        self.n += 1
        event_id = str(
            uuid.UUID(int=(zlib.crc32(self.key.encode()) & 0xFFFF) << 64 | self.n, version=4)
        )
        event = Event(
            event_type,
            event_id,
            fields,
            attempt=attempt,
            hop=0,
            correlation_id=event_id if self.state is None else None,
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            if self.state is None
            else None,
            step=step,
        )
        decision = decide(self.definition, self.state, event, self.now)
        assert decision.state is not None, (event_type, decision.dead_letter)
        self.state = decision.state
        self.commands += [
            {"event_type": c.event_type, "fields": c.fields, "attempt": c.attempt, "step": c.step}
            for c in decision.commands
        ]

    def fire(self, timer: str) -> None:
        due = self.state["timers"][timer]
        kind, step, attempt = timer.split("|")
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.key}|{timer}|{due}"))
        self.now = max(self.now, due)
        decision = decide(
            self.definition,
            self.state,
            Event(
                TIMER_EVENT,
                event_id,
                {"kind": kind, "step": step, "attempt": int(attempt), "due_ms": due},
            ),
            self.now,
        )
        assert decision.state is not None
        self.state = decision.state
        self.commands += [
            {"event_type": c.event_type, "fields": c.fields, "attempt": c.attempt, "step": c.step}
            for c in decision.commands
        ]

    def write(self, folder: Path, name: str) -> None:
        state = self.state
        (folder / f"{name}.v3").write_bytes(encode_state(state))
        v2 = {"v": 2, **{k: v for k, v in state.items() if k not in ("shape", "hop")}}
        (folder / f"{name}.v2.json").write_text(json.dumps(v2, separators=(",", ":")))
        ctx: dict[str, Any] = {}
        for source in [START, *state["order"]]:
            ctx.update(state["data"].get(source, {}))
        v1 = {"v": 1, **{k: v for k, v in v2.items() if k not in ("v", "data", "expires")}}
        v1["ctx"] = ctx
        (folder / f"{name}.v1.json").write_text(json.dumps(v1, separators=(",", ":")))
        sent = {"decided_at": self.now, "commands": self.commands}
        (folder / f"{name}.commands.json").write_text(json.dumps(sent, indent=1))


def order(folder: Path) -> None:
    d = Driver("order", ORDER["order_id"])
    d.send("OrderPlaced", ORDER)
    d.write(folder, "order-started")
    d.send(
        "PaymentCharged",
        {"order_id": "ord-7f3a9c", "payment_id": "pay_5d1e77", "amount_cents": 12999},
        step="payment",
    )
    d.write(folder, "order-running")

    d = Driver("order", ORDER["order_id"])
    d.send("OrderPlaced", ORDER)
    d.fire("step_timeout|payment|1")
    d.write(folder, "order-waiting-retry")

    def reserved() -> Driver:
        d = Driver("order", ORDER["order_id"])
        d.send("OrderPlaced", ORDER)
        paid = {"order_id": "ord-7f3a9c", "payment_id": "pay_5d1e77"}
        d.send("PaymentCharged", paid, step="payment")
        reservation = {"order_id": "ord-7f3a9c", "reservation_id": "res-91c2"}
        d.send("InventoryReserved", reservation, step="inventory")
        return d

    d = reserved()
    failed = {"order_id": "ord-7f3a9c", "reason": "address unknown"}
    d.send("ShipmentFailed", failed, step="shipping")
    d.write(folder, "order-compensating")

    d = reserved()
    d.send(
        "ShipmentCreated", {"order_id": "ord-7f3a9c", "shipment_id": "shp-44e0"}, step="shipping"
    )
    d.write(folder, "order-ended")


def loan(folder: Path) -> None:
    def started() -> Driver:
        d = Driver("loan", LOAN["loan_id"])
        d.send("LoanApplied", LOAN)
        d.send("CreditApproved", {"loan_id": "loan-2b81", "credit_score": 742}, step="credit_check")
        return d

    d = started()
    d.write(folder, "loan-running")

    d = started()
    d.fire("step_timeout|documents|1")
    d.write(folder, "loan-waiting-retry")

    def verified() -> Driver:
        d = started()
        d.send("DocumentsVerified", {"loan_id": "loan-2b81"}, step="documents")
        return d

    def reviewed(outcome: str, note: str) -> Driver:
        d = verified()
        decision = {"saga_type": "loan", "step": "review", "outcome": outcome}
        d.send(SIGNAL_EVENT, {**decision, "decided_by": "marta", "note": note})
        return d

    verified().write(folder, "loan-waiting-for-a-person")

    d = reviewed("approved", "ok")
    d.fire("deadline||0")
    paid = {"loan_id": "loan-2b81", "transfer_id": "trf-0d3a"}
    d.send("LoanDisbursed", paid, step="disbursement")
    d.write(folder, "loan-compensating")

    reviewed("rejected", "income too low").write(folder, "loan-ended")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    order(out)
    loan(out)
