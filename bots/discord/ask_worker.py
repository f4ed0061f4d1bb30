"""The slow half of Discord's `/ask`: run the agent and edit the deferred response.

Runs once per interaction however often the job is delivered (SQS standard queues deliver at least
once; Discord may resend): a durable claim keyed by the interaction id, given back when an attempt
fails and leased so a claim whose attempt died can be retaken, and a `done` marker after the edit.

The answer record is keyed by the id of the message the user sees: the deferred response's
message (fetched with GET …/messages/@original before the agent runs). Gateway reactions carry
that message id, and the 👍/👎 buttons carry the answer id derived from it, so both join the answer.

Discord answers 404 on the interaction webhook until it has processed our type-5 callback (a warm
worker can get the job first) and 401 once the 15-minute token has expired; so a 404 on that first
GET is waited out briefly, and any 4xx after that is final.

`answer_in_thread` is the gateway's other slow half: a reply in the thread of one of the bot's
answers, answered in that thread with the conversation so far. There is no deferred message, so a
"💭 …" reply is posted first (its id is saved, so a retry edits the same one) and edited into the
answer; the answer record is keyed by that reply's id, as reactions and buttons on it expect.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from bots.discord import conversation
from bots.discord.render import render_answer, render_notice
from bots.discord.rest import DiscordApiError, DiscordRejected
from bots.discord.runtime import DiscordRuntime
from core.contracts import AskJob, make_answer_id
from core.errors import PermanentError, UserError
from core.idempotency import once
from core.records import hash_user, load_answer
from rag.language import detect_language
from rag.types import AgentAnswer, AnswerRef

log = logging.getLogger(__name__)

ASK_LEASE_S = 300.0  # the gateway's claim: longer than any answer takes
OPEN_WAITS_S = (0.2, 0.4, 0.8)  # waits for Discord to open the deferred message (404 until then)
_FAILED = {
    "ko": "⚠️ 답변을 만들지 못했습니다. 잠시 후 다시 시도해 주세요.",
    "en": "⚠️ Sorry, I could not answer this time. Please try again in a moment.",
}


@dataclass(frozen=True)
class AskOutcome:
    """What one delivery of an ask job did."""

    status: Literal["answered", "rejected", "duplicate", "undeliverable", "failed"]
    answer: AgentAnswer | None = None
    message_id: str | None = None
    elapsed_ms: float = 0.0


def claim_key(job: AskJob) -> str:
    return f"discord/ask/{job.interaction_id}"


def answer_ask(
    job: AskJob, runtime: DiscordRuntime, *, last_attempt: bool = False, lease_s: float = ASK_LEASE_S
) -> AskOutcome:
    """Answer one ask job at most once (see `core.errors` for what each failure does).

    Transient failures (store, queue, LLM, Discord 5xx) raise so the queue redelivers; on the last
    attempt the user is told it failed first. A question the agent refuses is shown; a Discord 4xx
    (the 15-minute token expired) or another permanent failure finishes the job. `lease_s` must
    cover this attempt's whole life and end before the job can be redelivered: on Lambda, the
    invocation's remaining time (the ask queue's visibility timeout is longer)."""
    started = time.perf_counter()
    with once(runtime.store, claim_key(job), lease_s=lease_s) as claim:
        if claim.state != "run":
            log.info("ask interaction %s already answered or in progress; skipped", job.interaction_id)
            return AskOutcome("duplicate")
        try:
            outcome = _answer(job, runtime, last_attempt=last_attempt)
        except DiscordRejected as exc:
            log.error("ask interaction %s cannot be answered any more: %s", job.interaction_id, exc)
            return AskOutcome("undeliverable")
        except PermanentError as exc:
            log.error("ask interaction %s failed for good: %s", job.interaction_id, exc)
            _tell_failure(job, runtime)
            return AskOutcome("failed")
        except Exception:
            if last_attempt:  # replace "thinking…" with an apology instead of leaving it spinning
                _tell_failure(job, runtime)
            raise
    elapsed = (time.perf_counter() - started) * 1000
    return AskOutcome(outcome.status, outcome.answer, outcome.message_id, elapsed)


def _answer(job: AskJob, runtime: DiscordRuntime, *, last_attempt: bool) -> AskOutcome:
    rest = runtime.rest
    original = _deferred_message(job, runtime)
    message_id = str(original["id"])
    channel = str(original.get("channel_id") or job.channel_id)
    ref = AnswerRef(
        platform="discord",
        channel=channel,
        message_id=message_id,
        thread_id=f"{job.guild_id}:{channel}",
        user_hash=hash_user("discord", job.user_id),
    )
    try:
        spaces = runtime.settings.spaces_for_channel(job.space_channel_id or channel)
        history = conversation.turns_before(runtime.store, job.follow_up_of) if job.follow_up_of else []
        # the last attempt quotes the documents when the LLM is down, rather than apologising
        answer = runtime.agent.ask(job.question, history=history, spaces=spaces, ref=ref, llm_fallback=last_attempt)
    except UserError as exc:  # the question itself cannot be answered (e.g. too long): say so
        log.warning("ask interaction %s rejected: %s", job.interaction_id, exc)
        rest.edit_original(job.application_id, job.token, render_notice(f"⚠️ {exc}"))
        return AskOutcome("rejected", message_id=message_id)
    if answer.answer_id:  # before the edit: a follow-up asked from the message finds it
        in_thread = job.space_channel_id not in ("", channel)  # a thread's parent names its spaces
        conversation.remember(runtime.store, answer.answer_id, history, job.question, answer.text,
                              thread_id=channel if in_thread else "")
    edited = rest.edit_original(job.application_id, job.token, render_answer(answer, answer_id=answer.answer_id))
    if edited and str(edited.get("id")) != message_id:  # Discord keeps the id on edit; say so if not
        log.error("edited message id %s differs from @original %s", edited.get("id"), message_id)
    log.info(
        "answered ask interaction %s as message %s (answer %s)",
        job.interaction_id,
        message_id,
        answer.answer_id,
    )
    return AskOutcome("answered", answer=answer, message_id=message_id)


def _deferred_message(job: AskJob, runtime: DiscordRuntime) -> dict[str, Any]:
    """GET …/messages/@original, waiting briefly while Discord has not opened it yet (404)."""
    for wait_s in OPEN_WAITS_S:
        try:
            return runtime.rest.get_original(job.application_id, job.token)
        except DiscordApiError as exc:
            if exc.status != 404:
                raise
            log.info("reply to interaction %s not open yet; retrying in %.1fs", job.interaction_id, wait_s)
            time.sleep(wait_s)
    return runtime.rest.get_original(job.application_id, job.token)


def _tell_failure(job: AskJob, runtime: DiscordRuntime) -> None:
    text = _FAILED["ko" if job.locale.startswith("ko") else "en"]
    try:
        runtime.rest.edit_original(job.application_id, job.token, render_notice(text))
    except DiscordApiError as exc:
        log.warning("could not tell interaction %s about the failure: %s", job.interaction_id, exc)


# --- replies in an answer's thread (the gateway process) ---------------------------------------------

THREAD_REPLIES = "discord/thread-replies/"  # + message id: the id of the reply that answers it
THINKING = "💭 …"


@dataclass(frozen=True)
class ThreadQuestion:
    """A message posted in a thread that may belong to one of the bot's answers (MESSAGE_CREATE)."""

    message_id: str
    thread_id: str
    parent_id: str  # the thread's channel: its knowledge spaces, and where a starter answer lives
    guild_id: str
    user_id: str
    question: str
    bot_thread: bool = False  # the bot created the thread itself


