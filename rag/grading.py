"""Is the retrieved evidence good enough to answer from? Abstaining beats a confident wrong answer.

Sparse retrieval always returns *something* when one query word matches, so the grade looks at how
much of the question the best passage actually covers: the share of the question's content terms
(Kiwi morphemes, English words) found in the passage or its title. Calibrated on Korean QA questions
(KorQuAD-style: the gold passage covers most question terms) against off-topic questions, where at
most one incidental word matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.extractive import analyse, matched_terms
from rag.language import detect_language
from rag.types import Passage

# Below this share of question terms in the best passage the evidence is too weak to answer from
# (the default of the ABSTAIN_COVERAGE setting; 0.6% of KorQuAD dev questions fall below it).
MIN_COVERAGE = 0.4


@dataclass(frozen=True)
class Evidence:
    """What the grade saw: the best passage's term coverage and retrieval score."""

    coverage: float
    top_score: float
    query_terms: int
    passages: int
    cross_lingual: bool = False  # the passages are in another language than the question

    def sufficient(
        self, *, min_coverage: float = MIN_COVERAGE, min_score: float = 0.0, semantic: bool = False
    ) -> bool:
        """`semantic`: a dense retriever is configured, so passages in another language can be real
        matches (words cannot overlap across languages; the score, or the reranker's through
        ABSTAIN_SCORE, is the evidence then). With words alone they are noise."""
        if self.passages == 0 or self.top_score < min_score:
            return False
        if self.cross_lingual and semantic:
            return True
        return self.query_terms > 0 and self.coverage >= min_coverage


def assess(question: str, passages: Sequence[Passage], *, look_at: int = 3) -> Evidence:
    """Coverage of the question's terms by the best of the first `look_at` passages."""
    top = list(passages[:look_at])
    top_score = max((p.score for p in passages), default=0.0)
    language = detect_language(question)
    cross = bool(top) and all(detect_language(p.text) != language for p in top)
    texts = [question] + [f"{p.title.replace('_', ' ')}\n{p.text}" for p in top]
    analysed = analyse(texts)
    q_terms = list(dict.fromkeys(analysed[0][0]))
    if not q_terms or not top:
        return Evidence(
            coverage=0.0,
            top_score=top_score,
            query_terms=len(q_terms),
            passages=len(passages),
            cross_lingual=cross,
        )
    coverage = max(
        len(matched_terms(q_terms, forms, text)) / len(q_terms)
        for (forms, _), text in zip(analysed[1:], texts[1:], strict=True)
    )
    return Evidence(
        coverage=coverage,
        top_score=top_score,
        query_terms=len(q_terms),
        passages=len(passages),
        cross_lingual=cross,
    )
