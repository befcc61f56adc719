"""`sagastream bench --restore N`: how soon an orchestrator holding N sagas is ready again.

N order-saga states, made by the pure core (`decide` on an OrderPlaced), go straight into the
state changelog in transactions of about 10,000 records, keyed and partitioned as the
orchestrator writes them; every tenth saga then gets its payment result, so restore meets the
duplicates a changelog holds before compaction. Restore is timed twice from an empty data
directory and twice from the checkpoint after RESTART_CHANGES more records (a normal restart's
worth): in this process, calling the runtime's `restore` on RocksDB stores, and as a whole
`sagastream worker --role orchestrator` process, from its start until its log says every
partition is restored and assigned. The worker's second start reuses the stores of its first,
so its checkpoint path is the real one.

The states are stamped an hour ahead, so none of their timers comes due while a worker runs:
what is timed is restore, not the firing of timers that fell due meanwhile.
"""

from __future__ import annotations

import math
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sagastream.core.saga import Event, decide
from sagastream.core.state import SagaState, decode_state, encode_state
from sagastream.core.topology import Topology, load_topology
from sagastream.errors import UsageError
from sagastream.ops.bench import Run, process_cpu_s
from sagastream.ops.demo import WorkerSet, order_fields, settings_env
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import DUE_DIGITS, PartitionStore, changelog_headers

SAGA = "order"
UPDATE_EVERY = 10  # every tenth saga is written twice: M = N / 10
RECORDS_PER_TRANSACTION = 10_000
RESTART_CHANGES = 1000  # K: what changed between two starts of a worker
AHEAD_MS = 3_600_000
TARGET_S = {"empty": 30.0, "checkpoint": 5.0}  # the targets at 100,000 sagas

Record = tuple[bytes, bytes]


def saga_key(i: int) -> str:
    return f"order-{i:06d}"


class OrderStates:
    """Order sagas as the orchestrator stores them, each made by `decide` from its own events.

    Saga i is a function of (seed, i, now) alone, so any saga's state can be made again
    without keeping the others.
    """

    def __init__(self, topology: Topology, now_ms: int, seed: int = 42) -> None:
        self.definition = (SAGA, topology.sagas[SAGA])
        self.now = now_ms
        self.seed = seed

    def started(self, i: int) -> SagaState:
        """Saga i just after its OrderPlaced: every step sent, its timers armed."""
        key = saga_key(i)
        rng = random.Random(f"{self.seed}:{key}")
        fields, _ = order_fields(key, rng)
        event_id = _uuid(rng)
        trace = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
        event = Event("OrderPlaced", event_id, fields, correlation_id=event_id, traceparent=trace)
        return self._decided(None, event, self.now)

    def paid(self, i: int, state: SagaState) -> SagaState:
        """Saga i after its payment result."""
        rng = random.Random(f"{self.seed}:{saga_key(i)}:paid")
        fields = {
            "order_id": state.key,
            "payment_id": f"pay-{rng.getrandbits(48):012x}",
            "amount_cents": state.data["start"]["amount_cents"],
        }
        return self._decided(
            state, Event("PaymentCharged", _uuid(rng), fields, hop=1), self.now + 250
        )

    def reserved(self, i: int, state: SagaState) -> SagaState:
        """Saga i after its stock reservation."""
        rng = random.Random(f"{self.seed}:{saga_key(i)}:reserved")
        fields = {"order_id": state.key, "reservation_id": f"res-{rng.getrandbits(48):012x}"}
        return self._decided(
            state, Event("InventoryReserved", _uuid(rng), fields, hop=1), self.now + 400
        )

    def stored(self, i: int) -> SagaState:
        """Saga i as the changelog of `changelog_transactions` leaves it."""
        state = self.started(i)
        return self.paid(i, state) if i % UPDATE_EVERY == 0 else state

    def _decided(self, state: SagaState | None, event: Event, at: int) -> SagaState:
        decision = decide(self.definition, state, event, at)
        if decision.state is None:
            raise AssertionError(f"{event.event_type} left no state: {decision}")
        return decision.state


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def changelog_transactions(
    states: OrderStates, n: int, per_transaction: int = RECORDS_PER_TRANSACTION
) -> Iterator[list[Record]]:
    """The changelog of sagas 1..n, a transaction at a time: n started states, then n / 10
    updates, each in the transaction after its saga's start (as a result arrives after it)."""
    batch: list[Record] = []
    paying: list[tuple[int, SagaState]] = []
    for i in range(1, n + 1):
        state = states.started(i)
        batch.append((saga_key(i).encode(), encode_state(state)))
        if i % UPDATE_EVERY == 0:
            paying.append((i, state))
        if len(batch) >= per_transaction:
            yield batch
            batch = [(saga_key(j).encode(), encode_state(states.paid(j, s))) for j, s in paying]
            paying = []
    if batch:
        yield batch
    if paying:
        yield [(saga_key(j).encode(), encode_state(states.paid(j, s))) for j, s in paying]


