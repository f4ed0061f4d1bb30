"""Lambda as the stack runs it: a warm container (a process) per function, the async Invoke API
that Bolt's lazy listeners call with boto3, and the SQS event source mapping of the ask queue."""

from __future__ import annotations

import dataclasses
import importlib
import json
import multiprocessing
import os
import queue
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from rehearsal import REGION, WAIT_S, RehearsalError, log
from rehearsal.servers import HttpReply, HttpRequest
from rehearsal.template import FunctionSpec


class FunctionError(Exception):
    """The function raised, timed out or could not start (what Lambda reports as a function error)."""


@dataclass
class LambdaContext:
    """The attributes of the Python runtime's context object that handlers and powertools read."""

    function_name: str
    function_version: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    aws_request_id: str
    log_group_name: str
    log_stream_name: str
    deadline: float
    identity: Any = None
    client_context: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))


def enter_container(env: dict[str, str], workdir: str, log_path: str) -> None:
    """This process becomes a function's environment: its variables only, its folder, its log."""
    with open(log_path, "ab", buffering=0) as logfile:
        os.dup2(logfile.fileno(), 1)  # the function's stdout/stderr are its CloudWatch log
        os.dup2(logfile.fileno(), 2)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(workdir)  # no developer's .env is read from here


def _container_main(conn: Connection, handler: str, env: dict[str, str], workdir: str, log_path: str) -> None:
    """A container's process: the function's environment only, init (import), then invocations."""
    enter_container(env, workdir, log_path)
    module_name, _, attribute = handler.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:
        traceback.print_exc()
        conn.send(("init_error", f"Runtime.ImportModuleError: {type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", ""))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        _, payload, context = message
        try:
            result = json.dumps(function(json.loads(payload), LambdaContext(**context)))
            conn.send(("ok", result))
        except Exception as exc:
            traceback.print_exc()
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


class Function:
    """A deployed function: one container (a process), one invocation at a time, its timeout enforced."""

    def __init__(self, spec: FunctionSpec, env: dict[str, str], workdir: Path, log_path: Path) -> None:
        self.spec, self.env, self.workdir, self.log_path = spec, env, workdir, log_path
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._ready = False
        self._closed = False
        self.invocations = 0

    def start(self) -> None:
        """Cold start: spawn the container (init runs meanwhile; the first invocation waits for it)."""
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process = ctx.Process(target=_container_main, daemon=True, name=self.spec.name,
                                    args=(child, self.spec.handler, self.env, str(self.workdir), str(self.log_path)))
        self._process.start()
        child.close()
        self._conn, self._ready = parent, False

    def close(self) -> None:
        """The rehearsal is over: stop the container and start no new one."""
        self._closed = True
        self.stop()

    def stop(self) -> None:
        if self._conn is not None:
            with suppress(OSError):
                self._conn.send(("stop",))
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
        self._process = self._conn = None

    def invoke(self, event: dict[str, Any], *, invoked_arn: str | None = None) -> Any:
        with self._lock:
            if self._closed:
                raise FunctionError(f"{self.spec.name} is shut down")
            if self._conn is None:
                self.start()
            assert self._conn is not None
            self.invocations += 1
            if not self._ready:
                self._await_init(self._conn)
            context = self._context(invoked_arn or self.spec.invoked_arn)
            self._conn.send(("invoke", json.dumps(event), dataclasses.asdict(context)))
            if not self._conn.poll(self.spec.timeout_s):
                self.stop()  # Lambda kills the environment; the next invocation starts a new one
                raise FunctionError(f"Task timed out after {self.spec.timeout_s:.2f} seconds")
            kind, payload = self._recv(self._conn)
            if kind == "error":
                raise FunctionError(payload)
            return json.loads(payload)

    def _await_init(self, conn: Connection) -> None:
        if not conn.poll(120):  # Lambda allows 10 s; a loaded CI machine needs more to import Bolt and boto3
            self.stop()
            raise FunctionError(f"{self.spec.name} did not finish its init in 120 s")
        kind, payload = self._recv(conn)
        if kind != "ready":
            self.stop()
            raise FunctionError(payload)
        self._ready = True

    def _recv(self, conn: Connection) -> tuple[str, str]:
        try:
            kind, payload = conn.recv()
        except EOFError:
            self.stop()
            raise FunctionError(f"Runtime.ExitError: the {self.spec.name} container exited") from None
        return str(kind), str(payload)

    def _context(self, invoked_arn: str) -> LambdaContext:
        return LambdaContext(
            function_name=self.spec.name,
            function_version="1" if self.spec.alias else "$LATEST",
            invoked_function_arn=invoked_arn,
            memory_limit_in_mb=self.spec.memory_mb,
            aws_request_id=str(uuid.uuid4()),
            log_group_name=f"/aws/lambda/{self.spec.name}",
            log_stream_name=f"{time.strftime('%Y/%m/%d')}/[1]{uuid.uuid4().hex}",
            deadline=time.time() + self.spec.timeout_s,
        )


