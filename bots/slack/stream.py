"""An LLM's answer streamed into its Slack thread with the SDK's `chat_stream` helper.

The stream's message is the answer's placeholder: the answerer saves its ts under the question's
claim before any text is streamed, so a retry or a lazy re-invocation edits that message
(`chat.update`) and never starts a second stream for one question. The first call carries a task
card ("Searching the documents…"), so the message and its progress show at once; text follows in
appends of `SLACK_STREAM_BUFFER` characters (Slack rate-limits `chat.appendStream`; the Web
client's 429 handler waits out a refusal); the sources, the context line and the feedback buttons
come with `chat.stopStream`. A stream stops with some text, so one that showed nothing yet
stops with the answer or the notice that replaces it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.models.messages.chunk import TaskUpdateChunk
from slack_sdk.web.chat_stream import ChatStream

from bots.slack.render import neutralise_mentions

log = logging.getLogger(__name__)

_TASK = {"ko": "문서를 찾는 중…", "en": "Searching the documents…"}
_TASK_ID = "search"
# the end of a text that may still become a mention: "<", "<!", "@chan"
_OPEN_MENTION = re.compile(r"(?:<|@\w{0,8})$")


@dataclass
class MentionGuard:
    """`neutralise_mentions` on a text that arrives in pieces: a mention cut between two pieces is
    held back until it is complete, so none slips through the seam."""

    raw: str = ""
    shown: str = ""

    def feed(self, piece: str) -> str:
        self.raw += piece
        match = _OPEN_MENTION.search(self.raw)
        return self._advance(self.raw[: match.start()] if match else self.raw)

    def flush(self) -> str:
        return self._advance(self.raw)

    def _advance(self, text: str) -> str:
        safe = neutralise_mentions(text)
        delta, self.shown = safe[len(self.shown):], safe
        return delta


@dataclass
class AnswerStream:
    """One streamed answer: started at once (with the task card), written to, finished once."""

    stream: ChatStream
    language: str
    ts: str
    guard: MentionGuard = field(default_factory=MentionGuard)
    finished: bool = False
    _searching: bool = True

    @classmethod
    def start(cls, client: WebClient, *, channel: str, thread_ts: str, team: str, user: str,
              language: str, buffer_size: int) -> AnswerStream:
        """Start the stream; its message exists (and has a ts) when this returns."""
        stream = client.chat_stream(
            channel=channel, thread_ts=thread_ts, buffer_size=buffer_size,
            # required outside DMs: whose stream it is
            recipient_team_id=team or None, recipient_user_id=user or None,
        )
        stream.append(chunks=[_task(language, "in_progress")])  # chunks flush at once: startStream
        if not stream.ts:
            raise SlackRequestError("chat.startStream returned no ts")
        return cls(stream=stream, language=language, ts=stream.ts)

    def write(self, text: str) -> None:
        """More of the answer (the agent's `on_text`)."""
        if self._searching:  # the documents are found: the answer is being written
            self._searching = False
            self.stream.append(chunks=[_task(self.language, "complete")])
        shown = self.guard.feed(text)
        if shown:
            self.stream.append(markdown_text=shown)

    def fits(self, answer: str) -> bool:
        """Whether the stored `answer` goes on from what was streamed (it may add to it)."""
        return answer.startswith(self.guard.raw.strip())

    def finish(self, answer: str, blocks: list[dict[str, Any]]) -> None:
        """Stop the stream with the rest of `answer` (see `fits`) and `blocks` under the text."""
        rest = self.guard.feed(answer[len(self.guard.raw.strip()):]) + self.guard.flush()
        self._stop(rest, blocks)

    def stop(self, notice: str) -> None:
        """Stop the stream as it is, so the message can be edited; with `notice` as its text when
        nothing was shown yet (a stream stops with some text)."""
        self._stop(self.guard.flush() or ("" if self.guard.shown else notice), [])

    def abandon(self, notice: str) -> None:
        """Best effort, on a failure: `stop`, unless it has stopped."""
        if self.finished:
            return
        try:
            self.stop(notice)
        except (SlackApiError, SlackRequestError, OSError) as exc:
            log.warning("could not stop the answer stream %s: %s", self.ts, exc)

    def _stop(self, text: str, blocks: list[dict[str, Any]]) -> None:
        self.finished = True
        self.stream.stop(markdown_text=text or None, blocks=blocks or None)


def _task(language: str, status: str) -> TaskUpdateChunk:
    return TaskUpdateChunk(id=_TASK_ID, title=_TASK.get(language, _TASK["en"]), status=status)
