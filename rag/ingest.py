"""Idempotent ingestion: files → documents → chunks → sparse (+dense) vectors → Qdrant.

- Point ids are uuid5(space, doc_id, chunk index): writing a chunk again overwrites it.
- Each point carries its document's hash (content + pipeline settings): an unchanged document
  is skipped without analysis; a changed one is rewritten and its leftover chunks deleted (new
  chunks are written first, so a document is never missing mid-update).
- `prune` deletes the space's documents whose file vanished, or which a re-read file no longer
  holds (a row removed from a corpus.jsonl), or which lived under an ingested folder.
- A file that cannot be read is counted and reported, never fatal; its chunks stay until it reads
  again. A file (or corpus row) that reads fine but holds no text is reported too, and its old
  chunks are deleted: the document says nothing now.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from core.errors import UserError
from core.settings import Settings
from rag.chunking import Chunk, chunk_documents, title_terms
from rag.dense import DenseEncoder, dense_from_settings
from rag.loaders import Document, LoadFailure, discover, load_file
from rag.passage_analysis import ANALYSIS_VERSION, encode
from rag.sparse import SPARSE_VERSION, SparseEncoder, features, sparse_from_settings
from rag.vectorstore import ChunkPayload, StoredDoc, StorePoint, VectorStore, open_vector_store, point_id

log = logging.getLogger(__name__)

_DOC_BATCH = 256  # documents analysed per Kiwi batch (bigger batches keep Kiwi's threads busy)
_POINT_BATCH = 256  # points per upsert
ANALYSE_AHEAD = True  # analyse the next batch while writing this one (False: one after the other, the bench's baseline)

Batch = list[tuple[Document, str, bool]]  # (document, its hash, whether it replaces an older version)


@dataclass
class IngestSummary:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    chunks: int = 0  # chunks written
    failures: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, deleted {self.deleted}, "
            f"failed {self.failed} ({self.chunks} chunks written)"
        )


def document_hash(doc: Document, settings: Settings, dense: DenseEncoder | None) -> str:
    """Content + everything that shapes the stored vectors: a change to either re-indexes.

    The url counts only when set, so documents without one keep the hash they were stored under; a
    url from outside the content (S3 metadata, a corpus row) still re-indexes when it changes."""
    signature = "|".join(
        [doc.content_hash, doc.title, doc.source, SPARSE_VERSION, ANALYSIS_VERSION, str(settings.chunk_size),
         str(settings.chunk_overlap), dense.name if dense else "", *([f"url={doc.url}"] if doc.url else [])]
    )
    return hashlib.sha256(signature.encode()).hexdigest()[:32]


@dataclass
class _Analysed:
    batch: Batch
    chunks: list[list[Chunk]]  # per document
    titles: list[tuple[str, ...]]  # each document's title terms


class _Writer:
    """Turns batches of documents into points and writes them, Kiwi one batch ahead.

    `add` hands a batch to a worker thread for Kiwi (`analyse`) and meanwhile builds and writes
    the points of the batch before it (`write`): Kiwi's own C++ threads then run beside this thread's
    Python work (features, payloads, upserts) instead of waiting for it, which left a core idle.
    Writes stay in order on the calling thread; only analysis runs ahead.
    """

    def __init__(self, store: VectorStore, settings: Settings, sparse: SparseEncoder, dense: DenseEncoder | None,
                 space: str):
        self.store = store
        self.settings = settings
        self.sparse = sparse
        self.dense = dense
        self.space = space
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-kiwi") if ANALYSE_AHEAD else None
        self._pending: Future[_Analysed] | None = None

    def add(self, batch: Batch) -> int:
        """Queue `batch`; returns the chunks written meanwhile (those of the batch before it)."""
        if self._ahead is None:
            return self.write(self.analyse(batch))
        analysing = self._ahead.submit(self.analyse, batch)
        written = self.flush()
        self._pending = analysing
        return written

    def flush(self) -> int:
        """Write the batch still being analysed; returns its chunks."""
        pending, self._pending = self._pending, None
        return 0 if pending is None else self.write(pending.result())

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.shutdown(cancel_futures=True)

    def analyse(self, batch: Batch) -> _Analysed:
        docs = [doc for doc, _, _ in batch]
        chunks = chunk_documents(docs, chunk_size=self.settings.chunk_size, overlap=self.settings.chunk_overlap)
        return _Analysed(batch, chunks, title_terms(docs))

    def write(self, analysed: _Analysed) -> int:
        """Write an analysed batch's chunks; returns how many."""
        batch, space = analysed.batch, self.space
        points: list[StorePoint] = []
        texts: list[str] = []
        for (doc, doc_hash, _), chunks, tterms in zip(batch, analysed.chunks, analysed.titles, strict=True):
            for chunk in chunks:
                index_text = chunk.index_text(doc.title)
                counts = features([tterms, *chunk.sentence_terms], index_text)
                payload: ChunkPayload = {
                    "doc_id": doc.doc_id,
                    "chunk_id": f"{doc.doc_id}#{chunk.index}",
                    "chunk_index": chunk.index,
                    "title": doc.title,
                    "text": chunk.text,
                    "source": doc.source,
                    "path": doc.path,
                    "location": chunk.location,
                    "space": space,
                    "doc_hash": doc_hash,
                }
                if doc.url:
                    payload["url"] = doc.url
                analysis = encode(chunk.sentences, chunk.text)
                if analysis is not None:
                    payload["analysis"] = analysis
                points.append(
                    StorePoint(point_id(space, doc.doc_id, chunk.index), self.sparse.document_vector(counts, len(index_text)),
                               None, payload)
                )
                texts.append(index_text)
        if self.dense is not None and points:
            vectors = self.dense.documents(texts)
            points = [StorePoint(p.id, p.sparse, v, p.payload) for p, v in zip(points, vectors, strict=True)]
        for start in range(0, len(points), _POINT_BATCH):
            self.store.upsert(points[start : start + _POINT_BATCH])
        for doc, doc_hash, replaces in batch:  # leftovers of an older version (more chunks, other hash)
            if replaces:
                self.store.delete_document(space, doc.doc_id, keep_hash=doc_hash)
        return len(points)


