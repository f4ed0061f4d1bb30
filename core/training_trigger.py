"""Training that scales to zero: start one AWS Batch GPU job when training jobs wait and none runs.

A scheduled Lambda (`handlers/training_trigger.py`, every 2 minutes) calls `check_and_submit`. The
trigger only *looks* at the training queue; the Batch job's container runs `echorag worker --drain`,
which receives, extends and deletes the messages itself and exits once the queue has been empty
for `--idle-exit-s`, so the visibility timeout, the retry delay and the redrive to the DLQ work as
with an always-on host. (EventBridge Pipes SQS → Batch would delete each message as soon as the job
is submitted, and with it all of that.)

One GPU worker at a time: training jobs share one FIFO group and the single `jobs/ACTIVE` slot, so
a second worker could only wait on an empty queue. A job is submitted when messages are visible
and the Batch job queue holds no active job (SUBMITTED … RUNNING) of the job definition. Messages in
flight are not waiting: a worker holds them, or a failed job waits out TRAIN_RETRY_DELAY_S (the
worker retries by extending the message's visibility, not by a delay), or a dead worker's message
waits out its visibility timeout; each is counted once it is visible again.

A worker that cannot start (a broken image, a missing setting) fails its Batch job without taking
the message, which stays waiting: without a brake every tick would boot another GPU instance. After
FAILURE_LIMIT failed jobs within FAILURE_WINDOW_S the trigger submits nothing (metric
`TrainingTriggerBackingOff`, with an alarm) until the oldest of them leaves the window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.errors import ConfigError, TransientError
from core.queue import SqsQueue
from core.settings import Settings

ACTIVE_STATUSES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
FAILURE_LIMIT = 3
FAILURE_WINDOW_S = 3600
JOB_NAME_PREFIX = "echorag-train"
_SETTINGS = (  # (field, env var) the trigger cannot work without
    ("training_queue_url", "TRAINING_QUEUE_URL"),
    ("batch_job_queue", "BATCH_JOB_QUEUE"),
    ("batch_job_definition", "BATCH_JOB_DEFINITION"),
)


class BatchError(TransientError):
    """AWS Batch failed after retries (listing or submitting jobs)."""


@dataclass(frozen=True)
class TriggerDecision:
    """What one tick saw and did (logged as is, returned by the Lambda)."""

    waiting: int  # visible training messages: jobs no worker has taken
    in_flight: int  # taken by a worker, or hidden until a retry or a dead worker's visibility lapses
    active: tuple[str, ...]  # "<job id> <status>" of the active Batch jobs of the job definition
    submitted: str | None  # the Batch job id submitted by this tick
    reason: str
    recent_failures: int = 0  # failed Batch jobs of the definition within FAILURE_WINDOW_S

    @property
    def backing_off(self) -> bool:
        return self.submitted is None and self.recent_failures >= FAILURE_LIMIT and self.waiting > 0


@dataclass(frozen=True)
class TriggerConfig:
    queue_url: str
    job_queue: str
    job_definition: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TriggerConfig:
        """All three settings, or one ConfigError naming the missing env vars."""
        missing = [env for field, env in _SETTINGS if not getattr(settings, field)]
        if missing:
            raise ConfigError(f"the training trigger needs {', '.join(missing)} (set on the trigger function)")
        return cls(str(settings.training_queue_url), str(settings.batch_job_queue), str(settings.batch_job_definition))


def definition_name(ref: str) -> str:
    """`arn:…:job-definition/echorag-train:3`, `echorag-train:3`, `echorag-train` → `echorag-train`:
    a job started from an older revision is still the training worker."""
    return ref.rsplit("/", 1)[-1].split(":", 1)[0]


@contextlib.contextmanager
def _aws(what: str, error: type[TransientError]) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise error(f"{what} failed: {err.get('Code', 'error')}: {err.get('Message', '')}") from exc
    except BotoCoreError as exc:
        raise error(f"{what} failed after retries: {type(exc).__name__}: {exc}") from exc


def jobs_of(batch: Any, job_queue: str, job_definition: str, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
    """Job summaries of `job_definition` (any revision) in these statuses. ListJobs without a
    status returns only RUNNING jobs, so each status is listed."""
    wanted = definition_name(job_definition)
    found: list[dict[str, Any]] = []
    with _aws(f"Batch list jobs on {job_queue}", BatchError):
        for status in statuses:
            for page in batch.get_paginator("list_jobs").paginate(jobQueue=job_queue, jobStatus=status):
                found.extend(job for job in page.get("jobSummaryList", [])
                             if definition_name(job.get("jobDefinition", "")) == wanted)
    return found


def recent_failures(batch: Any, config: TriggerConfig, now: datetime) -> int:
    """Failed jobs of the definition that stopped (or were created) within FAILURE_WINDOW_S."""
    since_ms = (now.timestamp() - FAILURE_WINDOW_S) * 1000
    failed = jobs_of(batch, config.job_queue, config.job_definition, ("FAILED",))
    return sum(1 for job in failed if (job.get("stoppedAt") or job.get("createdAt") or 0) >= since_ms)


def submit_worker(batch: Any, config: TriggerConfig, now: datetime) -> str:
    """Submit one drain-and-exit worker job; returns its Batch job id."""
    name = f"{JOB_NAME_PREFIX}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    with _aws(f"Batch submit job on {config.job_queue}", BatchError):
        response = batch.submit_job(jobName=name, jobQueue=config.job_queue, jobDefinition=config.job_definition)
    return str(response["jobId"])


def decide(waiting: int, active: list[dict[str, Any]], failures: int) -> str | None:
    """Why not to submit, or None to submit."""
    if waiting <= 0:
        return "no training job waiting"
    if active:
        job = active[0]
        return f"Batch job {job.get('jobId')} is {job.get('status')}: one GPU worker at a time"
    if failures >= FAILURE_LIMIT:
        return (f"{failures} training Batch jobs failed in the last {FAILURE_WINDOW_S // 60} minutes: no new GPU "
                "worker until the oldest leaves that window (see the failed jobs' logs)")
    return None


def _batch_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("batch", config=Config(retries={"total_max_attempts": settings.aws_max_attempts,
                                                         "mode": "standard"}))


def check_and_submit(
    settings: Settings, *, queue: SqsQueue | None = None, batch: Any | None = None, now: datetime | None = None
) -> TriggerDecision:
    """One tick: look at the queue and the Batch job queue, submit a worker if one is due."""
    config = TriggerConfig.from_settings(settings)
    queue = queue or SqsQueue(config.queue_url, max_attempts=settings.aws_max_attempts)
    batch = batch or _batch_client(settings)
    now = now or datetime.now(UTC)
    waiting, in_flight = queue.counts()
    active = jobs_of(batch, config.job_queue, config.job_definition, ACTIVE_STATUSES) if waiting else []
    listed = tuple(f"{job.get('jobId')} {job.get('status')}" for job in active)
    failures = recent_failures(batch, config, now) if waiting and not active else 0
    reason = decide(waiting, active, failures)
    if reason is not None:
        return TriggerDecision(waiting, in_flight, listed, None, reason, failures)
    job_id = submit_worker(batch, config, now)
    reason = f"{waiting} training job(s) waiting and no GPU worker: submitted Batch job {job_id}"
    return TriggerDecision(waiting, in_flight, listed, job_id, reason, failures)
