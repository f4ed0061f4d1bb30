"""Retrieval feedback: 👍/👎 on an answer re-rank its cited passages for similar questions, at once.

Each answer with effective votes is one point in a sibling Qdrant collection (`<collection>-feedback`,
the same backend as the knowledge base): the condensed question's vectors (sparse, and dense when
configured), and a payload with the cited chunks (id, space, content hash), the users' votes and
the question's sparse features. A query searches it with its own vectors, under the same space
filter as the documents, and every earlier question similar enough lends its votes to its chunks.

Why a separate collection, fused in Python, and not a third prefetch fused by Qdrant: a vote must
be signed (👎 demotes), bounded per user (one person's latest vote per passage counts once, however
often they ask), decayed (half-life FEEDBACK_HALF_LIFE_DAYS) and capped (MAX_BOOST), and it points
at *other* points (the chunks). RRF/DBSF fuse ranks of the same points and cannot subtract; a
formula query could add payload-conditioned terms but only to points its prefetch already found,
and would have to be rebuilt per query from this collection's answer anyway.

The vote log in the blob store stays the source of truth (latest vote wins, `core.records`):
`sync` applies what was cast since the watermark kept in this collection, so any process that
answers (a Lambda, the console, the gateway) brings the index up to date before it retrieves; a
lost index (a new collection) rebuilds itself from the log, and `clear` keeps out what it removed.
A changed or deleted document leaves its chunks' feedback unused: a boost applies only while the
chunk's text still has the hash it was voted on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import ConfigError
from core.records import FEEDBACK_TIME_INDEX_PREFIX, answer_votes, feedback_entries_after, load_answer
from core.settings import Settings
from core.store import BlobStore
from rag.dense import DenseEncoder
from rag.sparse import SparseEncoder, SparseVec
from rag.types import Passage
from rag.vectorstore import StorePoint, VectorStore, open_vector_store, point_id

log = logging.getLogger(__name__)

FEEDBACK_SUFFIX = "-feedback"
MIN_SIMILARITY = 0.4  # cosine of the two questions' feature sets (Kiwi morphemes, pairs, bigrams)
MAX_BOOST = 2.0  # most net weight one passage carries, in units of one fully similar, fresh vote
FEEDBACK_WEIGHT = 0.15  # one such vote moves a passage by this share of the query's score range
MATCHES = 10  # earlier questions considered per query
SYNC_LOOKBACK_S = 120  # re-read this much before the watermark: writers' clocks and lists disagree a little
_NAMESPACE = uuid.UUID("0f6f2a4e-91d3-4f5e-8f0a-5d2c1b7e9a34")
WATERMARK_ID = str(uuid.uuid5(_NAMESPACE, "watermark"))
_EMPTY = SparseVec(indices=[], values=[])  # the watermark point is never a search result


def feedback_point_id(answer_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, answer_id))


def text_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:16]


def chunk_point_id(space: str, chunk_id: str) -> str:
    """The knowledge-base point of `<doc_id>#<chunk_index>` in `space`."""
    doc_id, _, index = chunk_id.rpartition("#")
    return point_id(space, doc_id, int(index))


@dataclass(frozen=True)
class Boost:
    """The net feedback on one passage for one query (signed; |weight| ≤ MAX_BOOST)."""

    chunk_id: str
    space: str
    text_hash: str
    weight: float


@dataclass(frozen=True)
class FeedbackEntry:
    """One answer's feedback as the index holds it (what `echorag feedback index list` shows)."""

    answer_id: str
    question: str
    spaces: list[str]
    chunks: list[str]
    positive: int
    negative: int


