"""Training that scales to zero, rehearsed on moto: the trigger's decision against a real SQS FIFO
queue and a real AWS Batch stack (managed EC2 GPU compute environment at 0 vCPUs, job queue, job
definition) over HTTP, and `echorag worker --drain` handling the job and exiting on its own.

moto's Batch in server mode, without a docker daemon: a submitted job is a thread that would run
the container in docker. With moto's state manager holding `batch::job` transitions (manual, never
reached) the job stays SUBMITTED, i.e. active; released, it runs on, finds no daemon (DOCKER_HOST
points nowhere) and ends FAILED. With `{"batch": {"use_docker": false}}` (POST /moto-api/config)
a job ends SUCCEEDED as it is submitted. Either way the trigger sees what the Batch API reports.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core import jobs
from core.contracts import TrainingJob, utcnow
from core.errors import ConfigError
from core.queue import open_queue
from core.settings import Settings, get_settings
from core.store import open_store
from core.training_trigger import TriggerDecision, check_and_submit, definition_name
from tests.conftest import create_aws_resources
from tests.support_slack import LambdaContext
from tests.support_training import (
    FakeServer,
    queue_job,
    seed_feedback,
    start_worker,
    training_settings,
    training_values,
)

pytestmark = pytest.mark.timeout(300)
STOPPED = ("SUCCEEDED", "FAILED")


def _moto_api(endpoint: str, path: str, body: dict[str, Any] | None = None) -> bytes:
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


def _trust(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})


@dataclass
class BatchStack:
    """A GPU compute environment at 0 vCPUs, its job queue and the worker's job definition."""

    client: Any
    job_queue: str  # name
    job_queue_arn: str  # what CloudFormation's Ref gives (the template passes it to the trigger)
    job_definition: str  # ARN with revision, as CloudFormation's Ref gives it

    def register(self, name: str) -> str:
        return str(self.client.register_job_definition(
            jobDefinitionName=name, type="container",
            containerProperties={
                "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/echorag-train:test",
                "command": ["echorag", "worker", "--drain", "--no-progress"],
                "resourceRequirements": [{"type": "GPU", "value": "1"}, {"type": "VCPU", "value": "4"},
                                         {"type": "MEMORY", "value": "15000"}],
            },
        )["jobDefinitionArn"])

    def jobs(self) -> dict[str, str]:
        """Every job of the queue (moto lists all statuses when none is given): id → status."""
        listed = self.client.list_jobs(jobQueue=self.job_queue)["jobSummaryList"]
        return {job["jobId"]: job["status"] for job in listed}

    def wait_stopped(self) -> dict[str, str]:
        """Until moto has run every job to its end (a thread per job); a bound, not a measurement."""
        deadline = time.monotonic() + 60
        found = self.jobs()
        while any(status not in STOPPED for status in found.values()):
            assert time.monotonic() < deadline, found
            time.sleep(0.1)
            found = self.jobs()
        return found


@pytest.fixture
def stack(moto_server: str) -> BatchStack:
    import boto3

    suffix = uuid.uuid4().hex[:10]
    iam, ec2, batch = boto3.client("iam"), boto3.client("ec2"), boto3.client("batch")
    service_role = iam.create_role(RoleName=f"batch-service-{suffix}",
                                   AssumeRolePolicyDocument=_trust("batch.amazonaws.com"))["Role"]["Arn"]
    iam.create_role(RoleName=f"batch-instance-{suffix}", AssumeRolePolicyDocument=_trust("ec2.amazonaws.com"))
    profile = iam.create_instance_profile(InstanceProfileName=f"batch-instance-{suffix}")["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName=f"batch-instance-{suffix}", RoleName=f"batch-instance-{suffix}")
    subnets = [subnet["SubnetId"] for subnet in ec2.describe_subnets()["Subnets"]][:2]
    group = ec2.create_security_group(GroupName=f"batch-{suffix}", Description="training")["GroupId"]
    environment = batch.create_compute_environment(
        computeEnvironmentName=f"gpu-{suffix}", type="MANAGED", state="ENABLED", serviceRole=service_role,
        computeResources={"type": "EC2", "minvCpus": 0, "desiredvCpus": 0, "maxvCpus": 8,
                          "instanceTypes": ["g5.xlarge"], "subnets": subnets, "securityGroupIds": [group],
                          "instanceRole": profile},
    )["computeEnvironmentArn"]
    queue = batch.create_job_queue(jobQueueName=f"training-{suffix}", state="ENABLED", priority=1,
                                   computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}])
    result = BatchStack(batch, queue["jobQueueName"], queue["jobQueueArn"], "")
    result.job_definition = result.register(f"echorag-train-{suffix}")
    return result


