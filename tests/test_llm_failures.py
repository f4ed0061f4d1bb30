"""What the OpenAI-compatible client does with an endpoint that misbehaves, against a local fake
that answers each request the way it is told: a 200 that is not JSON, a reply slower than the
timeout, and a reply far longer than any answer should be."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rag.llm import LLMRejected, LLMUnavailable, OpenAICompatibleLLM

MESSAGES = [{"role": "user", "content": "When do deploys happen?"}]


class ScriptedLLM:
    """POST /v1/chat/completions answered by `reply` (status, content type, body) after `delay_s`;
    `queued` replies go first, one per request."""

    def __init__(self) -> None:
        self.reply: tuple[int, str, bytes] = (200, "application/json", b"{}")
        self.queued: list[tuple[int, str, bytes]] = []
        self.bodies: list[dict[str, Any]] = []
        self.delay_s = 0.0
        self.requests = 0
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                scripted.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                scripted.requests += 1
                time.sleep(scripted.delay_s)
                status, ctype, body = scripted.queued.pop(0) if scripted.queued else scripted.reply
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def completion(content: str) -> tuple[int, str, bytes]:
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
        return 200, "application/json", json.dumps(body).encode()

    def answer(self, content: str) -> None:
        self.reply = self.completion(content)


@pytest.fixture
def endpoint() -> Iterator[ScriptedLLM]:
    fake = ScriptedLLM()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_a_200_that_is_not_a_chat_completion_is_a_clear_refusal(endpoint: ScriptedLLM) -> None:
    """A web server's HTML page at LLM_BASE_URL: one clear error, not an AttributeError."""
    endpoint.reply = (200, "text/html", b"<html><body>It works!</body></html>")
    llm = OpenAICompatibleLLM(model="m", base_url=endpoint.url, timeout_s=5)
    with pytest.raises(LLMRejected, match="answered 200 but not with a chat completion") as caught:
        llm.complete(MESSAGES, max_tokens=16)
    assert endpoint.url in str(caught.value)


def test_a_timeout_says_the_llm_was_slow_not_unreachable(endpoint: ScriptedLLM) -> None:
    endpoint.answer("late")
    endpoint.delay_s = 1.5
    llm = OpenAICompatibleLLM(model="m", base_url=endpoint.url, timeout_s=0.5)
    with pytest.raises(LLMUnavailable, match=r"did not answer within 0.5 s \(LLM_TIMEOUT_S\)") as caught:
        llm.complete(MESSAGES, max_tokens=16)
    assert "cannot reach" not in str(caught.value) and "check LLM_BASE_URL" not in str(caught.value)


def test_an_unreachable_endpoint_still_points_at_the_url() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens
    llm = OpenAICompatibleLLM(model="m", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=2)
    with pytest.raises(LLMUnavailable, match=r"cannot reach the LLM at .*check LLM_BASE_URL"):
        llm.complete(MESSAGES, max_tokens=16)


