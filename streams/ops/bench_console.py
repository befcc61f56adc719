"""`sagastream bench --console N`: how soon the console answers with N live sagas.

N order-saga states (bench_restore's: made by the pure core, every tenth written twice) go into
the state changelog of a fresh prefix. The console's reader is started in this process, and its
index timed from its start until it has read the changelog to its end (wall and CPU seconds).
Then each page of QUERIES is asked REPEATS times through the console's ASGI application in
process (routing, the index's query and the template, no socket), and the median and slowest
answers are printed in milliseconds, with the median CPU milliseconds (less noisy than wall
time on a shared machine). Printed, not asserted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from sagastream.errors import UsageError
from sagastream.ops.bench import Run
from sagastream.ops.bench_restore import (
    OrderStates,
    changelog_transactions,
    fresh_topics,
    saga_key,
    write_changelog,
)

REPEATS = 5
PAGE_SIZE = 50  # the console's (app.PAGE_SIZE; not imported: the console is an extra)
CATCH_UP_POLL_S = 0.05


def queries(n: int) -> dict[str, str]:
    """The pages timed, by what they ask; the deep page is the one in the middle."""
    return {
        "all, first page": "/sagas",
        "status filter": "/sagas?status=running",
        "status, none match": "/sagas?status=failed",
        "key search": f"/sagas?key={saga_key(n // 2)}",
        "deep page": f"/sagas?page={max(1, n // 2 // PAGE_SIZE)}",
        "newest first": "/sagas?sort=newest",
        "overview": "/",
    }


def console_phase(run: Run, n: int, timeout: float, seed: int = 42) -> dict[str, Any]:
    """Write n sagas into a fresh changelog, then time the console's index and its pages."""
    settings, topology, partitions = fresh_topics(run, "console", "con", n)
    states = OrderStates(topology, time.time_ns() // 1_000_000, seed)
    t0 = time.monotonic()
    written = write_changelog(settings, changelog_transactions(states, n))
    write_s = time.monotonic() - t0
    run.say(f"  wrote {written:,} changelog records in {write_s:.1f}s")
    try:
        from sagastream.console.app import build_app
        from sagastream.console.readers import ConsoleReader
    except ImportError as exc:
        raise UsageError(
            f"--console needs the console extra ({exc.name} is missing): "
            "pip install 'sagastream[console]'"
        ) from exc

    cpu, started = time.process_time(), time.monotonic()
    reader = ConsoleReader(settings)
    try:
        caught_up = _caught_up(reader, started + timeout)
        catch_up_cpu = time.process_time() - cpu
        run.say(f"  index caught up in {caught_up:.2f}s ({catch_up_cpu:.2f}s CPU)")
        held = reader.index.freshness().sagas
        app = build_app(reader, "127.0.0.1")
        timed = asyncio.run(_time_pages(app, queries(n)))
    finally:
        reader.close()
    for name, result in timed.items():
        run.say(
            f"  {name:<20} median {result['median_ms']:7.1f} ms, slowest "
            f"{result['max_ms']:7.1f} ms, CPU {result['cpu_ms']:6.1f} ms"
        )
    return {
        "sagas": n,
        "partitions": partitions,
        "changelog_records": written,
        "write_s": write_s,
        "held": held,
        "catch_up_s": caught_up,
        "catch_up_cpu_s": catch_up_cpu,
        "repeats": REPEATS,
        "pages": timed,
    }


def _caught_up(reader: Any, deadline: float) -> float:
    """Seconds from the reader's start until its index has read the changelog to its end."""
    started = time.monotonic()
    while not (fresh := reader.index.freshness()).loaded:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the console's index read {fresh.records:,} changelog records and is not at "
                f"the end yet ({fresh.behind:,} behind; {fresh.error or 'no error'})"
            )
        time.sleep(CATCH_UP_POLL_S)
    return time.monotonic() - started


async def _time_pages(app: Any, pages: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each page asked once to warm up (the definitions read, templates compiled), then
    REPEATS times: its path and the milliseconds of the median and slowest answer, and the
    median CPU milliseconds of this process (the index's thread included: it idles meanwhile)."""
    import httpx

    timed: dict[str, dict[str, Any]] = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        for name, path in pages.items():
            answer = await http.get(path)
            if answer.status_code != 200 or "Index as of" not in answer.text:
                raise RuntimeError(f"GET {path}: {answer.status_code}\n{answer.text[-1500:]}")
            took, cpu = [], []
            for _ in range(REPEATS):
                t0, c0 = time.perf_counter(), time.process_time()
                await http.get(path)
                took.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
            timed[name] = {
                "path": path,
                "median_ms": statistics.median(took),
                "max_ms": max(took),
                "cpu_ms": statistics.median(cpu),
            }
    return timed


def format_console(result: dict[str, Any]) -> list[str]:
    """The table `sagastream bench --console` prints."""
    lines = [
        "",
        f"  console: {result['sagas']:,} sagas in {result['partitions']} partitions, "
        f"{result['changelog_records']:,} changelog records, {result['held']:,} held by the index",
        f"  index caught up in {result['catch_up_s']:.2f}s ({result['catch_up_cpu_s']:.2f}s CPU, "
        "from the console reader's start)",
        f"  {'page':<20} {'path':<28} {'median ms':>10} {'slowest ms':>11} {'CPU ms':>7}  "
        f"({result['repeats']} answers each, in process)",
    ]
    for name, page in result["pages"].items():
        lines.append(
            f"  {name:<20} {page['path']:<28} {page['median_ms']:>10.1f} "
            f"{page['max_ms']:>11.1f} {page['cpu_ms']:>7.1f}"
        )
    return lines
