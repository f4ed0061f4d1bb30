"""One analyser: BM25 (sparse vectors, chunking) and answer scoring (extractive answers, grading,
condensation) see the same terms of the same text; they differ only by `LIGHT_VERBS` (answer
scoring drops it) and `SINGLE_LETTERS` (BM25 drops it)."""

from __future__ import annotations

from rag.chunking import chunk_documents
from rag.condense import condense_rule
from rag.extractive import extract
from rag.grading import assess
from rag.loaders import Document, Section
from rag.sparse import SparseEncoder, _hash
from rag.text import (
    LIGHT_VERBS,
    SINGLE_LETTERS,
    STOP_TERMS,
    analyse,
    analyze_many,
    bm25_term,
    stem_en,
    term,
    terms,
)
from rag.types import Passage, Turn

MIXED = (
    "Qdrant 1.20 releases를 썼다. The policies cover deploys and incidents of teams. 연차 휴가는 며칠인가요? "
    "신청은 인사팀에 하면 됩니다. 그 기간 중에 출장비는 얼마인가? 갤럭시 S8의 n포 세대."
)


def test_bm25_chunking_and_scoring_terms_agree() -> None:
    bm25 = terms(MIXED)
    scoring, tags = analyse([MIXED])[0]
    # The two views are one analysis less their own named set, term for term and in order.
    assert [t for t in bm25 if t not in LIGHT_VERBS] == [t for t in scoring if t not in SINGLE_LETTERS]
    assert len(tags) == len(scoring)
    assert {"s", "n"} <= set(scoring) and not {"s", "n"} & set(bm25)
    assert "하다" in bm25 and "하다" not in scoring
    # Chunking (ingestion) and the query encoder read the very same terms.
    assert [t for s in analyze_many([MIXED])[0] for _, t in s.terms] == bm25
    doc = Document("d", "", "d", "d", [Section(MIXED)])
    chunks = chunk_documents([doc], chunk_size=1000, overlap=0)[0]
    assert [t for chunk in chunks for sentence in chunk.sentence_terms for t in sentence] == bm25
    assert _hash("m", "release") in SparseEncoder().query(MIXED).indices
    # One stemmer everywhere: "releases" is "release" in BM25, in answer scoring and in a bare term.
    plurals = (("releases", "release"), ("policies", "policy"), ("deploys", "deploy"), ("incidents", "incident"))
    for word, stem in plurals:
        assert stem_en(word) == stem == term(word, "SL") == bm25_term(word, "SL")
        assert stem in bm25 and stem in scoring
    assert "releas" not in bm25 + scoring
    # One stop list: function words, bound nouns and question words are gone from both views.
    assert not (set(bm25) | set(scoring)) & {"the", "and", "것", "수", "중", "며칠", "얼마"}
    assert not {"the", "and", "것", "수", "중", "며칠", "얼마"} - STOP_TERMS


def test_light_verbs_are_bm25_evidence_but_no_term_to_cover() -> None:
    text = "연차 휴가는 며칠인가요? 신청은 인사팀에 하면 됩니다. 출장비는 얼마인가? 잔액이 있나?"
    bm25, scoring = terms(text), analyse([text])[0][0]
    assert {"하다", "되다", "있다"} <= set(bm25)  # BM25 keeps them (pair features such as 신청_하다)
    assert not {"하다", "되다", "있다"} & set(scoring)  # no sentence must "cover" 하다
    assert not {"며칠", "얼마"} & (set(bm25) | set(scoring))  # question words: stop words for both
    assert {"연차", "휴가", "신청", "출장비"} <= set(scoring) & set(bm25)
    # The differences are sets of their own, not second copies of the stop list.
    assert not (LIGHT_VERBS | SINGLE_LETTERS) & STOP_TERMS


def test_a_plural_in_the_question_matches_the_singular_in_the_passage_everywhere() -> None:
    passage = Passage(
        chunk_id="c", doc_id="d", title="Release notes", location="§ Schedule",
        text="Each release ships on Tuesday. The office is closed on Friday.", score=3.0,
    )
    span = extract("When do releases ship?", [passage])
    assert span is not None and span.sentences == [("Each release ships on Tuesday.", 1)]
    evidence = assess("When do releases ship?", [passage])
    assert evidence.query_terms == 2 and evidence.coverage == 1.0  # "release", "ship"
    assert evidence.sufficient()


def test_condensation_carries_topics_not_question_words() -> None:
    history = [Turn("user", "연차 휴가는 며칠이야?")]
    condensed = condense_rule("그럼 입사 첫해에는?", history)
    assert condensed == "연차 휴가 그럼 입사 첫해에는?"
