"""Extractive answers: with no LLM configured, quote the shortest span (one or two sentences) of the
retrieved passages that answers the question, cited `[n]`.

Why this shape: a quoted sentence cannot hallucinate, and a sentence that shares the question's rare
terms (IDF within the candidates, so a topic word every sentence repeats counts little), sits in a
well-ranked passage, and holds the kind of thing the question asks for (a person for 누구/who, a
date for 언제/when, a number for 몇/how many, a means — "with `cmd`" — for "how do I") is where an
extractive QA model would find its span.
A neighbouring sentence is added only when it supplies question terms the best sentence lacks, or
when the best one opens with a pronoun ("그는 …", "This law …") whose referent is the sentence before.
Question terms in a passage's title or section heading count for its sentences (a runbook's
"§ Rollback" sentences need not repeat "deploy"). Measured on KorQuAD-style dev questions
(docs/agent.md): a term-proximity bonus and pairing on a missing entity kind did not help, so neither
is here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rag.language import detect_language
from rag.passage_analysis import header_text, passage_sentences
from rag.text import analyse, matched_terms, stem_en
from rag.types import Passage

# What a question word asks for -> a predicate over a sentence's tokens (tags) and text.
_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "date",
        re.compile(
            r"언제|몇\s?년|몇\s?월|월\s?며칠|[연년]도|(?:된|한|던|인|은|는) 해(?:는|가|에)|날짜|시기|\bwhen\b|\bwhat (?:year|date|day|time)\b|\bhours\b|몇\s?시",
            re.I,
        ),
    ),
    (
        "number",
        re.compile(
            r"몇|얼마|수는|개수|금액|나이|비율|\bhow (?:many|much|long|often)\b|\bwhat percentage\b", re.I
        ),
    ),
    # 며칠 alone asks how many days ("휴가는 며칠 쓸 수 있나요?"); after a month it asks a date (몇 월 며칠)
    ("days", re.compile(r"(?<!월)(?<!월\s)며칠|몇\s?일(?!\s?(?:에|날|째))|\bhow many days\b", re.I)),
    ("person", re.compile(r"누구|누가|누구인가|인물|사람은|\bwho\b|\bwhom\b", re.I)),
    ("place", re.compile(r"어디|어느 (?:곳|나라|지역|도시)|장소|지역은|\bwhere\b", re.I)),
    # "How do I …": a procedure. English only: Korean 어떻게 questions (KorQuAD) ask for a manner or
    # an outcome far more often than for steps.
    ("method", re.compile(r"\bhow (?:do|does|did|can|could|should|would|to|is|are|am)\b", re.I)),
)
_DATE_TEXT = re.compile(
    r"\d+\s?(?:년|월|일|세기|시(?!간)|분)|\b(?:19|20)\d\d\b|\b\d{1,2}:\d\d\b|"
    r"\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\b|"
    r"\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b",
    re.I,
)
# The means of doing something: "with `cmd`", "using …", "via …", "by running …", a command-line flag
# or an ENV=value (markdown code spans lose their backticks at ingestion, so the command shows so).
_METHOD_TEXT = re.compile(r"\b(?:with|using|via|through)\b|\bby \w+ing\b|\s--?[a-z][\w-]*|\b[A-Z_]+=\S")
_DAYS_TEXT = re.compile(r"(?<!월)(?<!월\s)\b\d+\s?일|\b\d+\s?(?:working |business )?days?\b", re.I)  # a count, not 3월 15일
# A calendar date or year, which answers "when" but is no count or amount ("2013년 12월", "3월 5일", "1999").
_CALENDAR_DATE = re.compile(r"\d{4}\s?년(?:\s?\d{1,2}\s?월)?(?:\s?\d{1,2}\s?일)?|\d{1,2}\s?월\s?\d{1,2}\s?일|\b(?:19|20)\d\d\b")
_NUMBER_TEXT = re.compile(r"\d|[일이삼사오육칠팔구십백천만억]+\s?(?:개|명|번|회|차|대|권|원|일|년|달|주)")


@dataclass(frozen=True)
class Weights:
    """The scorer's knobs (tuned on a Korean dev set; each is a small, explainable preference)."""

    rank_decay: float = 0.15  # score * (1 - rank_decay * rank) for the passage's rank 0, 1, 2, …
    retrieval: float = 0.15  # bonus * passage score normalised by the best passage's
    cue: float = 0.2  # bonus when the sentence holds the kind of entity the question asks for
    novelty: float = 0.05  # bonus for content the question does not already contain (the answer)
    pair_gain: float = 0.15  # add a neighbour when it covers this share of the missing term weight
    max_passages: int = 3


