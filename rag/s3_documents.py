"""Keep the knowledge base in step with documents in S3: one object under `docs/` is one source.

Key layout: `docs/<space>/<path…>` goes to knowledge space `<space>`; `docs/<file>` to
DEFAULT_SPACE. An event only says *which* key changed: `sync_object` then reconciles that key with
what S3 holds now (HEAD → download and ingest, or absent → delete its chunks). Retries, duplicate
deliveries and events that arrive out of order therefore converge on S3's current state instead
of replaying history, and re-ingesting unchanged content is a no-op (`rag.ingest` compares hashes).

The object is downloaded to a temporary mirror (DATA_DIR/s3/<bucket>/<key>) and ingested under its
`s3://bucket/key` URI (`ingest_paths(names=…)`), so citations name the object and a later delete
finds every document it produced (a corpus.jsonl yields one per row). The object's user metadata
`url` (`x-amz-meta-url`, e.g. `aws s3 cp --metadata url=https://…`) is the page its citations link
to, unless the file names its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from core.errors import TransientError
from core.settings import Settings
from rag.ingest import ingest_paths
from rag.loaders import SUPPORTED_SUFFIXES, Document, load_file, safe_url
from rag.vectorstore import open_vector_store

DOCS_PREFIX = "docs/"
# A space is one path segment: letters (Hangul included), digits, '.', '_' or '-'.
_SPACE = re.compile(r"^[\w][\w.-]{0,63}$")

Action = Literal["ingested", "unchanged", "deleted", "skipped"]


class DocumentSyncError(TransientError):
    """An S3 document could not be brought in step with the knowledge base (retry, then DLQ)."""


@dataclass(frozen=True)
class DocumentKey:
    """An object under the docs prefix and the knowledge space its key names."""

    bucket: str
    key: str
    space: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class SyncResult:
    action: Action
    doc: DocumentKey
    detail: str = ""


def parse_key(bucket: str, key: str, *, default_space: str) -> DocumentKey:
    """The space a (decoded) key belongs to; raises DocumentSyncError for keys outside `docs/`."""
    if not bucket:
        raise DocumentSyncError(f"no bucket name for key {key!r}")
    if not key.startswith(DOCS_PREFIX):
        raise DocumentSyncError(f"s3://{bucket}/{key} is outside {DOCS_PREFIX}: only documents under it are ingested")
    parts = key[len(DOCS_PREFIX) :].split("/")
    if any(part in (".", "..") for part in parts) or "" in parts[:-1]:
        raise DocumentSyncError(f"s3://{bucket}/{key}: empty or relative path segment")
    space = parts[0] if len(parts) > 1 else default_space
    if not _SPACE.match(space):
        raise DocumentSyncError(
            f"s3://{bucket}/{key}: {space!r} is not a valid space name (letters, digits, '.', '_', '-'; ≤ 64)"
        )
    return DocumentKey(bucket=bucket, key=key, space=space)


@lru_cache(maxsize=4)
def s3_client(max_attempts: int) -> Any:
    """One client per process (Lambda reuses it across warm invocations); honours AWS_ENDPOINT_URL."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": max_attempts, "mode": "standard"}))


def mirror_path(doc: DocumentKey, settings: Settings) -> Path:
    """Where the object is read from while it is ingested."""
    return settings.data_dir.resolve() / "s3" / doc.bucket / doc.key


def _head(s3: Any, doc: DocumentKey) -> dict[str, Any] | None:
    """The object's HEAD response (its `Metadata` included), or None when it is gone."""
    from botocore.exceptions import ClientError

    try:
        head: dict[str, Any] = s3.head_object(Bucket=doc.bucket, Key=doc.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise DocumentSyncError(f"cannot read {doc.uri}: {exc}") from exc
    return head


def delete_source(doc: DocumentKey, settings: Settings, *, keep: frozenset[str] = frozenset()) -> int:
    """Delete the documents the object produced from its space, except the ids in `keep`; returns
    how many were deleted."""
    store = open_vector_store(settings)
    try:
        doomed = [
            doc_id
            for doc_id, info in store.documents(doc.space).items()
            if doc.uri in (doc_id, info.path) and doc_id not in keep
        ]
        for doc_id in doomed:
            store.delete_document(doc.space, doc_id)
        if doomed:
            store.finish_writes()
    finally:
        store.close()
    return len(doomed)


def sync_object(doc: DocumentKey, *, settings: Settings, s3: Any | None = None) -> SyncResult:
    """Make the knowledge base hold exactly what S3 holds now for `doc`."""
    if doc.key.endswith("/"):
        return SyncResult("skipped", doc, "folder placeholder")
    s3 = s3 or s3_client(settings.aws_max_attempts)
    head = _head(s3, doc)
    if head is None:
        removed = delete_source(doc, settings)
        return SyncResult("deleted", doc, f"{removed} document(s) removed")
    suffix = Path(doc.key).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return SyncResult("skipped", doc, f"unsupported file type {suffix or '(none)'}")
    local = mirror_path(doc, settings)
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            s3.download_file(doc.bucket, doc.key, str(local))
        except Exception as exc:  # botocore raises several types (ClientError, transfer errors)
            raise DocumentSyncError(f"cannot download {doc.uri}: {exc}") from exc
        url = safe_url((head.get("Metadata") or {}).get("url"), f"{doc.uri} metadata")  # boto3 lower-cases keys
        summary = ingest_paths(
            [local], space=doc.space, settings=settings, progress=False, names={local: doc.uri}, urls={local: url}
        )
        if summary.failed:
            reasons = "; ".join(reason for _, reason in summary.failures) or "unknown reason"
            raise DocumentSyncError(f"{doc.uri} could not be ingested: {reasons}")
        if suffix == ".jsonl":  # rows no longer in the corpus must not stay searchable
            rows = frozenset(item.doc_id for item in load_file(local) if isinstance(item, Document))
            summary.deleted += delete_source(doc, settings, keep=rows)
    finally:
        local.unlink(missing_ok=True)  # /tmp is small and shared by every warm invocation
    changed = summary.added or summary.updated or summary.deleted
    return SyncResult("ingested" if changed else "unchanged", doc, summary.line())
