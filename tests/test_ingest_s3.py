"""S3 document ingestion, driven the way AWS drives it.

A docs bucket on moto's S3 (real HTTP) sends its notifications to an SQS queue (moto implements
S3 → SQS notifications, prefix filter and `s3:TestEvent` included); the test then plays Lambda's
SQS event source mapping: receive, wrap the messages as a Lambda SQS event, call
`handlers.ingest_s3.handler`, delete what succeeded. The knowledge base is a real qdrant-client
local-mode collection (the same ClientStore code path as a Qdrant server) searched with the real
Retriever.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings, get_settings
from tests.support_slack import LambdaContext

HANDBOOK = """# 휴가 규정

연차 휴가는 입사 첫해에 15일이 주어집니다. 휴가 신청은 팀장에게 사흘 전까지 합니다.

## 병가

병가는 진단서를 내면 연 10일까지 유급으로 인정됩니다.
"""
RUNBOOK = "Deploy rollback: run `echorag adapters rollback` and the previous adapter is served again."


@dataclass
class Pipeline:
    bucket: str
    queue_url: str
    queue_arn: str
    settings: Settings
    s3: Any
    sqs: Any

    def deliver(self, extra_bodies: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
        """Play the SQS event source mapping once: returns (handler response, messageId → body)."""
        from handlers.ingest_s3 import handler

        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]
        ).get("Messages", [])
        records = [self._lambda_record(m["MessageId"], m["ReceiptHandle"], m["Body"], m["Attributes"]) for m in messages]
        for body in extra_bodies:  # messages that did not come from S3 (malformed on purpose)
            records.append(self._lambda_record(str(uuid.uuid4()), "", body, {"ApproximateReceiveCount": "1"}))
        context = LambdaContext("echorag-ingest", 2048, "arn:aws:lambda:us-east-1:123456789012:function:echorag-ingest")
        response = handler({"Records": records}, context)
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        for record in records:
            if record["messageId"] not in failed and record["receiptHandle"]:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=record["receiptHandle"])
        return response, {r["messageId"]: r["body"] for r in records}

    def _lambda_record(self, message_id: str, receipt: str, body: str, attributes: dict[str, str]) -> dict[str, Any]:
        return {
            "messageId": message_id,
            "receiptHandle": receipt,
            "body": body,
            "attributes": attributes,
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": "us-east-1",
        }

    def search(self, query: str, spaces: list[str] | None = None) -> list[Any]:
        from rag.retrieval import Retriever

        with Retriever.from_settings(self.settings) as retriever:
            return retriever.search(query, spaces=spaces, limit=5)


@pytest.fixture
def pipeline(moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    import boto3

    suffix = uuid.uuid4().hex[:10]
    bucket = f"echorag-docs-{suffix}"
    s3 = boto3.client("s3")
    sqs = boto3.client("sqs")
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"docs-events-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # The template's notification: created and removed objects under docs/ only.
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "docs/"}]}},
                }
            ]
        },
    )
    # The function reads its settings from the environment, as on Lambda.
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VECTOR_BACKEND", "local")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "EchoRAG")
    get_settings.cache_clear()
    pipe = Pipeline(bucket, queue_url, queue_arn, get_settings(), s3, sqs)
    yield pipe
    get_settings.cache_clear()


def _emf_metrics(stdout: str) -> dict[str, float]:
    """Sum of each metric in the EMF lines powertools printed."""
    totals: dict[str, float] = {}
    for line in stdout.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                values = blob[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(values if isinstance(values, list) else [values])
    return totals


def test_created_document_is_searchable_in_its_space_and_removed_when_deleted(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "docs/hr/leave policy.md"  # a space in the key: S3 sends it URL-encoded
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=key, Body=HANDBOOK.encode())
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key="notes/draft.md", Body=b"# not a document")  # no event

    response, bodies = pipeline.deliver()
    assert response == {"batchItemFailures": []}
    assert any("s3:TestEvent" in body for body in bodies.values())  # S3's wiring test, ignored
    assert sum("ObjectCreated" in body for body in bodies.values()) == 1  # notes/ never notified

    hits = pipeline.search("연차 휴가 며칠", spaces=["hr"])
    assert hits, "the uploaded document is not searchable"
    assert hits[0].space == "hr"
    assert hits[0].title == "휴가 규정"
    uri = f"s3://{pipeline.bucket}/{key}"
    assert {(h.source, h.doc_id) for h in hits} == {(uri, uri)}  # citations name the object, not /tmp
    assert all(h.chunk_id.startswith(f"{uri}#") for h in hits)
    assert "15일" in " ".join(h.text for h in hits)
    assert pipeline.search("연차 휴가 며칠", spaces=["default"]) == []  # the key's folder is the space

    # Delivered again (an SQS redelivery): nothing changes, nothing fails.
    pipeline.s3.copy_object(Bucket=pipeline.bucket, Key=key, CopySource={"Bucket": pipeline.bucket, "Key": key},
                            MetadataDirective="REPLACE")
    response, _ = pipeline.deliver()
    assert response == {"batchItemFailures": []}
    assert len({h.chunk_id for h in pipeline.search("병가 진단서", spaces=["hr"])}) == len(
        pipeline.search("병가 진단서", spaces=["hr"])
    )

    pipeline.s3.delete_object(Bucket=pipeline.bucket, Key=key)
    response, bodies = pipeline.deliver()
    assert response == {"batchItemFailures": []}
    assert any("ObjectRemoved" in body for body in bodies.values())
    assert pipeline.search("연차 휴가 며칠") == []
    assert pipeline.search("병가 진단서") == []

    metrics = _emf_metrics(capsys.readouterr().out)
    assert metrics["DocumentsIngested"] == 1
    assert metrics["DocumentsUnchanged"] == 1
    assert metrics["DocumentsDeleted"] == 1


def test_the_objects_url_metadata_links_its_citations(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    """x-amz-meta-url is the page citations link to; a changed url re-indexes, an unsafe one is dropped."""
    key = "docs/hr/leave.md"

    def put(url: str) -> list[str]:
        pipeline.s3.put_object(Bucket=pipeline.bucket, Key=key, Body=HANDBOOK.encode(), Metadata={"url": url})
        assert pipeline.deliver()[0] == {"batchItemFailures": []}
        return sorted({h.url for h in pipeline.search("연차 휴가 며칠", spaces=["hr"])})

    assert put("https://wiki.example.com/hr/leave") == ["https://wiki.example.com/hr/leave"]
    assert put("https://wiki.example.com/hr/leave-v2") == ["https://wiki.example.com/hr/leave-v2"]  # same body
    assert put("javascript:alert(1)") == [""]
    assert any("javascript:alert(1)" in r.getMessage() for r in caplog.records)


def test_a_malformed_record_is_reported_and_the_others_are_processed(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key="docs/runbook.txt", Body=RUNBOOK.encode())
    outside = json.dumps(
        {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                      "s3": {"bucket": {"name": pipeline.bucket}, "object": {"key": "uploads/x.md"}}}]}
    )
    truncated = '{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"buc'
    not_s3 = json.dumps({"Records": [{"eventSource": "aws:sns", "eventName": "Notification"}]})

    response, bodies = pipeline.deliver(extra_bodies=[truncated, outside, not_s3])

    failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    expected = {mid for mid, body in bodies.items() if body in (truncated, outside, not_s3)}
    assert failed == expected and len(failed) == 3
    hits = pipeline.search("adapter rollback")
    assert hits and hits[0].space == "default"  # docs/<file> without a folder: the default space
    assert "rollback" in hits[0].text
    assert _emf_metrics(capsys.readouterr().out)["DocumentEventsFailed"] == 3
    logged = [r for r in caplog.records if r.getMessage().startswith("document event failed")]
    assert len(logged) == 3  # each failure is logged with its reason and message id
    assert {vars(r)["message_id"] for r in logged} == failed  # fields from the log call's extra=
    assert any("outside docs/" in vars(r)["error"] for r in logged)


def test_events_are_reconciled_with_what_s3_holds_now(pipeline: Pipeline) -> None:
    """A create event whose object is already gone (events out of order) deletes instead of failing;
    an unsupported file type is skipped, not retried into the DLQ."""
    key = "docs/ops/runbook.md"
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=key, Body=f"# Runbook\n\n{RUNBOOK}".encode())
    response, _ = pipeline.deliver()
    assert response == {"batchItemFailures": []}
    assert pipeline.search("adapter rollback", spaces=["ops"])

    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=key, Body=b"# Runbook\n\nrewritten")
    pipeline.s3.delete_object(Bucket=pipeline.bucket, Key=key)
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key="docs/ops/diagram.png", Body=b"\x89PNG\r\n")
    response, bodies = pipeline.deliver()
    assert response == {"batchItemFailures": []}
    assert sum("ObjectCreated" in body for body in bodies.values()) == 2
    assert pipeline.search("adapter rollback", spaces=["ops"]) == []
    assert pipeline.search("rewritten", spaces=["ops"]) == []


def test_a_corpus_file_is_synced_row_by_row_and_removed_whole(pipeline: Pipeline) -> None:
    rows = [
        {"id": "kq-1", "title": "서울", "text": "서울은 대한민국의 수도이며 한강이 도시를 가로지른다."},
        {"id": "kq-2", "title": "부산", "text": "부산은 대한민국 제2의 도시이고 해운대 해수욕장이 유명하다."},
    ]
    key = "docs/wiki/corpus.jsonl"
    body = "\n".join(json.dumps(row, ensure_ascii=False) for row in rows).encode()
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=key, Body=body)
    response, _ = pipeline.deliver()
    assert response == {"batchItemFailures": []}
    assert pipeline.search("한강 수도", spaces=["wiki"])[0].doc_id == "kq-1"
    assert pipeline.search("해운대 해수욕장", spaces=["wiki"])[0].doc_id == "kq-2"
    assert {h.source for h in pipeline.search("한강 해운대", spaces=["wiki"])} == {"corpus.jsonl#kq-1", "corpus.jsonl#kq-2"}

    # A new version without the first row: that row is no longer searchable, the other one still is.
    pipeline.s3.put_object(Bucket=pipeline.bucket, Key=key, Body=json.dumps(rows[1], ensure_ascii=False).encode())
    response, _ = pipeline.deliver()
    assert response == {"batchItemFailures": []}
    assert pipeline.search("한강 수도", spaces=["wiki"]) == []
    assert pipeline.search("해운대 해수욕장", spaces=["wiki"])[0].doc_id == "kq-2"

    pipeline.s3.delete_object(Bucket=pipeline.bucket, Key=key)
    response, _ = pipeline.deliver()
    assert response == {"batchItemFailures": []}
    assert pipeline.search("한강 수도") == []
    assert pipeline.search("해운대 해수욕장") == []


def test_a_batch_of_only_bad_messages_is_reported_not_raised(pipeline: Pipeline) -> None:
    pipeline.deliver()  # drain S3's test event: the next batch holds nothing but bad messages
    response, bodies = pipeline.deliver(extra_bodies=["not json", json.dumps({"Records": []})])
    reported = {item["itemIdentifier"] for item in response["batchItemFailures"]}
    bad = {mid for mid, body in bodies.items() if body in ("not json", json.dumps({"Records": []}))}
    assert reported == bad and len(bad) == 2 and len(bodies) == 2


@pytest.mark.parametrize(
    ("key", "space"),
    [("docs/hr/a.md", "hr"), ("docs/a.md", "default"), ("docs/인사/규정.md", "인사"), ("docs/hr/sub/b.pdf", "hr")],
)
def test_the_first_folder_under_docs_is_the_space(key: str, space: str) -> None:
    from rag.s3_documents import parse_key

    doc = parse_key("bucket", key, default_space="default")
    assert (doc.space, doc.uri) == (space, f"s3://bucket/{key}")


@pytest.mark.parametrize("key", ["uploads/a.md", "docs/hr/../a.md", "docs//a.md", "docs/bad space/a.md", "docs/hr/.."])
def test_keys_outside_the_layout_are_refused_with_a_reason(key: str) -> None:
    from rag.s3_documents import DocumentSyncError, parse_key

    with pytest.raises(DocumentSyncError, match=r"s3://bucket/"):
        parse_key("bucket", key, default_space="default")
