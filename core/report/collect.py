"""The report's numbers, read from the store's records (answers, feedback, jobs, adapters).

Only the partitions inside the window are read: answers and feedback are kept in day folders, so
`--since 30d` lists from that day on (`start_after`), whatever the store's age. Votes are the
effective ones (`records.effective_votes`: a person's latest reaction per answer), the same as
`echorag status`, the retrain counter and training see.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter
from typing import Any, TypeVar

from core import jobs
from core.contracts import AnswerRecord, FeedbackEvent
from core.records import (
    ANSWERS_PREFIX,
    FEEDBACK_PREFIX,
    SkipCounter,
    Vote,
    effective_votes,
    iter_records,
)
from core.registry import AdapterRegistry
from core.report.gaps import Gap, GapQuestion, group_gaps
from core.store import BlobStore

T = TypeVar("T", AnswerRecord, FeedbackEvent)
Progress = Callable[[str], None]


@dataclass
class Counts:
    """Questions and effective votes of one slice (a day, a platform, a knowledge space)."""

    questions: int = 0
    abstained: int = 0
    up: int = 0
    down: int = 0

    @property
    def answered(self) -> int:
        return self.questions - self.abstained


@dataclass(frozen=True)
class Cited:
    """A document (section "") or one of its sections, and how many answers cited it."""

    space: str
    title: str
    source: str
    section: str
    answers: int


@dataclass(frozen=True)
class AdapterRow:
    """A published version, or a rejected job's candidate (version None), with its gate numbers."""

    label: str
    at: datetime
    live: bool
    published: bool
    before: dict[str, float]
    after: dict[str, float]
    regressions: list[dict[str, Any]]
    loss_curve: list[float]
    note: str = ""


@dataclass(frozen=True)
class FeedbackEffect:
    """Answers that cited a passage earlier votes moved up, and how people rated them."""

    lifted_answers: int
    lifted_up: int
    lifted_down: int
    other_up: int
    other_down: int


@dataclass
class ReportData:
    since: datetime
    until: datetime
    totals: Counts
    by_day: dict[date, Counts]
    by_platform: dict[str, Counts]
    by_space: dict[str, Counts]
    gaps: list[Gap]
    reasons: Counter[str]
    cited_documents: list[Cited]
    cited_sections: list[Cited]
    never_cited: list[Cited] | None  # None: the knowledge base could not be listed
    adapters: list[AdapterRow]
    feedback_effect: FeedbackEffect
    skipped: int = 0
    notes: list[str] = field(default_factory=list)


def _since_partition(store: BlobStore, prefix: str, model: type[T], since: datetime, skipped: SkipCounter,
                     progress: Progress | None, what: str) -> Iterator[T]:
    """Records under `prefix` (day-partitioned `dt=YYYY-MM-DD/`) from `since`'s day on."""
    start_after = f"{prefix}{(since.date() - timedelta(days=1)).isoformat()}~"
    for count, record in enumerate(iter_records(store, prefix, model, skipped, start_after=start_after), 1):
        if progress and count % 500 == 0:
            progress(f"read {count} {what}")
        yield record


def _spaces_of(answer: AnswerRecord) -> list[str]:
    """The knowledge spaces an answer drew on: its cited passages' (else those searched)."""
    cited = sorted({c.space for c in answer.contexts if c.cited and c.space})
    return cited or sorted(answer.spaces or []) or ["(all)"]


def _add(counts: Counts, answer: AnswerRecord, votes: Iterable[Vote]) -> None:
    counts.questions += 1
    counts.abstained += answer.abstained
    for vote in votes:
        counts.up += vote.label > 0
        counts.down += vote.label < 0


def collect(
    store: BlobStore,
    *,
    since: datetime,
    adapter_name: str,
    until: datetime | None = None,
    catalogue: list[Cited] | None = None,
    progress: Progress | None = None,
) -> ReportData:
    """Everything the report shows for answers created in [since, until].

    `catalogue` lists the knowledge base's documents (section ""), so those never cited can be
    named; without it the report says the list was not available."""
    until = until or datetime.now(UTC)
    skipped = SkipCounter()
    answers = [a for a in _since_partition(store, ANSWERS_PREFIX, AnswerRecord, since, skipped, progress, "answers")
               if since <= a.created_at <= until]
    events = list(_since_partition(store, FEEDBACK_PREFIX, FeedbackEvent, since, skipped, progress, "reactions"))
    votes = effective_votes(events)

    totals = Counts()
    by_day: dict[date, Counts] = {since.date() + timedelta(days=i): Counts()
                                  for i in range((until.date() - since.date()).days + 1)}
    by_platform: dict[str, Counts] = defaultdict(Counts)
    by_space: dict[str, Counts] = defaultdict(Counts)
    gap_questions: list[GapQuestion] = []
    reasons: Counter[str] = Counter()
    for answer in answers:
        user_votes = list(votes.get(answer.answer_id, {}).values())
        _add(totals, answer, user_votes)
        _add(by_platform[answer.platform], answer, user_votes)
        for space in _spaces_of(answer):
            _add(by_space[space], answer, user_votes)
        day = by_day.setdefault(answer.created_at.astimezone(UTC).date(), Counts())
        day.questions += 1
        day.abstained += answer.abstained
        down = [v for v in user_votes if v.label < 0]
        said = [v.reason for v in down if v.reason]
        reasons.update(said)
        if answer.abstained or len(down) > len(user_votes) - len(down):
            gap_questions.append(GapQuestion(
                question=answer.question, language=answer.language, abstained=answer.abstained,
                down=len(down), reasons=tuple(said), notes=tuple(v.reason_text for v in down if v.reason_text),
                created_at=answer.created_at,
            ))
    # votes by the day they were cast (a late 👎 on last week's answer counts today)
    for answer in answers:
        for vote in votes.get(answer.answer_id, {}).values():
            cast = by_day.get(vote.at.astimezone(UTC).date())
            if cast is not None:
                cast.up += vote.label > 0
                cast.down += vote.label < 0
    documents, sections = _citations(answers)
    registry = AdapterRegistry(store, adapter_name)
    return ReportData(
        since=since, until=until, totals=totals, by_day=dict(sorted(by_day.items())),
        by_platform=dict(sorted(by_platform.items())), by_space=dict(sorted(by_space.items())),
        gaps=group_gaps(gap_questions), reasons=reasons,
        cited_documents=documents, cited_sections=sections,
        never_cited=_never_cited(catalogue, documents, sections) if catalogue is not None else None,
        adapters=_adapters(store, registry, since), feedback_effect=_feedback_effect(answers, votes),
        skipped=skipped.count,
    )


