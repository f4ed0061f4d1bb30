"""Blob store: S3 in production, a local directory with the same keys as the embedded default.

Both implement `BlobStore`. Writes that must happen once use `put(..., if_absent=True)`, a real
conditional write (S3 `If-None-Match: *`; locally a hard link, which fails if the name exists),
never read-then-write. Failures after the client's retries raise `StoreError`; nothing is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from core.errors import PermanentError, StoreError

if TYPE_CHECKING:
    from core.settings import Settings

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"


@runtime_checkable
class BlobStore(Protocol):
    """Key/value blobs under `/`-separated keys (the S3 layout in DESIGN.md)."""

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Write `data`. With `if_absent`, write only when the key does not exist (False if it did)."""
        ...

    def get(self, key: str) -> bytes | None:
        """The blob, or None when the key does not exist."""
        ...

    def list(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        """Keys under `prefix` in lexicographic order (after `start_after` when given)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the key; a missing key is not an error."""
        ...


class InvalidKey(PermanentError):
    """A key that no store may hold (a bug or an unvalidated id upstream): retrying cannot help."""


MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255


def check_key(key: str) -> str:
    """Reject keys that would escape the local root or differ between S3 and a filesystem."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidKey(f"invalid store key {key!r}")
    if any(part in ("", ".", "..") or part.startswith(_TMP_PREFIX) for part in parts):
        raise InvalidKey(f"invalid store key {key!r}: empty, '.', '..' or reserved path segment")
    try:  # S3 keys are UTF-8 (a lone surrogate has none), ≤ 1,024 bytes; file names ≤ 255 bytes
        encoded = [part.encode("utf-8") for part in parts]
    except UnicodeEncodeError:
        raise InvalidKey(f"invalid store key {key[:200]!r}: not valid UTF-8") from None
    if sum(map(len, encoded)) + len(parts) - 1 > MAX_KEY_BYTES or max(map(len, encoded)) > MAX_SEGMENT_BYTES:
        raise InvalidKey(f"invalid store key {key[:200]!r}…: longer than S3 or a file system allows")
    return key


def _may_hold_keys(dir_prefix: str, prefix: str, start_after: str | None) -> bool:
    """Whether a folder (keys starting with `dir_prefix`) can hold a key the listing wants: one that
    starts with `prefix` and sorts after `start_after`. Skipping the others keeps a listing that
    starts late (e.g. after a date) from walking every older folder."""
    if not (dir_prefix.startswith(prefix) or prefix.startswith(dir_prefix)):
        return False
    # Below start_after with the difference inside dir_prefix: every key in the folder sorts before it.
    return start_after is None or dir_prefix > start_after or start_after.startswith(dir_prefix)


class LocalBlobStore:
    """A directory holding one file per key; atomic writes via a temp file and os.replace/os.link.

    Safe across processes: a reader sees the old or the new blob, never half of one, and
    `if_absent` uses `os.link`, which fails atomically when the target exists.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                if if_absent:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        return False
                else:
                    os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise StoreError(f"local store: writing {key!r} under {self.root} failed: {exc}") from exc
        return True

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"local store: reading {key!r} under {self.root} failed: {exc}") from exc

    def list(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        # Walk only the deepest directory the prefix names, then filter, sort like S3 does.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root / base_dir if base_dir else self.root
        if not top.is_dir():
            return
        keys: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(top):
                rel_dir = Path(dirpath).relative_to(self.root).as_posix()
                dirnames[:] = [
                    d for d in dirnames
                    if not d.startswith(_TMP_PREFIX)
                    and _may_hold_keys(d + "/" if rel_dir == "." else f"{rel_dir}/{d}/", prefix, start_after)
                ]
                for name in filenames:
                    if name.startswith(_TMP_PREFIX):
                        continue
                    key = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if key.startswith(prefix) and (start_after is None or key > start_after):
                        keys.append(key)
        except OSError as exc:
            raise StoreError(f"local store: listing {prefix!r} under {self.root} failed: {exc}") from exc
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"local store: deleting {key!r} under {self.root} failed: {exc}") from exc


class S3BlobStore:
    """An S3 bucket via boto3 (follows AWS_ENDPOINT_URL, so any S3-compatible endpoint works).

    botocore's standard retry mode retries throttling, 5xx and connection errors with backoff;
    whatever still fails becomes a `StoreError` naming the bucket, key and cause.
    """

    def __init__(
        self,
        bucket: str,
        *,
        max_attempts: int = 4,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        endpoint_url: str | None = None,
        client: Any | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,  # None: AWS_ENDPOINT_URL or the real S3
            config=Config(
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
            ),
        )

    def __repr__(self) -> str:
        return f"S3BlobStore({self.bucket!r})"

    def _fail(self, op: str, key: str, exc: Exception) -> StoreError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            retries = int(meta.get("RetryAttempts", 0))
            tried = f" after {retries} retries" if retries else ""
            cause = f"{err.get('Code', 'error')} (HTTP {meta.get('HTTPStatusCode')}): {err.get('Message', '')}"
            return StoreError(f"S3 {op} s3://{self.bucket}/{key} failed{tried}: {cause.rstrip(': ')}")
        return StoreError(f"S3 {op} s3://{self.bucket}/{key} failed after retries: {type(exc).__name__}: {exc}")

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        # S3 answers 409 ConditionalRequestConflict while a competing conditional write is in
        # flight; trying again resolves it to 200 (we won) or 412 (someone else did).
        for attempt in range(5):
            try:
                self.client.put_object(**kwargs)
                return True
            except ClientError as exc:
                code = self._code(exc)
                if if_absent and code in ("PreconditionFailed", "412"):
                    # After a retry, the 412 may be our own earlier attempt that landed but whose
                    # response was lost: the bytes there are ours, so the write did happen.
                    retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
                    return bool(retried) and self.get(key) == data
                if if_absent and code == "ConditionalRequestConflict" and attempt < 4:
                    continue
                raise self._fail("put", key, exc) from exc
            except BotoCoreError as exc:
                raise self._fail("put", key, exc) from exc
        raise StoreError(f"S3 put s3://{self.bucket}/{key}: conditional write kept conflicting")

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read()
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._fail("get", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("get", key, exc) from exc

    def list(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("list", prefix + "*", exc) from exc

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("delete", key, exc) from exc


def open_store(settings: Settings) -> BlobStore:
    """S3 when FEEDBACK_BUCKET is set, else the local directory (STORE_DIR or DATA_DIR/store)."""
    if settings.feedback_bucket:
        return S3BlobStore(settings.feedback_bucket, max_attempts=settings.aws_max_attempts)
    return LocalBlobStore(settings.resolved_store_dir)
