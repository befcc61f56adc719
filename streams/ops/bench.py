"""`sagastream bench`: throughput, latency, CPU and Kafka writes of the order saga on a real broker.

A run has phases, each under its own topic prefix inside the run's (`bench-<time>-`):

``ss-``        the order saga with instant handlers, a worker process per role: a warm-up at the
               maximum rate (reported apart, never mixed in), a steady window of `steady` orders
               at the maximum rate, then fixed rates; then the records it wrote, counted per topic;
``base-``      the same hops on plain confluent-kafka (sagastream.ops.pipeline_baseline), with as
               many writes per saga, the same warm-up and as many sagas per point: the physical
               limit every sagastream figure is divided by;
``par-/seq-``  handler latencies of 200, 100 and 150 ms, the saga's steps in parallel (as
               topology.yaml defines them) and chained one after the other;
``tr0-/tr10-/tr100-``  with `--trace`: the order saga at the maximum rate with tracing off, and
               exporting spans by OTLP sampled at 0.1 and at 1.0 (runtime/tracing.py).

Latency is the time from publishing the start event to reading its outcome (read_committed) in
this process; sagas/s counts from the first publish to the last outcome ("by outcome") and to
when the phase's topics stop growing ("to quiet"); CPU is utime+stime from /proc per process,
broker JVM and this driver included, from the first publish until the topics stop growing.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sagastream.core.topology import Topology, load_topology
from sagastream.errors import ClusterError, UsageError
from sagastream.ops.demo import (
    OUTCOMES,
    WorkerSet,
    local_infrastructure,
    order_fields,
    percentile,
    progress,
    settings_env,
)
from sagastream.ops.pipeline_baseline import (
    READY,
    BaselineTopics,
    create_baseline_topics,
)
from sagastream.ops.pipeline_baseline import ROLES as BASELINE_ROLES
from sagastream.runtime.settings import Settings

Rate = float | None  # None: as fast as the producer takes them
Point = dict[str, Any]

WARMUP_ORDERS = 50  # the phases without a warm-up of their own (fan-out, tracing)
STEADY_ORDERS = 20_000  # the maximum-rate window: long enough that start-up and JIT wash out
STEADY_WARMUP_ORDERS = 2_000
MAX_FIXED_RATE_ORDERS = 2000
FIXED_RATE_SECONDS = 5.0
FANOUT_LATENCY_MS = {"payment": 200, "inventory": 100, "shipping": 150}
FANOUT_ORDERS = 20
FANOUT_RATE = 4.0
CPU_COLUMNS = (*BASELINE_ROLES, "broker", "driver")
BASELINE_COMMITS = ("same", "interval")
QUIET_S = 0.5  # several commit intervals without a write: the work of a rate point is done


@dataclass(frozen=True)
class BenchOptions:
    """What `sagastream bench` was asked to do."""

    orders: int | None = None  # per fixed-rate point; None: FIXED_RATE_SECONDS worth
    steady: int = STEADY_ORDERS  # the maximum-rate point, after the warm-up
    warmup: int = STEADY_WARMUP_ORDERS  # at the maximum rate first, reported apart
    rates: tuple[float, ...] = (100.0, 300.0, 600.0)
    # the baseline orchestrator's commits: "same" as sagastream's (interval and linger), or at
    # the commit "interval" only (plain Kafka's usual way; its ratios are then not printed)
    baseline_commit: str = "same"
    skip_baseline: bool = False
    skip_fanout: bool = False
    json_path: Path = Path("bench-results.json")
    plot_path: Path = Path("bench-latency.png")
    timeout: float = 300.0
    seed: int = 42
    keep: bool = False
    restore: int | None = None  # sagas for the restore measurement (sagastream.ops.bench_restore)
    console: int | None = None  # sagas for the console measurement (sagastream.ops.bench_console)
    trace: int | None = None  # sagas per tracing point (off, sampled 0.1, sampled 1.0)
    # (commit interval ms, linger ms) pairs for the trade-off table (sagastream.ops.bench_tradeoff)
    tradeoff: tuple[tuple[int, int], ...] | None = None
    tradeoff_rate: float = 300.0
    # the scale series (sagastream.ops.bench_scale): steps per saga, stored sagas, orchestrators
    scale_steps: tuple[int, ...] | None = None
    scale_stored: tuple[int, ...] | None = None
    scale_orchestrators: tuple[int, ...] | None = None
    scale_orders: int = 2000
    saga_phases: bool = True
    # the Python of another sagastream install to run the workers (None: this one's), so one
    # run measures an older release's runtime beside this one's baseline
    worker_python: Path | None = None

    def __post_init__(self) -> None:
        counts = (("--steady", self.steady), ("--warmup", self.warmup))
        for flag, value in (*counts, ("--scale-orders", self.scale_orders)):
            if value < 1:
                raise UsageError(f"{flag} {value}: give at least 1 saga")
        if self.baseline_commit not in BASELINE_COMMITS:
            raise UsageError(
                f"--baseline-commit {self.baseline_commit!r}: choose "
                f"{' or '.join(BASELINE_COMMITS)}"
            )
        if self.orders is not None and self.orders < 1:
            raise UsageError(f"--orders {self.orders}: give at least 1 saga per fixed-rate point")

    def points(self) -> list[tuple[Rate, int]]:
        """(rate, orders) per measured rate point: the steady maximum-rate window first, then
        the fixed rates; the warm-up before them is no point of these."""
        fixed = [
            (
                rate,
                self.orders or min(MAX_FIXED_RATE_ORDERS, max(1, round(rate * FIXED_RATE_SECONDS))),
            )
            for rate in self.rates
        ]
        return [(None, self.steady), *fixed]


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
            raise UsageError(f"--rates: {part!r} is not a number of sagas per second") from None
        if not rate > 0 or math.isinf(rate):
            raise UsageError(f"--rates: {part!r} must be a positive number of sagas per second")
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


def cpu_ms_per_saga(
    before: dict[str, float], after: dict[str, float], sagas: int
) -> dict[str, float]:
    """Milliseconds of CPU per saga for each process, and their sum as `total`."""
    per = {
        name: (after[name] - before[name]) * 1000 / sagas if sagas else math.nan for name in before
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
        "sagas_per_s_to_quiet": ratio(
            point.get("sagas_per_s_to_quiet"), base.get("sagas_per_s_to_quiet")
        ),
        "latency_ms": {
            q: ratio(v, base["latency_ms"].get(q)) for q, v in point["latency_ms"].items()
        },
        "cpu_ms_per_saga": {
            name: ratio(v, base["cpu_ms_per_saga"].get(name))
            for name, v in point["cpu_ms_per_saga"].items()
        },
    }


def commit_policy(settings: Settings, linger: bool = True) -> dict[str, int | None]:
    """How an orchestrator transaction commits under these settings: after `interval_ms` under
    load, or `linger_ms` once inputs run dry (sagastream's runtime/orchestrator.py); no linger:
    at the interval only."""
    interval = settings.commit_interval_ms
    return {
        "interval_ms": interval,
        "linger_ms": min(interval, settings.commit_linger_ms) if linger else None,
    }


def policy_label(policy: dict[str, int | None]) -> str:
    linger = policy["linger_ms"]
    tail = "no linger" if linger is None else f"linger {linger} ms"
    return f"commit interval {policy['interval_ms']} ms, {tail}"


def unlike(ss: dict[str, Any], base: dict[str, Any]) -> str | None:
    """Why sagastream's phase cannot be divided by the baseline's, point by point; None if it
    can: the same commit policy, and the same rates and saga counts."""
    if ss["commit_policy"] != base["commit_policy"]:
        return (
            f"other commit policies (sagastream {policy_label(ss['commit_policy'])}; baseline "
            f"{policy_label(base['commit_policy'])})"
        )
    shape = [[(p["rate"], p["orders"]) for p in phase["points"]] for phase in (ss, base)]
    if shape[0] != shape[1]:
        return f"other points (sagastream {shape[0]}; baseline {shape[1]})"
    return None


# --------------------------------------------------------------------------- Kafka writes


def count_records(settings: Settings, topics: list[str], timeout: float = 120.0) -> dict[str, int]:
    """Committed records per topic (read_committed, so transaction markers do not count)."""
    from sagastream.runtime.kafka_io import read_to_end

    counts = dict.fromkeys(topics, 0)
    for msg in read_to_end(settings, topics, "bench-counter", timeout):
        counts[msg.topic() or ""] += 1
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
        fixed = sorted(((p["rate"], p) for p in points if p["rate"] != "max"), key=lambda xp: xp[0])
        # the maximum-rate point stands apart, at the rate it achieved
        top = [(p["sagas_per_s"], p) for p in points if p["rate"] == "max"]
        for q, marker, colour in (("p50", "o", "C0"), ("p95", "s", "C1"), ("p99", "^", "C3")):
            for placed, line in ((fixed, style), (top, "none")):
                xy = [
                    (x, p["latency_ms"][q])
                    for x, p in placed
                    if math.isfinite(x) and x > 0 and math.isfinite(p["latency_ms"][q])
                ]
                if xy:
                    xs, ys = zip(*xy, strict=True)
                    label = f"{name} {q}" if line != "none" or not fixed else None
                    ax.plot(xs, ys, linestyle=line, marker=marker, color=colour, label=label)
        for x, p in top:
            if math.isfinite(x) and x > 0:
                ax.annotate(
                    f"{name} max",
                    (x, p["latency_ms"]["p50"]),
                    textcoords="offset points",
                    xytext=(4, -12),
                    fontsize="small",
                )
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


class _Publisher(threading.Thread):
    """Publishes the keys of a rate point, paced by the monotonic clock unless the rate is max."""

    def __init__(self, source: Source, keys: list[str], rate: Rate) -> None:
        super().__init__(name="bench-publisher", daemon=True)
        self.source, self.keys, self.rate = source, keys, rate
        self.sent: dict[str, int] = {}  # key -> epoch ms
        self.first = math.nan  # monotonic time of the first publish
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.first = started = time.monotonic()
            for i, key in enumerate(self.keys):
                if self.rate is not None:
                    wait = started + i / self.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                self.sent[key] = self.source.publish(key)
            self.source.client.flush()
        except BaseException as exc:
            self.error = exc


def measure(
    source: Source, keys: list[str], rate: Rate, timeout: float, out: TextIO | None
) -> Point:
    """Publish `keys` at `rate` while reading their outcomes; the figures of this rate point."""
    wanted = set(keys)
    received: dict[str, tuple[int, float]] = {}  # key -> (epoch ms, monotonic) when read
    publisher = _Publisher(source, keys, rate)
    before = cpu_snapshot(source.pids)
    started = last_check = time.monotonic()
    publisher.start()
    window = len(keys) / rate if rate else 0.0
    for msg in source.client.stream([source.outcome_topic], window + timeout):
        key = source.outcome_key(msg)
        if key in wanted and key not in received:
            received[key] = (time.time_ns() // 1_000_000, time.monotonic())
            if out is not None:
                progress(out, len(received), len(keys), started)
        if time.monotonic() - last_check > 2:
            source.workers.check_alive()
            if publisher.error is not None:
                raise publisher.error
            last_check = time.monotonic()
        if len(received) == len(keys):
            break
    quiet_at, after = _wait_quiet(source.client.settings, source.pids, timeout)
    publisher.join()
    if publisher.error is not None:
        raise publisher.error
    if out is not None and (out.isatty() or len(received) < len(keys)):
        out.write("\n")
    sent = publisher.sent
    last_outcome = max((t for _, t in received.values()), default=math.nan)
    return {
        "rate": "max" if rate is None else rate,
        "orders": len(keys),
        "completed": len(received),
        "stuck": len(keys) - len(received),
        **throughput(publisher.first, last_outcome, quiet_at, len(received)),
        "latency_ms": latency_summary([float(ms - sent[k]) for k, (ms, _) in received.items()]),
        "cpu_ms_per_saga": cpu_ms_per_saga(before, after, len(received)),
    }


def throughput(first: float, last_outcome: float, quiet_at: float, sagas: int) -> dict[str, float]:
    """Sagas/s over two windows from the first publish (monotonic seconds): to the last outcome
    read ("by outcome"), and to when the phase's topics stopped growing ("to quiet": the work
    a saga causes after its outcome, notifications say, counted too; the CPU window ends there).
    """

    def per_s(end: float) -> tuple[float, float]:
        elapsed = end - first
        return elapsed, sagas / elapsed if sagas and elapsed > 0 else math.nan

    elapsed, by_outcome = per_s(last_outcome)
    # the topics may be found still only after the last outcome is read: never before it
    to_quiet_s, to_quiet = per_s(max(quiet_at, last_outcome))
    return {
        "elapsed_s": elapsed,
        "sagas_per_s": by_outcome,
        "to_quiet_s": to_quiet_s,
        "sagas_per_s_to_quiet": to_quiet,
    }


def _wait_quiet(
    settings: Settings, pids: dict[str, list[int]], timeout: float
) -> tuple[float, dict[str, float]]:
    """Wait until no topic under the settings' prefix has grown for QUIET_S seconds; when they
    last grew (monotonic), and the CPU of `pids` then.

    Some of a saga's work ends after its outcome (notifications, say): this counts it in the
    CPU of the rate point that caused it, not the next one's, and it is all written when the
    phase's writes are counted. The CPU window ends at the last growth, not QUIET_S later.
    """
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from sagastream.ops.admin import admin_client

    admin = admin_client(settings)
    topics = admin.list_topics(timeout=10).topics
    latest = {
        TopicPartition(name, p): OffsetSpec.latest()
        for name, topic in topics.items()
        if name.startswith(settings.topic_prefix)
        for p in topic.partitions
    }
    deadline = time.monotonic() + timeout
    previous: list[int] = []
    quiet_since, cpu = time.monotonic(), cpu_snapshot(pids)
    while time.monotonic() < deadline:
        futures = admin.list_offsets(latest, request_timeout=10)
        ends = [futures[tp].result().offset for tp in latest]
        if ends != previous:
            previous, quiet_since, cpu = ends, time.monotonic(), cpu_snapshot(pids)
        elif time.monotonic() - quiet_since >= QUIET_S:
            break
        time.sleep(0.1)
    return quiet_since, cpu


# --------------------------------------------------------------------------- infrastructure


@dataclass
class Run:
    """A bench run: its broker and registry, its prefix, and what to remove at the end."""

    settings: Settings  # the broker and registry, without a prefix
    prefix: str
    out: TextIO
    subjects: list[Any] = field(default_factory=list)
    worker_python: str = sys.executable  # what runs sagastream's workers (--worker-python)

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "bench-logs" / self.prefix.rstrip("-")

    def phase(self, name: str, topology_file: Path | None = None) -> Settings:
        """Settings of one phase: its own topic prefix (and topology file) inside the run's."""
        update: dict[str, Any] = {"topic_prefix": f"{self.prefix}{name}-"}
        if topology_file is not None:
            update["topology_file"] = topology_file
            update["schemas_dir"] = self.settings.schemas_path
        return self.settings.model_copy(update=update)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def broker_pids(bootstrap: str) -> list[int]:
    """The local broker JVM(s) serving `bootstrap`, if they run on this machine."""
    from sagastream.local import kafka as localkafka

    for cluster in (False, True):
        info = localkafka.status(cluster)
        pids = info["pids"]
        same = set(str(info["bootstrap"]).split(",")) == set(bootstrap.split(","))
        if info["running"] and same and isinstance(pids, list):
            return [int(pid) for pid in pids]
    return []


