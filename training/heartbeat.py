"""Keeps a long training job's queue message invisible while the job runs, from a side thread."""

from __future__ import annotations

import logging
import threading

from core.queue import JobQueue

log = logging.getLogger(__name__)


class Heartbeat:
    """Extends the message's visibility every `interval_s` until stopped (keeps a long job ours)."""

    def __init__(self, queue: JobQueue, receipt: str, visibility_s: int) -> None:
        self.queue, self.receipt, self.visibility_s = queue, receipt, visibility_s
        self.interval_s = max(0.5, visibility_s / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="visibility-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.queue.extend(self.receipt, self.visibility_s)
            except Exception as exc:  # keep beating: the next extension may succeed
                log.warning("could not extend the job message's visibility: %s", exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
