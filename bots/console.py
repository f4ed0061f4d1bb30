"""The console chat adapter (`echorag chat`): the same agent and feedback loop as Slack and Discord.

One console session is one thread: earlier turns are passed to the agent, so follow-ups work. Every
answer is recorded (platform "console") so a reaction typed after it — `+1`, `-1`, 👍, `:thumbsup:`
— becomes a feedback event exactly as a Slack reaction would, and `/retrain` asks for a training
job as the local admin. Lines may come from a pipe, so a conversation can be scripted.

The worker cannot post into a terminal (`bots.notify` only logs a console target), so the session
keeps its own promise "I'll post the result when it finishes": it remembers the jobs it queued and
prints each one's outcome once, before the next prompt after the job ended (an empty line checks).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from core.contracts import TERMINAL_STATES, JobStatus, Platform
from core.errors import EchoRagError
from core.records import hash_user
from core.settings import Settings
from rag.types import AgentAnswer, AnswerRef, Turn

if TYPE_CHECKING:
    from core.queue import JobQueue
    from core.store import BlobStore
    from rag.agent import Agent

log = logging.getLogger(__name__)

PLATFORM: Platform = "console"
CHANNEL = "console"
_SHORTCODE = re.compile(r"^:[a-z0-9_+\-]+:(:skin-tone-\d:)?$")
# What an emoji typed as characters is made of: symbols, skin tones, variation selectors, ZWJ.
_EMOJI_CATEGORIES = frozenset({"So", "Sk", "Mn", "Cf"})
MAX_TURNS = 10  # earlier turns handed to the agent (5 exchanges)

HELP = (
    "Ask a question, or: +1 / -1 / 👍 / 👎 / :emoji: react to the last answer · /retrain [force] [reason] "
    "· /why REASON [details] after a -1 (wrong, outdated, not_in_docs, incomplete, other) "
    "· /new start a new thread · /help · /quit · an empty line checks on a queued retrain"
)
_JOB_HEADS = {
    "published": "✅ Retraining done (job {job}): adapter v{version} is now live.",
    "rejected": "⛔ Retraining finished (job {job}), but the new adapter was not published.",
    "failed": "❌ Retraining failed (job {job}).",
}


def reaction_name(line: str) -> str | None:
    """The reaction a line expresses (`+1`, `-1`, `:name:`, or only emoji such as 👍🏽), or None for a
    question. The reaction is returned as typed: `core.feedback` normalises it exactly as it does a
    Slack or Discord reaction, so the console accepts every spelling the settings' emoji maps do."""
    text = line.strip()
    if text in ("+1", "-1") or _SHORTCODE.match(text):
        return text
    categories = {unicodedata.category(ch) for ch in text}
    if "So" in categories and categories <= _EMOJI_CATEGORIES:
        return text
    return None


def render_job_result(status: JobStatus) -> str:
    """A finished job in plain words: the outcome, then the worker's summary and error."""
    head = _JOB_HEADS.get(status.state, "⏳ Retraining is {state} (job {job}).")
    lines = [head.format(job=status.job_id[:8], version=status.adapter_version, state=status.state)]
    if status.message:
        lines.append(status.message)
    if status.error:
        lines.append(f"Error: {status.error}")
    return "\n".join(lines)


def render_answer(answer: AgentAnswer) -> str:
    """The answer text, then its numbered sources (title — source, location)."""
    lines = [answer.text]
    if answer.citations:
        lines.append("")
        lines.append("출처:" if answer.language == "ko" else "Sources:")
        for c in answer.citations:
            where = ", ".join(part for part in (c.source, c.location) if part)
            where += f" <{c.url}>" if c.url and c.url != c.source else ""
            lines.append(f"  [{c.n}] {c.title}" + (f" — {where}" if where else ""))
    return "\n".join(lines)


