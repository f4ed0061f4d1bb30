"""Once-only event processing over the blob store, on the local store and on S3 (moto)."""

from __future__ import annotations

import threading
import time

import pytest

from core import idempotency
from core.errors import EchoRagError
from core.settings import Settings
from core.store import BlobStore, open_store


@pytest.fixture
def store(backend_settings: Settings) -> BlobStore:
    return open_store(backend_settings)


def test_one_claim_wins_and_done_is_final(store: BlobStore) -> None:
    key = "slack:event:Ev01"
    assert idempotency.claim(store, key, lease_s=60) is not None
    assert idempotency.claim(store, key, lease_s=60) is None  # a retry while the first is working
    idempotency.complete(store, key)
    assert idempotency.is_done(store, key)
    assert idempotency.claim(store, key, lease_s=60) is None


def test_concurrent_deliveries_claim_once(store: BlobStore) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(6)

    def deliver(n: int) -> None:
        barrier.wait()
        if idempotency.claim(store, "discord:interaction/123", lease_s=60):
            wins.append(n)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_an_expired_claim_can_be_retaken_once(store: BlobStore) -> None:
    key = "slack:event:Ev02"
    assert idempotency.claim(store, key, lease_s=0.2)
    time.sleep(0.3)  # the first handler died without completing
    assert idempotency.claim(store, key, lease_s=60) is not None
    assert idempotency.claim(store, key, lease_s=60) is None


def test_release_lets_the_next_delivery_retry(store: BlobStore) -> None:
    key = "slack:event:Ev03"
    token = idempotency.claim(store, key, lease_s=600)
    assert token is not None
    idempotency.release(store, token)
    assert idempotency.claim(store, key, lease_s=600) is not None


def test_a_late_release_never_frees_a_newer_live_claim(store: BlobStore) -> None:
    """A slow attempt whose lease ran out fails after a retry took over: the retry keeps its claim."""
    key = "slack:event:Ev04"
    slow = idempotency.claim(store, key, lease_s=0.2)
    assert slow is not None
    time.sleep(0.3)
    retry = idempotency.claim(store, key, lease_s=600)
    assert retry is not None and retry != slow
    idempotency.release(store, slow)
    assert idempotency.claim(store, key, lease_s=600) is None  # the retry is still working
    idempotency.release(store, retry)
    assert idempotency.claim(store, key, lease_s=600) is not None


def test_empty_key_is_an_error(store: BlobStore) -> None:
    with pytest.raises(EchoRagError):
        idempotency.claim(store, "", lease_s=1)