@contextlib.contextmanager
def bench_infrastructure(keep: bool, out: TextIO) -> Iterator[Run]:
    """Broker and registry (local ones unless configured, like the demo), and the clean-up."""
    with local_infrastructure("bench", keep, out) as infra:
        run = Run(infra.settings, infra.prefix, out)
        run.subjects = infra.subjects  # what the phases register is removed with the run
        yield run


def process_name(role: str, copy: int) -> str:
    """The name of a role's process: the role, then `role#2`, `role#3`... for more copies."""
    return role if copy == 0 else f"{role}#{copy + 1}"


def _process_pids(workers: WorkerSet, bootstrap: str) -> dict[str, list[int]]:
    """The processes whose CPU a phase counts, grouped by role (its copies together)."""
    pids: dict[str, list[int]] = {}
    for name, proc in workers.procs.items():
        pids.setdefault(name.split("#")[0], []).append(proc.pid)
    return pids | {"broker": broker_pids(bootstrap), "driver": [os.getpid()]}


def chained_topology(source: Path, directory: Path, saga: str = "order") -> Path:
    """A copy of a topology file whose saga runs its steps one after the other, in file order."""
    import yaml

    data = yaml.safe_load(source.read_text())
    steps = data["sagas"][saga]["steps"]
    names = list(steps)
    for before, step in zip(names, names[1:], strict=False):
        steps[step]["depends_on"] = [before]
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_topology(path)  # fail here, with the file named, rather than in every worker
    return path


