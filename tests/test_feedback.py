"""Reactions → feedback → retrain jobs, on the local twins and on S3 + SQS over HTTP (moto).

One suite (~370 lines): the same parametrised backends for every rule of the loop, read together.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from core import jobs, records
from core.contracts import (
    AdapterManifest,
    AnswerRecord,
    FeedbackEvent,
    JobStatus,
    NotifyTarget,
    Platform,
    ReactionAction,
    TrainingJob,
    make_answer_id,
)
from core.errors import QueueError
from core.feedback import emoji_label, normalize_emoji, record_reaction
from core.queue import JobQueue, SqsQueue, open_queue
from core.registry import FEEDBACK_CUTOFF_KEY, AdapterRegistry
from core.retrain import request_retrain
from core.settings import Settings
from core.store import BlobStore, open_store

CHANNEL = "C0FEED"


@pytest.fixture
def settings(backend_settings: Settings) -> Settings:
    return backend_settings.model_copy(update={"admin_user_ids": ["slack:UADMIN", "4242"], "retrain_threshold": 5})


@pytest.fixture
def store(settings: Settings) -> BlobStore:
    return open_store(settings)


@pytest.fixture
def queue(settings: Settings) -> JobQueue:
    return open_queue(settings)


def post_answer(store: BlobStore, message_id: str, *, platform: Platform = "slack", text: str = "연차는 15일입니다.") -> str:
    """What the agent does when it posts an answer: write its record."""
    record = AnswerRecord(
        answer_id=make_answer_id(platform, CHANNEL, message_id),
        platform=platform,
        channel=CHANNEL,
        message_id=message_id,
        question="연차는 며칠인가요?",
        answer=text,
    )
    records.save_answer(store, record)
    return record.answer_id


def react(settings: Settings, store: BlobStore, queue: JobQueue, *, user: str, emoji: str,
          action: ReactionAction = "added", message_id: str = "1700000000.000100",
          event_ts: str = "1700000001.000001", platform: Platform = "slack") -> FeedbackEvent | None:
    return record_reaction(
        platform=platform, channel=CHANNEL, message_id=message_id, user_id=user, reaction=emoji,
        action=action, event_ts=event_ts, settings=settings, store=store, queue=queue,
    )


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("+1", "+1"), ("thumbsup", "+1"), (":+1:", "+1"), ("+1::skin-tone-2", "+1"), ("👍", "+1"), ("👍🏽", "+1"),
        ("-1", "-1"), ("thumbsdown", "-1"), ("👎🏿", "-1"), ("white_check_mark", "white_check_mark"),
        ("✅", "white_check_mark"), ("💯", "100"), ("100", "100"), ("❌", "x"), ("x", "x"), ("Tada", "tada"),
        ("❤️", "heart"),
    ],
)
def test_emoji_names_normalise(raw: str, name: str) -> None:
    assert normalize_emoji(raw) == name


def test_emoji_labels_follow_settings(local_settings: Settings) -> None:
    assert [emoji_label(e, local_settings) for e in ["👍", "✅", "💯", "+1::skin-tone-5", "👎", "❌", "tada", "eyes"]] == [
        1, 1, 1, 1, -1, -1, None, None,
    ]
    custom = local_settings.model_copy(update={"positive_emoji": ["🎉"], "negative_emoji": ["thumbsdown"]})
    assert (emoji_label("tada", custom), emoji_label("👎", custom), emoji_label("+1", custom)) == (1, -1, None)


def test_same_reaction_delivered_three_times_is_one_record(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    answer_id = post_answer(store, "1700000000.000100")
    events = [react(settings, store, queue, user="U1", emoji="+1") for _ in range(3)]
    assert all(e is not None and e.answer_id == answer_id for e in events)
    assert len({e.feedback_id for e in events if e}) == 1
    assert len(list(records.iter_feedback(store))) == 1
    assert records.count_votes_since(store, None) == 1


def test_add_then_remove_is_retracted(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    post_answer(store, "1700000000.000100")
    react(settings, store, queue, user="U1", emoji="+1", event_ts="1700000001.0")
    assert [row.label for row in records.labelled_answers(store)] == [1]
    react(settings, store, queue, user="U1", emoji="+1", action="removed", event_ts="1700000002.0")
    assert records.labelled_answers(store) == []
    summary = records.feedback_summary(store)
    assert summary.feedback == {"+1": 0, "-1": 0} and summary.events == 2


def test_latest_reaction_of_a_user_wins(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    post_answer(store, "1700000000.000100")
    react(settings, store, queue, user="U1", emoji="👍", event_ts="1700000001.0")
    react(settings, store, queue, user="U1", emoji="x", event_ts="1700000002.0")
    react(settings, store, queue, user="U2", emoji="white_check_mark", event_ts="1700000003.0")
    [row] = records.labelled_answers(store)
    assert (row.label, row.positive, row.negative) == (0, 1, 1)  # U1 now -1, U2 +1
    # U1 takes the ❌ back: their 👍 (still on the message) counts again.
    react(settings, store, queue, user="U1", emoji="❌", action="removed", event_ts="1700000004.0")
    [row] = records.labelled_answers(store)
    assert (row.label, row.positive, row.negative) == (1, 2, 0)
    assert records.feedback_summary(store).feedback == {"+1": 2, "-1": 0}


def test_reactions_outside_answers_or_the_emoji_map_are_ignored(
    settings: Settings, store: BlobStore, queue: JobQueue
) -> None:
    post_answer(store, "1700000000.000100")
    assert react(settings, store, queue, user="U1", emoji="+1", message_id="1699999999.000001") is None
    assert react(settings, store, queue, user="U1", emoji="eyes") is None
    assert react(settings, store, queue, user="U1", emoji="+1", platform="discord") is None  # other platform's id
    assert list(records.iter_feedback(store)) == []


def test_user_ids_are_stored_hashed(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    post_answer(store, "1700000000.000100")
    event = react(settings, store, queue, user="U0SECRETUSER", emoji="+1")
    assert event is not None and event.user_hash == records.hash_user("slack", "U0SECRETUSER")
    for key in store.list(""):
        assert b"U0SECRETUSER" not in (store.get(key) or b""), key


def _queued_jobs(queue: JobQueue) -> list[TrainingJob]:
    jobs = []
    while (message := queue.receive(wait_s=0, visibility_s=60)) is not None:
        jobs.append(TrainingJob.model_validate_json(message.body))
        queue.delete(message.receipt_handle)
    return jobs


def test_threshold_crossing_under_concurrent_feedback_enqueues_exactly_one_job(
    settings: Settings, store: BlobStore, queue: JobQueue
) -> None:
    post_answer(store, "1700000000.000100")
    barrier = threading.Barrier(12)
    errors: list[BaseException] = []

    def one_user(n: int) -> None:
        try:
            barrier.wait()
            react(settings, store, queue, user=f"U{n}", emoji="+1", event_ts=f"1700000001.{n:06d}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one_user, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert queue.depth() == 1
    active = jobs.active_job_id(store)
    [job] = _queued_jobs(queue)
    assert job.job_id == active and job.requested_by == "threshold"
    status = jobs.load_job_status(store, job.job_id)
    assert status is not None and status.state == "queued"
    assert len(list(records.iter_feedback(store))) == 12  # nothing lost while the job was queued


def test_one_user_toggling_a_vote_never_fires_the_threshold(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    """The threshold counts effective, distinct (user, answer) votes, not reaction events."""
    assert settings.retrain_threshold == 5
    post_answer(store, "1700000000.000100")
    for n in range(6):  # 👍 on, 👍 off, … : six events, one person
        react(settings, store, queue, user="U1", emoji="+1", action="added" if n % 2 == 0 else "removed",
              event_ts=f"1700000001.{n}")
    assert queue.depth() == 0 and records.count_votes_since(store, None) == 0
    other = post_answer(store, "1700000000.000200")
    for n in range(4):  # the same person on a second answer, four other people on the first
        react(settings, store, queue, user=f"U{n + 2}", emoji="+1", event_ts=f"1700000002.{n}")
    react(settings, store, queue, user="U1", emoji="+1", message_id="1700000000.000200", event_ts="1700000003.0")
    assert records.count_votes_since(store, None) == 5 and other
    assert queue.depth() == 1  # five distinct votes: now it is due


def test_feedback_during_a_run_is_picked_up_by_the_next_job(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    post_answer(store, "1700000000.000100")
    for n in range(5):
        react(settings, store, queue, user=f"U{n}", emoji="+1", event_ts=f"1700000001.{n}")
    [first] = _queued_jobs(queue)
    for n in range(5, 10):  # arrives while the first job runs: no second job yet
        react(settings, store, queue, user=f"U{n}", emoji="-1", event_ts=f"1700000002.{n}")
    assert queue.depth() == 0
    # The worker ends the job (the gate rejected it: CURRENT stays) and frees the slot.
    jobs.update_job_status(store, first.job_id, state="rejected", progress=1.0)
    assert jobs.release_active_job(store, first.job_id) is True
    # The next labelled reaction sees 5+ new since the first job was queued: one new job.
    react(settings, store, queue, user="U99", emoji="+1", event_ts="1700000003.0")
    [second] = _queued_jobs(queue)
    assert second.job_id != first.job_id
    jobs.release_active_job(store, second.job_id)
    # A rejected job does not retrigger on the next reaction: the counter restarted.
    react(settings, store, queue, user="U100", emoji="+1", event_ts="1700000004.0")
    assert queue.depth() == 0


def test_retrain_is_for_admins_only(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    target = [NotifyTarget(platform="slack", channel=CHANNEL)]
    post_answer(store, "1700000000.000100")
    react(settings, store, queue, user="U1", emoji="+1")  # one new rating: an admin's request is worth a job
    refused = request_retrain(requested_by="slack:U123", notify_targets=target, reason="", settings=settings,
                              store=store, queue=queue)
    assert refused.status == "refused" and refused.job_id is None
    assert "slack:UADMIN" in refused.message and "ADMIN_USER_IDS" in refused.message
    assert queue.depth() == 0
    queued = request_retrain(requested_by="slack:UADMIN", notify_targets=target, reason="docs changed",
                             settings=settings, store=store, queue=queue)
    assert queued.status == "queued" and queued.job_id
    for who, is_admin in [("discord:4242", False), ("discord:777", True), ("slack:UADMIN", False)]:
        again = request_retrain(requested_by=who, is_admin=is_admin, notify_targets=target, reason="",
                                settings=settings, store=store, queue=queue)
        assert again.status == "already_queued" and again.job_id == queued.job_id
        assert "already queued or running" in again.message
    [job] = _queued_jobs(queue)
    assert (job.job_id, job.requested_by, job.reason, job.notify_targets) == (
        queued.job_id, "slack:UADMIN", "docs changed", target)


def test_an_admin_retrain_without_new_votes_is_refused_unless_forced(
    settings: Settings, store: BlobStore, queue: JobQueue
) -> None:
    ask = partial(request_retrain, requested_by="slack:UADMIN", notify_targets=[], reason="", settings=settings,
                  store=store, queue=queue)
    refused = ask()
    assert (refused.status, refused.job_id) == ("nothing_new", None)
    assert refused.message.startswith("No new ratings since the base model")
    assert "`/retrain force`" in refused.message
    assert queue.depth() == 0 and jobs.active_job_id(store) is None and jobs.last_job(store) is None
    assert list(jobs.iter_job_statuses(store)) == []  # no trace of a job that was never queued
    hinted = ask(force_hint="echorag retrain --force")
    assert hinted.status == "nothing_new" and "`echorag retrain --force`" in hinted.message

    forced = ask(force=True)
    assert forced.status == "queued" and forced.job_id is not None
    assert f"(job {forced.job_id[:8]}, forced): no new ratings since the base model" in forced.message
    [job] = _queued_jobs(queue)
    assert job.job_id == forced.job_id and jobs.active_job_id(store) == forced.job_id


def test_new_votes_after_a_job_make_the_next_request_queue_again(
    settings: Settings, store: BlobStore, queue: JobQueue
) -> None:
    ask = partial(request_retrain, requested_by="slack:UADMIN", notify_targets=[], reason="", settings=settings,
                  store=store, queue=queue)
    post_answer(store, "1700000000.000100")
    react(settings, store, queue, user="U1", emoji="+1")
    first = ask()
    assert first.status == "queued" and first.job_id is not None and "1 new rating since" in first.message
    [_] = _queued_jobs(queue)
    jobs.update_job_status(store, first.job_id, state="rejected", progress=1.0)  # the worker ends it
    jobs.release_active_job(store, first.job_id)

    again = ask()  # the same feedback: the counter restarted when the first job was queued
    assert again.status == "nothing_new" and queue.depth() == 0 and jobs.active_job_id(store) is None
    assert f"since the last retraining job (job {first.job_id[:8]}, rejected" in again.message

    react(settings, store, queue, user="U2", emoji="-1", event_ts="1700000002.000001")
    second = ask()
    assert second.status == "queued" and second.job_id not in (None, first.job_id)
    assert "1 new rating since the base model" in second.message and "forced" not in second.message
    [job] = _queued_jobs(queue)
    assert job.job_id == second.job_id


def test_nothing_new_names_the_live_adapter(settings: Settings, store: BlobStore, queue: JobQueue,
                                            tmp_path: Path) -> None:
    post_answer(store, "1700000000.000100")
    react(settings, store, queue, user="U1", emoji="+1")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"w")
    snapshot = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()  # v1 was trained on that vote
    AdapterRegistry(store, settings.adapter_name).publish(
        tmp_path / "adapter", AdapterManifest(name="x", version=0, dataset={FEEDBACK_CUTOFF_KEY: snapshot}),
        promote=True,
    )
    outcome = request_retrain(requested_by="slack:UADMIN", notify_targets=[], reason="", settings=settings,
                              store=store, queue=queue)
    assert outcome.status == "nothing_new" and outcome.message.startswith("No new ratings since adapter v1")


def test_racing_admin_requests_queue_one_job_and_refusals_free_the_slot(
    settings: Settings, store: BlobStore, queue: JobQueue
) -> None:
    """The count is taken under the slot: of simultaneous requests over one new vote exactly one
    queues; once that job ended, simultaneous requests over the same vote queue nothing (each is
    refused, or meets another one counting under the slot) and none of them keeps the slot."""
    post_answer(store, "1700000000.000100")
    react(settings, store, queue, user="U1", emoji="+1")

    def race() -> list[str]:
        barrier = threading.Barrier(8)
        statuses: list[str] = []
        errors: list[BaseException] = []

        def one() -> None:
            try:
                barrier.wait()
                statuses.append(request_retrain(requested_by="slack:UADMIN", notify_targets=[], reason="",
                                                settings=settings, store=store, queue=queue).status)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        return sorted(statuses)

    assert race() == ["already_queued"] * 7 + ["queued"]
    [job] = _queued_jobs(queue)
    jobs.update_job_status(store, job.job_id, state="published", progress=1.0)
    jobs.release_active_job(store, job.job_id)
    statuses = race()
    assert "nothing_new" in statuses and set(statuses) <= {"nothing_new", "already_queued"}
    assert queue.depth() == 0 and jobs.active_job_id(store) is None
    assert [s.job_id for s in jobs.iter_job_statuses(store)] == [job.job_id]


def test_slot_of_an_ended_job_is_reclaimed(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    assert jobs.acquire_active_job(store, "crashed-job")
    jobs.save_job_status(store, JobStatus(job_id="crashed-job", state="running"))
    busy = request_retrain(requested_by="slack:UADMIN", notify_targets=[], reason="", settings=settings,
                           store=store, queue=queue)
    assert busy.status == "already_queued" and busy.job_id == "crashed-job"
    jobs.update_job_status(store, "crashed-job", state="failed", error="worker died")  # never released
    outcome = request_retrain(requested_by="slack:UADMIN", notify_targets=[], reason="", settings=settings,
                              store=store, queue=queue, force=True)
    assert outcome.status == "queued" and jobs.active_job_id(store) == outcome.job_id


def test_a_failed_enqueue_frees_the_slot_and_loses_nothing(settings: Settings, store: BlobStore, moto_server: str) -> None:
    broken = SqsQueue(f"{moto_server}/123456789012/gone.fifo", max_attempts=1)
    with pytest.raises(QueueError, match=r"gone\.fifo"):
        request_retrain(requested_by="slack:UADMIN", notify_targets=[], reason="", settings=settings,
                        store=store, queue=broken, force=True)
    assert jobs.active_job_id(store) is None
    assert jobs.last_job(store) is None
    failed = [s for s in jobs.iter_job_statuses(store) if s.state == "failed"]
    assert len(failed) == 1 and "could not enqueue" in (failed[0].error or "")


def _hold_slot(store: BlobStore, job_id: str, minutes_ago: int) -> None:
    acquired = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    store.put(jobs.ACTIVE_JOB_KEY, json.dumps({"job_id": job_id, "acquired_at": acquired.isoformat()}).encode())


def test_slot_of_a_job_whose_message_is_gone_is_reclaimed(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    jobs.save_job_status(store, JobStatus(job_id="lost-job", state="running"))
    _hold_slot(store, "lost-job", minutes_ago=5)  # young: the worker may still be on it
    ask = partial(request_retrain, requested_by="slack:UADMIN", notify_targets=[], reason="", settings=settings,
                  store=store, force=True)
    assert ask(queue=queue).status == "already_queued"
    queue.send("message of the running job", dedup_id="lost-job")
    _hold_slot(store, "lost-job", minutes_ago=30)  # old, but its message is still in the queue
    assert ask(queue=queue).status == "already_queued"
    message = queue.receive(wait_s=1)
    assert message is not None
    queue.delete(message.receipt_handle)  # gone (e.g. dead-lettered after the worker crashed)
    outcome = ask(queue=queue)
    assert outcome.status == "queued" and jobs.active_job_id(store) == outcome.job_id
    lost = jobs.load_job_status(store, "lost-job")
    assert lost is not None and lost.state == "failed" and "left the queue" in (lost.error or "")


def test_slot_of_a_request_that_died_before_sending_is_reclaimed(
    settings: Settings, store: BlobStore, queue: JobQueue
) -> None:
    _hold_slot(store, "never-sent", minutes_ago=30)
    outcome = request_retrain(requested_by="slack:UADMIN", notify_targets=[], reason="", settings=settings,
                              store=store, queue=queue, force=True)
    assert outcome.status == "queued"


def test_a_reaction_lists_only_feedback_newer_than_the_adapter(aws_settings: Settings, tmp_path: Path) -> None:
    """The threshold check must not grow with all feedback ever given: one S3 LIST per reaction,
    starting after the adapter's snapshot time, and none while a job is queued or running."""
    settings = aws_settings.model_copy(update={"retrain_threshold": 5})
    store, queue = open_store(settings), open_queue(settings)
    answer_id = post_answer(store, "1700000000.000100")
    old = datetime.now(UTC) - timedelta(days=3)
    for n in range(40):  # feedback the current adapter was already trained on
        records.save_feedback(store, FeedbackEvent(
            feedback_id=f"old{n}", answer_id=answer_id, platform="slack", channel=CHANNEL,
            message_id="1700000000.000100", user_hash=f"u{n}", reaction="+1", label=1, action="added",
            created_at=old + timedelta(seconds=n)))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"w")
    AdapterRegistry(store, settings.adapter_name).publish(
        tmp_path / "adapter",
        AdapterManifest(name="x", version=0, dataset={FEEDBACK_CUTOFF_KEY: (old + timedelta(days=1)).isoformat()}),
        promote=True,
    )
    listed: list[int] = []
    store.client.meta.events.register(  # type: ignore[attr-defined]
        "after-call.s3.ListObjectsV2", lambda parsed, **_: listed.append(int(parsed.get("KeyCount", 0)))
    )
    for n in range(4):
        listed.clear()
        react(settings, store, queue, user=f"NEW{n}", emoji="+1", event_ts=f"1700000009.{n}")
        assert listed == [n + 1]  # one LIST, holding only the reactions since the adapter
    listed.clear()
    react(settings, store, queue, user="NEW4", emoji="+1", event_ts="1700000009.4")  # the 5th: threshold
    assert queue.depth() == 1 and jobs.active_job_id(store) is not None
    listed.clear()
    react(settings, store, queue, user="NEW5", emoji="+1", event_ts="1700000009.5")
    assert listed == []  # a job is queued: no counting at all


def test_corrupt_job_markers_never_break_a_reaction(settings: Settings, store: BlobStore, queue: JobQueue) -> None:
    post_answer(store, "1700000000.000100")
    store.put(jobs.LAST_JOB_KEY, b"{half a write")
    assert jobs.last_job(store) is None
    for n in range(5):
        assert react(settings, store, queue, user=f"U{n}", emoji="+1", event_ts=f"1700000001.{n}") is not None
    [job] = _queued_jobs(queue)  # the threshold still works, and the counter marker is whole again
    assert jobs.last_job(store) is not None and jobs.last_job(store)[0] == job.job_id  # type: ignore[index]
    jobs.release_active_job(store, job.job_id)
    store.put(jobs.ACTIVE_JOB_KEY, b"\xff not json")
    assert jobs.active_job_id(store) == "unknown"
    assert react(settings, store, queue, user="U9", emoji="-1", event_ts="1700000002.0") is not None
