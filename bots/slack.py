"""The Slack app: thread Q&A, reaction feedback and `/retrain`, as one Bolt `App`.

The same app runs on Lambda (`handlers/slack_events.py`, lazy listeners re-invoke the function) and
in Socket Mode (`bots/slack_socket.py`, lazy listeners run in threads). Every listener acks at once;
the slow work runs in a lazy listener.

Exactly-once answers: Slack retries a delivery it thinks failed (`X-Slack-Retry-Num`), a mention in
a thread arrives as both `app_mention` and `message`, and Lambda retries a failed async invocation.
So an answer is claimed in the blob store under the question's identity (team, channel, message ts —
the same for every retry and for both copies of a thread mention) with a lease: a second attempt
finds the done marker and stops, an attempt that failed releases its claim so the next retry
answers, and an attempt that died without releasing is retaken once its lease runs out (a retry
that finds the claim still held fails with `ClaimHeld`, so Lambda tries again later). The
placeholder's ts is saved too, so a retry edits the same message instead of leaving an orphan
"Looking…" behind, and the answer keeps one id. Thread memory lives in `bots/slack_threads.py`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from slack_bolt import Ack, App, BoltContext, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bots.feedback import record_reaction
from bots.retrain import request_retrain
from bots.slack_render import (
    empty_question_text,
    escape_mrkdwn,
    failure_text,
    notice_blocks,
    placeholder_text,
    render_answer,
    slack_to_plain,
)
from bots.slack_threads import ACCEPTED_SUBTYPES, is_answered_thread, remember_answered_thread, thread_history
from core import idempotency
from core.contracts import FeedbackEvent, NotifyTarget, stable_id
from core.errors import EchoRagError
from core.queue import JobQueue, open_queue
from core.records import hash_user
from core.settings import Settings
from core.store import BlobStore, open_store
from rag.language import detect_language
from rag.types import AgentAnswer, AnswerRef

log = logging.getLogger(__name__)

AskFn = Callable[..., AgentAnswer]  # Agent.ask(question, *, history, spaces, ref)

# Slack errors a retry cannot fix: the attempt ends (claim completed) instead of being retried.
_PERMANENT_ERRORS = frozenset({"not_in_channel", "channel_not_found", "is_archived", "invalid_blocks", "msg_too_long"})
_THANKS = "Thanks for the feedback! · 피드백 고마워요!"

# Failures of lazy work in this invocation: the Lambda handler re-raises them so Lambda's async
# retry runs the work again (Bolt itself only logs an exception raised by a lazy listener).
_lazy_failures: ContextVar[list[BaseException] | None] = ContextVar("slack_lazy_failures", default=None)


@contextmanager
def collect_lazy_failures() -> Iterator[list[BaseException]]:
    """Collects exceptions of lazy listeners run synchronously inside the `with` block."""
    failures: list[BaseException] = []
    token = _lazy_failures.set(failures)
    try:
        yield failures
    finally:
        _lazy_failures.reset(token)


def _report_failure(exc: BaseException) -> None:
    failures = _lazy_failures.get()
    if failures is not None:
        failures.append(exc)


class SlackObserver(Protocol):
    """Where the app reports what it did (the Lambda handler turns these into metrics)."""

    def answered(self, answer: AgentAnswer, seconds: float) -> None: ...

    def feedback(self, event: FeedbackEvent) -> None: ...


class NullObserver:
    def answered(self, answer: AgentAnswer, seconds: float) -> None:
        return None

    def feedback(self, event: FeedbackEvent) -> None:
        return None


class SlackServices:
    """The app's collaborators, each built on first use: the ack path touches only the store, so a
    cold start that only acks never loads Kiwi, Qdrant or the LLM client. Thread-safe: in Socket
    Mode lazy listeners run in a pool, and Qdrant local mode allows a single opener per folder."""

    def __init__(
        self,
        settings: Settings,
        *,
        ask: AskFn | None = None,
        store: BlobStore | None = None,
        queue: JobQueue | None = None,
        observer: SlackObserver | None = None,
    ) -> None:
        self.settings = settings
        self._ask = ask
        self._store = store
        self._queue = queue
        self._agent: Any = None
        self._lock = threading.Lock()
        self.observer: SlackObserver = observer or NullObserver()

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.settings)
        return self._store

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            with self._lock:
                if self._queue is None:
                    self._queue = open_queue(self.settings)
        return self._queue

    @property
    def ask(self) -> AskFn:
        if self._ask is not None:
            return self._ask
        if self._agent is None:
            store = self.store
            with self._lock:
                if self._agent is None:
                    from rag.agent import Agent  # heavy (Kiwi, Qdrant, LangGraph): only answering pays

                    self._agent = Agent.from_settings(self.settings, store=store)
        return self._agent.ask

    def close(self) -> None:
        """Release the agent's retriever (Qdrant local mode allows one opener per folder)."""
        with self._lock:
            agent, self._agent = self._agent, None
        if agent is not None:
            agent.close()

    @property
    def lease_s(self) -> float:
        """How long a question's claim holds: at least the Lambda timeout (120 s), so a live attempt
        is never overtaken, and short enough that Lambda's async retry of an attempt that died (timed
        out, crashed) without releasing its claim retakes it. `SLACK_ANSWER_LEASE_S` overrides it."""
        if self.settings.slack_answer_lease_s is not None:
            return self.settings.slack_answer_lease_s
        return max(120.0, 2 * self.settings.llm_timeout_s + 30)


