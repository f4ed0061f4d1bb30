"""Slack's AI-app threads (Agents & AI Apps) through Bolt's `Assistant` middleware.

Bolt routes the assistant events (`assistant_thread_started`, `assistant_thread_context_changed`,
a user's message in the thread); the work is ours and calls the Web API directly rather than
through the kwargs Bolt attaches, so it runs the same in a lazy re-invocation on Lambda:

- thread started: up to four suggested prompts (SLACK_SUGGESTED_PROMPTS), and the channel the
  person is viewing is remembered;
- context changed: the newly viewed channel is remembered. It picks the knowledge spaces, under
  the same CHANNEL_SPACES map as questions asked in that channel (a DM alone gets DEFAULT_SPACES);
- a message: answered exactly once by the `Answerer` like any thread question, with a live status
  ("Searching the documents…") while it runs, and the thread titled after its first question.

Why our own record of the viewed channel rather than Bolt's default context store: that store keeps
it in a bot message's metadata, which costs a `conversations.replies` read and a `chat.update` per
change; one small object in the store the bot already has is cheaper and survives retries.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from slack_bolt import Ack, Assistant, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bots.slack.answerer import Answerer, Question, answer_key
from bots.slack.render import slack_to_plain
from bots.slack.services import SlackServices

log = logging.getLogger(__name__)

CONTEXT_PREFIX = "slack/assistant/"  # <channel>/<thread_ts>: the channel the person was viewing
MAX_PROMPTS = 4  # Slack's limit
TITLE_LIMIT = 80


def _ack(ack: Ack) -> None:
    ack()


def build_assistant() -> Assistant:
    """Bolt's router for the three events; each acks at once and does its work lazily. (The
    decorator form: called with the ack function directly, Bolt would drop `lazy`.)"""
    assistant = Assistant()
    only_whole: Any = [has_thread]  # a list, as Bolt's code concatenates (its type hint says one callable)
    assistant.thread_started(matchers=only_whole, lazy=[thread_started])(_ack)
    assistant.thread_context_changed(matchers=only_whole, lazy=[context_changed])(_ack)
    assistant.user_message(lazy=[user_message])(_ack)
    return assistant


def has_thread(event: dict[str, Any]) -> bool:
    """Bolt's own middleware for these events reads `assistant_thread`: without it, skip them
    (`ack_malformed` answers) rather than let a malformed event become a 500 Slack retries."""
    return _thread(event) is not None


def ack_malformed(ack: Ack, event: dict[str, Any]) -> None:
    """An assistant thread event without a usable `assistant_thread`: acked and logged."""
    log.warning("%s without channel or thread: ignored", event.get("type"))
    ack()


def _thread(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(DM channel, thread ts, viewed channel or "") of an assistant thread event; None if malformed."""
    thread = event.get("assistant_thread")
    if not isinstance(thread, dict):
        return None
    channel, ts = thread.get("channel_id"), thread.get("thread_ts")
    context = thread.get("context")
    viewed = context.get("channel_id") if isinstance(context, dict) else None
    if not (isinstance(channel, str) and channel and isinstance(ts, str) and ts):
        return None
    return channel, ts, viewed if isinstance(viewed, str) else ""


def _remember(services: SlackServices, channel: str, thread_ts: str, viewed: str) -> None:
    services.store.put(f"{CONTEXT_PREFIX}{channel}/{thread_ts}", json.dumps({"channel_id": viewed}).encode())


def viewed_channel(services: SlackServices, channel: str, thread_ts: str) -> str:
    """The channel the person was viewing when the thread started or last changed ("" if none)."""
    data = services.store.get(f"{CONTEXT_PREFIX}{channel}/{thread_ts}")
    try:
        return str(json.loads(data)["channel_id"]) if data else ""
    except (ValueError, KeyError, TypeError):
        return ""


def thread_started(event: dict[str, Any], client: WebClient, services: SlackServices) -> None:
    where = _thread(event)
    assert where is not None  # has_thread matched
    channel, thread_ts, viewed = where
    _remember(services, channel, thread_ts, viewed)
    prompts = services.settings.slack_suggested_prompts[:MAX_PROMPTS]
    if not prompts:
        return
    try:
        client.assistant_threads_setSuggestedPrompts(
            channel_id=channel, thread_ts=thread_ts, title=services.settings.slack_prompts_title,
            prompts=[{"title": p[:75], "message": p} for p in prompts],
        )
    except SlackApiError as exc:
        log.warning("suggested prompts not set: %s", exc.response.get("error"))


def context_changed(event: dict[str, Any], services: SlackServices) -> None:
    where = _thread(event)
    assert where is not None  # has_thread matched
    _remember(services, *where)


def user_message(
    event: dict[str, Any], body: dict[str, Any], client: WebClient, context: BoltContext, services: SlackServices
) -> None:
    """A question in an assistant thread: titled (first question), answered with a live status."""
    channel, ts, thread_ts = (str(event.get(k) or "") for k in ("channel", "ts", "thread_ts"))
    if not (channel and ts and thread_ts) or event.get("user") == context.bot_user_id:
        log.warning("assistant thread message without channel/ts/thread: ignored")
        return
    text = slack_to_plain(str(event.get("text", "")), context.bot_user_id)
    _title(client, services, channel, thread_ts, text)
    Answerer(services, client, context.bot_user_id).run(
        Question(
            dedup_key=answer_key(body.get("team_id"), channel, ts),
            channel=channel,
            thread_ts=thread_ts,
            question_ts=ts,
            user=str(event.get("user", "")),
            team=str(body.get("team_id") or ""),
            text=text,
            space_channel=viewed_channel(services, channel, thread_ts),
            live_status=True,
        )
    )


def _title(client: WebClient, services: SlackServices, channel: str, thread_ts: str, text: str) -> None:
    """Name the thread after its first question (once: a marker in the store says it was done)."""
    key = f"{CONTEXT_PREFIX}{channel}/{thread_ts}.titled"
    if not text.strip() or not services.store.put(key, b"", if_absent=True):
        return
    try:
        client.assistant_threads_setTitle(channel_id=channel, thread_ts=thread_ts, title=text.strip()[:TITLE_LIMIT])
    except SlackApiError as exc:
        log.warning("thread title not set: %s", exc.response.get("error"))
