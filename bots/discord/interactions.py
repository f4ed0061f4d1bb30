"""What Discord's Interactions endpoint does with each request, independent of Lambda.

Order matters: verify the Ed25519 signature over the raw body first (401 on any failure — Discord
removes endpoints that accept bad signatures), then parse. Everything here returns within
milliseconds: `/ask` only puts an `AskJob` on the ask queue and answers "deferred" (type 5); the
worker (`bots.discord.ask_worker`) does the slow part and edits that deferred message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import ValidationError

from bots.discord.commands import ASK_ABOUT, has_manage_server
from bots.discord.render import (
    APPLICATION_COMMAND,
    DEFERRED_CHANNEL_MESSAGE,
    FOLLOW_UP_PREFIX,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    PING,
    PONG,
    answer_id_of,
    follow_up_modal,
    message_response,
    modal_fields,
    parse_feedback_custom_id,
    parse_reason_submit,
    reason_modal,
)
from bots.discord.runtime import DiscordRuntime
from core.contracts import FEEDBACK_REASONS, AskJob, NotifyTarget, make_answer_id
from core.errors import PermanentError, UserError
from core.feedback import parse_reason, record_reaction, record_reason
from core.retrain import request_retrain

log = logging.getLogger(__name__)

MAX_SIGNATURE_AGE_S = 300  # reject replays of old signed requests
_SNOWFLAKE = re.compile(r"[0-9]{1,20}", re.ASCII)
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,500}", re.ASCII)
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)


class SignatureError(UserError):
    """The request is not provably from Discord: answer 401."""


class BadInteraction(UserError):
    """A signed request whose body is not an interaction we understand: answer 400."""


Action = Literal[
    "ping",
    "ask_queued",
    "ask_empty",
    "follow_up_asked",
    "unknown_command",
    "retrain_queued",
    "retrain_already_queued",
    "retrain_nothing_new",
    "retrain_refused",
    "retrain_failed",
    "feedback",
    "feedback_reason",
    "feedback_ignored",
    "feedback_failed",
]


@dataclass(frozen=True)
class Handled:
    """The callback body for Discord plus what happened, for logs and metrics."""

    response: dict[str, Any]
    action: Action


@lru_cache(maxsize=4)
def _verify_key(public_key_hex: str) -> VerifyKey:
    return VerifyKey(bytes.fromhex(public_key_hex))


def verify_signature(
    public_key_hex: str | None,
    signature_hex: str | None,
    timestamp: str | None,
    body: bytes,
    *,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless `signature` is the application's Ed25519 signature of
    timestamp + body and the timestamp is within MAX_SIGNATURE_AGE_S of now."""
    if not public_key_hex:
        raise SignatureError("DISCORD_PUBLIC_KEY is not set; cannot verify interactions")
    if not signature_hex or not timestamp:
        raise SignatureError("missing X-Signature-Ed25519 or X-Signature-Timestamp header")
    # ASCII digits only: int() also takes "١٢٣" or " 1", and 400 digits overflow the float comparison below
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError(f"X-Signature-Timestamp is not a unix time: {timestamp[:32]!r}")
    sent_at = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - sent_at) > MAX_SIGNATURE_AGE_S:
        raise SignatureError(f"stale X-Signature-Timestamp ({int(current - sent_at)} s old)")
    try:
        verify_key = _verify_key(public_key_hex)
    except ValueError as exc:  # a deployment mistake, not the caller's: say which
        raise SignatureError("DISCORD_PUBLIC_KEY is not a 64-hex-digit Ed25519 public key") from exc
    try:
        verify_key.verify(timestamp.encode() + body, bytes.fromhex(signature_hex))
    except (ValueError, BadSignatureError) as exc:  # bad hex, wrong length, wrong signature
        raise SignatureError("invalid request signature") from exc


def parse_interaction(body: bytes) -> dict[str, Any]:
    """The interaction JSON object, or BadInteraction."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 5,000-digit number, 1,000 levels deep
        raise BadInteraction(f"body is not JSON we accept: {str(exc)[:200]}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), int):
        raise BadInteraction("body is not an interaction object (no integer 'type')")
    return payload


def _require(payload: dict[str, Any], *path: str) -> Any:
    value: Any = payload
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise BadInteraction(f"interaction is missing {'.'.join(path)}")
        value = value[key]
    return value


def _object(payload: dict[str, Any], key: str) -> dict[str, Any]:
    """An optional nested object: {} when absent, BadInteraction when it is not an object."""
    value = payload.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInteraction(f"interaction field {key} is not an object")
    return value


def snowflake(value: Any, what: str) -> str:
    """A Discord id as a string of 1–20 digits; anything else is refused (ids become store keys)."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not _SNOWFLAKE.fullmatch(text):
        raise BadInteraction(f"{what} is not a Discord id")
    return text


