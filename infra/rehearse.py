"""A rehearsal of the serverless stack on this machine, without AWS: `.venv/bin/python infra/rehearse.py`.

It reads template.yaml and stands its serverless side up on moto's server (S3, SQS, Secrets Manager),
runs each function of the HTTP API, and each function fed by a queue those write to, in a process of
its own with the environment the template gives it (a warm Lambda container: one invocation at a
time, the function's timeout enforced), and puts three stand-ins around them:

- an HTTP front door that turns each request into an API Gateway HTTP API (payload 2.0) event for the
  function the template routes it to, and the function's answer back into an HTTP response;
- the Lambda Invoke API over HTTP, so Bolt's lazy listeners self-invoke the Slack function with
  boto3 exactly as on AWS (`AWS_ENDPOINT_URL_LAMBDA`), with the template's async retries;
- SQS event source mappings: the ask queue polled into the Discord worker with SQS batch events,
  `ReportBatchItemFailures` honoured (a failed item stays on the queue).

Slack and Discord are the test suite's fake Web APIs (tests/support_*.py). The walk
(`rehearsal.walk`) sends correctly signed requests through the front door and checks real state
after each step. One line per step ("ok <step>: …"); any failure is one "FAIL <step>: …" line and
exit status 1, and the logs are kept (their folder is named).

Differences from the stack, printed at the start: the knowledge base is Qdrant's embedded engine
(one copy per function, since an embedded collection has one opener) instead of a Qdrant server;
answers are extractive (no LLM endpoint); async retries and SQS redeliveries come at once instead of
after minutes. Needs the dev requirements (moto's server). See docs/rehearsal.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rehearsal import REGION, ROOT, RehearsalError, log, one_line
from rehearsal.apigateway import FrontDoor
from rehearsal.aws_lambda import Function, LambdaService, QueuePoller, enter_container
from rehearsal.servers import serve
from rehearsal.template import FunctionSpec, Stack, load_template, mounted_specs
from rehearsal.walk import (
    DISCORD_ROUTE,
    SLACK_ADMIN,
    SLACK_CHANNEL,
    SLACK_ROUTE,
    STEPS,
    DiscordSide,
    Rig,
    SlackSide,
)

EXAMPLE_SPACES = {"hr": "handbook", "eng": "engineering"}  # space -> folder under examples/
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")  # what a container keeps of this process's env


@dataclass
class Credentials:
    """What a deployer would paste into `sam deploy --guided`, generated."""

    slack_signing_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    slack_bot_token: str = field(default_factory=lambda: f"xoxb-rehearsal-{secrets.token_hex(8)}")
    discord_bot_token: str = field(default_factory=lambda: f"rehearsal.{secrets.token_hex(12)}")
    discord_key: Any = None

    def parameters(self) -> dict[str, str]:
        from nacl.signing import SigningKey

        from tests.support_discord import APPLICATION_ID, CHANNEL_ID

        self.discord_key = self.discord_key or SigningKey.generate()
        return {
            "QdrantUrl": "http://127.0.0.1:6333",  # replaced by the embedded engine (container_env)
            "SlackSigningSecret": self.slack_signing_secret,
            "SlackBotToken": self.slack_bot_token,
            "DiscordPublicKey": self.discord_key.verify_key.encode().hex(),
            "DiscordBotToken": self.discord_bot_token,
            "DiscordApplicationId": APPLICATION_ID,
            "AdminUserIds": f"slack:{SLACK_ADMIN}",
            "ChannelSpaces": json.dumps({SLACK_CHANNEL: ["hr"], CHANNEL_ID: ["eng"]}),
        }


def aws_env(moto_url: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_SESSION_TOKEN": "rehearsal",
        "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto_url,
    }


def container_env(spec: FunctionSpec, base: dict[str, str], workdir: Path) -> dict[str, str]:
    """The template's environment for the function, what Lambda adds, and the rehearsal's stand-ins:
    the embedded Qdrant engine in place of QDRANT_URL, the container's own DATA_DIR."""
    env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
    env.update(spec.env)
    env.pop("QDRANT_URL", None)
    env.update(base)
    env.update({
        "VECTOR_BACKEND": "edge",
        "QDRANT_PATH": str(workdir / "qdrant"),
        "DATA_DIR": str(workdir / "tmp"),
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "1" if spec.alias else "$LATEST",
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
        "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _ingest_main(conn: Connection, env: dict[str, str], workdir: str, log_path: str) -> None:
    """examples/<folder> into its space, with a function's settings (collection, encoders, backend)."""
    enter_container(env, workdir, log_path)
    try:
        from core.settings import get_settings
        from rag.ingest import ingest_paths

        settings, parts = get_settings(), []
        for space, folder in EXAMPLE_SPACES.items():
            summary = ingest_paths([ROOT / "examples" / folder], space=space, settings=settings, progress=False)
            if summary.failed or not summary.added:
                conn.send(("error", f"ingesting examples/{folder} failed: {summary.line()}"))
                return
            parts.append(f"examples/{folder} -> space {space} ({summary.added} docs, {summary.chunks} chunks)")
        conn.send(("ok", "; ".join(parts) + f" in collection {settings.qdrant_collection!r} of the embedded Qdrant engine"))
    except Exception as exc:
        traceback.print_exc()
        conn.send(("error", f"ingest failed: {type(exc).__name__}: {one_line(exc)}"))


def ingest_examples(function: Function, workdir: Path) -> tuple[Path, str]:
    """The knowledge base, built in a process with `function`'s environment so that it is the
    collection the functions read; returns its folder and a summary."""
    path, home = workdir / "knowledge-base", workdir / "ingest"
    home.mkdir(parents=True, exist_ok=True)
    env = {**function.env, "QDRANT_PATH": str(path), "DATA_DIR": str(home / "tmp")}
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_ingest_main, args=(child, env, str(home), str(workdir / "logs" / "ingest.log")))
    process.start()
    child.close()
    try:
        if not parent.poll(300):
            raise RehearsalError("ingesting examples/ took over 300 s")
        kind, text = parent.recv()
    except EOFError:
        raise RehearsalError("the ingest process died (see ingest.log)") from None
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    if kind != "ok":
        raise RehearsalError(text)
    return path, str(text)


def _slack_function_id(specs: dict[str, FunctionSpec]) -> str:
    found = [lid for lid, spec in specs.items() if SLACK_ROUTE in spec.routes]
    if not found:
        raise RehearsalError(f"template.yaml has no {SLACK_ROUTE} route")
    return found[0]


def _send_failure(stack: Stack, function: Function, record: dict[str, Any]) -> None:
    """Lambda's OnFailure destination record, sent where the template says."""
    if not function.spec.on_failure_arn:
        return
    body = {"version": "1.0", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "requestContext": {"functionArn": function.spec.invoked_arn, "condition": "RetriesExhausted",
                               "approximateInvokeCount": record["attempts"]},
            "requestPayload": record["requestPayload"],
            "responsePayload": {"errorMessage": record["error"]}}
    stack.sqs.send_message(QueueUrl=stack.queue_url(function.spec.on_failure_arn), MessageBody=json.dumps(body))


@contextmanager
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def rig_up(template_path: Path, workdir: Path, overrides: dict[str, str]) -> Iterator[Rig]:
    """moto, the stack's resources, fake platforms, containers, the Lambda API, pollers, the front door."""
    from tests.support_discord import FakeDiscord
    from tests.support_slack import FakeSlack

    with ExitStack() as stack_ctx:
        moto_url = stack_ctx.enter_context(moto_server())
        os.environ.update(aws_env(moto_url))  # this process's boto3 clients: the rehearsal's own checks
        fake_slack = FakeSlack().start()
        stack_ctx.callback(fake_slack.stop)
        fake_discord = FakeDiscord().start()
        stack_ctx.callback(fake_discord.stop)
        credentials = Credentials()
        stack = Stack(load_template(template_path), {**credentials.parameters(), **overrides})
        specs, consumers = mounted_specs(stack)
        missing = sorted({SLACK_ROUTE, DISCORD_ROUTE} - {route for spec in specs.values() for route in spec.routes})
        if missing:
            raise RehearsalError(f"template.yaml has no {' or '.join(missing)} route")
        functions: dict[str, Function] = {}
        service = LambdaService(functions, lambda fn, record: _send_failure(stack, fn, record))
        stack_ctx.callback(service.close)
        lambda_url = stack_ctx.enter_context(serve(service.handle))
        base = {**aws_env(moto_url), "AWS_ENDPOINT_URL_LAMBDA": lambda_url,
                "SLACK_API_BASE_URL": fake_slack.base_url, "DISCORD_API_BASE_URL": fake_discord.url}
        functions.update(start_functions(specs, base, workdir, stack_ctx))
        kb_path, ingested = ingest_examples(functions[_slack_function_id(specs)], workdir)
        for function in functions.values():
            shutil.copytree(kb_path, function.workdir / "qdrant")
        pollers = start_pollers(stack, consumers, functions, stack_ctx)
        routes = {route: functions[lid] for lid, spec in specs.items() for route in spec.routes}
        door = FrontDoor(routes)
        door_url = stack_ctx.enter_context(serve(door.handle))
        llm = functions[_slack_function_id(specs)].env.get("LLM_BASE_URL")
        print(f"rehearsal: moto {moto_url} (S3, SQS, Secrets Manager); Lambda Invoke API {lambda_url}; "
              f"HTTP API front door {door_url}; knowledge base: the embedded Qdrant engine, copied per function "
              "(the stack uses a Qdrant server, QDRANT_URL); answers: "
              + (f"the LLM at {llm}" if llm else "extractive (no LLM endpoint)"), flush=True)
        rig = Rig(stack=stack, functions=functions, routes=routes, lambda_service=service, pollers=pollers,
                  slack=SlackSide(door_url + "/slack/events", credentials.slack_signing_secret, fake_slack),
                  discord=DiscordSide(door_url + "/discord/interactions", credentials.discord_key, fake_discord),
                  door=door, workdir=workdir, facts={"ingested": ingested})
        yield rig


def start_functions(specs: dict[str, FunctionSpec], base: dict[str, str], workdir: Path,
                    exits: ExitStack) -> dict[str, Function]:
    """One container per function, spawned now: their cold starts run while the knowledge base is built."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    functions = {}
    for lid, spec in specs.items():
        home = workdir / "functions" / spec.name
        functions[lid] = Function(spec, container_env(spec, base, home), home, workdir / "logs" / f"{spec.name}.log")
        functions[lid].start()
        exits.callback(functions[lid].close)
    return functions


def start_pollers(stack: Stack, consumers: dict[str, tuple[FunctionSpec, int, bool]], functions: dict[str, Function],
                  exits: ExitStack) -> dict[str, QueuePoller]:
    """The SQS event source mappings, by queue logical id."""
    pollers = {}
    for queue_id, (spec, batch, reports) in consumers.items():
        made = stack.create(queue_id)
        pollers[queue_id] = QueuePoller(stack.sqs, made["QueueUrl"], made["Arn"], functions[spec.logical_id],
                                        batch, reports).start()
        exits.callback(pollers[queue_id].close)
    return pollers


def walk(rig: Rig) -> None:
    for name, step in STEPS:
        try:
            detail = step(rig)
        except RehearsalError as exc:
            raise RehearsalError(f"{name}: {exc}") from None
        print(f"ok {name}: {detail}", flush=True)


def _parameter(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rehearse the SAM stack locally on moto, without AWS.")
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, data) after a pass")
    parser.add_argument("--parameter", action="append", default=[], type=_parameter, metavar="NAME=VALUE",
                        help="a template parameter, as for sam deploy (e.g. LlmBaseUrl=http://127.0.0.1:8000/v1)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="echorag-rehearsal-"))
    logging.basicConfig(filename=workdir / "rehearsal.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with rig_up(args.template, workdir, dict(args.parameter)) as rig:
            walk(rig)
    except RehearsalError as exc:
        logs = workdir / "logs"
        print(f"FAIL {one_line(exc, 600)}" + (f" (logs: {logs})" if any(logs.glob("*.log")) else ""), flush=True)
        return 1
    except Exception as exc:  # a failure the rehearsal did not foresee: still one line, details in the log
        log.exception("rehearsal crashed")
        print(f"FAIL {type(exc).__name__}: {one_line(exc)} (traceback: {workdir / 'rehearsal.log'})", flush=True)
        return 1
    print(f"rehearsal passed: {len(STEPS)} steps in {time.monotonic() - started:.1f} s", flush=True)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
