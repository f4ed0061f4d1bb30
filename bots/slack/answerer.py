"""Answers one question in one Slack thread, exactly once.

Slack retries a delivery it thinks failed (`X-Slack-Retry-Num`), a mention in a thread arrives as
both `app_mention` and `message`, and Lambda retries a failed async invocation. So an answer is
claimed (`core.idempotency.once`) under the question's identity (team, channel, message ts: the same
for every retry and for both copies of a thread mention). The placeholder's ts is saved too, so a
retry edits the same message instead of leaving an orphan "Looking…" behind, and the answer keeps
one id.

What a failure does follows `core.errors`: a `UserError` (empty, too long) is shown and finished; a
permanent one (a `PermanentError`, or a Slack error no retry fixes) gets a plain apology and is
finished; anything else is transient: the asker sees "something went wrong, it may still come",
never the message, and the exception propagates so Lambda retries the lazy invocation.

With an LLM, an answer in a thread is streamed (`bots.slack.stream`): the stream's message is the
placeholder, saved before any text, so a retry edits it and never starts a second stream. An
attempt that finds a stream marked as starting but no ts (it died between the two) posts a plain
placeholder instead. The stored answer finishes the stream when it goes on from what was streamed
(an abstention or the documents' quote streams nothing first); when it differs (the documents'
words replaced the model's, or the cap cut it), the stream is stopped and edited to it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bots.slack.feedback import feedback_block
from bots.slack.render import (
    SlackMessage,
    empty_question_text,
    escape_mrkdwn,
    failure_text,
    gave_up_text,
    notice_blocks,
    placeholder_text,
    render_answer,
    tail_blocks,
)
from bots.slack.services import SlackServices
from bots.slack.stream import AnswerStream
from bots.slack.threads import (
    find_placeholder,
    placeholder_metadata,
    record_turns,
    remember_answered_thread,
    stored_history,
    thread_history,
)
from core.errors import PermanentError, UserError
from core.idempotency import ClaimHeld, once
from core.records import hash_user
from rag.language import detect_language
from rag.types import AgentAnswer, AnswerRef, Turn

log = logging.getLogger(__name__)

# Slack errors a retry cannot fix: the attempt ends (claim finished) instead of being retried.
PERMANENT_SLACK_ERRORS = frozenset(
    {"not_in_channel", "channel_not_found", "is_archived", "invalid_blocks", "msg_too_long"}
)


_STATUS = {  # the status, then the loading messages Slack rotates through
    "ko": ("문서를 찾는 중…", "문서를 찾는 중…", "답을 정리하는 중…"),
    "en": ("Searching the documents…", "Searching the documents…", "Writing the answer…"),
}


@dataclass(frozen=True)
class Question:
    """One question and where it goes: `thread_ts` None posts at the top of the channel (`/ask`)."""

    dedup_key: str
    channel: str
    thread_ts: str | None
    question_ts: str
    user: str
    text: str
    header: str | None = None
    space_channel: str = ""  # whose knowledge spaces apply ("": `channel`'s); an AI-app thread's viewed channel
    team: str = ""  # the asker's team: a stream outside a DM names its recipient
    live_status: bool = False  # show Slack's thread status while answering (AI-app threads)


@dataclass(frozen=True)
class AnswerOutcome:
    """What one delivery did; `error` is the Slack error code of a permanent failure."""

    status: Literal["answered", "duplicate", "refused", "failed"]
    error: str = ""


def answer_key(team_id: str | None, channel: str, ts: str) -> str:
    """A question's dedup key: the same for every retry and for both copies of a thread mention."""
    return f"slack/{team_id or '-'}/{channel}/{ts}"


def _placeholder_key(dedup_key: str) -> str:
    return f"slack/placeholders/{dedup_key}"


def _payload(message: SlackMessage) -> dict[str, Any]:
    return {"text": message.text, "blocks": message.blocks}


def _permanent_code(exc: Exception) -> str | None:
    """The reason no retry can help, or None for a transient failure."""
    if isinstance(exc, SlackApiError):
        code = str(exc.response.get("error", ""))
        return code if code in PERMANENT_SLACK_ERRORS else None
    return type(exc).__name__ if isinstance(exc, PermanentError) else None