def thread_claim_key(question: ThreadQuestion) -> str:
    return f"discord/thread/{question.message_id}"


def _starter_answer(question: ThreadQuestion) -> str:
    """The answer a thread was started from: a thread started from a message has that message's id."""
    return make_answer_id("discord", question.parent_id, question.thread_id)


def is_answer_thread(question: ThreadQuestion, runtime: DiscordRuntime) -> bool:
    """Whether the question's thread is the bot's: started from one of its answers, or its own."""
    return question.bot_thread or load_answer(runtime.store, _starter_answer(question)) is not None


def answer_in_thread(
    question: ThreadQuestion, runtime: DiscordRuntime, *, last_attempt: bool = False, lease_s: float = ASK_LEASE_S
) -> AskOutcome:
    """Answer a reply in one of the bot's threads (`is_answer_thread`) at most once, in that thread,
    continuing the thread's conversation. Failures as `answer_ask`: any but a permanent one raises
    for the caller to retry (the claim is given back, the saved reply reused); the last attempt
    tells the user first, never the error."""
    store = runtime.store
    starter = _starter_answer(question)
    started = time.perf_counter()
    with once(store, thread_claim_key(question), lease_s=lease_s) as claim:
        if claim.state != "run":
            log.info("thread message %s already answered or in progress; skipped", question.message_id)
            return AskOutcome("duplicate")
        reply_id: str | None = None
        try:
            reply_id = _thread_reply(question, runtime)
            outcome = _answer_thread(question, runtime, reply_id, starter, last_attempt=last_attempt)
        except DiscordRejected as exc:  # the thread was deleted or locked, or we may not post there
            log.error("thread message %s cannot be answered: %s", question.message_id, exc)
            return AskOutcome("undeliverable")
        except PermanentError as exc:
            log.error("thread message %s failed for good: %s", question.message_id, exc)
            _tell_thread_failure(question, runtime, reply_id)
            return AskOutcome("failed")
        except Exception:
            if last_attempt:
                _tell_thread_failure(question, runtime, reply_id)
            raise
    return AskOutcome(outcome.status, outcome.answer, outcome.message_id, (time.perf_counter() - started) * 1000)


