"""A worker's one HTTP port (/metrics, /healthz, /readyz) and what each role reports to it.

/healthz answers 200 while every role's thread runs and its loop advanced within
`health_stall_s`. /readyz answers 200 while every role is ready: the orchestrator's stores are
restored and it consumes, each handler loop has its partitions, and none of them is stuck (see
`RoleHealth.ready`). Both bodies say per role whether it is ok, as JSON; a role that is not ok
also lists its reasons under "reasons", so the probe that failed says why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sagastream.runtime.http import BoundedHandler, BoundedServer, Limits
from sagastream.runtime.settings import Settings


@dataclass(frozen=True)
class Check:
    """One role's answer to a probe: ok, or the reasons it is not."""

    ok: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def of(cls, reasons: Iterable[str]) -> Check:
        found = tuple(reasons)
        return cls(not found, found)


Probe = Callable[[], dict[str, Check]]


class RoleHealth:
    """What one role's loop tells the probes, fed by one-line hooks in that loop.

    Alive while the loop advances. Ready unless transactions keep aborting, an input reported a
    read error (until that topic is assigned or read again), or a partition has waited for the
    schema registry longer than `health_registry_wait_s`; the role adds reasons of its own.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._advanced = clock()
        self._aborts = 0
        self._last_abort = ""
        self._input_errors: dict[str, str] = {}
        self._registry_since: dict[tuple[str, int], float] = {}

    def advanced(self) -> None:
        """The loop went round once."""
        self._advanced = self._clock()

    def committed(self) -> None:
        self._aborts = 0

    def aborted(self, why: object) -> None:
        self._aborts += 1
        self._last_abort = str(why)

    def input_failed(self, topic: str, error: object) -> None:
        self._input_errors[topic] = str(error)

    def input_read(self, topics: Iterable[str]) -> None:
        """These topics were assigned or read: their earlier errors are over."""
        if self._input_errors:
            for topic in topics:
                self._input_errors.pop(topic, None)

    def registry_waits(self, where: tuple[str, int]) -> None:
        self._registry_since.setdefault(where, self._clock())

    def registry_back(self, where: tuple[str, int]) -> None:
        if self._registry_since:
            self._registry_since.pop(where, None)

    def registry_only(self, waiting: Iterable[tuple[str, int]]) -> None:
        """Only these partitions still wait for the registry (the others were revoked)."""
        keep = set(waiting)
        self._registry_since = {w: t for w, t in self._registry_since.items() if w in keep}

    def alive(self) -> Check:
        still = self._clock() - self._advanced
        if still <= self._settings.health_stall_s:
            return Check(True)
        return Check.of([f"its loop has not advanced for {still:.0f}s"])

    def ready(self, *reasons: str) -> Check:
        """Ready unless `reasons` (the role's own) or a common trouble says otherwise."""
        found = list(reasons)
        if self._aborts >= self._settings.health_aborts:
            found.append(f"{self._aborts} transactions aborted in a row (last: {self._last_abort})")
        found += [f"input {t} cannot be read: {e}" for t, e in sorted(self._input_errors.items())]
        now = self._clock()
        found += [
            f"{topic}[{partition}] has waited {now - since:.0f}s for the schema registry"
            for (topic, partition), since in sorted(self._registry_since.items())
            if now - since > self._settings.health_registry_wait_s
        ]
        return Check.of(found)


def body(roles: dict[str, Check]) -> tuple[HTTPStatus, dict[str, Any]]:
    """A probe's status and JSON body: per role ok, and the reasons of those that are not."""
    ok = bool(roles) and all(c.ok for c in roles.values())
    answer: dict[str, Any] = {"ok": ok, "roles": {r: c.ok for r, c in roles.items()}}
    reasons = {r: list(c.reasons) for r, c in roles.items() if c.reasons}
    if reasons:
        answer["reasons"] = reasons
    return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE), answer


def serve(
    registry: CollectorRegistry,
    alive: Probe,
    ready: Probe,
    host: str,
    port: int,
    limits: Limits | None = None,
) -> ThreadingHTTPServer:
    """Serve the three endpoints on a daemon thread, within `limits` (sagastream.runtime.http);
    returns the server (port 0: any free one)."""

    class Handler(BoundedHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self.reply(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                status, answer = body((alive if path == "/healthz" else ready)())
                self.reply(status, answer)
            else:
                self.reply(HTTPStatus.NOT_FOUND, b"/metrics, /healthz or /readyz\n", "text/plain")

    server = BoundedServer((host, port), Handler, limits or Limits())
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
