"""Test doubles for the platforms around the Slack handler (Slack itself cannot run here).

- `FakeSlack`: a local Slack Web API (http.server on 127.0.0.1) that keeps channels and threads,
  records every call, answers like Slack (`auth.test`, `chat.postMessage`, `chat.update`,
  `chat.postEphemeral`, `chat.startStream`/`appendStream`/`stopStream`, `conversations.replies`, `views.publish`, `views.open`, `assistant.threads.*`, `response_url` POSTs) and can be told to fail
  the next call(s) of a method with a Slack error, or to hang the next call until it stops.
- `FakeLambda`: the Lambda service's async `Invoke` as Bolt's lazy listener runner uses it: runs
  the function synchronously and, like Lambda, retries an invocation that raised (twice); it can
  also kill an invocation (a timeout: nothing after that point runs) and wait before retrying.
- `signed_event(...)`: an API Gateway HTTP API (v2) proxy event signed with Slack's scheme.
- `make_rig(...)`: the Slack Lambda handler wired to both, with the env a test names (`Rig`
  delivers mentions, reactions, commands and button presses as Slack would).

One module (~530 lines): the fake Slack, the fake Lambda, the signed-request builders and the rig
are used together by every Slack test.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse

import pytest
from slack_sdk.signature import SignatureVerifier

from bots.slack.app import services_of
from core.contracts import make_answer_id
from core.records import load_answer
from core.settings import Settings, get_settings
from core.store import open_store

BOT_USER_ID = "UBOT0001"
BOT_ID = "BBOT0001"
TEAM_ID = "T0000001"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str = ""


@dataclass
class FakeSlack:
    """Slack's Web API, in memory, over real HTTP."""

    calls: list[Call] = field(default_factory=list)
    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # channel -> messages
    responses: list[dict[str, Any]] = field(default_factory=list)  # response_url posts
    homes: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> the Home view published last
    modals: list[dict[str, Any]] = field(default_factory=list)  # views.open
    failures: dict[str, list[str]] = field(default_factory=dict)  # method -> errors for next calls
    hangs: dict[str, threading.Event] = field(default_factory=dict)  # method -> set when the hung call arrives
    lost: set[str] = field(default_factory=set)  # methods whose next answer is lost after doing the work
    limited: set[str] = field(default_factory=set)  # methods whose next call is refused with HTTP 429
    _unhang: threading.Event = field(default_factory=threading.Event)
    _ts: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _reply(self, payload: dict[str, Any] | str, status: int = 200) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "text/plain" if isinstance(payload, str) else "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _args(self) -> dict[str, Any]:
                url = urlparse(self.path)
                args: dict[str, Any] = dict(parse_qsl(url.query))
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                if raw and "json" in (self.headers.get("content-type") or ""):
                    args.update(json.loads(raw))
                elif raw:
                    args.update(dict(parse_qsl(raw)))
                for key in ("blocks", "metadata", "chunks"):
                    if isinstance(args.get(key), str):
                        args[key] = json.loads(args[key])
                return args

            def do_GET(self) -> None:
                self._dispatch()

            def do_POST(self) -> None:
                self._dispatch()

            def _dispatch(self) -> None:
                path = urlparse(self.path).path
                args = self._args()
                token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                if path.startswith("/response/"):
                    with fake._lock:
                        fake.responses.append({"url": path, **args})
                    self._reply("ok")
                    return
                method = path.removeprefix("/api/")
                with fake._lock:
                    hung = fake.hangs.pop(method, None)
                    limited = method in fake.limited
                    fake.limited.discard(method)
                if limited:  # Slack's rate limit: nothing done, try again after Retry-After seconds
                    data = json.dumps({"ok": False, "error": "ratelimited"}).encode()
                    self.send_response(429)
                    self.send_header("retry-after", "0")
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if hung is not None:  # never answer while the test runs (a Lambda timeout kills the caller)
                    hung.set()
                    fake._unhang.wait()
                    self._reply({"ok": False, "error": "request_timeout"})
                    return
                result = fake.handle(method, args, token)
                with fake._lock:
                    lost = method in fake.lost
                    fake.lost.discard(method)
                if lost:
                    self._reply({"ok": False, "error": "service_unavailable"}, status=503)
                    return
                self._reply(result)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._unhang.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def response_url(self, name: str) -> str:
        assert self._server
        return f"http://127.0.0.1:{self._server.server_address[1]}/response/{name}"

    # --- state -------------------------------------------------------------------------------

    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def user_message(self, channel: str, user: str, text: str, *, thread_ts: str | None = None) -> dict[str, Any]:
        """A message a person posted (Slack would then deliver it as an event)."""
        with self._lock:
            message = {"type": "message", "user": user, "text": text, "ts": self.next_ts()}
            if thread_ts:
                message["thread_ts"] = thread_ts
            self.messages.setdefault(channel, []).append(message)
            return dict(message)

    def rate_limit_next(self, method: str) -> None:
        """The next call of `method` gets HTTP 429 with Retry-After, as Slack's rate limits answer."""
        self.limited.add(method)

    def lose_next_response(self, method: str) -> None:
        """The next call of `method` is carried out, but its answer is lost on the way back (a 503)."""
        self.lost.add(method)

    def fail_next(self, method: str, error: str = "internal_error", times: int = 1) -> None:
        self.failures.setdefault(method, []).extend([error] * times)

    def hang_next(self, method: str) -> threading.Event:
        """The next call of `method` gets no answer until `unhang()` or `stop()` (then a
        `request_timeout` error); the returned event is set when the call arrives."""
        arrived = threading.Event()
        with self._lock:
            self.hangs[method] = arrived
        return arrived

    def unhang(self) -> None:
        self._unhang.set()

    def calls_of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(
                (m for m in self.messages.get(channel, []) if thread_ts in (m["ts"], m.get("thread_ts"))),
                key=lambda m: m["ts"],
            )

    def bot_messages(self, channel: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages.get(channel, []) if m.get("bot_id") == BOT_ID]

    # --- the Web API -------------------------------------------------------------------------

    def handle(self, method: str, args: dict[str, Any], token: str) -> dict[str, Any]:
        with self._lock:
            self.calls.append(Call(method=method, args=copy.deepcopy(args), token=token))
            pending = self.failures.get(method)
            if pending:
                return {"ok": False, "error": pending.pop(0)}
            if not token.startswith("xoxb-"):
                return {"ok": False, "error": "not_authed"}
            if method == "auth.test":
                return {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "echorag",
                        "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID}
            if method == "chat.postMessage":
                return self._post(args)
            if method == "chat.update":
                return self._update(args)
            if method in ("chat.startStream", "chat.appendStream", "chat.stopStream"):
                return self._stream(method, args)
            if method == "chat.postEphemeral":
                return {"ok": True, "message_ts": self.next_ts()}
            if method == "conversations.replies":
                return self._replies(args)
            if method == "conversations.history":
                return self._history(args)
            if method == "views.publish":
                return self._publish(args)
            if method.startswith("assistant.threads."):  # setStatus, setTitle, setSuggestedPrompts
                if not args.get("channel_id") or not args.get("thread_ts"):
                    return {"ok": False, "error": "invalid_arguments"}
                return {"ok": True}
            if method == "views.open":
                view = args.get("view")
                view = json.loads(view) if isinstance(view, str) else view
                if not args.get("trigger_id") or not isinstance(view, dict) or view.get("type") != "modal":
                    return {"ok": False, "error": "invalid_arguments"}
                self.modals.append(view)
                return {"ok": True, "view": {"id": "VMODAL1", **view}}
            return {"ok": False, "error": "unknown_method"}

    def _check_blocks(self, args: dict[str, Any]) -> str | None:
        text, blocks = args.get("text") or "", args.get("blocks") or []
        if not text and not blocks:
            return "no_text"
        if len(text) > 40_000:
            return "msg_too_long"
        if len(blocks) > 50:
            return "invalid_blocks"
        for block in blocks:
            if block.get("type") == "section" and len(block["text"]["text"]) > 3000:
                return "invalid_blocks"
        if sum(len(b["text"]) for b in blocks if b.get("type") == "markdown") > 12_000:
            return "invalid_blocks"  # the markdown blocks of one message, together
        return None

    def _post(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        error = self._check_blocks(args)
        if error:
            return {"ok": False, "error": error}
        message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "text": args.get("text", ""),
                   "blocks": args.get("blocks", []), "ts": self.next_ts()}
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        if args.get("metadata"):
            metadata = args["metadata"]
            message["metadata"] = json.loads(metadata) if isinstance(metadata, str) else metadata
        self.messages.setdefault(channel, []).append(message)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": message}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        error = self._check_blocks(args)
        if error:
            return {"ok": False, "error": error}
        for message in self.messages.get(args.get("channel", ""), []):
            if message["ts"] == args.get("ts") and message.get("bot_id") == BOT_ID:
                message.update(text=args.get("text", ""), blocks=args.get("blocks", []), edited=True)
                return {"ok": True, "channel": args["channel"], "ts": message["ts"], "text": message["text"]}
        return {"ok": False, "error": "message_not_found"}

    def _stream(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        """Slack's streamed messages: started in a thread (outside a DM, for a named recipient),
        appended to while streaming, then stopped with blocks under the text."""
        channel = args.get("channel") or ""
        if method == "chat.startStream":
            if not channel or not args.get("thread_ts"):
                return {"ok": False, "error": "invalid_arguments"}
            if not channel.startswith("D") and not (args.get("recipient_team_id") and args.get("recipient_user_id")):
                return {"ok": False, "error": "missing_recipient_user_id"}
            message: dict[str, Any] = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "text": "",
                                       "blocks": [], "ts": self.next_ts(), "thread_ts": args["thread_ts"],
                                       "streaming": True, "tasks": {}, "appends": []}
            self.messages.setdefault(channel, []).append(message)
        else:
            found = [m for m in self.messages.get(channel, []) if m["ts"] == args.get("ts")]
            if not found:
                return {"ok": False, "error": "message_not_found"}
            message = found[0]
            if not message.get("streaming"):
                return {"ok": False, "error": "message_not_in_streaming_state"}
        chunks = list(args.get("chunks") or [])
        if args.get("markdown_text"):
            chunks.insert(0, {"type": "markdown_text", "text": args["markdown_text"]})
        for chunk in chunks:
            if chunk.get("type") == "markdown_text":
                if len(chunk["text"]) > 12_000:
                    return {"ok": False, "error": "msg_too_long"}
                message["text"] += chunk["text"]
                message["appends"].append(chunk["text"])
            elif chunk.get("type") == "task_update":
                message["tasks"][chunk["id"]] = chunk["status"]
        if method == "chat.stopStream":
            error = self._check_blocks({"text": message["text"], "blocks": args.get("blocks") or []})
            if error:
                return {"ok": False, "error": error}
            message.update(blocks=args.get("blocks") or [], streaming=False)
        return {"ok": True, "channel": channel, "ts": message["ts"]}

    def _publish(self, args: dict[str, Any]) -> dict[str, Any]:
        """A Home tab view: Slack allows up to 100 blocks and needs `type: home`."""
        view = args.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        if not args.get("user_id") or not isinstance(view, dict) or view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        if len(view.get("blocks", [])) > 100:
            return {"ok": False, "error": "invalid_blocks"}
        self.homes[str(args["user_id"])] = view
        return {"ok": True, "view": {"id": "V" + self.next_ts().replace(".", ""), **view}}

    def _history(self, args: dict[str, Any]) -> dict[str, Any]:
        """The channel's top-level messages, newest first (thread replies are not in the history)."""
        channel = args.get("channel", "")
        top = [m for m in self.messages.get(channel, []) if m.get("thread_ts") in (None, m["ts"])]
        newest = sorted(top, key=lambda m: m["ts"], reverse=True)[: int(args.get("limit") or 100)]
        return {"ok": True, "messages": copy.deepcopy(newest), "has_more": False}

    def _replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel", ""), args.get("ts", "")
        thread = sorted(
            (m for m in self.messages.get(channel, []) if ts in (m["ts"], m.get("thread_ts"))),
            key=lambda m: m["ts"],
        )
        if not thread:
            return {"ok": False, "error": "thread_not_found"}
        start, limit = int(args.get("cursor") or 0), int(args.get("limit") or 1000)
        page, more = thread[start:start + limit], start + limit < len(thread)
        return {"ok": True, "messages": copy.deepcopy(page), "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}


# --- Lambda ----------------------------------------------------------------------------------


@dataclass
class LambdaContext:
    function_name: str = "echorag-slack"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:echorag-slack"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@dataclass
class FakeLambda:
    """`lambda_client.invoke(InvocationType="Event")` run in-process, with Lambda's async retries."""

    function: Callable[[dict[str, Any], Any], Any]
    retries: int = 2
    throttle_next: int = 0  # this many invokes fail like a throttled Invoke API call
    kill_when: threading.Event | None = None  # the next invocation is killed (timed out) once this is set
    retry_delay_s: float = 0.0  # Lambda waits a minute or two before an async retry
    invocations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    killed: list[threading.Thread] = field(default_factory=list)  # killed invocations, still blocked

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: str) -> dict[str, Any]:
        assert InvocationType == "Event"
        if self.throttle_next:
            self.throttle_next -= 1
            raise RuntimeError("TooManyRequestsException: Rate exceeded")
        for _attempt in range(1 + self.retries):
            event = json.loads(Payload)
            self.invocations.append(event)
            try:
                self._run(event, LambdaContext(invoked_function_arn=FunctionName))
                break
            except Exception as exc:  # Lambda records the error and retries the async event
                self.errors.append(exc)
                time.sleep(self.retry_delay_s)
        return {"StatusCode": 202}

    def _run(self, event: dict[str, Any], context: LambdaContext) -> None:
        kill_when, self.kill_when = self.kill_when, None
        if kill_when is None:
            self.function(event, context)
            return
        # The invocation runs in a thread that is abandoned once `kill_when` is set: like a Lambda
        # timeout, none of its exception handlers or `finally` blocks run before the retry starts.
        outcome: list[BaseException | None] = []

        def target() -> None:
            try:
                self.function(event, context)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)
            kill_when.set()

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        kill_when.wait()
        if not outcome:
            self.killed.append(thread)
            raise TimeoutError("Task timed out")
        if outcome[0] is not None:
            raise outcome[0]


