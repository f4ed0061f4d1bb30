"""Is the retrieved evidence good enough to answer from? Abstaining beats a confident wrong answer.

Sparse retrieval always returns *something* when one query word matches, so the grade looks at how
much of the question the best passage actually covers: the share of the question's content terms
(Kiwi morphemes, English words) found in the passage or its title. Calibrated on Korean QA questions
(KorQuAD-style: the gold passage covers most question terms) against off-topic questions, where at
most one incidental word matches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rag.language import detect_language
from rag.passage_analysis import header_text
from rag.text import analyse, matched_terms
from rag.types import Passage

# Below this share of question terms in the best passage the evidence is too weak to answer from
# (the default of ABSTAIN_COVERAGE; 2 of 500 KorQuAD dev questions fall below it).
MIN_COVERAGE = 0.4
PARTIAL_BIGRAMS = 0.5  # share of a compound's character bigrams found for half credit
_HANGUL = re.compile(r"[\uac00-\ud7a3]+")


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
        # With words alone, one word in common is no evidence even when it is half of a two-term
        # question ("vacation days" answered from "5 business days"): more than one term's credit is
        # needed then. A dense retriever's ranking is evidence of its own ("deploy hours" → "deploys
        # run … between 10:00 and 16:00"), so it is exempt.
        one_word = not semantic and self.query_terms >= 2 and round(self.coverage * self.query_terms, 6) <= 1.0
        return self.query_terms > 0 and self.coverage >= min_coverage and not one_word


def _bigrams(word: str) -> set[str]:
    return {word[i : i + 2] for i in range(len(word) - 1)}


def _coverage(q_terms: list[str], forms: list[str], text: str) -> float:
    """Share of query terms in the text; a Korean compound the text only has in parts ("출장비" vs
    "출장 … 숙박비") earns half credit when most of its character bigrams occur."""
    matched = matched_terms(q_terms, forms, text)
    squashed = text.replace(" ", "")
    credit = 0.0
    for term in q_terms:
        if term in matched:
            credit += 1.0
        elif len(term) >= 3 and _HANGUL.fullmatch(term):
            grams = _bigrams(term)
            if sum(1 for g in grams if g in squashed) / len(grams) >= PARTIAL_BIGRAMS:
                credit += 0.5
    return credit / len(q_terms)


def assess(question: str, passages: Sequence[Passage], *, look_at: int = 3) -> Evidence:
    """Coverage of the question's terms by the best of the first `look_at` passages."""
    top = list(passages[:look_at])
    top_score = max((p.score for p in passages), default=0.0)
    language = detect_language(question)
    cross = bool(top) and all(detect_language(p.text) != language for p in top)
    # The title and section heading are part of what a passage says ("§ 한도" over a list of limits).
    texts = [f"{header_text(p)}\n{p.text}" for p in top]
    # A passage's stored sentences (`rag.passage_analysis`) spare Kiwi its text: only its heading is
    # analysed then.
    analysed = analyse([question, *(header_text(p) if p.sentences is not None else t for p, t in zip(top, texts, strict=True))])
    q_terms = list(dict.fromkeys(analysed[0][0]))
    if not q_terms or not top:
        return Evidence(
            coverage=0.0,
            top_score=top_score,
            query_terms=len(q_terms),
            passages=len(passages),
            cross_lingual=cross,
        )
    term_lists = [
        [*forms, *(t for s in p.sentences for t in s.terms)] if p.sentences is not None else forms
        for p, (forms, _) in zip(top, analysed[1:], strict=True)
    ]
    coverage = max(_coverage(q_terms, forms, text) for forms, text in zip(term_lists, texts, strict=True))
    return Evidence(
        coverage=coverage,
        top_score=top_score,
        query_terms=len(q_terms),
        passages=len(passages),
        cross_lingual=cross,
    )
