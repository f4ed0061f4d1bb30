"""Slack end to end: signed API Gateway (HTTP API v2) events into `handlers.slack_events.handler`,
the Web API on a local fake Slack, lazy listeners run in-process through a fake Lambda `Invoke`,
the real agent over a real Qdrant (local mode) collection ingested here, and the local store/queue
(S3 + SQS on moto in the AWS test).

One suite (~870 lines): the knowledge base is ingested once per module and every case drives the
same handler, fake Slack and fake Lambda; split files would each ingest again.
"""

from __future__ import annotations

import base64
import importlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bots.slack.answerer import answer_key
from bots.slack.app import services_of
from bots.slack.threads import stored_history
from core.contracts import AnswerRecord, make_answer_id
from core.queue import open_queue
from core.records import iter_feedback, save_answer
from core.settings import Settings, get_settings
from core.store import open_store
from rag.types import AgentAnswer, Citation
from tests.support_faults import FlakyLLM, FlakyStore, leaked
from tests.support_slack import (
    ADMIN,
    BOT_USER_ID,
    ENG,
    HR,
    OPEN,
    SECRET,
    TEAM_ID,
    FakeSlack,
    LambdaContext,
    Rig,
    answers_in,
    api_gateway_event,
    build_knowledge_base,
    event_callback,
    make_rig,
    signed_event,
)

# --- the knowledge base (ingested once for the module) ------------------------------------------


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_knowledge_base(tmp_path_factory.mktemp("kb"))


# --- the rig: env, handler, fake Slack, fake Lambda -------------------------------------------------


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path, fake_slack: FakeSlack) -> Iterator[Rig]:
    yield from make_rig(monkeypatch, tmp_path, knowledge_base, fake_slack)


def _section_texts(message: dict[str, Any]) -> list[str]:
    """The text of each section and markdown block (the answer's text is in markdown blocks)."""
    return [b["text"]["text"] if b["type"] == "section" else b["text"]
            for b in message.get("blocks", []) if b.get("type") in ("section", "markdown")]


# --- asking ---------------------------------------------------------------------------------------


