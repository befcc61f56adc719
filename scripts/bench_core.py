"""Benchmark of the per-event hot path without a broker: decode, decide, encode.

Prints figures; asserts nothing. Run: .venv/bin/python scripts/bench_core.py [--sagas N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sagastream.core.saga import Event, decide
from sagastream.core.state import decode_state, encode_state
from sagastream.core.topology import load_topology
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore, new_meta

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sagas", type=int, default=20_000)
    args = parser.parse_args()
    store = SchemaStore(ROOT / "schemas")
    codec = AvroCodec(store, LocalSchemaIds(store))
    topology = load_topology(ROOT / "topology.yaml", ROOT / "schemas")
    definition = ("order", topology.sagas["order"])
    results = [
        ("PaymentCharged", {"order_id": "", "payment_id": "pay_1", "amount_cents": 1999}),
        ("InventoryReserved", {"order_id": "", "reservation_id": "res_1"}),
        ("ShipmentCreated", {"order_id": "", "shipment_id": "shp_1"}),
    ]
    order = {
        "order_id": "",
        "customer_id": "c-1",
        "email": "a@example.com",
        "amount_cents": 1999,
        "currency": "EUR",
        "card_token": "tok_visa",
        "items": [{"sku": "SKU-1", "quantity": 1}],
        "shipping_address": "1 Main Street",
        "priority": "normal",
        "has_app": False,
    }
    wire: list[bytes] = []
    for i in range(args.sagas):
        key = f"o-{i}"
        wire.append(
            codec.encode(
                "OrderPlaced",
                {**order, "order_id": key, "meta": new_meta("OrderPlaced", key, "bench")},
            )
        )
        for event_type, fields in results:
            wire.append(
                codec.encode(
                    event_type,
                    {**fields, "order_id": key, "meta": new_meta(event_type, key, "bench")},
                )
            )

    started = time.perf_counter()
    decoded = [codec.decode(b) for b in wire]
    t_decode = time.perf_counter() - started

    states: dict[str, bytes] = {}
    commands = 0
    started = time.perf_counter()
    for event_type, record in decoded:
        meta = record.pop("meta")
        key = meta["saga_key"]
        raw = states.get(key)
        state = decode_state(raw) if raw else None
        decision = decide(definition, state, Event(event_type, meta["event_id"], record), 0)
        if decision.state is not None:
            states[key] = encode_state(decision.state)
        commands += len(decision.commands)
    t_decide = time.perf_counter() - started

    n = len(wire)
    size = sum(len(s) for s in states.values()) / len(states)
    print(f"events {n}, sagas {args.sagas}, commands {commands}")
    print(f"decode              {n / t_decode:10.0f} events/s")
    print(f"load+decide+store   {n / t_decide:10.0f} events/s  (state, {size:.0f} bytes per saga)")


if __name__ == "__main__":
    main()