@contextlib.contextmanager
def saga_phase(
    run: Run,
    settings: Settings,
    handler_latency_ms: dict[str, int],
    seed: int,
    env: dict[str, str] | None = None,
    role_env: dict[str, dict[str, str]] | None = None,
    orchestrators: int = 1,
    prepare: Callable[[Settings, Topology], None] | None = None,
) -> Iterator[tuple[Source, Callable[[int, bool], list[str]]]]:
    """Topics, schemas and a worker process per role for the order saga under one prefix
    (`orchestrators` of the orchestrator, on the same partitions); `env` is added to every
    worker's environment, `role_env[role]` to that role's; `prepare` runs once the topics are
    there, before any worker starts.

    Yields the source to measure and `orders(n, completing_only)`, which makes n orders (only
    ones built to complete, if asked) for the source to publish, and returns their keys.
    """
    from sagastream.ops.admin import create_topics
    from sagastream.ops.client import EventClient
    from sagastream.wire.codec import SchemaStore
    from sagastream.wire.registry import (
        Registry,
        build_codec,
        plan_subjects,
        redact_url,
        register_subjects,
    )

    topology = load_topology(settings.topology_file, settings.schemas_path)
    create_topics(settings, topology)
    subjects = plan_subjects(topology, SchemaStore(settings.schemas_path), settings)
    run.subjects += subjects
    registered = register_subjects(Registry.for_settings(settings), subjects)
    if any(o.failed for o in registered):
        refused = ", ".join(o.subject.name for o in registered if o.failed)
        raise ClusterError(
            f"schema registry {redact_url(str(settings.schema_registry_url))} refused {refused}"
        )
    if prepare is not None:
        prepare(settings, topology)
    workers = WorkerSet(
        settings,
        run.log_dir / settings.topic_prefix.removeprefix(run.prefix),
        python=run.worker_python,
    )
    client = EventClient(settings, topology, build_codec(settings), "bench")
    try:
        t0 = time.monotonic()
        roles = ["orchestrator", *topology.handlers_for("order")]
        for role in roles:  # one process each, so each handler role can get its own latency
            latency = {"SAGASTREAM_HANDLER_LATENCY_MS": str(handler_latency_ms.get(role, 0))}
            role_extra = {**latency, **(env or {}), **(role_env or {}).get(role, {})}
            for copy in range(orchestrators if role == "orchestrator" else 1):
                workers.start([role], role_extra, process_name(role, copy))
        workers.wait_ready()
        if orchestrators > 1:  # else one that joins late rebalances the group while measured
            _wait_members(workers, settings.group("orchestrator"), orchestrators)
        run.say(f"  {len(workers.procs)} worker processes ready in {time.monotonic() - t0:.1f}s")
        rng = random.Random(seed)
        pending: dict[str, dict[str, Any]] = {}
        made = 0

        def orders(n: int, completing_only: bool) -> list[str]:
            nonlocal made
            keys: list[str] = []
            while len(keys) < n:
                key = f"order-{seed}-{made:06d}"
                made += 1
                fields, expected = order_fields(key, rng)
                if not completing_only or expected == "SagaCompleted":
                    pending[key] = fields
                    keys.append(key)
            return keys

        def publish(key: str) -> int:
            return int(client.publish("OrderPlaced", key, pending.pop(key))["occurred_at"])

        def outcome_key(msg: Any) -> str | None:
            if msg.event_type in OUTCOMES and msg.record is not None:
                return str(msg.record["meta"]["saga_key"])
            return None

        yield (
            Source(
                client,
                settings.topic(topology.sagas["order"].outcome_topic),
                publish,
                outcome_key,
                workers,
                _process_pids(workers, settings.bootstrap_servers),
            ),
            orders,
        )
    finally:
        client.close()
        workers.stop()