@pytest.fixture
def held(moto_server: str, stack: BatchStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], dict[str, str]]]:
    """Submitted jobs stay SUBMITTED until `release()`, which lets moto run them to FAILED (no
    docker daemon) and returns id → status once every job has stopped."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # moto's job thread reads it
    _moto_api(moto_server, "state-manager/set-transition",
              {"model_name": "batch::job", "transition": {"progression": "manual", "times": 10**9}})

    def release() -> dict[str, str]:
        _moto_api(moto_server, "state-manager/unset-transition", {"model_name": "batch::job"})
        return stack.wait_stopped()

    yield release
    release()


@pytest.fixture
def without_docker(moto_server: str) -> Iterator[None]:
    """moto's docker-free Batch: each job SUCCEEDED as it is submitted."""
    before = json.loads(_moto_api(moto_server, "config"))
    _moto_api(moto_server, "config", {"batch": {"use_docker": False}})
    yield
    _moto_api(moto_server, "config", {"batch": before["batch"]})


@pytest.fixture
def trigger_settings(aws_settings: Settings, stack: BatchStack) -> Settings:
    return aws_settings.model_copy(update={"batch_job_queue": stack.job_queue,
                                           "batch_job_definition": stack.job_definition})


# --- the decision -------------------------------------------------------------------------------


def test_an_empty_queue_starts_no_gpu(trigger_settings: Settings, stack: BatchStack) -> None:
    decision = check_and_submit(trigger_settings)
    assert decision == TriggerDecision(waiting=0, in_flight=0, active=(), submitted=None,
                                       reason="no training job waiting")
    assert stack.jobs() == {}


def test_a_waiting_job_gets_one_gpu_worker_until_that_one_has_ended(
    trigger_settings: Settings, stack: BatchStack, held: Callable[[], dict[str, str]]
) -> None:
    queue_job(trigger_settings)  # /retrain force: slot, status, FIFO message
    first = check_and_submit(trigger_settings)
    assert (first.waiting, first.active) == (1, ()) and first.submitted is not None
    assert stack.jobs() == {first.submitted: "SUBMITTED"}
    [summary] = stack.client.describe_jobs(jobs=[first.submitted])["jobs"]
    assert summary["jobName"].startswith("echorag-train-") and summary["jobDefinition"] == stack.job_definition

    again = check_and_submit(trigger_settings)  # the next tick, while the worker's instance boots
    assert again.submitted is None and again.active == (f"{first.submitted} SUBMITTED",)
    assert "one GPU worker at a time" in again.reason and len(stack.jobs()) == 1

    assert held() == {first.submitted: "FAILED"}  # the job died without taking the message
    retry = check_and_submit(trigger_settings)
    assert retry.waiting == 1 and retry.active == () and retry.submitted not in (None, first.submitted)
    assert set(stack.jobs()) == {first.submitted, retry.submitted}


