"""Clients built on first use, once per process, and closed together.

A Lambda container keeps its process warm between invocations and the Discord gateway and Slack
Socket Mode run blocking work in thread pools: each client (store, queue, REST, the agent with its
embedded Qdrant, which allows one opener per folder) must be built once however many threads ask
for it first, and only when a code path needs it, so an ack never loads Kiwi or Qdrant.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ClientCache:
    """`get(name, build)` builds once and returns the same object after; `close()` closes them all."""

    def __init__(self) -> None:
        self._built: dict[str, Any] = {}
        self._lock = threading.RLock()  # re-entrant: building the agent asks for the store

    def get(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            value: T = self._built[name]
            return value

    def close(self) -> None:
        """Close what was built (best effort) and forget it: the next `get` builds afresh."""
        with self._lock:
            built, self._built = self._built, {}
        for client in built.values():
            if hasattr(client, "close"):
                with contextlib.suppress(Exception):
                    client.close()