@dataclass
class AsyncOutcome:
    function: str
    attempts: int
    error: str | None


class LambdaService:
    """`Invoke` over HTTP as boto3 calls it (Bolt's lazy runner), with Lambda's async semantics:
    202 at once, the event run later, retried `MaximumRetryAttempts` times, dropped past
    `MaximumEventAgeInSeconds`, and sent to the OnFailure destination when it never succeeds."""

    def __init__(self, functions: dict[str, Function], on_failure: Callable[[Function, dict[str, Any]], None]) -> None:
        self.functions = functions
        self.on_failure = on_failure
        self.outcomes: list[AsyncOutcome] = []
        self._events: queue.Queue[tuple[Function, dict[str, Any], str, float] | None] = queue.Queue()
        self._pending = 0
        self._closing = False
        self._idle = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="lambda-async", daemon=True)
        self._worker.start()

    def handle(self, request: HttpRequest) -> HttpReply:
        match = re.fullmatch(r"/2015-03-31/functions/([^/]+)/invocations", request.path)
        if request.method != "POST" or match is None:
            return _lambda_error(404, "UnknownOperationException", f"{request.method} {request.path}")
        name = unquote(match.group(1))
        qualifier = dict(parse_qsl(request.query)).get("Qualifier")
        function, arn = self._lookup(name, qualifier)
        if function is None:
            return _lambda_error(404, "ResourceNotFoundException", f"Function not found: {name}")
        kind = {k.lower(): v for k, v in request.headers}.get("x-amz-invocation-type", "RequestResponse")
        try:
            event = json.loads(request.body or b"{}")
        except ValueError:
            return _lambda_error(400, "InvalidRequestContentException", "Could not parse request body into json")
        if kind == "Event":
            with self._idle:
                self._pending += 1
            self._events.put((function, event, arn, time.monotonic()))
            return HttpReply(202, {"x-amzn-requestid": str(uuid.uuid4())})
        if kind == "DryRun":
            return HttpReply(204)
        try:
            return HttpReply(200, {"content-type": "application/json"}, json.dumps(function.invoke(event, invoked_arn=arn)).encode())
        except FunctionError as exc:
            body = json.dumps({"errorMessage": str(exc), "errorType": "Unhandled"}).encode()
            return HttpReply(200, {"x-amz-function-error": "Unhandled"}, body)

    def _lookup(self, name: str, qualifier: str | None) -> tuple[Function | None, str]:
        """A function by name, name:qualifier, or (partial) ARN; the qualifier must be its alias."""
        parts = name.split(":")
        if name.startswith("arn:"):
            if len(parts) < 7:
                return None, ""
            base, qual = parts[6], (parts[7] if len(parts) > 7 else None)
        else:
            base, qual = parts[0], (parts[1] if len(parts) > 1 else None)
        qual = qual or qualifier
        function = next((f for f in self.functions.values() if f.spec.name == base), None)
        if function is None or qual not in (None, "$LATEST", function.spec.alias):
            return None, ""
        return function, function.spec.arn + (f":{qual}" if qual else "")

    def _run(self) -> None:
        while (item := self._events.get()) is not None:
            function, event, arn, queued_at = item
            try:
                if not self._closing:  # the rehearsal is over: what is still queued is dropped
                    self.outcomes.append(self._attempts(function, event, arn, queued_at))
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _attempts(self, function: Function, event: dict[str, Any], arn: str, queued_at: float) -> AsyncOutcome:
        error, attempts = "", 0
        while attempts <= function.spec.retries:
            if time.monotonic() - queued_at > function.spec.max_event_age_s:
                error = "dropped: older than MaximumEventAgeInSeconds" + (f" (last error: {error})" if error else "")
                break
            attempts += 1
            try:
                function.invoke(event, invoked_arn=arn)
                return AsyncOutcome(function.spec.name, attempts, None)
            except FunctionError as exc:
                error = str(exc)
                log.error("async invocation %d of %s failed: %s", attempts, function.spec.name, exc)
        self.on_failure(function, {"requestPayload": event, "error": error, "attempts": attempts})
        return AsyncOutcome(function.spec.name, attempts, error)

    def wait_idle(self, timeout_s: float = WAIT_S) -> None:
        with self._idle:
            if not self._idle.wait_for(lambda: self._pending == 0, timeout=timeout_s):
                raise RehearsalError(f"async invocations still running after {timeout_s:.0f} s")

    def close(self) -> None:
        self._closing = True
        self._events.put(None)
        self._worker.join(timeout=5)


