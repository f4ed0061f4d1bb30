"""Korean-aware chunking: whole sentences (Kiwi boundaries) packed up to a size, with overlap.

Chunks never cross a section (a markdown heading, a PDF page), so each has one citation location.
The title is prepended to the indexed text of every chunk: a passage deep in a document still
matches questions that name the document's subject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rag.loaders import Document
from rag.passage_analysis import SentenceSpan, derive
from rag.text import Sentence, analyze_many


@dataclass(frozen=True)
class Chunk:
    index: int  # position within the document
    text: str  # the passage shown to the reader (without the title)
    location: str
    sentence_terms: tuple[tuple[str, ...], ...]  # content terms per sentence, for BM25
    heading: str = ""  # the section heading, indexed with the chunk
    sentences: tuple[SentenceSpan, ...] = ()  # the answer step's sentences, stored with the chunk

    def index_text(self, title: str) -> str:
        """What gets embedded and counted for length: title, section heading, then the passage."""
        head = [part for part in (title, self.heading if self.heading != title else "") if part]
        return "\n".join([*head, self.text])


def _split_long(sentence: Sentence, text: str, limit: int) -> list[Sentence]:
    """Cut a sentence longer than `limit` characters at whitespace (tables, lists without '.')."""
    pieces: list[Sentence] = []
    start = sentence.start
    while sentence.end - start > limit:
        cut = text.rfind(" ", start + limit // 2, start + limit)
        cut = cut if cut > start else start + limit
        pieces.append(Sentence(start, cut, tuple(t for t in sentence.terms if start <= t[0] < cut),
                               tuple(t for t in sentence.scored if start <= t[0] < cut)))
        start = cut
        while start < sentence.end and text[start].isspace():
            start += 1
    if start < sentence.end:
        pieces.append(Sentence(start, sentence.end, tuple(t for t in sentence.terms if t[0] >= start),
                               tuple(t for t in sentence.scored if t[0] >= start)))
    return pieces


@dataclass(frozen=True)
class Packed:
    """One chunk's text, its sentences' BM25 terms, and its sentences for the answer step."""

    text: str
    terms: tuple[tuple[str, ...], ...]
    sentences: tuple[SentenceSpan, ...]


def pack_sentences(text: str, sentences: list[Sentence], *, chunk_size: int, overlap: int) -> list[Packed]:
    """Pack whole sentences into chunks of at most ~`chunk_size` characters, evenly.

    A section that needs n chunks is cut into n chunks of similar length instead of n-1 full ones
    and a scrap: a short tail chunk carries too little context to answer from, and BM25 length
    normalisation would over-rank it. Each chunk after the first repeats the last `overlap`
    sentences of the previous one, so an answer spanning a boundary is still whole in one chunk.
    """
    sents: list[Sentence] = []
    for sentence in sentences:
        sents.extend(_split_long(sentence, text, chunk_size) if sentence.end - sentence.start > chunk_size else [sentence])
    chunks: list[Packed] = []
    i = 0
    while i < len(sents):
        remaining = sents[-1].end - sents[i].start
        target = remaining / math.ceil(remaining / chunk_size)
        j = i + 1
        while j < len(sents) and sents[j].end - sents[i].start <= chunk_size and sents[j - 1].end - sents[i].start < target:
            j += 1
        raw = text[sents[i].start : sents[j - 1].end]
        body = raw.strip()
        base = sents[i].start + len(raw) - len(raw.lstrip())
        terms = tuple(tuple(t for _, t in s.terms) for s in sents[i:j])
        chunks.append(Packed(body, terms, derive(body, sents[i:j], base)))
        if j >= len(sents):
            break
        i = max(i + 1, j - overlap)
    return chunks


def chunk_documents(docs: list[Document], *, chunk_size: int, overlap: int) -> list[list[Chunk]]:
    """Chunks of each document (one batched Kiwi pass over every section of every document)."""
    texts = [section.text for doc in docs for section in doc.sections]
    headings = [section.heading if section.heading != doc.title else "" for doc in docs for section in doc.sections]
    analyses = iter(analyze_many(texts))
    heading_terms = iter(_flat_terms(headings))
    out: list[list[Chunk]] = []
    for doc in docs:
        chunks: list[Chunk] = []
        for section in doc.sections:
            head_terms = next(heading_terms)
            packed = pack_sentences(section.text, next(analyses), chunk_size=chunk_size, overlap=overlap)
            for p in packed:
                if p.text:
                    sentence_terms = (head_terms, *p.terms) if head_terms else p.terms
                    chunks.append(
                        Chunk(len(chunks), p.text, section.location, sentence_terms, section.heading, p.sentences)
                    )
        out.append(chunks)
    return out


def _flat_terms(texts: list[str]) -> list[tuple[str, ...]]:
    non_empty = [t for t in texts if t.strip()]
    analysed = iter(analyze_many(non_empty))
    return [tuple(term for s in next(analysed) for _, term in s.terms) if t.strip() else () for t in texts]


def title_terms(docs: list[Document]) -> list[tuple[str, ...]]:
    """Content terms of each document's title (indexed with every chunk of it)."""
    return _flat_terms([d.title for d in docs])
