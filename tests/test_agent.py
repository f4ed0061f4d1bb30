"""The agent end to end on the sample knowledge base: real ingestion into a local Qdrant collection,
real Kiwi retrieval, extractive and LLM answers (the LLM is a small OpenAI-compatible HTTP server
started here), thread follow-ups, abstention and answer records.

One suite (~400 lines): the module-scoped knowledge base is ingested once for all of them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.contracts import make_answer_id
from core.errors import EchoRagError
from core.records import load_answer
from core.settings import Settings
from core.store import open_store
from rag.agent import ABSTAIN_MESSAGE, Agent
from rag.condense import condense_rule, is_follow_up
from rag.extractive import extractive_answer, question_cues
from rag.grading import assess
from rag.language import detect_language
from rag.llm import LLMError, OpenAICompatibleLLM, llm_from_settings
from rag.prompts import LANGUAGE_INSTRUCTION, build_messages, renumber_citations
from rag.types import AnswerRef, Passage, Turn
from tests.conftest import make_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NODES = {"condense", "retrieve", "rerank", "grade", "generate", "record"}


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Any]]:
    """The sample handbook ingested once into a tmp DATA_DIR; yields (settings, retriever)."""
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever

    settings = make_settings(tmp_path_factory.mktemp("kb"))
    summary = ingest_paths([EXAMPLES], space="default", settings=settings, progress=False)
    assert summary.failed == 0 and summary.added >= 7
    clubs = tmp_path_factory.mktemp("clubs") / "동호회.md"
    clubs.write_text(
        "# 사내 동호회\n\n사내 동호회는 회원 1인당 매월 3만 원의 활동비를 지원받습니다.\n", encoding="utf-8"
    )
    assert ingest_paths([clubs], space="clubs", settings=settings, progress=False).added == 1
    retriever = Retriever.from_settings(settings)
    yield settings, retriever
    retriever.close()


@pytest.fixture(scope="module")
def agent(kb: tuple[Settings, Any]) -> Agent:
    settings, retriever = kb
    return Agent.from_settings(settings, retriever=retriever)


def _source_names(answer: Any) -> list[str]:
    return [Path(c.source).name for c in answer.citations]


# --- small pure parts -------------------------------------------------------------------------------


def test_detect_language() -> None:
    assert detect_language("연차는 며칠인가요?") == "ko"
    assert detect_language("Slack 봇 토큰은 어디에 넣나요?") == "ko"
    assert detect_language("How do I roll back a deploy?") == "en"
    assert detect_language("1234 ???") == "en"


def test_renumber_citations_orders_by_first_use_and_drops_unknown() -> None:
    passages = [Passage(chunk_id=f"c{i}", doc_id=f"d{i}", title=f"t{i}", text="x") for i in range(3)]
    text, ordered, citations = renumber_citations("A [3]. B [1][3]. C [7].", passages)
    assert text == "A [1]. B [2][1]. C."
    assert [c.doc_id for c in citations] == ["d2", "d0"]
    assert [c.n for c in citations] == [1, 2]
    assert [p.doc_id for p in ordered] == ["d2", "d0", "d1"]


def test_prompt_numbers_contexts_and_sets_language() -> None:
    passages = [Passage(chunk_id="c", doc_id="d", title="휴가 규정", text="연차는 15일이다.")]
    system = build_messages("연차는 며칠?", passages, "ko")[0]["content"]
    assert "[1] 휴가 규정 — 연차는 15일이다." in system
    assert LANGUAGE_INSTRUCTION["ko"] in system
    assert LANGUAGE_INSTRUCTION["en"] in build_messages("How many?", passages, "en")[0]["content"]


def test_question_cues() -> None:
    assert question_cues("누가 이 상을 받았나?") == {"person"}
    assert question_cues("How do I roll back a deploy?") == {"method"}
    assert "method" not in question_cues("How long does the canary run?")
    assert "date" in question_cues("언제 개통했나?")
    assert "number" in question_cues("How many books does it hold?")
    # 며칠 alone asks for a count of days; after a month, for a date
    assert "days" in question_cues("휴가는 며칠 쓸 수 있나요?") and "date" not in question_cues("휴가는 며칠 쓸 수 있나요?")
    assert "date" in question_cues("몇 월 며칠에 열렸나?") and "days" not in question_cues("몇 월 며칠에 열렸나?")
    assert "days" in question_cues("How many days of leave do I get?")
    # the year asked as 년도 (the usual spelling of 연도) or as "the year it happened" (…된 해는?)
    assert "date" in question_cues("남군 군기가 제작된 년도는?") and "date" in question_cues("일본에서 발매된 해는?")
    assert "date" not in question_cues("해는 어디에서 뜨나?")


def test_the_year_it_happened_picks_the_sentence_with_the_year() -> None:
    """Both sentences hold every term of "…발매된 해는?"; the question asks for a year (a date cue),
    so the one that gives it wins. Before, 해는 was no cue and the first sentence won."""
    passages = [Passage(chunk_id="a", doc_id="a", title="금은", text=(
        "금은은 닌텐도가 일본에서 발매한 휴대용 롤플레잉 게임이다. 금은은 1999년 11월에 일본에서 발매되었다."
    ))]
    assert extractive_answer("금은이 일본에서 발매된 해는?", passages, "ko") == "금은은 1999년 11월에 일본에서 발매되었다. [1]"


def test_a_day_count_answers_how_many_days_and_hours_are_not_a_date() -> None:
    """Both sentences share the question's terms; 며칠 picks the one that counts days. Before, 며칠
    asked for a "date" and "4시간" passed for one, so the first sentence won the tie."""
    from rag.extractive import _DATE_TEXT

    passages = [Passage(chunk_id="a", doc_id="a", title="휴가", text=(
        "연차는 반차(4시간) 단위로 나누어 쓸 수 있습니다. 연차는 1년에 15일까지 쓸 수 있습니다."
    ))]
    assert extractive_answer("연차는 며칠 쓸 수 있나요?", passages, "ko") == "연차는 1년에 15일까지 쓸 수 있습니다. [1]"
    assert _DATE_TEXT.search("반차는 4시간 단위입니다.") is None and _DATE_TEXT.search("오전 10시까지")


def test_how_many_days_can_i_take_finds_the_day_count_written_with_the_sino_korean_verb() -> None:
    """The handbook's case (issue 14): "쓰다" in the question, "사용하다" in the answer sentence; the
    topic 휴가 is only in the heading. The day count is the answer, not the half-day rule."""
    passages = [Passage(chunk_id="a", doc_id="a", title="휴가 규정", location="§ 연차 휴가", text=(
        "입사 첫해에는 최대 11일까지 사용할 수 있습니다. 연차는 반차(4시간) 단위로 나누어 쓸 수 있습니다."
    ))]
    assert extractive_answer("휴가는 며칠 쓸 수 있나요?", passages, "ko") == "입사 첫해에는 최대 11일까지 사용할 수 있습니다. [1]"


def test_an_amount_is_not_the_digits_of_a_date() -> None:
    """얼마 asks for an amount: both sentences hold every term of the question and digits, but only
    the second holds a number that is not a calendar date; durations and day counts stay amounts."""
    from rag.extractive import _CALENDAR_DATE

    passages = [Passage(chunk_id="a", doc_id="a", title="드라마", text=(
        "드라마 평균 시청률 조사 결과는 2014년 3월 5일에 방송사가 발표하였다. 드라마 평균 시청률은 22.6%였다."
    ))]
    assert extractive_answer("드라마 평균 시청률은 얼마인가?", passages, "ko") == "드라마 평균 시청률은 22.6%였다. [1]"
    assert not any(_CALENDAR_DATE.search(t) for t in ("30분 동안", "3년 동안", "연 15일", "2000명"))


def test_extractive_prefixes_a_line_when_languages_differ() -> None:
    passages = [
        Passage(
            chunk_id="a", doc_id="a", title="등대", text="등대의 높이는 26미터이다. 등대는 1907년에 세워졌다."
        ),
    ]
    answer = extractive_answer("How tall is the 등대 in 미터?", passages, "en")
    assert answer is not None
    assert answer.startswith("From the documents:\n")
    assert "26미터" in answer and answer.rstrip().endswith("[1]")
    same = extractive_answer("등대의 높이는 몇 미터인가?", passages, "ko")
    assert same == "등대의 높이는 26미터이다. [1]"


def test_grade_trusts_other_language_passages_only_with_a_dense_retriever() -> None:
    passages = [
        Passage(
            chunk_id="c", doc_id="d", title="재택근무", text="재택근무는 주 3일까지 가능합니다.", score=0.8
        )
    ]
    evidence = assess("How many remote work days per week?", passages)
    assert evidence.cross_lingual and evidence.coverage == 0.0
    assert not evidence.sufficient()
    assert evidence.sufficient(semantic=True)
    assert not evidence.sufficient(semantic=True, min_score=0.9)
    same = assess("재택근무는 주 며칠 가능한가요?", passages)
    assert not same.cross_lingual and same.sufficient()
    assert not assess("화성의 수도는 어디인가요?", passages).sufficient()


def test_grade_wants_more_than_one_word_of_a_two_term_question() -> None:
    passages = [
        Passage(chunk_id="c", doc_id="d", title="Severity", text="Every SEV1 gets a postmortem within 5 days.", score=2.0)
    ]
    half = assess("How many vacation days?", passages)  # "days" alone
    assert half.query_terms == 2 and half.coverage == 0.5
    assert not half.sufficient()
    assert half.sufficient(semantic=True)  # a dense ranking is evidence of its own
    assert assess("How many postmortem days?", passages).sufficient()
    assert assess("postmortem?", passages).sufficient()


def test_condense_rule_carries_the_topic_into_an_elliptical_follow_up() -> None:
    history = [
        Turn("user", "재택근무는 주 며칠까지 할 수 있나요?"),
        Turn("assistant", "주 3일까지 가능합니다."),
    ]
    assert is_follow_up("그럼 수습 기간에는?")
    condensed = condense_rule("그럼 수습 기간에는?", history)
    assert condensed.startswith("재택근무") and condensed.endswith("그럼 수습 기간에는?")
    standalone = "보안 사고는 몇 시간 안에 신고해야 하나요?"
    assert condense_rule(standalone, history) == standalone
    assert condense_rule("그럼 수습 기간에는?", []) == "그럼 수습 기간에는?"


def test_llm_from_settings_backends(tmp_path: Path) -> None:
    assert llm_from_settings(make_settings(tmp_path)) is None
    llm = llm_from_settings(
        make_settings(tmp_path, llm_base_url="http://127.0.0.1:9/v1", llm_model="echorag")
    )
    assert isinstance(llm, OpenAICompatibleLLM) and llm.model == "echorag"
    with pytest.raises(EchoRagError, match="LLM_MODEL"):
        llm_from_settings(make_settings(tmp_path, llm_backend="openai"))


# --- extractive agent on the sample knowledge base ----------------------------------------------------


def test_korean_question_gets_a_cited_answer(agent: Agent) -> None:
    answer = agent.ask("사용하지 못한 연차는 최대 며칠까지 이월할 수 있나요?")
    assert not answer.abstained
    assert answer.language == "ko"
    assert "5일" in answer.text and "[1]" in answer.text
    assert _source_names(answer)[0] == "휴가-규정.md"
    assert answer.citations[0].n == 1 and answer.citations[0].title
    assert answer.model == "extractive"
    assert set(answer.timings_ms) >= NODES and "total" in answer.timings_ms


def test_english_question_gets_a_cited_answer(agent: Agent) -> None:
    answer = agent.ask("How long does the canary run at 5% of traffic?")
    assert not answer.abstained and answer.language == "en"
    assert "20 minutes" in answer.text
    assert _source_names(answer)[0] == "deploy-runbook.md"


@pytest.mark.parametrize(
    ("question", "expected", "source"),
    [
        ("보안 사고는 알게 된 지 몇 시간 안에 신고해야 하나요?", "1시간", "보안-수칙.md"),
        ("경비는 언제까지 청구해야 하나요?", "5일", "경비-처리.md"),
        ("첫 출근은 몇 시까지 어디로 가면 되나요?", "오전 10시", "온보딩.md"),
        ("How quickly must I acknowledge a page?", "5 minutes", "on-call.md"),
        # "How do I …" wants the step (the command), not a sentence that merely repeats more words;
        # "deploy" is in the page title, so the sentence need not say it.
        ("How do I roll back a deploy?", "shipit rollback web --env production", "deploy-runbook.md"),
        ("How can I start the production rollout?", "shipit deploy web --env production", "deploy-runbook.md"),
    ],
)
def test_handbook_questions(agent: Agent, question: str, expected: str, source: str) -> None:
    answer = agent.ask(question)
    assert expected in answer.text, answer.text
    assert _source_names(answer)[0] == source


def test_follow_up_uses_the_earlier_turn(agent: Agent) -> None:
    first = agent.ask("재택근무는 주 며칠까지 할 수 있나요?")
    assert "주 3일" in first.text and _source_names(first)[0] == "재택근무.md"
    history = [Turn("user", first.question), Turn("assistant", first.text)]
    follow = agent.ask("그럼 수습 기간에는 어떻게 돼?", history=history)
    assert follow.condensed_question.startswith("재택근무")
    assert "수습 기간(입사 후 3개월) 중에는 재택근무를 할 수 없습니다" in follow.text
    assert _source_names(follow)[0] == "재택근무.md"
    # Without the thread the same words are about probation in general (the onboarding page).
    alone = agent.ask("그럼 수습 기간에는 어떻게 돼?")
    assert alone.condensed_question == alone.question and "재택근무를 할 수 없습니다" not in alone.text

    first_en = agent.ask("What is the command to roll back the web service?")
    assert "shipit rollback" in first_en.text
    follow_en = agent.ask("And how long does it take?", history=[Turn("user", first_en.question)])
    assert "roll back" in follow_en.condensed_question
    assert "3 minutes" in follow_en.text
    assert "3 minutes" not in agent.ask("And how long does it take?").text  # no thread, no topic


def test_a_question_that_stands_on_its_own_is_not_treated_as_a_follow_up(agent: Agent) -> None:
    """In a Korean thread about leave: new topics in English or Korean are answered as if asked alone."""
    first = agent.ask("연차는 반차로 나눠 쓸 수 있나요?")
    history = [Turn("user", first.question), Turn("assistant", first.text)]
    for question in ("When can we deploy to production?", "What is SEV1?", "SEV1이 뭐예요?"):
        in_thread, alone = agent.ask(question, history=history), agent.ask(question)
        assert in_thread.condensed_question == question
        assert (in_thread.text, _source_names(in_thread)) == (alone.text, _source_names(alone))
        assert "반차" not in in_thread.text
    assert agent.ask("What is the capital of France?", history=history).abstained
    assert agent.ask("그럼 입사 첫해에는?", history=history).condensed_question.startswith("연차")  # still a follow-up
    assert is_follow_up("병가는?", ["연차는 반차로 나눠 쓸 수 있나요?"])
    assert not is_follow_up("How many days for contractors?", ["연차는 며칠이야?"])  # a language switch
    assert is_follow_up("How many days for contractors?", ["How many vacation days do I get?"])


@pytest.mark.parametrize(
    ("question", "language"),
    [
        ("화성의 수도는 어디인가요?", "ko"),
        ("Who won the 1998 football world cup?", "en"),
        ("오늘 저녁 메뉴 추천해 줘", "ko"),
        ("How do I get a laptop on my first day?", "en"),  # "get" and "day" alone are no evidence
        ("How many vacation days do I get?", "en"),  # the on-call page's "5 business days" is not it
        ("What are the deploy hours?", "en"),  # "hours" (on-call pay) or "deploy" (runbook), never both
    ],
)
def test_abstains_when_the_documents_do_not_say(agent: Agent, question: str, language: str) -> None:
    answer = agent.ask(question)
    assert answer.abstained
    assert answer.text == ABSTAIN_MESSAGE[language]
    assert answer.citations == []
    assert "generate" not in answer.timings_ms


def test_spaces_limit_what_the_agent_may_cite(agent: Agent) -> None:
    question = "사내 동호회 활동비는 매월 얼마인가요?"
    assert _source_names(agent.ask(question))[0] == "동호회.md"
    in_clubs = agent.ask(question, spaces=["clubs"])
    assert "3만 원" in in_clubs.text and {c.space for c in in_clubs.citations} == {"clubs"}
    elsewhere = agent.ask(question, spaces=["default"])
    assert all(name != "동호회.md" for name in _source_names(elsewhere))


def test_empty_question_is_a_clear_error(agent: Agent) -> None:
    with pytest.raises(EchoRagError, match="empty"):
        agent.ask("   ")


def test_answer_record_is_written_when_a_ref_is_given(agent: Agent, kb: tuple[Settings, Any]) -> None:
    settings, _ = kb
    ref = AnswerRef(
        platform="slack", channel="C1", message_id="1700000000.000100", thread_id="1700000000.000001"
    )
    answer = agent.ask("노트북을 잃어버리면 어디에 연락하나요?", ref=ref)
    assert answer.answer_id == make_answer_id("slack", "C1", "1700000000.000100")
    record = load_answer(open_store(settings), answer.answer_id)
    assert record is not None
    assert record.question == "노트북을 잃어버리면 어디에 연락하나요?"
    assert record.answer == answer.text and record.model == "extractive"
    cited = answer.citations[0]
    assert record.contexts[0].chunk_id == cited.chunk_id and record.contexts[0].text
    assert NODES - {"record"} <= set(record.latencies_ms)
    assert agent.ask("노트북을 잃어버리면 어디에 연락하나요?").answer_id is None


# --- the LLM path against an OpenAI-compatible server --------------------------------------------------


class _FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: checks the prompt contract, answers citing [1] (and a bogus [9])."""

    requests: list[dict[str, Any]] = []  # noqa: RUF012 - shared with the test on purpose
    problems: list[str] = []  # noqa: RUF012

    def log_message(self, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        system = body["messages"][0]["content"]
        question = body["messages"][-1]["content"]
        if self.path != "/v1/chat/completions":
            self.problems.append(f"unexpected path {self.path}")
        if "Follow-up:" in question:  # the condense step
            content = "재택근무 중 통신비 지원 금액은 얼마인가요?"
        else:
            if "[1] " not in system or "[2] " not in system:
                self.problems.append("numbered contexts missing from the system prompt")
            if detect_language(question) == "ko" and LANGUAGE_INSTRUCTION["ko"] not in system:
                self.problems.append("Korean language instruction missing")
            if detect_language(question) == "en" and LANGUAGE_INSTRUCTION["en"] not in system:
                self.problems.append("English language instruction missing")
            content = (
                "문서에 따르면 답은 다음과 같습니다 [1]. 근거가 없는 번호 [9]."
                if detect_language(question) == "ko"
                else "According to the runbook, see [2] and [1]."
            )
        payload = {
            "id": "cmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def llm_server() -> Iterator[str]:
    _FakeOpenAI.requests = []
    _FakeOpenAI.problems = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_llm_answer_cites_sources_and_reports_the_model(kb: tuple[Settings, Any], llm_server: str) -> None:
    settings, retriever = kb
    llm_settings = settings.model_copy(update={"llm_base_url": llm_server, "llm_model": "echorag-lora"})
    agent = Agent.from_settings(llm_settings, retriever=retriever)
    answer = agent.ask("사용하지 못한 연차는 며칠까지 이월할 수 있나요?")
    assert _FakeOpenAI.problems == []
    assert answer.model == "echorag-lora"
    assert "[1]" in answer.text and "[9]" not in answer.text
    assert len(answer.citations) == 1 and _source_names(answer) == ["휴가-규정.md"]
    assert _FakeOpenAI.requests[-1]["model"] == "echorag-lora"

    english = agent.ask("How do I roll back the web service in production?")
    assert _FakeOpenAI.problems == []
    # "[2] and [1]" are renumbered by first use: the text's [1] is the passage the model called [2].
    assert english.text == "According to the runbook, see [1] and [2]."
    assert [c.n for c in english.citations] == [1, 2]
    system = _FakeOpenAI.requests[-1]["messages"][0]["content"]
    assert f"[2] {english.citations[0].title}" in system


def test_llm_condenses_a_follow_up(kb: tuple[Settings, Any], llm_server: str) -> None:
    settings, retriever = kb
    llm_settings = settings.model_copy(update={"llm_base_url": llm_server, "llm_model": "echorag-lora"})
    agent = Agent.from_settings(llm_settings, retriever=retriever)
    history = [
        Turn("user", "재택근무는 주 며칠까지 할 수 있나요?"),
        Turn("assistant", "주 3일까지입니다. [1]"),
    ]
    answer = agent.ask("그럼 지원금은?", history=history)
    assert answer.condensed_question == "재택근무 중 통신비 지원 금액은 얼마인가요?"
    condense_request = _FakeOpenAI.requests[0]
    assert "Follow-up: 그럼 지원금은?" in condense_request["messages"][-1]["content"]
    assert "재택근무는 주 며칠까지" in condense_request["messages"][-1]["content"]
    assert _source_names(answer)[0] == "재택근무.md"
    assert _FakeOpenAI.requests[-1]["messages"][-1]["content"] == answer.condensed_question


def test_unreachable_llm_is_a_clear_error() -> None:
    llm = OpenAICompatibleLLM(model="m", base_url="http://127.0.0.1:9/v1", timeout_s=2)
    with pytest.raises(LLMError, match=r"cannot reach the LLM at http://127\.0\.0\.1:9/v1"):
        llm.complete([{"role": "user", "content": "hi"}], max_tokens=5)


def test_served_adapter_version_comes_from_the_registry(
    kb: tuple[Settings, Any], llm_server: str, tmp_path: Path
) -> None:
    from core.contracts import AdapterManifest
    from core.registry import AdapterRegistry

    settings, retriever = kb
    # LLM_MODEL == ADAPTER_NAME: vLLM serves the registry's CURRENT adapter under that name.
    llm_settings = settings.model_copy(
        update={"llm_base_url": llm_server, "llm_model": settings.adapter_name}
    )
    agent = Agent.from_settings(llm_settings, retriever=retriever)
    assert agent.ask("배우자 출산 휴가는 며칠인가요?").adapter_version is None  # nothing published yet

    files = tmp_path / "adapter"
    files.mkdir()
    (files / "adapter_config.json").write_text("{}")
    registry = AdapterRegistry.from_settings(settings)
    version = registry.publish(files, AdapterManifest(name=settings.adapter_name, version=0), promote=True)
    fresh = Agent.from_settings(llm_settings, retriever=retriever)
    ref = AnswerRef(platform="discord", channel="42", message_id="777")
    answer = fresh.ask("배우자 출산 휴가는 며칠인가요?", ref=ref)
    assert answer.adapter_version == f"v{version}" and answer.model == settings.adapter_name
    record = load_answer(open_store(settings), answer.answer_id or "")
    assert record is not None and record.adapter_version == f"v{version}"


@pytest.mark.parametrize(
    ("typed", "asked"),
    [
        ("연차는 며칠이야?? 알려줘", "연차는 며칠이야??"),
        ("경비 청구 기한 알려 주실 수 있나요?", "경비 청구 기한"),
        ("온콜 절차 좀 가르쳐 주세요 ㅠㅠ", "온콜 절차 좀"),
        ("배포 일정 말해줄래?", "배포 일정"),
        ("입사 첫해 연차가 몇 개인지 아시는 분?", "입사 첫해 연차가 몇 개인지"),
        ("병가 신청 기한이 궁금해요", "병가 신청 기한이"),
        # not a request: the telling is what is asked about, or nothing would be left
        ("누가 보안 사고를 팀장에게 알려 주었나?", "누가 보안 사고를 팀장에게 알려 주었나?"),
        ("병가는 누구에게 알려야 하나요?", "병가는 누구에게 알려야 하나요?"),
        ("알려줘", "알려줘"),
        ("When do deploys happen? Please tell me", "When do deploys happen? Please tell me"),
    ],
)
def test_a_closing_request_phrase_is_not_part_of_what_is_asked(typed: str, asked: str) -> None:
    from rag.condense import without_request

    assert without_request(typed) == asked


def test_a_question_typed_as_a_request_is_answered_as_the_question(agent: Agent) -> None:
    """"…알려줘" once made the answer look for a sentence with 알리다 ("팀장에게 메신저로 알리고")."""
    written = agent.ask("연차 휴가는 며칠인가요?")
    typed = agent.ask("연차 휴가는 며칠인지 알려줘")
    assert typed.text == written.text and "알리고" not in typed.text
    assert typed.question == "연차 휴가는 며칠인지 알려줘"  # what was asked is kept as asked
