"""Lambda entry for Slack (events, slash commands, interactivity) behind API Gateway HTTP API.

Bolt's `SlackRequestHandler` with `process_before_response=True`: listeners ack inside the request,
and the slow work runs in lazy listeners, which Bolt starts by invoking this same function again
asynchronously (`lambda:InvokeFunction` on itself). A lazy listener that fails makes that
invocation fail (`bots.slack.lazy`), so Lambda's async retry runs it again (the answer's claim was
released).

Cold start: the app is built on the first request and kept for the container's life. Building it
costs no network call (auth.test runs once, on the first request) and no model load: the agent
(Kiwi, Qdrant, LLM client) is built on the first question, inside a lazy invocation, never on
the 3-second ack path. With `SLACK_SECRET_ARN` the tokens come from Secrets Manager (cached 5 min);
a rotated secret rebuilds the app.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError, TransformParameterError
from slack_bolt.adapter.aws_lambda import SlackRequestHandler
from slack_bolt.request import BoltRequest
from slack_sdk.signature import SignatureVerifier

from bots.slack.app import create_app, services_of
from bots.slack.lazy import RetryingLazyListenerRunner, lazy_failures
from core.contracts import FeedbackEvent
from core.errors import ConfigError, TransientError
from core.secrets import read_json_secret
from core.settings import Settings, get_settings
from handlers.tracing import tracer_for
from rag.types import AgentAnswer

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "echorag-slack"))
tracer = tracer_for(os.environ.get("POWERTOOLS_SERVICE_NAME", "echorag-slack"))
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "EchoRAG"))


class LazyWorkFailed(TransientError):
    """Raised out of a lazy invocation that failed, so Lambda retries it (Bolt alone would only log)."""


class MetricsObserver:
    """The app's answers and feedback as EMF metrics (flushed at the end of each invocation)."""

    def answered(self, answer: AgentAnswer, seconds: float) -> None:
        metrics.add_metric(name="AnswerLatency", unit=MetricUnit.Milliseconds, value=seconds * 1000)
        metrics.add_metric(name="Answers", unit=MetricUnit.Count, value=1)
        if answer.abstained:
            metrics.add_metric(name="Abstentions", unit=MetricUnit.Count, value=1)
        top = answer.scores.get("top_score")
        if top is not None:
            metrics.add_metric(name="RetrievalTopScore", unit=MetricUnit.NoUnit, value=float(top))
        logger.info(
            "answered",
            extra={"answer_id": answer.answer_id, "seconds": round(seconds, 3), "top_score": top,
                   "sources": len(answer.citations), "model": answer.model, "adapter": answer.adapter_version},
        )

    def feedback(self, event: FeedbackEvent) -> None:
        metrics.add_metric(name="FeedbackEvents", unit=MetricUnit.Count, value=1)
        name = {1: "FeedbackPositive", -1: "FeedbackNegative"}.get(event.label)
        if name and event.action == "added":
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
        logger.info("feedback", extra={"feedback_id": event.feedback_id, "label": event.label, "action": event.action})


@dataclass
class _Built:
    secrets: tuple[str, str]
    handler: SlackRequestHandler


_built: _Built | None = None


def resolve_settings() -> Settings:
    """Settings from the environment, with the Slack secrets from Secrets Manager when
    SLACK_SECRET_ARN names a JSON secret {"signing_secret": …, "bot_token": …}."""
    settings = get_settings()
    if not settings.slack_secret_arn:
        return settings
    secret = read_json_secret(settings.slack_secret_arn, expect="signing_secret and bot_token")
    # Either may still be empty while the app is being set up (see `_setup_reply`).
    return settings.model_copy(update={
        "slack_signing_secret": secret.get("signing_secret", ""), "slack_bot_token": secret.get("bot_token", "")
    })


def _current(settings: Settings) -> _Built:
    global _built
    secrets = (settings.slack_signing_secret or "", settings.slack_bot_token or "")
    if _built is None or _built.secrets != secrets:
        if _built is not None:
            services_of(_built.handler.app).close()
        app = create_app(settings, process_before_response=True, observer=MetricsObserver())
        handler = SlackRequestHandler(app)
        app.listener_runner.lazy_listener_runner = RetryingLazyListenerRunner(handler.logger)
        _built = _Built(secrets=secrets, handler=handler)
    return _built


def request_handler() -> SlackRequestHandler:
    """The container's Bolt handler, built once (rebuilt only when the secrets change)."""
    return _current(resolve_settings()).handler


def reset() -> None:
    """Forget the built app (tests that change settings between cases)."""
    global _built
    _built = None


_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}", re.ASCII)


def _reply(status: int, reason: str) -> dict[str, Any]:
    # X-Slack-No-Retry: a request we refuse now will be refused again; do not resend it
    return {"statusCode": status, "body": reason, "headers": {"content-type": "text/plain", "x-slack-no-retry": "1"}}


