"""The simulated external services' idempotency ledger: one answer per idempotency key."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


class IdempotencyLedger:
    """Remembers the result of every side effect by its idempotency key (SQLite, multi-process safe).

    WAL with synchronous=NORMAL does not fsync each commit: a committed effect survives the
    process being killed (the WAL is in the OS cache), not a power cut, which is all a
    simulated service needs. Each call is one autocommitted statement, so one commit.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), timeout=30, check_same_thread=False, isolation_level=None
        )
        self._wal()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS effects ("
            " key TEXT PRIMARY KEY, event_type TEXT NOT NULL, fields TEXT NOT NULL,"
            " hits INTEGER NOT NULL DEFAULT 1)"
        )

    def _wal(self) -> None:
        """Switch to WAL. SQLite answers "locked" at once, without waiting out the busy
        timeout, while another process makes the same switch: so wait here instead."""
        for wait in (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 0.0):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or not wait:
                    raise
                time.sleep(wait)

    def get(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """The result recorded for a key, counting the repeated request."""
        with self._lock:
            # a first request (the common case) only reads, and takes no write lock
            known = self._db.execute("SELECT 1 FROM effects WHERE key = ?", (key,)).fetchone()
            if known is None:
                return None
            row = self._db.execute(
                "UPDATE effects SET hits = hits + 1 WHERE key = ? RETURNING event_type, fields",
                (key,),
            ).fetchall()[0]
        return row[0], json.loads(row[1])

    def put(self, key: str, event_type: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Record a result; if another process recorded one first, that one wins and is returned."""
        with self._lock:
            # the no-op update makes RETURNING give the row that won, inserted or not
            row = self._db.execute(
                "INSERT INTO effects (key, event_type, fields) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET hits = hits RETURNING event_type, fields",
                (key, event_type, json.dumps(fields, sort_keys=True)),
            ).fetchall()[0]
        return row[0], json.loads(row[1])

    def effects(self, prefix: str = "") -> dict[str, int]:
        """Requests seen per key (1 = one effect, no repeats), for tests and diagnostics."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, hits FROM effects WHERE key LIKE ? ESCAPE '\\'",
                (prefix.replace("%", "\\%").replace("_", "\\_") + "%",),
            ).fetchall()
        return dict(rows)

    def close(self) -> None:
        self._db.close()
