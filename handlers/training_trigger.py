"""Lambda entry on a schedule (EventBridge, every 2 minutes): start the GPU training job when one waits.

`core.training_trigger.check_and_submit` reads the training queue and the Batch job queue and
submits one `echorag worker --drain` job when training jobs wait and no worker is active. A missing
setting is one logged line and a `TrainingTriggerMisconfigured` metric per tick, not a failed
invocation: retries cannot fix it. An AWS failure is logged and raised, so Lambda's Errors metric
shows it; the next tick tries again (the trigger keeps no state between ticks).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from core.errors import ConfigError, TransientError
from core.settings import get_settings
from core.training_trigger import check_and_submit
from handlers.tracing import tracer_for

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "echorag-training-trigger")
logger = Logger(service=SERVICE)
tracer = tracer_for(SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "EchoRAG"), service=SERVICE)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        decision = check_and_submit(get_settings())
    except ConfigError as exc:
        logger.error(f"training trigger not configured: {exc}")
        metrics.add_metric(name="TrainingTriggerMisconfigured", unit=MetricUnit.Count, value=1)
        return {"submitted": None, "reason": str(exc)}
    except TransientError as exc:
        logger.error(f"training trigger failed: {exc}")
        metrics.add_metric(name="TrainingTriggerFailed", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name="TrainingJobsWaiting", unit=MetricUnit.Count, value=decision.waiting)
    metrics.add_metric(name="TrainingJobSubmitted", unit=MetricUnit.Count, value=1 if decision.submitted else 0)
    if decision.backing_off:
        metrics.add_metric(name="TrainingTriggerBackingOff", unit=MetricUnit.Count, value=1)
    (logger.warning if decision.backing_off else logger.info)(decision.reason, extra=asdict(decision))
    return asdict(decision)
