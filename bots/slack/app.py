"""The Slack app: thread Q&A, reaction feedback, `/ask`, `/retrain` and the App Home, as one Bolt `App`.

The same app runs on Lambda (`handlers/slack_events.py`: lazy listeners re-invoke the function,
`bots.slack.lazy` makes their failures retried) and in Socket Mode (`bots/slack/socket.py`: lazy
listeners run in threads). The listeners are plain functions in `bots.slack.listeners`; a global
middleware hands each of them the app's services, so nothing here is a closure.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from slack_bolt import App, BoltContext
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bots.slack import feedback, home, listeners
from bots.slack.assistant import ack_malformed, build_assistant
from bots.slack.services import AskFn, SlackObserver, SlackServices
from core.errors import ConfigError
from core.queue import JobQueue
from core.settings import Settings
from core.store import BlobStore

log = logging.getLogger(__name__)


_SERVICES = "echorag_services"


def services_of(app: App) -> SlackServices:
    """The services `create_app` gave this app (hosts close them; tests look inside)."""
    services = getattr(app, _SERVICES, None)
    if not isinstance(services, SlackServices):
        raise TypeError("this Bolt app was not built by bots.slack.app.create_app")
    return services


LAMBDA_ASYNC_RETRIES = 2  # = SlackEventsFunction's EventInvokeConfig.MaximumRetryAttempts


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
    if not settings.slack_bot_token:
        raise ConfigError("SLACK_BOT_TOKEN is not set: create the app from infra/slack/manifest.yaml (docs/slack.md)")
    if not socket_mode and not settings.slack_signing_secret:
        raise ConfigError("SLACK_SIGNING_SECRET is not set: copy it from the Slack app's Basic Information page")
    # Lambda retries a failed lazy answer twice (template.yaml, MaximumRetryAttempts); Socket Mode never
    retries = 0 if socket_mode else LAMBDA_ASYNC_RETRIES
    services = SlackServices(settings, ask=ask, store=store, queue=queue, observer=observer, retries=retries)
    log.info(settings.space_mapping_summary())
    app = App(
        name="echorag",  # also spares Bolt an inspect.stack() call at cold start
        token=None if client else settings.slack_bot_token,
        signing_secret=settings.slack_signing_secret or "",
        client=client,
        process_before_response=process_before_response,
        # auth.test runs once on the first request instead of at import: a cheaper cold start
        token_verification_enabled=False,
        # our listeners call the Web API themselves; Bolt's say/set_status kwargs (which raise on an
        # assistant event without `assistant_thread`) stay on the Assistant's own listeners only
        attaching_conversation_kwargs_enabled=False,
        request_verification_enabled=not socket_mode,
    )
    if client is None:
        app.client.base_url = settings.slack_api_base_url  # per-request clients copy it, and the handlers
        # A 429 waits Retry-After and tries once more (slack-sdk's handler), instead of failing the
        # answer: chat.postMessage allows about one message a second per channel.
        app.client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    setattr(app, _SERVICES, services)  # for hosts and tests: services_of(app)

    @app.middleware
    def provide_services(context: BoltContext, next: Callable[[], None]) -> None:  # Bolt injects by name
        context["services"] = services
        next()

    _register(app)
    return app


def _register(app: App) -> None:
    """Which listener takes which event; a catch-all acks the rest so Slack does not retry them."""
    ack_now = listeners.ack_now
    app.use(build_assistant())  # AI-app threads first: their messages are DMs with a thread
    for assistant_event in ("assistant_thread_started", "assistant_thread_context_changed"):
        app.event(assistant_event)(ack_malformed)  # what the assistant's matchers refused
    app.event("app_mention")(ack=ack_now, lazy=[listeners.answer_event])
    app.event("message", matchers=[listeners.is_question])(ack=ack_now, lazy=[listeners.answer_event])
    app.event("message")(ack_now)
    for reaction_event in ("reaction_added", "reaction_removed"):
        app.event(reaction_event, matchers=[listeners.is_reaction_on_bot_message])(
            ack=ack_now, lazy=[listeners.record_feedback]
        )
        app.event(reaction_event)(ack_now)
    app.command("/ask")(ack=ack_now, lazy=[listeners.ask_command])
    app.command("/retrain")(ack=ack_now, lazy=[listeners.retrain_command])
    app.action(feedback.FEEDBACK_ACTION)(ack=ack_now, lazy=[feedback.record_button])
    app.action(feedback.REASON_ACTION_PREFIX + "other")(feedback.open_other)  # the modal needs the trigger now
    app.action(re.compile("^" + re.escape(feedback.REASON_ACTION_PREFIX)))(ack=ack_now, lazy=[feedback.reason_button])
    app.view(feedback.OTHER_CALLBACK)(ack=ack_now, lazy=[feedback.other_submitted])
    app.event("app_home_opened")(ack=ack_now, lazy=[home.publish_home])
    app.action(home.RETRAIN_ACTION)(ack=ack_now, lazy=[home.retrain_from_home])
