"""The simulated external services' idempotency ledger: one answer per idempotency key."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


class IdempotencyLedger:
    """Remembers the result of every side effect by its idempotency key (SQLite, multi-process safe)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS effects ("
            " key TEXT PRIMARY KEY, event_type TEXT NOT NULL, fields TEXT NOT NULL,"
            " hits INTEGER NOT NULL DEFAULT 1)"
        )
        self._db.commit()

    def get(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """The result recorded for a key, counting the repeated request."""
        with self._lock:
            row = self._db.execute(
                "SELECT event_type, fields FROM effects WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE effects SET hits = hits + 1 WHERE key = ?", (key,))
            self._db.commit()
        return row[0], json.loads(row[1])

    def put(self, key: str, event_type: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Record a result; if another process recorded one first, that one wins and is returned."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO effects (key, event_type, fields) VALUES (?, ?, ?)",
                (key, event_type, json.dumps(fields, sort_keys=True)),
            )
            self._db.commit()
            row = self._db.execute(
                "SELECT event_type, fields FROM effects WHERE key = ?", (key,)
            ).fetchone()
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
