"""What retrieval hands the agent and what the agent hands the chat adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from core.contracts import Language, Platform


@dataclass(frozen=True)
class AnalysedSentence:
    """A sentence of a passage as the answer step scores it: its text and content terms with tags."""

    text: str
    terms: tuple[str, ...]
    tags: tuple[str, ...]  # base Kiwi tags, one per term


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk. `location` is human-readable ("p. 3", "§ 휴가 규정", "chunk 2").

    `analysis` is what ingestion learnt of the text, as the payload stores it (`rag.passage_analysis`);
    `sentences` decodes it on first use (only the passages the answer step reads pay for that).
    """

    chunk_id: str
    doc_id: str
    title: str
    text: str
    source: str = ""  # file path, URL or corpus id
    location: str = ""
    space: str = "default"
    score: float = 0.0
    lift: int = 0  # places earlier users' votes moved it up (negative: down); 0 without feedback
    url: str = ""  # the document's http(s) URL, when it has one: citations link to it
    analysis: Any = field(default=None, compare=False, repr=False)

    @cached_property
    def sentences(self) -> tuple[AnalysedSentence, ...] | None:
        """The stored sentences, so the answer step needs no Kiwi for them; None for chunks ingested
        before they were stored, which the answer step analyses live."""
        from rag.passage_analysis import decode  # it imports this module

        return decode(self.analysis, self.text)


@dataclass(frozen=True)
class Turn:
    """An earlier turn of the thread: the conversation memory the adapters pass in."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class AnswerRef:
    """Where the answer is posted; when given, the agent writes an answer record for it."""

    platform: Platform
    channel: str
    message_id: str
    thread_id: str = ""
    user_hash: str = ""


@dataclass(frozen=True)
class Citation:
    """`[n]` in the answer text maps to `citations[n-1]`."""

    n: int
    title: str
    source: str
    location: str
    doc_id: str
    chunk_id: str
    score: float
    space: str = "default"
    url: str = ""  # the document's http(s) URL ("" when it has none): adapters render a link


@dataclass
class AgentAnswer:
    """The typed result every adapter renders."""

    question: str
    condensed_question: str
    text: str
    language: Language
    citations: list[Citation] = field(default_factory=list)
    abstained: bool = False
    scores: dict[str, float] = field(default_factory=dict)  # e.g. top_score, rerank_top
    timings_ms: dict[str, float] = field(default_factory=dict)  # per graph node
    model: str = "extractive"
    adapter_version: str | None = None
    answer_id: str | None = None  # set when an AnswerRef was given and the record written
