"""An SQS queue via boto3 (FIFO or standard), with its dead-letter queue from the RedrivePolicy."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from core.errors import QueueError
from core.queue.base import QueueMessage


class SqsQueue:
    """An SQS FIFO queue via boto3 (AWS_ENDPOINT_URL honoured); the DLQ comes from its RedrivePolicy."""

    def __init__(self, url: str, *, max_attempts: int = 4, client: Any | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.url = url
        self.client = client or boto3.client(
            "sqs", config=Config(retries={"total_max_attempts": max_attempts, "mode": "standard"})
        )

    def __repr__(self) -> str:
        return f"SqsQueue({self.url!r})"

    @contextlib.contextmanager
    def _call(self, op: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "error")
            hint = ""
            if "ReceiptHandle" in code or "receipt handle" in err.get("Message", "").lower():
                hint = " (stale or unknown receipt: the message was received again or already deleted)"
            raise QueueError(f"SQS {op} on {self.url} failed: {code}: {err.get('Message', '')}{hint}") from exc
        except BotoCoreError as exc:
            raise QueueError(f"SQS {op} on {self.url} failed after retries: {type(exc).__name__}: {exc}") from exc

    def send(self, body: str, *, dedup_id: str, group_id: str = "training") -> str:
        """FIFO queues (`.fifo`) get the group and dedup ids; standard queues reject them, and
        their consumers deduplicate on their own (the ask worker's claim)."""
        kwargs: dict[str, Any] = {"QueueUrl": self.url, "MessageBody": body}
        if self.url.endswith(".fifo"):
            kwargs.update(MessageGroupId=group_id, MessageDeduplicationId=dedup_id)
        with self._call("send"):
            response = self.client.send_message(**kwargs)
        return str(response["MessageId"])

    def receive(self, *, wait_s: int = 20, visibility_s: int | None = None) -> QueueMessage | None:
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": 1,
            "WaitTimeSeconds": max(0, min(int(wait_s), 20)),
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if visibility_s is not None:
            kwargs["VisibilityTimeout"] = int(visibility_s)
        with self._call("receive"):
            messages = self.client.receive_message(**kwargs).get("Messages", [])
        if not messages:
            return None
        return self._message(messages[0])

    @staticmethod
    def _message(raw: dict[str, Any]) -> QueueMessage:
        return QueueMessage(
            body=raw["Body"],
            message_id=raw["MessageId"],
            receipt_handle=raw["ReceiptHandle"],
            receive_count=int(raw.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
        )

    def delete(self, receipt: str) -> None:
        with self._call("delete"):
            self.client.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    def extend(self, receipt: str, visibility_s: int) -> None:
        with self._call("change visibility"):
            self.client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=int(visibility_s)
            )

    def release(self, receipt: str) -> None:
        self.extend(receipt, 0)

    def depth(self) -> int:
        return sum(self.counts())

    def counts(self) -> tuple[int, int]:
        """(visible: waiting for a worker, in flight: received and hidden); SQS's counts lag by up
        to a minute."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        with self._call("get attributes"):
            attrs = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        return int(attrs.get(names[0], 0)), int(attrs.get(names[1], 0))

    def dead_letter_url(self) -> str | None:
        with self._call("get attributes"):
            attrs = self.client.get_queue_attributes(QueueUrl=self.url, AttributeNames=["RedrivePolicy"])
        policy = attrs.get("Attributes", {}).get("RedrivePolicy")
        if not policy:
            return None
        arn = json.loads(policy)["deadLetterTargetArn"]  # arn:aws:sqs:region:account:name
        _, _, _, _, account, name = arn.split(":", 5)
        with self._call("get DLQ url"):
            return str(self.client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"])

    def dead_letters(self) -> list[QueueMessage]:
        """Peek at up to 10 dead letters (received with visibility 0, so they stay in the DLQ)."""
        url = self.dead_letter_url()
        if url is None:
            return []
        with self._call("receive from DLQ"):
            raw = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=0,
                WaitTimeSeconds=0,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
        unique = {m["MessageId"]: m for m in raw}
        return [self._message(m) for m in unique.values()]
