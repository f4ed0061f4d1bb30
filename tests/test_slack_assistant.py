"""Slack's AI-app threads through the signed Lambda handler: suggested prompts when a thread opens,
the channel the person is viewing picking the knowledge spaces, a live status while the answer is
made, a title from the first question, and exactly one answer under redelivery."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support_slack import ENG, HR, Rig, answers_in, build_knowledge_base, rig_with_fake

DM = "D0ASSIST1"
USER = "U0000042"


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_knowledge_base(tmp_path_factory.mktemp("kb"))


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path) -> Iterator[Rig]:
    yield from rig_with_fake(monkeypatch, tmp_path, knowledge_base,
                             SLACK_SUGGESTED_PROMPTS="연차는 며칠인가요?,온콜은 어떻게 교대하나요?")


def _thread_event(kind: str, thread_ts: str, viewing: str) -> dict[str, Any]:
    return {"type": kind, "event_ts": f"{time.time():.6f}",
            "assistant_thread": {"user_id": USER, "channel_id": DM, "thread_ts": thread_ts,
                                 "context": {"channel_id": viewing, "team_id": "T0000001"}}}


def _open_thread(rig: Rig, viewing: str) -> str:
    root = rig.fake.user_message(DM, "UBOT", "Hi, how can I help?")  # Slack opens the thread
    assert rig.deliver(_thread_event("assistant_thread_started", root["ts"], viewing))["statusCode"] == 200
    return str(root["ts"])


def _ask(rig: Rig, thread_ts: str, text: str, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    message = rig.fake.user_message(DM, USER, text, thread_ts=thread_ts)
    return message, rig.deliver(rig.message_event(DM, message, channel_type="im"), **kwargs)


def _methods(rig: Rig) -> list[tuple[str, dict[str, Any]]]:
    return [(c.method, c.args) for c in rig.fake.calls]


def test_a_thread_opens_with_the_configured_prompts(rig: Rig) -> None:
    thread_ts = _open_thread(rig, HR)
    [call] = rig.fake.calls_of("assistant.threads.setSuggestedPrompts")
    assert call.args["channel_id"] == DM and call.args["thread_ts"] == thread_ts
    prompts = call.args["prompts"]
    prompts = prompts if isinstance(prompts, list) else json.loads(prompts)
    assert [p["message"] for p in prompts] == ["연차는 며칠인가요?", "온콜은 어떻게 교대하나요?"]


def test_the_viewed_channel_picks_the_spaces_with_a_live_status_and_one_answer(rig: Rig) -> None:
    thread_ts = _open_thread(rig, HR)
    question, _ = _ask(rig, thread_ts, "연차 휴가는 1년에 며칠인가요?")
    redelivered = rig.deliver(rig.message_event(DM, question, channel_type="im"), retry_num=1)
    assert redelivered["statusCode"] == 200
    [answer] = answers_in(rig, DM, thread_ts)
    assert "15일" in answer["text"] and "leave.md" in str(answer["blocks"])  # hr, as in the viewed channel

    calls = _methods(rig)
    statuses = [(i, a["status"]) for i, (m, a) in enumerate(calls) if m == "assistant.threads.setStatus"]
    [edit] = [i for i, (m, a) in enumerate(calls) if m == "chat.update" and a.get("ts") == answer["ts"]]
    assert [s for _, s in statuses] == ["문서를 찾는 중…", ""]  # shown while answering, cleared after
    assert statuses[0][0] < edit < statuses[1][0]
    [title] = rig.fake.calls_of("assistant.threads.setTitle")
    assert title.args["title"] == "연차 휴가는 1년에 며칠인가요?"

    # the person moves to the eng channel: the next question searches eng, not hr
    rig.deliver(_thread_event("assistant_thread_context_changed", thread_ts, ENG))
    _ask(rig, thread_ts, "장애가 나면 몇 분 안에 응답하나요?")
    latest = answers_in(rig, DM, thread_ts)[-1]
    assert "15분" in latest["text"] and "oncall.md" in str(latest["blocks"])
    assert len(rig.fake.calls_of("assistant.threads.setTitle")) == 1  # titled once, by the first question


def test_malformed_assistant_events_are_acked_and_logged(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    for bad in ({"type": "assistant_thread_started", "event_ts": "1.0", "assistant_thread": "not an object"},
                {"type": "assistant_thread_context_changed", "event_ts": "1.0", "channel": DM}):
        assert rig.deliver(bad)["statusCode"] == 200
    assert "ignored" in caplog.text and not rig.fake.calls_of("assistant.threads.setSuggestedPrompts")
