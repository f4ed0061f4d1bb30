"""Training job queue: SQS FIFO in production, a SQLite file with the same semantics embedded.

Semantics both keep (the worker relies on them):
- `send` deduplicates by `dedup_id` for 5 minutes (SQS FIFO's window) and keeps FIFO order per group;
  while a message of a group is in flight no later message of that group is delivered.
- `receive` hides the message for the visibility timeout and hands out a fresh receipt handle; the
  message comes back if it is neither deleted nor extended in time (the worker died).
- Every receive counts; once a message has been received `max_receives` times, the next receive
  moves it to the dead-letter queue (SQS RedrivePolicy maxReceiveCount) instead of delivering it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from core.errors import QueueError

if TYPE_CHECKING:
    from core.settings import Settings

DEDUP_WINDOW_S = 300.0  # SQS FIFO deduplication interval
_POLL_S = 0.1


@dataclass(frozen=True)
class QueueMessage:
    """One delivery of a message. `receipt_handle` is valid for this delivery only."""

    body: str
    message_id: str
    receipt_handle: str
    receive_count: int


@runtime_checkable
class JobQueue(Protocol):
    def send(self, body: str, *, dedup_id: str, group_id: str = "training") -> str:
        """Enqueue; returns the message id. A repeat `dedup_id` within 5 minutes is dropped."""
        ...

    def receive(self, *, wait_s: int = 20, visibility_s: int | None = None) -> QueueMessage | None:
        """One message (long-polling up to `wait_s`), hidden for `visibility_s`; None if none came."""
        ...

    def delete(self, receipt: str) -> None:
        """Finish a message. A stale receipt (the message was received again) raises QueueError."""
        ...

    def extend(self, receipt: str, visibility_s: int) -> None:
        """Keep the message hidden for `visibility_s` more seconds from now (heartbeat)."""
        ...

    def release(self, receipt: str) -> None:
        """Make the message visible again at once (give it back without counting as done)."""
        ...

    def depth(self) -> int:
        """Messages waiting or in flight (not counting dead letters)."""
        ...

    def dead_letters(self) -> list[QueueMessage]:
        """Messages moved to the dead-letter queue (receipt handles are not for deleting them)."""
        ...


# --- SQS ----------------------------------------------------------------------------------------


class SqsQueue:
    """An SQS FIFO queue via boto3 (AWS_ENDPOINT_URL honoured); the DLQ comes from its RedrivePolicy."""

    def __init__(self, url: str, *, max_attempts: int = 4, client: Any | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.url = url
        self.client = client or boto3.client(
            "sqs", config=Config(retries={"total_max_attempts": max_attempts, "mode": "standard"})
        )

    def __repr__(self) -> str:
        return f"SqsQueue({self.url!r})"

    @contextlib.contextmanager
    def _call(self, op: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "error")
            hint = ""
            if "ReceiptHandle" in code or "receipt handle" in err.get("Message", "").lower():
                hint = " (stale or unknown receipt: the message was received again or already deleted)"
            raise QueueError(f"SQS {op} on {self.url} failed: {code}: {err.get('Message', '')}{hint}") from exc
        except BotoCoreError as exc:
            raise QueueError(f"SQS {op} on {self.url} failed after retries: {type(exc).__name__}: {exc}") from exc

    def send(self, body: str, *, dedup_id: str, group_id: str = "training") -> str:
        """FIFO queues (`.fifo`) get the group and dedup ids; standard queues reject them, and
        their consumers deduplicate on their own (the ask worker's claim)."""
        kwargs: dict[str, Any] = {"QueueUrl": self.url, "MessageBody": body}
        if self.url.endswith(".fifo"):
            kwargs.update(MessageGroupId=group_id, MessageDeduplicationId=dedup_id)
        with self._call("send"):
            response = self.client.send_message(**kwargs)
        return str(response["MessageId"])

    def receive(self, *, wait_s: int = 20, visibility_s: int | None = None) -> QueueMessage | None:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": 1,
            "WaitTimeSeconds": max(0, min(int(wait_s), 20)),
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if visibility_s is not None:
            kwargs["VisibilityTimeout"] = int(visibility_s)
        with self._call("receive"):
            messages = self.client.receive_message(**kwargs).get("Messages", [])
        if not messages:
            return None
        return self._message(messages[0])

    @staticmethod
    def _message(raw: dict[str, Any]) -> QueueMessage:
        return QueueMessage(
            body=raw["Body"],
            message_id=raw["MessageId"],
            receipt_handle=raw["ReceiptHandle"],
            receive_count=int(raw.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
        )

    def delete(self, receipt: str) -> None:
        with self._call("delete"):
            self.client.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    def extend(self, receipt: str, visibility_s: int) -> None:
        with self._call("change visibility"):
            self.client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=int(visibility_s)
            )

    def release(self, receipt: str) -> None:
        self.extend(receipt, 0)

    def depth(self) -> int:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        with self._call("get attributes"):
            attrs = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        return sum(int(attrs.get(name, 0)) for name in names)

    def dead_letter_url(self) -> str | None:
        with self._call("get attributes"):
            attrs = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=["RedrivePolicy"])
        policy = attrs.get("Attributes", {}).get("RedrivePolicy")
        if not policy:
            return None
        arn = json.loads(policy)["deadLetterTargetArn"]  # arn:aws:sqs:region:account:name
        _, _, _, _, account, name = arn.split(":", 5)
        with self._call("get DLQ url"):
            return str(self.client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])

    def dead_letters(self) -> list[QueueMessage]:
        """Peek at up to 10 dead letters (received with visibility 0, so they stay in the DLQ)."""
        url = self.dead_letter_url()
        if url is None:
            return []
        with self._call("receive from DLQ"):
            raw = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=0,
                WaitTimeSeconds=0,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
        unique = {m["MessageId"]: m for m in raw}
        return [self._message(m) for m in unique.values()]


# --- SQLite -------------------------------------------------------------------------------------

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
                conn.execute("PRAGMA journal_mode=WAL")
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


def open_queue(settings: Settings, url: str | None = None) -> JobQueue:
    """SQS when a queue URL is given or TRAINING_QUEUE_URL is set, else DATA_DIR/queue.sqlite."""
    url = url or settings.training_queue_url
    if url:
        return SqsQueue(url, max_attempts=settings.aws_max_attempts)
    return SqliteQueue(
        settings.resolved_queue_path, max_receives=settings.queue_max_receives, visibility_s=settings.queue_visibility_s
    )
