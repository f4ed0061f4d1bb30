"""Adapter registry contract on the local store and on S3 over HTTP (moto)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.contracts import AdapterManifest
from core.errors import EchoRagError, StoreError
from core.registry import AdapterRegistry, CurrentPointer, feedback_cutoff
from core.settings import Settings
from core.store import BlobStore, open_store
from tests.support_faults import FlakyStore


@pytest.fixture
def store(backend_settings: Settings) -> BlobStore:
    return open_store(backend_settings)


@pytest.fixture
def registry(store: BlobStore) -> AdapterRegistry:
    return AdapterRegistry(store, "echorag")


def adapter_dir(root: Path, tag: str) -> Path:
    """What peft's save_pretrained leaves behind (contents are opaque bytes to the registry)."""
    d = root / f"adapter-{tag}"
    (d / "extra").mkdir(parents=True)
    (d / "adapter_config.json").write_text(f'{{"r": 8, "tag": "{tag}"}}')
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4 + tag.encode())
    (d / "extra" / "tokenizer.json").write_text("{}")
    return d


def manifest(**kw: object) -> AdapterManifest:
    return AdapterManifest(name="ignored", version=0, base_model="tiny", **kw)


def test_publish_promote_rollback(registry: AdapterRegistry, tmp_path: Path) -> None:
    assert registry.list_versions() == [] and registry.current() is None
    v1 = registry.publish(adapter_dir(tmp_path, "a"), manifest(job_id="j1", dataset={"train": 4}))
    assert v1 == 1 and registry.current() is None  # published is not current until promoted
    registry.promote(1)
    v2 = registry.publish(adapter_dir(tmp_path, "b"), manifest(parent_version=1, job_id="j2"), promote=True)
    assert v2 == 2 and registry.current() == 2 and registry.list_versions() == [1, 2]
    m2 = registry.manifest(2)
    assert m2 is not None
    assert (m2.name, m2.version, m2.parent_version, m2.job_id) == ("echorag", 2, 1, "j2")
    assert m2.files == ["adapter_config.json", "adapter_model.safetensors", "extra/tokenizer.json"]
    pointer = registry.pointer()
    assert pointer is not None and pointer.history == [1]
    assert registry.rollback() == 1 and registry.current() == 1
    with pytest.raises(EchoRagError, match="no earlier version"):
        registry.rollback()
    with pytest.raises(EchoRagError, match=r"no published version v7 \(published: v1, v2\)"):
        registry.promote(7)


def test_download_returns_the_published_files(registry: AdapterRegistry, tmp_path: Path) -> None:
    source = adapter_dir(tmp_path, "a")
    version = registry.publish(source, manifest())
    out = registry.download(version, tmp_path / "fetched")
    for rel in ["adapter_config.json", "adapter_model.safetensors", "extra/tokenizer.json"]:
        assert (out / rel).read_bytes() == (source / rel).read_bytes()
    assert AdapterManifest.model_validate_json((out / "manifest.json").read_text()).version == version


def test_current_never_points_at_a_partly_written_version(
    store: BlobStore, registry: AdapterRegistry, tmp_path: Path
) -> None:
    registry.publish(adapter_dir(tmp_path, "a"), manifest(), promote=True)
    for fail_on_put in (2, 3, 4):  # claim=1, then files 2..4, manifest 5: die after the claim, midway, last file
        broken = AdapterRegistry(FlakyStore(store, after=fail_on_put - 1), "echorag")
        with pytest.raises(StoreError, match="SlowDown"):
            broken.publish(adapter_dir(tmp_path, f"bad{fail_on_put}"), manifest(), promote=True)
        assert registry.current() == 1
        assert registry.list_versions() == [1]
    with pytest.raises(EchoRagError, match="no published version v2"):
        registry.promote(2)  # the orphan cannot be made current
    fresh = registry.publish(adapter_dir(tmp_path, "c"), manifest(), promote=True)
    assert fresh == 5 and registry.current() == 5 and registry.list_versions() == [1, 5]


def test_concurrent_publishers_get_distinct_versions(registry: AdapterRegistry, tmp_path: Path) -> None:
    dirs = [adapter_dir(tmp_path, str(n)) for n in range(4)]
    versions: list[int] = []
    threads = [threading.Thread(target=lambda d=d: versions.append(registry.publish(d, manifest()))) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == [1, 2, 3, 4] and registry.list_versions() == [1, 2, 3, 4]


def test_readers_always_see_a_whole_pointer(store: BlobStore, registry: AdapterRegistry, tmp_path: Path) -> None:
    registry.publish(adapter_dir(tmp_path, "a"), manifest())
    registry.publish(adapter_dir(tmp_path, "b"), manifest())
    registry.promote(1)
    stop = threading.Event()
    seen: set[int] = set()

    def read() -> None:
        while not stop.is_set():
            pointer = CurrentPointer.model_validate_json(store.get("adapters/echorag/CURRENT") or b"")
            seen.add(pointer.version)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(20):
            registry.promote(2 if n % 2 == 0 else 1)
    finally:
        stop.set()
        reader.join()
    assert seen <= {1, 2}


def test_feedback_cutoff_prefers_the_snapshot_time() -> None:
    made = datetime(2026, 5, 1, tzinfo=UTC)
    assert feedback_cutoff(manifest(created_at=made)) == made
    snap = manifest(created_at=made, dataset={"feedback_until": "2026-04-30T12:00:00+00:00"})
    assert feedback_cutoff(snap) == datetime(2026, 4, 30, 12, tzinfo=UTC)


def test_unreadable_current_is_a_clear_error_and_promote_repairs_it(
    store: BlobStore, registry: AdapterRegistry, tmp_path: Path
) -> None:
    registry.publish(adapter_dir(tmp_path, "a"), manifest(), promote=True)
    store.put("adapters/echorag/CURRENT", b'{"version": ')
    with pytest.raises(StoreError, match=r"adapter echorag: unreadable adapters/echorag/CURRENT .*adapters promote"):
        registry.current()
    registry.promote(1)
    assert registry.current() == 1


def test_invalid_adapter_name(store: BlobStore) -> None:
    with pytest.raises(EchoRagError, match="invalid adapter name"):
        AdapterRegistry(store, "../etc")