def test_mention_gets_one_threaded_answer_with_sources(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    question, response = rig.mention(HR, "연차 휴가는 1년에 며칠인가요?")
    assert response["statusCode"] == 200

    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1
    answer = answers[0]
    assert answer["thread_ts"] == question["ts"] and answer.get("edited")
    posted = rig.fake.calls_of("chat.postMessage")[0].args
    assert posted["thread_ts"] == question["ts"] and posted["text"].startswith("찾아보는 중")
    sections = _section_texts(answer)
    assert "15일" in sections[0]
    assert any("출처" in s and "휴가 규정" in s for s in sections)
    context = next(b for b in answer["blocks"] if b["type"] == "context")
    assert "model: extractive" in context["elements"][0]["text"]

    record = rig.answer_record(HR, answer["ts"])  # the placeholder's ts is the answer's message id
    assert record is not None and record.thread_id == question["ts"] and record.spaces == ["hr"]
    assert record.contexts and all("hr" in Path(c.source).parts for c in record.contexts)
    assert '"AnswerLatency"' in capsys.readouterr().out  # the lazy invocation flushed EMF metrics


def test_follow_up_in_the_thread_uses_earlier_turns(rig: Rig) -> None:
    question, _ = rig.mention(HR, "연차 휴가는 1년에 며칠인가요?")
    follow = rig.fake.user_message(HR, "U0000001", "그럼 입사 첫해에는?", thread_ts=question["ts"])
    assert rig.deliver(rig.message_event(HR, follow))["statusCode"] == 200

    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 2
    assert rig.fake.calls_of("conversations.replies") == []  # the bot's own transcript was the memory
    record = rig.answer_record(HR, answers[1]["ts"])
    assert record is not None and record.question == "그럼 입사 첫해에는?"
    assert "연차" in record.condensed_question  # the earlier user turn reached the agent
    assert "첫해" in _section_texts(answers[1])[0]


def test_a_thread_people_started_is_read_from_slack_once_then_from_the_transcript(rig: Rig) -> None:
    root = rig.fake.user_message(HR, "U0000007", "연차 휴가 규정 아시는 분?")
    rig.fake.user_message(HR, "U0000008", "입사 첫해 기준이 궁금해요", thread_ts=root["ts"])
    rig.mention(HR, "몇 일인가요?", thread_ts=root["ts"])
    [read] = rig.fake.calls_of("conversations.replies")  # the turns before the bot came in
    assert read.args["ts"] == root["ts"]
    follow = rig.fake.user_message(HR, "U0000007", "신청은 어디서 하나요?", thread_ts=root["ts"])
    rig.deliver(rig.message_event(HR, follow))
    assert len(rig.fake.calls_of("conversations.replies")) == 1  # not read again
    answers = answers_in(rig, HR, root["ts"])
    record = rig.answer_record(HR, answers[-1]["ts"])
    assert record is not None and len(answers) == 2
    turns = stored_history(rig.store, HR, root["ts"], follow["ts"])
    assert turns is not None
    assert [t.text for t in turns][:2] == ["연차 휴가 규정 아시는 분?\n\n입사 첫해 기준이 궁금해요", "몇 일인가요?"]
    assert [t.role for t in turns] == ["user", "user", "assistant"]


def test_memory_of_a_long_thread_reaches_its_latest_turns(fake_slack: FakeSlack) -> None:
    from slack_sdk import WebClient

    from bots.slack.threads import HISTORY_TURNS, thread_history

    root = fake_slack.user_message(HR, "U0000001", "turn 0")
    for n in range(1, 450):  # three pages of conversations.replies
        fake_slack.user_message(HR, f"U00000{n % 2}", f"turn {n}", thread_ts=root["ts"])
    question = fake_slack.user_message(HR, "U0000001", "and now?", thread_ts=root["ts"])
    client = WebClient(token="xoxb-test-token", base_url=fake_slack.base_url)
    turns = thread_history(client, channel=HR, thread_ts=root["ts"], before_ts=question["ts"],
                           bot_user_id=BOT_USER_ID)
    assert len(fake_slack.calls_of("conversations.replies")) == 3
    assert len(turns) == 1 and turns[0].role == "user"  # consecutive user messages are one turn
    assert turns[0].text.split("\n\n") == [f"turn {n}" for n in range(450 - HISTORY_TURNS, 450)]


def test_thread_reply_elsewhere_and_plain_channel_messages_are_ignored(rig: Rig) -> None:
    root = rig.fake.user_message(HR, "U0000001", "점심 뭐 먹죠?")
    reply = rig.fake.user_message(HR, "U0000002", "그럼 연차 쓰고 가요", thread_ts=root["ts"])
    for message in (root, reply):
        assert rig.deliver(rig.message_event(HR, message))["statusCode"] == 200
    assert rig.fake.calls_of("chat.postMessage") == [] and rig.lam.invocations == []


def test_mention_inside_a_thread_arrives_twice_and_is_answered_once(rig: Rig) -> None:
    question, _ = rig.mention(HR, "연차 휴가는 며칠인가요?")
    again, _ = rig.mention(HR, "연차 신청은 어디서 하나요?", thread_ts=question["ts"])
    # Slack also delivers the same message as a `message` event (a different event id)
    assert rig.deliver(rig.message_event(HR, again))["statusCode"] == 200
    assert len(answers_in(rig, HR, question["ts"])) == 2  # one per question
    # the other order: the `message` copy first, then app_mention
    third = rig.fake.user_message(HR, "U0000001", f"<@{BOT_USER_ID}> 연차는 언제까지 신청하나요?",
                                  thread_ts=question["ts"])
    assert rig.deliver(rig.message_event(HR, third))["statusCode"] == 200
    event = {"type": "app_mention", "user": "U0000001", "text": third["text"], "ts": third["ts"], "channel": HR,
             "event_ts": third["ts"], "thread_ts": question["ts"]}
    assert rig.deliver(event)["statusCode"] == 200
    assert len(answers_in(rig, HR, question["ts"])) == 3
    assert len(rig.fake.calls_of("chat.postMessage")) == 3


def test_dm_sees_only_the_default_spaces(rig: Rig) -> None:
    """A DM is mapped to no channel: it sees DEFAULT_SPACE ("default", empty here), never all spaces."""
    dm = rig.fake.user_message("D0000001", "U0000003", "How many vacation days? 연차 휴가는 며칠?")
    assert rig.deliver(rig.message_event("D0000001", dm, channel_type="im"))["statusCode"] == 200
    answers = answers_in(rig, "D0000001", dm["ts"])
    assert len(answers) == 1 and "15일" not in answers[0]["text"]
    assert not any("출처" in s for s in _section_texts(answers[0]))  # nothing cited from hr or eng


def test_dm_is_answered_in_its_thread_from_the_default_spaces(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path, fake_slack: FakeSlack
) -> None:
    for rig in make_rig(monkeypatch, tmp_path, knowledge_base, fake_slack, DEFAULT_SPACES="hr"):
        dm = rig.fake.user_message("D0000001", "U0000003", "How many vacation days? 연차 휴가는 며칠?")
        assert rig.deliver(rig.message_event("D0000001", dm, channel_type="im"))["statusCode"] == 200
        answers = answers_in(rig, "D0000001", dm["ts"])
        assert len(answers) == 1 and "15일" in answers[0]["text"]


def test_ask_command_posts_question_and_answer_in_channel(rig: Rig) -> None:
    response = rig.command("/ask", "연차 휴가 신청은 언제까지 하나요?", user="U0000004", channel=HR, trigger="t-ask-1")
    assert response["statusCode"] == 200
    posts = rig.fake.bot_messages(HR)
    assert len(posts) == 1 and "thread_ts" not in posts[0]
    sections = _section_texts(posts[0])
    assert sections[0].startswith("<@U0000004>") and "3일 전" in " ".join(sections)
    assert rig.answer_record(HR, posts[0]["ts"]) is not None
    usage = rig.command("/ask", "", user="U0000004", channel=HR, trigger="t-ask-2")
    assert usage["statusCode"] == 200 and rig.fake.responses[-1]["response_type"] == "ephemeral"


# --- retries ----------------------------------------------------------------------------------------


def test_retried_delivery_never_answers_twice(rig: Rig) -> None:
    question, _ = rig.mention(HR, "연차 휴가는 며칠인가요?", event_id="EvRetry1")
    calls = len(rig.fake.calls)
    event = {"type": "app_mention", "user": question["user"], "text": question["text"], "ts": question["ts"],
             "channel": HR, "event_ts": question["ts"]}
    for retry in (1, 2, 3):
        assert rig.deliver(event, event_id="EvRetry1", retry_num=retry)["statusCode"] == 200
    assert len(answers_in(rig, HR, question["ts"])) == 1
    writes = [c for c in rig.fake.calls[calls:] if c.method in ("chat.postMessage", "chat.update")]
    assert writes == []


def test_failed_first_attempt_is_answered_by_the_retry(rig: Rig) -> None:
    rig.fake.fail_next("chat.update", "internal_error")
    question, response = rig.mention(HR, "연차 휴가는 며칠인가요?")
    assert response["statusCode"] == 200
    assert len(rig.lam.errors) == 1  # the first lazy invocation failed; Lambda's async retry answered
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1  # the retry edited the same placeholder
    assert "15일" in answers[0]["text"] and any("출처" in s for s in _section_texts(answers[0]))
    assert rig.answer_record(HR, answers[0]["ts"]) is not None


# --- failures while answering: the platform retries, the user never sees internals ------------------


def _seen_by_users(rig: Rig) -> list[str]:
    """Everything the bot posted, edited or sent ephemerally (text and blocks)."""
    methods = ("chat.postMessage", "chat.update", "chat.postEphemeral")
    return [json.dumps(c.args, ensure_ascii=False) for c in rig.fake.calls if c.method in methods]


@pytest.fixture
def llm_down_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path,
                  fake_slack: FakeSlack) -> Iterator[tuple[Rig, FlakyLLM]]:
    # The openai client retries once itself, so two failed requests fail the first attempt.
    with FlakyLLM(fail_first=2) as llm:
        yield from ((rig, llm) for rig in make_rig(
            monkeypatch, tmp_path, knowledge_base, fake_slack,
            LLM_BACKEND="openai", LLM_BASE_URL=llm.url, LLM_MODEL="echorag", LLM_TIMEOUT_S="5"))