def _count_documents(files: Iterable[Path]) -> int:
    """Progress-bar total: one per file, one per line of a JSONL corpus."""
    total = 0
    for path in files:
        if path.suffix.lower() == ".jsonl":
            try:
                with path.open("rb") as handle:
                    total += sum(1 for line in handle if line.strip())
            except OSError:
                total += 1
        else:
            total += 1
    return total


def _renamed(item: Document | LoadFailure, local: str, name: str) -> Document | LoadFailure:
    """The item as if its file were called `name`: each field that spells the local path (a file's
    doc_id, source and path; a corpus row's path; a failure's path and doc_id) spells `name` instead."""

    def swap(value: str) -> str:
        return name + value[len(local) :] if value.startswith(local) else value

    if isinstance(item, LoadFailure):
        return replace(item, path=swap(item.path), doc_id=item.doc_id and swap(item.doc_id))
    return replace(item, doc_id=swap(item.doc_id), source=swap(item.source), path=swap(item.path))


def _under(path: str, roots: list[Path]) -> bool:
    p = Path(path)
    return any(p == root or root in p.parents for root in roots)


def _prune(
    store: VectorStore, space: str, paths: list[Path], existing: Mapping[str, StoredDoc], *,
    keep: set[str], unreadable: set[str], read: set[str],
) -> int:
    """Delete stored documents the given paths no longer hold; returns how many. A document is kept
    when it was seen now, or its file failed to read (what it said stays until it reads again)."""
    roots = [p.expanduser().resolve() for p in paths if p.expanduser().resolve().is_dir()]
    deleted = 0
    for doc_id, stored in existing.items():
        if doc_id in keep or stored.path in unreadable:
            continue
        if not Path(stored.path).exists() or stored.path in read or _under(stored.path, roots):
            store.delete_document(space, doc_id)
            deleted += 1
    return deleted


