"""Ingestion into a real embedded Qdrant (Edge) collection: formats, idempotency, prune, failures, locks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import EchoRagError
from core.settings import Settings, get_settings
from handlers.cli import main as cli_main
from rag.ingest import ingest_paths
from rag.retrieval import Retriever
from rag.vectorstore import open_vector_store
from tests.support_retrieval import FAQ_ROWS, retrieval_settings, write_knowledge_base


def top(retriever: Retriever, query: str, **kw: object) -> tuple[str, str, str]:
    hits = retriever.search(query, limit=3, **kw)  # type: ignore[arg-type]
    assert hits, f"nothing found for {query!r}"
    return hits[0].title, hits[0].location, hits[0].text


def test_ingest_all_formats_and_find_passages(tmp_path: Path) -> None:
    kb = write_knowledge_base(tmp_path)
    (kb / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (kb / "empty.md").write_text("   \n", encoding="utf-8")
    with (kb / "faq.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps({"id": "faq-3", "title": "no text"}) + "\n")
    settings = retrieval_settings(tmp_path / "data")

    summary = ingest_paths([kb], space="default", settings=settings, progress=False)

    assert (summary.added, summary.updated, summary.unchanged, summary.deleted) == (6, 0, 0, 0)
    assert summary.failed == 4, summary.failures
    reasons = dict(summary.failures)
    assert any(path.endswith("broken.pdf") for path in reasons)
    assert reasons[str(kb / "empty.md")] == "no text found"
    assert any(path.endswith("faq.jsonl:3") and "invalid JSON" in why for path, why in summary.failures)
    assert any(path.endswith("faq.jsonl:4") for path in reasons)

    with Retriever.from_settings(settings) as retriever:
        title, location, text = top(retriever, "병가를 3일 넘게 쓰면 무엇을 내야 하나요?")
        assert (title, location) == ("휴가 규정", "§ 병가") and "진단서" in text
        assert top(retriever, "연차는 몇 일 이월할 수 있어?")[1] == "§ 연차 휴가"
        assert "코어 출근일" in top(retriever, "코어 출근일은 무슨 요일이야?")[2]
        assert top(retriever, "주차장 지원금은 얼마인가요?")[0] == "주차 지원"
        assert top(retriever, "How do I rollback a bad release?")[:2] == ("Deploy runbook", "§ Rollback")
        assert top(retriever, "who gets paged when the primary does not acknowledge?")[:2] == ("oncall", "p. 2")
        assert top(retriever, "monthly lunch allowance")[0] == "Lunch allowance"
        # script and style never reach the index
        assert all("pineapple" not in p.text for p in retriever.search("pineapple token secret", limit=10))
        passage = retriever.search("병가 진단서", limit=1)[0]
        # Citations name the file under the folder given, never the ingesting machine's absolute path.
        assert passage.source == "kb/휴가-규정.md" and passage.doc_id == str(kb / "휴가-규정.md")
        assert passage.chunk_id.startswith(passage.doc_id + "#") and passage.score > 0


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_reingest_is_a_noop_and_changed_files_are_replaced(tmp_path: Path, backend: str) -> None:
    kb = write_knowledge_base(tmp_path)
    settings = retrieval_settings(tmp_path / "data", chunk_size=120, chunk_overlap=0, vector_backend=backend)
    first = ingest_paths([kb], space="default", settings=settings, progress=False)
    assert first.added == 6 and first.chunks > 6

    again = ingest_paths([kb], space="default", settings=settings, progress=False)
    assert (again.added, again.updated, again.unchanged, again.chunks) == (0, 0, 6, 0)

    (kb / "remote.txt").write_text("재택근무는 이제 주 1일만 가능합니다.\n", encoding="utf-8")
    rows = [{**FAQ_ROWS[0], "text": "주차 지원은 폐지되었습니다."}, FAQ_ROWS[1]]
    (kb / "faq.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    changed = ingest_paths([kb], space="default", settings=settings, progress=False)
    assert (changed.added, changed.updated, changed.unchanged) == (0, 2, 4)

    with Retriever.from_settings(settings) as retriever:
        remote = [p for p in retriever.search("재택근무 가능 일수", limit=10) if p.title == "remote"]
        assert [p.text for p in remote] == ["재택근무는 이제 주 1일만 가능합니다."]  # old chunks are gone
        parking = [p for p in retriever.search("주차 지원", limit=10) if p.doc_id == "faq-1"]
        assert [p.text for p in parking] == ["주차 지원은 폐지되었습니다."]


def test_changing_chunk_settings_reindexes(tmp_path: Path) -> None:
    kb = write_knowledge_base(tmp_path)
    ingest_paths([kb], space="default", settings=retrieval_settings(tmp_path / "d"), progress=False)
    redo = ingest_paths([kb], space="default", settings=retrieval_settings(tmp_path / "d", chunk_size=150),
                        progress=False)
    assert redo.updated == 6 and redo.unchanged == 0


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_prune_deletes_what_disappeared(tmp_path: Path, backend: str) -> None:
    kb = write_knowledge_base(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.md").write_text("# 보관\n\n이 문서는 다른 폴더에 있어 지워지면 안 됩니다.", encoding="utf-8")
    settings = retrieval_settings(tmp_path / "data", vector_backend=backend)
    ingest_paths([kb, other], space="default", settings=settings, progress=False)

    (kb / "remote.txt").unlink()
    (kb / "faq.jsonl").write_text(json.dumps(FAQ_ROWS[1]) + "\n", encoding="utf-8")
    without_prune = ingest_paths([kb], space="default", settings=settings, progress=False)
    assert without_prune.deleted == 0

    pruned = ingest_paths([kb], space="default", settings=settings, prune=True, progress=False)
    assert pruned.deleted == 2 and pruned.unchanged == 4
    with Retriever.from_settings(settings) as retriever:
        assert not [p for p in retriever.search("재택근무 코어 출근일", limit=10) if p.title == "remote"]
        assert not [p for p in retriever.search("주차장 지원", limit=10) if p.doc_id == "faq-1"]
        assert top(retriever, "다른 폴더에 있는 문서")[0] == "보관"


def test_unreadable_file_is_not_pruned(tmp_path: Path) -> None:
    kb = write_knowledge_base(tmp_path)
    settings = retrieval_settings(tmp_path / "data")
    ingest_paths([kb], space="default", settings=settings, progress=False)
    (kb / "oncall.pdf").write_bytes(b"%PDF-1.4 truncated")
    summary = ingest_paths([kb], space="default", settings=settings, prune=True, progress=False)
    assert summary.failed == 1 and summary.deleted == 0
    with Retriever.from_settings(settings) as retriever:
        assert top(retriever, "on-call rotation Monday")[0] == "oncall"


def test_a_file_or_row_that_became_empty_leaves_the_index(tmp_path: Path) -> None:
    kb = write_knowledge_base(tmp_path)
    settings = retrieval_settings(tmp_path / "data")
    ingest_paths([kb], space="default", settings=settings, progress=False)
    (kb / "remote.txt").write_text("  \n", encoding="utf-8")
    rows = [{**FAQ_ROWS[0], "text": " "}, FAQ_ROWS[1]]
    (kb / "faq.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")

    summary = ingest_paths([kb], space="default", settings=settings, progress=False)

    assert (summary.failed, summary.deleted, summary.unchanged) == (2, 2, 4), summary
    assert dict(summary.failures) == {str(kb / "remote.txt"): "no text found", f"{kb / 'faq.jsonl'}:1": "no text found"}
    with Retriever.from_settings(settings) as retriever:
        assert not [p for p in retriever.search("재택근무 코어 출근일", limit=10) if p.title == "remote"]
        assert not [p for p in retriever.search("주차장 지원", limit=10) if p.doc_id == "faq-1"]
    again = ingest_paths([kb], space="default", settings=settings, progress=False)
    assert (again.failed, again.deleted, again.unchanged) == (2, 0, 4)


def test_missing_path_and_unsupported_file_are_reported(tmp_path: Path) -> None:
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    summary = ingest_paths([tmp_path / "nope", tmp_path / "image.png"], space="default",
                           settings=retrieval_settings(tmp_path / "data"), progress=False)
    assert summary.failed == 2
    assert dict(summary.failures) == {
        str(tmp_path / "nope"): "no such file or directory",
        str(tmp_path / "image.png"): "unsupported file type .png",
    }


def test_cp949_text_file(tmp_path: Path) -> None:
    (tmp_path / "legacy.txt").write_bytes("출장비는 하루 10만 원까지 정산됩니다.".encode("cp949"))
    settings = retrieval_settings(tmp_path / "data")
    assert ingest_paths([tmp_path / "legacy.txt"], space="default", settings=settings, progress=False).added == 1
    with Retriever.from_settings(settings) as retriever:
        assert "10만 원" in top(retriever, "출장비 정산 한도")[2]


def test_locked_store_gives_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    kb = write_knowledge_base(tmp_path)
    settings = retrieval_settings(tmp_path / "data")
    ingest_paths([kb], space="default", settings=settings, progress=False)
    holder = Retriever.from_settings(settings)  # like a running `echorag chat`
    try:
        with pytest.raises(EchoRagError) as err:
            ingest_paths([kb], space="default", settings=settings, progress=False)
        message = str(err.value)
        assert str(settings.resolved_qdrant_path) in message and "QDRANT_URL" in message
        assert "\n" not in message

        monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
        get_settings.cache_clear()
        assert cli_main(["ingest", str(kb), "--quiet"]) == 2
        err_lines = capsys.readouterr().err.strip().splitlines()
        assert len(err_lines) == 1 and err_lines[0].startswith("error: the knowledge base folder")
    finally:
        holder.close()
        get_settings.cache_clear()
    # released: the same process can open it again
    assert ingest_paths([kb], space="default", settings=settings, progress=False).unchanged == 6


def test_qdrant_client_local_mode_lock_is_clear(tmp_path: Path) -> None:
    settings = retrieval_settings(tmp_path / "data", vector_backend="local")
    kb = write_knowledge_base(tmp_path)
    ingest_paths([kb], space="default", settings=settings, progress=False)
    with Retriever.from_settings(settings) as retriever:
        with pytest.raises(EchoRagError, match="in use by another process"):
            Retriever.from_settings(settings)
        assert top(retriever, "병가 진단서 제출")[1] == "§ 병가"


def test_cli_ingest_prints_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    kb = write_knowledge_base(tmp_path)
    (kb / "bad.pdf").write_bytes(b"not a pdf")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        assert cli_main(["ingest", str(kb), "--space", "hr"]) == 0
        captured = capsys.readouterr()
        assert "hr: added 6, updated 0, unchanged 0, deleted 0, failed 1" in captured.out
        assert f"skipped {kb / 'bad.pdf'}" in captured.err
        assert "ingest → hr" in captured.err  # the progress bar
        assert cli_main(["ingest", str(kb), "--space", "hr", "--quiet"]) == 0
        assert "added 0, updated 0, unchanged 6" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()


def _stored(settings: Settings) -> list[tuple[str, str]]:
    store = open_vector_store(settings)
    try:
        return sorted((hit.id, json.dumps(hit.payload, sort_keys=True)) for hit in store.scroll_points())
    finally:
        store.close()


def test_analysing_ahead_stores_what_one_batch_after_another_stores(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Kiwi runs one batch ahead of the writes (`rag.ingest.ANALYSE_AHEAD`): with batches of two
    documents, the points, their order of replacement and the summary equal the serial method's."""
    import rag.ingest

    kb = write_knowledge_base(tmp_path)
    monkeypatch.setattr(rag.ingest, "_DOC_BATCH", 2)
    stored = {}
    for ahead in (True, False):
        monkeypatch.setattr(rag.ingest, "ANALYSE_AHEAD", ahead)
        settings = retrieval_settings(tmp_path / f"data-{ahead}")
        summary = ingest_paths([kb], space="default", settings=settings, progress=False)
        stored[ahead] = (summary.added, summary.chunks, _stored(settings))
    assert stored[True] == stored[False] and stored[True][0] == 6


def test_a_failure_while_analysing_ahead_surfaces_and_frees_the_store(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import rag.ingest

    kb = write_knowledge_base(tmp_path)
    settings = retrieval_settings(tmp_path / "data")
    monkeypatch.setattr(rag.ingest, "_DOC_BATCH", 2)
    real, calls = rag.ingest.chunk_documents, []

    def flaky(docs: list, **kw: int) -> list:
        calls.append(len(docs))
        if len(calls) == 2:
            raise MemoryError("Kiwi ran out of memory")
        return real(docs, **kw)

    monkeypatch.setattr(rag.ingest, "chunk_documents", flaky)
    with pytest.raises(MemoryError):
        ingest_paths([kb], space="default", settings=settings, progress=False)
    monkeypatch.setattr(rag.ingest, "chunk_documents", real)
    summary = ingest_paths([kb], space="default", settings=settings, progress=False)  # the lock was released
    assert summary.added + summary.unchanged == 6 and summary.failed == 0  # the first batch was kept
