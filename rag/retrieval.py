"""Hybrid retrieval: Kiwi BM25 sparse (+ dense when configured), Qdrant prefetch + RRF, rerank,
then the users' 👍/👎 on answers to similar questions (`rag.feedback_index`), under the same spaces.

Sparse-only is the embedded default; with a dense encoder each query runs one Qdrant query with
two prefetches fused by RRF (k passed explicitly). A knowledge-space filter applies inside every
prefetch, so a channel never sees another space's passages, even as fusion candidates.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from core.errors import EchoRagError
from core.settings import Settings
from rag.dense import DenseEncoder, dense_from_settings
from rag.rerank import CrossEncoderReranker, reranker_from_settings
from rag.sparse import SparseEncoder, SparseVec, sparse_from_settings
from rag.types import Passage
from rag.vectorstore import Hit, VectorStore, open_vector_store

if TYPE_CHECKING:
    from core.store import BlobStore
    from rag.feedback_index import Boost, FeedbackIndex

log = logging.getLogger(__name__)


def passage_from_hit(hit: Hit) -> Passage:
    pl: dict[str, Any] = hit.payload
    return Passage(
        chunk_id=str(pl.get("chunk_id", hit.id)),
        doc_id=str(pl.get("doc_id", "")),
        title=str(pl.get("title", "")),
        text=str(pl.get("text", "")),
        source=str(pl.get("source", "")),
        location=str(pl.get("location", "")),
        url=str(pl.get("url") or ""),  # chunks ingested before urls were stored have none
        space=str(pl.get("space", "default")),
        score=hit.score,
        analysis=pl.get("analysis"),
    )


class Retriever:
    """Searches the knowledge base; holds the store open (and, embedded, its folder lock)."""

    def __init__(
        self,
        store: VectorStore,
        *,
        sparse: SparseEncoder,
        dense: DenseEncoder | None = None,
        reranker: CrossEncoderReranker | None = None,
        candidates: int = 30,
        feedback: FeedbackIndex | None = None,
    ) -> None:
        self.store = store
        self.sparse = sparse
        self.dense = dense
        self.reranker = reranker
        self.candidates = candidates
        self.feedback = feedback
        self._dense_warned = False

    @classmethod
    def from_settings(cls, settings: Settings, *, store: VectorStore | None = None) -> Retriever:
        sparse, dense = sparse_from_settings(settings), dense_from_settings(settings)
        owned = store is None
        store = store or open_vector_store(settings)
        feedback = None
        if settings.retrieval_feedback:
            from rag.feedback_index import FeedbackIndex

            try:
                feedback = FeedbackIndex.open(settings, sparse, dense)
            except BaseException:
                if owned:  # do not keep the embedded base's lock for a retriever that never was
                    store.close()
                raise
        return cls(
            store,
            sparse=sparse,
            dense=dense,
            reranker=reranker_from_settings(settings),
            candidates=settings.retrieve_k,
            feedback=feedback,
        )

    def _dense_query(self, query: str) -> list[float] | None:
        if self.dense is None:
            return None
        if not self.store.dense_size():
            if not self._dense_warned:
                log.warning("a dense encoder is configured but %s has no dense vectors: sparse only "
                            "(re-ingest into a new collection to use it)", self.store.location)
                self._dense_warned = True
            return None
        return self.dense.query(query)

    def search(self, query: str, *, spaces: list[str] | None = None, limit: int = 5) -> list[Passage]:
        """Passages best first (`score`: BM25, RRF or cross-encoder score); [] for an empty query.

        `spaces=None` searches every space; an empty list allows none (a channel mapped to nothing).
        """
        if not query.strip() or limit < 1 or (spaces is not None and not spaces):
            return []
        sparse = self.sparse.query(query)
        dense = self._dense_query(query)
        if not sparse.indices and dense is None:
            return []
        candidates = max(self.candidates, limit)
        boosts = self._boosts(sparse, dense, spaces)
        hits = self.store.search(
            sparse=sparse, dense=dense, spaces=spaces, limit=candidates if self.reranker or boosts else limit,
            candidates=candidates,
        )
        passages = [passage_from_hit(h) for h in hits]
        if self.reranker is not None:
            passages = self.reranker.rerank(query, passages, limit=candidates if boosts else limit)
        if boosts:
            passages = self._with_feedback(passages, boosts)
        return passages[:limit]

    def _boosts(self, sparse: SparseVec, dense: list[float] | None, spaces: list[str] | None) -> dict[str, Boost]:
        if self.feedback is None:
            return {}
        try:
            return self.feedback.boosts(sparse, dense, spaces)
        except EchoRagError as exc:  # the feedback collection is down: rank without it
            log.warning("retrieval feedback unavailable for this query: %s", exc)
            return {}

    def _with_feedback(self, passages: list[Passage], boosts: dict[str, Boost]) -> list[Passage]:
        """Fuse the feedback in; a 👍'd passage the query did not retrieve is fetched by id."""
        from rag.feedback_index import chunk_point_id, fuse

        present = {p.chunk_id for p in passages}
        wanted = [chunk_point_id(b.space, b.chunk_id) for b in boosts.values() if b.weight > 0 and b.chunk_id not in present]
        floor = min((p.score for p in passages), default=0.0)  # fetched passages never raise the grade
        extra = [dataclasses.replace(passage_from_hit(h), score=floor) for h in self.store.retrieve(wanted)]
        return fuse(passages, boosts, extra)

    def sync_feedback(self, store: BlobStore) -> None:
        """Bring the feedback index up to date with the vote log (a failure only delays it)."""
        if self.feedback is None:
            return
        try:
            self.feedback.sync(store)
        except EchoRagError as exc:
            log.warning("retrieval feedback not updated this time: %s", exc)

    def close(self) -> None:
        if self.feedback is not None:
            self.feedback.close()
        self.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