def test_llm_outage_while_answering_is_retried_and_never_shown(llm_down_once: tuple[Rig, FlakyLLM]) -> None:
    from rag.llm import LLMUnavailable

    rig, llm = llm_down_once
    question, response = rig.mention(ENG, "When do production deploys happen?")
    assert response["statusCode"] == 200
    assert len(rig.lam.errors) == 1 and isinstance(rig.lam.errors[0].__cause__, LLMUnavailable)
    answers = answers_in(rig, ENG, question["ts"])
    assert len(answers) == 1 and "Tuesdays and Thursdays" in answers[0]["text"]  # the retry's answer
    edits = [json.dumps(c.args, ensure_ascii=False) for c in rig.fake.calls_of("chat.update")]
    assert any("Something went wrong while answering" in e for e in edits)  # what the user saw meanwhile
    assert leaked(_seen_by_users(rig)) == []
    assert llm.requests == 3 and rig.answer_record(ENG, answers[0]["ts"]) is not None


def test_llm_down_through_every_retry_is_answered_from_the_documents_on_the_last(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path, fake_slack: FakeSlack
) -> None:
    """Lambda's two retries may find the LLM back; the last one quotes the documents, marked."""
    from rag.agent import FALLBACK_MODEL, FALLBACK_NOTE

    with FlakyLLM(fail_first=10**6) as llm:
        for rig in make_rig(monkeypatch, tmp_path, knowledge_base, fake_slack, LLM_BACKEND="openai",
                             LLM_BASE_URL=llm.url, LLM_MODEL="echorag", LLM_TIMEOUT_S="5"):
            question, response = rig.mention(ENG, "When do production deploys happen?")
            assert response["statusCode"] == 200 and len(rig.lam.errors) == 2  # attempts 1 and 2 failed
            answers = answers_in(rig, ENG, question["ts"])
            assert len(answers) == 1 and "Tuesday" in answers[0]["text"] and FALLBACK_NOTE["unavailable"]["en"] in answers[0]["text"]
            record = rig.answer_record(ENG, answers[0]["ts"])
            assert record.model == FALLBACK_MODEL and record.adapter_version is None
            assert leaked(_seen_by_users(rig)) == []
            assert llm.requests == 6  # three attempts, the client's own retry each


def test_store_outage_while_answering_leaves_the_question_open_and_shows_no_internals(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bots.slack.services
    from core.errors import StoreError
    from core.idempotency import once

    flaky = FlakyStore(open_store(rig.settings), "answers/", failures=99)  # S3 is down for a while
    monkeypatch.setattr(bots.slack.services, "open_store", lambda settings: flaky)
    question, response = rig.mention(HR, "연차 휴가는 며칠인가요?", event_id="EvS3Down")
    assert response["statusCode"] == 200
    assert len(rig.lam.errors) == 3  # the first try and Lambda's two async retries
    assert all(isinstance(e.__cause__, StoreError) for e in rig.lam.errors)
    assert leaked(_seen_by_users(rig)) == []
    placeholder = answers_in(rig, HR, question["ts"])
    assert len(placeholder) == 1 and "문제가 생겼습니다" in placeholder[0]["text"]
    key = answer_key(TEAM_ID, HR, question["ts"])
    # Not marked done: a later delivery may still answer (the probe gives its claim straight back).
    with pytest.raises(RuntimeError, match="probe"), once(flaky, key, lease_s=60) as probe:
        assert probe.state == "run"
        raise RuntimeError("probe")
    flaky.failures = 0  # S3 is back; Slack's own retry of the event answers in the same placeholder
    event = {"type": "app_mention", "user": question["user"], "text": question["text"], "ts": question["ts"],
             "channel": HR, "event_ts": question["ts"]}
    assert rig.deliver(event, event_id="EvS3Down", retry_num=1)["statusCode"] == 200
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "15일" in answers[0]["text"]


def test_a_failing_claim_write_makes_lambda_retry_and_the_answer_is_posted_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bots.slack.services

    flaky = FlakyStore(open_store(rig.settings), "idempotency/", failures=1)  # the claim's write fails
    monkeypatch.setattr(bots.slack.services, "open_store", lambda settings: flaky)
    question, response = rig.mention(HR, "연차 휴가는 며칠인가요?")
    assert response["statusCode"] == 200 and flaky.failed == 1
    assert len(rig.lam.errors) == 1  # the failed claim failed the invocation: Lambda retried it
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "15일" in answers[0]["text"]
    assert len(rig.fake.calls_of("chat.postMessage")) == 1  # one placeholder, edited once into the answer


def test_a_rate_limited_web_api_call_waits_and_answers_once(rig: Rig) -> None:
    """Slack answers 429 + Retry-After: the Web client waits and retries (slack-sdk's handler), so
    the answer lands without failing the lazy run or posting twice."""
    rig.fake.rate_limit_next("chat.update")
    question, response = rig.mention(HR, "연차 휴가는 며칠인가요?")
    assert response["statusCode"] == 200 and rig.lam.errors == []
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "15일" in answers[0]["text"]
    assert len(rig.fake.calls_of("chat.update")) == 1 and len(rig.fake.calls_of("chat.postMessage")) == 1


def test_a_user_error_is_shown_and_finished_not_retried(rig: Rig) -> None:
    question, response = rig.mention(HR, "휴" * 5000)
    assert response["statusCode"] == 200 and rig.lam.errors == []
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "too long" in answers[0]["text"]


def test_a_placeholder_whose_response_was_lost_is_reused_not_orphaned(rig: Rig) -> None:
    """chat.postMessage went through but its answer never came back: the retry finds that
    placeholder by its metadata and edits it, instead of posting a second one."""
    rig.fake.lose_next_response("chat.postMessage")
    question, response = rig.mention(HR, "연차 휴가는 며칠인가요?")
    assert response["statusCode"] == 200 and len(rig.lam.errors) == 1
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "15일" in answers[0]["text"]  # the one placeholder, now the answer
    assert len(rig.fake.calls_of("chat.postMessage")) == 1
    assert rig.answer_record(HR, answers[0]["ts"]) is not None


def test_an_ask_command_placeholder_whose_response_was_lost_is_reused_not_orphaned(rig: Rig) -> None:
    """The same for `/ask`, which answers at the channel's top: found in the channel's history."""
    rig.fake.lose_next_response("chat.postMessage")
    response = rig.command("/ask", "연차 휴가는 며칠인가요?", user="U0000004", channel=HR, trigger="t-lost-1")
    assert response["statusCode"] == 200 and len(rig.lam.errors) == 1
    posted = rig.fake.bot_messages(HR)
    assert len(posted) == 1 and "15일" in posted[0]["text"] and posted[0].get("edited")
    assert len(rig.fake.calls_of("chat.postMessage")) == 1
    assert rig.answer_record(HR, posted[0]["ts"]) is not None


def _dead_first_attempt(rig: Rig) -> dict[str, Any]:
    """Ask a question whose first lazy invocation is killed (a Lambda timeout) while it waits on
    Slack: after its placeholder and its claim, before the answer, with no chance to release."""
    rig.lam.kill_when = rig.fake.hang_next("chat.update")
    question, response = rig.mention(HR, "연차 휴가는 며칠인가요?")
    assert response["statusCode"] == 200
    assert isinstance(rig.lam.errors[0], TimeoutError)
    return question


@pytest.fixture
def short_lease_rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path,
                    fake_slack: FakeSlack) -> Iterator[Rig]:
    yield from make_rig(monkeypatch, tmp_path, knowledge_base, fake_slack, SLACK_ANSWER_LEASE_S="0.2")


