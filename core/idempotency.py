"""Once-only processing of chat events over the blob store (no DynamoDB needed).

`claim(store, key, lease_s)` returns True to exactly one caller per event. Claims are numbered
attempts, each taken with a conditional write (`idempotency/<key>/attempt-<n>`), so two racers can
never both win the same attempt. When a claimer died (its lease ran out and no `done` marker was
written) the next caller takes attempt n+1; `complete(store, key)` writes `idempotency/<key>/done`,
after which every claim is refused.

    if claim(store, f"slack:{event_id}", lease_s=120):
        handle(event)
        complete(store, f"slack:{event_id}")
"""

from __future__ import annotations

import json
import re
import time

from core.errors import EchoRagError
from core.store import BlobStore

PREFIX = "idempotency/"
MAX_ATTEMPTS = 50
_SAFE = re.compile(r"[^A-Za-z0-9._:=@+-]")


def _base(key: str) -> str:
    if not key:
        raise EchoRagError("idempotency key must not be empty")
    return PREFIX + _SAFE.sub("_", key)


def is_done(store: BlobStore, key: str) -> bool:
    return store.get(f"{_base(key)}/done") is not None


def claim(store: BlobStore, key: str, lease_s: float) -> bool:
    """True: the caller owns this event for `lease_s` seconds. False: done, or someone holds it."""
    base = _base(key)
    if store.get(f"{base}/done") is not None:
        return False
    now = time.time()
    lease = json.dumps({"claimed_at": now, "expires_at": now + lease_s}).encode()
    for attempt in range(MAX_ATTEMPTS):
        attempt_key = f"{base}/attempt-{attempt:03d}"
        if store.put(attempt_key, lease, if_absent=True):
            return True
        data = store.get(attempt_key)
        try:
            expires_at = float(json.loads(data or b"{}")["expires_at"])
        except (ValueError, KeyError, TypeError):
            expires_at = 0.0  # unreadable claim: treat as expired so the event is not lost
        if expires_at > now:
            return False  # a live claim: someone is working on it
        if store.get(f"{base}/done") is not None:
            return False
    raise EchoRagError(f"event {key!r} was claimed {MAX_ATTEMPTS} times without completing; giving up")


def complete(store: BlobStore, key: str) -> None:
    """Mark the event processed: later claims return False for good."""
    store.put(f"{_base(key)}/done", json.dumps({"done_at": time.time()}).encode())


def release(store: BlobStore, key: str) -> None:
    """Give a claim back after a failed attempt so the next delivery may retake it at once.

    Only the caller that holds the claim should call this: it expires the newest attempt's lease.
    """
    attempts = sorted(store.list(f"{_base(key)}/attempt-"))
    if attempts:
        store.put(attempts[-1], json.dumps({"claimed_at": 0.0, "expires_at": 0.0, "released": True}).encode())
