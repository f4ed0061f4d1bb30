"""Retrain requests: who may ask, and the one-job-at-a-time rule every chat adapter goes through.

At most one training job is queued or running: `request_retrain` takes the `jobs/ACTIVE` slot
with a conditional write before it enqueues, and the worker frees it (`release_active_job`) when
the job ends. Feedback that arrives meanwhile stays counted (the retrain counter restarts at the
time the job was queued) and triggers the next job when it reaches RETRAIN_THRESHOLD. An admin's
request with no new effective votes since then is refused unless forced: it would only train on
the same feedback again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from core import jobs, records
from core.contracts import TERMINAL_STATES, JobStatus, NotifyTarget, Platform, TrainingJob, utcnow
from core.queue import JobQueue
from core.registry import AdapterRegistry, feedback_cutoff
from core.settings import Settings
from core.store import BlobStore

log = logging.getLogger(__name__)

THRESHOLD_REQUESTER = "threshold"
ORPHAN_LOCK_AGE = timedelta(minutes=15)  # grace before a slot may be judged abandoned


@dataclass(frozen=True)
class RetrainOutcome:
    """What to tell the person who asked: `message` is user-facing, in plain words."""

    status: Literal["queued", "already_queued", "nothing_new", "refused"]
    job_id: str | None
    message: str


FORCE_WORDS = frozenset({"force", "--force"})


def split_force(text: str) -> tuple[bool, str]:
    """`force docs changed` → (True, "docs changed"): how Slack's and the console's free-text
    `/retrain [force] [reason]` say "queue even without new ratings" (first word only, so a reason
    that merely mentions the word is not taken for it)."""
    first, _, rest = text.strip().partition(" ")
    if first.lower() in FORCE_WORDS:
        return True, rest.strip()
    return False, text.strip()


def is_admin_user(requested_by: str, settings: Settings) -> bool:
    """`requested_by` ("slack:U123") matches ADMIN_USER_IDS entries "slack:U123" or bare "U123"."""
    bare = requested_by.split(":", 1)[1] if ":" in requested_by else requested_by
    allowed = {entry.strip() for entry in settings.admin_user_ids}
    return requested_by in allowed or bare in allowed


def who_may_retrain(settings: Settings) -> str:
    admins = ", ".join(settings.admin_user_ids)
    listed = f"the admins in ADMIN_USER_IDS ({admins})" if admins else "admins (ADMIN_USER_IDS is empty)"
    return f"Only {listed} or Discord members with the Manage Server permission may start retraining."


def announce_targets(settings: Settings) -> list[NotifyTarget]:
    """The channels in ANNOUNCE_SLACK_CHANNEL / ANNOUNCE_DISCORD_CHANNEL."""
    targets: list[NotifyTarget] = []
    if settings.announce_slack_channel:
        targets.append(NotifyTarget(platform="slack", channel=settings.announce_slack_channel))
    if settings.announce_discord_channel:
        targets.append(NotifyTarget(platform="discord", channel=settings.announce_discord_channel))
    return targets


def default_notify_targets(settings: Settings, platform: Platform, channel: str) -> list[NotifyTarget]:
    """Announce channels from settings; without any, the channel where it happened."""
    return announce_targets(settings) or [NotifyTarget(platform=platform, channel=channel)]


def adapter_cutoff(settings: Settings, store: BlobStore) -> tuple[int | None, datetime | None]:
    """(current adapter version, time its training data ends); (None, None) before the first."""
    manifest = AdapterRegistry(store, settings.adapter_name).current_manifest()
    if manifest is None:
        return None, None
    return manifest.version, feedback_cutoff(manifest)


def new_feedback_since_adapter(settings: Settings, store: BlobStore) -> int:
    """Effective votes (distinct user and answer) cast since the current adapter's training snapshot."""
    _, cutoff = adapter_cutoff(settings, store)
    return records.count_votes_since(store, cutoff)


def _trigger_cutoff(settings: Settings, store: BlobStore) -> datetime | None:
    """The retrain counter counts from the later of the adapter's snapshot and the last queued job,
    so a job the gate rejected does not retrigger on every following reaction."""
    _, cutoff = adapter_cutoff(settings, store)
    last = jobs.last_job(store)
    if last is not None and (cutoff is None or last[1] > cutoff):
        return last[1]
    return cutoff