def test_claim_of_a_killed_attempt_is_retaken_after_its_lease(short_lease_rig: Rig) -> None:
    rig = short_lease_rig
    rig.lam.retry_delay_s = 0.3  # Lambda's retry comes after the dead attempt's lease ran out
    question = _dead_first_attempt(rig)
    assert len(rig.lam.errors) == 1  # the retry answered
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "15일" in answers[0]["text"]  # the dead attempt's placeholder, now edited
    assert len(rig.fake.calls_of("chat.postMessage")) == 1
    assert rig.answer_record(HR, answers[0]["ts"]) is not None

    # Had the first attempt been only slow, not dead, its late failure must not touch the answer.
    rig.fake.unhang()
    rig.lam.killed[0].join(timeout=30)
    assert not rig.lam.killed[0].is_alive()
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "15일" in answers[0]["text"]


def test_retry_while_the_claim_is_live_answers_nothing_but_asks_lambda_to_retry(rig: Rig) -> None:
    from core.idempotency import ClaimHeld

    question = _dead_first_attempt(rig)  # default lease (minutes): the claim is still live
    held = rig.lam.errors[1:]
    assert len(held) == 2 and all(isinstance(e.__cause__, ClaimHeld) for e in held)
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and not answers[0].get("edited")  # only the placeholder: no second answer
    assert len(rig.fake.calls_of("chat.postMessage")) == 1

    # the first attempt was only slow: it fails, releases its claim, and the next delivery answers
    rig.fake.unhang()
    rig.lam.killed[0].join(timeout=30)
    assert not rig.lam.killed[0].is_alive()
    event = {"type": "app_mention", "user": question["user"], "text": question["text"], "ts": question["ts"],
             "channel": HR, "event_ts": question["ts"]}
    assert rig.deliver(event, retry_num=1)["statusCode"] == 200
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "15일" in answers[0]["text"]


def test_lost_lazy_invocation_is_answered_by_slacks_retry(rig: Rig) -> None:
    rig.lam.throttle_next = 1  # the async Invoke itself fails: Slack sees an error and retries
    question, response = rig.mention(HR, "연차 휴가는 며칠인가요?", event_id="EvThrottle")
    assert response["statusCode"] >= 500 and answers_in(rig, HR, question["ts"]) == []
    event = {"type": "app_mention", "user": question["user"], "text": question["text"], "ts": question["ts"],
             "channel": HR, "event_ts": question["ts"]}
    assert rig.deliver(event, event_id="EvThrottle", retry_num=1)["statusCode"] == 200
    answers = answers_in(rig, HR, question["ts"])
    assert len(answers) == 1 and "15일" in answers[0]["text"]


# --- feedback ---------------------------------------------------------------------------------------


