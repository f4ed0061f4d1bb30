"""Korean-aware text primitives shared by chunking, sparse retrieval and extractive answers.

Kiwi is built once per process: creating it and loading its model costs ~1.3 s, which a Lambda
cold start or a CLI run should pay once, not per call.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiwipiepy import Kiwi

# Morpheme tags that carry content: nouns, numerals, foreign words / numbers / hanja, roots, verbs,
# adjectives. Adverbs, particles, endings and punctuation are dropped. Tags may carry suffixes ("VV-R").
CONTENT_TAGS = frozenset({"NNG", "NNP", "NNB", "NR", "SL", "SN", "SH", "XR", "VV", "VA"})
_PREDICATE_TAGS = frozenset({"VV", "VA"})
# Bound nouns that occur everywhere and carry no topic.
_STOP_FORMS = frozenset({"것", "수", "등", "때", "중", "데", "바", "뿐", "적"})

# English function words (Kiwi tags every Latin word SL): without this list "how do I …" matches
# any English passage through "a", "do", "i".
_EN_STOP_WORDS = """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves"""
_EN_STOP = frozenset(_EN_STOP_WORDS.split())

_lock = threading.Lock()


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


def _english_stem(word: str) -> str:
    """Light plural stemming ("releases" → "release", "policies" → "policy"), applied to both sides."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@lru_cache(maxsize=262_144)
def _term(form: str, tag: str) -> str | None:
    """The BM25 term of one morpheme, or None (cached: ingestion sees the same morphemes over and over)."""
    base = tag.split("-")[0]
    if base not in CONTENT_TAGS:
        return None
    form = form.lower()
    if base in _PREDICATE_TAGS:
        return form + "다"
    if base == "SL":
        return None if len(form) < 2 or form in _EN_STOP else _english_stem(form)
    return None if form in _STOP_FORMS else form


def _terms_from_tokens(tokens: Iterable) -> list[str]:
    out: list[str] = []
    for tok in tokens:
        term = _term(tok.form, tok.tag)
        if term is not None:
            out.append(term)
    return out


def terms(text: str) -> list[str]:
    """Content morphemes of `text`, lowercased (BM25 terms; verbs/adjectives get their '다' form)."""
    if not text.strip():
        return []
    return _terms_from_tokens(get_kiwi().tokenize(text))


@dataclass(frozen=True)
class Sentence:
    """A sentence of an analysed text: its character span and its content terms with offsets."""

    start: int
    end: int
    terms: tuple[tuple[int, str], ...]  # (character offset in the text, term)


def _sentences_from_tokens(sent_tokens: list[list]) -> list[Sentence]:
    out: list[Sentence] = []
    for toks in sent_tokens:
        if not toks:
            continue
        start = toks[0].start
        end = toks[-1].start + toks[-1].len
        terms = []
        for tok in toks:
            term = _term(tok.form, tok.tag)
            if term is not None:
                terms.append((tok.start, term))
        out.append(Sentence(start, end, tuple(terms)))
    return out


def analyze_many(texts: list[str]) -> list[list[Sentence]]:
    """Sentences and content terms of many texts in ONE batched Kiwi pass.

    Ingestion needs both the sentence boundaries (chunking) and the terms (BM25); analysing once
    halves the dominant cost of ingestion.
    """
    if not texts:
        return []
    kiwi = get_kiwi()
    return [_sentences_from_tokens(sents) for sents in kiwi.tokenize(texts, split_sents=True)]