def _citations(answers: list[AnswerRecord]) -> tuple[list[Cited], list[Cited]]:
    """Documents and sections by the number of answers citing them, most cited first."""
    docs: Counter[tuple[str, str, str]] = Counter()
    sections: Counter[tuple[str, str, str, str]] = Counter()
    for answer in answers:
        cited = [c for c in answer.contexts if c.cited]
        for space, title, source in {(c.space, c.title, c.source or c.doc_id) for c in cited}:
            docs[(space, title, source)] += 1
        for space, title, source, section in {(c.space, c.title, c.source or c.doc_id, c.location) for c in cited}:
            sections[(space, title, source, section)] += 1
    return (
        [Cited(s, t, src, "", n) for (s, t, src), n in docs.most_common()],
        [Cited(s, t, src, sec, n) for (s, t, src, sec), n in sections.most_common() if sec],
    )


def _never_cited(catalogue: list[Cited], documents: list[Cited], sections: list[Cited]) -> list[Cited]:
    """Documents no answer cited (section ""), then uncited sections of cited documents.
    `catalogue` has one row per document section (section "" for a document without sections)."""
    cited_docs = {(c.space, c.source) for c in documents}
    cited_sections = {(c.space, c.source, c.section) for c in sections}
    docs: dict[tuple[str, str], Cited] = {}
    parts: list[Cited] = []
    for row in catalogue:
        if (row.space, row.source) not in cited_docs:
            docs.setdefault((row.space, row.source), Cited(row.space, row.title, row.source, "", 0))
        elif row.section and (row.space, row.source, row.section) not in cited_sections:
            parts.append(row)
    key = attrgetter("space", "title", "section")
    return sorted(docs.values(), key=key) + sorted(set(parts), key=key)


def _adapters(store: BlobStore, registry: AdapterRegistry, since: datetime) -> list[AdapterRow]:
    """Published versions (all: the timeline needs the live one's history) and the window's
    rejected candidates, oldest first."""
    current = registry.current()
    rows = [
        AdapterRow(
            label=f"v{m.version}", at=m.created_at, live=m.version == current, published=True,
            before=dict(m.metrics.get("current", {})), after=dict(m.metrics.get("candidate", {})),
            regressions=list(m.gate.get("regressions", [])), loss_curve=list(m.loss_curve),
            note=f"job {m.job_id[:8]}" if m.job_id else "",
        )
        for m in registry.manifests()
    ]
    for status in jobs.iter_job_statuses(store):
        if status.state != "rejected" or status.updated_at < since or not status.metrics:
            continue  # "not enough feedback" rejections trained nothing: no candidate to show
        rows.append(AdapterRow(
            label=f"job {status.job_id[:8]}", at=status.updated_at, live=False, published=False,
            before=_side(status.metrics, "current_"), after=_side(status.metrics, "candidate_"),
            regressions=[], loss_curve=list(status.loss_curve), note=status.message,
        ))
    return sorted(rows, key=lambda r: r.at)


def _side(flat: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.removeprefix(prefix): v for k, v in flat.items() if k.startswith(prefix)}


def _feedback_effect(answers: list[AnswerRecord], votes: dict[str, dict[str, Vote]]) -> FeedbackEffect:
    lifted = up = down = other_up = other_down = 0
    for answer in answers:
        user_votes = votes.get(answer.answer_id, {}).values()
        pos = sum(v.label > 0 for v in user_votes)
        neg = sum(v.label < 0 for v in user_votes)
        if any(c.cited and c.feedback_lift > 0 for c in answer.contexts):
            lifted, up, down = lifted + 1, up + pos, down + neg
        else:
            other_up, other_down = other_up + pos, other_down + neg
    return FeedbackEffect(lifted, up, down, other_up, other_down)

