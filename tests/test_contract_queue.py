"""Job queue contract, run on SQLite and on SQS FIFO + DLQ over HTTP (moto)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.errors import QueueError
from core.queue import JobQueue, SqliteQueue, SqsQueue, open_queue
from core.settings import Settings


@pytest.fixture
def queue(backend_settings: Settings) -> JobQueue:
    return open_queue(backend_settings)


def test_open_queue_picks_the_backend(backend_settings: Settings) -> None:
    expected = SqsQueue if backend_settings.training_queue_url else SqliteQueue
    assert isinstance(open_queue(backend_settings), expected)


def test_send_receive_delete(queue: JobQueue) -> None:
    assert queue.receive(wait_s=0) is None
    message_id = queue.send('{"job_id": "j1"}', dedup_id="j1")
    assert queue.depth() == 1
    message = queue.receive(wait_s=1, visibility_s=30)
    assert message is not None
    assert (message.body, message.message_id, message.receive_count) == ('{"job_id": "j1"}', message_id, 1)
    assert queue.depth() == 1  # in flight still counts
    queue.delete(message.receipt_handle)
    assert queue.depth() == 0
    assert queue.receive(wait_s=0) is None


def test_same_dedup_id_is_enqueued_once(queue: JobQueue) -> None:
    queue.send("job", dedup_id="same")
    queue.send("job", dedup_id="same")
    queue.send("job", dedup_id="same")
    assert queue.depth() == 1


def test_fifo_order_and_one_in_flight_per_group(queue: JobQueue) -> None:
    for n in range(3):
        queue.send(f"m{n}", dedup_id=f"d{n}")
    first = queue.receive(wait_s=1, visibility_s=30)
    assert first is not None and first.body == "m0"
    assert queue.receive(wait_s=0) is None  # the group is blocked while m0 is in flight
    queue.delete(first.receipt_handle)
    second = queue.receive(wait_s=1, visibility_s=30)
    assert second is not None and second.body == "m1"
    queue.delete(second.receipt_handle)
    third = queue.receive(wait_s=1, visibility_s=30)
    assert third is not None and third.body == "m2"


def test_message_held_past_visibility_timeout_is_redelivered(queue: JobQueue) -> None:
    queue.send("job", dedup_id="j-vis")
    first = queue.receive(wait_s=1, visibility_s=1)
    assert first is not None
    assert queue.receive(wait_s=0) is None  # hidden while the "worker" holds it
    second = None
    deadline = time.monotonic() + 10
    while second is None and time.monotonic() < deadline:  # visible again after ~1 s
        second = queue.receive(wait_s=1, visibility_s=30)
    assert second is not None
    assert second.message_id == first.message_id
    assert second.receive_count == 2
    assert second.receipt_handle != first.receipt_handle
    queue.delete(second.receipt_handle)
    assert queue.depth() == 0


def test_extend_keeps_a_message_hidden(queue: JobQueue) -> None:
    queue.send("job", dedup_id="j-ext")
    message = queue.receive(wait_s=1, visibility_s=1)
    assert message is not None
    queue.extend(message.receipt_handle, 30)
    time.sleep(1.3)
    assert queue.receive(wait_s=0) is None
    queue.release(message.receipt_handle)
    again = queue.receive(wait_s=1, visibility_s=30)
    assert again is not None and again.receive_count == 2


def test_poison_message_moves_to_dead_letters_after_max_receives(queue: JobQueue) -> None:
    queue.send('{"not": "a job"}', dedup_id="poison")
    for expected in (1, 2, 3):  # QUEUE_MAX_RECEIVES=3 in the fixtures
        message = queue.receive(wait_s=1, visibility_s=30)
        assert message is not None and message.receive_count == expected
        queue.release(message.receipt_handle)  # the worker gives up on it
    assert queue.receive(wait_s=0) is None  # the 4th receive moves it to the DLQ instead
    assert queue.depth() == 0
    dead = queue.dead_letters()
    assert [m.body for m in dead] == ['{"not": "a job"}']
    assert dead[0].receive_count >= 3


def test_each_message_is_delivered_to_one_consumer(queue: JobQueue) -> None:
    for n in range(6):
        queue.send(f"m{n}", dedup_id=f"c{n}", group_id=f"g{n}")
    got: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        while True:
            message = queue.receive(wait_s=0, visibility_s=60)
            if message is None:
                return
            with lock:
                got.append(message.body)
            queue.delete(message.receipt_handle)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"m{n}" for n in range(6)]


def test_stale_receipt_handle_fails_clearly(backend_settings: Settings) -> None:
    if backend_settings.training_queue_url:
        pytest.skip("moto accepts a superseded receipt handle; real SQS FIFO rejects it")
    queue = open_queue(backend_settings)
    queue.send("job", dedup_id="j-stale")
    first = queue.receive(wait_s=0, visibility_s=30)
    assert first is not None
    queue.release(first.receipt_handle)
    second = queue.receive(wait_s=0, visibility_s=30)
    assert second is not None
    with pytest.raises(QueueError, match="stale or unknown receipt handle"):
        queue.delete(first.receipt_handle)
    queue.delete(second.receipt_handle)
    with pytest.raises(QueueError, match="stale or unknown receipt handle"):
        queue.extend(second.receipt_handle, 10)


def test_sqs_errors_are_queue_errors(moto_server: str) -> None:
    queue = SqsQueue(f"{moto_server}/123456789012/missing.fifo", max_attempts=2)
    with pytest.raises(QueueError, match=r"SQS send on .*missing\.fifo failed"):
        queue.send("x", dedup_id="x")
    with pytest.raises(QueueError, match="failed"):
        queue.delete("not-a-receipt")


def test_sqlite_queue_is_shared_between_openers(local_settings: Settings) -> None:
    sender = open_queue(local_settings)
    receiver = open_queue(local_settings)  # another process would open the same file the same way
    sender.send("job", dedup_id="shared")
    message = receiver.receive(wait_s=0)
    assert message is not None and message.body == "job"
    sender.delete(message.receipt_handle)
    assert receiver.depth() == 0


_CONSUMER_SCRIPT = """
import sys
from core.queue import SqliteQueue
queue = SqliteQueue(sys.argv[1], max_receives=3)
while (message := queue.receive(wait_s=0, visibility_s=60)) is not None:
    print(message.body, flush=True)
    queue.delete(message.receipt_handle)
