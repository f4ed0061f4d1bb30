"""The answer prompt and its citation contract, shared by serving and training.

Contexts are numbered `[1] title — text`; the model is told to answer in the question's language and
to cite `[n]`. The training set (training/dataset.py) rebuilds the exact same messages from an answer
record, so an adapter learns on the prompt it is served with: change it here only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rag.types import Citation, Passage

SYSTEM_PROMPT = {
    "ko": (
        "당신은 사내 문서를 근거로 답하는 도우미입니다. 아래 번호가 매겨진 문서 조각만 근거로 사용하세요.\n"
        "- 한국어로 답하세요.\n"
        "- 근거로 쓴 문장 끝에 [1], [2]처럼 문서 번호를 붙이세요.\n"
        "- 문서에 답이 없으면 추측하지 말고 문서에 없다고 말하세요.\n"
        "- 짧고 정확하게 답하세요."
    ),
    "en": (
        "You answer questions using only the numbered document excerpts below.\n"
        "- Answer in English.\n"
        "- Cite the excerpts you used with their numbers, like [1] or [2], right after the claim.\n"
        "- If the excerpts do not contain the answer, say so instead of guessing.\n"
        "- Be brief and precise."
    ),
}

# The exact language instruction each prompt carries (tests and the training set check for it).
LANGUAGE_INSTRUCTION = {"ko": "한국어로 답하세요.", "en": "Answer in English."}

_CITATION = re.compile(r"\[(\d{1,3})\]")


def format_contexts(passages: Sequence[Passage]) -> str:
    """`[n] title — text` blocks, numbered from 1 in retrieval order."""
    return "\n\n".join(f"[{n}] {p.title} — {p.text.strip()}" for n, p in enumerate(passages, start=1))


def build_messages(
    question: str, passages: Sequence[Passage], language: str, history: Sequence[tuple[str, str]] = ()
) -> list[dict[str, str]]:
    """Chat messages for an OpenAI-compatible endpoint: system (rules + contexts), earlier turns, question.

    `history` is (role, text) pairs of the thread so far; the model sees them as conversation so a
    follow-up reads naturally, while the contexts were retrieved for the condensed question.
    """
    lang = language if language in SYSTEM_PROMPT else "en"
    system = f"{SYSTEM_PROMPT[lang]}\n\n문서 / Documents:\n{format_contexts(passages)}"
    messages = [{"role": "system", "content": system}]
    messages.extend(
        {"role": role, "content": text} for role, text in history if role in ("user", "assistant")
    )
    messages.append({"role": "user", "content": question})
    return messages


def condense_messages(
    question: str, history: Sequence[tuple[str, str]], language: str
) -> list[dict[str, str]]:
    """Ask the model to rewrite a follow-up as a standalone search question (no answer, one line)."""
    convo = "\n".join(f"{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in history)
    if language == "ko":
        instruction = (
            "아래 대화의 마지막 후속 질문을, 앞의 대화 없이도 이해할 수 있는 하나의 독립된 질문으로 다시 쓰세요. "
            "답하지 말고 질문 한 줄만 한국어로 출력하세요."
        )
    else:
        instruction = (
            "Rewrite the follow-up question as one standalone question that can be understood without the "
            "conversation. Do not answer it; output only the question, in English, on one line."
        )
    return [
        {"role": "system", "content": instruction},
        {"role": "user", "content": f"{convo}\n\nFollow-up: {question}"},
    ]


def citation_numbers(text: str, n_sources: int) -> list[int]:
    """The `[n]` numbers used in `text`, in order of first use, dropping ones with no source."""
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        n = int(match.group(1))
        if 1 <= n <= n_sources and n not in seen:
            seen.append(n)
    return seen


_MARKER = re.compile(r"( ?)\[(\d{1,3})\]")
# the end of a text that may still become a marker: a space, "[", "[1", " [12"
_OPEN_MARKER = re.compile(r" ?(?:\[\d{0,3})?$")


def _renumbered(text: str, new_number: dict[int, int]) -> str:
    def renumber(match: re.Match[str]) -> str:
        old = int(match.group(2))
        return f"{match.group(1)}[{new_number[old]}]" if old in new_number else ""

    return _MARKER.sub(renumber, text)


class StreamRenumberer:
    """`renumber_citations` on a text that arrives piece by piece: what can be shown so far.

    Numbers go by order of first use, so a marker's new number is known when it is complete; only
    an end that may still become a marker (" [1") is held back. The pieces shown add up to the
    renumbered whole (before its final strip), which lets a streamed answer match the stored one.
    """

    def __init__(self, n_sources: int) -> None:
        self.n_sources = n_sources
        self.raw = ""
        self.shown = ""

    def feed(self, piece: str) -> str:
        """The newly showable text after `piece` ("" while a marker is open)."""
        self.raw += piece
        safe = self.raw[: _OPEN_MARKER.search(self.raw).start()]  # type: ignore[union-attr]
        return self._advance(safe)

    def flush(self) -> str:
        """The rest, once the text is complete."""
        return self._advance(self.raw)

    def _advance(self, text: str) -> str:
        used = citation_numbers(text, self.n_sources)
        rendered = _renumbered(text, {old: new for new, old in enumerate(used, start=1)}).lstrip()
        if not rendered.startswith(self.shown):  # cannot happen for well-formed markers; show nothing wrong
            return ""
        delta, self.shown = rendered[len(self.shown):], rendered
        return delta


def renumber_citations(text: str, passages: Sequence[Passage]) -> tuple[str, list[Passage], list[Citation]]:
    """Renumber `[n]` by order of first use so `[k]` is `citations[k-1]`; drop out-of-range markers.

    Returns the rewritten text, the passages reordered the same way (cited ones first, in citation
    order, then the uncited rest: rebuilding the prompt from this order keeps the answer's numbers
    true, which the training set relies on) and the citations.
    """
    used = citation_numbers(text, len(passages))
    new_number = {old: new for new, old in enumerate(used, start=1)}
    rewritten = _renumbered(text, new_number).strip()
    ordered = [passages[n - 1] for n in used] + [p for i, p in enumerate(passages, 1) if i not in new_number]
    citations = [
        Citation(
            n=k,
            title=p.title,
            source=p.source,
            location=p.location,
            doc_id=p.doc_id,
            chunk_id=p.chunk_id,
            score=p.score,
            space=p.space,
            url=p.url,
        )
        for k, p in enumerate(ordered[: len(used)], start=1)
    ]
    return rewritten, ordered, citations
