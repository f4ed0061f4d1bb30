"""Once-only processing of chat events over the blob store (no DynamoDB needed).

One context manager holds the whole protocol, in the manner of Powertools' idempotent handler:

    with once(store, f"slack/{event_id}", lease_s=120) as claim:
        if claim.state == "done":
            return                  # answered before: nothing to do
        if claim.state == "held":
            raise ClaimHeld(...)    # another attempt is on it (or died): let the platform retry later
        handle(event)               # an exception gives the claim back and propagates (the retry retakes it)
        ...                         # leaving the block normally marks the event done for good

`claim.finish()` marks it done at once, for a failure no retry can fix (the block may then raise or
return). Taking the claim happens in `__enter__`, inside whatever the platform retries, so a store
that cannot take the claim fails the delivery instead of dropping the event.

Claims are numbered attempts, each taken with a conditional write (`idempotency/<key>/attempt-<n>`),
so two racers can never both win the same attempt. When a claimer died (its lease ran out and no
`done` marker was written) the next caller takes attempt n+1; an attempt that fails gives only its
own attempt back, so a slow attempt failing late never frees a newer attempt's live claim.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from core.errors import PermanentError, StoreError, TransientError
from core.store import BlobStore

log = logging.getLogger(__name__)

PREFIX = "idempotency/"
MAX_ATTEMPTS = 50
_SAFE = re.compile(r"[^A-Za-z0-9._:=@+-]")

ClaimState = Literal["run", "done", "held"]


class ClaimHeld(TransientError):
    """Another attempt holds the event's claim and has not finished: it may be working, or it may
    have died without releasing. Raised so the platform retries later: by then the event is done
    (the retry stops) or the lease has run out (the retry takes over)."""


def _base(key: str) -> str:
    if not key:
        raise PermanentError("idempotency key must not be empty")
    return PREFIX + _SAFE.sub("_", key)


@dataclass
class Claim:
    """One delivery's hold on an event; `state` tells the caller what to do (see the module doc)."""

    store: BlobStore
    key: str
    lease_s: float
    state: ClaimState = "held"
    token: str | None = None  # this attempt's key while state == "run"
    finished: bool = False

    @property
    def attempt(self) -> int:
        """0 for the first attempt at this event, n when n earlier attempts failed or died."""
        return int(self.token.rsplit("-", 1)[1]) if self.token else 0

    @property
    def _done_key(self) -> str:
        return f"{_base(self.key)}/done"

    def __enter__(self) -> Claim:
        self.state, self.token = self._take()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state != "run" or self.finished:
            return
        if exc is None:
            self.finish()
        else:
            self._release()

    def finish(self) -> None:
        """Mark the event processed: every later claim sees "done"."""
        self.store.put(self._done_key, json.dumps({"done_at": time.time()}).encode())
        self.finished = True

    def done_elsewhere(self) -> bool:
        """Whether another attempt finished the event (this one's lease ran out while it worked)."""
        return self.store.get(self._done_key) is not None

    def _take(self) -> tuple[ClaimState, str | None]:
        base = _base(self.key)
        if self.done_elsewhere():
            return "done", None
        now = time.time()
        lease = json.dumps({"claimed_at": now, "expires_at": now + self.lease_s}).encode()
        for attempt in range(MAX_ATTEMPTS):
            attempt_key = f"{base}/attempt-{attempt:03d}"
            if self.store.put(attempt_key, lease, if_absent=True):
                return "run", attempt_key
            try:
                expires_at = float(json.loads(self.store.get(attempt_key) or b"{}")["expires_at"])
            except (ValueError, KeyError, TypeError):
                expires_at = 0.0  # unreadable claim: treat as expired so the event is not lost
            if expires_at > now:
                return "held", None  # a live claim: someone is working on it
            if self.done_elsewhere():
                return "done", None
        raise PermanentError(f"event {self.key!r} was claimed {MAX_ATTEMPTS} times without completing; giving up")

    def _release(self) -> None:
        """Expire this attempt's lease so the next delivery retakes the event at once (best effort:
        if the store is down too, the lease runs out by itself)."""
        assert self.token is not None
        released = json.dumps({"claimed_at": 0.0, "expires_at": 0.0, "released": True}).encode()
        try:
            self.store.put(self.token, released)
        except StoreError as exc:
            log.warning("could not release the claim %s (it lapses after its lease): %s", self.token, exc)


def once(store: BlobStore, key: str, *, lease_s: float) -> Claim:
    """The claim on `key` for this delivery, to use as a context manager (see the module doc).
    `lease_s` must cover the attempt's whole life and end before the platform can redeliver."""
    return Claim(store=store, key=key, lease_s=lease_s)