def _lambda_error(status: int, kind: str, message: str) -> HttpReply:
    body = json.dumps({"Type": "User", "message": message}).encode()
    return HttpReply(status, {"content-type": "application/json", "x-amzn-errortype": kind}, body)


@dataclass
class PollOutcome:
    receipts: dict[str, str]  # message id -> receipt handle
    failed_ids: list[str]
    error: str | None


class QueuePoller:
    """An SQS event source mapping: receive a batch, invoke the function with it, delete what
    succeeded (with ReportBatchItemFailures, all but the reported items; an error keeps them all)."""

    def __init__(self, sqs: Any, queue_url: str, queue_arn: str, function: Function, batch: int, reports: bool) -> None:
        self.sqs, self.url, self.arn, self.function = sqs, queue_url, queue_arn, function
        self.batch, self.reports = batch, reports
        self.outcomes: list[PollOutcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poll-{function.spec.name}", daemon=True)

    def start(self) -> QueuePoller:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self.sqs.receive_message(
                    QueueUrl=self.url, MaxNumberOfMessages=self.batch, WaitTimeSeconds=1,
                    MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"],
                ).get("Messages", [])
            except Exception as exc:  # moto going away at shutdown, or a real problem: the log says
                log.warning("polling %s failed: %s", self.url, exc)
                self._stop.wait(0.5)
                continue
            if messages:
                self.outcomes.append(self._deliver(messages))

    def _deliver(self, messages: list[dict[str, Any]]) -> PollOutcome:
        receipts = {m["MessageId"]: m["ReceiptHandle"] for m in messages}
        ids = list(receipts)
        try:
            result = self.function.invoke(sqs_event(messages, self.arn))
        except FunctionError as exc:  # the whole batch becomes visible again after its timeout
            return PollOutcome(receipts, ids, str(exc))
        failed = self._failed_ids(result, ids)
        for message_id, receipt in receipts.items():
            if message_id not in failed:
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)
        return PollOutcome(receipts, failed, None)

    def outcome(self, n: int) -> PollOutcome | None:
        """The n-th batch delivered (1-based), once it has been."""
        return self.outcomes[n - 1] if len(self.outcomes) >= n else None

    def redeliver_now(self, outcome: PollOutcome) -> None:
        """What waiting out the visibility timeout does to the failed items: visible again."""
        for message_id in outcome.failed_ids:
            self.sqs.change_message_visibility(QueueUrl=self.url, ReceiptHandle=outcome.receipts[message_id],
                                               VisibilityTimeout=0)

    def _failed_ids(self, result: Any, ids: list[str]) -> list[str]:
        if not self.reports:
            return []
        items = result.get("batchItemFailures", []) if isinstance(result, dict) else None
        failed = [str(item.get("itemIdentifier")) for item in items or [] if isinstance(item, dict)]
        if items is None or any(f not in ids for f in failed):  # Lambda: an invalid report fails the batch
            return ids
        return failed


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The event Lambda's SQS poller builds from received messages."""

    def attributes(value: dict[str, Any]) -> dict[str, Any]:
        return {"stringValue": value.get("StringValue"), "binaryValue": value.get("BinaryValue"),
                "stringListValues": [], "binaryListValues": [], "dataType": value.get("DataType")}

    return {"Records": [
        {
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {k: attributes(v) for k, v in m.get("MessageAttributes", {}).items()},
            "md5OfBody": m.get("MD5OfBody", ""), "eventSource": "aws:sqs", "eventSourceARN": queue_arn,
            "awsRegion": REGION,
        }
        for m in messages
    ]}
