"""Redrive from the dead-letter page: a dry run of the selected dead letters (GET /dlq/redrive:
ticked rows, or a topic and reason group), then its confirmation (POST /dlq/redrive) that
publishes them, each through `sagastream dlq redrive`'s own code (ops/dlq.py: its selection,
its safety rules, its broker answers).

A confirmation carries no selection of its own: the dry run hands out a one-time plan token
that names the dead letters it showed, so what is sent is what was seen, and a form sent twice
(a reload, a second click) redrives nothing the second time. The dead letters are read and
planned again when confirmed, so a rule that refuses one still does. The POST is guarded as a
signal form is (`Actions.checked`: a user, the console's own origin, the session's CSRF token).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from sagastream.console.actions import Actions
from sagastream.console.readers import ConsoleReader
from sagastream.errors import SagastreamError, UsageError
from sagastream.ops import dlq
from sagastream.runtime.kafka_io import Delivery

log = logging.getLogger("sagastream.console")

# dry runs not confirmed yet, kept per process; the oldest is forgotten past this many
MAX_PENDING = 256
At = frozenset[tuple[str, int, int]]
Render = Callable[..., HTMLResponse]


@dataclass(frozen=True)
class Row:
    """One dead letter's line: `status` is would (dry run), refused, sent, failed (the broker
    did not write it) or gone (no longer in its DLQ); `text` is what `dlq redrive` prints."""

    where: str
    href: str | None
    key: bytes | None
    reason: str
    status: str
    text: str


def row(plan: dlq.Redrive, delivery: Delivery | None = None, executed: bool = False) -> Row:
    letter = plan.letter
    if plan.refused:
        status = "refused"
    elif not executed:
        status = "would"
    else:
        status = "sent" if delivery is not None and delivery.ok else "failed"
    href = f"/dlq/{letter.topic}/{letter.partition}/{letter.offset}"
    text = dlq.describe(plan, delivery)
    return Row(letter.where, href, letter.key, letter.reason, status, text)


def gone(at: tuple[str, int, int]) -> Row:
    topic, partition, offset = at
    where = f"{topic}[{partition}]@{offset}"
    why = f"not redriven {where}: it is no longer in its dead-letter topic (its retention)"
    return Row(where, None, None, "-", "gone", why)


def selection_of(query: QueryParams, reader: ConsoleReader) -> dlq.Selection:
    """The dead letters a dry run is asked for: ticked rows (`letter`, topic/partition/offset)
    or a group (`topic` and `reason`); UsageError if it names none."""
    ticked = query.getlist("letter")
    topic, reason = query.get("topic") or None, query.get("reason") or None
    if not ticked and topic is None and reason is None:
        raise UsageError(
            "no dead letters chosen: tick them on the dead-letter page, or follow a topic and "
            "reason group's redrive link"
        )
    return dlq.Selection(
        topic=None if topic is None else dlq.resolve_topic(reader.topology, topic),
        reason=reason,
        at=frozenset(dlq.parse_at(t) for t in ticked) if ticked else None,
    )


class Redrives:
    """The dry run and confirmation handlers, and the dry runs awaiting confirmation."""

    def __init__(self, reader: ConsoleReader, render: Render, actions: Actions | None) -> None:
        self.reader = reader
        self.render = render
        self.actions = actions
        self._pending: OrderedDict[str, At] = OrderedDict()
        self._lock = threading.Lock()

    def plan(self, selection: dlq.Selection) -> list[dlq.Redrive]:
        """`dlq redrive`'s plan for the selection, over every dead letter read now."""
        reader = self.reader
        letters = reader.dead_letters()
        return dlq.plan_selected(letters, selection, reader.topology, reader.settings)

    def page(self, rows: list[Row], executed: bool, **values: Any) -> HTMLResponse:
        """The dry run's or the redrive's page: a line per dead letter, and counts by status."""
        counts = Counter(r.status for r in rows)
        return self.render(
            "redrive.html",
            rows=rows,
            executed=executed,
            counts=counts,
            max_redrives=dlq.DEFAULT_MAX_REDRIVES,
            **values,
        )

    def dry_run(self, request: Request) -> Response:
        plans = self.plan(selection_of(request.query_params, self.reader))
        rows = [row(p) for p in plans]
        if self.actions is None or not any(r.status == "would" for r in rows):
            return self.page(rows, executed=False)
        session, csrf = self.actions.form_token(request)
        at = frozenset((p.letter.topic, p.letter.partition, p.letter.offset) for p in plans)
        page = self.page(rows, executed=False, csrf=csrf, plan=self._offer(at))
        self.actions.keep_session(request, page, session)
        return page

    async def execute(self, request: Request) -> Response:
        assert self.actions is not None  # routed only with actions on
        checked = await self.actions.checked(request)
        if isinstance(checked, Response):
            return checked
        principal, form = checked
        at = self._take(form.one("plan") or "")
        if at is None:
            return self.render(
                "error.html",
                409,
                title="Nothing redriven",
                message="this dry run was confirmed already, or the console restarted since it "
                "was shown: nothing was sent. Run the dry run again from the dead-letter page.",
            )
        try:
            rows = await run_in_threadpool(self._redrive, at, principal)
        except (SagastreamError, TimeoutError) as exc:
            message = f"nothing was redriven: {exc}"
            return self.render("error.html", 503, title="Kafka did not answer", message=message)
        return self.page(rows, executed=True)

    def _redrive(self, at: At, principal: str) -> list[Row]:
        """Plan the dry run's dead letters again and send what the rules let through."""
        assert self.actions is not None
        plans = self.plan(dlq.Selection(at=at))
        results = dlq.execute(self.actions.events, plans)
        rows = [row(p) for p in plans if p.refused]
        rows += [row(p, d, executed=True) for p, d in results]
        found = {(p.letter.topic, p.letter.partition, p.letter.offset) for p in plans}
        rows += [gone(a) for a in sorted(at - found)]
        for r in rows:
            log.warning("console redrive by %s: %s", principal, r.text)
        return rows

    def _offer(self, at: At) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._pending[token] = at
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return token

    def _take(self, token: str) -> At | None:
        with self._lock:
            return self._pending.pop(token, None)
