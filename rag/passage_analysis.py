"""What the answer step reads of a passage — its sentences and their scored terms — learnt once, at
ingestion, and kept in the chunk's payload.

Why: re-running Kiwi on every retrieved passage (sentence splitting, then each sentence's terms) was
~70% of a warm answer's time, while ingestion had already split and tokenised the same text in one
batched pass (`rag.text.analyze_many`). `derive` cuts a chunk into the answer step's sentences (the
rules of `sentences_of`) from that pass's Kiwi sentences and takes each one's answer-scoring terms
from that pass's tokens (Kiwi's reading of the sentence in context, which differs from its reading
alone for ~1% of sentences; no dev metric moved). The payload keeps them compactly (`encode`: a
sentence is a character span of the chunk text, most terms a place in it; ~62% of the text's bytes
on KorQuAD). A chunk ingested before this (no `analysis` field, or another ANALYSIS_VERSION) is
analysed live, as before.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag.text import Sentence, analyse, split_sentences
from rag.types import AnalysedSentence, Passage

# Bump when the analysis stored with chunks changes (tags, stop lists, sentence rules, Kiwi model):
# stored analyses of another version are ignored, and documents are re-indexed on the next ingest.
ANALYSIS_VERSION = "a1"

_LINE_END = re.compile(r"(?<=[.!?:;)。])[ \t]*\n|\n\s*\n")
_EN_BOUNDARY = re.compile(r"(?<=[a-z0-9%)][.!?])\s+(?=[A-Z\"'(])")
# One letter per base tag of rag.text.CONTENT_TAGS, for the payload.
_LETTER = {"NNG": "G", "NNP": "P", "NNB": "B", "NR": "R", "SL": "L", "SN": "N", "SH": "H", "XR": "X",
           "VV": "V", "VA": "A"}
_TAG = {letter: tag for tag, letter in _LETTER.items()}
_JOIN = "|"  # between terms: Kiwi's multi-word names hold spaces ("하코다테 전쟁"), content terms no "|"


@dataclass(frozen=True)
class SentenceSpan:
    """One answer-step sentence of a chunk: its span in the chunk text and its scored terms, each
    with the offset of its token in the chunk text."""

    start: int
    end: int
    terms: tuple[str, ...]
    tags: tuple[str, ...]
    offsets: tuple[int, ...]


def sentences_of(text: str) -> list[str]:
    """Sentences of a passage: lines ending in punctuation on their own (list items), Kiwi's splitter for
    Korean, and a plain punctuation rule for English, which Kiwi leaves joined. The live path, for
    passages with no stored analysis; `derive` applies the same rules to ingestion's Kiwi sentences."""
    out: list[str] = []
    # A line break ends a sentence only after sentence-final punctuation: hard-wrapped prose stays whole.
    for block in _LINE_END.split(text):
        block = " ".join(block.split())
        if not block:
            continue
        for sentence in split_sentences(block):
            out.extend(part.strip() for part in _EN_BOUNDARY.split(sentence) if part.strip())
    return out


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def derive(text: str, sentences: Sequence[Sentence], base: int = 0) -> tuple[SentenceSpan, ...]:
    """The answer step's sentences of `text` (as `sentences_of` cuts them), from Kiwi's `sentences`
    of ingestion's pass over the section holding it; their offsets are `base` + offsets in `text`."""
    tokens = sorted((offset - base, t, tag) for s in sentences for offset, t, tag in s.scored)
    offsets = [offset for offset, _, _ in tokens]
    blocks: list[tuple[int, int]] = []
    pos = 0
    for match in _LINE_END.finditer(text):
        blocks.append((pos, match.start()))
        pos = match.end()
    blocks.append((pos, len(text)))
    out: list[SentenceSpan] = []
    for block_start, block_end in blocks:
        for sentence in sentences:
            start, end = _stripped(text, max(sentence.start - base, block_start), min(sentence.end - base, block_end))
            cuts = [start, *(c for m in _EN_BOUNDARY.finditer(text, start, end) for c in m.span()), end]
            for part_start, part_end in zip(cuts[::2], cuts[1::2], strict=True):
                a, b = _stripped(text, part_start, part_end)
                if a < b:
                    found = tokens[bisect.bisect_left(offsets, a) : bisect.bisect_left(offsets, b)]
                    out.append(SentenceSpan(a, b, tuple(t for _, t, _ in found), tuple(g for _, _, g in found),
                                            tuple(o for o, _, _ in found)))
    return tuple(out)  # in text order: blocks in order, Kiwi's sentences in order within each


