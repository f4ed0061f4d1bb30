"""The question-answering agent: a LangGraph `StateGraph` every adapter (Slack, Discord, console) runs.

condense → retrieve → rerank → grade ─┬─ generate ─┬─ record → END
                                      └─ abstain ──┘

The thread is the memory: adapters pass the earlier turns, so the graph needs no checkpointer and
one compiled graph serves every thread concurrently. Each node reports its wall time, which lands in
`AgentAnswer.timings_ms` and the answer record (what a latency dashboard and the training set see).

One module (~320 lines): the graph's nodes are small methods over one shared state, and reading
them next to the edges that join them is how one follows an answer.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph

from core.contracts import AnswerRecord, ContextRef, TurnRef, make_answer_id
from core.errors import UserError
from core.records import save_answer
from core.settings import Settings
from rag.condense import condense, is_follow_up, without_request
from rag.extractive import extractive_answer
from rag.grading import assess
from rag.language import Language, detect_language, written_in
from rag.llm import LLM, LLMUnavailable, StreamingLLM, llm_from_settings
from rag.prompts import StreamRenumberer, build_messages, renumber_citations
from rag.types import AgentAnswer, AnswerRef, Citation, Passage, Turn

if TYPE_CHECKING:
    from core.store import BlobStore
    from rag.retrieval import Retriever

log = logging.getLogger(__name__)

ABSTAIN_MESSAGE = {
    "ko": "문서에서 이 질문에 대한 답을 찾지 못했습니다. 질문을 바꿔 보시거나, 관련 문서를 지식 베이스에 추가해 주세요.",
    "en": "I couldn't find the answer to this in the documents. Try rephrasing the question, "
    "or add a document that covers it to the knowledge base.",
}
MAX_QUESTION_CHARS = 4000
# After an answer quoted from the documents because the LLM could not give one, by why not.
FALLBACK_NOTE = {
    "unavailable": {
        "ko": "(지금은 언어 모델에 연결할 수 없어 문서의 문장을 그대로 옮겼습니다.)",
        "en": "(The language model is unavailable right now; this answer quotes the documents.)",
    },
    "language": {
        "ko": "(언어 모델이 다른 언어로 답해서 문서의 문장을 그대로 옮겼습니다.)",
        "en": "(The language model answered in another language; this answer quotes the documents.)",
    },
}
FALLBACK_MODEL = "extractive (LLM fallback)"
PROMPT_HISTORY_TURNS = 4  # earlier turns a still-elliptical follow-up is sent with
LANGUAGE_REMINDER = {"ko": "반드시 한국어로 답하세요.", "en": "Answer in English only."}
# A model (or a server ignoring max_tokens) may ramble on: what is posted and stored stops here, at a
# sentence end when there is one in the last fifth. Slack sections take 3,000, Discord embeds 4,096.
MAX_ANSWER_CHARS = 3000


def _merge(left: dict[str, float], right: dict[str, float]) -> dict[str, float]:
    return {**left, **right}



def prompt_history(state: AgentState) -> list[Turn]:
    """The thread's last turns when condensation left a follow-up as it was asked (an LLM that
    judged it standalone, or a rule with nothing to carry): the model then needs them to read it.
    A rewritten question stands alone and is sent alone."""
    history = state.get("history", [])
    earlier = [t.text for t in history if t.role == "user"]
    if state["condensed"] != state["asked"] or not earlier or not is_follow_up(state["asked"], earlier):
        return []
    return list(history[-PROMPT_HISTORY_TURNS:])


def cap_answer(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    """`text`, or its first `limit` characters cut after the last sentence end (else word) and "…"."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = max(head.rfind(mark) for mark in (". ", "다. ", "? ", "! ", "\n"))
    if cut < limit * 4 // 5:
        cut = head.rfind(" ")
    return (head[: cut + 1] if cut > 0 else head).rstrip() + " …"

