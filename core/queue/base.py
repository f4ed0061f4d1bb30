"""What every queue backend offers (the worker and the adapters depend on this, not on a backend)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

DEDUP_WINDOW_S = 300.0  # SQS FIFO deduplication interval


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
