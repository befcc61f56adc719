"""`sagastream bench --tradeoff`: latency against transactions, per orchestrator commit policy.

The settings that bound a saga's latency at a steady rate are the orchestrator's commit interval
(the longest a transaction gathers work under load) and its linger (how long an open
transaction waits once its inputs run dry): every hop of a saga waits for a commit. For each
(interval, linger) pair the order saga runs under its own prefix, its workers started with
SAGASTREAM_COMMIT_INTERVAL_MS and SAGASTREAM_COMMIT_LINGER_MS, the orchestrator serving
/metrics; after a short warm-up it is driven at a fixed rate (300/s) and the table gives p50 and
p99, sagas/s, the transactions committed per second and per saga and the mean time one took to
commit, read from the orchestrator's `sagastream_transactions_total{result="committed"}` and
`sagastream_commit_seconds` before and after. A warm-up at the maximum rate (`--warmup` orders,
reported apart) runs first: the first policy would otherwise also pay for the broker's JIT.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass
from typing import Any

from sagastream.errors import UsageError
from sagastream.local.proc import free_ports
from sagastream.ops.bench import (
    WARMUP_ORDERS,
    BenchOptions,
    Point,
    Run,
    measure,
    num_cell,
    saga_phase,
    table_line,
)

Policy = tuple[int, int]  # (commit interval ms, linger ms)

DEFAULT_POLICIES: tuple[Policy, ...] = ((100, 20), (100, 5), (100, 0), (50, 0), (200, 50))
RATE = 300.0
SECONDS = 5.0  # at RATE, unless --orders says how many
COMMITTED = "sagastream_transactions_total"
COMMIT_SECONDS = "sagastream_commit_seconds"
HEAD = [
    "interval ms",
    "linger ms",
    "sagas/s",
    "p50 ms",
    "p99 ms",
    "txn/s",
    "txn/saga",
    "commit ms",
    "CPU ms/saga",
    "stuck",
]
WIDTHS = (11, 9, 9, 8, 8, 8, 9, 10, 12, 5)


def parse_policies(spec: str) -> tuple[Policy, ...]:
    """'100:20,50:0' -> ((100, 20), (50, 0)): commit interval and linger in ms, each pair once."""
    policies: list[Policy] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        interval, sep, linger = part.partition(":")
        try:
            policy = (int(interval), int(linger))
        except ValueError:
            raise UsageError(
                f"--tradeoff: {part!r} is not INTERVAL_MS:LINGER_MS (e.g. 100:20)"
            ) from None
        if not sep or policy[0] < 1 or policy[1] < 0:
            raise UsageError(
                f"--tradeoff: {part!r}: the interval must be 1 ms or more and the linger 0 or more"
            )
        policies.append(policy)
    if not policies:
        raise UsageError("--tradeoff: give INTERVAL_MS:LINGER_MS pairs, e.g. 100:20,50:0")
    return tuple(dict.fromkeys(policies))


def counter_total(text: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples named `name` whose labels include `labels`, in the text
    of a /metrics page; 0 if it has none yet."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


@dataclass(frozen=True)
class Commits:
    """What an orchestrator's /metrics said of its commits so far."""

    committed: float = 0.0  # transactions committed
    seconds: float = 0.0  # spent committing (every commit, whatever its result)
    commits: float = 0.0  # commits timed

    def since(self, before: Commits) -> Commits:
        return Commits(
            self.committed - before.committed,
            self.seconds - before.seconds,
            self.commits - before.commits,
        )


def tradeoff_row(policy: Policy, point: Point, commits: Commits) -> dict[str, Any]:
    """One policy's line: its figures at the rate, its transactions per second and saga, and
    the mean time a commit took."""
    seconds, sagas, transactions = point["to_quiet_s"], point["completed"], commits.committed
    return {
        "commit_interval_ms": policy[0],
        "commit_linger_ms": policy[1],
        "transactions": transactions,
        "transactions_per_s": transactions / seconds if seconds and seconds > 0 else math.nan,
        "transactions_per_saga": transactions / sagas if sagas else math.nan,
        "commit_ms": 1000 * commits.seconds / commits.commits if commits.commits else math.nan,
        "point": point,
    }