def test_reactions_become_feedback_once(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    question, _ = rig.mention(HR, "연차 휴가는 며칠인가요?")
    answer_ts = answers_in(rig, HR, question["ts"])[0]["ts"]
    answer_id = make_answer_id("slack", HR, answer_ts)

    def feedback() -> list[Any]:
        return sorted(iter_feedback(rig.store), key=lambda e: e.created_at)

    rig.reaction("reaction_added", user="U0000009", channel=HR, ts=answer_ts, event_ts="1800000000.000100",
                 event_id="EvReact1")
    rig.reaction("reaction_added", user="U0000009", channel=HR, ts=answer_ts, event_ts="1800000000.000100",
                 event_id="EvReact1", retry_num=1)  # a retried delivery
    assert [(e.answer_id, e.label, e.action) for e in feedback()] == [(answer_id, 1, "added")]

    rig.reaction("reaction_removed", user="U0000009", channel=HR, ts=answer_ts, event_ts="1800000000.000200")
    rig.reaction("reaction_added", user="U0000009", channel=HR, ts=answer_ts, emoji="-1::skin-tone-3",
                 event_ts="1800000000.000300")
    assert [(e.label, e.action) for e in feedback()] == [(1, "added"), (1, "removed"), (-1, "added")]

    rig.reaction("reaction_added", user="U0000009", channel=HR, ts=answer_ts, emoji="eyes")  # not a vote
    rig.reaction("reaction_added", user="U0000009", channel=HR, ts=question["ts"], item_user="U0000001")
    assert len(feedback()) == 3
    assert '"FeedbackEvents"' in capsys.readouterr().out


def test_a_reaction_whose_write_fails_is_retried_and_recorded_once(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    import bots.slack.services

    flaky = FlakyStore(open_store(rig.settings), "feedback/", failures=1)  # a full disk, once
    monkeypatch.setattr(bots.slack.services, "open_store", lambda settings: flaky)
    question, _ = rig.mention(HR, "연차 휴가는 며칠인가요?")
    answer_ts = answers_in(rig, HR, question["ts"])[0]["ts"]
    errors = len(rig.lam.errors)
    rig.reaction("reaction_added", user="U0000009", channel=HR, ts=answer_ts, event_ts="1800000000.000100")
    assert flaky.failed == 1 and len(rig.lam.errors) == errors + 1  # the failed write failed the invocation
    assert [(e.label, e.action) for e in iter_feedback(rig.store)] == [(1, "added")]  # the retry wrote it once


def test_optional_ephemeral_thanks_for_a_vote(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              knowledge_base: Path, fake_slack: FakeSlack) -> None:
    rig_iter = make_rig(monkeypatch, tmp_path, knowledge_base, fake_slack, SLACK_REACTION_THANKS="true")
    rig = next(rig_iter)
    try:
        question, _ = rig.mention(HR, "연차 휴가는 며칠인가요?")
        answer_ts = answers_in(rig, HR, question["ts"])[0]["ts"]
        rig.reaction("reaction_added", user="U0000009", channel=HR, ts=answer_ts)
        rig.reaction("reaction_removed", user="U0000009", channel=HR, ts=answer_ts)
        thanks = fake_slack.calls_of("chat.postEphemeral")
        assert [(c.args["channel"], c.args["user"]) for c in thanks] == [(HR, "U0000009")]
    finally:
        rig_iter.close()


# --- /retrain ---------------------------------------------------------------------------------------


def _rated_answer(rig: Rig, ts: str = "1700000000.000100") -> None:
    """An answer in HR that someone rated 👍 (the reaction through the handler): one new rating."""
    save_answer(rig.store, AnswerRecord(answer_id=make_answer_id("slack", HR, ts), platform="slack", channel=HR,
                                        message_id=ts, question="연차는 며칠인가요?", answer="15일입니다."))
    rig.reaction("reaction_added", user="U0000009", channel=HR, ts=ts)
    assert len(list(iter_feedback(rig.store))) == 1


def test_retrain_refused_for_non_admins_and_queued_once_for_admins(rig: Rig) -> None:
    queue = open_queue(rig.settings)
    _rated_answer(rig)
    assert rig.command("/retrain", "", user="U0000005", channel=HR, trigger="t-r1")["statusCode"] == 200
    refusal = rig.fake.responses[-1]
    assert refusal["response_type"] == "ephemeral" and "ADMIN_USER_IDS" in refusal["text"]
    assert queue.depth() == 0

    assert rig.command("/retrain", "new docs", user=ADMIN, channel=HR, trigger="t-r2")["statusCode"] == 200
    queued = rig.fake.responses[-1]
    assert queued["response_type"] == "in_channel"
    assert queue.depth() == 1
    message = queue.receive(wait_s=0)
    assert message is not None
    job = json.loads(message.body)
    assert job["requested_by"] == f"slack:{ADMIN}" and job["notify_targets"][0]["channel"] == HR

    rig.command("/retrain", "", user=ADMIN, channel=HR, trigger="t-r3")
    assert rig.fake.responses[-1]["response_type"] == "ephemeral"  # already queued: only the asker hears


def test_retrain_without_new_ratings_is_refused_unless_forced(rig: Rig) -> None:
    queue = open_queue(rig.settings)
    assert rig.command("/retrain", "new docs", user=ADMIN, channel=HR, trigger="t-f1")["statusCode"] == 200
    refusal = rig.fake.responses[-1]
    assert refusal["response_type"] == "ephemeral"  # only the asker hears
    assert refusal["text"].startswith("No new ratings since the base model") and "`/retrain force`" in refusal["text"]
    assert queue.depth() == 0

    assert rig.command("/retrain", "force new docs", user=ADMIN, channel=HR, trigger="t-f2")["statusCode"] == 200
    queued = rig.fake.responses[-1]
    assert queued["response_type"] == "in_channel"
    assert "forced): no new ratings since the base model" in queued["text"]
    message = queue.receive(wait_s=0)
    assert message is not None
    assert json.loads(message.body)["reason"] == "new docs"  # the word "force" is not part of the reason


# --- bad requests -----------------------------------------------------------------------------------


def test_bad_signature_or_stale_timestamp_is_401(rig: Rig) -> None:
    body = event_callback({"type": "app_mention", "channel": HR, "ts": "1.1", "text": "hi", "user": "U1"},
                          event_id="EvBad")
    assert rig.send(body, signature="v0=" + "0" * 64)["statusCode"] == 401
    assert rig.send(body, timestamp=int(time.time()) - 600)["statusCode"] == 401
    forged = signed_event(body, "another-secret")
    assert rig.handler(forged, LambdaContext())["statusCode"] == 401
    assert rig.fake.calls_of("chat.postMessage") == []


def test_a_lazy_reinvocation_bolt_refuses_fails_loudly(rig: Rig) -> None:
    """Lambda retried a lazy invocation after Slack's 5-minute signature window: Bolt answers 401.
    That must fail the invocation (errors metric, DLQ) instead of counting as a silent success."""
    from handlers.slack_events import LazyWorkFailed

    question = rig.fake.user_message(HR, "U0000001", f"<@{BOT_USER_ID}> 연차 휴가는 며칠인가요?")
    body = event_callback({"type": "app_mention", "user": "U0000001", "text": question["text"],
                           "ts": question["ts"], "channel": HR}, event_id="EvLate")
    late = signed_event(body, SECRET, timestamp=int(time.time()) - 400)
    late["headers"].update({"x-slack-bolt-lazy-only": "1", "x-slack-bolt-lazy-function-name": "answer_event"})
    late["method"] = "NONE"  # how Bolt's runner marks its own re-invocation
    with pytest.raises(LazyWorkFailed, match="401"):
        rig.handler(late, LambdaContext())
    late.pop("method")  # the same headers through API Gateway: a plain 401, never a 5xx
    assert rig.handler(late, LambdaContext())["statusCode"] == 401


def _with_header(name: str, value: str) -> dict[str, Any]:
    """A signed, well-formed request whose header `name` is replaced (no signature needed to send it)."""
    event = signed_event(event_callback({"type": "app_mention", "channel": HR, "ts": "1.1", "text": "hi",
                                          "user": "U1"}, event_id="EvHdr"), SECRET)
    event["headers"][name] = value
    return event


def test_malformed_requests_are_4xx_never_5xx(rig: Rig) -> None:
    no_context = signed_event("{}", SECRET)
    del no_context["requestContext"]
    body_not_text = signed_event("{}", SECRET)
    body_not_text["body"] = {"type": "event_callback"}
    bad_base64 = signed_event("{}", SECRET)
    bad_base64.update(body="%%%not base64%%%", isBase64Encoded=True)
    unsigned_junk = api_gateway_event("{not json", {"content-type": "application/json"})
    junk_timestamp = signed_event("{}", SECRET)
    junk_timestamp["headers"]["x-slack-request-timestamp"] = "yesterday"
    form = "application/x-www-form-urlencoded"
    huge = json.dumps({"type": "event_callback", "event": {"text": "x" * 2_000_000}})  # and no event type
    cases = {
        "JSON without type": signed_event('{"token": "x"}', SECRET),
        "url_verification without challenge": signed_event('{"type": "url_verification"}', SECRET),
        "url_verification, challenge not a string": signed_event(
            '{"type": "url_verification", "challenge": {"a": 1}}', SECRET),
        "form body without payload": signed_event("foo=bar", SECRET, content_type=form),
        "payload without type": signed_event("payload=%7B%7D", SECRET, content_type=form),
        "huge body": signed_event(huge, SECRET),
        "huge unsigned body": api_gateway_event("x" * 2_000_000, {"content-type": "application/json"}),
        "timestamp not a number": junk_timestamp,
        "timestamp of 400 digits": _with_header("x-slack-request-timestamp", "9" * 400),
        "timestamp with non-ASCII digits": _with_header("x-slack-request-timestamp", "١٧٠٠٠٠٠٠٠٠"),
        "signature with non-ASCII": _with_header("x-slack-signature", "v0=" + "é" * 64),
        "signature of 10k characters": _with_header("x-slack-signature", "v0=" + "a" * 10_000),
        "signature not v0": _with_header("x-slack-signature", "v1=" + "a" * 64),
        "event a string, no type": signed_event('{"event": "x"}', SECRET),
        "view not an object": signed_event("payload=" + quote('{"type": "view_submission", "view": 1}'), SECRET,
                                           content_type=form),
        "view a number, no type": signed_event("payload=" + quote('{"view": 1}'), SECRET, content_type=form),
        "block_actions without actions": signed_event(
            "payload=" + quote('{"type": "block_actions", "actions": null, "user": {"id": "U1"}}'), SECRET,
            content_type=form),
        "block_actions, actions of strings": signed_event(
            "payload=" + quote('{"type": "block_actions", "actions": ["x"], "user": "U1"}'), SECRET,
            content_type=form),
        "command without a command": signed_event("text=hi&user_id=U1", SECRET, content_type=form),
        "event_callback, event type not a string": signed_event(
            '{"type": "event_callback", "event": {"type": 7}}', SECRET),
        "headers null": {**signed_event("{}", SECRET), "headers": None},
        "JSON null": signed_event("null", SECRET),
        "signed junk JSON": signed_event("{not json", SECRET),
        "unsigned junk JSON": unsigned_junk,
        "signed junk payload": signed_event("payload=%7Bnot-json", SECRET,
                                            content_type="application/x-www-form-urlencoded"),
        "event is not an object": signed_event('{"type":"event_callback","event":"oops"}', SECRET),
        "event without type": signed_event('{"type":"event_callback","event":{"channel":"C1"}}', SECRET),
        "JSON array": signed_event("[1, 2, 3]", SECRET),
        "empty body": signed_event("", SECRET),
        "no request context": no_context,
        "body of the wrong type": body_not_text,
        "bad base64": bad_base64,
        "not a dict": [1, 2],
    }
    for name, event in cases.items():
        status = rig.handler(event, LambdaContext())["statusCode"]
        assert 400 <= status < 500, f"{name}: {status}"
    assert rig.fake.calls_of("chat.postMessage") == [] and rig.lam.invocations == []


def test_base64_encoded_body_is_accepted(rig: Rig) -> None:
    message = rig.fake.user_message(HR, "U0000001", f"<@{BOT_USER_ID}> 연차 휴가는 며칠인가요?")
    body = event_callback({"type": "app_mention", "user": "U0000001", "text": message["text"],
                           "ts": message["ts"], "channel": HR, "event_ts": message["ts"]}, event_id="EvB64")
    event = signed_event(body, SECRET)
    event.update(body=base64.b64encode(body.encode()).decode(), isBase64Encoded=True)
    assert rig.handler(event, LambdaContext())["statusCode"] == 200
    assert len(answers_in(rig, HR, message["ts"])) == 1


def test_url_verification_challenge(rig: Rig) -> None:
    body = json.dumps({"token": "legacy", "challenge": "abc123", "type": "url_verification"})
    response = rig.send(body)
    assert response["statusCode"] == 200 and "abc123" in response["body"]


# --- knowledge spaces -------------------------------------------------------------------------------


def test_channel_mapped_to_a_space_never_cites_another(rig: Rig) -> None:
    question = "연차 휴가 신청은 어떻게 하나요?"
    by_channel = {}
    for channel in (ENG, HR):
        message, _ = rig.mention(channel, question)
        answer = answers_in(rig, channel, message["ts"])[0]
        record = rig.answer_record(channel, answer["ts"])
        assert record is not None
        by_channel[channel] = (record, " ".join(_section_texts(answer)))
    eng_record, eng_text = by_channel[ENG]
    assert eng_record.spaces == ["eng"]
    assert eng_record.contexts and all("eng" in Path(c.source).parts for c in eng_record.contexts)
    assert "휴가 규정" not in eng_text and "leave.md" not in eng_text
    hr_record, _ = by_channel[HR]
    assert hr_record.contexts and all("hr" in Path(c.source).parts for c in hr_record.contexts)


# --- AWS backends (S3 + SQS on moto) and Secrets Manager ------------------------------------------


def test_on_s3_sqs_with_secrets_manager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path,
                                        fake_slack: FakeSlack, aws_settings: Settings) -> None:
    import boto3

    arn = boto3.client("secretsmanager").create_secret(
        Name=f"echorag-slack-{time.time_ns()}",
        SecretString=json.dumps({"signing_secret": SECRET, "bot_token": "xoxb-from-secrets-manager"}),
    )["ARN"]
    rig_iter = make_rig(monkeypatch, tmp_path, knowledge_base, fake_slack,
                         FEEDBACK_BUCKET=str(aws_settings.feedback_bucket),
                         TRAINING_QUEUE_URL=str(aws_settings.training_queue_url),
                         SLACK_SECRET_ARN=arn, SLACK_SIGNING_SECRET="not-the-real-one",
                         SLACK_BOT_TOKEN="xoxb-not-the-real-one")
    rig = next(rig_iter)
    try:
        question, response = rig.mention(HR, "연차 휴가는 며칠인가요?")
        assert response["statusCode"] == 200
        assert {c.token for c in fake_slack.calls} == {"xoxb-from-secrets-manager"}
        answer_ts = answers_in(rig, HR, question["ts"])[0]["ts"]
        assert rig.answer_record(HR, answer_ts) is not None  # read back from S3
        rig.reaction("reaction_added", user="U0000009", channel=HR, ts=answer_ts)
        assert len(list(iter_feedback(rig.store))) == 1
        rig.command("/retrain", "", user=ADMIN, channel=HR, trigger="t-aws")
        assert open_queue(rig.settings).depth() == 1
    finally:
        rig_iter.close()


def test_setup_order_url_check_answered_as_soon_as_the_signing_secret_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_slack: FakeSlack, aws_settings: Settings
) -> None:
    """As a deployer meets it: the stack's secret starts empty, Slack checks the URL when the app is
    created, the signing secret comes next, the bot token only after installing the app."""
    import boto3
    from aws_lambda_powertools.utilities import parameters

    secrets = boto3.client("secretsmanager")
    arn = secrets.create_secret(Name=f"echorag-slack-setup-{time.time_ns()}",
                                SecretString=json.dumps({"signing_secret": "", "bot_token": ""}))["ARN"]
    for name in ("SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"SLACK_SECRET_ARN": arn, "DATA_DIR": str(tmp_path), "SLACK_API_BASE_URL": fake_slack.base_url,
                        "POWERTOOLS_TRACE_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    slack_events = importlib.import_module("handlers.slack_events")
    get_settings.cache_clear()
    slack_events.reset()
    check = json.dumps({"token": "legacy", "challenge": "c-123", "type": "url_verification"})
    mention = event_callback({"type": "app_mention", "user": "U0000001", "text": "hi", "ts": "1700000000.000100",
                              "channel": HR, "event_ts": "1700000000.000100"}, event_id="EvSetup1")

    def put(value: dict[str, str]) -> None:
        secrets.put_secret_value(SecretId=arn, SecretString=json.dumps(value))
        parameters.clear_caches()  # the function's 5-minute cache has lapsed

    try:
        nothing = slack_events.handler(signed_event(check, SECRET), LambdaContext())
        assert nothing["statusCode"] == 503 and "set signing_secret in the secret" in nothing["body"] and arn in nothing["body"]
        put({"signing_secret": SECRET, "bot_token": ""})
        answered = slack_events.handler(signed_event(check, SECRET), LambdaContext())
        assert answered["statusCode"] == 200 and json.loads(answered["body"]) == {"challenge": "c-123"}
        assert slack_events.handler(signed_event(check, "another-secret"), LambdaContext())["statusCode"] == 401
        waiting = slack_events.handler(signed_event(mention, SECRET), LambdaContext())
        assert waiting["statusCode"] == 503 and "install the app and set bot_token" in waiting["body"]
        put({"signing_secret": SECRET, "bot_token": "xoxb-installed"})
        bolt = slack_events.handler(signed_event(check, SECRET), LambdaContext())  # now through Bolt's app
        assert bolt["statusCode"] == 200 and "c-123" in bolt["body"]
        put({"signing_secret": SECRET})
        assert slack_events.handler(signed_event(check, SECRET), LambdaContext())["statusCode"] == 200
        secrets.put_secret_value(SecretId=arn, SecretString="not json")
        parameters.clear_caches()
        broken = slack_events.handler(signed_event(check, SECRET), LambdaContext())
        assert broken["statusCode"] == 503 and "cannot read its Slack credentials" in broken["body"]
    finally:
        parameters.clear_caches()
        slack_events.reset()
        get_settings.cache_clear()


# --- rendering limits -------------------------------------------------------------------------------


def test_long_answers_split_within_slack_limits_and_mentions_are_defused() -> None:
    from bots.slack.render import render_answer

    paragraph = ("연차 & 휴가 <규정> @channel <!here> " * 40 + "\n\n") * 120  # ~150k characters
    citations = [Citation(n=i, title=f"문서 {i} <b>", source=f"https://wiki.example.com/p?id={i}&v=2",
                          location=f"§ {i}", doc_id=f"d{i}", chunk_id=f"c{i}", score=1.0) for i in range(1, 15)]
    answer = AgentAnswer(question="q", condensed_question="q", text=paragraph, language="ko",
                         citations=citations, model="vllm/echorag", adapter_version="v3")
    messages = render_answer(answer)
    assert len(messages) >= 4
    rendered, markdown = [], []
    for message in messages:
        assert len(message.blocks) <= 50 and len(message.text) <= 40_000
        assert sum(len(b["text"]) for b in message.blocks if b["type"] == "markdown") <= 12_000
        for block in message.blocks:
            if block["type"] == "section":
                assert len(block["text"]["text"]) <= 3000
                rendered.append(block["text"]["text"])
            elif block["type"] == "markdown":
                markdown.append(block["text"])
    everything = "\n".join(rendered + markdown + [m.text for m in messages])
    assert "<!" not in everything and "@channel" not in everything  # nothing that notifies, anywhere
    assert "<\u2060!here>" in "".join(markdown) and "연차 & 휴가 <규정>" in "".join(markdown)  # Markdown: as written
    fallback = "".join(m.text for m in messages)
    assert "<규정>" not in fallback and "&amp;" in fallback and "&lt;규정&gt;" in fallback  # mrkdwn: escaped
    assert "adapter: v3" in json.dumps(messages[-1].blocks, ensure_ascii=False)
    assert "<https://wiki.example.com/p?id=1&amp;v=2|문서 1 &lt;b&gt;>" in everything


# --- Socket Mode ------------------------------------------------------------------------------------


def test_socket_mode_serves_the_same_app(tmp_path: Path, knowledge_base: Path, fake_slack: FakeSlack) -> None:
    from slack_bolt.lazy_listener.thread_runner import ThreadLazyListenerRunner
    from slack_sdk.socket_mode.request import SocketModeRequest

    from bots.slack.socket import build_handler, run
    from core.errors import ConfigError

    settings = Settings(_env_file=None, data_dir=tmp_path, qdrant_path=knowledge_base / "qdrant",
                        llm_backend="extractive", slack_bot_token="xoxb-socket", slack_app_token="xapp-1-socket",
                        slack_api_base_url=fake_slack.base_url, default_spaces=["hr"])
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        build_handler(settings.model_copy(update={"slack_app_token": None}))
    with pytest.raises(ConfigError, match="Slack refused SLACK_APP_TOKEN"):  # the fake knows no xapp- token
        run(settings)

    handler = build_handler(settings)
    sent: list[Any] = []

    class Client:  # what the handler needs from SocketModeClient: send the ack
        logger = handler.client.logger

        def send_socket_mode_response(self, response: Any) -> None:
            sent.append(response)

    message = fake_slack.user_message("C0SOCKET", "U0000001", f"<@{BOT_USER_ID}> 연차 휴가는 며칠인가요?")
    payload = json.loads(event_callback({"type": "app_mention", "user": "U0000001", "text": message["text"],
                                         "ts": message["ts"], "channel": "C0SOCKET"}, event_id="EvSock"))
    try:
        for retry in (None, 1):  # Socket Mode redelivery carries retry_attempt
            request = SocketModeRequest(type="events_api", envelope_id=f"env-{retry}", payload=payload,
                                        retry_attempt=retry)
            handler.handle(Client(), request)  # type: ignore[arg-type]  # Client: a stand-in for SocketModeClient
        lazy_runner = handler.app.listener_runner.lazy_listener_runner
        assert isinstance(lazy_runner, ThreadLazyListenerRunner)  # Bolt's default: lazy listeners on its executor
        lazy_runner.executor.shutdown(wait=True)
        assert [r.envelope_id for r in sent] == ["env-None", "env-1"]
        answers = [m for m in fake_slack.thread("C0SOCKET", message["ts"]) if m.get("user") == BOT_USER_ID]
        assert len(answers) == 1 and "15일" in answers[0]["text"]
    finally:
        services_of(handler.app).close()
        handler.client.close()



# --- the app manifest -------------------------------------------------------------------------------

# Bot scopes each Web API method needs (api.slack.com/methods/<method>): a new call fails this test
# until its scope is listed here and in the manifest.
METHOD_SCOPES = {
    "chat_postMessage": {"chat:write"},
    "chat_update": {"chat:write"},
    "chat_postEphemeral": {"chat:write"},
    "chat_stream": {"chat:write"},  # chat.startStream / appendStream / stopStream
    "conversations_replies": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "conversations_history": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "views_publish": set(),  # the Home tab: no scope
    "views_open": set(),  # the reason modal: no scope
    "assistant_threads_setStatus": {"assistant:write"},
    "assistant_threads_setTitle": {"assistant:write"},
    "assistant_threads_setSuggestedPrompts": {"assistant:write"},
}
EVENT_SCOPES: dict[str, str | None] = {  # bot event -> scope Slack requires for the subscription
    "app_mention": "app_mentions:read", "message.channels": "channels:history", "message.groups": "groups:history",
    "message.im": "im:history", "message.mpim": "mpim:history", "reaction_added": "reactions:read",
    "reaction_removed": "reactions:read", "app_home_opened": None,
    "assistant_thread_started": "assistant:write", "assistant_thread_context_changed": "assistant:write",
}


def _manifest() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "infra/slack/manifest.yaml").read_text("utf-8"))