@dataclass
class _Sentence:
    passage: int  # index into passages (0-based)
    position: int  # sentence index inside its passage
    text: str
    terms: Sequence[str]
    tags: Sequence[str]
    score: float = 0.0
    matched: set[str] = field(default_factory=set)  # question terms in the sentence or its header
    own: set[str] = field(default_factory=set)  # question terms in the sentence itself


@dataclass(frozen=True)
class Extract:
    """The chosen span: sentences (verbatim) with the 1-based passage numbers they came from."""

    sentences: list[tuple[str, int]]
    score: float
    coverage: float  # share of the question's term weight the span contains

    def text(self) -> str:
        """Sentences joined, each cited `[n]` (one marker per run of sentences from one passage)."""
        parts: list[str] = []
        for i, (sentence, n) in enumerate(self.sentences):
            last_of_run = i + 1 == len(self.sentences) or self.sentences[i + 1][1] != n
            parts.append(f"{sentence} [{n}]" if last_of_run else sentence)
        return " ".join(parts)


_ANAPHOR = re.compile(
    r"^(?:\d{4}년[^,.]{0,12}\s)?(?:그는|그가|그의|그녀는|그녀가|그녀의|그들은|이는|이들은|이\s\S+[은는이가]\s|이후\s|"
    r"(?:he|she|it|they|this|these|its|his|her|their)\b)",
    re.I,
)


def question_cues(question: str) -> set[str]:
    """The kinds of thing a question asks for ("date", "days", "number", "person", "place", "method")."""
    return {name for name, pattern in _CUES if pattern.search(question)}


def _has_cue(cue: str, sentence: _Sentence, question_terms: set[str]) -> bool:
    new_tags = [
        tag for term, tag in zip(sentence.terms, sentence.tags, strict=True) if term not in question_terms
    ]
    if cue == "date":
        return bool(_DATE_TEXT.search(sentence.text))
    if cue == "method":
        return bool(_METHOD_TEXT.search(sentence.text))
    if cue == "days":
        return bool(_DAYS_TEXT.search(sentence.text))
    if cue == "number":
        # a count or an amount, not the digits of a date ("시청률 22.6%", not "2013년 12월")
        return "NR" in new_tags or bool(_NUMBER_TEXT.search(_CALENDAR_DATE.sub(" ", sentence.text)))
    if cue in ("person", "place"):
        if "NNP" in new_tags:
            return True
        # English: a capitalised word (not sentence-initial) the question does not already name.
        names = re.findall(r"\b[A-Z][a-z]+", sentence.text[1:])
        return any(stem_en(name.lower()) not in question_terms for name in names)
    return False