def test_workers_that_keep_failing_stop_booting_gpus_until_the_window_passes(
    trigger_settings: Settings, stack: BatchStack, held: Callable[[], dict[str, str]]
) -> None:
    """A broken image fails every job without taking the message: after FAILURE_LIMIT failures in
    the window the trigger stops starting instances, and starts again once they have aged out."""
    from datetime import UTC, datetime, timedelta

    from core.training_trigger import FAILURE_LIMIT, FAILURE_WINDOW_S

    for n in range(FAILURE_LIMIT):
        stack.client.submit_job(jobName=f"broken-{n}", jobQueue=stack.job_queue, jobDefinition=stack.job_definition)
    assert set(held().values()) == {"FAILED"}
    queue_job(trigger_settings)
    stopped = check_and_submit(trigger_settings)
    assert stopped.submitted is None and stopped.recent_failures == FAILURE_LIMIT and stopped.backing_off
    assert "failed in the last" in stopped.reason and len(stack.jobs()) == FAILURE_LIMIT
    later = datetime.now(UTC) + timedelta(seconds=FAILURE_WINDOW_S + 60)
    resumed = check_and_submit(trigger_settings, now=later)
    assert resumed.submitted is not None and resumed.recent_failures == 0


def test_a_finished_worker_with_messages_left_is_followed_by_another(
    trigger_settings: Settings, stack: BatchStack, without_docker: None
) -> None:
    """The worker drained and exited just before a job was queued: the next tick starts one."""
    queue_job(trigger_settings)  # /retrain force: slot, status, FIFO message
    first = check_and_submit(trigger_settings)
    assert first.submitted is not None and stack.jobs() == {first.submitted: "SUCCEEDED"}
    second = check_and_submit(trigger_settings)
    assert second.active == () and second.submitted not in (None, first.submitted)


def test_jobs_of_another_definition_in_the_queue_do_not_count(
    trigger_settings: Settings, stack: BatchStack, held: Callable[[], dict[str, str]]
) -> None:
    other = stack.register(f"reindex-{uuid.uuid4().hex[:6]}")
    busy = stack.client.submit_job(jobName="reindex", jobQueue=stack.job_queue, jobDefinition=other)["jobId"]
    queue_job(trigger_settings)  # /retrain force: slot, status, FIFO message
    decision = check_and_submit(trigger_settings)
    assert decision.active == () and decision.submitted is not None
    assert stack.jobs() == {busy: "SUBMITTED", decision.submitted: "SUBMITTED"}


def test_a_message_in_flight_is_not_a_waiting_job(trigger_settings: Settings, stack: BatchStack) -> None:
    """Hidden: a worker holds it, or a failed job waits out TRAIN_RETRY_DELAY_S (the worker retries by
    extending its visibility), or a dead worker's message waits out its timeout. It is counted
    once it is visible again, so no GPU boots to wait on an empty queue."""
    queue_job(trigger_settings)  # /retrain force: slot, status, FIFO message
    queue = open_queue(trigger_settings)
    message = queue.receive(wait_s=1, visibility_s=60)
    assert message is not None
    queue.extend(message.receipt_handle, 60)
    decision = check_and_submit(trigger_settings)
    assert (decision.waiting, decision.in_flight, decision.submitted) == (0, 1, None)
    queue.release(message.receipt_handle)  # the retry delay is over
    assert check_and_submit(trigger_settings).submitted is not None


@pytest.mark.parametrize(
    "ref", ["echorag-train", "echorag-train:3", "arn:aws:batch:us-east-1:123456789012:job-definition/echorag-train:3"]
)
def test_a_job_definition_is_matched_by_name_whatever_the_revision(ref: str) -> None:
    assert definition_name(ref) == "echorag-train"


def test_missing_settings_are_one_config_error_naming_them(local_settings: Settings) -> None:
    with pytest.raises(ConfigError) as raised:
        check_and_submit(local_settings.model_copy(update={"batch_job_queue": "training"}))
    assert str(raised.value) == "the training trigger needs TRAINING_QUEUE_URL, BATCH_JOB_DEFINITION (set on the trigger function)"


# --- the Lambda handler ---------------------------------------------------------------------------


