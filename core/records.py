"""Answer records, feedback events and job status in the blob store (keys as in DESIGN.md).

Layout:
- `answers/dt=YYYY-MM-DD/<answer_id>.json` + `answers/by-id/<answer_id>` (holds the dated key, so a
  reaction finds its answer without knowing the date);
- `feedback/dt=YYYY-MM-DD/<feedback_id>.json`, written once (conditional write) so a replayed or
  retried platform event never adds a second record; `index/feedback-by-time/YYYY-MM-DD/<utc>_<id>`
  (empty) lets "new feedback since T" be counted with one listing that starts after T, instead of
  reading every event (day folders keep the local twin's listing as cheap as S3's StartAfter);
- `jobs/<job_id>.json` (JobStatus), `jobs/ACTIVE` (the one queued-or-running job: a lock taken
  with a conditional write, cleared by the worker), `jobs/LAST` (the most recently queued job).

Readers never crash on a bad record: corrupt JSON or an unknown schema is logged, skipped and
counted in a `SkipCounter`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from core.contracts import SCHEMA_VERSION, AnswerRecord, Contract, FeedbackEvent, JobStatus, utcnow
from core.store import BlobStore

log = logging.getLogger(__name__)

ANSWERS_PREFIX = "answers/dt="
ANSWER_INDEX_PREFIX = "answers/by-id/"
FEEDBACK_PREFIX = "feedback/dt="
FEEDBACK_TIME_INDEX_PREFIX = "index/feedback-by-time/"
JOBS_PREFIX = "jobs/"
ACTIVE_JOB_KEY = "jobs/ACTIVE"
LAST_JOB_KEY = "jobs/LAST"
SUPPORTED_SCHEMAS = frozenset({SCHEMA_VERSION})

C = TypeVar("C", bound=Contract)


@dataclass
class SkipCounter:
    """Records a reader skipped (corrupt JSON, unknown schema, invalid fields), by key."""

    count: int = 0
    keys: list[str] = field(default_factory=list)

    def add(self, key: str, reason: str) -> None:
        self.count += 1
        self.keys.append(key)
        log.warning("skipping record %s: %s", key, reason)


# --- keys ---------------------------------------------------------------------------------------


def _day(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d")


def _stamp(ts: datetime) -> str:
    """Sortable UTC time for key names (lexicographic order == time order)."""
    return ts.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def answer_key(record: AnswerRecord) -> str:
    return f"{ANSWERS_PREFIX}{_day(record.created_at)}/{record.answer_id}.json"


def feedback_key(event: FeedbackEvent) -> str:
    return f"{FEEDBACK_PREFIX}{_day(event.created_at)}/{event.feedback_id}.json"


def job_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.json"


def hash_user(platform: str, user_id: str) -> str:
    """Pseudonymous user id kept in records (raw platform user ids are never stored)."""
    return hashlib.sha256(f"echorag-user\x1f{platform}\x1f{user_id}".encode()).hexdigest()[:32]


# --- parsing ------------------------------------------------------------------------------------


def parse_record(data: bytes, model: type[C], *, key: str = "", skipped: SkipCounter | None = None) -> C | None:
    """Parse one stored record; None (counted in `skipped`) when corrupt or of an unknown schema."""
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        schema = raw.get("schema")
        if schema not in SUPPORTED_SCHEMAS:
            if skipped is not None:
                skipped.add(key, f"unknown schema {schema!r}")
            return None
        return model.model_validate(raw)
    except (ValueError, ValidationError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if skipped is not None:
            skipped.add(key, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return None


def _iter_records(
    store: BlobStore, prefix: str, model: type[C], skipped: SkipCounter | None, suffix: str = ".json"
) -> Iterator[C]:
    for key in store.list(prefix):
        if not key.endswith(suffix):
            continue
        data = store.get(key)
        if data is None:  # deleted between list and get
            continue
        record = parse_record(data, model, key=key, skipped=skipped)
        if record is not None:
            yield record


# --- answers ------------------------------------------------------------------------------------


def save_answer(store: BlobStore, record: AnswerRecord) -> str:
    """Write (or overwrite: the id is deterministic, so a retry rewrites the same record) an answer.

    The record goes in first and the by-id index after it, so the index never points at nothing.
    A re-save keeps the first dated key so one answer never lives in two partitions.
    """
    index_key = ANSWER_INDEX_PREFIX + record.answer_id
    existing = store.get(index_key)
    key = existing.decode() if existing else answer_key(record)
    store.put(key, record.to_json().encode())
    if existing is None:
        store.put(index_key, key.encode())
    return key


def load_answer(store: BlobStore, answer_id: str) -> AnswerRecord | None:
    """The answer record for `answer_id`, or None (not a bot answer, or an unreadable record)."""
    index = store.get(ANSWER_INDEX_PREFIX + answer_id)
    if index is None:
        return None
    key = index.decode()
    data = store.get(key)
    if data is None:
        log.warning("answer index %s points at missing %s", answer_id, key)
        return None
    return parse_record(data, AnswerRecord, key=key, skipped=SkipCounter())


def iter_answers(store: BlobStore, *, skipped: SkipCounter | None = None) -> Iterator[AnswerRecord]:
    """Every answer record (corrupt ones skipped and counted in `skipped`)."""
    yield from _iter_records(store, ANSWERS_PREFIX, AnswerRecord, skipped)


def count_answers(store: BlobStore) -> int:
    """Number of answers (by the id index: one listing, no reads)."""
    return sum(1 for _ in store.list(ANSWER_INDEX_PREFIX))


# --- feedback -----------------------------------------------------------------------------------


def _time_index_key(event: FeedbackEvent) -> str:
    return f"{FEEDBACK_TIME_INDEX_PREFIX}{_day(event.created_at)}/{_stamp(event.created_at)}_{event.feedback_id}"


def save_feedback(store: BlobStore, event: FeedbackEvent) -> bool:
    """Store a feedback event once. False = this event (same feedback_id) was already stored.

    The time index entry is derived from the stored record, so a retry after a crash between the
    two writes repairs the index instead of adding a second entry.
    """
    key = feedback_key(event)
    created = store.put(key, event.to_json().encode(), if_absent=True)
    stored = event
    if not created:
        data = store.get(key)
        parsed = parse_record(data, FeedbackEvent, key=key) if data is not None else None
        stored = parsed or event
    if stored.action == "added" and stored.label != 0:
        store.put(_time_index_key(stored), b"")
    return created


def iter_feedback(store: BlobStore, *, skipped: SkipCounter | None = None) -> Iterator[FeedbackEvent]:
    """Every feedback event (corrupt ones skipped and counted in `skipped`)."""
    yield from _iter_records(store, FEEDBACK_PREFIX, FeedbackEvent, skipped)


def count_feedback_since(store: BlobStore, since: datetime | None, *, limit: int | None = None) -> int:
    """Labelled reactions added after `since` (all when None); stops counting at `limit`."""
    # Keys sort by time (the day folder is a prefix of the stamp); "~" > "_" skips events at `since`.
    start_after = f"{FEEDBACK_TIME_INDEX_PREFIX}{_day(since)}/{_stamp(since)}~" if since else None
    count = 0
    for _ in store.list(FEEDBACK_TIME_INDEX_PREFIX, start_after=start_after):
        count += 1
        if limit is not None and count >= limit:
            break
    return count


class Vote(BaseModel):
    """One user's effective reaction on one answer (after removals; the latest reaction wins)."""

    user_hash: str
    label: int
    reaction: str
    at: datetime


