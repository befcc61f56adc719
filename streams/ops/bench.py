"""`sagastream bench`: throughput, latency, CPU and Kafka writes of the order saga on a real broker.

A run has phases, each under its own topic prefix inside the run's (`bench-<time>-`):

``ss-``        the order saga with instant handlers, a worker process per role, at the maximum
               rate and at fixed rates; then the records it wrote, counted per topic;
``base-``      the same hops on plain confluent-kafka (streams.ops.pipeline_baseline), with as
               many writes per saga: the physical limit every sagastream figure is divided by;
``par-/seq-``  handler latencies of 200, 100 and 150 ms, the saga's steps in parallel (as
               topology.yaml defines them) and chained one after the other.

Latency is the time from publishing the start event to reading its outcome (read_committed) in
this process; CPU is utime+stime from /proc per process over the rate point, broker JVM and
this driver included.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from streams.core.topology import Topology, load_topology
from streams.ops.demo import (
    OUTCOMES,
    WorkerSet,
    _progress,
    order_fields,
    percentile,
)
from streams.ops.pipeline_baseline import ROLES as BASELINE_ROLES
from streams.runtime.settings import Settings

Rate = float | None  # None: as fast as the producer takes them
Point = dict[str, Any]

WARMUP_ORDERS = 50
MAX_FIXED_RATE_ORDERS = 2000
FIXED_RATE_SECONDS = 5.0
# 34.6 writes per saga measured for the faust runtime (DESIGN.md), minus the pipeline's own
DEFAULT_FILLER = 25
FANOUT_LATENCY_MS = {"payment": 200, "inventory": 100, "shipping": 150}
FANOUT_ORDERS = 20
FANOUT_RATE = 4.0
CPU_COLUMNS = (*BASELINE_ROLES, "broker", "driver")


@dataclass(frozen=True)
class BenchOptions:
    """What `sagastream bench` was asked to do."""

    orders: int | None = None
    rates: tuple[float, ...] = (100.0, 300.0, 600.0)
    baseline_orders: int = 20_000
    skip_baseline: bool = False
    skip_fanout: bool = False
    json_path: Path = Path("bench-results.json")
    plot_path: Path = Path("bench-latency.png")
    timeout: float = 300.0
    seed: int = 42
    keep: bool = False

    def points(self) -> list[tuple[Rate, int]]:
        """(rate, orders) per rate point: the maximum rate first, then the fixed rates."""
        fixed = [
            (rate, self.orders or min(MAX_FIXED_RATE_ORDERS, max(1, round(rate * FIXED_RATE_SECONDS))))
            for rate in self.rates
        ]
        return [(None, self.orders or 2000), *fixed]


def parse_rates(spec: str) -> tuple[float, ...]:
    """'100,300,600' -> fixed rates in sagas/s; 'max' and blanks are skipped (max always runs)."""
    rates: list[float] = []
    for part in spec.split(","):
        part = part.strip().lower()
        if part in ("", "max"):
            continue
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(f"--rates: {part!r} is not a number of sagas per second") from None
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"--rates: {part!r} must be a positive number of sagas per second")
        rates.append(rate)
    return tuple(dict.fromkeys(rates))


def rate_label(rate: Rate) -> str:
    return "max" if rate is None else f"{rate:g}/s"


# --------------------------------------------------------------------------- CPU accounting


def stat_cpu_ticks(stat: str) -> int:
    """utime+stime in clock ticks from the text of /proc/<pid>/stat (all threads included)."""
    # the command name (field 2) may hold spaces and parentheses: fields start after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15; fields[0] is field 3


def process_cpu_s(pid: int) -> float:
    """CPU seconds a live process has used so far; NaN once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    return stat_cpu_ticks(stat) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds per named group of processes."""
    return {name: sum(process_cpu_s(pid) for pid in group) for name, group in pids.items()}


def cpu_ms_per_saga(before: dict[str, float], after: dict[str, float], sagas: int) -> dict[str, float]:
    """Milliseconds of CPU per saga for each process, and their sum as `total`."""
    per = {
        name: (after[name] - before[name]) * 1000 / sagas if sagas else math.nan
        for name in before
    }
    per["total"] = sum(per.values())
    return per


# --------------------------------------------------------------------------- latency and ratios


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    return {f"p{round(q * 100)}": percentile(latencies_ms, q) for q in (0.5, 0.95, 0.99)}


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either is missing or base is zero."""
    if value is None or base is None or not math.isfinite(value) or not math.isfinite(base):
        return None
    return value / base if base else None


def ratios(point: Point, base: Point) -> dict[str, Any]:
    """Every figure of a sagastream rate point divided by the baseline's at the same rate."""
    return {
        "sagas_per_s": ratio(point["sagas_per_s"], base["sagas_per_s"]),
        "latency_ms": {q: ratio(v, base["latency_ms"].get(q)) for q, v in point["latency_ms"].items()},
        "cpu_ms_per_saga": {
            name: ratio(v, base["cpu_ms_per_saga"].get(name))
            for name, v in point["cpu_ms_per_saga"].items()
        },
    }


# --------------------------------------------------------------------------- Kafka writes