def test_a_runaway_reply_is_capped_before_it_is_posted_or_stored(endpoint: ScriptedLLM, tmp_path: Any) -> None:
    """54,000 characters from a server that ignores max_tokens: the agent keeps the first sentences."""
    from rag.agent import MAX_ANSWER_CHARS, cap_answer

    sentence = "배포는 매주 화요일과 목요일에 합니다 [1]. "
    endpoint.answer(sentence * (54_000 // len(sentence)))
    llm = OpenAICompatibleLLM(model="m", base_url=endpoint.url, timeout_s=5)
    raw = llm.complete(MESSAGES, max_tokens=16)
    assert len(raw) > 50_000
    capped = cap_answer(raw)
    assert len(capped) <= MAX_ANSWER_CHARS + 2 and capped.endswith("…")
    assert capped.removesuffix(" …").endswith("[1].")  # cut at a sentence end, not mid-word
    assert cap_answer("짧은 답 [1].") == "짧은 답 [1]."


def test_the_agent_posts_and_stores_only_the_capped_answer(endpoint: ScriptedLLM, tmp_path: Any) -> None:
    from pathlib import Path

    from core.records import load_answer
    from rag.agent import MAX_ANSWER_CHARS, Agent
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever
    from rag.types import AnswerRef
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    doc = Path(__file__).resolve().parents[1] / "examples" / "handbook" / "휴가-규정.md"
    assert ingest_paths([doc], space="default", settings=settings, progress=False).added == 1
    endpoint.answer("연차는 15일입니다 [1]. " * 4000)
    llm = OpenAICompatibleLLM(model="m", base_url=endpoint.url, timeout_s=5)
    with Retriever.from_settings(settings) as retriever:
        agent = Agent(retriever, settings=settings, llm=llm)
        answer = agent.ask("연차는 며칠인가요?", ref=AnswerRef(platform="console", channel="c", message_id="m1"))
    assert len(answer.text) <= MAX_ANSWER_CHARS + 2
    record = load_answer(agent.store, answer.answer_id or "")
    assert record is not None and record.answer == answer.text


def test_the_console_answers_from_the_documents_when_the_llm_is_down(tmp_path: Any) -> None:
    """Nothing retries a console question: an outage gets the quoted answer at once, marked."""
    import io
    import socket
    from pathlib import Path

    from bots.console import ConsoleChat
    from rag.agent import FALLBACK_MODEL, FALLBACK_NOTE, Agent
    from rag.ingest import ingest_paths
    from tests.conftest import make_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(tmp_path, llm_base_url=f"http://127.0.0.1:{port}/v1", llm_model="echorag", llm_timeout_s=2)
    doc = Path(__file__).resolve().parents[1] / "examples" / "handbook" / "휴가-규정.md"
    assert ingest_paths([doc], space="default", settings=settings, progress=False).added == 1
    with Agent.from_settings(settings) as agent:
        chat = ConsoleChat(agent=agent, settings=settings, store=agent.store, out=io.StringIO())
        answer = chat.ask("연차는 며칠인가요?")
    assert answer.text.endswith(FALLBACK_NOTE["unavailable"]["ko"]) and answer.model == FALLBACK_MODEL
    assert "[1]" in answer.text and answer.citations


def _handbook_agent(endpoint: ScriptedLLM, tmp_path: Any) -> Any:
    from pathlib import Path

    from rag.agent import Agent
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    doc = Path(__file__).resolve().parents[1] / "examples" / "handbook" / "휴가-규정.md"
    assert ingest_paths([doc], space="default", settings=settings, progress=False).added == 1
    llm = OpenAICompatibleLLM(model="m", base_url=endpoint.url, timeout_s=5)
    return Agent(Retriever.from_settings(settings), settings=settings, llm=llm, owns_retriever=True)


ENGLISH = "Employees get 15 days of annual leave after their first full year of service [1]."


def test_an_answer_in_the_wrong_language_is_asked_again_then_replaced(endpoint: ScriptedLLM, tmp_path: Any) -> None:
    from rag.agent import FALLBACK_MODEL, FALLBACK_NOTE, LANGUAGE_REMINDER

    endpoint.answer(ENGLISH)  # a Korean question, an English answer, twice
    with _handbook_agent(endpoint, tmp_path) as agent:
        answer = agent.ask("연차는 며칠인가요?")
    assert endpoint.requests == 2
    assert LANGUAGE_REMINDER["ko"] in endpoint.bodies[1]["messages"][-1]["content"]  # the second ask reminds
    assert answer.text.endswith(FALLBACK_NOTE["language"]["ko"]) and answer.model == FALLBACK_MODEL
    assert "Employees get" not in answer.text and answer.citations  # the documents' own words, cited


def test_a_wrong_language_answer_corrected_on_the_second_ask_is_kept(endpoint: ScriptedLLM, tmp_path: Any) -> None:
    endpoint.queued = [endpoint.completion(ENGLISH)]
    endpoint.answer("입사 1년 후에는 15일의 연차가 주어집니다 [1].")
    with _handbook_agent(endpoint, tmp_path) as agent:
        answer = agent.ask("연차는 며칠인가요?")
    assert endpoint.requests == 2 and answer.text == "입사 1년 후에는 15일의 연차가 주어집니다 [1]."
    assert answer.model == "m"


def _sse(*pieces: str, finish: bool = True) -> tuple[int, str, bytes]:
    """A chat-completion stream as an OpenAI-compatible server sends it (server-sent events)."""
    events = []
    for text in pieces:
        chunk = {"id": "s1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        events.append(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n")
    if finish:
        events.append("data: [DONE]\n\n")
    return 200, "text/event-stream", "".join(events).encode()


def test_answers_stream_piece_by_piece(endpoint: ScriptedLLM) -> None:
    endpoint.reply = _sse("배포는 ", "화요일과 ", "목요일에 합니다 [1].")
    llm = OpenAICompatibleLLM(model="m", base_url=endpoint.url, timeout_s=5)
    pieces = list(llm.stream(MESSAGES, max_tokens=64))
    assert pieces == ["배포는 ", "화요일과 ", "목요일에 합니다 [1]."]
    assert endpoint.bodies[-1]["stream"] is True


@pytest.mark.parametrize(
    ("reply", "error"),
    [((503, "application/json", b'{"error": {"message": "overloaded"}}'), LLMUnavailable),
     ((404, "application/json", b'{"error": {"message": "no such model"}}'), LLMRejected)],
    ids=["5xx", "4xx"],
)
def test_a_stream_that_cannot_start_raises_as_complete_does(
    endpoint: ScriptedLLM, reply: tuple[int, str, bytes], error: type[Exception]
) -> None:
    endpoint.reply = reply
    llm = OpenAICompatibleLLM(model="m", base_url=endpoint.url, timeout_s=5)
    with pytest.raises(error, match="answered HTTP"):
        list(llm.stream(MESSAGES, max_tokens=64))


@pytest.mark.parametrize("rewrite", [None, "반차는 몇 시간 단위로 쓸 수 있나요?"], ids=["left-as-asked", "rewritten"])
def test_a_follow_up_left_as_asked_reaches_the_model_with_its_thread(
    endpoint: ScriptedLLM, tmp_path: Any, rewrite: str | None
) -> None:
    """The condenser may leave a follow-up as it was (the model judged it standalone): the answer's
    prompt then carries the thread, and the record keeps it, so training rebuilds the same prompt."""
    from core.records import load_answer
    from rag.types import AnswerRef, Turn
    from training.dataset import prompt_messages

    question = "그럼 반차는요?"
    history = [Turn("user", "연차는 며칠인가요?"), Turn("assistant", "입사 1년 후 15일입니다 [1].")]
    endpoint.queued = [endpoint.completion(rewrite or question)]  # the condense request's answer
    endpoint.answer("연차는 반차(4시간) 단위로 나누어 쓸 수 있습니다 [1].")
    with _handbook_agent(endpoint, tmp_path) as agent:
        answer = agent.ask(question, history=history, ref=AnswerRef(platform="console", channel="c", message_id="m2"))
        record = load_answer(agent.store, answer.answer_id or "")
    assert record is not None and endpoint.requests == 2
    sent = endpoint.bodies[1]["messages"]
    turns = [(m["role"], m["content"]) for m in sent[1:-1]]
    if rewrite is None:
        assert turns == [("user", "연차는 며칠인가요?"), ("assistant", "입사 1년 후 15일입니다 [1].")]
        assert [(t.role, t.text) for t in record.prompt_history] == turns
    else:
        assert turns == [] and record.prompt_history == []  # a standalone rewrite is sent alone
    assert prompt_messages(record) == sent  # the training prompt is the served one


@pytest.mark.parametrize("text", [
    "연차는 15일입니다 [2]. 반차도 됩니다 [1][2]. 없는 출처 [9]는 빠집니다.",
    "[3] first, then [1], a bracket [ not a marker ], [1234] too long, end [2]",
    "  leading space and a trailing marker [1]",
])
def test_a_streamed_text_renumbers_as_the_whole_does_wherever_it_is_cut(text: str) -> None:
    import random

    from rag.prompts import StreamRenumberer, renumber_citations
    from rag.types import Passage

    passages = [Passage(chunk_id=f"c{i}", doc_id=f"d{i}", title="t", source="s", location="", text="x", score=1.0)
                for i in range(3)]
    whole, _, _ = renumber_citations(text, passages)
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), 6))
        renumberer = StreamRenumberer(len(passages))
        shown = "".join(renumberer.feed(text[a:b]) for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True))
        assert (shown + renumberer.flush()).strip() == whole


