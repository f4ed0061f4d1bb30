"""Reactions on the bot's answers → feedback events (the same code for Slack, Discord and console).

Emoji arrive as Slack names (`+1`, `thumbsup`, `+1::skin-tone-2`, `:white_check_mark:`) or as
Unicode (Discord, console: 👍, 👍🏽, ✅). Both normalise to one canonical name before the
POSITIVE_EMOJI / NEGATIVE_EMOJI lookup, so the settings may use either spelling.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from core.contracts import FeedbackEvent, Platform, ReactionAction, make_answer_id, make_feedback_id
from core.errors import PermanentError
from core.queue import JobQueue
from core.records import hash_user, load_answer, save_feedback
from core.retrain import default_notify_targets, maybe_auto_retrain
from core.settings import Settings
from core.store import BlobStore

log = logging.getLogger(__name__)

STATE_PREFIX = "index/reaction-state/"

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


class ReactionState:
    """Per (answer, user): each emoji's last action and its sequence number, for platforms whose
    reaction events carry no time (Discord gateway, buttons, console).

    There a redelivery and a deliberate repeat look alike, so the identity of an event becomes
    "the user's n-th change of this emoji": repeating the current state is the same event (one
    record), while a re-add after a removal, or re-choosing 👍 after a later 👎, is a new one.
    """

    def __init__(self, key: str, entries: dict[str, dict[str, Any]]) -> None:
        self.key, self.entries = key, entries

    @classmethod
    def load(cls, store: BlobStore, answer_id: str, user_hash: str) -> ReactionState:
        key = f"{STATE_PREFIX}{answer_id}/{user_hash}.json"
        data = store.get(key)
        try:
            entries = json.loads(data) if data else {}
        except ValueError:
            log.warning("unreadable reaction state %s; starting over", key)
            entries = {}
        return cls(key, entries if isinstance(entries, dict) else {})

    def event_ts_for(self, reaction: str, action: str) -> str:
        current = self.entries.get(reaction)
        if current is not None and current.get("action") == action:
            newer_other = any(
                other.get("action") == "added" and other.get("seq_at", 0) > current.get("seq_at", 0)
                for name, other in self.entries.items()
                if name != reaction
            )
            if action == "removed" or not newer_other:
                return str(current["event_ts"])  # the same state again: the same event
        seq = int(current.get("seq", 0)) + 1 if current else 1
        return f"seq-{seq}"

    def save(self, store: BlobStore, reaction: str, action: str, event_ts: str) -> None:
        if self.entries.get(reaction, {}).get("event_ts") == event_ts:
            return
        order = max((int(e.get("seq_at", 0)) for e in self.entries.values()), default=0) + 1
        seq = int(event_ts.removeprefix("seq-")) if event_ts.startswith("seq-") else 1
        self.entries[reaction] = {"action": action, "seq": seq, "event_ts": event_ts, "seq_at": order}
        store.put(self.key, json.dumps(self.entries).encode())


def record_reaction(
    *,
    platform: Platform,
    channel: str,
    message_id: str,
    user_id: str,
    reaction: str,
    action: ReactionAction,
    event_ts: str = "",
    settings: Settings,
    store: BlobStore,
    queue: JobQueue,
) -> FeedbackEvent | None:
    """Store one reaction on a bot answer, once; may queue the threshold retrain.

    Returns the event (also when this delivery was a duplicate of a stored one), or None when the
    message is not one of the bot's answers or the emoji is not a vote. `event_ts` is the
    platform's event time (Slack `event_ts`): it tells a re-add after a removal from a retry.
    """
    if action not in ("added", "removed"):
        raise PermanentError(f"reaction action must be 'added' or 'removed', not {action!r}")
    if not (channel and message_id and user_id and reaction):
        raise PermanentError("a reaction needs channel, message_id, user_id and reaction")
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
    state = None
    if not event_ts:  # no platform event time: number the user's state changes instead
        state = ReactionState.load(store, answer_id, user_hash)
        event_ts = state.event_ts_for(name, action)
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
    if state is not None:
        state.save(store, name, action, event_ts)
    if action == "added":
        # Also on a duplicate: a retried delivery re-checks a trigger whose first try failed.
        maybe_auto_retrain(
            settings=settings,
            store=store,
            queue=queue,
            notify_targets=default_notify_targets(settings, platform, channel),
        )
    return event
