"""Thread memory for the Slack app: which threads the bot answered, and what was said in them.

A plain reply (no mention) is a question only in a thread the bot already answered; the marker is
kept in the blob store (`slack/threads/<channel>/<thread_ts>`) so telling costs no Web API call per
channel message. The conversation memory handed to the agent is the bot's own transcript of the
thread (`…/<thread_ts>.turns`: every question it answered there and its answer), read first;
`conversations.replies` is read only for a thread without one, i.e. the turns people wrote before
the bot's first answer in it, which then seed the transcript. Apps outside the Marketplace get
`conversations.replies` at 1 request a minute (since 2025-05), so a follow-up must not need it.
Two answers finishing at once in one thread may each write the transcript; the later write wins
and the other's turn is missing from the memory of later questions (never from the thread).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bots.slack.render import slack_to_plain, transient_texts
from core.store import BlobStore
from rag.types import Turn

log = logging.getLogger(__name__)

HISTORY_TURNS = 12  # the last this many thread messages are the agent's memory
_PAGE = 200  # conversations.replies page size (Slack's maximum is 1000; 200 is its recommendation)
_MAX_PAGES = 10  # a thread longer than this many pages keeps only its oldest part in memory
# message subtypes that are people talking (edits, joins, deletions and the like are not)
ACCEPTED_SUBTYPES = (None, "thread_broadcast", "file_share")


def _thread_key(channel: str, thread_ts: str) -> str:
    return f"slack/threads/{channel}/{thread_ts}"


def remember_answered_thread(store: BlobStore, channel: str, thread_ts: str, answer_ts: str) -> None:
    """From now on plain replies in this thread are questions too."""
    store.put(_thread_key(channel, thread_ts), json.dumps({"answer": answer_ts}).encode())


def is_answered_thread(store: BlobStore, channel: str, thread_ts: str) -> bool:
    return store.get(_thread_key(channel, thread_ts)) is not None


def _turns_key(channel: str, thread_ts: str) -> str:
    return f"{_thread_key(channel, thread_ts)}.turns"


def stored_history(store: BlobStore, channel: str, thread_ts: str, before_ts: str,
                   limit: int = HISTORY_TURNS) -> list[Turn] | None:
    """The transcript's turns before `before_ts`; None when the thread has none (or it is unreadable)."""
    data = store.get(_turns_key(channel, thread_ts))
    if data is None:
        return None
    try:
        rows = json.loads(data)
        turns = [Turn(role=r["role"], text=str(r["text"])) for r in rows
                 if r["role"] in ("user", "assistant") and _ts_key(str(r["ts"])) < _ts_key(before_ts)]
    except (ValueError, TypeError, KeyError):
        log.warning("unreadable transcript of %s/%s: reading the thread instead", channel, thread_ts)
        return None
    return turns[-limit:]


def record_turns(store: BlobStore, channel: str, thread_ts: str, *, seed: Sequence[Turn], question_ts: str,
                 question: str, answer_ts: str, answer: str, limit: int = 2 * HISTORY_TURNS) -> None:
    """Add a question and its answer to the thread's transcript (`seed`: the turns read from Slack
    when the thread had none; they sort before the question). A retry of the same question replaces
    its turns instead of adding them twice."""
    data = store.get(_turns_key(channel, thread_ts))
    rows: list[dict[str, str]] = []
    if data is not None:
        try:
            rows = [r for r in json.loads(data) if isinstance(r, dict)]
        except ValueError:
            rows = []
    if not rows:
        rows = [{"role": t.role, "text": t.text, "ts": "0.000000"} for t in seed]
    rows = [r for r in rows if r.get("ts") not in (question_ts, answer_ts)]
    rows += [{"role": "user", "text": question, "ts": question_ts}, {"role": "assistant", "text": answer, "ts": answer_ts}]
    rows.sort(key=lambda r: _ts_key(str(r.get("ts", "0"))))
    store.put(_turns_key(channel, thread_ts), json.dumps(rows[-limit:], ensure_ascii=False).encode())