class ClaimHeld(Exception):
    """Another attempt holds the question's claim and has not finished: it may be working, or it may
    have died without releasing the claim. Reported as a lazy failure so Lambda retries later: by
    then the answer is done (the retry stops) or the lease has run out (the retry answers)."""


def answer_key(team_id: str | None, channel: str, ts: str) -> str:
    """A question's dedup key: the same for every retry and for both copies of a thread mention."""
    return f"slack/{team_id or '-'}/{channel}/{ts}"


def _placeholder_key(dedup_key: str) -> str:
    return f"slack/placeholders/{dedup_key}"


class Answerer:
    """Answers one question in one Slack thread, exactly once (see the module docstring)."""

    def __init__(self, services: SlackServices, client: WebClient, bot_user_id: str | None) -> None:
        self.services = services
        self.client = client
        self.bot_user_id = bot_user_id

    def run(
        self,
        *,
        dedup_key: str,
        channel: str,
        thread_ts: str | None,
        question_ts: str,
        user: str,
        question: str,
        header: str | None = None,
    ) -> None:
        """Post a placeholder (or reuse a retry's), answer, edit the placeholder with the answer.

        `thread_ts` None posts at the top of the channel (the `/ask` command); otherwise the answer
        goes into that thread.
        """
        store = self.services.store
        token = idempotency.claim(store, dedup_key, self.services.lease_s)
        if token is None:
            if idempotency.is_done(store, dedup_key):
                log.info("slack answer %s already done; skipping", dedup_key)
            else:
                log.warning("slack answer %s is claimed by another attempt; a retry will check on it", dedup_key)
                _report_failure(ClaimHeld(dedup_key))
            return
        language = detect_language(question)
        placeholder_ts: str | None = None
        try:
            if not question:
                self.client.chat_postMessage(
                    channel=channel, thread_ts=thread_ts or question_ts, text=empty_question_text(language)
                )
                idempotency.complete(store, dedup_key)
                return
            placeholder_ts = self._placeholder(dedup_key, channel, thread_ts, language, header)
            answer_thread = thread_ts or placeholder_ts
            history = (
                thread_history(
                    self.client,
                    channel=channel,
                    thread_ts=thread_ts,
                    before_ts=question_ts,
                    bot_user_id=self.bot_user_id,
                    skip_ts=[placeholder_ts],
                )
                if thread_ts
                else []
            )
            started = time.perf_counter()
            try:
                answer = self.services.ask(
                    question,
                    history=history,
                    spaces=self.services.settings.spaces_for_channel(channel),
                    ref=AnswerRef(
                        platform="slack",
                        channel=channel,
                        message_id=placeholder_ts,
                        thread_id=answer_thread,
                        user_hash=hash_user("slack", user) if user else "",
                    ),
                )
            except EchoRagError as exc:  # a question the agent refuses: tell the asker, done
                self.client.chat_update(channel=channel, ts=placeholder_ts, **_payload(notice_blocks(escape_mrkdwn(str(exc)))))
                idempotency.complete(store, dedup_key)
                return
            seconds = time.perf_counter() - started
            messages = render_answer(answer, header=header, elapsed_s=seconds)
            self.client.chat_update(channel=channel, ts=placeholder_ts, **_payload(messages[0]))
            for extra in messages[1:]:
                self.client.chat_postMessage(channel=channel, thread_ts=answer_thread, **_payload(extra))
            idempotency.complete(store, dedup_key)
            self.services.observer.answered(answer, seconds)
            log.info(
                "slack answered %s in %.2fs (top score %s, %d sources)",
                dedup_key,
                seconds,
                answer.scores.get("top_score"),
                len(answer.citations),
            )
        except Exception as exc:
            if idempotency.is_done(store, dedup_key):  # our lease ran out and a retry answered: leave it be
                log.warning("slack answer %s failed after another attempt answered it: %r", dedup_key, exc)
                return
            self._tell_failure(channel, placeholder_ts, language)
            if isinstance(exc, SlackApiError) and exc.response.get("error") in _PERMANENT_ERRORS:
                log.error("slack answer %s failed for good: %s", dedup_key, exc.response.get("error"))
                idempotency.complete(store, dedup_key)
            else:
                idempotency.release(store, token)
                _report_failure(exc)
            raise

    def _placeholder(
        self, dedup_key: str, channel: str, thread_ts: str | None, language: str, header: str | None
    ) -> str:
        """The placeholder's ts: the one an earlier attempt posted, or a fresh one (saved at once)."""
        key = _placeholder_key(dedup_key)
        saved = self.services.store.get(key)
        if saved:
            return str(json.loads(saved)["ts"])
        text = placeholder_text(language)
        if header:
            text = f"{header}\n{text}"
        response = self.client.chat_postMessage(channel=channel, thread_ts=thread_ts, **_payload(notice_blocks(text)))
        ts = str(response["ts"])
        self.services.store.put(key, json.dumps({"ts": ts, "channel": channel}).encode())
        # from now on plain replies in this thread are questions too (even while this one runs)
        remember_answered_thread(self.services.store, channel, thread_ts or ts, ts)
        return ts

    def _tell_failure(self, channel: str, placeholder_ts: str | None, language: str) -> None:
        if placeholder_ts is None:
            return
        try:
            self.client.chat_update(channel=channel, ts=placeholder_ts, **_payload(notice_blocks(failure_text(language))))
        except Exception as exc:  # the platform itself is failing; the retry will edit it
            log.warning("could not mark the placeholder %s as failed: %s", placeholder_ts, exc)


