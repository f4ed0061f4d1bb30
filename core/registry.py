"""Adapter registry over the blob store: `adapters/<name>/v<N>/` (files + manifest.json) and `CURRENT`.

A version counts as published only once its manifest exists, and the manifest is written after
every file, so a publish that dies midway leaves an invisible orphan, never a half version; its
`_claim` names the job that started it, and `collect_orphans` deletes it once that job is retried
or the claim is old. `CURRENT` is one small JSON object (version + history of earlier current
versions) replaced by a single put (atomic on S3; os.replace locally): it only ever names a
complete version.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, Field, ValidationError

from core.contracts import SCHEMA_VERSION, AdapterManifest, utcnow
from core.errors import StoreError, UserError
from core.store import BlobStore, open_store

if TYPE_CHECKING:
    from core.settings import Settings

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
CLAIM = "_claim"  # reserves a version number before its files are uploaded
FEEDBACK_CUTOFF_KEY = "feedback_until"  # manifest.dataset[...]: ISO time the snapshot was taken
ORPHAN_AGE = timedelta(hours=1)  # an unfinished publish older than this is abandoned, whoever began it
_M = TypeVar("_M", bound=BaseModel)

log = logging.getLogger(__name__)


class CurrentPointer(BaseModel):
    """The `CURRENT` object: which version serves, and the earlier ones (for rollback)."""

    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema")
    version: int
    history: list[int] = Field(default_factory=list)
    updated_at: datetime = Field(default_factory=utcnow)

    model_config = {"populate_by_name": True}


def feedback_cutoff(manifest: AdapterManifest) -> datetime:
    """Feedback up to this time went into the adapter: `dataset["feedback_until"]`, else created_at."""
    raw = manifest.dataset.get(FEEDBACK_CUTOFF_KEY)
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            pass
    return manifest.created_at


class AdapterRegistry:
    """Versions of one adapter name. `AdapterRegistry.from_settings(settings)` for ADAPTER_NAME."""

    def __init__(self, store: BlobStore, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise UserError(f"invalid adapter name {name!r}: use letters, digits, '.', '_' or '-'")
        self.store = store
        self.name = name
        self.prefix = f"adapters/{name}/"
        self._version_re = re.compile(re.escape(self.prefix) + r"v(\d+)/(.+)$")

    @classmethod
    def from_settings(cls, settings: Settings, store: BlobStore | None = None) -> AdapterRegistry:
        return cls(store or open_store(settings), settings.adapter_name)

    def version_prefix(self, version: int) -> str:
        return f"{self.prefix}v{version}/"

    # --- reading --------------------------------------------------------------------------------

    def _keys_by_version(self) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        for key in self.store.list(self.prefix):
            match = self._version_re.match(key)
            if match:
                found.setdefault(int(match.group(1)), []).append(match.group(2))
        return found

    def list_versions(self) -> list[int]:
        """Published versions (those with a manifest), ascending."""
        return sorted(v for v, names in self._keys_by_version().items() if MANIFEST in names)

    def _read(self, key: str, model: type[_M], fix: str) -> _M | None:
        data = self.store.get(key)
        if data is None:
            return None
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            raise StoreError(f"adapter {self.name}: unreadable {key} ({exc.errors()[0]['msg']}); {fix}") from exc

    def manifest(self, version: int) -> AdapterManifest | None:
        fix = "publish that version again"
        return self._read(self.version_prefix(version) + MANIFEST, AdapterManifest, fix)

    def manifests(self) -> list[AdapterManifest]:
        return [m for v in self.list_versions() if (m := self.manifest(v)) is not None]

    def pointer(self) -> CurrentPointer | None:
        return self._read(self.prefix + CURRENT, CurrentPointer, "run `echorag adapters promote VERSION` to rewrite it")

    def current(self) -> int | None:
        """The serving version, or None before the first promotion."""
        pointer = self.pointer()
        return pointer.version if pointer else None

    def current_manifest(self) -> AdapterManifest | None:
        version = self.current()
        return self.manifest(version) if version is not None else None

    def download(self, version: int, dest: Path) -> Path:
        """Copy a published version's files into `dest` (e.g. for vLLM or transformers to load)."""
        manifest = self.manifest(version)
        if manifest is None:
            raise UserError(f"adapter {self.name} has no published version v{version}")
        dest.mkdir(parents=True, exist_ok=True)
        for rel in manifest.files:
            data = self.store.get(self.version_prefix(version) + rel)
            if data is None:
                raise StoreError(f"adapter {self.name} v{version}: file {rel} listed in the manifest is missing")
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (dest / MANIFEST).write_text(manifest.to_json())
        return dest

    # --- writing --------------------------------------------------------------------------------

    def _claim_version(self, job_id: str) -> int:
        taken = self._keys_by_version()
        version = max(taken, default=0) + 1
        claim = json.dumps({"job_id": job_id, "claimed_at": utcnow().isoformat()}).encode()
        while not self.store.put(self.version_prefix(version) + CLAIM, claim, if_absent=True):
            version += 1  # another publisher took it first
        return version

    def _orphan_claim(self, version: int) -> tuple[str, datetime | None]:
        """(job id, claimed_at) of an unfinished version; ("", None) when its claim is gone or unreadable."""
        try:
            raw = json.loads(self.store.get(self.version_prefix(version) + CLAIM) or b"{}")
            return str(raw.get("job_id", "")), datetime.fromisoformat(raw["claimed_at"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return "", None

    def collect_orphans(self, *, job_id: str = "", older_than: timedelta = ORPHAN_AGE) -> list[int]:
        """Delete unfinished versions (files without a manifest): those `job_id` began (its earlier
        attempt died mid-upload, and it is running again) and any begun over `older_than` ago.
        Files go first and the claim last, so a collection that dies midway is finished next time.
        Returns the versions deleted."""
        collected = []
        for version, names in sorted(self._keys_by_version().items()):
            if MANIFEST in names:
                continue
            owner, claimed_at = self._orphan_claim(version)
            if not ((job_id and owner == job_id) or claimed_at is None or utcnow() - claimed_at > older_than):
                continue  # someone may be uploading it right now
            prefix = self.version_prefix(version)
            for name in sorted(names, key=lambda n: n == CLAIM):
                self.store.delete(prefix + name)
            log.warning("adapter %s: deleted unfinished v%s (begun by job %s)", self.name, version, owner or "?")
            collected.append(version)
        return collected

    def publish(self, files_dir: Path, manifest: AdapterManifest, *, promote: bool = False) -> int:
        """Upload every file under `files_dir`, then the manifest; returns the new version number.

        The version becomes CURRENT only with `promote=True` (or a later `promote(version)`), e.g.
        after the evaluation gate passed.
        """
        files_dir = Path(files_dir)
        if not files_dir.is_dir():
            raise UserError(f"adapter files directory {files_dir} does not exist")
        files = sorted(
            p.relative_to(files_dir).as_posix() for p in files_dir.rglob("*") if p.is_file() and p.name != MANIFEST
        )
        if not files:
            raise UserError(f"adapter files directory {files_dir} is empty")
        version = self._claim_version(manifest.job_id)
        prefix = self.version_prefix(version)
        for rel in files:
            self.store.put(prefix + rel, (files_dir / rel).read_bytes())
        final = manifest.model_copy(update={"name": self.name, "version": version, "files": files})
        self.store.put(prefix + MANIFEST, final.to_json().encode())  # last: now the version exists
        if promote:
            self.promote(version)
        return version

    def _write_pointer(self, pointer: CurrentPointer) -> None:
        self.store.put(self.prefix + CURRENT, pointer.model_dump_json(by_alias=True).encode())

    def promote(self, version: int) -> None:
        """Make `version` CURRENT (it must be fully published); the old one goes on the history."""
        if self.manifest(version) is None:
            raise UserError(
                f"adapter {self.name} has no published version v{version} "
                f"(published: {', '.join(f'v{v}' for v in self.list_versions()) or 'none'})"
            )
        try:
            old = self.pointer()
        except StoreError as exc:  # promoting is how an unreadable CURRENT gets repaired
            log.warning("%s; replacing it (rollback history lost)", exc)
            old = None
        history = list(old.history) if old else []
        if old and old.version != version:
            history.append(old.version)
        self._write_pointer(CurrentPointer(version=version, history=history))

    def rollback(self) -> int:
        """Point CURRENT back at the version that was current before; returns it."""
        old = self.pointer()
        if old is None or not old.history:
            raise UserError(f"adapter {self.name}: no earlier version to roll back to")
        previous = old.history[-1]
        self._write_pointer(CurrentPointer(version=previous, history=old.history[:-1]))
        return previous
