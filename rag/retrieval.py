"""Hybrid retrieval: Kiwi BM25 sparse (+ dense when configured), Qdrant prefetch + RRF, rerank.

Sparse-only is the embedded default; with a dense encoder each query runs one Qdrant query with
two prefetches fused by RRF (k passed explicitly). A knowledge-space filter applies inside every
prefetch, so a channel never sees another space's passages, even as fusion candidates.
"""

from __future__ import annotations

import logging
from typing import Any

from core.settings import Settings
from rag.dense import DenseEncoder, dense_from_settings
from rag.rerank import CrossEncoderReranker, reranker_from_settings
from rag.sparse import SparseEncoder, sparse_from_settings
from rag.types import Passage
from rag.vectorstore import Hit, VectorStore, open_vector_store

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
        space=str(pl.get("space", "default")),
        score=hit.score,
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
    ) -> None:
        self.store = store
        self.sparse = sparse
        self.dense = dense
        self.reranker = reranker
        self.candidates = candidates
        self._dense_warned = False

    @classmethod
    def from_settings(cls, settings: Settings, *, store: VectorStore | None = None) -> Retriever:
        return cls(
            store or open_vector_store(settings),
            sparse=sparse_from_settings(settings),
            dense=dense_from_settings(settings),
            reranker=reranker_from_settings(settings),
            candidates=settings.retrieve_k,
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
        hits = self.store.search(
            sparse=sparse, dense=dense, spaces=spaces, limit=candidates if self.reranker else limit,
            candidates=candidates,
        )
        passages = [passage_from_hit(h) for h in hits]
        if self.reranker is not None:
            passages = self.reranker.rerank(query, passages, limit=limit)
        return passages[:limit]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
