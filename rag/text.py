"""The one Korean analyser: Kiwi, sentences, and the terms that BM25 (`rag.sparse`), chunking,
extractive answers, grading and condensation all match on.

A term (`term`) is a Kiwi content morpheme (CONTENT_TAGS), lowercased; verbs and adjectives take
their '다' form ("썼다" → 쓰다); English words (Kiwi tags every Latin word SL) are stop-worded and
plural-stemmed (`stem_en`: "releases" → release). STOP_TERMS is the one stop list. Two views read
those terms, and differ by one named set each: BM25's (`terms`, `analyze_many`: sentences with
offsets, for chunking and sparse vectors) also drops SINGLE_LETTERS; answer scoring's (`analyse`:
terms and tags, for extractive answers, grading and condensation) also drops LIGHT_VERBS.

Kiwi is built once per process: creating it and loading its model costs ~1.3 s, which a Lambda
cold start or a CLI run should pay once, not per call. Terms are cached per (form, tag), since
ingestion sees the same morphemes over and over, and `analyse` per text, since a knowledge base's
hot passages come back on every question.
"""

from __future__ import annotations

import re
import string
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kiwipiepy import Kiwi

# Morpheme tags that carry content: nouns, numerals, foreign words / numbers / hanja, roots, verbs,
# adjectives. Adverbs, pronouns, particles, endings and punctuation are dropped. Tags may carry
# suffixes ("VV-R").
CONTENT_TAGS = frozenset({"NNG", "NNP", "NNB", "NR", "SL", "SN", "SH", "XR", "VV", "VA"})
_PREDICATE_TAGS = frozenset({"VV", "VA"})

# English function words and request words: without them "how do I …" / "please tell me …" matches
# any English passage through "a", "do", "i", "me".
_EN_STOP_WORDS = """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further get got had has
    have having he her here hers herself him himself his how i if in into is it its itself just many may me
    might more most much must my myself need no nor not now of off on once only or other our ours ourselves
    out over own please same shall she should so some such tell than that the their theirs them themselves
    then there these they this those through to too under until up very want was we were what when where
    which while who whom whose why will with would you your yours yourself yourselves"""

# The one stop list, applied to terms (after lowercasing and the '다' form) in both views: bound
# nouns that occur everywhere and carry no topic, question words (what is asked, not about what: no
# sentence must "cover" 며칠, no follow-up carry it over as a topic; 무엇/몇/어떤 … are mostly not
# content-tagged anyway) and the English function words.
STOP_TERMS = frozenset(
    {"것", "수", "등", "때", "중", "데", "바", "뿐", "적"}
    | {"무엇", "누구", "어디", "언제", "몇", "며칠", "어떤", "무슨", "어느", "얼마"}
    | set(_EN_STOP_WORDS.split())
)

# The two views differ by these two named sets only. Each split was measured on korquad1 (every
# question, three article-disjoint folds; bench/RESULTS.md, "One analyser"): moving either set into
# both views or out of both cost a metric.
#
# LIGHT_VERBS: dropped by answer scoring (`analyse`: extractive answers, grading, condensation),
# kept by BM25. They are in almost every sentence, so a question's 하다 is no term a sentence must
# cover; for BM25 their pair features ("발표_하다") are phrase evidence (dropping them there cost
# recall@1 0.952 → 0.950 on the 500 questions). 이다/않다 count only where Kiwi tags them VV/VA.
LIGHT_VERBS = frozenset({"하다", "되다", "있다", "없다", "이다", "않다", "같다"})
# SINGLE_LETTERS: dropped by BM25 only. A single Latin letter ("S" of "S8", "A씨") is in every passage
# of its article, noise for a ranking (keeping it cost MRR@10); answer scoring weighs terms by IDF
# among the candidate sentences, where it costs nothing and the "n" of "n포 세대" picks the sentence
# (dropping it there cost containment).
SINGLE_LETTERS = frozenset(string.ascii_lowercase) - STOP_TERMS  # "a" and "i" are stop words already