def format_tradeoff(result: dict[str, Any]) -> list[str]:
    """The table `sagastream bench --tradeoff` prints."""
    lines = [
        "",
        f"  commit policy at {result['rate']:g} sagas/s, {result['orders']} orders each "
        "(orchestrator transactions read from its /metrics)",
        table_line(zip(HEAD, WIDTHS, strict=True)),
    ]
    for row in result["rows"]:
        p = row["point"]
        cells = (
            row["commit_interval_ms"],
            row["commit_linger_ms"],
            num_cell(p["sagas_per_s"]),
            *(num_cell(p["latency_ms"][q], 0) for q in ("p50", "p99")),
            num_cell(row["transactions_per_s"]),
            num_cell(row["transactions_per_saga"], 2),
            num_cell(row.get("commit_ms"), 1),
            num_cell(p["cpu_ms_per_saga"]["total"], 3),
            p["stuck"],
        )
        lines.append(table_line(zip(cells, WIDTHS, strict=True)))
    lines.append(
        "  each transaction costs a commit round trip and a marker in every partition it wrote; "
        "each hop of a saga waits for one"
    )
    warmup = result.get("warmup")
    if warmup:
        lines.append(
            f"  before the table: a warm-up of {warmup['orders']} orders at the maximum rate, "
            f"{num_cell(warmup['sagas_per_s'])} sagas/s, {num_cell(warmup['cpu_ms_per_saga']['total'], 3)}"
            " CPU ms/saga (the broker's JIT)"
        )
    return lines


def tradeoff_phase(run: Run, options: BenchOptions) -> dict[str, Any]:
    """Each policy of `options.tradeoff` in turn, at options.tradeoff_rate."""
    assert options.tradeoff is not None
    rate = options.tradeoff_rate
    orders = options.orders or max(1, round(rate * SECONDS))
    run.say(f"\ncommit policy trade-off: {orders} orders at {rate:g}/s per policy")
    run.say(f"  warm-up at the maximum rate: {options.warmup} orders (reported apart)")
    with saga_phase(run, run.phase("tw"), {}, options.seed) as (source, make):
        warmup = measure(source, make(options.warmup, False), None, options.timeout, run.out)
    rows: list[dict[str, Any]] = []
    for i, policy in enumerate(options.tradeoff):
        port = free_ports("127.0.0.1")  # the worker binds it next
        env = {
            "SAGASTREAM_COMMIT_INTERVAL_MS": str(policy[0]),
            "SAGASTREAM_COMMIT_LINGER_MS": str(policy[1]),
        }
        role_env = {"orchestrator": {"SAGASTREAM_METRICS_PORT": str(port)}}
        settings = run.phase(f"tc{i}")
        run.say(f"  commit interval {policy[0]} ms, linger {policy[1]} ms")
        with saga_phase(run, settings, {}, options.seed, env, role_env) as (source, make):
            measure(source, make(WARMUP_ORDERS, False), None, options.timeout, None)
            before = _commits(port)
            point = measure(source, make(orders, False), rate, options.timeout, run.out)
            rows.append(tradeoff_row(policy, point, _commits(port).since(before)))
    return {"rate": rate, "orders": orders, "rows": rows, "warmup": warmup}


def _commits(port: int) -> Commits:
    """What the orchestrator serving /metrics on `port` has committed so far, and how long its
    commits took."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return Commits(
        counter_total(text, COMMITTED, result="committed"),
        counter_total(text, COMMIT_SECONDS + "_sum"),
        counter_total(text, COMMIT_SECONDS + "_count"),
    )