DISCORD_EPOCH_MS = 1_420_070_400_000


def snowflake_time(snowflake_id: str) -> str:
    """The creation time a Discord id carries (ms since Discord's epoch, in its top 42 bits), as epoch
    seconds: the event time of a click, stated by Discord, so votes order by when they were cast."""
    return f"{((int(snowflake_id) >> 22) + DISCORD_EPOCH_MS) / 1000:.3f}"


def _token(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise BadInteraction("token is not an interaction token")
    return value


def _user_id(payload: dict[str, Any]) -> str:
    user = _object(_object(payload, "member"), "user") or _object(payload, "user")
    if not user.get("id"):
        raise BadInteraction("interaction has neither member.user.id nor user.id")
    return snowflake(user["id"], "user.id")


def _channel_id(payload: dict[str, Any]) -> str:
    channel = payload.get("channel_id") or _object(payload, "channel").get("id")
    if not channel:
        raise BadInteraction("interaction has no channel_id")
    return snowflake(channel, "channel_id")


THREAD_TYPES = frozenset({10, 11, 12})  # announcement, public and private threads (forum posts are 11)


def _space_channel_id(payload: dict[str, Any]) -> str:
    """The channel whose knowledge spaces apply: a thread's parent, else the channel itself. A thread
    has its own id, and would otherwise count as unmapped."""
    channel = _object(payload, "channel")
    kind = channel.get("type")
    if isinstance(kind, int) and kind in THREAD_TYPES and channel.get("parent_id"):  # `in` raises on a list
        return snowflake(channel["parent_id"], "channel.parent_id")
    return _channel_id(payload)


def _korean(payload: dict[str, Any]) -> bool:
    return str(payload.get("locale", "")).startswith("ko")


def handle_interaction(payload: dict[str, Any], runtime: DiscordRuntime) -> Handled:
    """Dispatch a verified, parsed interaction; BadInteraction for anything malformed."""
    kind = payload["type"]
    if kind == PING:
        return Handled({"type": PONG}, "ping")
    if kind == APPLICATION_COMMAND:
        name = _require(payload, "data", "name")
        if not isinstance(name, str):
            raise BadInteraction("data.name is not a string")
        if name == "ask":
            return _ask(payload, runtime)
        if name == "retrain":
            return _retrain(payload, runtime)
        if name == ASK_ABOUT:
            return _ask_about(payload, runtime)
        return Handled(message_response(f"Unknown command /{name}.", ephemeral=True), "unknown_command")
    if kind == MESSAGE_COMPONENT:
        return _button(payload, runtime)
    if kind == MODAL_SUBMIT:
        custom_id = str(_object(payload, "data").get("custom_id", ""))
        if answer_id_of(custom_id, FOLLOW_UP_PREFIX) is not None:
            return _follow_up(payload, runtime)
        return _reason(payload, runtime)
    raise BadInteraction(f"unsupported interaction type {kind}")


def _ask(payload: dict[str, Any], runtime: DiscordRuntime) -> Handled:
    options = _require(payload, "data").get("options") or []
    if not isinstance(options, list):
        raise BadInteraction("data.options is not a list")
    question = next(
        (str(o.get("value", "")) for o in options if isinstance(o, dict) and o.get("name") == "question"), ""
    ).strip()
    if not question:
        text = (
            "질문을 입력해 주세요: `/ask question:…`"
            if _korean(payload)
            else "Please give a question: `/ask question:…`"
        )
        return Handled(message_response(text, ephemeral=True), "ask_empty")
    return _queue_ask(payload, runtime, question)


MAX_QUESTION = 1500  # as /ask's option allows


def message_question(message: dict[str, Any]) -> str:
    """The question a context-menu command on `message` asks: its text, else its first embed's
    (an answer of the bot's own is an embed), cut to MAX_QUESTION."""
    text = str(message.get("content") or "").strip()
    embeds = message.get("embeds") if isinstance(message.get("embeds"), list) else []
    if not text and embeds and isinstance(embeds[0], dict):
        text = str(embeds[0].get("description") or embeds[0].get("title") or "").strip()
    return text[:MAX_QUESTION]


def _ask_about(payload: dict[str, Any], runtime: DiscordRuntime) -> Handled:
    """"Ask EchoRAG about this" on a message: its text is the question."""
    data = _object(payload, "data")
    target = str(data.get("target_id", ""))
    messages = _dig_dict(data, "resolved", "messages")
    message = messages.get(target) if isinstance(messages.get(target), dict) else None
    if message is None:
        raise BadInteraction("a message command without its resolved target message")
    question = message_question(message)
    if not question:
        text = "이 메시지에는 물어볼 글이 없습니다." if _korean(payload) else "That message has no text to ask about."
        return Handled(message_response(text, ephemeral=True), "ask_empty")
    return _queue_ask(payload, runtime, question)


def _dig_dict(value: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`value[k1][k2]…` where each level is an object, else {} (payloads are untrusted)."""
    for key in keys:
        inner = value.get(key)
        value = inner if isinstance(inner, dict) else {}
    return value


def _queue_ask(payload: dict[str, Any], runtime: DiscordRuntime, question: str, follow_up_of: str = "") -> Handled:
    """Put the question on the ask queue (dedup: the interaction id) and answer "deferred"."""
    try:
        job = AskJob(
            interaction_id=snowflake(_require(payload, "id"), "id"),
            application_id=snowflake(_require(payload, "application_id"), "application_id"),
            token=_token(_require(payload, "token")),
            channel_id=_channel_id(payload),
            space_channel_id=_space_channel_id(payload),
            guild_id=snowflake(payload["guild_id"], "guild_id") if payload.get("guild_id") else "",
            user_id=_user_id(payload),
            question=question,
            locale=str(payload.get("locale") or ""),
            follow_up_of=follow_up_of,
        )
    except ValidationError as exc:
        raise BadInteraction(f"interaction fields have the wrong shape: {exc.errors()[0]['msg']}") from exc
    runtime.ask_queue.send(job.model_dump_json(), dedup_id=job.interaction_id, group_id=job.channel_id)
    log.info("queued %s interaction %s from channel %s", "follow-up" if follow_up_of else "/ask",
             job.interaction_id, job.channel_id)
    return Handled({"type": DEFERRED_CHANNEL_MESSAGE}, "ask_queued")


def _force_option(payload: dict[str, Any]) -> bool:
    """`/retrain force:True`: the BOOLEAN option, False when absent (Discord omits unset options)."""
    options = _require(payload, "data").get("options") or []
    if not isinstance(options, list):
        raise BadInteraction("data.options is not a list")
    value = next((o.get("value") for o in options if isinstance(o, dict) and o.get("name") == "force"), False)
    if not isinstance(value, bool):
        raise BadInteraction("the force option is not a boolean")
    return value


def _retrain(payload: dict[str, Any], runtime: DiscordRuntime) -> Handled:
    permissions = _object(payload, "member").get("permissions")  # BadInteraction, not AttributeError, for a non-object
    return retrain(
        user_id=_user_id(payload),
        channel_id=_channel_id(payload),
        permissions=permissions,
        runtime=runtime,
        force=_force_option(payload),
    )


def retrain(
    *, user_id: str, channel_id: str, permissions: str | int | None, runtime: DiscordRuntime, force: bool = False
) -> Handled:
    """`/retrain [force]` from a member with these permission bits (shared with the gateway process)."""
    outcome = request_retrain(
        requested_by=f"discord:{user_id}",
        is_admin=has_manage_server(permissions),
        notify_targets=[NotifyTarget(platform="discord", channel=channel_id)],
        reason=f"/retrain in Discord channel {channel_id}" + (" (forced)" if force else ""),
        settings=runtime.settings,
        store=runtime.store,
        queue=runtime.training_queue,
        force=force,
        force_hint="/retrain force:True",
    )
    log.info("/retrain by discord:%s -> %s (%s)", user_id, outcome.status, outcome.job_id)
    # Refusals (not allowed, nothing new) are only for the asker; a queued job is announced to the channel.
    actions: dict[str, Action] = {
        "queued": "retrain_queued",
        "already_queued": "retrain_already_queued",
        "nothing_new": "retrain_nothing_new",
        "refused": "retrain_refused",
    }
    ephemeral = outcome.status in ("refused", "nothing_new")
    return Handled(message_response(outcome.message, ephemeral=ephemeral), actions[outcome.status])


def _message_answer(payload: dict[str, Any], answer_id: str) -> tuple[str, str]:
    """(channel, message id) of the answer a button or modal names; BadInteraction if it names
    another message's answer than the one it sits on."""
    channel_id = _channel_id(payload)
    message_id = snowflake(_require(payload, "message", "id"), "message.id")
    if make_answer_id("discord", channel_id, message_id) != answer_id:
        raise BadInteraction("the component names another message's answer")
    return channel_id, message_id


def _button(payload: dict[str, Any], runtime: DiscordRuntime) -> Handled:
    follow_up_of = answer_id_of(str(_require(payload, "data", "custom_id")), FOLLOW_UP_PREFIX)
    if follow_up_of is not None:
        _message_answer(payload, follow_up_of)
        return Handled(follow_up_modal(follow_up_of, korean=_korean(payload)), "follow_up_asked")
    return button_feedback(
        custom_id=str(_require(payload, "data", "custom_id")),
        channel_id=_channel_id(payload),
        message_id=snowflake(_require(payload, "message", "id"), "message.id"),
        user_id=_user_id(payload),
        interaction_id=snowflake(_require(payload, "id"), "id"),
        korean=_korean(payload),
        runtime=runtime,
        ask_reason=True,
    )


def button_feedback(
    *,
    custom_id: str,
    channel_id: str,
    message_id: str,
    user_id: str,
    interaction_id: str,
    korean: bool,
    runtime: DiscordRuntime,
    ask_reason: bool = False,
) -> Handled:
    """A 👍/👎 button click, recorded like the matching reaction (shared with the gateway process).

    The click's time is its interaction id's: a redelivered interaction is one record, and when 👍
    and 👎 are clicked close together the later click is the vote, in whatever order they land.
    With `ask_reason` a 👎 is answered with the "what was wrong?" modal instead of a thank-you
    (the Interactions endpoint; the gateway process answers through discord.py, which has no raw
    modal response, so it only thanks)."""
    parsed = parse_feedback_custom_id(custom_id)
    if parsed is None:
        raise BadInteraction(f"unknown component custom_id {custom_id[:100]!r}")
    reaction, answer_id = parsed
    if make_answer_id("discord", channel_id, message_id) != answer_id:
        log.warning("button on message %s names answer %s of another message; ignored", message_id, answer_id)
        return Handled(
            message_response("This button does not belong to this answer.", ephemeral=True),
            "feedback_ignored",
        )
    event = record_reaction(
        platform="discord",
        channel=channel_id,
        message_id=message_id,
        user_id=user_id,
        reaction=reaction,
        action="added",
        event_ts=snowflake_time(interaction_id),
        settings=runtime.settings,
        store=runtime.store,
        queue=runtime.training_queue,
    )
    if event is None:
        text = "이 메시지는 기록된 답변이 아닙니다." if korean else "This message is not a recorded answer."
        return Handled(message_response(text, ephemeral=True), "feedback_ignored")
    if event.label < 0 and ask_reason:
        return Handled(reason_modal(answer_id, FEEDBACK_REASONS, korean=korean), "feedback")
    emoji = "👍" if event.label > 0 else "👎"
    text = f"피드백 감사합니다 {emoji}" if korean else f"Thanks for the feedback {emoji}"
    return Handled(message_response(text, ephemeral=True), "feedback")


def _reason(payload: dict[str, Any], runtime: DiscordRuntime) -> Handled:
    """The reason modal's submission: the person's 👎 re-cast with what was wrong (once per
    interaction: its id is the event's time)."""
    parsed = parse_reason_submit(_object(payload, "data"))
    if parsed is None:
        raise BadInteraction("not a reason modal submission")
    answer_id, code, details = parsed
    channel_id, message_id = _message_answer(payload, answer_id)
    korean = _korean(payload)
    try:
        record_reason(platform="discord", channel=channel_id, message_id=message_id, user_id=_user_id(payload),
                      reason=parse_reason(code), text=details,
                      event_ts=snowflake_time(snowflake(_require(payload, "id"), "id")), store=runtime.store)
    except PermanentError as exc:
        return Handled(message_response(str(exc), ephemeral=True), "feedback_ignored")
    text = "고마워요! 이유를 기록했어요." if korean else "Thanks: the reason is recorded."
    return Handled(message_response(text, ephemeral=True), "feedback_reason")


def _follow_up(payload: dict[str, Any], runtime: DiscordRuntime) -> Handled:
    """The follow-up modal's question: queued like `/ask`, continuing that answer's conversation."""
    data = _object(payload, "data")
    answer_id = answer_id_of(str(data.get("custom_id", "")), FOLLOW_UP_PREFIX)
    assert answer_id is not None  # dispatched on it
    _message_answer(payload, answer_id)
    question = modal_fields(data).get("question")
    if not isinstance(question, str) or not question.strip():
        text = "질문을 입력해 주세요." if _korean(payload) else "Please write a question."
        return Handled(message_response(text, ephemeral=True), "ask_empty")
    return _queue_ask(payload, runtime, question.strip(), follow_up_of=answer_id)