def restart_changes(states: OrderStates, n: int, k: int = RESTART_CHANGES) -> list[Record]:
    """k changelog records of k sagas spread over 1..n: the next result of each."""
    k = min(k, n)
    picked = [1 + j * n // k for j in range(k)]
    return [
        (saga_key(i).encode(), encode_state(states.reserved(i, states.stored(i)))) for i in picked
    ]


def count_held(store: PartitionStore) -> tuple[int, int]:
    """(sagas, armed timers in the due-index) of a restored store."""
    sagas = sum(1 for _ in store.states())
    timers = len(store.due(10**DUE_DIGITS - 2, 2**31))
    return sagas, timers


# --------------------------------------------------------------------------- the worker's log

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) [\w.]+: (.*)$")
_RESTORED = re.compile(r"partition (\d+) restored: (\d+) changelog records from (\S+)")
_ASSIGNED = re.compile(r"assigned partitions \[([\d, ]*)\]")


@dataclass
class WorkerLog:
    """What an orchestrator worker's log (at --loglevel info) says about its start."""

    consuming_at: float | None = None  # epoch s: the consumer subscribed
    restored: dict[int, int] = field(default_factory=dict)  # partition -> records replayed
    ready_at: float | None = None  # epoch s: restored and assigned every wanted partition
    failures: list[str] = field(default_factory=list)  # its ERROR lines


def parse_worker_log(text: str, partitions: int) -> WorkerLog:
    """Times from the log's own timestamps (local time, milliseconds), not from when it is read."""
    got = WorkerLog()
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        level, message = m[2], m[3]
        if message.startswith("orchestrator consuming") and got.consuming_at is None:
            got.consuming_at = at
        elif r := _RESTORED.match(message):
            got.restored[int(r[1])] = got.restored.get(int(r[1]), 0) + int(r[2])
        elif (a := _ASSIGNED.match(message)) and got.ready_at is None:
            assigned = {int(p) for p in a[1].split(",") if p.strip()}
            if assigned >= set(range(partitions)) and set(got.restored) >= assigned:
                got.ready_at = at
        elif level in ("ERROR", "CRITICAL"):
            got.failures.append(message)
    return got


# --------------------------------------------------------------------------- measuring


def disk_mb(path: Path) -> float:
    """Space the files under `path` take on disk (like du), in MB."""
    used = sum(
        (Path(root) / name).stat().st_blocks * 512
        for root, _, names in os.walk(path)
        for name in names
    )
    return used / 1e6


def write_changelog(settings: Settings, batches: Iterable[list[Record]]) -> int:
    """Write records into the changelog, a transaction per batch; returns how many."""
    from confluent_kafka import Producer

    from sagastream.runtime.kafka_io import produce

    producer = Producer(
        settings.transactional_producer_config(f"{settings.topic_prefix}bench-restore")
    )
    producer.init_transactions(30)
    topic, written = settings.changelog_topic(), 0
    for batch in batches:
        producer.begin_transaction()
        for key, value in batch:
            # headers as the orchestrator writes them (restore reads timers there)
            state = decode_state(value) if value else None
            produce(producer, topic, value, key, changelog_headers(state))
        producer.commit_transaction(60)
        written += len(batch)
    return written


def _in_process(
    settings: Settings, directory: Path, partitions: int, timeout: float
) -> dict[str, Any]:
    from sagastream.runtime.restore import restore
    from sagastream.runtime.store import RocksStore

    stores: dict[int, PartitionStore] = {
        p: RocksStore(directory / f"p{p}") for p in range(partitions)
    }
    try:
        cpu, started = time.process_time(), time.monotonic()
        done = restore(settings, settings.changelog_topic(), stores, timeout)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
        held = [count_held(s) for s in stores.values()]
    finally:
        for store in stores.values():
            store.close()
    records = sum(d.records for d in done)
    return {
        "where": "in-process",
        "records": records,
        "seconds": seconds,
        "records_per_s": records / seconds if seconds > 0 else math.nan,
        "cpu_s": cpu,
        "disk_mb": disk_mb(directory),
        "sagas": sum(h[0] for h in held),
        "timers": sum(h[1] for h in held),
    }


