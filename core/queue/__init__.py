"""Job queues: SQS in production, a SQLite file with the same semantics embedded, one module each.

Semantics both keep (the worker relies on them):
- `send` deduplicates by `dedup_id` for 5 minutes (SQS FIFO's window) and keeps FIFO order per group;
  while a message of a group is in flight no later message of that group is delivered.
- `receive` hides the message for the visibility timeout and hands out a fresh receipt handle; the
  message comes back if it is neither deleted nor extended in time (the worker died).
- Every receive counts; once a message has been received `max_receives` times, the next receive
  moves it to the dead-letter queue (SQS RedrivePolicy maxReceiveCount) instead of delivering it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.queue.base import DEDUP_WINDOW_S, JobQueue, QueueMessage
from core.queue.sqlite import SqliteQueue
from core.queue.sqs import SqsQueue

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = ["DEDUP_WINDOW_S", "JobQueue", "QueueMessage", "SqliteQueue", "SqsQueue", "open_queue"]


def open_queue(settings: Settings, url: str | None = None) -> JobQueue:
    """SQS when a queue URL is given or TRAINING_QUEUE_URL is set, else DATA_DIR/queue.sqlite."""
    url = url or settings.training_queue_url
    if url:
        return SqsQueue(url, max_attempts=settings.aws_max_attempts)
    return SqliteQueue(
        settings.resolved_queue_path, max_receives=settings.queue_max_receives, visibility_s=settings.queue_visibility_s
    )