def count_records(settings: Settings, topics: list[str], timeout: float = 120.0) -> dict[str, int]:
    """Committed records per topic (read_committed, so transaction markers do not count)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            **settings.librdkafka(),
            "group.id": f"bench-counter-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    counts = dict.fromkeys(topics, 0)
    try:
        metadata = consumer.list_topics(timeout=10)
        todo: set[tuple[str, int]] = set()
        for topic in topics:
            for p in metadata.topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high > low:
                    todo.add((topic, p))
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in todo])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.5):
                error = msg.error()
                if error is None:
                    counts[msg.topic() or ""] += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    todo.discard((msg.topic() or "", msg.partition() or 0))
        if todo:
            raise TimeoutError(f"counting records: {len(todo)} partitions unread after {timeout}s")
    finally:
        consumer.close()
    return counts


def writes_per_saga(counts: dict[str, int], sagas: int, prefix: str) -> dict[str, Any]:
    """Records per saga, in total and per topic (named without the prefix, most first)."""
    by_topic = {
        name.removeprefix(prefix): n / sagas
        for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if n
    }
    return {"total": sum(by_topic.values()), "by_topic": by_topic}


# --------------------------------------------------------------------------- plot


def write_plot(series: dict[str, list[Point]], path: Path) -> str | None:
    """Latency percentiles against rate, one line style per series; a reason if it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'sagastream[dev]'); no plot written"
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["-", "--", ":", "-."]
    for (name, points), style in zip(series.items(), styles * len(series), strict=False):
        # the maximum-rate point sits where it got to: at the rate it achieved
        placed = sorted(
            (p["sagas_per_s"] if p["rate"] == "max" else p["rate"], p)
            for p in points
            if math.isfinite(p["sagas_per_s"]) and p["sagas_per_s"] > 0
        )
        for q, marker in (("p50", "o"), ("p95", "s"), ("p99", "^")):
            xy = [(x, p["latency_ms"][q]) for x, p in placed if math.isfinite(p["latency_ms"][q])]
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.plot(xs, ys, linestyle=style, marker=marker, label=f"{name} {q}")
        for x, p in placed:
            if p["rate"] == "max":
                ax.annotate("max", (x, p["latency_ms"]["p50"]), textcoords="offset points", xytext=(4, -12))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rate (sagas/s offered; 'max': achieved)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("order saga: start event to outcome")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- one rate point


@dataclass
class Source:
    """What a rate point publishes, and how it recognises the outcome of each start event."""

    client: Any  # EventClient
    outcome_topic: str
    publish: Callable[[str], int]  # key -> epoch ms it was published at
    outcome_key: Callable[[Any], str | None]  # Received -> saga key, if it is an outcome
    workers: WorkerSet
    pids: dict[str, list[int]]


def _publisher(
    source: Source, keys: list[str], rate: Rate, sent: dict[str, int], errors: list[BaseException]
) -> None:
    try:
        started = time.monotonic()
        for i, key in enumerate(keys):
            if rate is not None:
                wait = started + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            sent[key] = source.publish(key)
            if i == 0:
                sent[""] = time.monotonic_ns()
        source.client.flush()
    except BaseException as exc:
        errors.append(exc)


def measure(
    source: Source, keys: list[str], rate: Rate, timeout: float, out: TextIO | None
) -> Point:
    """Publish `keys` at `rate` while reading their outcomes; the figures of this rate point."""
    sent: dict[str, int] = {}
    errors: list[BaseException] = []
    wanted = set(keys)
    received: dict[str, tuple[int, float]] = {}
    publisher = threading.Thread(
        target=_publisher, args=(source, keys, rate, sent, errors), daemon=True
    )
    before = cpu_snapshot(source.pids)
    started = time.monotonic()
    publisher.start()
    last_check = started
    window = len(keys) / rate if rate else 0.0
    for msg in source.client.stream([source.outcome_topic], window + timeout):
        key = source.outcome_key(msg)
        if key in wanted and key not in received:
            received[key] = (time.time_ns() // 1_000_000, time.monotonic())
            if out is not None:
                _progress(out, len(received), len(keys), started)
        if time.monotonic() - last_check > 2:
            source.workers.check_alive()
            if errors:
                raise errors[0]
            last_check = time.monotonic()
        if len(received) == len(keys):
            break
    after = cpu_snapshot(source.pids)
    publisher.join()
    if errors:
        raise errors[0]
    if out is not None and len(received) < len(keys):
        out.write("\n")
    first = sent.pop("", time.monotonic_ns()) / 1e9
    last = max((t for _, t in received.values()), default=first)
    elapsed = last - first
    return {
        "rate": "max" if rate is None else rate,
        "orders": len(keys),
        "completed": len(received),
        "stuck": len(keys) - len(received),
        "elapsed_s": elapsed,
        "sagas_per_s": len(received) / elapsed if elapsed > 0 else math.nan,
        "latency_ms": latency_summary([float(ms - sent[k]) for k, (ms, _) in received.items()]),
        "cpu_ms_per_saga": cpu_ms_per_saga(before, after, len(received)),
    }


