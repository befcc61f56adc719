"""A repeatable microbenchmark of the orchestrator's per-saga work, without a broker.

N order sagas run through `Orchestrator._handle` and `_commit`, the code path of the loop
(decode, decide, encode state and outputs, metrics, store), on a fake producer and real RocksDB
stores (`--memory`: in-memory ones). A fake handler answers every command with its success
event between rounds; only the orchestrator's part is timed, in CPU time
(time.process_time: the machine is shared), repeated and reported as the median.

Run: .venv/bin/python -m tests.perf.orchestrator_profile [--sagas N] [--repeat 5] [--profile 25]
It prints figures and asserts nothing; tests/unit/test_orchestrator_profile.py checks that its
sagas all reach their outcome.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sagastream.core.state import decode_state
from sagastream.core.topology import load_topology
from sagastream.ops.demo import order_fields
from sagastream.runtime.checkpoint import Checkpoint
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.orchestrator import BATCH, Orchestrator
from sagastream.runtime.outputs import Encoder
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import MemoryStore, PartitionStore, RocksStore
from sagastream.runtime.worker import settle_heap
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore, new_meta
from tests.unit.test_checkpoint import FakeConsumer, FakeProducer
from tests.unit.test_event_time import Record

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
# what the fake handlers answer each step's command of the order saga with (always a success);
# notifications are not answered: no saga reads their results
ANSWERS = {
    "ChargePayment": "PaymentCharged",
    "ReserveInventory": "InventoryReserved",
    "CreateShipment": "ShipmentCreated",
}


@dataclass
class GcClock:
    """The cyclic GC's collections and their CPU time while `on` (installed in gc.callbacks)."""

    collections: int = 0
    cpu: float = 0.0
    on: bool = False
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
        elif self.on:
            self.collections += 1
            self.cpu += time.process_time() - self._started


@dataclass
class Run:
    """One orchestrator on fakes, its inputs queued per round, the CPU time it spent."""

    orchestrator: Orchestrator
    producer: FakeProducer
    codec: AvroCodec
    handler: Encoder
    cpu: float = 0.0
    gc: GcClock = field(default_factory=GcClock)  # the collections while it decides
    statuses: dict[str, int] = field(default_factory=dict)  # the stored sagas', once run
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def feed(self, inputs: list[Record]) -> None:
        """Decide these inputs, committing every BATCH as the loop does under load; timed."""
        orchestrator = self.orchestrator
        self.gc.on = True
        started = time.process_time()
        for i, msg in enumerate(inputs, 1):
            orchestrator._handle(msg)  # type: ignore[arg-type]
            if i % BATCH == 0:
                orchestrator._commit()
        orchestrator._commit()
        self.cpu += time.process_time() - started
        self.gc.on = False

    def message(self, topic: str, key: bytes, value: bytes) -> Record:
        partition = int.from_bytes(key[-2:], "big") % PARTITIONS
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[topic, partition] = offset + 1
        return Record(topic, partition, offset, 0, key, value)

    def answers(self) -> list[Record]:
        """The results of every command the last rounds committed (the handlers' work)."""
        out = []
        for topic, key, value, _ in self.producer.committed:
            if not topic.endswith(".commands"):
                continue
            command_type, command = self.codec.decode(value)
            result = ANSWERS.get(command_type)
            if result is None:
                continue
            meta = command["meta"]
            fields = {**command, "payment_id": "pay-1", "reservation_id": "res-1"}
            fields.update(shipment_id="shp-1", channel="email", template="t")
            record = self.handler.derived(
                result, key, fields, meta, meta["attempt"], step=meta.get("step")
            )
            out.append(self.message(self.handler.topic_of(result), key, record.value or b""))
        self.producer.committed = []
        return out

    def count_statuses(self) -> None:
        """The sagas stored, by status, into `statuses`."""
        for store in self.orchestrator.stores.values():
            for _, raw in store.states():
                status = decode_state(raw).status
                self.statuses[status] = self.statuses.get(status, 0) + 1


