"""Lambda entry for Discord's Interactions Endpoint URL (`POST /discord/interactions`, HTTP API v2).

Thin: powertools' resolver, Logger, Tracer and Metrics around `bots.discord.interactions`. 401 for
any signature problem, 400 for a signed body that is not an interaction, 200 with the callback
otherwise. An infrastructure failure (store or queue down) still answers 200 with an ephemeral
"try again" so the user is not left with "The application did not respond".
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError, TransformParameterError

from bots.discord.interactions import (
    BadInteraction,
    SignatureError,
    handle_interaction,
    parse_interaction,
    verify_signature,
)
from bots.discord.render import message_response
from bots.discord.runtime import resolve_settings, runtime_for
from core.errors import ConfigError, EchoRagError
from core.settings import get_settings
from handlers.tracing import tracer_for

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "echorag-discord")
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "EchoRAG"), service=SERVICE)
app = APIGatewayHttpResolver()


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(
        status_code=status, content_type="application/json", body=json.dumps(body, ensure_ascii=False)
    )


def _raw_body() -> bytes:
    event = app.current_event
    body = event.body or ""
    if event.is_base64_encoded:
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return b""  # cannot match any signature -> 401
    return body.encode("utf-8")


@app.post("/discord/interactions")
@tracer.capture_method
def interactions() -> Response:
    event = app.current_event
    body = _raw_body()
    try:
        settings = resolve_settings(get_settings())
    except (ConfigError, GetParameterError, TransformParameterError) as exc:
        return _not_configured(f"cannot read the Discord credentials: {exc}")
    if not settings.discord_public_key:  # PING needs only the key: the endpoint works once it is set
        where = f"public_key in the secret {settings.discord_secret_arn}" if settings.discord_secret_arn else "DISCORD_PUBLIC_KEY"
        return _not_configured(f"not configured yet: set {where} (the application's General Information page)")
    try:
        verify_signature(
            settings.discord_public_key,
            event.get_header_value("x-signature-ed25519"),
            event.get_header_value("x-signature-timestamp"),
            body,
        )
    except SignatureError as exc:
        logger.warning("rejected interaction: %s", exc)
        metrics.add_metric(name="InteractionRejected", unit=MetricUnit.Count, value=1)
        return _json(401, {"error": "invalid request signature"})
    try:
        payload = parse_interaction(body)
        logger.append_keys(interaction_id=str(payload.get("id", "")), interaction_type=payload["type"])
        handled = handle_interaction(payload, runtime_for(settings))
    except BadInteraction as exc:
        logger.warning("malformed interaction: %s", exc)
        metrics.add_metric(name="InteractionMalformed", unit=MetricUnit.Count, value=1)
        return _json(400, {"error": str(exc)})
    except EchoRagError as exc:
        logger.exception("interaction failed: %s", exc)
        metrics.add_metric(name="InteractionFailed", unit=MetricUnit.Count, value=1)
        return _json(
            200, message_response("⚠️ Something went wrong on our side; please try again.", ephemeral=True)
        )
    logger.info("interaction handled", extra={"action": handled.action})
    metrics.add_metric(name=_metric_name(handled.action), unit=MetricUnit.Count, value=1)
    return _json(200, handled.response)


def _not_configured(reason: str) -> Response:
    """A 503 that says what the deployer still has to set (Discord shows it when the URL is saved)."""
    logger.error("EchoRAG Discord endpoint %s", reason)
    metrics.add_metric(name="InteractionNotConfigured", unit=MetricUnit.Count, value=1)
    return _json(503, {"error": f"EchoRAG {reason}"})


@app.not_found
def not_found(exc: Exception) -> Response:
    logger.warning("no route for %s %s", app.current_event.http_method, app.current_event.path)
    metrics.add_metric(name="InteractionNotFound", unit=MetricUnit.Count, value=1)
    return _json(404, {"error": "not found: Discord interactions are POSTed to /discord/interactions"})


def _metric_name(action: str) -> str:
    return "Interaction" + "".join(part.capitalize() for part in action.split("_"))


def _malformed(event: Any) -> str | None:
    """What no API Gateway event looks like and the resolver would crash on (a 5xx), or None."""
    context = event.get("requestContext") if isinstance(event, dict) else None
    http = context.get("http") if isinstance(context, dict) else None
    if not isinstance(context, dict) or not isinstance(http, dict) or not all(
        isinstance(value, str) for value in (http.get("method"), http.get("path"), context.get("stage"))
    ):
        return "not an API Gateway HTTP API event"
    headers, body = event.get("headers"), event.get("body")
    if headers is not None and not (
        isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        return "headers are not strings"
    if body is not None and not (isinstance(body, str) and body.encode("utf-8", "replace").decode() == body):
        return "body is not text"  # not a string, or one with lone surrogates that no request can carry
    return None


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    problem = _malformed(event)
    if problem is not None:  # refused here: the resolver would raise on it and API Gateway answer 500
        logger.warning("rejected event: %s", problem)
        metrics.add_metric(name="InteractionMalformed", unit=MetricUnit.Count, value=1)
        return {"statusCode": 400, "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"error": problem})}
    return app.resolve(event, context)
