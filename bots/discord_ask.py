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

from bots.discord import render_answer, render_notice
from bots.discord_interactions import AskJob
from bots.discord_rest import DiscordApiError
from bots.discord_runtime import DiscordRuntime
from core.errors import EchoRagError, QueueError, StoreError
from core.idempotency import claim, complete, release
from core.records import hash_user
from rag.types import AgentAnswer, AnswerRef

log = logging.getLogger(__name__)

ASK_LEASE_S = 300.0  # the gateway's claim: longer than any answer takes
OPEN_WAITS_S = (0.2, 0.4, 0.8)  # waits for Discord to open the deferred message (404 until then)


@dataclass(frozen=True)
class AskOutcome:
    """What one delivery of an ask job did."""

    status: Literal["answered", "rejected", "duplicate", "undeliverable"]
    answer: AgentAnswer | None = None
    message_id: str | None = None
    elapsed_ms: float = 0.0


def claim_key(job: AskJob) -> str:
    return f"idempotency/discord/ask/{job.interaction_id}"


def answer_ask(
    job: AskJob, runtime: DiscordRuntime, *, last_attempt: bool = False, lease_s: float = ASK_LEASE_S
) -> AskOutcome:
    """Answer one ask job at most once. Raises on retryable failures (store, queue, Discord 5xx)
    so the queue redelivers; on the last attempt the user is told it failed before re-raising.
    A failed attempt gives its claim back; one that dies (timeout, crash) cannot, so `lease_s` must
    cover this attempt's whole life and end before the job can be redelivered: on Lambda, the
    invocation's remaining time (the ask queue's visibility timeout is longer)."""
    key = claim_key(job)
    token = claim(runtime.store, key, lease_s)
    if token is None:
        log.info("ask interaction %s already answered or in progress; skipped", job.interaction_id)
        return AskOutcome("duplicate")
    started = time.perf_counter()
    try:
        outcome = _answer(job, runtime)
    except DiscordApiError as exc:
        if exc.retryable:
            _fail_attempt(job, runtime, last_attempt, token)
            raise
        # 4xx: the interaction token expired (15 min) or the message is gone. Nothing can fix it.
        log.error("ask interaction %s cannot be answered any more: %s", job.interaction_id, exc)
        outcome = AskOutcome("undeliverable")
    except Exception:
        _fail_attempt(job, runtime, last_attempt, token)
        raise
    complete(runtime.store, key)
    elapsed = (time.perf_counter() - started) * 1000
    return AskOutcome(outcome.status, outcome.answer, outcome.message_id, elapsed)


def _answer(job: AskJob, runtime: DiscordRuntime) -> AskOutcome:
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
        answer = runtime.agent.ask(job.question, spaces=runtime.settings.spaces_for_channel(channel), ref=ref)
    except (StoreError, QueueError):
        raise  # transient: let the queue redeliver
    except EchoRagError as exc:  # the question itself cannot be answered (e.g. empty): say so
        log.warning("ask interaction %s rejected: %s", job.interaction_id, exc)
        rest.edit_original(job.application_id, job.token, render_notice(f"⚠️ {exc}"))
        return AskOutcome("rejected", message_id=message_id)
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


def _fail_attempt(job: AskJob, runtime: DiscordRuntime, last_attempt: bool, token: str) -> None:
    """A retryable failure: on the final delivery replace "thinking…" with an apology instead of
    leaving it spinning; and give the claim back so the next delivery retakes it at once."""
    if last_attempt:
        _tell_failure(job, runtime)
    try:
        release(runtime.store, token)
    except StoreError as exc:  # the lease still lapses by itself
        log.warning("could not release the claim on interaction %s: %s", job.interaction_id, exc)


def _tell_failure(job: AskJob, runtime: DiscordRuntime) -> None:
    korean = job.locale.startswith("ko")
    text = (
        "⚠️ 답변을 만들지 못했습니다. 잠시 후 다시 시도해 주세요."
        if korean
        else "⚠️ Sorry, I could not answer this time. Please try again in a moment."
    )
    try:
        runtime.rest.edit_original(job.application_id, job.token, render_notice(text))
    except DiscordApiError as exc:
        log.warning("could not tell interaction %s about the failure: %s", job.interaction_id, exc)