_lock = threading.Lock()


class Token(Protocol):
    """What the analyser reads of a Kiwi token (kiwipiepy ships no type information)."""

    form: str
    tag: str
    start: int
    len: int


@lru_cache(maxsize=1)
def _build_kiwi() -> Kiwi:
    from kiwipiepy import Kiwi

    kiwi = Kiwi()
    kiwi.tokenize("초기화")  # load the lazily-loaded language model now, not on the first user query
    return kiwi


def get_kiwi() -> Kiwi:
    """The process's single Kiwi instance (thread-safe lazy construction)."""
    with _lock:
        return _build_kiwi()


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (Kiwi's splitter understands Korean endings like '~다.', '~요')."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        if not block:
            continue
        for sent in get_kiwi().split_into_sents(block):
            s = sent.text.strip()
            if s:
                out.append(s)
    return out


def stem_en(word: str) -> str:
    """Light plural stemming of a lowercased English word ("releases" → "release", "policies" →
    "policy"); "-ing"/"-ed" stay, so a stem is always a word the text could contain verbatim."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@lru_cache(maxsize=262_144)
def term(form: str, tag: str) -> str | None:
    """The term of one morpheme, or None when it carries no content (cached: ingestion and every
    question see the same morphemes over and over)."""
    base = tag.split("-")[0]
    if base not in CONTENT_TAGS:
        return None
    form = form.lower()
    if base in _PREDICATE_TAGS:
        form += "다"
    elif base == "SL":
        if form in STOP_TERMS:  # before stemming too: "does" is not the noun "doe"
            return None
        form = stem_en(form)
    return None if form in STOP_TERMS else form


@lru_cache(maxsize=262_144)
def bm25_term(form: str, tag: str) -> str | None:
    """The BM25 term of one morpheme (`term` less SINGLE_LETTERS), or None (cached too: it is the hot
    loop of ingestion)."""
    t = term(form, tag)
    return None if t in SINGLE_LETTERS else t


@lru_cache(maxsize=262_144)
def answer_term(form: str, tag: str) -> tuple[str, str] | None:
    """(term, base tag) of one morpheme as answer scoring sees it (`term` less LIGHT_VERBS), or None."""
    t = term(form, tag)
    return None if t is None or t in LIGHT_VERBS else (t, tag.split("-")[0])


def _terms_from_tokens(tokens: Iterable[Token]) -> list[str]:
    out: list[str] = []
    for tok in tokens:
        t = bm25_term(tok.form, tok.tag)
        if t is not None:
            out.append(t)
    return out


def terms(text: str) -> list[str]:
    """Terms of `text` in order, as BM25 sees them (LIGHT_VERBS kept, SINGLE_LETTERS dropped)."""
    if not text.strip():
        return []
    return _terms_from_tokens(get_kiwi().tokenize(text))


# --- the BM25 / chunking view: sentences with offsets ---------------------------------------------


@dataclass(frozen=True)
class Sentence:
    """A sentence of an analysed text: its character span, its BM25 terms with offsets, and the
    answer-scoring view of the same tokens (stored with each chunk, so answering needs no Kiwi)."""

    start: int
    end: int
    terms: tuple[tuple[int, str], ...]  # (character offset in the text, term)
    scored: tuple[tuple[int, str, str], ...] = ()  # (offset, term, base tag): `answer_term` of each token


def _sentences_from_tokens(sent_tokens: Iterable[Sequence[Token]]) -> list[Sentence]:
    out: list[Sentence] = []
    for toks in sent_tokens:
        if not toks:
            continue
        start = toks[0].start
        end = toks[-1].start + toks[-1].len
        found: list[tuple[int, str]] = []
        scored: list[tuple[int, str, str]] = []
        for tok in toks:
            t = bm25_term(tok.form, tok.tag)
            if t is not None:
                found.append((tok.start, t))
            a = answer_term(tok.form, tok.tag)
            if a is not None:
                scored.append((tok.start, *a))
        out.append(Sentence(start, end, tuple(found), tuple(scored)))
    return out


def analyze_many(texts: list[str]) -> list[list[Sentence]]:
    """Sentences and content terms (both views) of many texts in ONE batched Kiwi pass.

    Ingestion needs the sentence boundaries (chunking), the BM25 terms and the answer-scoring terms
    (stored with each chunk); analysing once keeps Kiwi, the dominant cost of ingestion, to one pass.
    """
    if not texts:
        return []
    kiwi = get_kiwi()
    return [_sentences_from_tokens(sents) for sents in kiwi.tokenize(texts, split_sents=True)]


# --- the answer-scoring view: terms and their tags, LIGHT_VERBS dropped ---------------------------

Analysis = tuple[list[str], list[str]]  # (terms, their base tags)
_CACHE_SIZE = 20_000  # texts (sentences, passages, questions)
_cache: OrderedDict[str, Analysis] = OrderedDict()
_cache_lock = threading.Lock()


def _analyse_tokens(tokens: Iterable[Token]) -> Analysis:
    found: list[str] = []
    tags: list[str] = []
    for tok in tokens:
        a = answer_term(tok.form, tok.tag)
        if a is not None:
            found.append(a[0])
            tags.append(a[1])
    return found, tags


def analyse(texts: list[str]) -> list[Analysis]:
    """(terms, their tags) of each text as answer scoring sees them (LIGHT_VERBS dropped, single
    letters kept): what extractive answers, grading and condensation match on. Cached per text;
    cache misses go to Kiwi in one batched call."""
    if not texts:
        return []
    with _cache_lock:
        known = {t: _cache[t] for t in texts if t in _cache}
        for t in known:
            _cache.move_to_end(t)
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if missing:
        fresh = dict(zip(missing, (_analyse_tokens(toks) for toks in get_kiwi().tokenize(missing)), strict=True))
        with _cache_lock:
            _cache.update(fresh)
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        known.update(fresh)
    return [known[t] for t in texts]


_HANGUL_WORD = re.compile(r"[\uac00-\ud7a3]+")


# A native Korean verb and the Sino-Korean noun (+하다) that says the same: people ask "며칠 쓸 수
#있나요?" of a handbook that writes "사용할 수 있습니다". General language, not a domain list; used
# when matching question terms to sentences (answer step, evidence grade), not in the index.
_SAME_AS = {
    "쓰다": ("사용",), "받다": ("수령",), "바꾸다": ("변경",), "고치다": ("수정",), "늘다": ("증가",),
    "줄다": ("감소",), "알리다": ("통보", "공지"), "보내다": ("발송", "전송"), "찾다": ("검색",),
    "빌리다": ("대여",), "갚다": ("상환",), "끝나다": ("종료",), "시작하다": ("개시",),
}


def matched_terms(query_terms: Sequence[str], text_terms: Sequence[str], text: str) -> set[str]:
    """Query terms found in a text: as a term, as its Sino-Korean equivalent (`_SAME_AS`), or (nouns
    of 2+ characters) verbatim.

    Compounds segment differently in different contexts ("평양축전" vs "평양 축전"), so a noun of the
    question found verbatim in the text counts as a match too, and so does a Korean compound whose
    head is in the text without its one-syllable suffix ("출장비" → "출장", "신청서" → "신청").
    """
    present = set(text_terms)
    squashed = text.lower().replace(" ", "")
    return {
        t
        for t in query_terms
        if t in present
        or any(same in present for same in _SAME_AS.get(t, ()))
        or (len(t) >= 2 and not t.endswith("다") and t.replace(" ", "") in squashed)
        or (len(t) >= 3 and _HANGUL_WORD.fullmatch(t) is not None and t[:-1] in present)
    }