def test_manifest_covers_every_event_command_and_web_api_call() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    manifest = _manifest()
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    files = [*sorted((root / "bots/slack").glob("*.py")), root / "bots/notify.py"]
    source = "\n".join(f.read_text(encoding="utf-8") for f in files)

    called = set(re.findall(r"client\.((?:chat|conversations|reactions|users|views|files|im|assistant_threads)_\w+)\(", source))
    assert called and called <= set(METHOD_SCOPES), f"add scopes for {called - set(METHOD_SCOPES)}"
    for method in called:
        assert METHOD_SCOPES[method] <= scopes, method
    for event in events:
        assert EVENT_SCOPES[event] in scopes | {None}, event
    if "app_home_opened" in events:
        assert manifest["features"]["app_home"]["home_tab_enabled"]
    if "assistant_thread_started" in events:
        assert manifest["features"]["assistant_view"]["assistant_description"]
    commands = {c["command"] for c in manifest["features"]["slash_commands"]}
    assert commands == set(re.findall(r'app\.command\("(/\w+)"\)', source)) and "commands" in scopes
    urls = {c["url"] for c in manifest["features"]["slash_commands"]}
    urls |= {manifest["settings"]["event_subscriptions"]["request_url"], manifest["settings"]["interactivity"]["request_url"]}
    assert len(urls) == 1 and urls.pop().endswith("/slack/events")  # the one endpoint SAM outputs
    assert manifest["features"]["app_home"]["messages_tab_enabled"]  # people can DM the bot


def test_every_subscribed_event_is_acknowledged(rig: Rig) -> None:
    """An event the manifest subscribes to but the app does not handle would get 404 and be retried."""
    for subscription in _manifest()["settings"]["event_subscriptions"]["bot_events"]:
        kind = subscription.split(".")[0]
        event = {"type": kind, "user": "U0000002", "channel": OPEN, "ts": "1700000000.000100", "text": "hi",
                 "channel_type": "channel", "reaction": "+1", "item_user": "U0000003",
                 "item": {"type": "message", "channel": OPEN, "ts": "1700000000.000050"}}
        assert rig.deliver(event)["statusCode"] == 200, subscription