class AgentState(TypedDict, total=False):
    """What flows through the graph (each node returns only the keys it sets)."""

    question: str
    history: list[Turn]
    spaces: list[str] | None
    ref: AnswerRef | None
    language: Language
    asked: str  # the question without a closing request phrase ("…알려줘"): what the answer looks for
    condensed: str
    passages: list[Passage]
    abstained: bool
    answer: str
    contexts: list[Passage]  # passages in the numbering the answer's [n] uses (cited ones first)
    citations: list[Citation]
    scores: Annotated[dict[str, float], _merge]
    timings: Annotated[dict[str, float], _merge]
    answer_id: str | None
    stream: bool  # pass a streaming LLM's text on as it comes (LangGraph's custom stream mode)
    llm_fallback: bool  # on an LLM outage, quote the documents instead of failing (the last attempt)
    fell_back: bool
    warnings: Annotated[list[str], operator.add]


class Node(Protocol):
    """A graph node. A Protocol, not a Callable alias: langgraph's `add_node` matches the parameter
    by its name, `state`, which a `Callable[[AgentState], …]` does not have."""

    def __call__(self, state: AgentState) -> dict[str, Any]: ...


def _timed(name: str, node: Node) -> Node:
    def run(state: AgentState) -> dict[str, Any]:
        started = time.perf_counter()
        update = node(state)
        update["timings"] = {name: round((time.perf_counter() - started) * 1000.0, 2)}
        return update

    run.__name__ = name
    return run