def _wait_members(workers: WorkerSet, group: str, members: int, timeout: float = 120.0) -> None:
    """Wait until a consumer group is stable with `members` members, each with partitions."""
    from confluent_kafka import ConsumerGroupState

    from sagastream.ops.admin import admin_client

    admin = admin_client(workers.settings)
    deadline = time.monotonic() + timeout
    while True:
        workers.check_alive()
        found = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        assigned = [m for m in found.members if m.assignment.topic_partitions]
        if found.state == ConsumerGroupState.STABLE and len(assigned) >= members:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"consumer group {group}: {len(assigned)} of {members} members with partitions "
                f"after {timeout}s; logs in {workers.log_dir}"
            )
        time.sleep(0.5)


def _phase_writes(settings: Settings, sagas: int) -> dict[str, Any]:
    from sagastream.ops.admin import admin_client

    prefix = settings.topic_prefix
    topics = [
        t for t in admin_client(settings).list_topics(timeout=30).topics if t.startswith(prefix)
    ]
    return writes_per_saga(count_records(settings, topics), sagas, prefix)


# --------------------------------------------------------------------------- the phases


def sagastream_phase(run: Run, options: BenchOptions) -> dict[str, Any]:
    settings = run.phase("ss")
    run.say(
        f"\nsagastream: order saga, instant handlers, {policy_label(commit_policy(settings))} "
        f"(topics {settings.topic_prefix}*)"
    )
    points: list[Point] = []
    with saga_phase(run, settings, {}, options.seed) as (source, orders):
        run.say(f"  warm-up at the maximum rate: {options.warmup} orders (reported apart)")
        warmup = measure(source, orders(options.warmup, False), None, options.timeout, run.out)
        published = options.warmup
        for rate, n in options.points():
            run.say(f"  rate {rate_label(rate)}: {n} orders")
            points.append(measure(source, orders(n, False), rate, options.timeout, run.out))
            published += n
    # the workers have stopped, so no transaction is left open: every write is counted
    return {
        "commit_policy": commit_policy(settings),
        "warmup": warmup,
        "points": points,
        "writes_per_saga": _phase_writes(settings, published),
    }