class FeedbackIndex:
    """The feedback collection of one knowledge base, and the encoders its queries use."""

    def __init__(self, vectors: VectorStore, sparse: SparseEncoder | None, dense: DenseEncoder | None = None,
                 *, half_life_days: float = 90.0) -> None:
        self.vectors = vectors
        self.sparse = sparse
        self.dense = dense
        self.half_life_s = half_life_days * 86400
        self._seen: set[str] = set()  # time-index keys this process has applied

    @classmethod
    def open(cls, settings: Settings, sparse: SparseEncoder | None, dense: DenseEncoder | None) -> FeedbackIndex:
        """The settings' feedback collection; without encoders (operating it: list, clear, count)
        it cannot apply votes."""
        return cls(open_vector_store(settings, suffix=FEEDBACK_SUFFIX), sparse, dense,
                   half_life_days=settings.feedback_half_life_days)

    # --- writing: the vote log → the index ----------------------------------------------------------

    def sync(self, store: BlobStore) -> int:
        """Apply the votes cast or withdrawn since the watermark; returns how many answers changed."""
        watermark, floor = self._watermark()
        start = _earlier(watermark, SYNC_LOOKBACK_S)
        self._seen = {key for key in self._seen if start is None or key > start}  # what the listing can return
        touched: set[str] = set()
        last = watermark
        for key, answer_id in feedback_entries_after(store, start):
            if key in self._seen or (floor is not None and key <= floor):  # seen, or cleared since
                continue
            self._seen.add(key)
            touched.add(answer_id)
            last = max(last or key, key)
        for answer_id in sorted(touched):
            self.apply(store, answer_id)
        if last != watermark and last is not None:
            self._set_watermark(last, floor)
        return len(touched)

    def apply(self, store: BlobStore, answer_id: str) -> None:
        """Make the answer's point match its effective votes now (no votes left: no point)."""
        record = load_answer(store, answer_id)
        votes = answer_votes(store, answer_id) if record is not None else {}
        cited = [c for c in record.contexts if c.cited and c.space] if record is not None else []
        if record is None or record.abstained or not votes or not cited:
            self.vectors.delete_points([feedback_point_id(answer_id)])
            return
        if self.sparse is None:
            raise ConfigError("this feedback index was opened without encoders: it cannot apply votes")
        question = record.condensed_question or record.question
        sparse = self.sparse.query(question)
        dense = self.dense.query(question) if self.dense is not None else None
        self._prepare(len(dense) if dense is not None else None)
        payload = {
            "kind": "answer",
            "answer_id": answer_id,
            "question": question[:500],
            "space": sorted({c.space for c in cited}),
            "terms": sparse.indices,
            "chunks": [{"chunk_id": c.chunk_id, "space": c.space, "hash": text_hash(c.text)} for c in cited],
            "votes": {user: {"label": vote.label, "at": vote.at.timestamp()} for user, vote in votes.items()},
        }
        self.vectors.upsert([StorePoint(feedback_point_id(answer_id), sparse, dense, payload)])

    def _prepare(self, dense_size: int | None = None) -> None:
        if not self.vectors.exists():
            self.vectors.prepare(dense_size)

    def _watermark(self) -> tuple[str | None, str | None]:
        """(the last time-index key applied, the last one a `clear` wiped out)."""
        found = self.vectors.retrieve([WATERMARK_ID])
        payload = found[0].payload if found else {}
        return payload.get("key"), payload.get("floor")

    def _set_watermark(self, key: str, floor: str | None) -> None:
        self._prepare()
        payload = {"kind": "watermark", "key": key, "floor": floor}
        self.vectors.upsert([StorePoint(WATERMARK_ID, _EMPTY, None, payload)])

    # --- reading: a query → boosts per passage ----------------------------------------------------

    def boosts(self, sparse: SparseVec, dense: list[float] | None, spaces: list[str] | None,
               *, now: float | None = None) -> dict[str, Boost]:
        """chunk_id → the net feedback earlier similar questions give it, within `spaces`."""
        if not sparse.indices or not self.vectors.exists():
            return {}
        now = time.time() if now is None else now
        query = set(sparse.indices)
        dense = dense if dense is not None and self.vectors.dense_size() else None
        latest: dict[tuple[str, str], tuple[float, float]] = {}  # (chunk, user) → (vote time, weight)
        chunks: dict[str, dict[str, Any]] = {}
        for hit in self.vectors.search(sparse=sparse, dense=dense, spaces=spaces, limit=MATCHES, candidates=MATCHES):
            terms = set(hit.payload.get("terms", []))
            similarity = len(query & terms) / math.sqrt(len(query) * len(terms)) if terms else 0.0
            if similarity <= MIN_SIMILARITY:
                continue
            # 0 at the threshold, 1 for the same question: near-paraphrases count, mere topic matches barely
            closeness = (similarity - MIN_SIMILARITY) / (1.0 - MIN_SIMILARITY)
            for chunk in hit.payload.get("chunks", []):
                if spaces is not None and chunk["space"] not in spaces:
                    continue  # the answer cited passages of several spaces; this query sees fewer
                chunks[chunk["chunk_id"]] = chunk
                for user, vote in hit.payload.get("votes", {}).items():
                    at = float(vote["at"])
                    weight = int(vote["label"]) * closeness * 0.5 ** (max(0.0, now - at) / self.half_life_s)
                    key = (chunk["chunk_id"], user)
                    if key not in latest or at > latest[key][0]:  # one person, one vote per passage
                        latest[key] = (at, weight)
        totals: dict[str, float] = {}
        for (chunk_id, _), (_, weight) in latest.items():
            totals[chunk_id] = totals.get(chunk_id, 0.0) + weight
        return {
            chunk_id: Boost(chunk_id, chunks[chunk_id]["space"], chunks[chunk_id]["hash"],
                            max(-MAX_BOOST, min(MAX_BOOST, total)))
            for chunk_id, total in totals.items() if total
        }

    # --- operating ---------------------------------------------------------------------------------

    def entries(self) -> Iterator[FeedbackEntry]:
        for hit in self.vectors.scroll_points():
            pl = hit.payload
            if pl.get("kind") != "answer":
                continue
            labels = [int(v["label"]) for v in pl.get("votes", {}).values()]
            yield FeedbackEntry(str(pl["answer_id"]), str(pl.get("question", "")), list(pl.get("space", [])),
                                [c["chunk_id"] for c in pl.get("chunks", [])],
                                sum(1 for x in labels if x > 0), sum(1 for x in labels if x < 0))

    def summary(self) -> dict[str, int]:
        """What `echorag status` shows: answers carrying votes, the passages they point at, votes."""
        entries = list(self.entries())
        return {"questions": len(entries), "passages": len({c for e in entries for c in e.chunks}),
                "positive": sum(e.positive for e in entries), "negative": sum(e.negative for e in entries)}

    def clear(self, space: str | None = None) -> int:
        """Forget the feedback (of one space: answers citing it). The vote log is kept, and the
        watermark too, so cleared feedback stays cleared: only new votes come back."""
        ids = [feedback_point_id(e.answer_id) for e in self.entries() if space is None or space in e.spaces]
        self.vectors.delete_points(ids)
        key, _ = self._watermark()
        if key is not None and space is None:  # what was applied stays out, even within the look-back
            self._set_watermark(key, key)
        return len(ids)

    def close(self) -> None:
        self.vectors.close()