def build(data_dir: Path, memory: bool) -> Run:
    """An orchestrator of the demo topology on a fake producer, owning PARTITIONS stores."""
    schemas = SchemaStore(ROOT / "schemas")
    topology = load_topology(ROOT / "topology.yaml", schemas.directory)
    codec = AvroCodec(schemas, LocalSchemaIds(schemas))
    settings = Settings(data_dir=data_dir, schema_registry_url=None)
    orchestrator = Orchestrator(settings, topology, schemas, codec, Metrics.create("bench"))
    producer = FakeProducer()
    orchestrator._ckpt = Checkpoint(producer, settings.changelog_topic())  # type: ignore[arg-type]
    orchestrator._consumer = FakeConsumer()  # type: ignore[assignment]
    stores: dict[int, PartitionStore] = {
        p: MemoryStore() if memory else RocksStore(data_dir / f"p{p}") for p in range(PARTITIONS)
    }
    orchestrator.stores = stores
    handler = Encoder(settings, topology, schemas, codec, "bench-handler")
    return Run(orchestrator, producer, codec, handler)


def run_sagas(sagas: int, data_dir: Path, memory: bool = False, tuned_gc: bool = True) -> Run:
    """Start `sagas` orders and answer their commands until nothing is left to answer; with
    `tuned_gc`, the cyclic GC set up as a worker sets it once started (settle_heap)."""
    run = build(data_dir, memory)
    if tuned_gc:
        settle_heap()
    gc.callbacks.append(run.gc)
    try:
        _answer_all(run, sagas)
    finally:
        gc.callbacks.remove(run.gc)
    run.count_statuses()
    for store in run.orchestrator.stores.values():
        store.close()
    return run


def _answer_all(run: Run, sagas: int) -> None:
    """Start the orders, then decide rounds of the handlers' answers until none is left."""
    rng = random.Random(7)
    starts = []
    for i in range(sagas):
        key = f"o-{i:06d}"
        fields, _ = order_fields(key, rng)
        fields["card_token"] = "tok_visa"  # the fake handlers succeed: every saga completes
        value = run.codec.encode(
            "OrderPlaced", {**fields, "meta": new_meta("OrderPlaced", key, "b")}
        )
        starts.append(run.message(run.handler.topic_of("OrderPlaced"), key.encode(), value))
    inputs = starts
    while inputs:
        run.feed(inputs)
        inputs = run.answers()


def measure(sagas: int, memory: bool, tuned_gc: bool) -> tuple[float, GcClock]:
    """CPU µs per saga of one run, and what the GC took of it; the GC is as it was before
    afterwards."""
    threshold = gc.get_threshold()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run = run_sagas(sagas, Path(tmp), memory, tuned_gc)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    return run.cpu / sagas * 1e6, run.gc


def profile(sagas: int, memory: bool, top: int) -> None:
    """The cProfile top entries (by own time) of one run, orchestrator and handlers both."""
    profiler = cProfile.Profile(time.process_time)
    with tempfile.TemporaryDirectory() as tmp:
        profiler.enable()
        run_sagas(sagas, Path(tmp), memory)
        profiler.disable()
    gc.unfreeze()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="in-memory stores, not RocksDB")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP", help="print cProfile")
    parser.add_argument(
        "--default-gc", action="store_true", help="Python's GC settings, not the worker's"
    )
    args = parser.parse_args(argv)
    figures, clocks = [], []
    for _ in range(args.repeat):
        gc.collect()
        figure, clock = measure(args.sagas, args.memory, not args.default_gc)
        figures.append(figure)
        clocks.append(clock)
    shown = ", ".join(f"{f:.0f}" for f in figures)
    out(
        f"orchestrator CPU per saga over {args.sagas} order sagas: "
        f"median {statistics.median(figures):.0f} µs ({shown})"
    )
    gc_us = statistics.median(c.cpu for c in clocks) / args.sagas * 1e6
    collections = statistics.median(c.collections for c in clocks)
    out(f"cyclic GC while deciding: {collections:.0f} collections, {gc_us:.0f} µs per saga")
    if args.profile:
        profile(args.sagas, args.memory, args.profile)
    return figures


if __name__ == "__main__":
    main()