def baseline_phase(run: Run, options: BenchOptions, filler: int) -> dict[str, Any]:
    from sagastream.ops.client import EventClient
    from sagastream.wire.registry import build_codec

    settings = run.phase("base")
    topics = BaselineTopics(settings.topic_prefix)
    policy = commit_policy(settings, linger=options.baseline_commit == "same")
    run.say(
        f"\nbaseline: the same hops on plain confluent-kafka, {filler} filler writes per saga, "
        f"{policy_label(policy)} (topics {settings.topic_prefix}*)"
    )
    create_baseline_topics(settings, topics)
    workers = _start_pipeline(settings, filler, policy["linger_ms"], run.log_dir / "base")
    raw = settings.model_copy(update={"schema_registry_url": None})  # nothing to decode
    topology = load_topology(settings.topology_file, settings.schemas_path)
    client = EventClient(settings, topology, build_codec(raw), "bench")
    points: list[Point] = []
    try:
        t0 = time.monotonic()
        _wait_pipeline_ready(workers)
        run.say(f"  {len(workers.procs)} pipeline processes ready in {time.monotonic() - t0:.1f}s")
        value = b"s" * 200  # about an OrderPlaced in Avro

        def publish(key: str) -> int:
            now = time.time_ns() // 1_000_000
            client.publish_raw(topics.start, key.encode(), value)
            return now

        source = Source(
            client,
            topics.outcomes,
            publish,
            lambda msg: msg.key.decode() if msg.key else None,
            workers,
            _process_pids(workers, settings.bootstrap_servers),
        )
        made = 0

        def keys(n: int) -> list[str]:
            nonlocal made
            made += n
            return [f"saga-{i:07d}" for i in range(made - n, made)]

        run.say(f"  warm-up at the maximum rate: {options.warmup} sagas (reported apart)")
        warmup = measure(source, keys(options.warmup), None, options.timeout, run.out)
        # every point as many sagas as sagastream's, so that each ratio compares like with like
        for rate, n in options.points():
            run.say(f"  rate {rate_label(rate)}: {n} sagas")
            points.append(measure(source, keys(n), rate, options.timeout, run.out))
    finally:
        client.close()
        workers.stop()
    return {
        "commit_policy": policy,
        "warmup": warmup,
        "filler_per_saga": filler,
        "points": points,
        "writes_per_saga": _phase_writes(settings, made),
    }


