"""Once-only event processing over the blob store, on the local store and on S3 (moto)."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import PermanentError, StoreError
from core.idempotency import Claim, once
from core.settings import Settings
from core.store import BlobStore, open_store


@pytest.fixture
def store(backend_settings: Settings) -> BlobStore:
    return open_store(backend_settings)


def _state(store: BlobStore, key: str, lease_s: float = 60) -> str:
    """What a delivery arriving now would be told (it does nothing and gives the claim back)."""
    claim = once(store, key, lease_s=lease_s).__enter__()
    if claim.state == "run":
        claim.__exit__(RuntimeError, RuntimeError("probe"), None)
    return claim.state


def test_success_marks_the_event_done_for_every_later_delivery(store: BlobStore) -> None:
    key = "slack:event:Ev01"
    with once(store, key, lease_s=60) as claim:
        assert claim.state == "run"
        assert _state(store, key) == "held"  # a retry while the first is working
    assert claim.finished and claim.done_elsewhere()
    assert _state(store, key) == "done"


def test_concurrent_deliveries_run_once(store: BlobStore) -> None:
    runs: list[int] = []
    barrier = threading.Barrier(6)

    def deliver(n: int) -> None:
        barrier.wait()
        with once(store, "discord:interaction/123", lease_s=60) as claim:
            if claim.state == "run":
                runs.append(n)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 1


def test_an_expired_claim_can_be_retaken_once(store: BlobStore) -> None:
    key = "slack:event:Ev02"
    dead = once(store, key, lease_s=0.2).__enter__()  # the first handler dies: no __exit__ runs
    assert dead.state == "run"
    time.sleep(0.3)
    with once(store, key, lease_s=60) as retry:
        assert retry.state == "run"
        assert _state(store, key) == "held"
    assert _state(store, key) == "done"


def test_an_exception_gives_the_claim_back_and_propagates(store: BlobStore) -> None:
    key = "slack:event:Ev03"
    with pytest.raises(StoreError, match="S3 down"), once(store, key, lease_s=600) as claim:
        assert claim.state == "run"
        raise StoreError("S3 down")
    assert not claim.finished
    with once(store, key, lease_s=600) as retry:
        assert retry.state == "run"  # the next delivery retries at once, not after the lease


def test_finish_is_final_even_when_the_block_then_raises(store: BlobStore) -> None:
    """A failure no retry can fix: finish() first, and the raise does not reopen the event."""
    key = "slack:event:Ev05"
    with pytest.raises(PermanentError), once(store, key, lease_s=600) as claim:
        claim.finish()
        raise PermanentError("not_in_channel")
    assert _state(store, key) == "done"


def test_a_late_failure_never_frees_a_newer_live_claim(store: BlobStore) -> None:
    """A slow attempt whose lease ran out fails after a retry took over: the retry keeps its claim."""
    key = "slack:event:Ev04"
    slow = once(store, key, lease_s=0.2).__enter__()
    time.sleep(0.3)
    retry = once(store, key, lease_s=600).__enter__()
    assert retry.state == "run" and retry.token != slow.token
    slow.__exit__(RuntimeError, RuntimeError("late"), None)
    assert _state(store, key, 600) == "held"  # the retry is still working
    retry.__exit__(None, None, None)
    assert _state(store, key) == "done"


def test_a_store_that_cannot_take_the_claim_fails_the_delivery(tmp_path: object) -> None:
    """Taking the claim is inside what the platform retries: its failure is raised, not swallowed."""

    class Down:
        def get(self, key: str) -> bytes | None:
            raise StoreError("S3 get failed: ServiceUnavailable")

    ran = []
    with pytest.raises(StoreError, match="ServiceUnavailable"), once(Down(), "k", lease_s=1):  # type: ignore[arg-type]
        ran.append(True)
    assert not ran


def test_empty_key_is_an_error(store: BlobStore) -> None:
    with pytest.raises(PermanentError), Claim(store=store, key="", lease_s=1):
        pass