def _active_message(store: BlobStore, job_id: str) -> str:
    status = jobs.load_job_status(store, job_id)
    state: str = status.state if status else "queued"
    if status and status.state == "running":
        state = f"running, {status.progress:.0%}"
    return (
        f"A retraining job is already queued or running (job {job_id[:8]}, {state}). "
        "Feedback given meanwhile is kept and goes into the next run."
    )


def _nothing_new_message(settings: Settings, store: BlobStore, parent: int | None, force_hint: str) -> str:
    """Why nothing was queued, since when, and how to queue anyway."""
    adapter = f"adapter v{parent}" if parent is not None else "the base model"
    _, adapter_until = adapter_cutoff(settings, store)
    last = jobs.last_job(store)
    if last is not None and (adapter_until is None or last[1] > adapter_until):
        status = jobs.load_job_status(store, last[0])
        ended = f", {status.state}" if status is not None else ""
        since = f"the last retraining job (job {last[0][:8]}{ended}; {adapter} is live)"
    else:
        since = adapter
    return (
        f"No new ratings since {since}, so retraining would only learn the same feedback again. "
        f"React with 👍/👎 on answers first, or use `{force_hint}` to retrain anyway."
    )


def _clear_abandoned_slot(store: BlobStore, queue: JobQueue) -> bool:
    """Free the slot when its job can no longer end by itself: True if freed (or already free).

    That is: the job already ended but the slot was not released; or the slot is older than
    ORPHAN_LOCK_AGE and either the job never got a status (the requester died before sending) or
    the queue is empty, so its message is gone (dead-lettered after a worker crash on the last try).
    """
    lock = jobs.active_job_lock(store)
    if lock is None:
        return True
    job_id, acquired_at = lock
    status = jobs.load_job_status(store, job_id)
    if status is not None and status.state in TERMINAL_STATES:
        reason = f"job already {status.state}"
    elif acquired_at is not None and utcnow() - acquired_at <= ORPHAN_LOCK_AGE:
        return False
    elif status is None:
        reason = "no job status: the request never completed"
    elif queue.depth() == 0:
        reason = "its message left the queue (see the dead-letter queue)"
        jobs.update_job_status(store, job_id, state="failed", error=f"abandoned: {reason}")
    else:
        return False
    log.warning("freeing the retrain slot held by job %s: %s", job_id, reason)
    if job_id == "unknown":
        store.delete(jobs.ACTIVE_JOB_KEY)
        return True
    return jobs.release_active_job(store, job_id)


