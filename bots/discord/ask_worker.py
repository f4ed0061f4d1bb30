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
from core.contracts import AskJob
from core.errors import PermanentError, UserError
from core.idempotency import once
from core.records import hash_user
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
        conversation.remember(runtime.store, answer.answer_id, history, job.question, answer.text)
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
