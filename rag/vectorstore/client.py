"""qdrant-client: a Qdrant server (`QDRANT_URL`), or local mode on disk for small collections."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from core.errors import EchoRagError, StoreError
from core.settings import Settings
from rag.sparse import SparseVec
from rag.vectorstore.base import (
    DENSE_NAME,
    KEYWORD_INDEXES,
    RRF_K,
    SPARSE_NAME,
    Hit,
    StoredDoc,
    StorePoint,
    check_dense,
    locked_message,
    stored_docs,
)

log = logging.getLogger(__name__)


class ClientStore:
    """A Qdrant collection through qdrant-client: a server (`QDRANT_URL`) or local mode on disk."""

    def __init__(self, settings: Settings, *, local: bool, collection: str | None = None) -> None:
        from qdrant_client import QdrantClient, models

        self._m = models
        self.collection = collection or settings.qdrant_collection
        self.local = local
        self._exists = False
        self._dense_size: int | None = None
        if local:
            folder = settings.resolved_qdrant_path
            folder.mkdir(parents=True, exist_ok=True)
            self.location = str(folder)
            try:
                self._client = QdrantClient(path=str(folder))
            except RuntimeError as exc:
                if "already accessed" in str(exc):
                    raise StoreError(locked_message(folder)) from None
                raise StoreError(f"cannot open the knowledge base at {folder}: {exc}") from exc
        else:
            self.location = str(settings.qdrant_url)
            self._client = QdrantClient(url=settings.qdrant_url, api_key=settings.qdrant_api_key, timeout=30)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EchoRagError:
            raise
        except Exception as exc:
            if self.local:
                raise
            raise StoreError(f"Qdrant at {self.location} failed to {what}: {exc}") from exc

    def exists(self) -> bool:
        # Once seen, a collection is assumed to stay (no extra round trip per query on a server).
        if not self._exists:
            self._exists = bool(self._call("check the collection", self._client.collection_exists, self.collection))
        return self._exists

    def dense_size(self) -> int | None:
        if not self.exists():
            return None
        if self._dense_size is None:
            info = self._call("read the collection", self._client.get_collection, self.collection)
            vectors = info.config.params.vectors
            has_dense = isinstance(vectors, dict) and DENSE_NAME in vectors
            self._dense_size = int(vectors[DENSE_NAME].size) if has_dense else 0
        return self._dense_size or None

    def prepare(self, dense_size: int | None) -> None:
        m = self._m
        if self.exists():
            check_dense(f"{self.location} collection {self.collection}", self.dense_size(), dense_size)
            return
        vectors = {DENSE_NAME: m.VectorParams(size=dense_size, distance=m.Distance.COSINE)} if dense_size else {}
        self._dense_size = None
        self._call(
            "create the collection",
            self._client.create_collection,
            self.collection,
            vectors_config=vectors,
            sparse_vectors_config={SPARSE_NAME: m.SparseVectorParams(modifier=m.Modifier.IDF)},
        )
        if not self.local:  # payload indexes have no effect in local mode (and warn there)
            for name in KEYWORD_INDEXES:
                self._call("index a payload field", self._client.create_payload_index, self.collection, name,
                           m.PayloadSchemaType.KEYWORD)
            self._call("index a payload field", self._client.create_payload_index, self.collection, "chunk_index",
                       m.PayloadSchemaType.INTEGER)

    def upsert(self, points: list[StorePoint]) -> None:
        m = self._m
        structs = []
        for p in points:
            vector: dict[str, Any] = {SPARSE_NAME: m.SparseVector(indices=p.sparse.indices, values=p.sparse.values)}
            if p.dense is not None:
                vector[DENSE_NAME] = p.dense
            structs.append(m.PointStruct(id=p.id, vector=vector, payload=p.payload))
        self._call("write points", self._client.upsert, self.collection, structs, wait=True)

    def _filter(self, space: str, doc_id: str | None = None, keep_hash: str | None = None) -> Any:
        m = self._m
        must = [m.FieldCondition(key="space", match=m.MatchValue(value=space))]
        if doc_id is not None:
            must.append(m.FieldCondition(key="doc_id", match=m.MatchValue(value=doc_id)))
        must_not = [m.FieldCondition(key="doc_hash", match=m.MatchValue(value=keep_hash))] if keep_hash else None
        return m.Filter(must=must, must_not=must_not)

    def delete_document(self, space: str, doc_id: str, *, keep_hash: str | None = None) -> None:
        if not self.exists():
            return
        selector = self._m.FilterSelector(filter=self._filter(space, doc_id, keep_hash))
        self._call("delete points", self._client.delete, self.collection, points_selector=selector, wait=True)

    def documents(self, space: str) -> dict[str, StoredDoc]:
        m = self._m
        if not self.exists():
            return {}
        flt = self._filter(space)
        flt.must.append(m.FieldCondition(key="chunk_index", match=m.MatchValue(value=0)))
        out: dict[str, StoredDoc] = {}
        offset = None
        while True:
            records, offset = self._call(
                "list documents", self._client.scroll, self.collection, scroll_filter=flt, limit=1000,
                offset=offset, with_payload=["doc_id", "doc_hash", "path"],
            )
            out.update(stored_docs(records))
            if offset is None:
                return out

    def search(
        self, *, sparse: SparseVec, dense: list[float] | None, spaces: list[str] | None, limit: int, candidates: int
    ) -> list[Hit]:
        m = self._m
        if not self.exists():
            return []
        flt = m.Filter(must=[m.FieldCondition(key="space", match=m.MatchAny(any=list(spaces)))]) if spaces else None
        sparse_q = m.SparseVector(indices=sparse.indices, values=sparse.values)
        if dense is not None and self.dense_size():
            response = self._call(
                "search", self._client.query_points, self.collection,
                prefetch=[
                    m.Prefetch(query=sparse_q, using=SPARSE_NAME, limit=candidates, filter=flt),
                    m.Prefetch(query=dense, using=DENSE_NAME, limit=candidates, filter=flt),
                ],
                query=m.RrfQuery(rrf=m.Rrf(k=RRF_K)), limit=limit, with_payload=True,
            )
        else:
            response = self._call(
                "search", self._client.query_points, self.collection, query=sparse_q, using=SPARSE_NAME,
                query_filter=flt, limit=limit, with_payload=True,
            )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]

    def retrieve(self, ids: list[str]) -> list[Hit]:
        if not ids or not self.exists():
            return []
        records = self._call("read points", self._client.retrieve, self.collection, ids, with_payload=True)
        return [Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records]

    def delete_points(self, ids: list[str]) -> None:
        if ids and self.exists():
            selector = self._m.PointIdsList(points=ids)
            self._call("delete points", self._client.delete, self.collection, points_selector=selector, wait=True)

    def scroll_points(self) -> Iterator[Hit]:
        offset = None
        while self.exists():
            records, offset = self._call("list points", self._client.scroll, self.collection, limit=1000,
                                         offset=offset, with_payload=True)
            yield from (Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records)
            if offset is None:
                return

    def count(self) -> int:
        if not self.exists():
            return 0
        return int(self._call("count points", self._client.count, self.collection, exact=True).count)

    def finish_writes(self) -> None:
        """Nothing to do: the server indexes in the background; local mode persists on write."""

    def close(self) -> None:
        self._client.close()
