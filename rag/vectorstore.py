"""The knowledge-base store: one interface over Qdrant Edge (embedded default) and qdrant-client.

Backends (`VECTOR_BACKEND`):
- `edge` (what `auto` picks without `QDRANT_URL`): Qdrant's in-process engine (`qdrant-edge-py`)
  under `DATA_DIR/qdrant/edge-<collection>`. Real inverted sparse index and payload indexes:
  at 100k chunks a query takes a few ms, where qdrant-client local mode scans every point
  (~0.7 s per query at 20k points, measured in bench/RESULTS.md).
- `server` (what `auto` picks with `QDRANT_URL`): qdrant-client against a Qdrant server.
- `local`: qdrant-client local mode on disk (`DATA_DIR/qdrant`), for small collections and for
  parity checks with the server code path.
Every backend stores the same points: a sparse "bm25" vector (IDF modifier), a "dense" vector when
a dense encoder is configured, and the payload fields below. Queries are Qdrant prefetch + RRF.
"""

from __future__ import annotations

import fcntl
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.errors import ConfigError, EchoRagError, StoreError
from core.settings import Settings
from rag.sparse import SparseVec

log = logging.getLogger(__name__)

SPARSE_NAME = "bm25"
DENSE_NAME = "dense"
RRF_K = 60  # the usual RRF constant; passed explicitly because backends' defaults differ
# Payload fields every point carries.
PAYLOAD_FIELDS = ("doc_id", "chunk_id", "chunk_index", "title", "text", "source", "path", "location", "space", "doc_hash")
_KEYWORD_INDEXES = ("space", "doc_id")
_ID_NAMESPACE = uuid.UUID("5b0c5f0e-3c4e-4d7a-9a53-2f3f7d0e6a11")


