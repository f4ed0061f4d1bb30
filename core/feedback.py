"""Reactions on the bot's answers → feedback events (the same code for Slack, Discord and console).

Emoji arrive as Slack names (`+1`, `thumbsup`, `+1::skin-tone-2`, `:white_check_mark:`) or as
Unicode (Discord, console: 👍, 👍🏽, ✅). Both normalise to one canonical name before the
POSITIVE_EMOJI / NEGATIVE_EMOJI lookup, so the settings may use either spelling.
"""

from __future__ import annotations

import logging
import re

from core.contracts import (
    FEEDBACK_REASONS,
    FeedbackEvent,
    FeedbackReason,
    Platform,
    ReactionAction,
    make_answer_id,
    make_feedback_id,
)
from core.errors import PermanentError
from core.queue import JobQueue
from core.records import answer_votes, hash_user, load_answer, save_feedback
from core.retrain import default_notify_targets, maybe_auto_retrain
from core.settings import Settings
from core.store import BlobStore

log = logging.getLogger(__name__)

# Unicode → the Slack short name used as the canonical spelling.
_UNICODE_NAMES = {
    "👍": "+1",
    "👎": "-1",
    "✅": "white_check_mark",
    "✔": "heavy_check_mark",
    "☑": "ballot_box_with_check",
    "💯": "100",
    "❌": "x",
    "✖": "heavy_multiplication_x",
    "❤": "heart",
    "🎉": "tada",
}
# Slack (and common) aliases → canonical name.
_ALIASES = {
    "thumbsup": "+1",
    "thumbs_up": "+1",
    "thumbsdown": "-1",
    "thumbs_down": "-1",
    "plus1": "+1",
    "minus1": "-1",
    "hundred": "100",
    "cross_mark": "x",
}
# Variation selectors and Fitzpatrick skin-tone modifiers carry no meaning for a vote.
_MODIFIERS = re.compile("[\ufe0e\ufe0f\U0001f3fb-\U0001f3ff]")


def normalize_emoji(reaction: str) -> str:
    """One canonical name per emoji: "👍🏽", "thumbsup", ":+1::skin-tone-3:" → "+1"."""
    name = _MODIFIERS.sub("", reaction.strip())
    name = name.strip(":").split("::", 1)[0].strip(":")
    if name in _UNICODE_NAMES:
        return _UNICODE_NAMES[name]
    name = name.lower()
    return _ALIASES.get(name, name)


def emoji_label(reaction: str, settings: Settings) -> int | None:
    """+1 / -1 for emoji in POSITIVE_EMOJI / NEGATIVE_EMOJI, None for every other emoji."""
    name = normalize_emoji(reaction)
    if name in {normalize_emoji(e) for e in settings.positive_emoji}:
        return 1
    if name in {normalize_emoji(e) for e in settings.negative_emoji}:
        return -1
    return None


def record_reaction(
    *,
    platform: Platform,
    channel: str,
    message_id: str,
    user_id: str,
    reaction: str,
    action: ReactionAction,
    event_ts: str,
    settings: Settings,
    store: BlobStore,
    queue: JobQueue,
) -> FeedbackEvent | None:
    """Store one reaction on a bot answer, once; may queue the threshold retrain.

    Returns the event (also when this delivery was a duplicate of a stored one), or None when the
    message is not one of the bot's answers or the emoji is not a vote. `event_ts` is the event's
    time in epoch seconds as the platform states it (Slack `event_ts`, a Discord interaction's
    snowflake time, the gateway's receipt time): a redelivery carries the same time and is one
    record; a re-add after a removal is a new one. The log is append-only and the effective vote is
    resolved by event time when read (`records.effective_votes`), so clicks processed concurrently
    or out of order never lose a vote: no read-modify-write state to race on.
    """
    if action not in ("added", "removed"):
        raise PermanentError(f"reaction action must be 'added' or 'removed', not {action!r}")
    if not (channel and message_id and user_id and reaction and event_ts):
        raise PermanentError("a reaction needs channel, message_id, user_id, reaction and event_ts")
    label = emoji_label(reaction, settings)
    if label is None:
        log.debug("ignoring %s reaction %r: not a vote emoji", platform, reaction)
        return None
    answer_id = make_answer_id(platform, channel, message_id)
    if load_answer(store, answer_id) is None:
        log.debug("ignoring reaction on %s %s/%s: not a bot answer", platform, channel, message_id)
        return None
    name = normalize_emoji(reaction)
    user_hash = hash_user(platform, user_id)
    event = FeedbackEvent(
        feedback_id=make_feedback_id(platform, user_id, channel, message_id, name, action, event_ts),
        answer_id=answer_id,
        platform=platform,
        channel=channel,
        message_id=message_id,
        user_hash=user_hash,
        reaction=name,
        label=label,
        action=action,
        event_ts=event_ts,
    )
    if save_feedback(store, event):
        log.info("feedback %s %s %+d on answer %s", action, name, label, answer_id)
    else:
        log.info("duplicate delivery of feedback %s ignored", event.feedback_id)
    if action == "added":
        # Also on a duplicate: a retried delivery re-checks a trigger whose first try failed.
        maybe_auto_retrain(
            settings=settings,
            store=store,
            queue=queue,
            notify_targets=default_notify_targets(settings, platform, channel),
        )
    return event


REASON_TEXT_MAX = 500


def parse_reason(code: str) -> FeedbackReason:
    """A reason code as people type it ("not in docs", "Outdated") → the stored code."""
    name = code.strip().lower().replace(" ", "_").replace("-", "_")
    for reason in FEEDBACK_REASONS:
        if name == reason:
            return reason
    raise PermanentError(f"unknown reason {code!r}: use one of {', '.join(FEEDBACK_REASONS)}")


def record_reason(
    *,
    platform: Platform,
    channel: str,
    message_id: str,
    user_id: str,
    reason: FeedbackReason,
    text: str,
    event_ts: str,
    store: BlobStore,
) -> FeedbackEvent:
    """What was wrong with an answer this person voted 👎: their vote re-cast with the reason.

    A new event in the append-only log (its own `event_ts`, so a retried delivery is one record)
    rather than an edit of the vote: the latest event wins when votes are read, so the reason travels
    with the effective vote into the report and the training snapshot, and a later removal of the
    👎 withdraws both. Refused (PermanentError) when the person's current vote is not a 👎."""
    answer_id = make_answer_id(platform, channel, message_id)
    user_hash = hash_user(platform, user_id)
    vote = answer_votes(store, answer_id).get(user_hash)
    if vote is None or vote.label >= 0:
        raise PermanentError("a reason can only be given for an answer you voted 👎")
    event = FeedbackEvent(
        feedback_id=make_feedback_id(platform, user_id, channel, message_id, vote.reaction, "added", event_ts),
        answer_id=answer_id,
        platform=platform,
        channel=channel,
        message_id=message_id,
        user_hash=user_hash,
        reaction=vote.reaction,
        label=vote.label,
        action="added",
        event_ts=event_ts,
        reason=reason,
        reason_text=text.strip()[:REASON_TEXT_MAX],
    )
    if save_feedback(store, event):
        log.info("feedback reason %s on answer %s", reason, answer_id)
    return event