def _worker(
    settings: Settings, data_dir: Path, log_path: Path, partitions: int, timeout: float
) -> dict[str, Any]:
    """Start an orchestrator worker; time it from its start until its log says it is ready."""
    workers = WorkerSet(settings.model_copy(update={"data_dir": data_dir}), log_path.parent)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env(workers.settings)}
    argv = [sys.executable, "-m", "sagastream.ops.cli", "worker", "--role", "orchestrator"]
    with open(log_path, "wb") as log:
        started = time.time()
        workers.procs[log_path.stem] = subprocess.Popen(
            [*argv, "--loglevel", "info"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid = workers.procs[log_path.stem].pid
    try:
        deadline = time.monotonic() + timeout
        while True:
            workers.check_alive()
            got = parse_worker_log(log_path.read_text(errors="replace"), partitions)
            if got.ready_at is not None:
                ready_at, cpu = got.ready_at, process_cpu_s(pid)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"orchestrator worker not ready after {timeout}s; log {log_path}"
                )
            time.sleep(0.05)
    finally:
        workers.stop()
    records = sum(got.restored.values())
    return {
        "where": "worker",
        "records": records,
        "seconds": ready_at - started,
        "records_per_s": None,
        "cpu_s": cpu,
        "disk_mb": disk_mb(data_dir),
        "up_s": None if got.consuming_at is None else got.consuming_at - started,
        "failures": got.failures,
        "log": str(log_path),
    }


def fresh_topics(run: Run, what: str, phase: str, n: int) -> tuple[Settings, Topology, int]:
    """The settings of a bench phase of n sagas (`what`: its option's name), its topology and
    partition count, its topics created under its own prefix."""
    from sagastream.ops.admin import create_topics

    if n < 1:
        raise UsageError(f"--{what}: {n} is not a number of sagas (1 or more)")
    settings = run.phase(phase)
    topology = load_topology(settings.topology_file, settings.schemas_path)
    partitions = topology.partitions(topology.orchestrator_inputs()[0])
    run.say(
        f"\n{what}: {n:,} order sagas, {partitions} partitions (topics {settings.topic_prefix}*)"
    )
    create_topics(settings, topology)
    return settings, topology, partitions


def restore_phase(run: Run, n: int, timeout: float, seed: int = 42) -> dict[str, Any]:
    """Write n sagas into a fresh changelog and time restores of it, under the run's prefix."""
    from sagastream.wire.codec import SchemaStore
    from sagastream.wire.registry import Registry, plan_subjects, register_subjects

    settings, topology, partitions = fresh_topics(run, "restore", "rst", n)
    if settings.schema_registry_url:  # the worker looks its schemas up as it starts
        subjects = plan_subjects(topology, SchemaStore(settings.schemas_path), settings)
        run.subjects += subjects
        register_subjects(Registry.for_settings(settings), subjects)
    # under the data directory (not /tmp, which may be memory) and removed with the run's
    directory = settings.data_dir / f"{settings.topic_prefix}data"
    states = OrderStates(topology, time.time_ns() // 1_000_000 + AHEAD_MS, seed)

    t0 = time.monotonic()
    written = write_changelog(settings, changelog_transactions(states, n))
    write_s = time.monotonic() - t0
    run.say(f"  wrote {written:,} changelog records in {write_s:.1f}s")
    runs: list[dict[str, Any]] = []

    def measured(origin: str, result: dict[str, Any]) -> None:
        runs.append({"from": origin, **result})
        run.say(f"  {origin:<10} {result['where']:<10} {result['seconds']:7.2f}s")

    log_dir = run.log_dir / "rst"
    restore_timeout = max(timeout, 120.0)
    measured("empty", _in_process(settings, directory / "in-process", partitions, restore_timeout))
    worker_dir = directory / "worker"
    measured("empty", _worker(settings, worker_dir, log_dir / "empty.log", partitions, timeout))
    restart = write_changelog(settings, [restart_changes(states, n)])
    run.say(f"  wrote {restart:,} more changelog records")
    measured(
        "checkpoint", _in_process(settings, directory / "in-process", partitions, restore_timeout)
    )
    measured(
        "checkpoint", _worker(settings, worker_dir, log_dir / "checkpoint.log", partitions, timeout)
    )
    return {
        "sagas": n,
        "partitions": partitions,
        "changelog_records": written,
        "restart_records": restart,
        "write_s": write_s,
        "target_s": TARGET_S,
        "runs": runs,
    }


def format_restore(result: dict[str, Any]) -> list[str]:
    """The table `sagastream bench --restore` prints."""

    def num(value: Any, digits: int) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        return f"{value:,.{digits}f}"

    lines = [
        "",
        f"  restore: {result['sagas']:,} sagas in {result['partitions']} partitions, "
        f"{result['changelog_records']:,} changelog records, then {result['restart_records']:,} more",
        f"  {'from':<12} {'where':<11} {'records':>9} {'seconds':>8} {'records/s':>10} "
        f"{'CPU s':>7} {'disk MB':>8} {'target':>8}",
    ]
    for r in result["runs"]:
        target = f"< {result['target_s'][r['from']]:g} s" if r["where"] == "worker" else ""
        lines.append(
            f"  {r['from']:<12} {r['where']:<11} {r['records']:>9,} {num(r['seconds'], 2):>8} "
            f"{num(r['records_per_s'], 0):>10} {num(r['cpu_s'], 1):>7} {num(r['disk_mb'], 1):>8} "
            f"{target:>8}"
        )
    for r in result["runs"]:
        if r["where"] != "worker":
            continue
        if r.get("up_s") is not None:
            lines.append(
                f"  worker from {r['from']}: {r['up_s']:.2f}s to subscribe (imports, registry, "
                f"producer), {r['seconds'] - r['up_s']:.2f}s to join the group and restore"
            )
        if r.get("failures"):
            lines.append(f"  worker from {r['from']}: {len(r['failures'])} errors, see {r['log']}")
    lines.append(
        "  worker: from process start until its log says every partition is restored and assigned"
    )
    return lines
