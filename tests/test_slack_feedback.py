"""Slack feedback beyond emoji, through the signed Lambda handler and the fake Web API: the 👍/👎
buttons under an answer, one effective vote with the reactions, and the optional "what was
wrong?" after a 👎 (reason buttons, and the "Other…" modal) landing on the vote and in training."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import records
from core.contracts import make_answer_id
from core.records import answer_votes, hash_user
from tests.support_slack import (
    HR,
    Rig,
    answers_in,
    block_action,
    build_knowledge_base,
    rig_with_fake,
    view_submission,
)
from training.dataset import build_examples

FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def knowledge_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_knowledge_base(tmp_path_factory.mktemp("kb"))


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, knowledge_base: Path) -> Iterator[Rig]:
    yield from rig_with_fake(monkeypatch, tmp_path, knowledge_base)


def _answer(rig: Rig) -> dict[str, Any]:
    question, _ = rig.mention(HR, "연차 휴가는 1년에 며칠인가요?")
    [answer] = answers_in(rig, HR, question["ts"])
    return answer


def _press(rig: Rig, answer: dict[str, Any], value: str, *, user: str, at: str = "") -> dict[str, Any]:
    body = block_action("echorag_feedback", user=user, value=value, element="feedback_buttons",
                        message=(HR, answer["ts"]), action_ts=at)
    return rig.send(body, content_type=FORM)


def _votes(rig: Rig, answer: dict[str, Any]) -> dict[str, Any]:
    return answer_votes(rig.store, make_answer_id("slack", HR, answer["ts"]))


def _reason_prompts(rig: Rig, user: str) -> list[dict[str, Any]]:
    return [c.args for c in rig.fake.calls_of("chat.postEphemeral") if c.args.get("user") == user]


def test_every_answer_carries_feedback_buttons(rig: Rig) -> None:
    answer = _answer(rig)
    [actions] = [b for b in answer["blocks"] if b["type"] == "context_actions"]
    [buttons] = actions["elements"]
    assert buttons["type"] == "feedback_buttons" and buttons["action_id"] == "echorag_feedback"
    assert (buttons["positive_button"]["value"], buttons["negative_button"]["value"]) == ("+1", "-1")


def test_buttons_and_reactions_give_one_effective_vote_per_person(rig: Rig) -> None:
    answer = _answer(rig)
    assert _press(rig, answer, "+1", user="UA", at="1800000001.000100")["statusCode"] == 200
    _press(rig, answer, "+1", user="UA", at="1800000001.000100")  # Slack redelivers the same press
    rig.reaction("reaction_added", user="UA", channel=HR, ts=answer["ts"], emoji="+1", event_ts="1800000002.000000")
    votes = _votes(rig, answer)
    assert [v.label for v in votes.values()] == [1]  # button and emoji: one vote
    events = [e for e in records.iter_feedback(rig.store) if e.answer_id == make_answer_id("slack", HR, answer["ts"])]
    assert len(events) == 2  # the redelivered press was stored once
    _press(rig, answer, "-1", user="UA", at="1800000003.000000")  # changed their mind: the latest wins
    assert [v.label for v in _votes(rig, answer).values()] == [-1]
    assert _reason_prompts(rig, "UA")  # the 👎 asks what was wrong (only the asker sees it)


def test_a_thumbs_down_reason_lands_on_the_vote_and_in_the_training_snapshot(rig: Rig) -> None:
    answer = _answer(rig)
    rig.reaction("reaction_added", user="UB", channel=HR, ts=answer["ts"], emoji="-1")  # an emoji 👎 asks too
    [prompt] = _reason_prompts(rig, "UB")
    blocks = prompt["blocks"] if isinstance(prompt["blocks"], list) else json.loads(prompt["blocks"])
    [actions] = [b for b in blocks if b["type"] == "actions"]
    codes = [e["action_id"].split(":", 1)[1] for e in actions["elements"]]
    assert codes == ["wrong", "outdated", "not_in_docs", "incomplete", "other"]
    assert "무엇이 잘못되었나요" in prompt["text"]  # the answer's language

    outdated = next(e for e in actions["elements"] if e["action_id"].endswith(":outdated"))
    body = block_action(outdated["action_id"], user="UB", value=outdated["value"], message=(HR, answer["ts"]),
                        response_url=rig.fake.response_url("reason-1"))
    assert rig.send(body, content_type=FORM)["statusCode"] == 200
    [vote] = _votes(rig, answer).values()
    assert (vote.label, vote.reason) == (-1, "outdated")
    [thanks] = [r for r in rig.fake.responses if r["url"].endswith("reason-1")]
    assert thanks["replace_original"] is True and "오래된 정보" in thanks["text"]

    rows = [r for r in records.labelled_answers(rig.store) if r.answer.message_id == answer["ts"]]
    examples, _, _ = build_examples(rows)
    assert [ex.reasons for ex in examples] == [("outdated",)]


def test_other_opens_a_modal_whose_words_are_kept_once(rig: Rig) -> None:
    answer = _answer(rig)
    _press(rig, answer, "-1", user="UC")
    [prompt] = _reason_prompts(rig, "UC")
    blocks = prompt["blocks"] if isinstance(prompt["blocks"], list) else json.loads(prompt["blocks"])
    other = next(e for b in blocks if b["type"] == "actions" for e in b["elements"] if e["action_id"].endswith(":other"))
    press = block_action(other["action_id"], user="UC", value=other["value"], message=(HR, answer["ts"]),
                         action_ts="1800000010.000001")
    assert rig.send(press, content_type=FORM)["statusCode"] == 200
    [modal] = rig.fake.modals
    assert modal["callback_id"] == "echorag_reason_other"
    submitted = view_submission("echorag_reason_other", user="UC", private_metadata=modal["private_metadata"],
                                values={"reason": {"text": {"type": "plain_text_input", "value": "표가 빠졌어요"}}})
    for _ in range(2):  # Slack retries a submission it did not see acked in time
        assert rig.send(submitted, content_type=FORM)["statusCode"] == 200
    [vote] = _votes(rig, answer).values()
    assert (vote.reason, vote.reason_text) == ("other", "표가 빠졌어요")
    reasons = [e for e in records.iter_feedback(rig.store) if e.reason]
    assert len(reasons) == 1  # the retried submission is the same event


def test_a_reason_without_a_thumbs_down_and_malformed_presses_are_refused_and_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    answer = _answer(rig)
    _press(rig, answer, "+1", user="UD")
    target = json.dumps({"c": HR, "m": answer["ts"]})
    body = block_action("echorag_reason:wrong", user="UD", value=target, message=(HR, answer["ts"]),
                        response_url=rig.fake.response_url("reason-2"))
    rig.send(body, content_type=FORM)
    [refused] = [r for r in rig.fake.responses if r["url"].endswith("reason-2")]
    assert "only be given for an answer you voted 👎" in refused["text"]
    assert _votes(rig, answer)[hash_user("slack", "UD")].reason is None

    before = len(list(records.iter_feedback(rig.store)))
    for bad in (block_action("echorag_feedback", user="UE", value="+1", element="feedback_buttons"),  # no message
                block_action("echorag_feedback", user="UE", value="maybe", message=(HR, answer["ts"])),
                block_action("echorag_reason:wrong", user="UE", value="not json", message=(HR, answer["ts"]))):
        assert rig.send(bad, content_type=FORM)["statusCode"] == 200
    assert len(list(records.iter_feedback(rig.store))) == before
    assert "ignored" in caplog.text