def _setup_reply(event: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    """While the app is set up, before both secrets exist: Slack's URL check is answered as soon as
    the signing secret is there (the bot token comes later, when the app is installed); anything
    else gets a 503 that says what is missing. None once both are set."""
    def where(field: str) -> str:
        arn = settings.slack_secret_arn
        return f"{field} in the secret {arn}" if arn else f"SLACK_{field.upper()}"

    if not settings.slack_signing_secret:
        logger.error("Slack signing secret is not set", extra={"missing": where("signing_secret")})
        return _reply(503, f"EchoRAG is not configured yet: set {where('signing_secret')} "
                           "(the Slack app's Basic Information page), then retry the URL check")
    if settings.slack_bot_token:
        return None
    rejected = check_request(event, settings.slack_signing_secret)
    if rejected is not None:
        return rejected
    body = event["body"] if not event["isBase64Encoded"] else base64.b64decode(event["body"]).decode("utf-8")
    if not SignatureVerifier(settings.slack_signing_secret).is_valid_request(body, event["headers"]):
        return _reply(401, "invalid signature")
    payload = BoltRequest(body=body, headers=event["headers"]).body
    if payload.get("type") == "url_verification":
        logger.info("answered Slack's URL check (the bot token is not set yet)")
        return {"statusCode": 200, "body": json.dumps({"challenge": payload["challenge"]}),
                "headers": {"content-type": "application/json"}}
    logger.error("Slack bot token is not set", extra={"missing": where("bot_token")})
    return _reply(503, f"EchoRAG is not configured yet: install the app and set {where('bot_token')}")


def check_request(event: Any, signing_secret: str) -> dict[str, Any] | None:
    """A 4xx response for what Bolt cannot take (a missing request context, an undecodable or
    unparsable body), or None to let Bolt handle it. Unsigned junk gets 401, signed junk 400."""
    if not isinstance(event, dict) or not isinstance(event.get("requestContext"), dict):
        logger.warning("rejected: not an API Gateway proxy event")
        return _reply(400, "not an API Gateway proxy event")
    headers = event.get("headers") or {}
    body = event.get("body") or ""
    if not isinstance(headers, dict) or not isinstance(body, str):
        logger.warning("rejected: headers or body of the wrong type")
        return _reply(400, "malformed request")
    if body.encode("utf-8", "replace").decode() != body:  # lone surrogates: the verifier's encode() would raise
        logger.warning("rejected: body is not text")
        return _reply(400, "malformed request")
    # A null header is an absent one (Bolt would verify the string "None" and raise on int("None"))
    headers = {str(k).lower(): v for k, v in headers.items() if v is not None}
    timestamp, signature = headers.get("x-slack-request-timestamp"), headers.get("x-slack-signature")
    # What the verifier would crash on (int() of junk, float() of 400 digits, compare_digest of
    # non-ASCII): refused before any of it is parsed, since no signature is needed to send it.
    if timestamp is not None and not _TIMESTAMP.fullmatch(str(timestamp)):
        logger.warning("rejected: X-Slack-Request-Timestamp is not a unix time")
        return _reply(401, "invalid request timestamp")
    if signature is not None and not _SIGNATURE.fullmatch(str(signature)):
        logger.warning("rejected: X-Slack-Signature is not a v0 signature")
        return _reply(401, "invalid signature")
    event["headers"] = headers
    event["isBase64Encoded"] = bool(event.get("isBase64Encoded"))
    event["body"] = body
    if event["isBase64Encoded"]:
        try:
            body = base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            logger.warning("rejected: body is not valid base64 UTF-8")
            return _reply(400, "malformed body")
    try:
        request = BoltRequest(body=body, headers=dict(headers), query=event.get("queryStringParameters") or {})
        problem = _shape_problem(request.body)
    except Exception as exc:
        problem = f"unparsable body ({type(exc).__name__}: {exc})"
    if problem is None:
        return None
    if not SignatureVerifier(signing_secret).is_valid_request(body, {k: str(v) for k, v in headers.items()}):
        logger.warning("rejected: malformed body without a valid signature", extra={"problem": problem})
        return _reply(401, "invalid signature")
    logger.warning("rejected: malformed body", extra={"problem": problem})
    return _reply(400, "malformed body")


_SLACK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SLACK_TS = re.compile(r"\d{1,12}(\.\d{1,9})?")
_URL = re.compile(r"https?://[\x21-\x7e]{1,2000}")
# Fields that become store keys or API arguments: Slack ids, message timestamps, reply URLs.
_ID_FIELDS = ("channel", "user", "team", "channel_id", "user_id", "team_id", "api_app_id")
_TS_FIELDS = ("ts", "thread_ts", "event_ts")


def _id_problem(payload: dict[str, Any]) -> str | None:
    """An id, ts or response_url (top level, in `event` or in `event.item`) not shaped as Slack's."""
    raw_inner = payload.get("event")
    inner: dict[str, Any] = {}
    item: dict[str, Any] = {}
    if isinstance(raw_inner, dict):
        inner = raw_inner
        item = raw_inner["item"] if isinstance(raw_inner.get("item"), dict) else {}
    for where, fields in ((payload, ("response_url",)), (payload, _ID_FIELDS), (inner, _ID_FIELDS),
                          (inner, _TS_FIELDS), (item, ("channel", "ts"))):
        for key in fields:
            value = where.get(key)
            if value is None or isinstance(value, dict):  # absent, or an object checked elsewhere
                continue
            pattern = _URL if key == "response_url" else _SLACK_TS if key.endswith("ts") else _SLACK_ID
            if not (isinstance(value, str) and pattern.fullmatch(value)):
                return f"{key} is not a Slack {'URL' if key == 'response_url' else 'ts' if key.endswith('ts') else 'id'}"
    return None


def _shape_problem(payload: Any) -> str | None:
    """What Bolt would trip over in a parsed body (it assumes Slack's shapes), or None."""
    if not isinstance(payload, dict):
        return "the body is not an object"
    if payload.get("type") == "url_verification" and not isinstance(payload.get("challenge"), str):
        return "url_verification without a challenge string"
    if "event" in payload or payload.get("type") == "event_callback":
        inner = payload.get("event")
        if not isinstance(inner, dict) or not isinstance(inner.get("type"), str):
            return "an event that is not an object with a type"
    for key in ("view", "container", "message", "channel", "team", "enterprise"):
        if payload.get(key) is not None and not isinstance(payload[key], dict | str):
            return f"{key} is neither an object nor a string"
    if "view" in payload and not isinstance(payload["view"], dict):
        return "view is not an object"
    if payload.get("type") == "block_actions" or "actions" in payload:
        actions = payload.get("actions")
        if not (isinstance(actions, list) and actions and all(isinstance(a, dict) for a in actions)):
            return "actions is not a list of objects"
    for key in ("action_id", "callback_id", "block_id"):  # Bolt concatenates these into its log lines
        if payload.get(key) is not None and not isinstance(payload[key], str):
            return f"{key} is not a string"
    problem = _id_problem(payload)
    if problem:
        return problem
    authorizations = payload.get("authorizations")
    if authorizations is not None and not (
        isinstance(authorizations, list) and all(isinstance(a, dict) for a in authorizations)
    ):
        return "authorizations is not a list of objects"
    return None


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        settings = resolve_settings()
    except (ConfigError, GetParameterError, TransformParameterError) as exc:
        logger.error("cannot read the Slack credentials", extra={"error": str(exc)})
        metrics.add_metric(name="SlackNotConfigured", unit=MetricUnit.Count, value=1)
        return _reply(503, f"EchoRAG cannot read its Slack credentials: {exc}")
    rejected = _setup_reply(event, settings)
    if rejected is not None:
        metrics.add_metric(name="SlackNotConfigured" if rejected["statusCode"] == 503 else "SlackRejected",
                           unit=MetricUnit.Count, value=1)
        return rejected
    built = _current(settings)
    rejected = check_request(event, built.secrets[0])
    if rejected is not None:
        metrics.add_metric(name="SlackRejected", unit=MetricUnit.Count, value=1)
        return rejected
    headers = event["headers"]
    lazy = headers.get("x-slack-bolt-lazy-function-name")
    retry = headers.get("x-slack-retry-num")
    logger.append_keys(lazy_function=lazy, slack_retry=retry)
    tracer.put_annotation(key="slack_phase", value=lazy or "ack")
    if lazy:
        metrics.add_metric(name="LazyRuns", unit=MetricUnit.Count, value=1)
    else:
        metrics.add_metric(name="SlackRequests", unit=MetricUnit.Count, value=1)
        if retry:
            metrics.add_metric(name="SlackRetries", unit=MetricUnit.Count, value=1)
    with lazy_failures() as failures:
        response = built.handler.handle(event, context)
    status = int(response.get("statusCode", 200))
    if failures:
        logger.error("lazy work failed; Lambda will retry", extra={"error": repr(failures[0])})
        raise LazyWorkFailed(f"{lazy}: {failures[0]!r}") from failures[0]
    # Only Bolt's own re-invocation (Lambda Invoke, marked "method": "NONE") is lazy work; a request
    # through API Gateway that merely carries the header is answered as it is, never as a 5xx.
    if lazy and event.get("method") == "NONE" and status >= 400:
        logger.error("lazy work was refused; Lambda will retry", extra={"status": status})
        raise LazyWorkFailed(f"lazy listener {lazy} answered {status}")
    if status >= 400:
        logger.warning("slack request answered with an error", extra={"status": status})
    return response