def _ts_key(ts: str) -> tuple[int, int]:
    """Slack ts ("1700000000.000100") as an exact sortable value (a float loses the last digits)."""
    seconds, _, micros = ts.partition(".")
    try:
        return int(seconds), int(micros or 0)
    except ValueError:
        return (0, 0)


PLACEHOLDER_EVENT = "echorag_placeholder"


def placeholder_metadata(dedup_key: str) -> dict[str, object]:
    """Message metadata that marks a placeholder as this question's, so a retry can find it."""
    return {"event_type": PLACEHOLDER_EVENT, "event_payload": {"question": dedup_key}}


def find_placeholder(client: WebClient, *, channel: str, thread_ts: str | None, dedup_key: str) -> str | None:
    """The ts of a placeholder an earlier attempt posted but could not save (its response was lost,
    or saving failed): searched in the thread, or among the channel's latest messages for `/ask`,
    which answers at the top. None when there is none or the channel cannot be read."""
    try:
        if thread_ts:
            response = client.conversations_replies(
                channel=channel, ts=thread_ts, limit=_PAGE, include_all_metadata=True
            )
        else:
            response = client.conversations_history(channel=channel, limit=_PAGE, include_all_metadata=True)
    except SlackApiError as exc:
        log.warning("could not read %s/%s for a placeholder: %s", channel, thread_ts or "-", exc.response.get("error"))
        return None
    messages: list[dict[str, Any]] = response.get("messages") or []
    for message in messages:
        metadata = message.get("metadata") or {}
        if metadata.get("event_type") == PLACEHOLDER_EVENT and (
            (metadata.get("event_payload") or {}).get("question") == dedup_key
        ):
            return str(message["ts"])
    return None


def thread_history(
    client: WebClient,
    *,
    channel: str,
    thread_ts: str,
    before_ts: str,
    bot_user_id: str | None,
    skip_ts: Sequence[str] = (),
    limit: int = HISTORY_TURNS,
) -> list[Turn]:
    """Earlier turns of the thread: the bot's messages are assistant turns, everyone else's user
    turns; placeholders, the current message and anything after it are left out."""
    if thread_ts == before_ts:
        return []  # the question starts the thread: nothing came before it
    messages: list[dict] = []
    cursor: str | None = None
    try:
        for _ in range(_MAX_PAGES):  # oldest first, so a long thread's recent turns are on later pages
            response = client.conversations_replies(channel=channel, ts=thread_ts, limit=_PAGE, cursor=cursor)
            messages.extend(response.get("messages", []))
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not response.get("has_more") or not cursor:
                break
    except SlackApiError as exc:
        log.warning("conversations.replies failed for %s/%s: %s", channel, thread_ts, exc.response.get("error"))
        if not messages:
            return []
    skipped = set(skip_ts)
    said: list[Turn] = []
    for message in messages:
        ts = str(message.get("ts", ""))
        if ts in skipped or _ts_key(ts) >= _ts_key(before_ts):
            continue
        if message.get("subtype") not in (*ACCEPTED_SUBTYPES, "bot_message"):
            continue
        is_bot = bool(bot_user_id) and message.get("user") == bot_user_id
        text = str(message.get("text") or "")
        if is_bot and text.strip() in transient_texts():
            continue
        plain = slack_to_plain(text, bot_user_id)
        if plain:
            said.append(Turn(role="assistant" if is_bot else "user", text=plain))
    turns: list[Turn] = []
    for turn in said[-limit:]:  # the last `limit` messages: a long thread stays a bounded prompt
        if turns and turns[-1].role == turn.role:  # one answer split over messages is one turn
            turns[-1] = Turn(role=turn.role, text=f"{turns[-1].text}\n\n{turn.text}")
        else:
            turns.append(turn)
    return turns
