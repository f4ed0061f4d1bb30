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

from core.errors import ConfigError
from core.settings import Settings
from rag.vectorstore.base import (
    DENSE_NAME,
    RRF_K,
    SPARSE_NAME,
    ChunkPayload,
    Hit,
    StoredDoc,
    StorePoint,
    VectorStore,
    point_id,
)

__all__ = [
    "DENSE_NAME",
    "RRF_K",
    "SPARSE_NAME",
    "ChunkPayload",
    "Hit",
    "StorePoint",
    "StoredDoc",
    "VectorStore",
    "open_vector_store",
    "point_id",
    "resolve_backend",
]


def resolve_backend(settings: Settings) -> str:
    if settings.vector_backend == "auto":
        return "server" if settings.qdrant_url else "edge"
    if settings.vector_backend == "server" and not settings.qdrant_url:
        raise ConfigError("VECTOR_BACKEND=server needs QDRANT_URL (e.g. http://localhost:6333)")
    return settings.vector_backend


def open_vector_store(settings: Settings, *, suffix: str = "") -> VectorStore:
    """The store the settings describe (opening the embedded one takes its folder's lock); a
    `suffix` names a sibling collection on the same backend (`-feedback`: retrieval feedback)."""
    backend = resolve_backend(settings)
    name = settings.qdrant_collection + suffix
    if backend == "edge":
        from rag.vectorstore.edge import EdgeStore

        return EdgeStore(settings.resolved_qdrant_path / f"edge-{name}")
    from rag.vectorstore.client import ClientStore

    if backend == "local" and suffix:  # local mode allows one client per folder: a sibling folder
        settings = settings.model_copy(update={"qdrant_path": settings.resolved_qdrant_path.with_name(
            settings.resolved_qdrant_path.name + suffix)})
    return ClientStore(settings, local=backend == "local", collection=name)