def _payload(message: Any) -> dict[str, Any]:
    return {"text": message.text, "blocks": message.blocks}


def _mentions_bot(text: str, bot_user_id: str | None) -> bool:
    return bool(bot_user_id) and f"<@{bot_user_id}>" in text


def create_app(
    settings: Settings,
    *,
    ask: AskFn | None = None,
    store: BlobStore | None = None,
    queue: JobQueue | None = None,
    client: WebClient | None = None,
    observer: SlackObserver | None = None,
    process_before_response: bool = False,
    socket_mode: bool = False,
) -> App:
    """The Bolt app. `ask` defaults to the real agent (built on first question); tests and other
    hosts may inject store, queue and the Web API client. `process_before_response=True` on Lambda."""
    services = SlackServices(settings, ask=ask, store=store, queue=queue, observer=observer)
    if not settings.slack_bot_token:
        raise EchoRagError("SLACK_BOT_TOKEN is not set: create the app from infra/slack/manifest.yaml (docs/slack.md)")
    if not socket_mode and not settings.slack_signing_secret:
        raise EchoRagError("SLACK_SIGNING_SECRET is not set: copy it from the Slack app's Basic Information page")
    app = App(
        name="echorag",  # also spares Bolt an inspect.stack() call at cold start
        token=None if client else settings.slack_bot_token,
        signing_secret=settings.slack_signing_secret or "",
        client=client,
        process_before_response=process_before_response,
        # auth.test runs once on the first request instead of at import: a cheaper cold start
        token_verification_enabled=False,
        request_verification_enabled=not socket_mode,
    )
    if client is None:
        app.client.base_url = settings.slack_api_base_url  # per-request clients copy it
    app.services = services  # type: ignore[attr-defined]  # for hosts and tests

    def ack_now(ack: Ack) -> None:
        ack()

    # --- questions -------------------------------------------------------------------------

    def answer_event(event: dict, body: dict, client: WebClient, context: BoltContext) -> None:
        """An app_mention, a DM or a reply in an answered thread: answer in its thread."""
        channel, ts = str(event.get("channel") or ""), str(event.get("ts") or "")
        if not channel or not ts:
            log.warning("%s without channel/ts ignored: %s", event.get("type"), body.get("event_id"))
            return
        Answerer(services, client, context.bot_user_id).run(
            dedup_key=answer_key(body.get("team_id"), channel, ts),
            channel=channel,
            thread_ts=str(event.get("thread_ts") or ts),
            question_ts=ts,
            user=str(event.get("user", "")),
            question=slack_to_plain(str(event.get("text", "")), context.bot_user_id),
        )

    def is_question(event: dict, context: BoltContext) -> bool:
        """DMs, and replies in a thread the bot answered (mentions there come as app_mention)."""
        if event.get("subtype") not in ACCEPTED_SUBTYPES or event.get("bot_id"):
            return False
        if not event.get("channel") or not event.get("ts") or event.get("user") == context.bot_user_id:
            return False
        if event.get("channel_type") == "im":
            return True
        thread_ts = event.get("thread_ts")
        if not thread_ts or thread_ts == event.get("ts"):
            return False
        if _mentions_bot(str(event.get("text", "")), context.bot_user_id):
            return False  # the app_mention copy answers it
        return is_answered_thread(services.store, str(event["channel"]), str(thread_ts))

    app.event("app_mention")(ack=ack_now, lazy=[answer_event])
    app.event("message", matchers=[is_question])(ack=ack_now, lazy=[answer_event])
    app.event("message")(ack_now)  # every other message: 200 so Slack does not retry it

    # --- reactions -------------------------------------------------------------------------

    def on_bot_message(event: dict, context: BoltContext) -> bool:
        item = event.get("item") or {}
        return (
            isinstance(item, dict)
            and item.get("type") == "message"
            and bool(item.get("channel"))
            and bool(item.get("ts"))
            and bool(event.get("user"))
            and event.get("item_user") in (None, context.bot_user_id)
        )

    def record_feedback(event: dict, client: WebClient) -> None:
        item = event["item"]
        action = "added" if event.get("type") == "reaction_added" else "removed"
        try:
            feedback = record_reaction(
                platform="slack",
                channel=str(item["channel"]),
                message_id=str(item["ts"]),
                user_id=str(event["user"]),
                reaction=str(event.get("reaction", "")),  # feedback normalises skin tones and aliases
                action=action,
                event_ts=str(event.get("event_ts", "")),
                settings=settings,
                store=services.store,
                queue=services.queue,
            )
        except Exception as exc:
            _report_failure(exc)  # Lambda retries the invocation; the feedback id stays the same
            raise
        if feedback is None:
            return
        services.observer.feedback(feedback)
        if settings.slack_reaction_thanks and action == "added":
            try:
                client.chat_postEphemeral(channel=str(item["channel"]), user=str(event["user"]), text=_THANKS)
            except SlackApiError as exc:
                log.warning("ephemeral thanks failed: %s", exc.response.get("error"))

    for reaction_event in ("reaction_added", "reaction_removed"):
        app.event(reaction_event, matchers=[on_bot_message])(ack=ack_now, lazy=[record_feedback])
        app.event(reaction_event)(ack_now)

    # --- slash commands --------------------------------------------------------------------

    def ask_command(command: dict, client: WebClient, context: BoltContext, respond: Respond) -> None:
        channel, user = str(command.get("channel_id", "")), str(command.get("user_id", ""))
        question = slack_to_plain(str(command.get("text", "")), context.bot_user_id)
        if not question:
            respond(response_type="ephemeral", text="Usage: `/ask <question>` · 사용법: `/ask <질문>`")
            return
        header = f"<@{user}>: _{escape_mrkdwn(question[:500])}_"  # cut before escaping: no half "&amp;"
        try:
            Answerer(services, client, context.bot_user_id).run(
                dedup_key=f"slack/{command.get('team_id', '-')}/cmd/{command.get('trigger_id') or stable_id(user, question)}",
                channel=channel,
                thread_ts=None,
                question_ts="",
                user=user,
                question=question,
                header=header,
            )
        except SlackApiError as exc:
            if exc.response.get("error") in ("not_in_channel", "channel_not_found"):
                respond(
                    response_type="ephemeral",
                    text="I can't post here yet: invite me with `/invite @EchoRAG` (or ask me in a DM).",
                )
                return
            raise

    def retrain_command(command: dict, respond: Respond) -> None:
        user, channel = str(command.get("user_id", "")), str(command.get("channel_id", ""))
        try:
            outcome = request_retrain(
                requested_by=f"slack:{user}",
                notify_targets=[NotifyTarget(platform="slack", channel=channel)],
                reason=str(command.get("text", "")).strip() or "requested with /retrain in Slack",
                settings=settings,
                store=services.store,
                queue=services.queue,
            )
        except EchoRagError as exc:  # the store or queue failed after its retries: say so, plainly
            log.error("/retrain by %s failed: %s", user, exc)
            respond(response_type="ephemeral", text=escape_mrkdwn(f"Could not queue the retrain: {exc}"))
            return
        if outcome.status == "queued":
            respond(response_type="in_channel", text=escape_mrkdwn(outcome.message))
        else:
            respond(response_type="ephemeral", text=escape_mrkdwn(outcome.message))

    app.command("/ask")(ack=ack_now, lazy=[ask_command])
    app.command("/retrain")(ack=ack_now, lazy=[retrain_command])
    return app