def test_the_agent_passes_a_streamed_answer_on_with_its_final_numbers(endpoint: ScriptedLLM, tmp_path: Any) -> None:
    endpoint.reply = _sse("입사 1년 후에는 ", "15일의 연차가 주어집니다 [", "2", "]. 반차는 ", "4시간입니다 [1].")
    pieces: list[str] = []
    with _handbook_agent(endpoint, tmp_path) as agent:
        answer = agent.ask("연차는 며칠인가요?", on_text=pieces.append)
    assert endpoint.bodies[-1]["stream"] is True and len(pieces) >= 3
    assert "".join(pieces).strip() == answer.text
    if len(answer.citations) == 2:  # the handbook gave two passages: [2] came first, so it is [1] now
        assert answer.text.endswith("주어집니다 [1]. 반차는 4시간입니다 [2].")


def test_a_streamed_answer_in_the_wrong_language_is_replaced_by_the_second_ask(
    endpoint: ScriptedLLM, tmp_path: Any
) -> None:
    endpoint.queued = [_sse(ENGLISH[:30], ENGLISH[30:])]
    endpoint.answer("입사 1년 후에는 15일의 연차가 주어집니다 [1].")  # the second ask is not streamed
    pieces: list[str] = []
    with _handbook_agent(endpoint, tmp_path) as agent:
        answer = agent.ask("연차는 며칠인가요?", on_text=pieces.append)
    assert "".join(pieces).strip() == ENGLISH  # what was shown while it came
    assert answer.text == "입사 1년 후에는 15일의 연차가 주어집니다 [1]."  # what the caller must show instead
    assert [body.get("stream") for body in endpoint.bodies] == [True, False]
