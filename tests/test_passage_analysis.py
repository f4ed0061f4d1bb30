"""The answer step's analysis is learnt at ingestion and stored with each chunk: written there, read
at answer time without Kiwi touching the passages, and chunks ingested before it (no `analysis` in
their payload) still answered the same way, by analysing them live. Real ingestion into real
embedded Qdrant collections; Kiwi is observed through a spy, not timed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rag.text
from core.settings import Settings
from rag.agent import Agent
from rag.chunking import chunk_documents
from rag.loaders import Document, Section
from rag.passage_analysis import ANALYSIS_VERSION, SentenceSpan, decode, encode, header_text, sentences_of
from rag.retrieval import Retriever
from rag.text import analyse
from rag.types import Passage
from tests.conftest import make_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUESTIONS = [
    "사용하지 못한 연차는 최대 며칠까지 이월할 수 있나요?",
    "휴가는 며칠 쓸 수 있나요?",
    "보안 사고는 알게 된 지 몇 시간 안에 신고해야 하나요?",
    "How do I roll back a deploy?",
    "How quickly must I acknowledge a page?",
]


class KiwiSpy:
    """Stands in for the process's Kiwi and records every text it is asked to analyse."""

    def __init__(self, kiwi: Any) -> None:
        self._kiwi = kiwi
        self.texts: list[str] = []

    def _seen(self, text: str | list[str]) -> None:
        self.texts.extend([text] if isinstance(text, str) else list(text))

    def tokenize(self, text: Any, **kwargs: Any) -> Any:
        text = text if isinstance(text, str) else list(text)
        self._seen(text)
        return self._kiwi.tokenize(text, **kwargs)

    def split_into_sents(self, text: Any, **kwargs: Any) -> Any:
        text = text if isinstance(text, str) else list(text)
        self._seen(text)
        return self._kiwi.split_into_sents(text, **kwargs)


@pytest.fixture
def kiwi_spy(monkeypatch: pytest.MonkeyPatch) -> KiwiSpy:
    spy = KiwiSpy(rag.text.get_kiwi())
    monkeypatch.setattr(rag.text, "get_kiwi", lambda: spy)
    rag.text._cache.clear()  # a cached analysis would hide a Kiwi call the answer step makes
    return spy


def _ingest(tmp: Path) -> Settings:
    from rag.ingest import ingest_paths

    settings = make_settings(tmp)
    assert ingest_paths([EXAMPLES], space="default", settings=settings, progress=False).failed == 0
    return settings


@pytest.fixture(scope="module")
def new_kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Retriever]:
    with Retriever.from_settings(_ingest(tmp_path_factory.mktemp("new"))) as retriever:
        yield retriever


