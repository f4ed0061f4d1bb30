"""Once-only processing of chat events over the blob store (no DynamoDB needed).

`claim(store, key, lease_s)` returns a token to exactly one caller per event (None to the rest).
Claims are numbered attempts, each taken with a conditional write (`idempotency/<key>/attempt-<n>`),
so two racers can never both win the same attempt. When a claimer died (its lease ran out and no
`done` marker was written) the next caller takes attempt n+1; a claimer that failed gives its own
attempt back with `release(store, token)`; `complete(store, key)` writes `idempotency/<key>/done`,
after which every claim is refused.

    if token := claim(store, f"slack:{event_id}", lease_s=120):
        try:
            handle(event)
        except Exception:
            release(store, token)
            raise
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


def claim(store: BlobStore, key: str, lease_s: float) -> str | None:
    """A token: the caller owns this event for `lease_s` seconds. None: done, or someone holds it."""
    base = _base(key)
    if store.get(f"{base}/done") is not None:
        return None
    now = time.time()
    lease = json.dumps({"claimed_at": now, "expires_at": now + lease_s}).encode()
    for attempt in range(MAX_ATTEMPTS):
        attempt_key = f"{base}/attempt-{attempt:03d}"
        if store.put(attempt_key, lease, if_absent=True):
            return attempt_key
        data = store.get(attempt_key)
        try:
            expires_at = float(json.loads(data or b"{}")["expires_at"])
        except (ValueError, KeyError, TypeError):
            expires_at = 0.0  # unreadable claim: treat as expired so the event is not lost
        if expires_at > now:
            return None  # a live claim: someone is working on it
        if store.get(f"{base}/done") is not None:
            return None
    raise EchoRagError(f"event {key!r} was claimed {MAX_ATTEMPTS} times without completing; giving up")


def complete(store: BlobStore, key: str) -> None:
    """Mark the event processed: later claims return False for good."""
    store.put(f"{_base(key)}/done", json.dumps({"done_at": time.time()}).encode())


def release(store: BlobStore, token: str) -> None:
    """Give a claim back after a failed attempt so the next delivery may retake it at once.

    `token` is what `claim` returned: only that attempt's lease is expired, so a slow attempt that
    fails late never frees a newer attempt's live claim.
    """
    if not token.startswith(PREFIX) or "/attempt-" not in token:
        raise EchoRagError(f"not a claim token: {token!r}")
    store.put(token, json.dumps({"claimed_at": 0.0, "expires_at": 0.0, "released": True}).encode())
