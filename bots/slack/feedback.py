"""Feedback on Slack beyond emoji: the 👍/👎 buttons under every answer, and "what was wrong?".

A button press is the same feedback event as the emoji (`core.feedback.record_reaction` with the
reaction `+1` or `-1`, the press's `action_ts` as its time), so buttons and reactions on one answer
give one effective vote per person: the latest wins, and a retried delivery of one press is stored
once. After a 👎, from either, the person gets an ephemeral, optional question with the reason codes
as buttons; "Other…" opens a modal for their own words. A reason is recorded with
`core.feedback.record_reason`, so it travels with the vote into the report and the training set.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from slack_bolt import Ack, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextActionsBlock,
    FeedbackButtonObject,
    FeedbackButtonsElement,
    InputBlock,
    PlainTextInputElement,
    SectionBlock,
)
from slack_sdk.models.views import View

from bots.slack.services import SlackServices
from core.contracts import FEEDBACK_REASONS, FeedbackEvent, make_answer_id
from core.errors import PermanentError
from core.feedback import parse_reason, record_reaction, record_reason
from core.records import load_answer

log = logging.getLogger(__name__)

FEEDBACK_ACTION = "echorag_feedback"
REASON_ACTION_PREFIX = "echorag_reason:"  # + a reason code; "other" opens the modal
OTHER_CALLBACK = "echorag_reason_other"
_ASK = {"ko": "무엇이 잘못되었나요? (선택)", "en": "What was wrong? (optional)"}
_LABELS = {
    "ko": {"wrong": "틀렸어요", "outdated": "오래된 정보", "not_in_docs": "문서에 없어요", "incomplete": "부족해요",
           "other": "기타…"},
    "en": {"wrong": "Wrong", "outdated": "Outdated", "not_in_docs": "Not in the documents", "incomplete": "Incomplete",
           "other": "Other…"},
}
_THANKS = {"ko": "고마워요! '{reason}'(으)로 기록했어요.", "en": "Thanks: recorded '{reason}'."}


def feedback_block(language: str) -> dict[str, Any]:
    """The 👍/👎 buttons for the message an answer record points at."""
    good, bad = ("도움이 됐어요", "도움이 안 됐어요") if language == "ko" else ("Helpful", "Not helpful")
    return ContextActionsBlock(elements=[FeedbackButtonsElement(
        action_id=FEEDBACK_ACTION,
        positive_button=FeedbackButtonObject(text="👍", value="+1", accessibility_label=good),
        negative_button=FeedbackButtonObject(text="👎", value="-1", accessibility_label=bad),
    )]).to_dict()


def _dig(value: Any, *keys: str | int) -> Any:
    """`value[k1][k2]…`, or None where a level is missing or not a dict/list (payloads are untrusted)."""
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def _where(body: dict[str, Any]) -> tuple[str, str, str] | None:
    """(channel, message ts, user) of an interaction on a message; None when the payload lacks one."""
    channel = _dig(body, "channel", "id") or _dig(body, "container", "channel_id")
    ts = _dig(body, "container", "message_ts") or _dig(body, "message", "ts")
    user = _dig(body, "user", "id")
    if all(isinstance(v, str) and v for v in (channel, ts, user)):
        return str(channel), str(ts), str(user)
    return None


def record_button(body: dict[str, Any], client: WebClient, services: SlackServices) -> None:
    """A press of 👍/👎 under an answer → a feedback event (then, for 👎, the reason question)."""
    where = _where(body)
    value, pressed = _dig(body, "actions", 0, "value"), _dig(body, "actions", 0, "action_ts")
    if where is None or value not in ("+1", "-1") or not pressed:
        log.warning("feedback button press without channel, message, user, value or time: ignored")
        return
    channel, ts, user = where
    event = record_reaction(
        platform="slack", channel=channel, message_id=ts, user_id=user, reaction=str(value),
        action="added", event_ts=str(pressed), settings=services.settings, store=services.store,
        queue=services.queue,
    )
    if event is not None:
        after_vote(event, client, services, user=user)


def after_vote(event: FeedbackEvent, client: WebClient, services: SlackServices, *, user: str) -> None:
    """What follows a recorded vote, from a button or an emoji: metrics, and the reason question
    after a 👎 that was cast (not withdrawn)."""
    services.observer.feedback(event)
    if event.label < 0 and event.action == "added":
        offer_reason(client, services, channel=event.channel, message_ts=event.message_id, user=user)


def offer_reason(client: WebClient, services: SlackServices, *, channel: str, message_ts: str, user: str) -> None:
    """The ephemeral "what was wrong?" with one button per reason (best effort: a failure is logged)."""
    answer = load_answer(services.store, make_answer_id("slack", channel, message_ts))
    language = answer.language if answer else "en"
    labels = _LABELS.get(language, _LABELS["en"])
    target = json.dumps({"c": channel, "m": message_ts})
    blocks = [
        SectionBlock(text=_ASK.get(language, _ASK["en"])),
        ActionsBlock(elements=[ButtonElement(text=labels[code], action_id=REASON_ACTION_PREFIX + code, value=target)
                               for code in FEEDBACK_REASONS]),
    ]
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=_ASK.get(language, _ASK["en"]), blocks=blocks)
    except SlackApiError as exc:
        log.warning("could not ask %s what was wrong: %s", user, exc.response.get("error"))


def _target(value: Any) -> tuple[str, str] | None:
    try:
        raw = json.loads(value)
        return str(raw["c"]), str(raw["m"])
    except (TypeError, ValueError, KeyError):
        return None


def _pressed(body: dict[str, Any]) -> tuple[str, tuple[str, str], str, str] | None:
    """(reason code, (channel, message ts), user, press time) of a reason button press, or None."""
    code = str(_dig(body, "actions", 0, "action_id") or "").removeprefix(REASON_ACTION_PREFIX)
    target = _target(_dig(body, "actions", 0, "value"))
    user = _dig(body, "user", "id")
    pressed = _dig(body, "actions", 0, "action_ts")
    if target is None or not isinstance(user, str) or code not in FEEDBACK_REASONS or not pressed:
        log.warning("reason button press without a target, user, known reason or time: ignored")
        return None
    return code, target, user, str(pressed)


def reason_button(body: dict[str, Any], respond: Respond, services: SlackServices) -> None:
    """A reason button on the ephemeral question (lazy): record it, replacing the question with thanks."""
    if (press := _pressed(body)) is not None:
        code, target, user, pressed = press
        respond(replace_original=True, text=_record(services, target, user, code, "", pressed))


def open_other(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
    """"Other…": open the modal while the press's trigger is valid (3 s), so before the ack returns
    rather than in a lazy re-invocation a cold start could delay. The modal carries the press's
    time: its submission, and a retried delivery of it, is one event."""
    ack()
    if (press := _pressed(body)) is None:
        return
    _, target, _, pressed = press
    metadata = json.dumps({"c": target[0], "m": target[1], "t": pressed})
    view = View(
        type="modal", callback_id=OTHER_CALLBACK, private_metadata=metadata,
        title="What was wrong?", submit="Send", close="Cancel",
        blocks=[InputBlock(block_id="reason", label="Tell us what was wrong · 무엇이 잘못되었나요?",
                           element=PlainTextInputElement(action_id="text", multiline=True, max_length=500))],
    )
    try:
        client.views_open(trigger_id=str(_dig(body, "trigger_id") or ""), view=view)
    except SlackApiError as exc:
        log.warning("could not open the reason modal: %s", exc.response.get("error"))


def other_submitted(body: dict[str, Any], services: SlackServices) -> None:
    """The modal's submission: "other" with the person's words."""
    metadata = _dig(body, "view", "private_metadata")
    target = _target(metadata)
    user = _dig(body, "user", "id")
    text = _dig(body, "view", "state", "values", "reason", "text", "value") or ""
    try:
        pressed = str(json.loads(metadata)["t"])
    except (TypeError, ValueError, KeyError):
        pressed = ""
    if target is None or not isinstance(user, str) or not pressed:
        log.warning("reason modal submission without a target, user or time: ignored")
        return
    _record(services, target, user, "other", str(text), pressed)


def _record(services: SlackServices, target: tuple[str, str], user: str, code: str, text: str, event_ts: str) -> str:
    """Record the reason; the line to show the person (thanks, or why it was refused)."""
    answer = load_answer(services.store, make_answer_id("slack", *target))
    language = answer.language if answer else "en"
    try:
        event = record_reason(platform="slack", channel=target[0], message_id=target[1], user_id=user,
                              reason=parse_reason(code), text=text, event_ts=event_ts,
                              store=services.store)
    except PermanentError as exc:
        return str(exc)
    label = _LABELS.get(language, _LABELS["en"])[event.reason or "other"].rstrip("…")
    return _THANKS.get(language, _THANKS["en"]).format(reason=label)
