"""The App Home tab: for admins, the report's headline numbers, the top knowledge gaps and a button
that queues retraining; for everyone else, how to ask.

Blocks are built with `slack_sdk.models.blocks`, so Slack's limits (text lengths, block counts)
are checked before the call. The numbers come from `core.report.collect` (the same as
`echorag report`) over the last HOME_WINDOW_DAYS: an admin's open reads that window's records, so
the window is kept short; the full picture is the report.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View

from bots.slack.render import escape_mrkdwn
from bots.slack.services import SlackServices
from core.contracts import NotifyTarget
from core.errors import TransientError
from core.registry import AdapterRegistry
from core.retrain import announce_targets, is_admin_user, request_retrain

log = logging.getLogger(__name__)

RETRAIN_ACTION = "echorag_home_retrain"
HOME_WINDOW_DAYS = 7
TOP_GAPS = 5


def home_view(user: str, services: SlackServices, *, notice: str = "") -> View:
    """The Home tab `user` sees now (`notice`: the outcome of their last button press)."""
    blocks: list[Block] = []
    if notice:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=escape_mrkdwn(notice))]))
    if is_admin_user(f"slack:{user}", services.settings):
        blocks += _admin_blocks(services)
    else:
        blocks += _user_blocks()
    return View(type="home", blocks=blocks)


def _user_blocks() -> list[Block]:
    return [
        HeaderBlock(text="EchoRAG"),
        SectionBlock(text=MarkdownTextObject(text=(
            "Ask me about the team's documents: mention me in a channel, send me a message here, or use "
            "`/ask`. Every answer cites its sources. React 👍 or 👎 on an answer: votes improve the "
            "ranking at once and train the model when an admin retrains.\n"
            "문서에 대해 물어보세요: 채널에서 저를 멘션하거나, 여기로 메시지를 보내거나, `/ask`를 쓰세요."
        ))),
    ]


def _admin_blocks(services: SlackServices) -> list[Block]:
    from core.report.collect import collect

    now = datetime.now(UTC)
    data = collect(services.store, since=now - timedelta(days=HOME_WINDOW_DAYS), until=now,
                   adapter_name=services.settings.adapter_name)
    t = data.totals
    votes = t.up + t.down
    current = AdapterRegistry(services.store, services.settings.adapter_name).current()
    fields = [
        MarkdownTextObject(text=f"*Questions*\n{t.questions}"),
        MarkdownTextObject(text=f"*Answered*\n{t.answered} ({t.answered / t.questions:.0%})" if t.questions
                           else "*Answered*\n0"),
        MarkdownTextObject(text=f"*Abstained*\n{t.abstained}"),
        MarkdownTextObject(text=f"*Votes*\n👍 {t.up}  👎 {t.down}" + (f"  ({t.up / votes:.0%} 👍)" if votes else "")),
        MarkdownTextObject(text=f"*Live adapter*\n{f'v{current}' if current else 'base model'}"),
    ]
    gaps = [
        f"• *{escape_mrkdwn(g.topic)}*: {g.count} question(s), {g.abstained} abstained, {g.down} 👎"
        + (f" — e.g. “{escape_mrkdwn(g.examples[0].question[:120])}”" if g.examples else "")
        for g in data.gaps[:TOP_GAPS]
    ]
    return [
        HeaderBlock(text=f"EchoRAG: the last {HOME_WINDOW_DAYS} days"),
        SectionBlock(fields=fields),
        DividerBlock(),
        SectionBlock(text=MarkdownTextObject(text="*Top knowledge gaps*\n" + ("\n".join(gaps) or "none: every "
                                                                                   "question was answered"))),
        ActionsBlock(elements=[ButtonElement(
            text="Queue retraining", action_id=RETRAIN_ACTION, style="primary",
            confirm=ConfirmObject(title="Retrain now?", text="A training job is queued from the votes so far; "
                                  "the new adapter goes live only if it passes the gate.",
                                  confirm="Queue it", deny="Cancel"),
        )]),
        ContextBlock(elements=[MarkdownTextObject(
            text="The full report, with charts: `echorag report --since 30d --out report.html`")]),
    ]


def publish_home(event: dict[str, Any], client: WebClient, services: SlackServices) -> None:
    """`app_home_opened` on the Home tab → publish that person's view."""
    if event.get("tab") not in (None, "home"):
        return
    user = event.get("user")
    if not isinstance(user, str) or not user:
        log.warning("app_home_opened without a user: ignored")
        return
    _publish(client, user, home_view(user, services))


def _publish(client: WebClient, user: str, view: View) -> None:
    """A Home that fails to publish is logged, not retried: the next open publishes it again."""
    try:
        client.views_publish(user_id=user, view=view)
    except SlackApiError as exc:
        log.warning("views.publish for %s failed: %s", user, exc.response.get("error"))


def retrain_from_home(body: dict[str, Any], client: WebClient, services: SlackServices) -> None:
    """The Home tab's button: queue retraining as this person (refused unless an admin), announce
    in the announcement channels and their DM, and show the outcome at the top of their Home."""
    user = (body.get("user") or {}).get("id") if isinstance(body.get("user"), dict) else None
    if not isinstance(user, str) or not user:
        log.warning("App Home button press without a user: ignored")
        return
    targets = [*announce_targets(services.settings), NotifyTarget(platform="slack", channel=user)]
    try:
        outcome = request_retrain(
            requested_by=f"slack:{user}", notify_targets=targets, reason="requested from the App Home",
            settings=services.settings, store=services.store, queue=services.queue, force_hint="/retrain force",
        )
        notice = outcome.message
    except TransientError as exc:
        log.error("retrain from the App Home by %s failed: %s", user, exc)
        notice = "Could not reach the job queue just now; nothing was queued. Press the button again in a minute."
    _publish(client, user, home_view(user, services, notice=notice))