def encode(spans: Sequence[SentenceSpan], text: str) -> dict[str, Any] | None:
    """The payload value of a chunk's sentences: `{"v": version, "s": [[start, end, terms, tags], …]}`,
    `tags` one letter per term, `terms` its entries joined by "|": a term that is its token's text
    verbatim (most nouns, lower-cased) as `gap:length` (characters from the end of the previous such
    term, or the sentence start), any other (a verb's 다 form) spelt out, after a "=" when it starts
    with a digit or "=". None when a term holds "|" (the chunk is then analysed live)."""
    rows: list[list[Any]] = []
    for s in spans:
        entries: list[str] = []
        pos = s.start
        for t, offset in zip(s.terms, s.offsets, strict=True):
            if _JOIN in t:
                return None
            if offset >= pos and text[offset : offset + len(t)].lower() == t:
                entries.append(f"{offset - pos}:{len(t)}")
                pos = offset + len(t)
            else:
                entries.append(f"={t}" if t[:1].isdigit() or t.startswith("=") else t)
        rows.append([s.start, s.end, _JOIN.join(entries), "".join(_LETTER[tag] for tag in s.tags)])
    return {"v": ANALYSIS_VERSION, "s": rows}


def decode(value: object, text: str) -> tuple[AnalysedSentence, ...] | None:
    """The stored sentences of a chunk's `text`, or None when the payload has none of this version."""
    if not isinstance(value, dict) or value.get("v") != ANALYSIS_VERSION:
        return None
    out: list[AnalysedSentence] = []
    try:
        for start, end, entries, letters in value["s"]:
            found: list[str] = []
            pos = start
            for entry in entries.split(_JOIN) if entries else ():
                if entry[:1].isdigit():
                    gap, _, length = entry.partition(":")
                    pos += int(gap)
                    found.append(text[pos : pos + int(length)].lower())
                    pos += int(length)
                else:
                    found.append(entry[1:] if entry.startswith("=") else entry)
            tags = tuple(_TAG[c] for c in letters)
            if len(found) != len(tags):
                return None
            out.append(AnalysedSentence(" ".join(text[start:end].split()), tuple(found), tags))
    except (KeyError, TypeError, ValueError):
        return None
    return tuple(out)


def header_text(passage: Passage) -> str:
    """The passage's title and section heading, what each of its sentences is about."""
    return f"{passage.title.replace('_', ' ')}\n{passage.location.lstrip('§ ')}"


def passage_sentences(passages: Sequence[Passage]) -> list[tuple[AnalysedSentence, ...]]:
    """Each passage's analysed sentences: stored ones as they are, the others analysed now (one
    batched Kiwi call for all of them)."""
    live = [sentences_of(p.text) if p.sentences is None else [] for p in passages]
    analysed = analyse([text for texts in live for text in texts])
    out: list[tuple[AnalysedSentence, ...]] = []
    used = 0
    for passage, texts in zip(passages, live, strict=True):
        if passage.sentences is not None:
            out.append(passage.sentences)
            continue
        fresh = analysed[used : used + len(texts)]
        used += len(texts)
        out.append(tuple(AnalysedSentence(t, tuple(f), tuple(g)) for t, (f, g) in zip(texts, fresh, strict=True)))
    return out