class Agent:
    """Answers questions from the knowledge base; one instance per process, shared by all threads."""

    def __init__(
        self,
        retriever: Retriever,
        *,
        settings: Settings,
        llm: LLM | None = None,
        store: BlobStore | None = None,
        owns_retriever: bool = False,
    ) -> None:
        self.retriever = retriever
        self.settings = settings
        self.llm = llm
        self._store = store
        self._owns_retriever = owns_retriever
        self.graph = self._build_graph()

    @classmethod
    def from_settings(
        cls, settings: Settings, retriever: Retriever | None = None, store: BlobStore | None = None
    ) -> Agent:
        """The agent the settings describe; opens the retriever (and later the store) when not given."""
        llm = llm_from_settings(settings)
        owns = retriever is None
        if retriever is None:
            from rag.retrieval import Retriever

            retriever = Retriever.from_settings(settings)
        return cls(retriever, settings=settings, llm=llm, store=store, owns_retriever=owns)

    @property
    def model(self) -> str:
        return self.llm.model if self.llm is not None else "extractive"

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            from core.store import open_store

            self._store = open_store(self.settings)
        return self._store

    def close(self) -> None:
        if self._owns_retriever:
            self.retriever.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the graph --------------------------------------------------------------------------------

    def _build_graph(self) -> Any:
        graph = StateGraph(AgentState)
        for name, node in (
            ("condense", self._condense),
            ("retrieve", self._retrieve),
            ("rerank", self._rerank),
            ("grade", self._grade),
            ("generate", self._generate),
            ("abstain", self._abstain),
            ("record", self._record),
        ):
            graph.add_node(name, _timed(name, node))
        graph.add_edge(START, "condense")
        graph.add_edge("condense", "retrieve")
        graph.add_edge("retrieve", "rerank")
        graph.add_edge("rerank", "grade")
        graph.add_conditional_edges(
            "grade", lambda s: "abstain" if s.get("abstained") else "generate", ["generate", "abstain"]
        )
        graph.add_conditional_edges(
            "generate", lambda s: "abstain" if s.get("abstained") else "record", ["record", "abstain"]
        )
        graph.add_edge("abstain", "record")
        graph.add_edge("record", END)
        return graph.compile()

    def _condense(self, state: AgentState) -> dict[str, Any]:
        asked = without_request(state["question"])
        condensed = condense(asked, state["history"], llm=self.llm, language=state["language"])
        return {"asked": asked, "condensed": condensed}

    def _retrieve(self, state: AgentState) -> dict[str, Any]:
        self.retriever.sync_feedback(self.store)  # votes cast since the last question count now
        # Ask for a few extra so dropping duplicate chunks still leaves top_k.
        passages = self.retriever.search(
            state["condensed"], spaces=state["spaces"], limit=self.settings.top_k + 2
        )
        return {"passages": passages}

    def _rerank(self, state: AgentState) -> dict[str, Any]:
        """The cross-encoder (when configured) runs inside the retriever; here near-duplicates (the
        same chunk, or the same text reached through overlapping chunks) go and the list is cut."""
        seen: set[str] = set()
        kept: list[Passage] = []
        for passage in state["passages"]:
            key = " ".join(passage.text.split())
            if passage.chunk_id in seen or key in seen:
                continue
            seen.update((passage.chunk_id, key))
            kept.append(passage)
        kept = kept[: self.settings.top_k]
        scores = {"top_score": kept[0].score if kept else 0.0, "passages": float(len(kept))}
        return {"passages": kept, "scores": scores}

    def _grade(self, state: AgentState) -> dict[str, Any]:
        evidence = assess(state["condensed"], state["passages"])
        semantic = bool(self.settings.dense_model or self.settings.embedding_base_url)
        ok = evidence.sufficient(
            min_coverage=self.settings.abstain_coverage,
            min_score=self.settings.abstain_score,
            semantic=semantic,
        )
        return {"abstained": not ok, "scores": {"coverage": round(evidence.coverage, 4)}}

    def _generate(self, state: AgentState) -> dict[str, Any]:
        passages = state["passages"]
        answered: str | None = None
        reason: str | None = None  # why an LLM's answer was replaced by the documents' own words
        if self.llm is not None:
            try:
                answered = self._llm_answer(state, passages)
            except LLMUnavailable as exc:
                if not state.get("llm_fallback"):
                    raise  # the platform retries; its last attempt asks for the fallback
                log.warning("answering from the documents: %s", exc)
                reason = "unavailable"
            else:
                reason = "language" if answered is None else None
        raw = answered if answered is not None else (
            extractive_answer(state["condensed"], passages, state["language"], focus=state["asked"]) or ""
        )
        if not raw.strip():
            # Extractive: no sentence shares a question term, an ordinary abstention. An LLM that
            # returns nothing is worth a warning.
            return {
                "abstained": True,
                "warnings": [f"{self.model} returned an empty answer"] if self.llm else [],
            }
        text, ordered, citations = renumber_citations(raw, passages)
        if reason is None:
            return {"answer": text, "contexts": ordered, "citations": citations}
        note = FALLBACK_NOTE[reason].get(state["language"], FALLBACK_NOTE[reason]["en"])
        return {"answer": f"{text}\n\n{note}", "contexts": ordered, "citations": citations, "fell_back": True}

    def _llm_answer(self, state: AgentState, passages: list[Passage]) -> str | None:
        """The model's answer, capped; asked once more, with a reminder, when it came back in the
        other language; None when it did again. The prompt is the one the training set rebuilds
        from the answer record (training/dataset.py), so an adapter is served the way it was
        trained: the standalone question, and the thread only when the question is still a
        follow-up (`prompt_history`, recorded with the answer)."""
        assert self.llm is not None
        language = state["language"]
        history = [(turn.role, turn.text) for turn in prompt_history(state)]
        messages = build_messages(state["condensed"], passages, language, history)
        for attempt in range(2):
            if attempt == 0 and state.get("stream") and isinstance(self.llm, StreamingLLM):
                raw = cap_answer(self._streamed(messages, len(passages)))
            else:
                raw = cap_answer(self.llm.complete(messages, max_tokens=self.settings.llm_max_tokens))
            if written_in(raw, language):
                return raw
            log.warning("the LLM answered a %s question in another language; asking again", language)
            reminder = LANGUAGE_REMINDER.get(language, LANGUAGE_REMINDER["en"])
            messages = [*messages[:-1], {"role": "user", "content": f"{messages[-1]['content']}\n\n{reminder}"}]
        return None

    def _streamed(self, messages: list[dict[str, Any]], n_sources: int) -> str:
        """The model's answer, read as it streams; the caller of `ask(on_text=…)` sees it as it
        comes, with the citation numbers it will have in the end (LangGraph's custom stream). Reading
        stops at the answer cap: nothing past it would be shown or stored."""
        assert isinstance(self.llm, StreamingLLM)
        write = get_stream_writer()
        renumberer = StreamRenumberer(n_sources)
        for piece in self.llm.stream(messages, max_tokens=self.settings.llm_max_tokens):
            shown = renumberer.feed(piece)
            if shown:
                write({"text": shown})
            if len(renumberer.raw) > MAX_ANSWER_CHARS:
                break
        rest = renumberer.flush()
        if rest:
            write({"text": rest})
        return renumberer.raw.strip()

    def _abstain(self, state: AgentState) -> dict[str, Any]:
        return {
            "abstained": True,
            "answer": ABSTAIN_MESSAGE.get(state["language"], ABSTAIN_MESSAGE["en"]),
            "contexts": state.get("passages", []),
            "citations": [],
        }

    def _record(self, state: AgentState) -> dict[str, Any]:
        ref = state.get("ref")
        if ref is None:
            return {"answer_id": None}
        answer_id = make_answer_id(ref.platform, ref.channel, ref.message_id)
        cited = {c.chunk_id for c in state.get("citations", [])}
        record = AnswerRecord(
            answer_id=answer_id,
            platform=ref.platform,
            channel=ref.channel,
            message_id=ref.message_id,
            thread_id=ref.thread_id,
            user_hash=ref.user_hash,
            question=state["question"],
            condensed_question=state["condensed"],
            prompt_history=[TurnRef(role=t.role, text=t.text) for t in prompt_history(state)],
            contexts=[
                ContextRef(
                    doc_id=p.doc_id,
                    chunk_id=p.chunk_id,
                    title=p.title,
                    source=p.source,
                    location=p.location,
                    url=p.url,
                    score=p.score,
                    text=p.text,
                    space=p.space,
                    cited=p.chunk_id in cited,
                    feedback_lift=p.lift,
                )
                for p in state.get("contexts", [])
            ],
            answer=state["answer"],
            language=state["language"],
            abstained=bool(state.get("abstained")),
            model=FALLBACK_MODEL if state.get("fell_back") else self.model,
            adapter_version=self._adapter_version(state),
            spaces=state["spaces"],
            latencies_ms=dict(state.get("timings", {})),
        )
        save_answer(self.store, record)
        return {"answer_id": answer_id}

    def _adapter_version(self, state: AgentState) -> str | None:
        """None when no adapter wrote the answer (extractive, or quoted because the LLM was down)."""
        return self.llm.adapter_version if self.llm is not None and not state.get("fell_back") else None

    # --- entry point ------------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        *,
        history: Sequence[Turn] = (),
        spaces: list[str] | None = None,
        ref: AnswerRef | None = None,
        llm_fallback: bool = False,
        on_text: Callable[[str], None] | None = None,
    ) -> AgentAnswer:
        """Answer `question` (in its language) from the passages `spaces` may see, citing them `[n]`.
        `llm_fallback`: when the LLM is unreachable, quote the documents (marked as such) instead of
        raising LLMUnavailable: for the last try of a question, or where nothing retries.
        `on_text`: called with the answer's text as a streaming LLM writes it; the returned answer
        is what counts (it differs from the streamed text when the answer was replaced or capped)."""
        question = (question or "").strip()
        if not question:
            raise UserError(
                'the question is empty: type a question, e.g. echorag ask "연차는 며칠인가요?"'
            )
        if len(question) > MAX_QUESTION_CHARS:
            raise UserError(
                f"the question is too long ({len(question)} characters; at most {MAX_QUESTION_CHARS})"
            )
        started = time.perf_counter()
        inputs: AgentState = {
            "question": question,
            "history": list(history),
            "spaces": list(spaces) if spaces is not None else None,
            "ref": ref,
            "llm_fallback": llm_fallback,
            "stream": on_text is not None,
            "language": detect_language(question),
            "scores": {},
            "timings": {},
            "warnings": [],
        }
        if on_text is None:
            state: AgentState = self.graph.invoke(inputs)
        else:
            for mode, chunk in self.graph.stream(inputs, stream_mode=["custom", "values"]):
                if mode == "custom":
                    on_text(chunk["text"])
                else:
                    state = chunk
        timings = dict(state.get("timings", {}))
        timings["total"] = round((time.perf_counter() - started) * 1000.0, 2)
        for warning in state.get("warnings", []):
            log.warning("%s (question %r)", warning, question[:80])
        return AgentAnswer(
            question=question,
            condensed_question=state.get("condensed", question),
            text=state["answer"],
            language=state["language"],
            citations=list(state.get("citations", [])),
            abstained=bool(state.get("abstained")),
            scores=dict(state.get("scores", {})),
            timings_ms=timings,
            model=FALLBACK_MODEL if state.get("fell_back") else self.model,
            adapter_version=self._adapter_version(state),
            answer_id=state.get("answer_id"),
        )
