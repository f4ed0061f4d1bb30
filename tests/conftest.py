"""Shared fixtures: a real S3/SQS endpoint (moto's ThreadedMotoServer over HTTP) and settings for
the AWS backends and for the embedded (local directory + SQLite) twins.

- `moto_server`: session-wide server on 127.0.0.1; sets AWS_ENDPOINT_URL and fake credentials.
- `aws_settings`: Settings with a fresh bucket, FIFO queue and FIFO dead-letter queue on moto.
- `local_settings`: Settings with DATA_DIR = tmp_path (local store + SQLite queue).
- `backend_settings`: parametrised over both ("local", "aws"), for contract tests.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from core.settings import Settings

if TYPE_CHECKING:
    from tests.support_training import FakeServer

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "true",
}


@pytest.fixture(autouse=True)
def _no_retrieval_feedback_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many suites share one module-scoped knowledge base: votes cast in one test must not re-rank
    the next test's passages. The retrieval-feedback tests turn it back on with their own base."""
    monkeypatch.setenv("RETRIEVAL_FEEDBACK", "false")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A ThreadedMotoServer on an ephemeral port; yields its endpoint URL (also in AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in [*_AWS_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(_AWS_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def create_aws_resources(*, max_receives: int = 3, visibility_s: int = 30) -> dict[str, str]:
    """A fresh bucket, FIFO queue and FIFO DLQ (RedrivePolicy maxReceiveCount) on the endpoint."""
    import boto3

    suffix = uuid.uuid4().hex[:12]
    bucket = f"echorag-test-{suffix}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    sqs = boto3.client("sqs")
    dlq_url = sqs.create_queue(QueueName=f"jobs-dlq-{suffix}.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=f"jobs-{suffix}.fifo",
        Attributes={
            "FifoQueue": "true",
            "VisibilityTimeout": str(visibility_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}),
        },
    )["QueueUrl"]
    return {"bucket": bucket, "queue_url": queue_url, "dlq_url": dlq_url}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings isolated from the developer's .env; `overrides` use field names (lower case)."""
    return Settings(_env_file=None, data_dir=data_dir, **overrides)


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    """Embedded defaults under tmp_path: DATA_DIR/store and DATA_DIR/queue.sqlite."""
    return make_settings(tmp_path)


@pytest.fixture
def aws_settings(tmp_path: Path, moto_server: str) -> Settings:
    """A fresh bucket + FIFO queue (+ DLQ after QUEUE_MAX_RECEIVES=3) on the moto server."""
    resources = create_aws_resources(max_receives=3)
    return make_settings(
        tmp_path,
        feedback_bucket=resources["bucket"],
        training_queue_url=resources["queue_url"],
        queue_max_receives=3,
    )


@pytest.fixture(params=["local", "aws"])
def backend_settings(request: pytest.FixtureRequest) -> Settings:
    """Each contract test runs twice: on the local twins and on S3 + SQS over HTTP (moto)."""
    settings: Settings = request.getfixturevalue(f"{request.param}_settings")
    return settings


# --- the training loop (tests/support_training.py) ---------------------------------------------


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random base model every training test trains on (built once per session)."""
    import torch

    from tests.support_training import build_tiny_base

    torch.set_num_threads(1)  # a 64-wide model gains nothing from more; shared CI cores stay free
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeServer]]:
    """Slack, Discord and vLLM stand-ins that record what the training worker sends them."""
    from tests.support_training import FakeServer

    servers = {kind: FakeServer(kind) for kind in ("slack", "discord", "vllm")}
    yield servers
    for server in servers.values():
        server.close()