class Answerer:
    """Posts a placeholder (or reuses a retry's), answers, and edits the placeholder with the answer."""

    def __init__(self, services: SlackServices, client: WebClient, bot_user_id: str | None) -> None:
        self.services = services
        self.client = client
        self.bot_user_id = bot_user_id
        self.stream: AnswerStream | None = None  # this attempt's stream, when it started one

    def run(self, q: Question) -> AnswerOutcome:
        store = self.services.store
        with once(store, q.dedup_key, lease_s=self.services.lease_s) as claim:
            if claim.state == "done":
                log.info("slack answer %s already done; skipping", q.dedup_key)
                return AnswerOutcome("duplicate")
            if claim.state == "held":
                log.warning("slack answer %s is claimed by another attempt; a retry will check on it", q.dedup_key)
                raise ClaimHeld(q.dedup_key)
            language = detect_language(q.text)
            if not q.text:
                self.client.chat_postMessage(
                    channel=q.channel, thread_ts=q.thread_ts or q.question_ts, text=empty_question_text(language)
                )
                return AnswerOutcome("refused")
            placeholder_ts: str | None = None
            try:
                placeholder_ts = self._placeholder(q, language, retry=claim.attempt > 0)
                # the last try quotes the documents when the LLM is down, rather than giving up
                return self._answer(q, placeholder_ts, last_try=claim.attempt >= self.services.retries)
            except UserError as exc:  # the question itself is wrong: tell the asker, done
                assert placeholder_ts is not None  # only the agent raises UserError
                if self.stream is not None:
                    self.stream.abandon(str(exc))
                refusal = notice_blocks(escape_mrkdwn(str(exc)))
                self.client.chat_update(channel=q.channel, ts=placeholder_ts, **_payload(refusal))
                return AnswerOutcome("refused")
            except Exception as exc:
                if self.stream is not None:
                    self.stream.abandon(failure_text(language))
                if claim.done_elsewhere():  # our lease ran out and a retry answered: leave it be
                    log.warning("slack answer %s failed after another attempt answered it: %r", q.dedup_key, exc)
                    return AnswerOutcome("duplicate")
                code = _permanent_code(exc)
                if code is None:
                    self._edit(q.channel, placeholder_ts, notice_blocks(failure_text(language)))
                    raise  # transient: the claim is given back and Lambda retries
                log.error("slack answer %s failed for good: %s: %s", q.dedup_key, code, exc)
                self._edit(q.channel, placeholder_ts, notice_blocks(gave_up_text(language)))
                return AnswerOutcome("failed", error=code)

    def _answer(self, q: Question, placeholder_ts: str, *, last_try: bool) -> AnswerOutcome:
        answer_thread = q.thread_ts or placeholder_ts
        history: list[Turn] = []
        read_from_slack = False
        if q.thread_ts and q.thread_ts != q.question_ts:  # a question that starts a thread has no past
            stored = stored_history(self.services.store, q.channel, q.thread_ts, q.question_ts)
            read_from_slack = stored is None
            history = stored if stored is not None else thread_history(
                self.client, channel=q.channel, thread_ts=q.thread_ts, before_ts=q.question_ts,
                bot_user_id=self.bot_user_id, skip_ts=[placeholder_ts],
            )
        started = time.perf_counter()
        if q.live_status:
            self._status(q.channel, answer_thread, detect_language(q.text))
        answer: AgentAnswer = self.services.ask(
            q.text,
            history=history,
            spaces=self.services.settings.spaces_for_channel(q.space_channel or q.channel),
            ref=AnswerRef(
                platform="slack",
                channel=q.channel,
                message_id=placeholder_ts,
                thread_id=answer_thread,
                user_hash=hash_user("slack", q.user) if q.user else "",
            ),
            llm_fallback=last_try,
            on_text=self.stream.write if self.stream is not None else None,
        )
        seconds = time.perf_counter() - started
        messages = render_answer(answer, header=q.header, elapsed_s=seconds)
        if self.stream is not None and len(messages) == 1 and self.stream.fits(answer.text):
            self.stream.finish(answer.text, [*tail_blocks(answer, seconds), feedback_block(answer.language)])
        else:
            if self.stream is not None:
                self.stream.stop(placeholder_text(answer.language))
            self.client.chat_update(channel=q.channel, ts=placeholder_ts, **_payload(messages[0]))
        for extra in messages[1:]:
            self.client.chat_postMessage(channel=q.channel, thread_ts=answer_thread, **_payload(extra))
        record_turns(self.services.store, q.channel, answer_thread, seed=history if read_from_slack else (),
                     question_ts=q.question_ts, question=q.text, answer_ts=placeholder_ts, answer=answer.text)
        if q.live_status:
            self._status(q.channel, answer_thread, None)  # an edit is not a reply: Slack keeps it until cleared
        self.services.observer.answered(answer, seconds)
        log.info(
            "slack answered %s in %.2fs (top score %s, %d sources)",
            q.dedup_key,
            seconds,
            answer.scores.get("top_score"),
            len(answer.citations),
        )
        return AnswerOutcome("answered")

    def _placeholder(self, q: Question, language: str, *, retry: bool) -> str:
        """The placeholder's ts: the one an earlier attempt posted, or a fresh one (saved at once).

        On a retry whose store has none, the thread (or for `/ask`, the channel's latest messages)
        is searched for the earlier attempt's placeholder by its metadata first (its post went
        through but the answer to it was lost), so no orphan "Looking…" stays behind."""
        key = _placeholder_key(q.dedup_key)
        saved = self.services.store.get(key)
        if saved and "ts" in (state := json.loads(saved)):
            return str(state["ts"])
        found = (
            find_placeholder(self.client, channel=q.channel, thread_ts=q.thread_ts, dedup_key=q.dedup_key)
            if retry
            else None
        )
        if found is not None:
            ts = found
        elif self._streams(q) and not saved:
            self.services.store.put(key, json.dumps({"stream": "starting", "channel": q.channel}).encode())
            assert q.thread_ts is not None  # _streams
            self.stream = AnswerStream.start(
                self.client, channel=q.channel, thread_ts=q.thread_ts, team=q.team, user=q.user,
                language=language, buffer_size=self.services.settings.slack_stream_buffer,
            )
            ts = self.stream.ts
        else:
            text = placeholder_text(language)
            if q.header:
                text = f"{q.header}\n{text}"
            response = self.client.chat_postMessage(
                channel=q.channel, thread_ts=q.thread_ts, metadata=placeholder_metadata(q.dedup_key),
                **_payload(notice_blocks(text)),
            )
            ts = str(response["ts"])
        self.services.store.put(key, json.dumps({"ts": ts, "channel": q.channel}).encode())
        # from now on plain replies in this thread are questions too (even while this one runs)
        remember_answered_thread(self.services.store, q.channel, q.thread_ts or ts, ts)
        return ts

    def _streams(self, q: Question) -> bool:
        """Stream when an LLM writes the answer and it goes into a thread (`/ask` posts at the top)."""
        settings = self.services.settings
        return settings.slack_streaming and settings.uses_llm and q.thread_ts is not None and not q.header

    def _status(self, channel: str, thread_ts: str, language: str | None) -> None:
        """Best effort: Slack's "is searching…" under the thread (None clears it)."""
        try:
            if language is None:
                self.client.assistant_threads_setStatus(channel_id=channel, thread_ts=thread_ts, status="")
            else:
                status, *loading = _STATUS.get(language, _STATUS["en"])
                self.client.assistant_threads_setStatus(channel_id=channel, thread_ts=thread_ts, status=status,
                                                        loading_messages=loading)
        except SlackApiError as exc:
            log.warning("thread status not set: %s", exc.response.get("error"))

    def _edit(self, channel: str, placeholder_ts: str | None, message: SlackMessage) -> None:
        """Best effort: when Slack itself is failing the retry edits the placeholder instead."""
        if placeholder_ts is None:
            return
        try:
            self.client.chat_update(channel=channel, ts=placeholder_ts, **_payload(message))
        except Exception as exc:
            log.warning("could not edit the placeholder %s: %s", placeholder_ts, exc)