# --- signed requests -------------------------------------------------------------------------


def api_gateway_event(body: str, headers: dict[str, str]) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) proxy event, as Lambda receives it."""
    return {
        "version": "2.0",
        "routeKey": "POST /slack/events",
        "rawPath": "/slack/events",
        "rawQueryString": "",
        "headers": {k.lower(): v for k, v in headers.items()},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "http": {"method": "POST", "path": "/slack/events", "protocol": "HTTP/1.1",
                     "sourceIp": "3.3.3.3", "userAgent": "Slackbot 1.0"},
            "requestId": "r1",
            "routeKey": "POST /slack/events",
            "stage": "$default",
            "time": "21/Nov/2026:21:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": body,
        "isBase64Encoded": False,
    }


def signed_event(
    body: str,
    secret: str,
    *,
    content_type: str = "application/json",
    timestamp: int | None = None,
    retry_num: int | None = None,
    signature: str | None = None,
) -> dict[str, Any]:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    if not signature:
        signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
        assert signature is not None  # None only without a timestamp
    headers = {
        "content-type": content_type,
        "x-slack-request-timestamp": ts,
        "x-slack-signature": signature,
    }
    if retry_num is not None:
        headers["x-slack-retry-num"] = str(retry_num)
        headers["x-slack-retry-reason"] = "http_timeout"
    return api_gateway_event(body, headers)


def event_callback(event: dict[str, Any], *, event_id: str) -> str:
    return json.dumps({
        "token": "legacy", "team_id": TEAM_ID, "api_app_id": "A0001", "event": event,
        "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
    })


def slash_command(command: str, text: str, *, user: str, channel: str, response_url: str, trigger_id: str) -> str:
    return urlencode({
        "token": "legacy", "team_id": TEAM_ID, "team_domain": "fake", "channel_id": channel,
        "channel_name": "general", "user_id": user, "user_name": user.lower(), "command": command,
        "text": text, "api_app_id": "A0001", "response_url": response_url, "trigger_id": trigger_id,
    })


def block_action(action_id: str, *, user: str, value: str = "", element: str = "button",
                 message: tuple[str, str] | None = None, response_url: str = "", action_ts: str = "") -> str:
    """A press (`block_actions`) as Slack posts it: form-encoded, the JSON in `payload`. On a message
    (`message`: channel, ts) or, without one, on the Home tab."""
    container: dict[str, Any] = {"type": "view", "view_id": "V0001"}
    payload: dict[str, Any] = {
        "type": "block_actions", "team": {"id": TEAM_ID, "domain": "fake"}, "api_app_id": "A0001",
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID}, "token": "legacy",
        "trigger_id": f"trig-{time.time_ns()}",
        "actions": [{"type": element, "action_id": action_id, "block_id": "b1", "value": value,
                     "action_ts": action_ts or f"{time.time():.6f}"}],
    }
    if message:
        container = {"type": "message", "message_ts": message[1], "channel_id": message[0], "is_ephemeral": False}
        payload.update(channel={"id": message[0], "name": "general"}, message={"ts": message[1], "type": "message"})
    else:
        payload["view"] = {"id": "V0001", "type": "home"}
    if response_url:
        payload["response_url"] = response_url
    payload["container"] = container
    return urlencode({"payload": json.dumps(payload)})


def view_submission(callback_id: str, *, user: str, private_metadata: str, values: dict[str, Any]) -> str:
    """A modal's submission as Slack posts it (`values`: block_id -> action_id -> element state)."""
    payload = {
        "type": "view_submission", "team": {"id": TEAM_ID, "domain": "fake"}, "api_app_id": "A0001",
        "user": {"id": user, "username": user.lower(), "team_id": TEAM_ID}, "token": "legacy",
        "trigger_id": f"trig-{time.time_ns()}",
        "view": {"id": "VMODAL1", "type": "modal", "callback_id": callback_id, "private_metadata": private_metadata,
                 "state": {"values": values}, "hash": "h1"},
    }
    return urlencode({"payload": json.dumps(payload)})


