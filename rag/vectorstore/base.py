"""What every vector-store backend shares: the point and payload shapes, ids, and the protocol."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict

from core.errors import ConfigError
from rag.sparse import SparseVec

SPARSE_NAME = "bm25"
DENSE_NAME = "dense"
RRF_K = 60  # the usual RRF constant; passed explicitly because backends' defaults differ
KEYWORD_INDEXES = ("space", "doc_id")  # payload fields every backend indexes
_ID_NAMESPACE = uuid.UUID("5b0c5f0e-3c4e-4d7a-9a53-2f3f7d0e6a11")


def point_id(space: str, doc_id: str, chunk_index: int) -> str:
    """Deterministic point id: re-ingesting the same chunk overwrites it instead of duplicating."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{space}\x00{doc_id}\x00{chunk_index}"))


class ChunkPayload(TypedDict):
    """The payload every point carries (`rag.retrieval.passage_from_hit` reads it back)."""

    doc_id: str
    chunk_id: str  # "<doc_id>#<chunk_index>"
    chunk_index: int  # 0 marks a document's first chunk (the one `documents()` lists)
    title: str
    text: str
    source: str  # file path, URL or corpus id
    path: str
    location: str  # "p. 3", "§ 휴가 규정"
    space: str  # the knowledge space (filtered on, keyword-indexed)
    doc_hash: str  # content hash: re-ingesting an unchanged document is a no-op
    url: NotRequired[str]  # where the document is published (http/https); absent when unknown
    # The answer step's sentences and their terms (`rag.passage_analysis.encode`); absent in chunks
    # ingested before it was stored, and when a term cannot be encoded.
    analysis: NotRequired[dict[str, Any]]


@dataclass(frozen=True)
class StorePoint:
    id: str
    sparse: SparseVec
    dense: list[float] | None
    payload: Mapping[str, Any]  # a ChunkPayload in the knowledge base; feedback points carry their own


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
    def retrieve(self, ids: list[str]) -> list[Hit]: ...
    def delete_points(self, ids: list[str]) -> None: ...
    def scroll_points(self) -> Iterator[Hit]: ...
    def count(self) -> int: ...
    def finish_writes(self) -> None: ...
    def close(self) -> None: ...


def locked_message(folder: Path | str) -> str:
    return (
        f"the knowledge base folder {folder} is in use by another process; stop the other `echorag` "
        "process (chat, serve, ingest) or set QDRANT_URL to share a Qdrant server"
    )


def stored_docs(records: Iterable[Any]) -> dict[str, StoredDoc]:
    """`StoredDoc`s from scrolled first-chunk points (either client's records carry `.payload`)."""
    out: dict[str, StoredDoc] = {}
    for rec in records:
        pl = rec.payload or {}
        out[pl["doc_id"]] = StoredDoc(pl["doc_id"], pl.get("doc_hash", ""), pl.get("path", ""))
    return out


def check_dense(where: str, stored: int | None, configured: int | None) -> None:
    if configured and stored != configured:
        have = f"{stored}-dimensional dense vectors" if stored else "no dense vectors"
        raise ConfigError(
            f"the knowledge base at {where} has {have} but the configured dense encoder makes {configured}; "
            "ingest into a new QDRANT_COLLECTION (or delete the old one) after changing DENSE_MODEL/EMBEDDING_MODEL"
        )
