"""Training jobs in the blob store: each job's status, the one-job-at-a-time slot, the last job.

Layout: `jobs/<job_id>.json` (JobStatus), `jobs/ACTIVE` (the one queued-or-running job: a lock
taken with a conditional write, cleared by the worker), `jobs/LAST` (the most recently queued job,
where the retrain counter restarts).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from core.contracts import JobStatus, utcnow
from core.records import SkipCounter, iter_records, parse_record
from core.store import BlobStore

log = logging.getLogger(__name__)

JOBS_PREFIX = "jobs/"
ACTIVE_JOB_KEY = "jobs/ACTIVE"
LAST_JOB_KEY = "jobs/LAST"


def job_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.json"


def save_job_status(store: BlobStore, status: JobStatus) -> JobStatus:
    """Write a job's status (stamps `updated_at`)."""
    status = status.model_copy(update={"updated_at": utcnow()})
    store.put(job_key(status.job_id), status.to_json().encode())
    return status


def load_job_status(store: BlobStore, job_id: str) -> JobStatus | None:
    data = store.get(job_key(job_id))
    if data is None:
        return None
    return parse_record(data, JobStatus, key=job_key(job_id), skipped=SkipCounter())


def update_job_status(store: BlobStore, job_id: str, **changes: Any) -> JobStatus:
    """Read-modify-write a job's status: `update_job_status(store, id, state="running", progress=0.3)`.

    Only the worker that holds the job writes its status, so no conditional write is needed.
    """
    current = load_job_status(store, job_id) or JobStatus(job_id=job_id)
    updated = current.model_validate({**current.model_dump(), **changes})
    return save_job_status(store, updated)


def iter_job_statuses(store: BlobStore, *, skipped: SkipCounter | None = None) -> Iterator[JobStatus]:
    yield from iter_records(store, JOBS_PREFIX, JobStatus, skipped)


def acquire_active_job(store: BlobStore, job_id: str) -> bool:
    """Take the single queued-or-running slot for `job_id` (a conditional write). False: taken."""
    body = json.dumps({"job_id": job_id, "acquired_at": utcnow().isoformat()}).encode()
    return store.put(ACTIVE_JOB_KEY, body, if_absent=True)


def _read_job_marker(store: BlobStore, key: str, time_field: str) -> tuple[str, datetime | None] | None:
    """(job_id, time) from `jobs/ACTIVE` or `jobs/LAST`; None when absent. Never raises on bad
    content: an unreadable job id reads as "unknown", an unreadable time as None (both logged)."""
    data = store.get(key)
    if data is None:
        return None
    try:
        raw = json.loads(data)
        job_id = str(raw["job_id"])
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable %s: %r", key, data[:200])
        return "unknown", None
    try:
        return job_id, datetime.fromisoformat(raw[time_field])
    except (ValueError, KeyError, TypeError):
        log.warning("%s has no readable %s", key, time_field)
        return job_id, None


def active_job_lock(store: BlobStore) -> tuple[str, datetime | None] | None:
    """(job_id, acquired_at) of the slot holder, or None when free. An unreadable lock counts as
    held by "unknown" (the retrain request clears it once it is old)."""
    return _read_job_marker(store, ACTIVE_JOB_KEY, "acquired_at")


def active_job_id(store: BlobStore) -> str | None:
    """The job holding the queued-or-running slot, or None."""
    lock = active_job_lock(store)
    return lock[0] if lock else None


def release_active_job(store: BlobStore, job_id: str) -> bool:
    """Free the slot if `job_id` holds it (the worker calls this when a job ends, any outcome).

    Returns False (and leaves the lock alone) when another job holds it or nobody does.
    """
    holder = active_job_id(store)
    if holder != job_id:
        return False
    store.delete(ACTIVE_JOB_KEY)
    return True


def record_last_job(store: BlobStore, job_id: str, queued_at: datetime) -> None:
    store.put(LAST_JOB_KEY, json.dumps({"job_id": job_id, "queued_at": queued_at.isoformat()}).encode())


def last_job(store: BlobStore) -> tuple[str, datetime] | None:
    """(job_id, queued_at) of the most recently queued job, or None. An unreadable `jobs/LAST` reads
    as None (logged): the counter then runs from the adapter's snapshot until the next job rewrites it."""
    marker = _read_job_marker(store, LAST_JOB_KEY, "queued_at")
    if marker is None or marker[1] is None:
        return None
    return marker[0], marker[1]