def ingest_paths(
    paths: list[Path],
    *,
    space: str,
    settings: Settings,
    prune: bool = False,
    progress: bool = True,
    names: Mapping[Path, str] | None = None,
    urls: Mapping[Path, str] | None = None,
) -> IngestSummary:
    """Ingest files/folders into `space`.

    One pass over the files (~80 lines, on purpose): what was seen, read, failed and batched is
    bookkeeping the pass shares, and `--prune` decides from all of it at the end.

    `names` stores a file under another name than its local path, e.g. a downloaded S3 object under
    its `s3://bucket/key` URI: ids, citations and the recorded path then name the original.
    `urls` gives a file's documents a URL to link citations to where they carry none themselves
    (an S3 object's `url` metadata); it must already be a safe one (`rag.loaders.safe_url`).
    """
    if not space.strip():
        raise UserError("the knowledge space name must not be empty")
    files, missing = discover(paths)
    renames = {str(local.expanduser().resolve()): name for local, name in (names or {}).items()}
    file_urls = {str(local.expanduser().resolve()): url for local, url in (urls or {}).items() if url}
    summary = IngestSummary()
    for failure in missing:
        summary.failed += 1
        summary.failures.append((failure.path, failure.reason))
    store = open_vector_store(settings)
    writer: _Writer | None = None
    try:
        dense = dense_from_settings(settings)
        store.prepare(dense.size if dense else None)
        writer = _Writer(store, settings, sparse_from_settings(settings), dense, space)
        existing = store.documents(space)
        seen: set[str] = set()
        failed_files: set[str] = set()
        read_files: set[str] = set()
        batch: Batch = []
        bar = tqdm(total=_count_documents(files), desc=f"ingest → {space}", unit="doc", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        for path in files:
            name = renames.get(str(path))
            read_files.add(name or str(path))
            # A renamed file's citations show its new name (`_renamed`), any other its name under the
            # folder given (`discover`).
            for item in load_file(path, source=None if name is not None else files[path]):
                bar.update(1)
                if name is not None:
                    item = _renamed(item, str(path), name)
                if isinstance(item, Document) and not item.url and str(path) in file_urls:
                    item = replace(item, url=file_urls[str(path)])
                if isinstance(item, LoadFailure):
                    summary.failed += 1
                    summary.failures.append((item.path, item.reason))
                    log.warning("skipped %s: %s", item.path, item.reason)
                    if item.doc_id is None:  # unreadable: keep what it said until it reads again
                        failed_files.add(name or str(path))
                    elif item.doc_id not in seen:  # read, but empty now: what it said must go
                        seen.add(item.doc_id)
                        if item.doc_id in existing:
                            store.delete_document(space, item.doc_id)
                            summary.deleted += 1
                    continue
                if item.doc_id in seen:
                    summary.failed += 1
                    summary.failures.append((item.source, f"duplicate document id {item.doc_id!r}"))
                    continue
                seen.add(item.doc_id)
                doc_hash = document_hash(item, settings, dense)
                before = existing.get(item.doc_id)
                if before is not None and before.doc_hash == doc_hash:
                    summary.unchanged += 1
                    continue
                if before is None:
                    summary.added += 1
                else:
                    summary.updated += 1
                batch.append((item, doc_hash, before is not None))
                if len(batch) >= _DOC_BATCH:
                    summary.chunks += writer.add(batch)
                    batch = []
            bar.set_postfix(chunks=summary.chunks, refresh=False)
        if batch:
            summary.chunks += writer.add(batch)
        summary.chunks += writer.flush()
        bar.set_postfix(chunks=summary.chunks)
        bar.close()
        if prune:
            summary.deleted += _prune(store, space, paths, existing, keep=seen, unreadable=failed_files,
                                      read=read_files)
        if summary.chunks or summary.deleted:
            store.finish_writes()
    finally:
        if writer is not None:
            writer.close()
        store.close()
    return summary
