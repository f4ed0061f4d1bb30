"""Discord conversations the bot keeps itself: `/ask` has no thread the bot could read back, so each
answer's conversation so far is one object in the store, and a follow-up asked from that answer's
"Ask a follow-up" button starts from it.

Layout: `discord/conversations/<answer_id>.json` = the turns up to and including that answer
(at most MAX_TURNS). A follow-up of an answer stored before conversations were kept starts from
that answer's record alone. `discord/conversations/threads/<thread_id>` = the id of the latest
answer posted in that thread: a reply in the thread (gateway) continues from it, so button and
thread follow-ups share one history.
"""

from __future__ import annotations

import json
import logging

from core.records import load_answer
from core.store import BlobStore
from rag.types import Turn

log = logging.getLogger(__name__)

PREFIX = "discord/conversations/"
THREADS = PREFIX + "threads/"
MAX_TURNS = 10  # as the console and Slack threads: five exchanges


def _key(answer_id: str) -> str:
    return f"{PREFIX}{answer_id}.json"


def turns_before(store: BlobStore, answer_id: str) -> list[Turn]:
    """The conversation a follow-up of `answer_id` continues: its turns, that answer included."""
    data = store.get(_key(answer_id))
    if data is not None:
        try:
            return [Turn(role=t["role"], text=str(t["text"])) for t in json.loads(data)
                    if t.get("role") in ("user", "assistant")][-MAX_TURNS:]
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("unreadable conversation of answer %s; starting from its record", answer_id)
    record = load_answer(store, answer_id)
    if record is None:
        return []
    return [Turn("user", record.question), Turn("assistant", record.answer)]


def remember(store: BlobStore, answer_id: str, history: list[Turn], question: str, answer: str,
             *, thread_id: str = "") -> None:
    """Store the conversation up to this answer (a retry rewrites the same object); posted in a
    thread, the answer also becomes the one that thread's next reply continues."""
    turns = [*history, Turn("user", question), Turn("assistant", answer)][-MAX_TURNS:]
    store.put(_key(answer_id), json.dumps([{"role": t.role, "text": t.text} for t in turns],
                                          ensure_ascii=False).encode())
    if thread_id:
        store.put(THREADS + thread_id, answer_id.encode())


def thread_answer(store: BlobStore, thread_id: str) -> str | None:
    """The latest answer posted in `thread_id`, or None when the bot has not answered there."""
    data = store.get(THREADS + thread_id)
    return data.decode() if data else None
