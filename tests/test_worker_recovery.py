"""A worker that dies anywhere is finished by the next one: published-and-live or failed-and-
announced, never in between, each announcement made once, no half-uploaded version left behind.

Deaths in-process are a `Killed` raised at a chosen step: a BaseException, so no `except Exception`
of the worker's catches it, as with a SIGKILL (the message stays in flight until its visibility
lapses). The chaos test kills real `echorag worker` processes with `os._exit` at seeded-random
store writes, so no `finally` runs either.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core import jobs
from core.registry import CLAIM, MANIFEST, AdapterRegistry
from core.retrain import request_retrain
from core.settings import Settings
from core.store import LocalBlobStore, open_store
from tests.conftest import make_settings
from tests.support_training import (
    FakeServer,
    queue_job,
    seed_feedback,
    training_settings,
    training_values,
    worker_env,
)
from training.worker import Worker

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]
VISIBILITY_S = 1  # a dead worker's message is back after a second


class Killed(BaseException):
    """The worker's process ending at this instant."""


def announcements(fakes: dict[str, FakeServer], job_id: str) -> list[str]:
    """The messages about `job_id` Slack and Discord show (each job is announced in both: in the
    requester's Slack thread and the Discord announcement channel), one entry per pair."""
    slack = [str(call["body"].get("text", "")) for call in fakes["slack"].calls]
    discord = [str(c["body"].get("content", "")) for c in fakes["discord"].calls if not c["repeated"]]
    told = [text for text in slack if job_id in text]
    assert told == [text for text in discord if job_id in text]
    return told


def redeliver(settings: Settings) -> list[str]:
    """The next worker, once the dead one's message is visible again: what each message became."""
    time.sleep(VISIBILITY_S + 0.2)
    return [o.outcome for o in Worker(settings, show_progress=False).run(once=True, wait_s=3)]


def assert_live(settings: Settings, fakes: dict[str, FakeServer], job_id: str, version: int) -> None:
    store = open_store(settings)
    registry = AdapterRegistry(store, settings.adapter_name)
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "published" and status.adapter_version == version
    assert registry.current() == version and registry.list_versions() == list(range(1, version + 1))
    assert [k for k in store.list(registry.prefix) if k.endswith(CLAIM)] == [
        registry.version_prefix(v) + CLAIM for v in range(1, version + 1)
    ]  # no unfinished version
    assert fakes["vllm"].calls and fakes["vllm"].calls[-1]["body"]["lora_name"] == settings.adapter_name
    [text] = announcements(fakes, job_id)
    assert f"adapter v{version} is now live" in text
    assert jobs.active_job_id(store) is None and open_queue_depth(settings) == 0


def open_queue_depth(settings: Settings) -> int:
    from core.queue import open_queue

    return open_queue(settings).depth()


def _die_at_promote(monkeypatch: pytest.MonkeyPatch) -> None:
    def promote(self: AdapterRegistry, version: int) -> None:
        raise Killed

    monkeypatch.setattr(AdapterRegistry, "promote", promote)