@pytest.fixture(scope="module")
def old_kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Retriever]:
    """The same documents as ingested before the analysis was stored: payloads without it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rag.ingest.encode", lambda spans, text: None)
        settings = _ingest(tmp_path_factory.mktemp("old"))
    with Retriever.from_settings(settings) as retriever:
        yield retriever


def test_ingestion_stores_each_chunks_sentences_as_the_answer_step_cuts_them(new_kb: Retriever) -> None:
    hits = list(new_kb.store.scroll_points())
    assert hits
    for hit in hits:
        assert hit.payload["analysis"]["v"] == ANALYSIS_VERSION
        stored = decode(hit.payload["analysis"], hit.payload["text"])
        assert stored is not None
        assert [s.text for s in stored] == sentences_of(hit.payload["text"])
        assert all(len(s.terms) == len(s.tags) for s in stored)
    # The terms are those of ingestion's Kiwi pass, in the answer step's view (no light verbs).
    terms = {t for hit in hits for s in decode(hit.payload["analysis"], hit.payload["text"]) or () for t in s.terms}
    assert {"연차", "이월", "shipit", "rollback", "사용"} <= terms and "하다" not in terms


def test_old_payloads_carry_no_analysis(old_kb: Retriever) -> None:
    assert all("analysis" not in hit.payload for hit in old_kb.store.scroll_points())


def test_the_answer_step_reads_stored_sentences_without_kiwi(new_kb: Retriever, kiwi_spy: KiwiSpy) -> None:
    agent = Agent(new_kb, settings=make_settings(Path(new_kb.store.location).parent.parent))
    for question in QUESTIONS:
        kiwi_spy.texts.clear()
        passages = new_kb.search(question, limit=5)
        answer = agent.ask(question)
        assert not answer.abstained and answer.citations
        # Kiwi saw the question (retrieval, grading, scoring) and the passages' headings, never a
        # passage's text or sentence.
        assert set(kiwi_spy.texts) <= {question, ""} | {header_text(p) for p in passages}, kiwi_spy.texts


def test_old_payloads_are_analysed_live_and_answer_identically(
    new_kb: Retriever, old_kb: Retriever, kiwi_spy: KiwiSpy
) -> None:
    settings = make_settings(Path(new_kb.store.location).parent.parent)
    new, old = Agent(new_kb, settings=settings), Agent(old_kb, settings=settings)
    for question in QUESTIONS:
        sentences = {s for p in old_kb.search(question, limit=3) for s in sentences_of(p.text)}
        kiwi_spy.texts.clear()
        before = old.ask(question)
        assert sentences <= set(kiwi_spy.texts)  # the fallback analysed the passages live
        after = new.ask(question)
        assert (after.text, after.abstained) == (before.text, before.abstained)
        assert [(c.n, c.chunk_id) for c in after.citations] == [(c.n, c.chunk_id) for c in before.citations]
        assert after.scores["coverage"] == before.scores["coverage"]  # (BM25 scores differ in float noise)


def test_encoding_round_trips_names_with_spaces_english_and_verbs() -> None:
    text = (
        "하코다테 전쟁 이후 도쿠가와 요시노부는 은거했다. The team ships 3 releases and two policies a year.\n"
        "- 1989년 2월 15일 시위를 주도했다.\n"
        "=표기 예시: UN 안전보장이사회가 성명서를 냈다."
    )
    chunk = chunk_documents([Document("d", "제목", "d", "d", [Section(text)])], chunk_size=700, overlap=0)[0][0]
    value = encode(chunk.sentences, chunk.text)
    assert value is not None
    stored = decode(value, chunk.text)
    assert stored is not None
    assert [s.text for s in stored] == sentences_of(chunk.text)
    assert [(s.terms, s.tags) for s in stored] == [(s.terms, s.tags) for s in chunk.sentences]
    found = {t for s in stored for t in s.terms}
    assert {"하코다테 전쟁", "release", "policy", "un", "1989", "내다", "은거"} <= found
    # The same sentences analysed live, as a chunk without a stored analysis is.
    assert [(s.terms, s.tags) for s in stored] == [(tuple(f), tuple(g)) for f, g in analyse([s.text for s in stored])]


def test_another_version_or_a_malformed_analysis_is_ignored() -> None:
    text = "연차는 15일입니다."
    assert decode({"v": ANALYSIS_VERSION, "s": [[0, 10, "0:2", "G"]]}, text) is not None
    assert decode({"v": "old", "s": [[0, 10, "0:2", "G"]]}, text) is None
    assert decode({"v": ANALYSIS_VERSION, "s": [[0, 10, "0:2", "GG"]]}, text) is None  # terms ≠ tags
    assert decode({"v": ANALYSIS_VERSION, "s": [[0, 10, "0:2"]]}, text) is None
    assert decode("garbage", text) is None and decode(None, text) is None
    assert Passage("c", "d", "t", text, analysis={"v": "old", "s": []}).sentences is None


def test_spelt_out_terms_that_look_like_references_survive_the_round_trip() -> None:
    text = "Policies 3개"
    spans = [SentenceSpan(0, len(text), ("policy", "3다", "=x", "3"), ("SL", "VV", "NNG", "SN"), (0, 9, 9, 9))]
    value = encode(spans, text)
    assert value is not None and value["s"][0][2] == "policy|=3다|==x|9:1"
    stored = decode(value, text)
    assert stored is not None and stored[0].terms == ("policy", "3다", "=x", "3")
    assert encode([SentenceSpan(0, 4, ("a|b",), ("SL",), (0,))], "a|b ") is None  # analysed live instead