# --- the rig: env, handler, fake Slack, fake Lambda --------------------------------------------

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
HR, ENG, OPEN = "CHR00001", "CENG0001", "COPEN001"
ADMIN = "UADMIN01"


@dataclass
class Rig:
    fake: FakeSlack
    lam: FakeLambda
    handler: Any
    settings: Settings
    _events: int = 0

    def send(self, body: str, **kwargs: Any) -> dict[str, Any]:
        return self.handler(signed_event(body, SECRET, **kwargs), LambdaContext())

    def deliver(self, event: dict[str, Any], *, event_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        if event_id is None:
            self._events += 1
            event_id = f"Ev{self._events:04d}{time.time_ns() % 10**6}"
        return self.send(event_callback(event, event_id=event_id), **kwargs)

    def mention(self, channel: str, text: str, *, user: str = "U0000001", thread_ts: str | None = None,
                **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """A person mentions the bot; Slack delivers app_mention. Returns (message, response)."""
        message = self.fake.user_message(channel, user, f"<@{BOT_USER_ID}> {text}", thread_ts=thread_ts)
        event = {"type": "app_mention", "user": user, "text": message["text"], "ts": message["ts"],
                 "channel": channel, "event_ts": message["ts"]}
        if thread_ts:
            event["thread_ts"] = thread_ts
        return message, self.deliver(event, **kwargs)

    def message_event(self, channel: str, message: dict[str, Any], *, channel_type: str = "channel") -> dict[str, Any]:
        event = {"type": "message", "channel_type": channel_type, "channel": channel, "user": message["user"],
                 "text": message["text"], "ts": message["ts"], "event_ts": message["ts"]}
        if message.get("thread_ts"):
            event["thread_ts"] = message["thread_ts"]
        return event

    def command(self, command: str, text: str, *, user: str, channel: str, trigger: str) -> dict[str, Any]:
        body = slash_command(command, text, user=user, channel=channel,
                             response_url=self.fake.response_url(trigger), trigger_id=trigger)
        return self.send(body, content_type="application/x-www-form-urlencoded")

    def reaction(self, kind: str, *, user: str, channel: str, ts: str, emoji: str = "+1",
                 item_user: str = BOT_USER_ID, event_ts: str | None = None, **kwargs: Any) -> dict[str, Any]:
        event = {"type": kind, "user": user, "reaction": emoji, "item_user": item_user,
                 "item": {"type": "message", "channel": channel, "ts": ts},
                 "event_ts": event_ts or f"{time.time():.6f}"}  # Slack's event times only grow
        return self.deliver(event, **kwargs)

    @property
    def store(self) -> Any:
        return open_store(self.settings)

    def answer_record(self, channel: str, message_ts: str) -> Any:
        return load_answer(self.store, make_answer_id("slack", channel, message_ts))


def make_rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kb: Path, fake: FakeSlack,
              **env: str) -> Generator[Rig, None, None]:
    """The Slack Lambda handler against `fake`, over the knowledge base at `kb` (env overridable)."""
    base = {
        "DATA_DIR": str(tmp_path),
        "QDRANT_PATH": str(kb / "qdrant"),
        "LLM_BACKEND": "extractive",
        "SLACK_BOT_TOKEN": "xoxb-test-token",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_BASE_URL": fake.base_url,
        "ADMIN_USER_IDS": f"slack:{ADMIN}",
        "CHANNEL_SPACES": json.dumps({HR: ["hr"], ENG: ["eng"]}),
        "RETRAIN_THRESHOLD": "1000",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "EchoRAGTest",
        "POWERTOOLS_SERVICE_NAME": "echorag-slack-test",
    }
    for name in ("FEEDBACK_BUCKET", "TRAINING_QUEUE_URL", "SLACK_SECRET_ARN", "QDRANT_URL", "LLM_BASE_URL",
                 "DENSE_MODEL", "RERANKER_MODEL", "STORE_DIR", "QUEUE_PATH", "SLACK_REACTION_THANKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**base, **env}.items():
        monkeypatch.setenv(name, value)
    slack_events = importlib.import_module("handlers.slack_events")
    get_settings.cache_clear()
    slack_events.reset()
    request_handler = slack_events.request_handler()
    lam = FakeLambda(slack_events.handler)
    app = request_handler.app
    app.listener_runner.lazy_listener_runner.lambda_client = lam  # the handler's own runner, fake Lambda
    try:
        yield Rig(fake=fake, lam=lam, handler=slack_events.handler, settings=get_settings())
    finally:
        services_of(app).close()
        slack_events.reset()
        get_settings.cache_clear()


def rig_with_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kb: Path, **env: str) -> Generator[Rig, None, None]:
    """`make_rig` against a FakeSlack of its own, started and stopped around it."""
    fake = FakeSlack().start()
    try:
        yield from make_rig(monkeypatch, tmp_path, kb, fake, **env)
    finally:
        fake.stop()


def answers_in(rig: Rig, channel: str, thread_ts: str) -> list[dict[str, Any]]:
    return [m for m in rig.fake.thread(channel, thread_ts) if m.get("user") == BOT_USER_ID]


# --- the knowledge base the Slack tests ask about -----------------------------------------------

HR_DOC = """# 휴가 규정

연차 휴가는 1년에 15일이 주어집니다. 3년 이상 근무하면 2년마다 하루씩 늘어납니다.

## 입사 첫해

입사 첫해에는 한 달 개근할 때마다 연차 휴가가 하루씩 생깁니다. 첫해에는 최대 11일입니다.

## 신청

연차 휴가 신청은 HR 포털에서 사용일 3일 전까지 합니다.
"""

ENG_DOC = """# 온콜 운영 가이드

온콜 엔지니어는 주간 단위로 교대합니다. 장애가 나면 15분 안에 응답합니다.

## 온콜 중 휴가

온콜 주간에 연차 휴가를 쓰려면 대체 근무자를 먼저 정하고 팀 채널에 알립니다.

## Deploys

Production deploys happen on Tuesdays and Thursdays through the release pipeline.
"""


def build_knowledge_base(root: Path) -> Path:
    """HR_DOC in space hr, ENG_DOC in space eng, ingested under `root` (its Qdrant at root/qdrant)."""
    from rag.ingest import ingest_paths

    (root / "hr").mkdir()
    (root / "eng").mkdir()
    (root / "hr" / "leave.md").write_text(HR_DOC, encoding="utf-8")
    (root / "eng" / "oncall.md").write_text(ENG_DOC, encoding="utf-8")
    settings = Settings(_env_file=None, data_dir=root, llm_backend="extractive")
    for space in ("hr", "eng"):
        summary = ingest_paths([root / space], space=space, settings=settings, progress=False)
        assert summary.failed == 0 and summary.added >= 1
    return root