def extract(
    question: str, passages: Sequence[Passage], weights: Weights = Weights(), *, focus: str | None = None
) -> Extract | None:
    """The best one- or two-sentence span of `passages` for `question`, or None when nothing matches.

    `focus` is the user's own words when `question` is a condensed follow-up: its terms count double,
    so the topic carried over from the earlier turn finds the passage but the new ask picks the sentence.
    One function (~85 lines) on purpose: the scoring reads top to bottom as the module docstring
    describes it, and its steps share the analysed sentences and term weights.
    """
    candidates = list(passages[: weights.max_passages])
    if not candidates or not question.strip():
        return None
    sentences = [
        _Sentence(passage=pi, position=si, text=a.text, terms=a.terms, tags=a.tags)
        for pi, analysed_sentences in enumerate(passage_sentences(candidates))
        for si, a in enumerate(analysed_sentences)
    ]
    if not sentences:
        return None
    # A passage's title and section heading are what each of its sentences is about ("Deploy runbook
    # § Rollback" over "Roll back with …"), so question terms found there count for all of them.
    headers = [header_text(p) for p in candidates]
    analysed = analyse([question, focus or "", *headers])
    focus_forms = analysed[1][0]
    header_terms = analysed[2:]
    focus_terms = set(focus_forms) if focus and focus != question else set()
    q_terms = list(dict.fromkeys(analysed[0][0]))
    if not q_terms:
        return None

    # IDF over the candidate sentences: a term every sentence repeats (the topic) tells little.
    n = len(sentences)
    df = Counter(term for s in sentences for term in set(s.terms))
    weight = {
        t: math.log(1.0 + (n + 1) / (df[t] + 0.5)) * (2.0 if t in focus_terms else 1.0) for t in q_terms
    }
    total = sum(weight.values())

    def weight_of(found: set[str]) -> float:
        # Summed in question order, not set order: a float sum over a set depends on the process's
        # string-hash seed, and near-tied sentences would then swap from one run to the next.
        return sum(w for t, w in weight.items() if t in found)

    q_set = set(q_terms)
    cues = question_cues(question)
    best_passage_score = max((p.score for p in candidates), default=0.0)

    in_header = [matched_terms(q_terms, forms, text) for (forms, _), text in zip(header_terms, headers, strict=True)]
    for s in sentences:
        s.own = matched_terms(q_terms, s.terms, s.text)
        s.matched = s.own | in_header[s.passage] if s.own else set()
        coverage = weight_of(s.matched) / total
        score = coverage * (1.0 - weights.rank_decay * s.passage)
        if best_passage_score > 0:
            score += weights.retrieval * max(candidates[s.passage].score, 0.0) / best_passage_score
        if cues and any(_has_cue(cue, s, q_set) for cue in cues):
            score += weights.cue
        novel = len([t for t in s.terms if t not in q_set])
        score += weights.novelty * min(novel, 6) / 6
        s.score = score if s.matched else 0.0

    best = max(sentences, key=lambda s: s.score)
    if best.score <= 0.0:
        return None
    chosen = [best]
    neighbours = [s for s in sentences if s.passage == best.passage and abs(s.position - best.position) == 1]
    missing = q_set - best.own
    missing_weight = weight_of(missing)
    gains = [(weight_of(s.own & missing), s) for s in neighbours]
    gains = [(g, s) for g, s in gains if g > 0 and g >= weights.pair_gain * missing_weight]
    if gains:
        chosen = sorted([best, max(gains, key=lambda item: item[0])[1]], key=lambda s: s.position)
    elif _ANAPHOR.match(best.text) and not cues & {"date", "number"}:
        # "그는 …" / "This law …": what the pronoun stands for — often the asked-for name — is in
        # the sentence before.
        previous = [s for s in neighbours if s.position == best.position - 1]
        if previous:
            chosen = [previous[0], best]
    covered = set().union(*(s.matched for s in chosen))
    return Extract(
        sentences=[(s.text, s.passage + 1) for s in chosen],
        score=best.score,
        coverage=weight_of(covered) / total,
    )


_PREFIX = {"ko": "문서에 따르면:", "en": "From the documents:"}


def extractive_answer(
    question: str, passages: Sequence[Passage], language: str | None = None, *, focus: str | None = None
) -> str | None:
    """The answer text (verbatim sentences cited `[n]`), prefixed with a short line in the question's
    language when the passages are in the other one; None when no sentence shares a question term."""
    span = extract(question, passages, focus=focus)
    if span is None:
        return None
    lang = language or detect_language(question)
    body = span.text()
    if detect_language(" ".join(sentence for sentence, _ in span.sentences)) != lang:
        return f"{_PREFIX.get(lang, _PREFIX['en'])}\n{body}"
    return body
