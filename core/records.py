"""Answer records and feedback events in the blob store (keys as in DESIGN.md).

Layout:
- `answers/dt=YYYY-MM-DD/<answer_id>.json` + `answers/by-id/<answer_id>` (holds the dated key, so a
  reaction finds its answer without knowing the date);
- `feedback/dt=YYYY-MM-DD/<feedback_id>.json`, written once (conditional write) so a replayed or
  retried platform event never adds a second record; `index/feedback-by-time/YYYY-MM-DD/<utc>_<id>`
  (empty) lets "new feedback since T" be counted with one listing that starts after T, instead of
  reading every event (day folders keep the local twin's listing as cheap as S3's StartAfter).

Training jobs' records (`jobs/…`) are in `core.jobs`.

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
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from core.contracts import SCHEMA_VERSION, AnswerRecord, Contract, FeedbackEvent, FeedbackReason
from core.store import BlobStore

log = logging.getLogger(__name__)

ANSWERS_PREFIX = "answers/dt="
ANSWER_INDEX_PREFIX = "answers/by-id/"
FEEDBACK_PREFIX = "feedback/dt="
FEEDBACK_TIME_INDEX_PREFIX = "index/feedback-by-time/"
FEEDBACK_ANSWER_INDEX_PREFIX = "index/feedback-by-answer/"  # <answer_id>/<feedback_id>: one answer's events
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


def iter_records(
    store: BlobStore, prefix: str, model: type[C], skipped: SkipCounter | None, suffix: str = ".json",
    *, start_after: str | None = None,
) -> Iterator[C]:
    for key in store.list(prefix, start_after=start_after):
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
    yield from iter_records(store, ANSWERS_PREFIX, AnswerRecord, skipped)


def count_answers(store: BlobStore) -> int:
    """Number of answers (by the id index: one listing, no reads)."""
    return sum(1 for _ in store.list(ANSWER_INDEX_PREFIX))


# --- feedback -----------------------------------------------------------------------------------


def _time_index_key(event: FeedbackEvent) -> str:
    """`<day>/<stamp>_<feedback_id>.<answer_id>.<user_hash>.<a|r>`: the listing alone tells whose
    vote on which answer it was, and whether it was cast or withdrawn."""
    vote = f"{event.feedback_id}.{event.answer_id}.{event.user_hash}.{event.action[0]}"
    return f"{FEEDBACK_TIME_INDEX_PREFIX}{_day(event.created_at)}/{_stamp(event.created_at)}_{vote}"


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
    if stored.label != 0:
        # by answer first: whoever lists the time index (retrieval feedback) then finds the event here
        store.put(f"{FEEDBACK_ANSWER_INDEX_PREFIX}{stored.answer_id}/{stored.feedback_id}", key.encode())
        store.put(_time_index_key(stored), b"")
    return created


def answer_votes(store: BlobStore, answer_id: str) -> dict[str, Vote]:
    """One answer's effective votes (user_hash → Vote), read through its by-answer index: what a
    vote on it means now, after retractions and flips (the latest reaction wins)."""
    events = []
    for entry in store.list(f"{FEEDBACK_ANSWER_INDEX_PREFIX}{answer_id}/"):
        pointer = store.get(entry)
        data = store.get(pointer.decode()) if pointer else None
        event = parse_record(data, FeedbackEvent, key=entry) if data is not None else None
        if event is not None:
            events.append(event)
    return effective_votes(events).get(answer_id, {})


def feedback_entries_after(store: BlobStore, start_after: str | None) -> Iterator[tuple[str, str]]:
    """(time-index key, answer_id) of the votes cast or withdrawn after `start_after` (a key of
    this index; None: from the start), oldest first: one listing, no reads."""
    for key in store.list(FEEDBACK_TIME_INDEX_PREFIX, start_after=start_after):
        parts = key.rsplit("/", 1)[-1].partition("_")[2].split(".")
        if len(parts) == 4:
            yield key, parts[1]


def iter_feedback(store: BlobStore, *, skipped: SkipCounter | None = None) -> Iterator[FeedbackEvent]:
    """Every feedback event (corrupt ones skipped and counted in `skipped`)."""
    yield from iter_records(store, FEEDBACK_PREFIX, FeedbackEvent, skipped)


def count_votes_since(store: BlobStore, since: datetime | None) -> int:
    """Effective votes cast after `since` (all when None): distinct (user, answer) pairs whose
    latest reaction since then adds a vote. One person toggling 👍 five times is one vote, or none
    when the last toggle removed it. One listing of the time index, no reads."""
    # Keys sort by time (the day folder is a prefix of the stamp); "~" > "_" skips events at `since`.
    start_after = f"{FEEDBACK_TIME_INDEX_PREFIX}{_day(since)}/{_stamp(since)}~" if since else None
    latest: dict[str, bool] = {}
    for key in store.list(FEEDBACK_TIME_INDEX_PREFIX, start_after=start_after):
        entry = key.rsplit("/", 1)[-1].partition("_")[2]
        parts = entry.split(".")
        if len(parts) == 4:
            latest[f"{parts[1]}.{parts[2]}"] = parts[3] == "a"
        else:  # an entry from before the index named the vote: an added event of its own
            latest[entry] = True
    return sum(latest.values())


class Vote(BaseModel):
    """One user's effective reaction on one answer (after removals; the latest reaction wins)."""

    user_hash: str
    label: int
    reaction: str
    at: datetime
    reason: FeedbackReason | None = None
    reason_text: str = ""


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
            user_hash=user_hash, label=latest.label, reaction=latest.reaction, at=latest.created_at,
            reason=latest.reason, reason_text=latest.reason_text,
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
