"""Test support for Discord: a fake Discord REST API on 127.0.0.1, signed interaction requests as
API Gateway HTTP API (v2) events, SQS events built from queued messages, and env-based settings.

The fake behaves like Discord where our code depends on it: the deferred response message exists
only after the endpoint answered type 5 (`open_deferred`), GET/PATCH …/messages/@original return
the message object with its id, unknown tokens get 404 "Unknown Webhook", expired ones 401
"Invalid Webhook Token", command registration needs `Authorization: Bot …`, and channel messages
(posted, edited, typing) are the bot's own. Every call is recorded; failures can be injected per
method. Gateway dispatch payloads (GUILD_CREATE, THREAD_CREATE, MESSAGE_CREATE) are built here too.

One module (~500 lines): the fake Discord API and the request builders every Discord test uses.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from nacl.signing import SigningKey

from core.settings import Settings, get_settings

APPLICATION_ID = "1100000000000000001"
GUILD_ID = "1200000000000000001"
CHANNEL_ID = "1200000000000000100"
BOT_USER = {"id": APPLICATION_ID, "username": "EchoRAG", "discriminator": "0", "avatar": None, "bot": True}

_snowflake_ms = itertools.count(310_000_000_000)  # ms since Discord's epoch (2024-10)


def snowflake() -> str:
    """A fresh id, each 1 ms later than the last (a snowflake's top 42 bits are its creation time)."""
    return str(next(_snowflake_ms) << 22)


@dataclass
class Call:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class FakeDiscord:
    """Discord's REST API, the parts we use. `url` is the DISCORD_API_BASE_URL to configure."""

    calls: list[Call] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # interaction token -> @original
    posted: dict[str, dict[str, Any]] = field(default_factory=dict)  # message id -> a channel message of the bot
    failures: dict[str, list[int]] = field(default_factory=dict)  # method -> statuses to answer next
    interactions: dict[str, dict[str, Any]] = field(default_factory=dict)  # token -> gateway interaction
    responses: dict[str, Any] = field(default_factory=dict)  # token -> initial response body
    expired: set[str] = field(default_factory=set)  # interaction tokens past their 15 minutes
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v10"

    def start(self) -> FakeDiscord:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                status, answer = fake.handle(self.command, self.path, body, dict(self.headers.items()))
                data = b"" if answer is None else json.dumps(answer).encode()  # 204: no body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # --- what Discord does on its side ----------------------------------------------------------
    def open_deferred(self, application_id: str, token: str, channel_id: str) -> dict[str, Any]:
        """Discord creates the "thinking…" message when the endpoint answers type 5."""
        with self.lock:
            return self.messages.setdefault(
                token,
                {
                    "id": snowflake(),
                    "channel_id": channel_id,
                    "application_id": application_id,
                    "author": {"id": application_id, "bot": True, "username": "EchoRAG"},
                    "content": "",
                    "embeds": [],
                    "components": [],
                    "flags": 128,  # LOADING
                    "type": 20,  # CHAT_INPUT_COMMAND: the reply to a slash command
                    "webhook_id": application_id,
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                    "edited_timestamp": None,
                    "tts": False,
                    "mention_everyone": False,
                    "mentions": [],
                    "mention_roles": [],
                    "attachments": [],
                    "pinned": False,
                },
            )

    def expire(self, token: str) -> None:
        """The interaction token's 15 minutes are over: its webhook answers 401 from now on."""
        with self.lock:
            self.expired.add(token)

    def fail_next(self, method: str, *statuses: int) -> None:
        with self.lock:
            self.failures.setdefault(method, []).extend(statuses)

    def calls_of(self, method: str, path_pattern: str = "") -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method and re.search(path_pattern, c.path)]

    # --- the API --------------------------------------------------------------------------------
    def expect(self, interaction: dict[str, Any]) -> None:
        """Remember an interaction sent over the gateway, so its callback can open its message."""
        with self.lock:
            self.interactions[interaction["token"]] = interaction

    def handle(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        path = path.split("?", 1)[0]
        with self.lock:
            self.calls.append(Call(method, path, body, headers))
            pending = self.failures.get(method)
            if pending:
                return pending.pop(0), {"message": "injected failure", "code": 0}
        if method == "GET" and path == "/api/v10/users/@me":  # discord.py's login
            return 200, BOT_USER
        if method == "GET" and path == "/api/v10/oauth2/applications/@me":
            return 200, {
                "id": APPLICATION_ID,
                "name": "EchoRAG",
                "description": "",
                "icon": None,
                "bot_public": False,
                "bot_require_code_grant": False,
                "owner": {**BOT_USER, "id": "2000000000000000099", "bot": False},
                "verify_key": "00" * 32,
                "flags": 0,
            }
        if m := re.fullmatch(r"/api/v10/interactions/(\d+)/([^/]+)/callback", path):
            return self._callback(m.group(1), m.group(2), body)
        if m := re.fullmatch(r"/api/v10/webhooks/(\d+)/([^/]+)/messages/@original", path):
            return self._original(method, m.group(2), body)
        if m := re.fullmatch(r"/api/v10/channels/(\d+)/(typing|messages)(?:/(\d+))?", path):
            if not headers.get("Authorization", "").startswith("Bot "):
                return 401, {"message": "401: Unauthorized", "code": 0}
            return self._channel(method, m.group(1), m.group(2), m.group(3), body)
        if m := re.fullmatch(r"/api/v10/applications/(\d+)(?:/guilds/(\d+))?/commands", path):
            if method != "PUT":
                return 405, {"message": "405: Method Not Allowed", "code": 0}
            if not headers.get("Authorization", "").startswith("Bot "):
                return 401, {"message": "401: Unauthorized", "code": 0}
            return 200, [
                {**c, "id": snowflake(), "application_id": m.group(1), "guild_id": m.group(2), "version": "1"}
                for c in body
            ]
        return 404, {"message": "404: Not Found", "code": 0}

    def _callback(self, interaction_id: str, token: str, body: Any) -> tuple[int, Any]:
        """The initial response to a gateway interaction (discord.py asks `with_response=1`)."""
        with self.lock:
            interaction = self.interactions.get(token)
        if interaction is None:
            return 404, {"message": "Unknown interaction", "code": 10062}
        self.responses[token] = body
        answer: dict[str, Any] = {"interaction": {"id": interaction_id, "type": interaction["type"]}}
        if body.get("type") == 5:
            message = self.open_deferred(interaction["application_id"], token, interaction["channel_id"])
            answer["interaction"].update(response_message_id=message["id"], response_message_loading=True)
        return 200, answer

    def _channel(
        self, method: str, channel_id: str, what: str, message_id: str | None, body: Any
    ) -> tuple[int, Any]:
        """POST …/typing (204), POST …/messages (a new message of the bot), PATCH …/messages/{id}."""
        if what == "typing" and method == "POST" and message_id is None:
            return 204, None
        with self.lock:
            if what == "messages" and method == "POST" and message_id is None:
                message = {**channel_message(channel_id, body.get("content", ""), author=BOT_USER),
                           "embeds": body.get("embeds", []), "components": body.get("components", [])}
                if body.get("message_reference"):
                    message.update(type=19, message_reference={**body["message_reference"], "channel_id": channel_id})
                self.posted[message["id"]] = message
                return 200, dict(message)
            edited = self.posted.get(message_id or "")
            if method != "PATCH" or edited is None or edited["channel_id"] != channel_id:
                return 404, {"message": "Unknown Message", "code": 10008}
            edited.update({k: v for k, v in body.items() if k in ("content", "embeds", "components")})
            edited["edited_timestamp"] = _now()
            return 200, dict(edited)

    def _original(self, method: str, token: str, body: Any) -> tuple[int, Any]:
        with self.lock:
            if token in self.expired:
                return 401, {"message": "Invalid Webhook Token", "code": 50027}
            message = self.messages.get(token)
            if message is None:  # Discord has not processed the type-5 callback (yet)
                return 404, {"message": "Unknown Webhook", "code": 10015}
            if method == "GET":
                return 200, dict(message)
            if method == "PATCH":
                message.update({k: v for k, v in body.items() if k in ("content", "embeds", "components")})
                message["flags"] = 0
                message["edited_timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
                return 200, dict(message)
        return 405, {"message": "405: Method Not Allowed", "code": 0}


# --- gateway dispatch payloads --------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def user(user_id: str = "2000000000000000001", *, bot: bool = False) -> dict[str, Any]:
    return {"id": user_id, "username": f"user{user_id[-3:]}", "discriminator": "0", "avatar": None, "bot": bot}


def guild_create() -> dict[str, Any]:
    """GUILD_CREATE for GUILD_ID with its text channel CHANNEL_ID (the guilds intent's cache)."""
    return {
        "id": GUILD_ID, "name": "Test server", "icon": None, "owner_id": "2000000000000000099",
        "features": [], "roles": [], "emojis": [], "stickers": [], "member_count": 3, "large": False,
        "members": [], "voice_states": [], "presences": [], "threads": [], "stage_instances": [],
        "guild_scheduled_events": [], "soundboard_sounds": [], "unavailable": False,
        "joined_at": "2026-01-02T03:04:05.000000+00:00", "preferred_locale": "en-US",
        "channels": [{"id": CHANNEL_ID, "type": 0, "name": "general", "position": 0, "guild_id": GUILD_ID,
                      "permission_overwrites": [], "nsfw": False, "parent_id": None}],
    }


def thread_create(thread_id: str, *, parent_id: str = CHANNEL_ID, owner_id: str = "2000000000000000001"
                  ) -> dict[str, Any]:
    """THREAD_CREATE of a new public thread (one started from a message has that message's id)."""
    return {
        "id": thread_id, "guild_id": GUILD_ID, "parent_id": parent_id, "owner_id": owner_id, "type": 11,
        "name": "follow-up", "message_count": 0, "member_count": 1, "rate_limit_per_user": 0,
        "last_message_id": None, "newly_created": True, "flags": 0,
        "thread_metadata": {"archived": False, "auto_archive_duration": 1440, "archive_timestamp": _now(),
                            "locked": False},
    }


def channel_message(
    channel_id: str, content: str, *, author: dict[str, Any] | None = None,
    mentions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A message object in a guild channel or thread (the MESSAGE_CREATE dispatch data)."""
    return {
        "id": snowflake(), "channel_id": channel_id, "guild_id": GUILD_ID, "author": author or user(),
        "content": content, "timestamp": _now(), "edited_timestamp": None, "tts": False,
        "mention_everyone": False, "mentions": mentions or [], "mention_roles": [], "attachments": [],
        "embeds": [], "components": [], "pinned": False, "type": 0, "flags": 0,
    }


# --- signed requests ------------------------------------------------------------------------------


def http_event(
    body: str | bytes,
    headers: dict[str, str],
    *,
    path: str = "/discord/interactions",
    base64_body: bool = False,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload v2.0) event, as the function receives it."""
    raw = body.encode() if isinstance(body, str) else body
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        base64_body = True  # API Gateway base64-encodes bodies that are not text
    return {
        "version": "2.0",
        "routeKey": f"POST {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "user-agent": "Discord-Interactions/1.0", **headers},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "discordapi",
            "domainName": "discordapi.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "discordapi",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "Discord-Interactions/1.0",
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": f"POST {path}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "timeEpoch": int(time.time() * 1000),
        },
        "body": base64.b64encode(raw).decode() if base64_body else raw.decode("utf-8"),
        "isBase64Encoded": base64_body,
    }


def signed_event(
    key: SigningKey,
    payload: dict[str, Any] | str | bytes,
    *,
    timestamp: int | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """A request signed the way Discord signs: Ed25519 over timestamp + raw body."""
    body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    body = body.encode() if isinstance(body, str) else body
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(ts.encode() + body).signature.hex()
    headers = {"x-signature-ed25519": signature, "x-signature-timestamp": ts}
    return http_event(body, headers, base64_body=base64_body)


@dataclass
class LambdaContext:
    function_name: str = "echorag-discord"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:echorag-discord"
    aws_request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    remaining_ms: int = 30_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def response_json(response: dict[str, Any]) -> Any:
    return json.loads(response["body"]) if response.get("body") else None


# --- interactions ----------------------------------------------------------------------------------


def _member(user_id: str, permissions: str) -> dict[str, Any]:
    user = {"id": user_id, "username": f"user{user_id[-3:]}", "discriminator": "0", "avatar": None}
    return {
        "user": user,
        "permissions": permissions,
        "roles": [],
        "joined_at": "2026-01-02T03:04:05.000000+00:00",
        "deaf": False,
        "mute": False,
        "flags": 0,
    }


def _common(kind: int, channel_id: str, user_id: str, permissions: str, locale: str) -> dict[str, Any]:
    """Fields Discord sends with every guild interaction (over HTTP and the gateway alike)."""
    return {
        "id": snowflake(),
        "application_id": APPLICATION_ID,
        "type": kind,
        "token": "itoken-" + uuid.uuid4().hex,
        "version": 1,
        "guild_id": GUILD_ID,
        "guild": {"id": GUILD_ID, "locale": "en-US", "features": []},
        "channel_id": channel_id,
        "channel": {"id": channel_id, "type": 0, "guild_id": GUILD_ID, "name": "general", "position": 0},
        "member": _member(user_id, permissions),
        "locale": locale,
        "guild_locale": "en-US",
        "app_permissions": "2248473465835073",
        "entitlements": [],
        "authorizing_integration_owners": {"0": GUILD_ID},
        "context": 0,
        "attachment_size_limit": 10485760,
    }


def command_interaction(
    name: str,
    *,
    options: list[dict[str, Any]] | None = None,
    user_id: str = "2000000000000000001",
    permissions: str = "0",
    channel_id: str = CHANNEL_ID,
    locale: str = "en-US",
) -> dict[str, Any]:
    """A slash-command interaction (type 2) as Discord sends it in a guild channel."""
    data: dict[str, Any] = {"id": snowflake(), "name": name, "type": 1}
    if options is not None:
        data["options"] = options
    return {**_common(2, channel_id, user_id, permissions, locale), "data": data}


def ask_interaction(question: str, **kwargs: Any) -> dict[str, Any]:
    return command_interaction("ask", options=[{"name": "question", "type": 3, "value": question}], **kwargs)


def button_interaction(
    custom_id: str, message: dict[str, Any], *, user_id: str = "2000000000000000001", locale: str = "en-US"
) -> dict[str, Any]:
    """A click on a message component (type 3): Discord includes the message it sits on."""
    return {
        **_common(3, message["channel_id"], user_id, "0", locale),
        "message": message,
        "data": {"custom_id": custom_id, "component_type": 2},
    }


def modal_submit_interaction(
    custom_id: str, message: dict[str, Any], fields: dict[str, Any], *, user_id: str = "2000000000000000001",
    locale: str = "en-US",
) -> dict[str, Any]:
    """A submitted modal (type 5) opened from a button on `message`: each field in its Label, as
    Discord sends them (`fields`: custom_id -> a select's list of values, or a text input's value)."""
    components = [
        {"type": 18, "id": i + 1, "component": {"type": 3 if isinstance(v, list) else 4, "id": i + 10,
                                                 "custom_id": k, **({"values": v} if isinstance(v, list) else {"value": v})}}
        for i, (k, v) in enumerate(fields.items())
    ]
    return {
        **_common(5, message["channel_id"], user_id, "0", locale),
        "message": message,
        "data": {"custom_id": custom_id, "components": components},
    }


# --- SQS events --------------------------------------------------------------------------------------


def sqs_event(records: list[tuple[str, str, int]], queue_arn: str) -> dict[str, Any]:
    """An SQS trigger event from (message_id, body, receive_count) tuples, as Lambda delivers it."""
    now_ms = str(int(time.time() * 1000))
    return {
        "Records": [
            {
                "messageId": message_id,
                "receiptHandle": uuid.uuid4().hex,
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": str(count),
                    "SentTimestamp": now_ms,
                    "SenderId": "AIDAEXAMPLE",
                    "ApproximateFirstReceiveTimestamp": now_ms,
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
            for message_id, body, count in records
        ]
    }


# --- settings through the environment, as Lambda gets them --------------------------------------------


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def apply_settings_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    """Export every field as its env var and return what `get_settings()` now reads."""
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            monkeypatch.delenv(name.upper(), raising=False)
        else:
            monkeypatch.setenv(name.upper(), _env_value(value))
    get_settings.cache_clear()
    return get_settings()
