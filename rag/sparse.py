"""Kiwi BM25 as Qdrant sparse vectors (the IDF half is Qdrant's `Modifier.IDF`).

One sparse vector carries three kinds of evidence, each hashed into its own index space:
- content morphemes (Kiwi), the classic Korean BM25 term;
- adjacent content-morpheme pairs within a sentence ("관동군_내리다"): cheap phrase/proximity
  evidence that separates passages of one article which share the same vocabulary;
- character bigrams of Hangul words: recall when Kiwi segments a name or compound differently
  in the question and in the document ("유영철" → 유영/철).
Measured on korquad1 (bench/RESULTS.md) the single combined vector beats RRF over separate
vectors. Documents carry the BM25 TF part, `tf·(k1+1) / (tf + k1·(1 − b + b·len/avglen))`;
queries carry 1.0 per distinct feature. Length is measured in characters against a fixed average
(chunks are cut to a size), so ingesting more documents never changes stored weights.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from core.settings import Settings
from rag.text import Sentence, analyze_many

# Bump when features or weights change: stored documents are re-indexed on the next ingest.
SPARSE_VERSION = "bm25-mpb-3"

_WORD = re.compile(r"[\uac00-\ud7a3]+")


@dataclass(frozen=True)
class SparseVec:
    """Indices (hashed features) and values, sorted by index, no duplicates."""

    indices: list[int]
    values: list[float]


@lru_cache(maxsize=262_144)
def _hash(kind: str, term: str) -> int:
    """Stable 31-bit feature index (crc32: the same across processes and versions of Python)."""
    return zlib.crc32(f"{kind}:{term}".encode()) & 0x7FFFFFFF


def char_bigrams(text: str) -> list[str]:
    """Character bigrams of each Hangul word (a one-syllable word is its own feature)."""
    out: list[str] = []
    for word in _WORD.findall(text):
        if len(word) == 1:
            out.append(word)
        else:
            out.extend(word[i : i + 2] for i in range(len(word) - 1))
    return out


def features(sentence_terms: Iterable[Sequence[str]], text: str) -> Counter[int]:
    """Hashed feature counts of a text given its per-sentence content terms."""
    counts: Counter[int] = Counter()
    for terms in sentence_terms:
        for term in terms:
            counts[_hash("m", term)] += 1
        for left, right in pairwise(terms):
            counts[_hash("p", f"{left}_{right}")] += 1
    for gram in char_bigrams(text):
        counts[_hash("b", gram)] += 1
    return counts


class SparseEncoder:
    """Turns texts into BM25 document and query vectors."""

    def __init__(self, *, k1: float = 0.8, b: float = 0.75, avg_chars: float = 500.0) -> None:
        """k1 below the textbook 1.2: repeated mentions of a topic word (every passage of an article
        repeats its subject) should saturate fast; measured on korquad1, k1 0.6–0.9 with b 0.75–0.9
        all beat 1.2 (bench/RESULTS.md)."""
        self.k1 = k1
        self.b = b
        self.avg_chars = avg_chars

    def document_vector(self, counts: Counter[int], length: int) -> SparseVec:
        """BM25 TF part of each feature; `length` is the indexed text's length in characters."""
        norm = self.k1 * (1.0 - self.b + self.b * length / self.avg_chars)
        items = sorted(counts.items())
        return SparseVec(
            indices=[i for i, _ in items],
            values=[tf * (self.k1 + 1.0) / (tf + norm) for _, tf in items],
        )

    def document(self, sentences: Sequence[Sentence], text: str) -> SparseVec:
        """Vector of a text already analysed into sentences (ingestion path)."""
        counts = features(([t for _, t in s.terms] for s in sentences), text)
        return self.document_vector(counts, len(text))

    def documents(self, texts: list[str]) -> list[SparseVec]:
        """Vectors of raw texts (one batched Kiwi pass)."""
        return [self.document(sents, text) for sents, text in zip(analyze_many(texts), texts, strict=True)]

    def query(self, text: str) -> SparseVec:
        """1.0 per distinct feature: Qdrant's IDF modifier weighs them."""
        sentences = analyze_many([text])[0]
        counts = features(([t for _, t in s.terms] for s in sentences), text)
        keys = sorted(counts)
        return SparseVec(indices=keys, values=[1.0] * len(keys))


def sparse_from_settings(settings: Settings) -> SparseEncoder:
    """The encoder ingestion and queries share (length normalised to the configured chunk size)."""
    return SparseEncoder(avg_chars=0.8 * settings.chunk_size)