@dataclass
class ConsoleChat:
    """A console conversation: reads lines, answers, records reactions and retrain requests."""

    agent: Agent
    settings: Settings
    store: BlobStore
    queue: JobQueue | None = None
    user: str = "local"
    spaces: list[str] | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    history: list[Turn] = field(default_factory=list)
    last_message_id: str | None = None
    watched_jobs: list[str] = field(default_factory=list)  # queued here, result not printed yet
    _answers: int = 0

    def _print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _queue(self) -> JobQueue:
        if self.queue is None:
            from core.queue import open_queue

            self.queue = open_queue(self.settings)
        return self.queue

    def ask(self, question: str) -> AgentAnswer:
        self._answers += 1
        message_id = f"{self.session}-{self._answers}"
        ref = AnswerRef(
            platform=PLATFORM,
            channel=CHANNEL,
            message_id=message_id,
            thread_id=self.session,
            user_hash=hash_user(PLATFORM, self.user),
        )
        # nothing retries a console question: an LLM outage is answered from the documents at once
        answer = self.agent.ask(question, history=self.history[-MAX_TURNS:], spaces=self.spaces, ref=ref,
                                llm_fallback=True)
        self.history.extend([Turn("user", question), Turn("assistant", answer.text)])
        self.last_message_id = message_id
        return answer

    def react(self, reaction: str) -> str:
        if self.last_message_id is None:
            return "Nothing to react to yet: ask a question first."
        from core.feedback import normalize_emoji, record_reaction

        event = record_reaction(
            platform=PLATFORM,
            channel=CHANNEL,
            message_id=self.last_message_id,
            user_id=self.user,
            reaction=reaction,
            action="added",
            event_ts=f"{time.time():.6f}",
            settings=self.settings,
            store=self.store,
            queue=self._queue(),
        )
        if event is None:
            known = ", ".join([*self.settings.positive_emoji, *self.settings.negative_emoji])
            return f"'{normalize_emoji(reaction)}' is not a feedback reaction (use one of: {known})."
        if event.label > 0:
            return "Feedback recorded (+1 for the last answer)."
        return ("Feedback recorded (-1 for the last answer). What was wrong? Optional: "
                "/why wrong|outdated|not_in_docs|incomplete|other [details]")

    def explain(self, text: str) -> str:
        """`/why REASON [details]`: what was wrong with the last answer this person voted -1."""
        if self.last_message_id is None:
            return "Nothing to explain yet: ask a question and react -1 first."
        from core.errors import PermanentError
        from core.feedback import parse_reason, record_reason

        code, _, details = text.partition(" ")
        try:
            event = record_reason(
                platform=PLATFORM,
                channel=CHANNEL,
                message_id=self.last_message_id,
                user_id=self.user,
                reason=parse_reason(code),
                text=details,
                event_ts=f"{time.time():.6f}",
                store=self.store,
            )
        except PermanentError as exc:
            return str(exc)
        return f"Thanks: recorded '{event.reason}' for the last answer."

    def retrain(self, text: str) -> str:
        """`/retrain [force] [reason]` as the local admin; a queued job is watched for its result."""
        from core.retrain import default_notify_targets, request_retrain, split_force

        force, reason = split_force(text)
        outcome = request_retrain(
            requested_by=f"{PLATFORM}:{self.user}",
            is_admin=True,  # whoever runs the local console owns this machine's data
            notify_targets=default_notify_targets(self.settings, PLATFORM, CHANNEL),
            reason=reason or "requested from the console",
            settings=self.settings,
            store=self.store,
            queue=self._queue(),
            force=force,
            force_hint="/retrain force",
        )
        if outcome.status == "queued" and outcome.job_id is not None:
            self.watched_jobs.append(outcome.job_id)
        return outcome.message

    def finished_jobs(self) -> list[str]:
        """The results of watched jobs that have ended since the last call, each reported once.

        One small read per watched job; a store that cannot be read now is tried again next time
        rather than ending the chat."""
        from core import jobs

        results = []
        for job_id in list(self.watched_jobs):
            try:
                status = jobs.load_job_status(self.store, job_id)
            except EchoRagError as exc:
                log.warning("could not check retrain job %s: %s", job_id, exc)
                continue
            if status is not None and status.state in TERMINAL_STATES:
                self.watched_jobs.remove(job_id)
                results.append(render_job_result(status))
        return results

    def report_finished_jobs(self) -> None:
        for text in self.finished_jobs():
            self._print(text)
            self._print()

    def handle(self, line: str) -> bool:
        """Process one input line; False when the session should end."""
        text = line.strip()
        if not text:
            return True
        if text in ("/quit", "/exit"):
            return False
        if text == "/help":
            self._print(HELP)
        elif text == "/new":
            self.history.clear()
            self.last_message_id = None
            self._print("New thread.")
        elif text == "/retrain" or text.startswith("/retrain "):
            self._print(self.retrain(text[len("/retrain") :].strip()))
        elif text == "/why" or text.startswith("/why "):
            self._print(self.explain(text[len("/why") :].strip()))
        elif text.startswith("/"):
            self._print(f"Unknown command {text.split()[0]}. {HELP}")
        elif (reaction := reaction_name(text)) is not None:
            self._print(self.react(reaction))
        else:
            try:
                answer = self.ask(text)
            except EchoRagError as exc:
                self._print(f"error: {exc}")
                return True
            self._print(render_answer(answer))
        self._print()
        return True

    def run(self, lines: Iterable[str], *, interactive: bool = False) -> int:
        if interactive:
            self._print(HELP)
        self.report_finished_jobs()
        for line in lines:
            if not self.handle(line):
                break
            self.report_finished_jobs()  # before the next prompt: the iterator prompts on its next step
        return 0


def prompt_lines(stream: TextIO) -> Iterable[str]:
    """Lines from a terminal (with a prompt) or from a pipe (without one)."""
    if stream.isatty():
        while True:
            try:
                yield input("> ")
            except EOFError:
                return
    else:
        yield from stream


def answer_json(answer: AgentAnswer) -> dict[str, Any]:
    """The answer as plain JSON-able data (for `echorag ask --json`)."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(answer), ensure_ascii=False))
