"""The Slack app: thread Q&A, reaction feedback and `/retrain`, as one Bolt `App`.

The same app runs on Lambda (`handlers/slack_events.py`, lazy listeners re-invoke the function) and
in Socket Mode (`bots/slack_socket.py`, lazy listeners run in threads). Every listener acks at once;
the slow work runs in a lazy listener.

Exactly-once answers: Slack retries a delivery it thinks failed (`X-Slack-Retry-Num`), a mention in
a thread arrives as both `app_mention` and `message`, and Lambda retries a failed async invocation.
So an answer is claimed in the blob store under the question's identity (team, channel, message ts —
the same for every retry and for both copies of a thread mention) with a lease: a second attempt
finds the claim (or its done marker) and stops, and an attempt that failed releases its claim so
the next retry answers. The placeholder's ts is saved too, so a retry edits the same message
instead of leaving an orphan "Looking…" behind, and the answer keeps one id.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
    transient_texts,
)
from core import idempotency
from core.contracts import FeedbackEvent, NotifyTarget, stable_id
from core.errors import EchoRagError
from core.queue import JobQueue, open_queue
from core.records import hash_user
from core.settings import Settings
from core.store import BlobStore, open_store
from rag.language import detect_language
from rag.types import AgentAnswer, AnswerRef, Turn

log = logging.getLogger(__name__)

AskFn = Callable[..., AgentAnswer]  # Agent.ask(question, *, history, spaces, ref)

HISTORY_TURNS = 12  # earlier thread messages handed to the agent as memory
_ACCEPTED_SUBTYPES = (None, "thread_broadcast", "file_share")
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
    def lease_s(self) -> int:
        """Long enough for a slow LLM call; short enough that Slack's 5-minute retry can retake a
        claim whose holder died without releasing it."""
        return int(max(120.0, 2 * self.settings.llm_timeout_s + 30))


def _ts_key(ts: str) -> tuple[int, int]:
    """Slack ts ("1700000000.000100") as an exact sortable value (a float loses the last digits)."""
    seconds, _, micros = ts.partition(".")
    try:
        return int(seconds), int(micros or 0)
    except ValueError:
        return (0, 0)


def _thread_key(channel: str, thread_ts: str) -> str:
    return f"slack/threads/{channel}/{thread_ts}"


def _placeholder_key(dedup_key: str) -> str:
    return f"slack/placeholders/{dedup_key}"


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
    try:
        response = client.conversations_replies(channel=channel, ts=thread_ts, limit=200)
    except SlackApiError as exc:
        log.warning("conversations.replies failed for %s/%s: %s", channel, thread_ts, exc.response.get("error"))
        return []
    skipped = set(skip_ts)
    turns: list[Turn] = []
    for message in response.get("messages", []):
        ts = str(message.get("ts", ""))
        if ts in skipped or _ts_key(ts) >= _ts_key(before_ts):
            continue
        if message.get("subtype") not in (*_ACCEPTED_SUBTYPES, "bot_message"):
            continue
        is_bot = bool(bot_user_id) and message.get("user") == bot_user_id
        text = str(message.get("text") or "")
        if is_bot and text.strip() in transient_texts():
            continue
        plain = slack_to_plain(text, bot_user_id)
        if not plain:
            continue
        role = "assistant" if is_bot else "user"
        if turns and turns[-1].role == role:  # one answer split over messages is one turn
            turns[-1] = Turn(role=role, text=f"{turns[-1].text}\n\n{plain}")
        else:
            turns.append(Turn(role=role, text=plain))
    return turns[-limit:]


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
        if not idempotency.claim(store, dedup_key, self.services.lease_s):
            log.info("slack answer %s already done or in progress; skipping", dedup_key)
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
            self._tell_failure(channel, placeholder_ts, language)
            if isinstance(exc, SlackApiError) and exc.response.get("error") in _PERMANENT_ERRORS:
                log.error("slack answer %s failed for good: %s", dedup_key, exc.response.get("error"))
                idempotency.complete(store, dedup_key)
            else:
                idempotency.release(store, dedup_key)
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
        self.services.store.put(_thread_key(channel, thread_ts or ts), json.dumps({"answer": ts}).encode())
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

    def answer_mention(event: dict, body: dict, client: WebClient, context: BoltContext) -> None:
        channel, ts = str(event.get("channel", "")), str(event.get("ts", ""))
        if not channel or not ts:
            log.warning("app_mention without channel/ts ignored: %s", body.get("event_id"))
            return
        Answerer(services, client, context.bot_user_id).run(
            dedup_key=f"slack/{body.get('team_id', '-')}/{channel}/{ts}",
            channel=channel,
            thread_ts=str(event.get("thread_ts") or ts),
            question_ts=ts,
            user=str(event.get("user", "")),
            question=slack_to_plain(str(event.get("text", "")), context.bot_user_id),
        )

    def is_question(event: dict, context: BoltContext) -> bool:
        """DMs, and replies in a thread the bot answered (mentions there come as app_mention)."""
        if event.get("subtype") not in _ACCEPTED_SUBTYPES or event.get("bot_id"):
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
        return services.store.get(_thread_key(str(event["channel"]), str(thread_ts))) is not None

    def answer_message(event: dict, body: dict, client: WebClient, context: BoltContext) -> None:
        channel, ts = str(event["channel"]), str(event["ts"])
        Answerer(services, client, context.bot_user_id).run(
            dedup_key=f"slack/{body.get('team_id', '-')}/{channel}/{ts}",
            channel=channel,
            thread_ts=str(event.get("thread_ts") or ts),
            question_ts=ts,
            user=str(event.get("user", "")),
            question=slack_to_plain(str(event.get("text", "")), context.bot_user_id),
        )

    app.event("app_mention")(ack=ack_now, lazy=[answer_mention])
    app.event("message", matchers=[is_question])(ack=ack_now, lazy=[answer_message])
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
        header = f"<@{user}>: _{escape_mrkdwn(question)[:500]}_"
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