def _enqueue(
    *,
    requested_by: str,
    notify_targets: list[NotifyTarget],
    reason: str,
    settings: Settings,
    store: BlobStore,
    queue: JobQueue,
    min_new: int | None = None,
    refuse_if_nothing_new: bool = False,
    forced: bool = False,
    force_hint: str = "",
) -> RetrainOutcome | None:
    """Take the slot and enqueue. The votes are re-counted under the slot, so two racing requests
    judge the same count and only one queues: with `min_new` (threshold) None when short; with
    `refuse_if_nothing_new` (an admin who did not force) a "nothing_new" outcome when none."""
    job_id = uuid.uuid4().hex
    if not jobs.acquire_active_job(store, job_id):
        holder = jobs.active_job_id(store)
        if not (_clear_abandoned_slot(store, queue) and jobs.acquire_active_job(store, job_id)):
            holder = jobs.active_job_id(store) or holder or "unknown"
            return RetrainOutcome("already_queued", holder, _active_message(store, holder))
    previous_last = jobs.last_job(store)
    try:
        since = _trigger_cutoff(settings, store)
        new = records.count_votes_since(store, since)
        if min_new is not None and new < min_new:
            jobs.release_active_job(store, job_id)
            return None
        parent = AdapterRegistry(store, settings.adapter_name).current()
        if refuse_if_nothing_new and new == 0:
            jobs.release_active_job(store, job_id)
            log.info("retrain request by %s refused: no new ratings since %s", requested_by, since)
            return RetrainOutcome("nothing_new", None, _nothing_new_message(settings, store, parent, force_hint))
        now = utcnow()
        job = TrainingJob(
            job_id=job_id,
            requested_by=requested_by,
            reason=reason,
            notify_targets=notify_targets,
            parent_version=parent,
            created_at=now,
        )
        jobs.save_job_status(
            store,
            JobStatus(job_id=job_id, state="queued", requested_by=requested_by, message="waiting for the training worker"),
        )
        jobs.record_last_job(store, job_id, now)
        queue.send(job.to_json(), dedup_id=job_id, group_id="training")
    except Exception as exc:
        # Nothing was queued: free the slot and put the counter back so no feedback is skipped.
        # Clean-up is best effort; the original error is what the caller sees.
        try:
            if previous_last is not None:
                jobs.record_last_job(store, *previous_last)
            else:
                store.delete(jobs.LAST_JOB_KEY)
            jobs.update_job_status(store, job_id, state="failed", error=f"could not enqueue: {exc}")
            jobs.release_active_job(store, job_id)
        except Exception:
            log.exception("clean-up after a failed enqueue of job %s failed; the slot may need freeing", job_id)
        raise
    adapter = f"adapter v{parent}" if parent is not None else "the base model"
    where = " I'll post the result when it finishes." if notify_targets else ""
    ratings = "no new ratings" if new == 0 else "1 new rating" if new == 1 else f"{new} new ratings"
    note = ", forced" if forced else ""
    again = " (it retrains on the same feedback)" if new == 0 else ""
    message = f"Retraining queued (job {job_id[:8]}{note}): {ratings} since {adapter}{again}.{where}"
    log.info("queued training job %s for %s (%s%s)", job_id, requested_by, reason, note)
    return RetrainOutcome("queued", job_id, message)


def request_retrain(
    *,
    requested_by: str,
    is_admin: bool = False,
    notify_targets: list[NotifyTarget],
    reason: str,
    settings: Settings,
    store: BlobStore,
    queue: JobQueue,
    force: bool = False,
    force_hint: str = "/retrain force",
) -> RetrainOutcome:
    """An admin's retrain request (Slack/Discord `/retrain`, console, CLI). Non-admins are refused.

    Without new effective votes since the last job (or the adapter's snapshot) nothing is queued
    ("nothing_new") unless `force`: a job over the same feedback mostly wastes GPU time. The
    refusal tells the admin how to force it on their platform (`force_hint`)."""
    if not (is_admin or is_admin_user(requested_by, settings)):
        log.info("refused retrain request from %s", requested_by)
        return RetrainOutcome("refused", None, who_may_retrain(settings))
    outcome = _enqueue(
        requested_by=requested_by,
        notify_targets=notify_targets,
        reason=reason or "requested by an admin",
        settings=settings,
        store=store,
        queue=queue,
        refuse_if_nothing_new=not force,
        forced=force,
        force_hint=force_hint,
    )
    assert outcome is not None  # only threshold requests (min_new) can come back empty
    return outcome


def maybe_auto_retrain(
    *, settings: Settings, store: BlobStore, queue: JobQueue, notify_targets: list[NotifyTarget]
) -> RetrainOutcome | None:
    """Queue a job when RETRAIN_THRESHOLD new effective votes exist (0 disables). None: not due.

    Cheap when not due: one read of the slot, one listing of the votes since the last job. Concurrent callers race on the
    slot's conditional write, so a threshold crossing queues exactly one job.
    """
    threshold = settings.retrain_threshold
    if threshold <= 0 or jobs.active_job_id(store) is not None:
        return None
    due = records.count_votes_since(store, _trigger_cutoff(settings, store))
    if due < threshold:
        return None
    outcome = _enqueue(
        requested_by=THRESHOLD_REQUESTER,
        notify_targets=notify_targets,
        reason=f"{threshold} new ratings",
        settings=settings,
        store=store,
        queue=queue,
        min_new=threshold,
    )
    return outcome if outcome is not None and outcome.status == "queued" else None