def _earlier(key: str | None, seconds: float) -> str | None:
    """A time-index position `seconds` before `key` (`<prefix><day>/<stamp>_…`)."""
    if key is None:
        return None
    stamp = key.removeprefix(FEEDBACK_TIME_INDEX_PREFIX).split("/", 1)[1].split("_", 1)[0]
    at = datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC) - timedelta(seconds=seconds)
    return f"{FEEDBACK_TIME_INDEX_PREFIX}{at:%Y-%m-%d}/{at:%Y%m%dT%H%M%S.%f}Z"


def fuse(passages: list[Passage], boosts: dict[str, Boost], extra: list[Passage]) -> list[Passage]:
    """Re-rank with feedback: each passage's retrieval score, scaled to [0, 1] over this list (min to
    max), plus FEEDBACK_WEIGHT per unit of boost. So feedback breaks near-ties and moves a passage
    by a bounded share of the score range; it never overrides a clear retrieval margin. `extra`
    are boosted passages the query did not retrieve (they enter at the bottom of the range). A
    boost counts only while the passage's text is the one voted on. Scores stay the retrieval's
    (the grade step reads them): only the order changes."""
    ranked = [*passages, *(p for p in extra if p.chunk_id not in {q.chunk_id for q in passages})]
    scores = [p.score for p in passages] or [0.0]
    low, span = min(scores), (max(scores) - min(scores)) or 1.0

    def score(rank: int, passage: Passage) -> float:
        base = (passage.score - low) / span if rank < len(passages) else 0.0
        boost = boosts.get(passage.chunk_id)
        if boost is None or boost.text_hash != text_hash(passage.text):
            return base
        return base + FEEDBACK_WEIGHT * boost.weight

    scored = sorted(enumerate(ranked), key=lambda item: -score(*item))
    kept = [(rank, p) for rank, p in scored if rank < len(passages) or score(rank, p) > 0]
    # `lift` records the move (an unretrieved passage starts just below the list) for the report
    return [replace(p, lift=min(rank, len(passages)) - place) for place, (rank, p) in enumerate(kept)]
