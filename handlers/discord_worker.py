"""Lambda entry on the Discord ask queue (SQS standard queue, `ReportBatchItemFailures`).

Each record is one `/ask`: `bots.discord.ask_worker.answer_ask` runs the agent and edits the deferred
response, once per interaction. A record that fails is reported back alone and redelivered; after
QUEUE_MAX_RECEIVES deliveries the user is told it failed and the message moves to the DLQ.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from bots.discord.ask_worker import answer_ask
from bots.discord.runtime import resolve_settings, runtime_for
from core.contracts import AskJob
from core.settings import get_settings
from handlers.tracing import tracer_for

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "echorag-discord-worker")
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "EchoRAG"), service=SERVICE)
processor = BatchProcessor(event_type=EventType.SQS)
LEASE_MARGIN_S = 1.0


@tracer.capture_method
def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    try:
        job = AskJob.model_validate_json(record.body)
    except ValidationError:  # retried, then kept in the DLQ (alarmed), never silently dropped
        logger.error("ask message %s is not an AskJob: %.200s", record.message_id, record.body)
        metrics.add_metric(name="AskMalformed", unit=MetricUnit.Count, value=1)
        raise
    logger.append_keys(interaction_id=job.interaction_id)
    settings = resolve_settings(get_settings())
    receives = int(record.attributes.approximate_receive_count or 1)
    # The claim lasts as long as this invocation can: a retry after a timeout or crash retakes it.
    lease_s = lambda_context.get_remaining_time_in_millis() / 1000 + LEASE_MARGIN_S
    last = receives >= settings.queue_max_receives
    try:
        outcome = answer_ask(job, runtime_for(settings), last_attempt=last, lease_s=lease_s)
    except Exception:
        metrics.add_metric(name="AskFailed", unit=MetricUnit.Count, value=1)
        raise
    logger.info("ask processed", extra={"status": outcome.status, "message_id": outcome.message_id})
    metrics.add_metric(name=f"Ask{outcome.status.capitalize()}", unit=MetricUnit.Count, value=1)
    if outcome.answer is not None:
        metrics.add_metric(name="AnswerLatency", unit=MetricUnit.Milliseconds, value=outcome.elapsed_ms)
        if "top_score" in outcome.answer.scores:
            metrics.add_metric(
                name="RetrievalTopScore", unit=MetricUnit.NoUnit, value=outcome.answer.scores["top_score"]
            )
        if outcome.answer.abstained:
            metrics.add_metric(name="AnswerAbstained", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
