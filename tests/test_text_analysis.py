"""One analyser: BM25 (sparse vectors, chunking) and answer scoring (extractive answers, grading,
condensation) see the same terms of the same text; they differ only by `SCORING_STOP`."""

from __future__ import annotations

from rag.chunking import chunk_documents
from rag.condense import condense_rule
from rag.extractive import extract
from rag.grading import assess
from rag.loaders import Document, Section
from rag.sparse import SparseEncoder, features
from rag.text import SCORING_STOP, STOP_TERMS, analyse, analyze_many, stem_en, term, terms
from rag.types import Passage, Turn

MIXED = (
    "Qdrant 1.20 releases를 썼다. The policies cover deploys and rollbacks. 연차 휴가는 며칠인가요? "
    "신청은 인사팀에 하면 됩니다. 그 기간 중에 출장비는 얼마나 있나?"
)


def test_bm25_chunking_and_scoring_terms_agree() -> None:
    bm25 = terms(MIXED)
    scoring, tags = analyse([MIXED])[0]
    # The answer-scoring view is the BM25 view minus SCORING_STOP, term for term and in order.
    assert scoring == [t for t in bm25 if t not in SCORING_STOP]
    assert len(tags) == len(scoring)
    # Chunking (ingestion) and the query encoder read the very same terms.
    assert [t for s in analyze_many([MIXED])[0] for _, t in s.terms] == bm25
    doc = Document("d", "", "d", "d", [Section(MIXED)])
    chunk_terms = [t for chunk in chunk_documents([doc], chunk_size=1000, overlap=0)[0] for s in chunk.sentence_terms for t in s]
    assert chunk_terms == bm25
    query = SparseEncoder().query(MIXED)
    assert set(query.indices) == set(features([bm25], MIXED))  # one sentence's pairs aside, same features
    # One stemmer everywhere: "releases" is "release" in BM25, in answer scoring and in a bare term.
    for word, stem in (("releases", "release"), ("policies", "policy"), ("deploys", "deploy"), ("rollbacks", "rollback")):
        assert stem_en(word) == stem == term(word, "SL")
        assert stem in bm25 and stem in scoring
    assert "releas" not in bm25 + scoring
    # One stop list: function words and bound nouns are gone from both views.
    assert not (set(bm25) | set(scoring)) & {"the", "and", "것", "수", "중"}
    assert not {"the", "and", "것", "수", "중"} - STOP_TERMS


def test_scoring_stop_is_only_question_words_and_light_verbs() -> None:
    bm25 = terms("연차 휴가는 며칠인가요? 신청은 인사팀에 하면 됩니다. 출장비는 얼마나 있나?")
    scoring = analyse(["연차 휴가는 며칠인가요? 신청은 인사팀에 하면 됩니다. 출장비는 얼마나 있나?"])[0][0]
    assert {"며칠", "얼마", "하다", "되다", "있다"} <= set(bm25)  # BM25 keeps them (pair features)
    assert not {"며칠", "얼마", "하다", "되다", "있다"} & set(scoring)  # no sentence must "cover" 며칠
    assert {"연차", "휴가", "신청", "인사팀", "출장비"} <= set(scoring)
    assert not SCORING_STOP & STOP_TERMS  # the difference is its own set, not a second copy


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