class LabelledAnswer(BaseModel):
    """One training-input row: an answer joined with its users' effective votes."""

    answer: AnswerRecord
    label: int  # sign of the vote sum: +1, -1, or 0 for a tie
    positive: int
    negative: int
    votes: list[Vote]

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


def _event_time(event: FeedbackEvent) -> float:
    """Order events by the platform's event time when it has one (Slack ts), else by record time."""
    try:
        return float(event.event_ts)
    except ValueError:
        return event.created_at.timestamp()


def effective_votes(events: Iterable[FeedbackEvent]) -> dict[str, dict[str, Vote]]:
    """answer_id → user_hash → Vote. Removing an emoji retracts it; the latest still-present wins."""
    by_user: dict[tuple[str, str], list[FeedbackEvent]] = {}
    for event in events:
        by_user.setdefault((event.answer_id, event.user_hash), []).append(event)
    result: dict[str, dict[str, Vote]] = {}
    for (answer_id, user_hash), user_events in by_user.items():
        present: dict[str, tuple[float, FeedbackEvent]] = {}
        # On equal times an "added" sorts before "removed": a remove never precedes its add.
        for event in sorted(user_events, key=lambda e: (_event_time(e), e.action != "added", e.created_at)):
            if event.action == "added":
                present[event.reaction] = (_event_time(event), event)
            else:
                present.pop(event.reaction, None)
        if not present:
            continue
        _, latest = max(present.values(), key=lambda item: (item[0], item[1].created_at))
        if latest.label == 0:
            continue
        result.setdefault(answer_id, {})[user_hash] = Vote(
            user_hash=user_hash, label=latest.label, reaction=latest.reaction, at=latest.created_at
        )
    return result


def labelled_answers(store: BlobStore, *, skipped: SkipCounter | None = None) -> list[LabelledAnswer]:
    """The training input: every answer that has at least one effective vote, with its votes.

    Used by `echorag feedback export` and by the training dataset builder, so both see the same rows.
    """
    votes = effective_votes(iter_feedback(store, skipped=skipped))
    rows: list[LabelledAnswer] = []
    seen: set[str] = set()
    for answer in iter_answers(store, skipped=skipped):
        if answer.answer_id in seen or answer.answer_id not in votes:
            continue
        seen.add(answer.answer_id)
        user_votes = sorted(votes[answer.answer_id].values(), key=lambda v: v.at)
        positive = sum(1 for v in user_votes if v.label > 0)
        negative = sum(1 for v in user_votes if v.label < 0)
        label = (positive > negative) - (positive < negative)
        rows.append(
            LabelledAnswer(answer=answer, label=label, positive=positive, negative=negative, votes=user_votes)
        )
    return rows


@dataclass
class FeedbackSummary:
    """Counts for `echorag status`: effective votes by label, raw events, skipped records."""

    answers: int
    feedback: dict[str, int]  # "+1"/"-1" → effective votes (latest reaction per user and answer)
    events: int
    skipped: int


def feedback_summary(store: BlobStore) -> FeedbackSummary:
    skipped = SkipCounter()
    events = list(iter_feedback(store, skipped=skipped))
    votes = effective_votes(events)
    labels: Counter[str] = Counter({"+1": 0, "-1": 0})
    for user_votes in votes.values():
        for vote in user_votes.values():
            labels["+1" if vote.label > 0 else "-1"] += 1
    return FeedbackSummary(
        answers=count_answers(store), feedback=dict(labels), events=len(events), skipped=skipped.count
    )


# --- jobs ---------------------------------------------------------------------------------------


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
    yield from _iter_records(store, JOBS_PREFIX, JobStatus, skipped)


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
