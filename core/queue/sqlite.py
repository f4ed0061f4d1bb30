"""The embedded twin of an SQS FIFO queue and its DLQ in one SQLite file (same semantics)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from core.errors import QueueError
from core.queue.base import DEDUP_WINDOW_S, QueueMessage

_POLL_S = 0.1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup (
    dedup_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


def _use_wal(conn: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Put the file in WAL mode once. Switching answers "database is locked" at once, without
    SQLite's busy handler, while another process opens the file, so it is tried until `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(_POLL_S / 10)


class SqliteQueue:
    """The embedded twin of an SQS FIFO queue + DLQ in one SQLite file.

    Every operation is one short `BEGIN IMMEDIATE` transaction on its own connection (WAL mode),
    so threads and processes (bot, worker, CLI) can share the file safely.
    """

    def __init__(self, path: Path | str, *, max_receives: int = 3, visibility_s: int = 900) -> None:
        self.path = Path(path)
        self.max_receives = max_receives
        self.visibility_s = visibility_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(self._connect()) as conn:
                _use_wal(conn)
                conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise QueueError(f"local queue {self.path}: cannot open: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqliteQueue({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @contextlib.contextmanager
    def _tx(self, op: str) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise QueueError(f"local queue {self.path}: {op} failed: {exc}") from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise QueueError(f"local queue {self.path}: {op} failed: {exc}") from exc
            raise
        finally:
            conn.close()

    def send(self, body: str, *, dedup_id: str, group_id: str = "training") -> str:
        now = time.time()
        with self._tx("send") as conn:
            conn.execute("DELETE FROM dedup WHERE expires_at <= ?", (now,))
            row = conn.execute("SELECT message_id FROM dedup WHERE dedup_id = ?", (dedup_id,)).fetchone()
            if row is not None:
                return str(row["message_id"])
            message_id = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO messages (message_id, group_id, dedup_id, body, sent_at, visible_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (message_id, group_id, dedup_id, body, now, now),
            )
            conn.execute(
                "INSERT INTO dedup (dedup_id, message_id, expires_at) VALUES (?, ?, ?)",
                (dedup_id, message_id, now + DEDUP_WINDOW_S),
            )
        return message_id

    def _receive_once(self, visibility_s: int) -> QueueMessage | None:
        now = time.time()
        with self._tx("receive") as conn:
            busy = {
                row["group_id"]
                for row in conn.execute(
                    "SELECT DISTINCT group_id FROM messages WHERE receipt IS NOT NULL AND visible_at > ?", (now,)
                )
            }
            heads_seen: set[str] = set()
            for row in conn.execute("SELECT * FROM messages WHERE visible_at <= ? ORDER BY seq", (now,)).fetchall():
                group = row["group_id"]
                if group in busy or group in heads_seen:
                    continue  # FIFO: only the head of a group that has nothing in flight
                if row["receive_count"] >= self.max_receives:
                    conn.execute(
                        "INSERT OR REPLACE INTO dead_letters"
                        " (message_id, group_id, dedup_id, body, sent_at, receive_count, dead_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (row["message_id"], group, row["dedup_id"], row["body"], row["sent_at"],
                         row["receive_count"], now),
                    )
                    conn.execute("DELETE FROM messages WHERE seq = ?", (row["seq"],))
                    continue  # the next message of this group is now its head
                heads_seen.add(group)
                receipt = f"{row['message_id']}:{uuid.uuid4().hex}"
                count = row["receive_count"] + 1
                conn.execute(
                    "UPDATE messages SET receive_count = ?, receipt = ?, visible_at = ? WHERE seq = ?",
                    (count, receipt, now + visibility_s, row["seq"]),
                )
                return QueueMessage(
                    body=row["body"], message_id=row["message_id"], receipt_handle=receipt, receive_count=count
                )
        return None

    def receive(self, *, wait_s: int = 20, visibility_s: int | None = None) -> QueueMessage | None:
        visibility = self.visibility_s if visibility_s is None else int(visibility_s)
        deadline = time.monotonic() + max(0, wait_s)
        while True:
            message = self._receive_once(visibility)
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(_POLL_S, remaining))

    def _by_receipt(self, conn: sqlite3.Connection, receipt: str, op: str) -> sqlite3.Row:
        row = conn.execute("SELECT seq FROM messages WHERE receipt = ?", (receipt,)).fetchone()
        if row is None:
            raise QueueError(
                f"local queue {self.path}: {op} failed: stale or unknown receipt handle "
                "(the message was received again or already deleted)"
            )
        return row

    def delete(self, receipt: str) -> None:
        with self._tx("delete") as conn:
            row = self._by_receipt(conn, receipt, "delete")
            conn.execute("DELETE FROM messages WHERE seq = ?", (row["seq"],))

    def extend(self, receipt: str, visibility_s: int) -> None:
        with self._tx("change visibility") as conn:
            row = self._by_receipt(conn, receipt, "change visibility")
            conn.execute(
                "UPDATE messages SET visible_at = ? WHERE seq = ?", (time.time() + int(visibility_s), row["seq"])
            )

    def release(self, receipt: str) -> None:
        self.extend(receipt, 0)

    def depth(self) -> int:
        with self._tx("depth") as conn:
            return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def dead_letters(self) -> list[QueueMessage]:
        with self._tx("read dead letters") as conn:
            rows = conn.execute("SELECT * FROM dead_letters ORDER BY dead_at").fetchall()
        return [
            QueueMessage(body=r["body"], message_id=r["message_id"], receipt_handle="", receive_count=r["receive_count"])
            for r in rows
        ]