"""


def test_sqlite_queue_delivers_each_message_once_across_processes(local_settings: Settings) -> None:
    queue = open_queue(local_settings)
    for n in range(30):
        queue.send(f"m{n}", dedup_id=f"p{n}", group_id=f"g{n % 10}")
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONSUMER_SCRIPT, str(local_settings.resolved_queue_path)],
                         stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    got = [body for out in outputs for body in out]
    assert sorted(got) == sorted(f"m{n}" for n in range(30))
    for out in outputs:  # FIFO within a group holds in what each consumer saw
        for group in range(10):
            seen = [int(b[1:]) for b in out if int(b[1:]) % 10 == group]
            assert seen == sorted(seen)
    assert queue.depth() == 0


_OPENER_SCRIPT = """
import sys, time
from pathlib import Path
from core.queue import SqliteQueue
start = float(sys.argv[2])
for n in range(20):  # a new file each 0.1 s, opened by every process at the same moment
    time.sleep(max(0.0, start + n / 10 - time.time()))
    SqliteQueue(Path(sys.argv[1]) / f"queue-{n}.sqlite").depth()
"""


def test_sqlite_queue_opens_while_other_processes_create_it(tmp_path: Path) -> None:
    """Lambda-like processes open the file on first use, often at once: creating it and switching
    it to WAL never fails on the other's lock."""
    start = str(time.time() + 2.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER_SCRIPT, str(tmp_path), start],
            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
        )
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(errors)