def _thread_reply(question: ThreadQuestion, runtime: DiscordRuntime) -> str:
    """The id of the reply that will carry the answer: posted once, as a reply to the question."""
    key = THREAD_REPLIES + question.message_id
    if (saved := runtime.store.get(key)) is not None:
        return saved.decode()
    payload = {**render_notice(THINKING),
               "message_reference": {"message_id": question.message_id, "fail_if_not_exists": False}}
    reply_id = str(runtime.rest.create_message(question.thread_id, payload)["id"])
    runtime.store.put(key, reply_id.encode())
    return reply_id


def _answer_thread(
    question: ThreadQuestion, runtime: DiscordRuntime, reply_id: str, starter: str, *, last_attempt: bool
) -> AskOutcome:
    store, thread = runtime.store, question.thread_id
    ref = AnswerRef(platform="discord", channel=thread, message_id=reply_id,
                    thread_id=f"{question.guild_id}:{thread}", user_hash=hash_user("discord", question.user_id))
    history = conversation.turns_before(store, conversation.thread_answer(store, thread) or starter)
    try:
        answer = runtime.agent.ask(question.question, history=history, ref=ref, llm_fallback=last_attempt,
                                   spaces=runtime.settings.spaces_for_channel(question.parent_id))
    except UserError as exc:
        log.warning("thread message %s rejected: %s", question.message_id, exc)
        runtime.rest.edit_message(thread, reply_id, render_notice(f"⚠️ {exc}"))
        return AskOutcome("rejected", message_id=reply_id)
    if answer.answer_id:
        conversation.remember(store, answer.answer_id, history, question.question, answer.text, thread_id=thread)
    runtime.rest.edit_message(thread, reply_id, render_answer(answer, answer_id=answer.answer_id))
    log.info("answered thread message %s as message %s (answer %s)", question.message_id, reply_id, answer.answer_id)
    return AskOutcome("answered", answer=answer, message_id=reply_id)


def _tell_thread_failure(question: ThreadQuestion, runtime: DiscordRuntime, reply_id: str | None) -> None:
    if reply_id is None:  # nothing was posted (Discord itself is down): nothing to edit
        return
    try:
        runtime.rest.edit_message(question.thread_id, reply_id, render_notice(_FAILED[detect_language(question.question)]))
    except DiscordApiError as exc:
        log.warning("could not tell thread message %s about the failure: %s", question.message_id, exc)
