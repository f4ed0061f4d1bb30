"""Lambda entry: S3 document events (delivered through SQS) → ingest into / delete from Qdrant.

The docs bucket sends `ObjectCreated:*` / `ObjectRemoved:*` under `docs/` to an SQS queue that
triggers this function. Each SQS message carries one S3 notification; powertools' BatchProcessor
reports a message that fails (malformed, or its document could not be synced) in
`batchItemFailures`, so SQS retries only that one and, after three receives, moves it to the DLQ
(alarmed). The other messages of the batch are processed either way.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from core.errors import PermanentError
from core.settings import get_settings
from handlers.tracing import tracer_for
from rag.s3_documents import SyncResult, parse_key, sync_object

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "echorag-ingest")
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "EchoRAG"), service=SERVICE)
# A batch in which every message failed is reported like any other (each message retried, then
# DLQ) instead of failing the whole invocation: the failure is in the data, not in the function.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

METRIC_FOR = {
    "ingested": "DocumentsIngested",
    "unchanged": "DocumentsUnchanged",
    "deleted": "DocumentsDeleted",
    "skipped": "DocumentsSkipped",
}


class MalformedDocumentEvent(PermanentError):
    """The SQS message is not an S3 event notification this function understands."""


def s3_records(record: SQSRecord) -> list[S3EventRecord]:
    """The S3 records in one SQS message; [] for the `s3:TestEvent` S3 sends when wiring up."""
    try:
        body = record.json_body
    except (json.JSONDecodeError, TypeError) as exc:
        raise MalformedDocumentEvent(f"message {record.message_id}: body is not JSON ({exc})") from exc
    if isinstance(body, dict) and body.get("Event") == "s3:TestEvent":
        return []
    if not isinstance(body, dict) or not isinstance(body.get("Records"), list) or not body["Records"]:
        raise MalformedDocumentEvent(f"message {record.message_id}: not an S3 event notification (no Records)")
    records = list(record.decoded_nested_s3_event.records)
    for s3_record in records:
        try:
            valid = (
                s3_record.event_source == "aws:s3"
                and s3_record.event_name.startswith(("ObjectCreated:", "ObjectRemoved:"))
                and bool(s3_record.s3.bucket.name)
                and bool(s3_record.s3.get_object.key)
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedDocumentEvent(f"message {record.message_id}: incomplete S3 record ({exc!r})") from exc
        if not valid:
            raise MalformedDocumentEvent(
                f"message {record.message_id}: unexpected S3 record {s3_record.get('eventName')!r}"
            )
    return records


@tracer.capture_method
def sync_record(s3_record: S3EventRecord) -> SyncResult:
    settings = get_settings()
    doc = parse_key(
        s3_record.s3.bucket.name,
        unquote_plus(s3_record.s3.get_object.key),  # keys arrive URL-encoded ("a+b.md" is "a b.md")
        default_space=settings.default_space,
    )
    result = sync_object(doc, settings=settings)
    metrics.add_metric(name=METRIC_FOR[result.action], unit=MetricUnit.Count, value=1)
    logger.info(
        f"document {result.action}",
        extra={"event": s3_record.event_name, "uri": doc.uri, "space": doc.space, "detail": result.detail},
    )
    return result


def record_handler(record: SQSRecord) -> None:
    """One SQS message; raising reports it as a batch item failure (retried, then DLQ)."""
    try:
        records = s3_records(record)
        if not records:
            metrics.add_metric(name="DocumentEventsIgnored", unit=MetricUnit.Count, value=1)
            logger.info("S3 test event ignored", extra={"message_id": record.message_id})
        for s3_record in records:
            sync_record(s3_record)
    except Exception as exc:
        metrics.add_metric(name="DocumentEventsFailed", unit=MetricUnit.Count, value=1)
        logger.exception(
            "document event failed; reported for retry",
            extra={"message_id": record.message_id, "receive_count": record.attributes.approximate_receive_count,
                   "error": str(exc)},
        )
        raise


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