def _die_recording_published(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Worker._set_status

    def set_status(self: Worker, job: Any, **changes: Any) -> Any:
        if changes.get("state") == "published":
            raise Killed
        return original(self, job, **changes)

    monkeypatch.setattr(Worker, "_set_status", set_status)


def _die_announcing(monkeypatch: pytest.MonkeyPatch) -> None:
    def notify(self: Worker, *args: Any, **kwargs: Any) -> int:
        raise Killed

    monkeypatch.setattr(Worker, "_notify", notify)


def _die_after_posting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The posts went out; the worker dies before it can note that it announced."""
    import bots.notify

    original = bots.notify.notify_job

    def notify_job(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(bots.notify, "notify_job", notify_job)


def _die_mid_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    original = LocalBlobStore.put

    def put(self: LocalBlobStore, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        if key.startswith("adapters/") and key.endswith(".safetensors"):
            raise Killed
        return original(self, key, data, if_absent=if_absent)

    monkeypatch.setattr(LocalBlobStore, "put", put)


@pytest.mark.parametrize(
    "die",
    [_die_mid_upload, _die_at_promote, _die_recording_published, _die_announcing, _die_after_posting],
    ids=["mid-upload", "after-manifest-before-current", "after-current-before-status", "after-status-before-announce",
         "after-posting-before-noting-it"],
)
def test_a_worker_dying_inside_publish_is_finished_by_the_next_one(
    die: Callable[[pytest.MonkeyPatch], None], tiny_base: Path, fakes: dict[str, FakeServer], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = training_settings(tiny_base, tmp_path, fakes, queue_visibility_s=VISIBILITY_S, queue_max_receives=3)
    seed_feedback(settings, with_bad=False)
    job_id = queue_job(settings)
    with monkeypatch.context() as patched:
        die(patched)
        with pytest.raises(Killed):
            Worker(settings, show_progress=False).run(once=True, wait_s=0)
    status = jobs.load_job_status(open_store(settings), job_id)
    announcing = die in (_die_announcing, _die_after_posting)
    assert status is not None and (status.state == "published") == announcing
    assert len(announcements(fakes, job_id)) == (die is _die_after_posting)

    assert redeliver(settings) == ["duplicate" if announcing else "published"]
    assert_live(settings, fakes, job_id, 1)
    assert redeliver(settings) == []  # nothing left to do, nothing said twice
    assert len(announcements(fakes, job_id)) == 1


def test_a_version_published_while_current_moved_is_not_made_live(
    tiny_base: Path, fakes: dict[str, FakeServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate compared the candidate with the version live when training began; if an admin
    promoted or rolled back meanwhile, the verdict no longer applies: failed, and said so."""
    settings = training_settings(tiny_base, tmp_path, fakes, queue_visibility_s=VISIBILITY_S)
    seed_feedback(settings, with_bad=False)
    queue_job(settings)
    assert redeliver(settings) == ["published"]
    job_id = queue_job(settings)
    with monkeypatch.context() as patched:
        _die_at_promote(patched)
        with pytest.raises(Killed):
            Worker(settings, show_progress=False).run(once=True, wait_s=0)
    store = open_store(settings)
    registry = AdapterRegistry(store, settings.adapter_name)
    store.delete(registry.prefix + "CURRENT")  # an operator took the adapter out of service meanwhile
    assert redeliver(settings) == ["failed"]
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "failed" and "not made live" in (status.error or "")
    assert registry.current() is None and registry.list_versions() == [1, 2]
    [text] = announcements(fakes, job_id)
    assert "echorag adapters promote 2" in text and jobs.active_job_id(store) is None


def test_a_job_that_kills_its_worker_on_every_receive_ends_failed_and_announced(
    tiny_base: Path, fakes: dict[str, FakeServer], tmp_path: Path
) -> None:
    """Each receive dies before the job can record anything; the queue then dead-letters it. The
    next receive settles it: failed, slot freed, channels told, /retrain accepted again."""
    settings = training_settings(tiny_base, tmp_path, fakes, queue_visibility_s=VISIBILITY_S, queue_max_receives=2)
    seed_feedback(settings, with_bad=False)
    job_id = queue_job(settings)
    from core.queue import open_queue

    queue = open_queue(settings)
    for _ in range(settings.queue_max_receives):  # a worker takes it and dies at once, twice
        assert queue.receive(wait_s=3, visibility_s=VISIBILITY_S) is not None
        jobs.update_job_status(open_store(settings), job_id, state="running", progress=0.12)
        time.sleep(VISIBILITY_S + 0.2)
    outcomes = Worker(settings, show_progress=False).run(once=True, wait_s=0)
    assert [(o.job_id, o.outcome) for o in outcomes] == [(job_id, "failed")]
    store = open_store(settings)
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "failed" and "dead-letter queue" in status.message
    assert jobs.active_job_id(store) is None
    [text] = announcements(fakes, job_id)
    assert "Retraining failed" in text and "/retrain again" in text
    assert Worker(settings, show_progress=False).run(once=True, wait_s=0) == []  # settled once
    again = request_retrain(requested_by="slack:UADMIN", is_admin=True, reason="again", notify_targets=[],
                            settings=settings, store=store, queue=queue, force=True)
    assert again.status == "queued"


# --- chaos: real processes killed at random store writes ------------------------------------------

_CHAOS_WORKER = """
import os, sys
from core.store import LocalBlobStore
left = int(sys.argv[1])
original_put, original_delete = LocalBlobStore.put, LocalBlobStore.delete
def countdown(key):
    global left
    left -= 1
    sys.stdout.write(f"write {key}\\n")
    if left <= 0:
        sys.stdout.write(f"killed at {key}\\n"); sys.stdout.flush(); os._exit(137)
def put(self, key, data, *, if_absent=False):
    countdown(key)
    return original_put(self, key, data, if_absent=if_absent)
def delete(self, key):
    countdown(key)
    return original_delete(self, key)
LocalBlobStore.put, LocalBlobStore.delete = put, delete
from handlers.cli import main
sys.argv = ["echorag", "worker", "--no-progress", "--no-sync", "--once", "--wait-s", "3"]
main()
"""


def _worker_killed_at(write: int, data_dir: Path, values: dict[str, object]) -> list[str]:
    """Run one `echorag worker --once` that dies (os._exit, no clean-up) at its `write`-th store
    write; returns the keys it wrote, the last one being where it died (if it did)."""
    done = subprocess.run([sys.executable, "-c", _CHAOS_WORKER, str(write)], cwd=data_dir,
                          env=worker_env(data_dir, values), capture_output=True, text=True, timeout=240)
    assert done.returncode in (0, 137), done.stdout + done.stderr
    return [line.removeprefix("write ") for line in done.stdout.splitlines() if line.startswith("write ")]


def _new_job(tiny_base: Path, fakes: dict[str, FakeServer], data_dir: Path) -> tuple[Settings, dict[str, object], str]:
    values = training_values(tiny_base, fakes, queue_visibility_s=VISIBILITY_S, queue_max_receives=2)
    data_dir.mkdir()
    settings = make_settings(data_dir, **values)
    seed_feedback(settings, with_bad=False)
    return settings, values, queue_job(settings)


def test_chaos_workers_killed_at_random_points_never_leave_a_job_in_between(
    tiny_base: Path, fakes: dict[str, FakeServer], tmp_path: Path
) -> None:
    """Seeded. A first worker runs a job to the end, listing the store writes a job makes. Then,
    per trial, a fresh job whose worker dies at a random one of those writes (before the upload,
    inside it, twice after it, and once dying on both allowed receives), and a healthy worker after. Each job
    must end published-and-live or failed-and-announced, announced once, with no unfinished version."""
    rng = random.Random(20261203)
    _, values, _ = _new_job(tiny_base, fakes, tmp_path / "count")
    writes = _worker_killed_at(10**6, tmp_path / "count", values)
    uploads = [n for n, key in enumerate(writes, 1) if key.startswith("adapters/") and not key.endswith("CURRENT")]
    assert writes[-1] == jobs.ACTIVE_JOB_KEY and uploads, writes  # the slot is freed last
    before, after = range(1, uploads[0]), range(uploads[-1] + 1, len(writes) + 1)  # after: manifest … slot
    plans = [[rng.choice(before)], [rng.choice(uploads)], *([rng.choice(after)] for _ in range(2))]
    plans.append([rng.randint(1, len(writes)), rng.randint(1, len(writes))])
    for trial, plan in enumerate(plans):
        settings, values, job_id = _new_job(tiny_base, fakes, tmp_path / f"trial-{trial}")
        for write in plan:
            _worker_killed_at(write, settings.data_dir, values)
            time.sleep(VISIBILITY_S + 0.2)
        Worker(settings, show_progress=False).run(once=True, wait_s=3)
        Worker(settings, show_progress=False).run(once=True, wait_s=0)  # a dead letter is settled here
        store = open_store(settings)
        status = jobs.load_job_status(store, job_id)
        context = (trial, plan, [writes[n - 1] for n in plan], status)
        assert status is not None and status.state in ("published", "failed"), context
        told = announcements(fakes, job_id)
        assert len(told) == 1, (*context, told)
        registry = AdapterRegistry(store, settings.adapter_name)
        unfinished = [k for k in store.list(registry.prefix)
                      if k.endswith(CLAIM) and store.get(k.removesuffix(CLAIM) + MANIFEST) is None]
        assert unfinished == [], (*context, unfinished)
        if status.state == "published":
            assert registry.current() == status.adapter_version and "is now live" in told[0], context
        else:
            assert registry.current() is None and "failed" in told[0], context
        assert jobs.active_job_id(store) is None and open_queue_depth(settings) == 0, context