def _start_pipeline(
    settings: Settings, filler: int, linger_ms: int | None, log_dir: Path
) -> WorkerSet:
    """One baseline process per role, in a WorkerSet so that checks and shutdown are shared."""
    workers = WorkerSet(settings, log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env(settings)}
    argv = ["--prefix", settings.topic_prefix, "--filler", str(filler)]
    argv += [] if linger_ms is None else ["--linger-ms", str(linger_ms)]
    for role in BASELINE_ROLES:
        log = open(log_dir / f"{role}.log", "ab")  # noqa: SIM115 - owned by the process
        workers.procs[role] = subprocess.Popen(
            [sys.executable, "-m", "sagastream.ops.pipeline_baseline", role, *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return workers


def _wait_pipeline_ready(workers: WorkerSet, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        workers.check_alive()
        waiting = [
            role
            for role in workers.procs
            if READY not in (workers.log_dir / f"{role}.log").read_text(errors="replace")
        ]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"baseline processes not ready after {timeout}s ({', '.join(waiting)}); "
                f"logs in {workers.log_dir}"
            )
        time.sleep(0.2)


def fanout_phase(run: Run, options: BenchOptions) -> dict[str, Any]:
    latencies = ", ".join(f"{role} {ms} ms" for role, ms in FANOUT_LATENCY_MS.items())
    run.say(f"\nparallel against chained steps: handler latencies {latencies}")
    results: dict[str, Point] = {}
    with tempfile.TemporaryDirectory(prefix="sagastream-bench-") as tmp:
        chained = chained_topology(run.settings.topology_file, Path(tmp))
        for name, topology_file in (("parallel", None), ("sequential", chained)):
            settings = run.phase(name[:3], topology_file)
            run.say(f"  {name}: {FANOUT_ORDERS} orders at {FANOUT_RATE:g}/s")
            with saga_phase(run, settings, FANOUT_LATENCY_MS, options.seed) as (source, orders):
                measure(source, orders(3, True), None, options.timeout, None)
                keys = orders(FANOUT_ORDERS, True)
                results[name] = measure(source, keys, FANOUT_RATE, options.timeout, run.out)
    return fanout_summary(results["parallel"], results["sequential"])


# (name, prefix, sampler ratio: None is tracing off)
TRACE_POINTS = (
    ("off", "tr0", None),
    ("sampled 0.1", "tr10", "0.1"),
    ("sampled 1.0", "tr100", "1.0"),
)


def trace_phase(run: Run, options: BenchOptions) -> dict[str, Any]:
    """The order saga at the maximum rate, tracing off, then exporting spans sampled at 0.1
    and 1.0 (to OTEL_EXPORTER_OTLP_ENDPOINT if set, else a local Jaeger): CPU per saga each."""
    assert options.trace is not None
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or _local_jaeger(run)
    run.say(f"\ntracing: {options.trace} orders at the maximum rate per point, spans to {endpoint}")
    points: dict[str, Point] = {}
    for name, prefix, sampled in TRACE_POINTS:
        env = {"OTEL_SDK_DISABLED": "true"}  # off, whatever this process's environment says
        if sampled is not None:
            env = {
                "OTEL_SDK_DISABLED": "false",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": sampled,
            }
        settings = run.phase(prefix)
        run.say(f"  {name}")
        with saga_phase(run, settings, {}, options.seed, env) as (source, orders):
            measure(source, orders(WARMUP_ORDERS, False), None, options.timeout, None)
            keys = orders(options.trace, False)
            points[name] = measure(source, keys, None, options.timeout, run.out)
    return trace_summary(points)


def _local_jaeger(run: Run) -> str:
    """Start the local Jaeger (sagastream.local.jaeger; built first if it never was)."""
    from sagastream.local import jaeger

    jaeger.start(log=run.say)
    return f"http://127.0.0.1:{jaeger.jaeger_ports().otlp_http}"


def trace_summary(points: dict[str, Point]) -> dict[str, Any]:
    """Each tracing point, and its CPU per saga against tracing off (total and per process)."""
    off = points["off"]["cpu_ms_per_saga"]
    return {
        "points": points,
        "cpu_to_off": {
            name: {proc: ratio(ms, off.get(proc)) for proc, ms in p["cpu_ms_per_saga"].items()}
            for name, p in points.items()
        },
    }


def fanout_summary(parallel: Point, sequential: Point) -> dict[str, Any]:
    """Both p50 latencies against the largest branch and the sum of the branches."""
    largest, total = max(FANOUT_LATENCY_MS.values()), sum(FANOUT_LATENCY_MS.values())
    p50 = {"parallel": parallel["latency_ms"]["p50"], "sequential": sequential["latency_ms"]["p50"]}
    return {
        "handler_latency_ms": FANOUT_LATENCY_MS,
        "largest_branch_ms": largest,
        "sum_ms": total,
        "parallel": parallel,
        "sequential": sequential,
        "p50_to_largest_branch": {k: ratio(v, largest) for k, v in p50.items()},
        "p50_to_sum": {k: ratio(v, total) for k, v in p50.items()},
        "sequential_to_parallel_p50": ratio(p50["sequential"], p50["parallel"]),
    }


# --------------------------------------------------------------------------- the report


def table_line(cells: Iterable[tuple[Any, int]]) -> str:
    """A line of a table: each (cell, width) right-aligned, or left-aligned if width < 0."""
    return "  " + " ".join(f"{cell!s:<{-w}}" if w < 0 else f"{cell!s:>{w}}" for cell, w in cells)


def num_cell(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _point_rate(point: Point) -> str:
    return rate_label(None if point["rate"] == "max" else point["rate"])


def format_report(results: dict[str, Any]) -> list[str]:
    """The tables `sagastream bench` prints, from the results it writes as JSON."""
    ss, base, fan = results.get("sagastream"), results.get("baseline"), results.get("fanout")
    lines: list[str] = []
    if ss or base:
        lines += [
            "",
            f"  {'order saga':<22} {'orders':>7} {'stuck':>5} {'sagas/s':>9} {'to quiet':>9} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'CPU ms/saga':>12}",
        ]
        for label, p in _rows(ss, base):
            lat, cpu = p["latency_ms"], p["cpu_ms_per_saga"]
            lines.append(
                f"  {label:<22} {p['orders']:>7} {p['stuck']:>5} {num_cell(p['sagas_per_s']):>9} "
                f"{num_cell(p.get('sagas_per_s_to_quiet')):>9} {num_cell(lat['p50'], 0):>8} "
                f"{num_cell(lat['p95'], 0):>8} {num_cell(lat['p99'], 0):>8} {num_cell(cpu['total'], 3):>12}"
            )
            vs = p.get("vs_baseline")
            if vs:
                vl, vc = vs["latency_ms"], vs["cpu_ms_per_saga"]
                lines.append(
                    f"  {'  / baseline':<22} {'':>7} {'':>5} {num_cell(vs['sagas_per_s'], 3, 'x'):>9} "
                    f"{num_cell(vs.get('sagas_per_s_to_quiet'), 3, 'x'):>9} "
                    f"{num_cell(vl['p50'], 1, 'x'):>8} {num_cell(vl['p95'], 1, 'x'):>8} "
                    f"{num_cell(vl['p99'], 1, 'x'):>8} {num_cell(vc['total'], 1, 'x'):>12}"
                )
        lines += [
            "  sagas/s: first publish to last outcome; to quiet: to when the topics stop growing "
            "(where the CPU window ends)",
        ]
        for name, phase in (("sagastream", ss), ("baseline", base)):
            if phase and "commit_policy" in phase:
                lines.append(f"  {name}: {policy_label(phase['commit_policy'])}")
        if base and base.get("not_compared"):
            lines.append(f"  no ratios to the baseline: {base['not_compared']}")
        lines += [
            "",
            "  CPU ms per saga       " + "".join(f"{c:>13}" for c in (*CPU_COLUMNS, "total")),
        ]
        for label, p in _rows(ss, base):
            cpu = p["cpu_ms_per_saga"]
            cells = "".join(f"{num_cell(cpu.get(c), 3):>13}" for c in (*CPU_COLUMNS, "total"))
            lines.append(f"  {label:<22}{cells}")
        measured = results.get("run", {}).get("broker_cpu_measured", True)
        lines.append(
            "  broker: all the JVM did meanwhile, for any client"
            if measured
            else "  broker: not measured (not a broker this machine runs locally)"
        )
        for name, phase in (("sagastream", ss), ("baseline", base)):
            if not phase:
                continue
            writes = phase["writes_per_saga"]
            lines += ["", f"  Kafka writes per saga, {name}: {num_cell(writes['total'], 1)}"]
            lines += [f"    {t:<44} {num_cell(n, 2):>8}" for t, n in writes["by_topic"].items()]
    if fan:
        largest, total = fan["largest_branch_ms"], fan["sum_ms"]
        lines += [
            "",
            f"  {'steps':<12} {'sagas':>5} {'p50 ms':>8} {'p95 ms':>8} "
            f"{f'p50 / largest ({largest} ms)':>26} {f'p50 / sum ({total} ms)':>22}",
        ]
        for name in ("parallel", "sequential"):
            p = fan[name]
            lines.append(
                f"  {name:<12} {p['completed']:>5} {num_cell(p['latency_ms']['p50'], 0):>8} "
                f"{num_cell(p['latency_ms']['p95'], 0):>8} "
                f"{num_cell(fan['p50_to_largest_branch'][name], 2, 'x'):>26} "
                f"{num_cell(fan['p50_to_sum'][name], 2, 'x'):>22}"
            )
        lines.append(
            f"  sequential / parallel p50: {num_cell(fan['sequential_to_parallel_p50'], 2, 'x')}"
        )
    if "tracing" in results:
        lines += format_trace(results["tracing"])
    return lines


def _rows(*phases: dict[str, Any] | None) -> Iterator[tuple[str, Point]]:
    """(label, point) of each phase: its warm-up first, then its measured points."""
    for name, phase in zip(("sagastream", "baseline"), phases, strict=True):
        if phase and phase.get("warmup"):
            yield f"{name} warm-up", phase["warmup"]
        for p in (phase or {}).get("points", []):
            yield f"{name} {_point_rate(p)}", p


def format_trace(tracing: dict[str, Any]) -> list[str]:
    """CPU ms per saga per process with tracing off and on, and on against off."""
    points = tracing["points"]
    columns = list(points["off"]["cpu_ms_per_saga"])
    lines = ["", f"  {'tracing':<14} {'sagas':>5}" + "".join(f"{c:>13}" for c in columns)]
    for name, p in points.items():
        cpu = p["cpu_ms_per_saga"]
        cells = "".join(f"{num_cell(cpu.get(c), 3):>13}" for c in columns)
        lines.append(f"  {name:<14} {p['completed']:>5}{cells}")
        if name != "off":
            against = tracing["cpu_to_off"][name]
            cells = "".join(f"{num_cell(against.get(c), 2, 'x'):>13}" for c in columns)
            lines.append(f"  {'  / off':<14} {'':>5}{cells}")
    return lines


def json_safe(value: Any) -> Any:
    """NaN and infinity become null: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