def point_id(space: str, doc_id: str, chunk_index: int) -> str:
    """Deterministic point id: re-ingesting the same chunk overwrites it instead of duplicating."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{space}\x00{doc_id}\x00{chunk_index}"))


@dataclass(frozen=True)
class StorePoint:
    id: str
    sparse: SparseVec
    dense: list[float] | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredDoc:
    doc_id: str
    doc_hash: str
    path: str


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


class VectorStore(Protocol):
    """What ingestion and retrieval need from Qdrant."""

    location: str  # folder or URL, for messages

    def exists(self) -> bool: ...
    def dense_size(self) -> int | None: ...
    def prepare(self, dense_size: int | None) -> None: ...
    def upsert(self, points: list[StorePoint]) -> None: ...
    def delete_document(self, space: str, doc_id: str, *, keep_hash: str | None = None) -> None: ...
    def documents(self, space: str) -> dict[str, StoredDoc]: ...
    def search(
        self, *, sparse: SparseVec, dense: list[float] | None, spaces: list[str] | None, limit: int, candidates: int
    ) -> list[Hit]: ...
    def count(self) -> int: ...
    def finish_writes(self) -> None: ...
    def close(self) -> None: ...


def resolve_backend(settings: Settings) -> str:
    if settings.vector_backend == "auto":
        return "server" if settings.qdrant_url else "edge"
    if settings.vector_backend == "server" and not settings.qdrant_url:
        raise ConfigError("VECTOR_BACKEND=server needs QDRANT_URL (e.g. http://localhost:6333)")
    return settings.vector_backend


def open_vector_store(settings: Settings) -> VectorStore:
    """The store the settings describe (opening the embedded one takes its folder's lock)."""
    backend = resolve_backend(settings)
    if backend == "edge":
        return EdgeStore(settings.resolved_qdrant_path / f"edge-{settings.qdrant_collection}")
    return ClientStore(settings, local=backend == "local")


def _locked_message(folder: Path | str) -> str:
    return (
        f"the knowledge base folder {folder} is in use by another process; stop the other `echorag` "
        "process (chat, serve, ingest) or set QDRANT_URL to share a Qdrant server"
    )


# --- Qdrant Edge ------------------------------------------------------------------------------


class EdgeStore:
    """Qdrant Edge shard in a folder, guarded by an exclusive lock file (one opener per folder)."""

    def __init__(self, folder: Path) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.folder = folder
        self.location = str(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(folder.parent / f".{folder.name}.lock", "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreError(_locked_message(folder)) from None
        self._shard: Any = None
        self._dense_size: int | None = None
        if self._has_segments():
            try:
                self._shard = qe.EdgeShard.load(str(folder))
            except Exception as exc:
                self._release()
                if "WouldBlock" in str(exc) or "lock" in str(exc).lower():
                    raise StoreError(_locked_message(folder)) from exc
                raise StoreError(f"cannot open the knowledge base at {folder}: {exc}") from exc

    def _has_segments(self) -> bool:
        return self.folder.is_dir() and any(self.folder.iterdir())

    def _release(self) -> None:
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()

    def exists(self) -> bool:
        return self._shard is not None

    def dense_size(self) -> int | None:
        if self._shard is None:
            return None
        if self._dense_size is None:  # Edge keeps no readable schema: we record the size beside it
            path = self.folder / "dense_size"
            self._dense_size = int(path.read_text()) if path.exists() else 0
        return self._dense_size or None

    def prepare(self, dense_size: int | None) -> None:
        qe = self._qe
        if self._shard is not None:
            _check_dense(self.location, self.dense_size(), dense_size)
            return
        vectors = {DENSE_NAME: qe.EdgeVectorParams(size=dense_size, distance=qe.Distance.Cosine)} if dense_size else {}
        config = qe.EdgeConfig(
            vectors=vectors, sparse_vectors={SPARSE_NAME: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
        )
        self._shard = qe.EdgeShard.create(str(self.folder), config)
        for name in _KEYWORD_INDEXES:
            self._shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))
        self._shard.update(qe.UpdateOperation.create_field_index("chunk_index", qe.PayloadSchemaType.Integer))
        if dense_size:
            (self.folder / "dense_size").write_text(str(dense_size))
        self._dense_size = dense_size or 0

    def _require(self) -> Any:
        if self._shard is None:
            raise ConfigError(f"no knowledge base at {self.folder} yet: run `echorag ingest PATH` first")
        return self._shard

    def upsert(self, points: list[StorePoint]) -> None:
        qe = self._qe
        shard = self._require()
        batch = []
        for p in points:
            vector: dict[str, Any] = {SPARSE_NAME: qe.SparseVector(indices=p.sparse.indices, values=p.sparse.values)}
            if p.dense is not None:
                vector[DENSE_NAME] = p.dense
            batch.append(qe.Point(id=p.id, vector=vector, payload=p.payload))
        shard.update(qe.UpdateOperation.upsert_points(batch))

    def _filter(self, space: str, doc_id: str | None = None, keep_hash: str | None = None) -> Any:
        qe = self._qe
        must = [qe.FieldCondition(key="space", match=qe.MatchValue(space))]
        if doc_id is not None:
            must.append(qe.FieldCondition(key="doc_id", match=qe.MatchValue(doc_id)))
        must_not = [qe.FieldCondition(key="doc_hash", match=qe.MatchValue(keep_hash))] if keep_hash else None
        return qe.Filter(must=must, must_not=must_not)

    def delete_document(self, space: str, doc_id: str, *, keep_hash: str | None = None) -> None:
        if self._shard is None:
            return
        self._shard.update(self._qe.UpdateOperation.delete_points_by_filter(self._filter(space, doc_id, keep_hash)))

    def documents(self, space: str) -> dict[str, StoredDoc]:
        qe = self._qe
        if self._shard is None:
            return {}
        flt = self._filter(space)
        flt = qe.Filter(must=[*flt.must, qe.FieldCondition(key="chunk_index", match=qe.MatchValue(0))])
        out: dict[str, StoredDoc] = {}
        offset = None
        while True:
            records, offset = self._shard.scroll(
                qe.ScrollRequest(offset=offset, limit=1000, filter=flt, with_payload=["doc_id", "doc_hash", "path"])
            )
            for rec in records:
                pl = rec.payload or {}
                out[pl["doc_id"]] = StoredDoc(pl["doc_id"], pl.get("doc_hash", ""), pl.get("path", ""))
            if offset is None:
                return out

    def search(
        self, *, sparse: SparseVec, dense: list[float] | None, spaces: list[str] | None, limit: int, candidates: int
    ) -> list[Hit]:
        qe = self._qe
        if self._shard is None:
            return []
        flt = qe.Filter(must=[qe.FieldCondition(key="space", match=qe.MatchAny(list(spaces)))]) if spaces else None
        sparse_query = qe.Query.Nearest(qe.SparseVector(indices=sparse.indices, values=sparse.values), using=SPARSE_NAME)
        if dense is not None and self.dense_size():
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(limit=candidates, query=sparse_query, filter=flt),
                    qe.Prefetch(limit=candidates, query=qe.Query.Nearest(dense, using=DENSE_NAME), filter=flt),
                ],
                query=qe.Fusion.Rrf(k=RRF_K),
                with_payload=True,
            )
        else:
            request = qe.QueryRequest(limit=limit, query=sparse_query, filter=flt, with_payload=True)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in self._shard.query(request)]

    def count(self) -> int:
        return 0 if self._shard is None else int(self._shard.count(self._qe.CountRequest(exact=True)))

    def finish_writes(self) -> None:
        """Flush; with dense vectors also run the optimizer, which builds their HNSW index.

        Sparse-only shards skip it: measured at 20k chunks, queries were as fast before as after
        (~1 ms) while optimizing took seconds and +25% memory.
        """
        if self._shard is not None:
            self._shard.flush()
            if self.dense_size():
                self._shard.optimize()

    def close(self) -> None:
        if self._shard is not None:
            try:
                self._shard.flush()
                self._shard.close()
            finally:
                self._shard = None
        self._release()


# --- qdrant-client (server, or local mode) ----------------------------------------------------


class ClientStore:
    """A Qdrant collection through qdrant-client: a server (`QDRANT_URL`) or local mode on disk."""

    def __init__(self, settings: Settings, *, local: bool) -> None:
        from qdrant_client import QdrantClient, models

        self._m = models
        self.collection = settings.qdrant_collection
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
                    raise StoreError(_locked_message(folder)) from None
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
            _check_dense(f"{self.location} collection {self.collection}", self.dense_size(), dense_size)
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
            for name in _KEYWORD_INDEXES:
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
            for rec in records:
                pl = rec.payload or {}
                out[pl["doc_id"]] = StoredDoc(pl["doc_id"], pl.get("doc_hash", ""), pl.get("path", ""))
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

    def count(self) -> int:
        if not self.exists():
            return 0
        return int(self._call("count points", self._client.count, self.collection, exact=True).count)

    def finish_writes(self) -> None:
        """Nothing to do: the server indexes in the background; local mode persists on write."""

    def close(self) -> None:
        self._client.close()


def _check_dense(where: str, stored: int | None, configured: int | None) -> None:
    if configured and stored != configured:
        have = f"{stored}-dimensional dense vectors" if stored else "no dense vectors"
        raise ConfigError(
            f"the knowledge base at {where} has {have} but the configured dense encoder makes {configured}; "
            "ingest into a new QDRANT_COLLECTION (or delete the old one) after changing DENSE_MODEL/EMBEDDING_MODEL"
        )
