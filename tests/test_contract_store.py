"""Blob store + record contract, run on the local directory and on S3 over HTTP (moto).

One suite (~330 lines): every case runs against both backends through one fixture, so the
contract reads in one place.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from core import jobs, records
from core.contracts import AnswerRecord, FeedbackEvent, make_answer_id
from core.errors import StoreError
from core.settings import Settings
from core.store import BlobStore, InvalidKey, LocalBlobStore, S3BlobStore, open_store


@pytest.fixture
def store(backend_settings: Settings) -> BlobStore:
    return open_store(backend_settings)


def _answer(n: int, *, day: datetime | None = None) -> AnswerRecord:
    kwargs: dict[str, Any] = {"created_at": day} if day else {}
    return AnswerRecord(
        answer_id=make_answer_id("slack", "C1", f"17000000{n:02d}.000100"),
        platform="slack",
        channel="C1",
        message_id=f"17000000{n:02d}.000100",
        question=f"질문 {n}?",
        answer=f"답변 {n}",
        **kwargs,
    )


def test_open_store_picks_the_backend(backend_settings: Settings) -> None:
    expected = S3BlobStore if backend_settings.feedback_bucket else LocalBlobStore
    assert isinstance(open_store(backend_settings), expected)


def test_put_get_list_delete(store: BlobStore) -> None:
    assert store.get("a/missing.json") is None
    for key in ["b/2", "a/x/1", "a/y", "a/x/0", "ab"]:
        assert store.put(key, key.encode()) is True
    assert store.get("a/x/1") == b"a/x/1"
    assert list(store.list("a/")) == ["a/x/0", "a/x/1", "a/y"]
    assert list(store.list("a")) == ["a/x/0", "a/x/1", "a/y", "ab"]
    assert list(store.list("a/", start_after="a/x/0")) == ["a/x/1", "a/y"]
    assert list(store.list("a/", start_after="a/x0")) == ["a/y"]  # all of a/x/ sorts before a/x0
    assert list(store.list("", start_after="a/y")) == ["ab", "b/2"]
    assert list(store.list("nothing/")) == []
    store.put("a/y", b"new")
    assert store.get("a/y") == b"new"
    store.delete("a/y")
    store.delete("a/y")  # a missing key is fine
    assert store.get("a/y") is None


def test_conditional_write_only_once(store: BlobStore) -> None:
    assert store.put("locks/one", b"first", if_absent=True) is True
    assert store.put("locks/one", b"second", if_absent=True) is False
    assert store.get("locks/one") == b"first"


def test_conditional_write_has_one_winner_under_concurrency(store: BlobStore) -> None:
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def race(n: int) -> None:
        barrier.wait()
        if store.put("locks/race", str(n).encode(), if_absent=True):
            winners.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.get("locks/race") == str(winners[0]).encode()


@pytest.mark.parametrize(
    "key", ["", "/abs", "a/../b", "a//b", "a/./b", "a\\b", "a/.tmp-x", "a/\udd36", "a/" + "x" * 256, "a/" * 600 + "b"]
)
def test_invalid_keys_are_rejected(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidKey, match="invalid store key"):
        store.put(key, b"x")


def test_answers_round_trip_and_lookup_without_date(store: BlobStore) -> None:
    record = _answer(1, day=datetime(2026, 3, 4, 23, 59, tzinfo=UTC))
    key = records.save_answer(store, record)
    assert key == f"answers/dt=2026-03-04/{record.answer_id}.json"
    loaded = records.load_answer(store, record.answer_id)
    assert loaded is not None and loaded.question == "질문 1?" and loaded.created_at == record.created_at
    # A retried save on another day rewrites the same record instead of adding a second one.
    records.save_answer(store, record.model_copy(update={"created_at": datetime(2026, 3, 5, tzinfo=UTC)}))
    assert [a.answer_id for a in records.iter_answers(store)] == [record.answer_id]
    assert records.count_answers(store) == 1
    assert records.load_answer(store, make_answer_id("slack", "C1", "other")) is None


def test_corrupt_and_unknown_schema_records_are_skipped_and_counted(store: BlobStore) -> None:
    good = [_answer(1), _answer(2)]
    for record in good:
        records.save_answer(store, record)
    store.put("answers/dt=2026-01-01/garbage.json", b"{not json")
    store.put("answers/dt=2026-01-01/binary.json", b"\xff\xfe\x00")
    store.put("answers/dt=2026-01-01/future.json", json.dumps({"schema": 99, "answer_id": "x"}).encode())
    store.put("answers/dt=2026-01-01/invalid.json", json.dumps({"schema": 1, "answer_id": "x"}).encode())
    store.put("feedback/dt=2026-01-01/list.json", b"[1, 2]")
    skipped = records.SkipCounter()
    ids = sorted(a.answer_id for a in records.iter_answers(store, skipped=skipped))
    assert ids == sorted(r.answer_id for r in good)
    assert skipped.count == 4
    assert all(key.startswith("answers/dt=2026-01-01/") for key in skipped.keys)
    fb_skipped = records.SkipCounter()
    assert list(records.iter_feedback(store, skipped=fb_skipped)) == []
    assert fb_skipped.count == 1
    summary = records.feedback_summary(store)
    assert summary.answers == 2 and summary.skipped == 1 and summary.events == 0
    # An answer whose dated record went bad reads as "no answer", not a crash.
    store.put(records.answer_key(good[0]), b"\x00garbage")
    assert records.load_answer(store, good[0].answer_id) is None


def test_feedback_is_stored_once_and_counted_by_time(store: BlobStore) -> None:
    record = _answer(1)
    records.save_answer(store, record)
    event = FeedbackEvent(
        feedback_id="f1", answer_id=record.answer_id, platform="slack", channel="C1",
        message_id=record.message_id, user_hash="u1", reaction="+1", label=1, action="added",
    )
    assert records.save_feedback(store, event) is True
    assert records.save_feedback(store, event.model_copy(update={"created_at": datetime.now(UTC)})) is False
    assert records.save_feedback(store, event) is False
    assert [e.feedback_id for e in records.iter_feedback(store)] == ["f1"]
    assert records.count_votes_since(store, None) == 1
    assert records.count_votes_since(store, event.created_at) == 0
    assert records.count_votes_since(store, datetime(2000, 1, 1, tzinfo=UTC)) == 1


def test_new_feedback_is_counted_across_day_partitions(store: BlobStore) -> None:
    late, early = datetime(2026, 3, 4, 23, 59, 30, tzinfo=UTC), datetime(2026, 3, 5, 0, 0, 30, tzinfo=UTC)
    for n, at in enumerate([datetime(2026, 3, 1, 12, tzinfo=UTC), late, early, datetime(2026, 3, 9, tzinfo=UTC)]):
        records.save_feedback(store, FeedbackEvent(
            feedback_id=f"f{n}", answer_id="a", platform="slack", channel="C1", message_id="m", user_hash=f"u{n}",
            reaction="+1", label=1, action="added", created_at=at))
    assert records.count_votes_since(store, None) == 4
    assert records.count_votes_since(store, datetime(2026, 3, 4, 12, tzinfo=UTC)) == 3
    assert records.count_votes_since(store, late) == 2  # strictly after
    assert records.count_votes_since(store, datetime(2026, 3, 5, tzinfo=UTC)) == 2
    assert records.count_votes_since(store, datetime(2026, 3, 9, 0, 0, 1, tzinfo=UTC)) == 0


def test_job_slot_is_taken_once_and_released_by_its_holder(store: BlobStore) -> None:
    assert jobs.active_job_id(store) is None
    assert jobs.acquire_active_job(store, "job-a") is True
    assert jobs.acquire_active_job(store, "job-b") is False
    assert jobs.active_job_id(store) == "job-a"
    assert jobs.release_active_job(store, "job-b") is False  # not the holder
    assert jobs.active_job_id(store) == "job-a"
    assert jobs.release_active_job(store, "job-a") is True
    assert jobs.acquire_active_job(store, "job-b") is True
    status = jobs.update_job_status(store, "job-b", state="running", progress=0.5)
    assert status.state == "running"
    assert jobs.update_job_status(store, "job-b", progress=0.75).state == "running"
    loaded = jobs.load_job_status(store, "job-b")
    assert loaded is not None and loaded.progress == 0.75
    assert [s.job_id for s in jobs.iter_job_statuses(store)] == ["job-b"]


# --- S3 errors: retried, then a clear StoreError ------------------------------------------------


class _FlakyS3(BaseHTTPRequestHandler):
    """Answers 503 SlowDown to the first `failures` requests, then a bare PutObject 200."""

    failures = 0
    seen: list[str]

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.path)
        if len(type(self).seen) <= type(self).failures:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_s3(moto_server: str) -> Iterator[tuple[str, type[_FlakyS3]]]:
    handler = type("Flaky", (_FlakyS3,), {"seen": [], "failures": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_s3_transient_error_is_retried_then_succeeds(flaky_s3: tuple[str, type[_FlakyS3]]) -> None:
    url, handler = flaky_s3
    handler.failures = 1
    store = S3BlobStore("flaky-bucket", endpoint_url=url, max_attempts=2)
    assert store.put("answers/x.json", b"{}") is True
    assert len(handler.seen) == 2  # a 503, then the write that landed


def test_s3_persistent_error_surfaces_as_store_error_after_retries(flaky_s3: tuple[str, type[_FlakyS3]]) -> None:
    url, handler = flaky_s3
    handler.failures = 100
    store = S3BlobStore("flaky-bucket", endpoint_url=url, max_attempts=2)
    with pytest.raises(StoreError, match=r"S3 put s3://flaky-bucket/answers/x.json failed after 1 retries: SlowDown"):
        store.put("answers/x.json", b"{}")
    assert len(handler.seen) == 2
    with pytest.raises(StoreError, match="SlowDown"):
        store.get("answers/x.json")


def test_s3_unreachable_endpoint_is_a_store_error(moto_server: str) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3BlobStore("b-bucket", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=2, connect_timeout_s=1)
    with pytest.raises(StoreError, match=r"S3 put s3://b-bucket/k failed after retries: EndpointConnectionError"):
        store.put("k", b"x")


def test_missing_bucket_is_a_clear_store_error(moto_server: str) -> None:
    store = S3BlobStore("no-such-bucket-here", max_attempts=2)
    with pytest.raises(StoreError, match="NoSuchBucket"):
        store.put("answers/x.json", b"{}")
    with pytest.raises(StoreError, match="NoSuchBucket"):
        list(store.list("answers/"))
    with pytest.raises(StoreError, match="NoSuchBucket"):
        records.save_answer(store, _answer(1))


_RACE_SCRIPT = """
import sys
from core.store import LocalBlobStore
won = LocalBlobStore(sys.argv[1]).put("locks/proc", sys.argv[2].encode(), if_absent=True)
print("won" if won else "lost")
"""


def test_local_conditional_write_is_race_safe_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACE_SCRIPT, str(root), str(n)], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[1])
        for n in range(4)
    ]
    results = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(results) == ["lost", "lost", "lost", "won"]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    winner = results.index("won")
    assert LocalBlobStore(root).get("locks/proc") == str(winner).encode()
    assert list(LocalBlobStore(root).list("")) == ["locks/proc"]  # no temp files left behind


class _LostResponseS3(BaseHTTPRequestHandler):
    """The first conditional PUT lands but its answer is lost (503); the retry then meets 412."""

    stored: ClassVar[dict[str, bytes]]  # class state, shared by the handler instance of every request
    puts: ClassVar[int] = 0

    def do_PUT(self) -> None:  # http.server dispatches on the method name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        cls = type(self)
        cls.puts += 1
        if self.path in cls.stored:
            self._reply(412, b"<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions "
                             b"you specified did not hold</Message></Error>")
            return
        cls.stored[self.path] = body
        self._reply(503, b"<Error><Code>SlowDown</Code><Message>lost</Message></Error>")

    def do_GET(self) -> None:
        data = type(self).stored.get(self.path)
        if data is None:
            self._reply(404, b"<Error><Code>NoSuchKey</Code><Message>missing</Message></Error>")
        else:
            self._reply(200, data)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_conditional_write_whose_response_was_lost_still_counts_as_ours(moto_server: str) -> None:
    class Lost(_LostResponseS3):  # fresh class state for this test
        stored: ClassVar[dict[str, bytes]] = {}
        puts = 0

    handler = Lost
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = S3BlobStore("lost-bucket", endpoint_url=f"http://127.0.0.1:{server.server_address[1]}", max_attempts=2)
        assert store.put("jobs/ACTIVE", b"mine", if_absent=True) is True
        assert handler.puts == 2
        assert store.put("jobs/ACTIVE", b"theirs", if_absent=True) is False  # a real conflict, no retry
    finally:
        server.shutdown()
        server.server_close()