def _emf(stdout: str) -> dict[str, float]:
    """Sum of each metric in the EMF lines powertools printed."""
    totals: dict[str, float] = {}
    for line in stdout.splitlines():
        if '"_aws"' in line:
            blob = json.loads(line)
            for directive in blob["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    values = blob[metric["Name"]]
                    totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(
                        values if isinstance(values, list) else [values])
    return totals


@pytest.fixture
def lambda_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "EchoRAG")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _invoke() -> dict[str, Any]:
    from handlers.training_trigger import handler

    event = {"source": "aws.scheduler", "detail-type": "Scheduled Event", "detail": {}}
    context = LambdaContext("echorag-training-trigger", 256,
                            "arn:aws:lambda:us-east-1:123456789012:function:echorag-training-trigger")
    return handler(event, context)


def test_the_handler_submits_and_counts_it(
    trigger_settings: Settings, stack: BatchStack, held: Callable[[], dict[str, str]],
    lambda_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    lambda_env.setenv("TRAINING_QUEUE_URL", str(trigger_settings.training_queue_url))
    lambda_env.setenv("BATCH_JOB_QUEUE", stack.job_queue_arn)
    lambda_env.setenv("BATCH_JOB_DEFINITION", stack.job_definition)
    queue_job(trigger_settings)  # /retrain force: slot, status, FIFO message
    first, second = _invoke(), _invoke()
    assert first["submitted"] is not None and second["submitted"] is None
    assert json.loads(json.dumps(first))["active"] == []  # the Lambda's JSON result
    metrics = _emf(capsys.readouterr().out)
    assert metrics["TrainingJobSubmitted"] == 1 and metrics["TrainingJobsWaiting"] == 2


def test_the_handler_logs_a_missing_setting_once_per_tick_without_failing(
    lambda_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    lambda_env.setenv("TRAINING_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/123456789012/jobs.fifo")
    result = _invoke()
    assert result == {"submitted": None, "reason": "the training trigger needs BATCH_JOB_QUEUE, "
                                                    "BATCH_JOB_DEFINITION (set on the trigger function)"}
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in errors] == [f"training trigger not configured: {result['reason']}"]
    assert errors[0].exc_info is None  # one line, no traceback
    assert _emf(capsys.readouterr().out) == {"TrainingTriggerMisconfigured": 1}


# --- the worker's drain mode ------------------------------------------------------------------------


def test_drain_exits_on_its_own_once_the_queue_has_been_empty(
    local_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from training.worker import Worker

    caplog.set_level(logging.INFO, logger="training")
    assert Worker(local_settings).run(wait_s=1, drain_idle_s=1) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "training.worker"]
    assert "draining the training queue: exiting once no message has come for 1 s" in lines
    assert lines[-1].endswith("the training queue is drained; exiting (0 message(s) handled)")


def test_drain_handles_every_message_before_it_exits(local_settings: Settings) -> None:
    """Three receives of a malformed job (released each time), then the DLQ; idle, then exit."""
    from training.worker import Worker

    queue = open_queue(local_settings)
    queue.send("{not a job", dedup_id="poison")
    outcomes = Worker(local_settings, queue=queue).run(wait_s=1, drain_idle_s=1)
    assert [o.outcome for o in outcomes] == ["malformed"] * local_settings.queue_max_receives
    assert queue.depth() == 0 and [m.body for m in queue.dead_letters()] == ["{not a job"]


def test_a_message_in_flight_at_another_worker_does_not_keep_a_drain_running(local_settings: Settings) -> None:
    from training.worker import Worker

    queue = open_queue(local_settings)
    job = TrainingJob(job_id=uuid.uuid4().hex, requested_by="slack:UADMIN", reason="test", created_at=utcnow())
    queue.send(job.to_json(), dedup_id=job.job_id)
    held_elsewhere = queue.receive(wait_s=1, visibility_s=120)
    assert held_elsewhere is not None
    assert Worker(local_settings, queue=queue).run(wait_s=1, drain_idle_s=1) == []
    queue.delete(held_elsewhere.receipt_handle)  # still that worker's: its receipt is valid


def test_a_stop_request_ends_a_drain_as_it_ends_the_loop(
    local_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from training.worker import Worker

    caplog.set_level(logging.INFO, logger="training")
    worker = Worker(local_settings)
    result: list[list[Any]] = []
    runner = threading.Thread(target=lambda: result.append(worker.run(wait_s=1, drain_idle_s=3600)))
    runner.start()
    worker.request_stop()  # what SIGTERM does
    runner.join(timeout=60)
    assert not runner.is_alive() and result == [[]]
    assert any(r.getMessage().startswith("stopped before the training queue was drained") for r in caplog.records)


# --- rehearsals ------------------------------------------------------------------------------------


def test_rehearsal_queue_trigger_drain_exit(
    tiny_base: Path, fakes: dict[str, FakeServer], tmp_path: Path, moto_server: str, stack: BatchStack,
    held: Callable[[], dict[str, str]], caplog: pytest.LogCaptureFixture,
) -> None:
    """The whole cycle on moto's S3 + SQS + Batch: /retrain queues a job, the trigger starts one
    GPU worker (and no second), the worker in drain mode ends the job (not enough feedback: the
    real path, announced), drains and exits by itself; then the trigger starts nothing."""
    from training.worker import Worker

    resources = create_aws_resources(max_receives=3)
    settings = training_settings(tiny_base, tmp_path, fakes, train_min_examples=5, feedback_bucket=resources["bucket"],
                                 training_queue_url=resources["queue_url"], batch_job_queue=stack.job_queue,
                                 batch_job_definition=stack.job_definition)
    assert check_and_submit(settings).reason == "no training job waiting"
    seed_feedback(settings, approved=3, with_bad=False)
    job_id = queue_job(settings)

    started = check_and_submit(settings)
    assert started.waiting == 1 and started.submitted is not None
    assert check_and_submit(settings).submitted is None  # the instance boots: one worker at a time

    caplog.set_level(logging.INFO, logger="training")
    outcomes = Worker(settings, show_progress=False).run(wait_s=1, drain_idle_s=2)  # the container's command
    assert [(o.job_id, o.outcome) for o in outcomes] == [(job_id, "not_enough_feedback")]
    assert any("the training queue is drained; exiting (1 message(s) handled)" in r.getMessage()
               for r in caplog.records)
    store = open_store(settings)
    status = jobs.load_job_status(store, job_id)
    assert status is not None and status.state == "rejected" and jobs.active_job_id(store) is None
    assert "not enough feedback" in fakes["slack"].calls[-1]["body"]["text"]
    assert open_queue(settings).depth() == 0

    held()  # the Batch job ends (moto cannot run the container; its status is moto's, not the worker's)
    after = check_and_submit(settings)
    assert (after.waiting, after.in_flight, after.active, after.submitted) == (0, 0, (), None)


def test_rehearsal_the_batch_container_command_exits_zero_when_drained(
    tiny_base: Path, fakes: dict[str, FakeServer], tmp_path: Path
) -> None:
    """`echorag worker --drain` as its own process (the job definition's command) on the local
    twins: it ends the queued job, then exits 0 by itself, saying why."""
    values = training_values(tiny_base, fakes, train_min_examples=5)
    settings = training_settings(tiny_base, tmp_path, fakes, train_min_examples=5)
    seed_feedback(settings, approved=3, with_bad=False)
    job_id = queue_job(settings)
    worker = start_worker(tmp_path, values, "--drain", "--idle-exit-s", "1", "--wait-s", "1", "--no-sync")
    assert worker.wait(timeout_s=240) == 0, worker.output()
    output = worker.output()
    assert "draining the training queue: exiting once no message has come for 1 s" in output
    assert f"job {job_id}: not_enough_feedback" in output
    assert "the training queue is drained; exiting (1 message(s) handled)" in output
    assert open_queue(settings).depth() == 0
