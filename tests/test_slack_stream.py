"""An LLM's answer streamed into its Slack thread (`chat.startStream`/`appendStream`/`stopStream` on
the local fake Slack, the agent reading a server-sent-event stream from a local OpenAI-compatible
endpoint): progress first, the text in order, sources and feedback buttons at the end, and one
stream per question however often the answer is retried."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bots.slack.stream import MentionGuard
from tests.support_faults import FlakyLLM
from tests.support_slack import ENG, TEAM_ID, Rig, answers_in, build_knowledge_base, rig_with_fake

ANSWER = "Production deploys happen on Tuesdays and Thursdays through the release pipeline [1]."
DM = "D0STREAM1"


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_knowledge_base(tmp_path_factory.mktemp("kb"))


def _rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kb: Path, llm: FlakyLLM, **env: str) -> Iterator[Rig]:
    yield from rig_with_fake(monkeypatch, tmp_path, kb, LLM_BACKEND="openai", LLM_BASE_URL=llm.url,
                             LLM_MODEL="echorag", LLM_TIMEOUT_S="5", SLACK_STREAM_BUFFER="16", **env)


@pytest.fixture
def streaming(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path) -> Iterator[Rig]:
    with FlakyLLM(fail_first=0, answer=ANSWER) as llm:
        yield from _rig(monkeypatch, tmp_path, knowledge_base, llm)


def _stream_calls(rig: Rig) -> list[tuple[str, dict[str, Any]]]:
    return [(c.method, c.args) for c in rig.fake.calls if c.method.startswith("chat.") and "Stream" in c.method]


def test_a_channel_answer_streams_in_order_with_sources_and_buttons_at_the_end(streaming: Rig) -> None:
    rig = streaming
    question, response = rig.mention(ENG, "When do production deploys happen?", user="U0000007")
    assert response["statusCode"] == 200 and rig.lam.errors == []
    calls = _stream_calls(rig)
    assert calls[0][0] == "chat.startStream" and calls[-1][0] == "chat.stopStream"
    start = calls[0][1]
    assert start["thread_ts"] == question["ts"]
    assert (start["recipient_team_id"], start["recipient_user_id"]) == (TEAM_ID, "U0000007")  # outside a DM
    assert start["chunks"][0]["type"] == "task_update" and start["chunks"][0]["status"] == "in_progress"
    assert len(calls) > 4  # the text came in several appends, not at once

    [answer] = answers_in(rig, ENG, question["ts"])
    assert answer["streaming"] is False and answer["tasks"] == {"search": "complete"}
    assert "".join(answer["appends"]) == answer["text"] == ANSWER  # assembled in order, nothing lost
    blocks = calls[-1][1]["blocks"]
    assert "oncall.md" in str(blocks) and blocks[-1]["type"] == "context_actions"  # sources, then 👍/👎
    assert not [c for c in rig.fake.calls_of("chat.update") if c.args.get("ts") == answer["ts"]]
    record = rig.answer_record(ENG, answer["ts"])  # reactions on the streamed message find their answer
    assert record is not None and record.answer == ANSWER and record.message_id == answer["ts"]


def test_a_failed_attempt_never_starts_a_second_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path
) -> None:
    # The openai client retries once itself, so two failed requests fail the first attempt.
    with FlakyLLM(fail_first=2, answer=ANSWER) as llm:
        for rig in _rig(monkeypatch, tmp_path, knowledge_base, llm):
            question, _ = rig.mention(ENG, "When do production deploys happen?")
            assert len(rig.lam.errors) == 1  # the first attempt failed, Lambda's retry answered
            starts = [a for m, a in _stream_calls(rig) if m == "chat.startStream" and a["thread_ts"] == question["ts"]]
            assert len(starts) == 1
            [answer] = answers_in(rig, ENG, question["ts"])
            [stop] = [a for m, a in _stream_calls(rig) if m == "chat.stopStream"]
            assert answer["streaming"] is False and "Something went wrong" in str(stop["chunks"])  # stopped, with a notice
            assert "Tuesdays and Thursdays" in answer["text"] and "oncall.md" in str(answer["blocks"])
            edits = [c for c in rig.fake.calls_of("chat.update") if c.args.get("ts") == answer["ts"]]
            assert edits and "Something went wrong" in str(edits[0].args)  # then the retry's answer
            assert rig.answer_record(ENG, answer["ts"]) is not None


def test_an_abstention_streams_nothing_and_stops_with_the_stored_answer(streaming: Rig) -> None:
    question, _ = streaming.mention(ENG, "What is the capital of France?")
    [answer] = answers_in(streaming, ENG, question["ts"])
    record = streaming.answer_record(ENG, answer["ts"])
    assert record.abstained and answer["streaming"] is False and answer["text"] == record.answer
    assert [m for m, _ in _stream_calls(streaming)] == ["chat.startStream", "chat.stopStream"]


def test_an_assistant_thread_streams_and_shows_its_status(streaming: Rig) -> None:
    rig = streaming
    root = rig.fake.user_message(DM, "UBOT", "Hi, how can I help?")
    rig.deliver({"type": "assistant_thread_started", "event_ts": "1.0",
                 "assistant_thread": {"user_id": "U0000042", "channel_id": DM, "thread_ts": root["ts"],
                                      "context": {"channel_id": ENG, "team_id": TEAM_ID}}})
    message = rig.fake.user_message(DM, "U0000042", "When do production deploys happen?", thread_ts=root["ts"])
    rig.deliver(rig.message_event(DM, message, channel_type="im"))
    [answer] = answers_in(rig, DM, root["ts"])
    assert answer["text"] == ANSWER and answer["streaming"] is False
    statuses = [c.args["status"] for c in rig.fake.calls_of("assistant.threads.setStatus")]
    assert statuses[0] and statuses[-1] == ""


def test_without_an_llm_nothing_streams(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path) -> None:
    for rig in rig_with_fake(monkeypatch, tmp_path, knowledge_base):  # extractive: the answer is there at once
        question, _ = rig.mention(ENG, "When do production deploys happen?")
        assert _stream_calls(rig) == []
        [answer] = answers_in(rig, ENG, question["ts"])
        assert "Tuesdays" in answer["text"]


def test_a_mention_cut_between_two_pieces_is_still_neutralised() -> None:
    guard = MentionGuard()
    shown = [guard.feed(p) for p in ("Tell <", "!chan", "nel> and @he", "re now")] + [guard.flush()]
    text = "".join(shown)
    assert "<!channel>" not in text and "@here" not in text
    assert text.replace("\u2060", "") == "Tell <!channel> and @here now"
