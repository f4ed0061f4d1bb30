"""The Slack app's listeners, matchers and lazy work, as plain functions.

Bolt injects each argument by name; `services` is the app's `SlackServices`, which
`bots.slack.app` puts into every request's context. Every listener acks at once; the slow work runs
as a lazy listener. A lazy listener simply raises when it fails: `bots.slack.lazy` reports the
failure in one place so the platform retries it, so none of these has to remember to.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bots.slack.answerer import Answerer, Question, answer_key
from bots.slack.feedback import after_vote
from bots.slack.render import escape_mrkdwn, slack_to_plain
from bots.slack.services import SlackServices
from bots.slack.threads import ACCEPTED_SUBTYPES, is_answered_thread
from core.contracts import NotifyTarget, ReactionAction, stable_id
from core.errors import TransientError
from core.feedback import record_reaction
from core.retrain import request_retrain, split_force

log = logging.getLogger(__name__)

THANKS = "Thanks for the feedback! · 피드백 고마워요!"
_NOT_IN_CHANNEL = "I can't post here yet: invite me with `/invite @EchoRAG` (or ask me in a DM)."
_RETRAIN_TRY_AGAIN = "Could not queue the retrain just now; please try again in a minute. · 잠시 후 다시 시도해 주세요."


def ack_now(ack: Ack) -> None:
    ack()


def _mentions_bot(text: str, bot_user_id: str | None) -> bool:
    return bool(bot_user_id) and f"<@{bot_user_id}>" in text


# --- questions ---------------------------------------------------------------------------------


def is_question(event: dict[str, Any], context: BoltContext, services: SlackServices) -> bool:
    """DMs, and replies in a thread the bot answered (mentions there come as app_mention)."""
    if event.get("subtype") not in ACCEPTED_SUBTYPES or event.get("bot_id"):
        return False
    if not event.get("channel") or not event.get("ts") or event.get("user") == context.bot_user_id:
        return False
    if event.get("channel_type") == "im":
        return True
    thread_ts = event.get("thread_ts")
    if not thread_ts or thread_ts == event.get("ts"):
        return False
    if _mentions_bot(str(event.get("text", "")), context.bot_user_id):
        return False  # the app_mention copy answers it
    return is_answered_thread(services.store, str(event["channel"]), str(thread_ts))


def answer_event(
    event: dict[str, Any], body: dict[str, Any], client: WebClient, context: BoltContext, services: SlackServices
) -> None:
    """An app_mention, a DM or a reply in an answered thread: answer in its thread."""
    channel, ts = str(event.get("channel") or ""), str(event.get("ts") or "")
    if not channel or not ts:
        log.warning("%s without channel/ts ignored: %s", event.get("type"), body.get("event_id"))
        return
    Answerer(services, client, context.bot_user_id).run(
        Question(
            dedup_key=answer_key(body.get("team_id"), channel, ts),
            channel=channel,
            thread_ts=str(event.get("thread_ts") or ts),
            question_ts=ts,
            user=str(event.get("user", "")),
            team=str(body.get("team_id") or ""),
            text=slack_to_plain(str(event.get("text", "")), context.bot_user_id),
        )
    )


def ask_command(
    command: dict[str, Any], client: WebClient, context: BoltContext, respond: Respond, services: SlackServices
) -> None:
    """`/ask <question>`: answered at the top of the channel, under a header naming the asker."""
    channel, user = str(command.get("channel_id", "")), str(command.get("user_id", ""))
    question = slack_to_plain(str(command.get("text", "")), context.bot_user_id)
    if not question:
        respond(response_type="ephemeral", text="Usage: `/ask <question>` · 사용법: `/ask <질문>`")
        return
    trigger = command.get("trigger_id") or stable_id(user, question)
    outcome = Answerer(services, client, context.bot_user_id).run(
        Question(
            dedup_key=f"slack/{command.get('team_id', '-')}/cmd/{trigger}",
            channel=channel,
            thread_ts=None,
            question_ts="",
            user=user,
            text=question,
            header=f"<@{user}>: _{escape_mrkdwn(question[:500])}_",  # cut before escaping: no half "&amp;"
        )
    )
    if outcome.error in ("not_in_channel", "channel_not_found"):
        respond(response_type="ephemeral", text=_NOT_IN_CHANNEL)


# --- reactions ---------------------------------------------------------------------------------


def is_reaction_on_bot_message(event: dict[str, Any], context: BoltContext) -> bool:
    item = event.get("item") or {}
    return (
        isinstance(item, dict)
        and item.get("type") == "message"
        and bool(item.get("channel"))
        and bool(item.get("ts"))
        and bool(event.get("user"))
        and event.get("item_user") in (None, context.bot_user_id)
    )


def record_feedback(event: dict[str, Any], client: WebClient, services: SlackServices) -> None:
    """A reaction on one of the bot's answers → a feedback event (a retry keeps its id)."""
    item = event["item"]
    action: ReactionAction = "added" if event.get("type") == "reaction_added" else "removed"
    feedback = record_reaction(
        platform="slack",
        channel=str(item["channel"]),
        message_id=str(item["ts"]),
        user_id=str(event["user"]),
        reaction=str(event.get("reaction", "")),  # feedback normalises skin tones and aliases
        action=action,
        event_ts=str(event.get("event_ts", "")),
        settings=services.settings,
        store=services.store,
        queue=services.queue,
    )
    if feedback is None:
        return
    after_vote(feedback, client, services, user=str(event["user"]))
    if services.settings.slack_reaction_thanks and action == "added":
        try:
            client.chat_postEphemeral(channel=str(item["channel"]), user=str(event["user"]), text=THANKS)
        except SlackApiError as exc:
            log.warning("ephemeral thanks failed: %s", exc.response.get("error"))


# --- /retrain ----------------------------------------------------------------------------------


def retrain_command(command: dict[str, Any], respond: Respond, services: SlackServices) -> None:
    """An admin's `/retrain [force] [reason]`: queued jobs are announced in the channel, refusals
    (including "no new ratings" without `force`) only to the asker.

    A store or queue outage is told plainly and not retried behind the admin's back: they press again."""
    user, channel = str(command.get("user_id", "")), str(command.get("channel_id", ""))
    force, reason = split_force(str(command.get("text", "")))
    try:
        outcome = request_retrain(
            requested_by=f"slack:{user}",
            notify_targets=[NotifyTarget(platform="slack", channel=channel)],
            reason=reason or "requested with /retrain in Slack",
            settings=services.settings,
            store=services.store,
            queue=services.queue,
            force=force,
            force_hint="/retrain force",
        )
    except TransientError as exc:
        log.error("/retrain by %s failed: %s", user, exc)
        respond(response_type="ephemeral", text=_RETRAIN_TRY_AGAIN)
        return
    response_type = "in_channel" if outcome.status == "queued" else "ephemeral"
    respond(response_type=response_type, text=escape_mrkdwn(outcome.message))
