"""Seeded, bounded fuzzing of the two HTTP Lambda handlers (`handlers.slack_events`,
`handlers.discord_interactions`): every case must come back as a response whose integer status is
below 500, never as an exception, whether it is signed (and so reaches the parsers and listeners)
or not.

Cases are valid requests built with the suites' helpers, then mutated structurally: fields dropped,
duplicated or retyped (null, numbers, 5,000-digit ints, 1,000-deep nesting, long, non-ASCII and
control-character strings, lists for objects, ids that are not ids, path-traversal strings that
could become store keys), headers mangled (timestamps, signatures, names), bodies base64-encoded or
not, invalid base64 or UTF-8, form bodies with a mangled `payload=`, and now and then the API Gateway
envelope itself. Each case is built from `random.Random(f"{SEED}:{platform}:{mode}:{index}")` only,
so a failure is reported as seed, mode and case index, and `slack_case` / `discord_case` rebuild it
(with fresh ids, tokens and timestamps). Signed cases are signed with the rig's secret/key over the
exact bytes the handler verifies.

Slack's lazy listeners run in-process through the suite's `FakeLambda` (no retries) with a stub
`ask`: the agent is not what is fuzzed here. A lazy run that fails with anything but an `EchoRagError`
counts as a failure too (a crash Lambda would retry forever). Nothing a user could see (Slack calls
and response_url posts, response bodies) may carry the data directory, a secret or a traceback.

Counts: 1,200 signed + 800 unsigned cases per handler (2,000 each, 4,000 in all); the whole file,
regression cases included, takes about 12 s here.
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from nacl.signing import SigningKey
from slack_sdk.signature import SignatureVerifier

from bots.discord.render import NEGATIVE, POSITIVE, feedback_custom_id
from bots.discord.runtime import close_runtime
from bots.slack.app import create_app, services_of
from core.contracts import make_answer_id
from core.errors import EchoRagError
from core.settings import get_settings
from handlers import discord_interactions
from rag.types import AgentAnswer
from tests import support_discord as sd
from tests import support_slack as ss
from tests.conftest import make_settings
from tests.support_faults import leaked

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
]

SEED = 20260611
CASES = {"signed": 1200, "unsigned": 800}
REPORTED = 8  # failures spelled out in the assertion message

SLACK_SECRET = "fuzz0signing0secret0abcdef012345"
SLACK_TOKEN = "xoxb-fuzz-token"
SLACK_ADMIN = "UADMIN01"
DISCORD_KEY = SigningKey(bytes(range(32)))  # fixed: cases are reproducible
OTHER_KEY = SigningKey(bytes(range(1, 33)))
DISCORD_ADMIN = "3000000000000000009"

# --- JSON with what json.dumps cannot write: huge ints, deep nesting, NaN, duplicate keys ---------

_RAW, _DUP = "\x00RAW\x00", "\x00DUP\x00"
_RAW_JSON = re.compile(r'"\\u0000RAW\\u0000(.*?)\\u0000"')
_DUP_JSON = "\\u0000DUP\\u0000"


def raw(text: str) -> str:
    """A placeholder that `to_json` writes as `text` verbatim (digits, brackets, NaN…)."""
    return f"{_RAW}{text}\x00"


def to_json(value: Any, *, ascii_only: bool = True) -> str:
    """json.dumps, then placeholders replaced: `raw(...)` verbatim, `_DUP + key` as a second `key`."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    return _RAW_JSON.sub(lambda m: m.group(1), text).replace(_DUP_JSON, "")


def plain(text: str) -> str:
    """A string with its placeholders resolved, for form fields."""
    return re.sub(r"\x00RAW\x00(.*?)\x00", r"\1", text, flags=re.S).replace(_DUP, "")


def form_text(value: Any) -> str:
    return plain(value) if isinstance(value, str) else to_json(value)


def short(value: Any, limit: int = 140) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…(+{len(text) - limit} chars)"


# --- weird values ----------------------------------------------------------------------------------

_STRINGS: tuple[str, ...] = (
    "", " ", "\t\n", "null", "None", "0", "-1", "1.5", "1e999", "NaN", "true", "[]", "{}",
    "휴가 규정은?", "١٢٣٤٥", "１２３", "🙂" * 40, "\u202eevil\u202c", "\x00\x01\x1b[31m\r\n\x7f",
    "\ud800", "x\udfffy", "\ufeff", "../../jobs/ACTIVE", "..", ".", "/", "a/../../b", "C1/../../x",
    "%2e%2e%2f", "..\\..\\win", "/etc/passwd", "slack/T0000001/C1/../..", "tmp.x", "<@UBOT0001>",
    "<!channel> <!here>", "*bold* `code` ~x~ <https://a|b>", "1" * 25, "0x1f", " 1200000000000000100",
    "1200000000000000100\n", "-1200000000000000100", "+1", "1_000", "U0000001", "C0000001",
    "1700000000.000100", "1700000000", "echorag:fb:+1:" + "0" * 32, "echorag:fb:x:y:z", "A" * 101,
)


def weird_string(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(_STRINGS)
    if roll < 0.85:  # random code points: controls, combining marks, surrogates, astral planes
        pools = ((0, 0x20), (0x7F, 0xA0), (0x300, 0x370), (0xD800, 0xE000), (0xAC00, 0xD7A4), (0x1F000, 0x110000))
        picks = [rng.choice(pools) for _ in range(rng.randint(1, 48))]
        return "".join(chr(rng.randrange(lo, hi)) for lo, hi in picks)
    return rng.choice(("a", "휴", "🙂", "\x00", "/", "<")) * rng.choice((300, 4_000, 100_000))


def _nested(depth: int) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = {"a": node}
    return node


def weird(rng: random.Random, depth: int = 0) -> Any:
    """A value of any type and size a field should not have."""
    roll = rng.randrange(20)
    if roll == 0:
        return None
    if roll == 1:
        return rng.choice((True, False))
    if roll == 2:
        return rng.choice((0, -1, 1, 2**31, 2**63, -(2**63) - 1, 2**64 + 1, 10**30))
    if roll == 3:
        return rng.choice((0.5, -0.0, 1e308, 1.0, -3.25))
    if roll == 4:
        return raw(rng.choice(("9", "-9", "1")) + "0" * rng.choice((30, 400, 4_299, 5_000)))
    if roll == 5:
        return raw(rng.choice(("1e999", "-1e999", "NaN", "Infinity", "-Infinity", "-0", "1E400", "5e-400")))
    if roll == 6:
        n = rng.choice((100, 500, 900, 1_000, 5_000))
        return raw("[" * n + "]" * n)
    if roll == 7:
        n = rng.choice((100, 500, 900, 1_000, 5_000))
        return raw('{"a":' * n + "1" + "}" * n)
    if roll == 8:
        return _nested(rng.choice((3, 30)))
    if roll == 9:
        return rng.choice(([], {}, [{}], [None], [[]]))
    if roll == 10 and depth < 3:
        return [weird(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    if roll == 11 and depth < 3:
        return {weird_string(rng): weird(rng, depth + 1)}
    return weird_string(rng)


# --- structural mutation of a JSON tree -------------------------------------------------------------

_KEYS = (
    "type", "event", "payload", "actions", "view", "container", "channel", "user", "team", "message",
    "authorizations", "enterprise", "is_enterprise_install", "token", "id", "data", "member", "guild_id",
    "channel_id", "application_id", "custom_id", "options", "name", "value", "__proto__", "", "ts",
    "thread_ts", "text", "item", "item_user", "bot_id", "subtype", "response_url", "trigger_id",
    "challenge", "event_id", "team_id", "user_id", "locale", "permissions", "parent_id", "command",
)
_OPS = ("drop", "null", "retype", "retype", "string", "wrap", "listify", "stringify", "dup", "add", "copy")


def _slots(root: Any) -> list[tuple[Any, Any, str]]:
    """Every (container, key, dotted path) in the tree."""
    slots: list[tuple[Any, Any, str]] = []
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        node, where = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            path = f"{where}.{key}" if where else str(key)
            slots.append((node, key, path))
            stack.append((value, path))
    return slots


def mutate(rng: random.Random, root: Any, count: int, notes: list[str]) -> Any:
    """`root` with `count` structural mutations; each is described in `notes`."""
    for _ in range(count):
        slots = _slots(root)
        if not slots or rng.random() < 0.03:
            root = weird(rng)
            notes.append(f"body={short(root, 60)}")
            continue
        parent, key, where = rng.choice(slots)
        op = rng.choice(_OPS)
        value = parent[key]
        if op == "drop":
            del parent[key]
        elif op == "null":
            parent[key] = None
        elif op == "retype":
            parent[key] = weird(rng)
        elif op == "string":
            parent[key] = weird_string(rng)
        elif op == "wrap":
            parent[key] = [value]
        elif op == "listify":
            parent[key] = list(value.values()) if isinstance(value, dict) else [value, value]
        elif op == "stringify":
            parent[key] = json.dumps(value)
        elif op == "dup" and isinstance(parent, dict):
            extra = {_DUP + str(key): weird(rng)}
            merged = {**extra, **parent} if rng.random() < 0.5 else {**parent, **extra}  # which copy wins
            parent.clear()
            parent.update(merged)
        elif op == "dup":
            parent.insert(key, copy.deepcopy(value))
        elif op == "add" and isinstance(parent, dict):
            parent[rng.choice(_KEYS)] = weird(rng)
        elif op == "add":
            parent.append(weird(rng))
        else:  # copy: another part of the request in this place (an event where actions go…)
            parent[key] = copy.deepcopy(rng.choice(slots)[0])
        notes.append(f"{op} {where[:60]}")
    return root


def mutation_count(rng: random.Random) -> int:
    return 0 if rng.random() < 0.15 else rng.randint(1, 4)


@dataclass
class Case:
    """One generated request and how it was made."""

    event: Any
    notes: list[str] = field(default_factory=list)
    summary: str = ""

    def describe(self) -> str:
        return f"{'; '.join(self.notes)[:400]} | {self.summary}"


def _summarise(case: Case) -> Case:
    event = case.event
    if isinstance(event, dict):
        headers = event.get("headers")
        shown = {k: v for k, v in headers.items() if "sig" in str(k).lower()} if isinstance(headers, dict) else headers
        case.summary = f"headers={short(shown, 160)} b64={event.get('isBase64Encoded')!r} body={short(event.get('body'))}"
    else:
        case.summary = f"event={short(event)}"
    return case


# --- envelope mutations (both platforms) ------------------------------------------------------------


def mutate_envelope(rng: random.Random, event: dict[str, Any], notes: list[str]) -> Any:
    """The API Gateway event itself mangled (rare: API Gateway writes it, not the caller)."""
    op = rng.randrange(12)
    if op == 0:
        notes.append("event replaced")
        return rng.choice((None, [], "event", {}, [event]))
    if op == 1:
        event.pop("requestContext", None) if rng.random() < 0.5 else event.update(requestContext=weird(rng))
        notes.append("requestContext mangled")
    elif op == 2:
        event["headers"] = rng.choice((None, [], "headers", {}, [["x-a", "b"]]))
        notes.append(f"headers={event['headers']!r}")
    elif op == 3:
        event["headers"] = {k: rng.choice((None, 7, [v], {"v": v})) for k, v in event.get("headers", {}).items()}
        notes.append("header values retyped")
    elif op == 4:
        event["body"] = rng.choice((None, 123, {"type": 1}, ["x"], True))
        notes.append(f"body={event['body']!r}")
    elif op == 5:
        event["queryStringParameters"] = rng.choice(({"a": None}, [1], "q", {"": ""}, {"payload": "{"}))
        event["rawQueryString"] = rng.choice(("%ZZ&&=", "a=1&a=2", "\x00"))
        notes.append("query mangled")
    elif op == 6:
        event["isBase64Encoded"] = rng.choice(("false", "true", 1, None, [], "yes"))
        notes.append(f"isBase64Encoded={event['isBase64Encoded']!r}")
    elif op == 7:
        http = event.get("requestContext", {}).get("http", {})
        http["method"] = rng.choice(("GET", "PUT", "OPTIONS", "", None, "post"))
        notes.append(f"method={http['method']!r}")
    elif op == 8:
        path = rng.choice(("/other", "/", "", "/discord/interactions/", "/slack/../discord/interactions", None))
        event["rawPath"] = path
        event.get("requestContext", {}).get("http", {})["path"] = path
        notes.append(f"path={path!r}")
    elif op == 9:
        event["body"] = rng.choice(('{"type": "\ud800"}', "\ud800", "payload=\udfff", '{"type":1,"id":"\udc80"}'))
        notes.append("body str with a lone surrogate")
    elif op == 10:
        event["cookies"] = rng.choice((None, "c", [1], ["a=b"] * 50))
        event["stageVariables"] = rng.choice((None, [], {"a": None}))
        notes.append("cookies/stageVariables mangled")
    else:
        event.get("requestContext", {}).pop(rng.choice(("http", "requestId", "stage", "timeEpoch")), None)
        notes.append("requestContext field dropped")
    return event


# --- Slack ------------------------------------------------------------------------------------------

FORM = "application/x-www-form-urlencoded"
_SLACK_CHANNELS = ("C0000001", "CHR00001", "D0000001", "G0000001")
_SLACK_USERS = ("U0000001", SLACK_ADMIN, ss.BOT_USER_ID)


def _slack_inner_event(rng: random.Random, now: int) -> dict[str, Any]:
    ts = f"{now - rng.randrange(3600)}.{rng.randrange(10**6):06d}"
    channel, user = rng.choice(_SLACK_CHANNELS), rng.choice(_SLACK_USERS)
    kind = rng.choice(("app_mention", "app_mention", "message", "message", "reaction_added", "reaction_removed",
                       "app_home_opened", "member_joined_channel", "team_join", "link_shared"))
    question = rng.choice(("When do deploys happen?", "연차 휴가는 며칠인가요?", "", "?", "hi"))
    event: dict[str, Any]
    if kind == "app_mention":
        event = {"type": kind, "user": user, "text": f"<@{ss.BOT_USER_ID}> {question}", "ts": ts,
                 "channel": channel, "event_ts": ts}
    elif kind == "message":
        event = {"type": kind, "channel_type": rng.choice(("im", "channel", "group", "mpim")), "channel": channel,
                 "user": user, "text": question, "ts": ts, "event_ts": ts}
        if rng.random() < 0.3:
            event["subtype"] = rng.choice(("bot_message", "message_changed", "thread_broadcast", "file_share"))
        if rng.random() < 0.2:
            event["bot_id"] = ss.BOT_ID
    elif kind.startswith("reaction_"):
        event = {"type": kind, "user": user, "reaction": rng.choice(("+1", "-1", "thumbsup::skin-tone-2", "x")),
                 "item_user": rng.choice((ss.BOT_USER_ID, "U0000003")),
                 "item": {"type": "message", "channel": channel, "ts": ts}, "event_ts": ts}
    else:
        event = {"type": kind, "user": user, "channel": channel, "event_ts": ts}
    if kind in ("app_mention", "message") and rng.random() < 0.4:
        event["thread_ts"] = f"{now - 7200}.000100"
    return event


def _slack_interactive(rng: random.Random, response_url: str, now: int) -> dict[str, Any]:
    ts, channel = f"{now}.000200", rng.choice(_SLACK_CHANNELS)
    user = {"id": rng.choice(_SLACK_USERS), "team_id": ss.TEAM_ID, "username": "someone"}
    team = {"id": ss.TEAM_ID, "domain": "fake"}
    kind = rng.choice(("block_actions", "block_actions", "view_submission", "view_closed", "shortcut",
                       "message_action", "block_suggestion", "interactive_message"))
    payload: dict[str, Any] = {"type": kind, "user": user, "team": team, "api_app_id": "A0001", "token": "legacy",
                               "trigger_id": f"trig.{now}", "response_url": response_url}
    if kind in ("block_actions", "message_action", "interactive_message"):
        payload.update(
            container={"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            channel={"id": channel, "name": "general"},
            message={"type": "message", "ts": ts, "text": "answer", "user": ss.BOT_USER_ID, "bot_id": ss.BOT_ID},
            actions=[{"action_id": rng.choice(("feedback_up", "x")), "block_id": "b", "type": "button",
                      "value": "1", "action_ts": ts}],
            callback_id="cb",
        )
    if kind in ("view_submission", "view_closed"):
        payload["view"] = {"id": "V0001", "type": "modal", "callback_id": "cb", "private_metadata": "",
                           "state": {"values": {"b": {"a": {"type": "plain_text_input", "value": "x"}}}}}
    if kind in ("shortcut", "message_action", "block_suggestion"):
        payload.update(callback_id="cb", action_id="a", value="v")
    return payload


def _mangle_payload(rng: random.Random, text: str, notes: list[str]) -> str:
    """A form body carrying the interactivity payload, sometimes mangled."""
    op = rng.randrange(10)
    if op == 0:
        notes.append("payload truncated")
        return "payload=" + quote(text[: rng.randrange(len(text) + 1)])
    if op == 1:
        notes.append("payload not url-encoded")
        return "payload=" + text
    if op == 2:
        notes.append("payload twice")
        return "payload=" + quote(rng.choice(("{", "[]", "null", '"x"'))) + "&payload=" + quote(text)
    if op == 3:
        notes.append("payload a JSON string")
        return "payload=" + quote(json.dumps(text))
    if op == 4:
        notes.append("payload under another name")
        return rng.choice(("Payload=", "payload%00=", "payload[]=", "=")) + quote(text)
    if op == 5:
        notes.append("payload with a BOM / bad escapes")
        return "payload=" + rng.choice(("%EF%BB%BF", "%ZZ", "%E0%A4%A", "%C0%AF")) + quote(text)
    return "payload=" + quote(text)


def _mutate_form(rng: random.Random, fields: dict[str, str], notes: list[str]) -> str:
    pairs = list(fields.items())
    for _ in range(mutation_count(rng)):
        op = rng.randrange(6)
        index = rng.randrange(len(pairs)) if pairs else 0
        if op == 0 and pairs:
            notes.append(f"drop {pairs.pop(index)[0]}")
        elif op in (1, 2) and pairs:
            pairs[index] = (pairs[index][0], form_text(weird(rng)))
            notes.append(f"retype {pairs[index][0]}")
        elif op == 3 and pairs:
            pairs.insert(rng.randrange(len(pairs) + 1), (pairs[index][0], form_text(weird(rng))))
            notes.append(f"dup {pairs[index][0]}")
        else:
            name = rng.choice((*_KEYS, weird_string(rng)))
            pairs.append((name, form_text(weird(rng))))
            notes.append(f"add {short(name, 30)}")
    return urlencode(pairs, errors="surrogatepass")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _slack_body(rng: random.Random, index: int, now: int, response_url: str, notes: list[str]) -> tuple[str, str]:
    """(body text, content type) before any transport mangling."""
    kind = rng.choices(("event", "url_verification", "command", "interactive", "misc"), (6, 1, 3, 3, 1))[0]
    notes.append(kind)
    if kind in ("event", "url_verification"):
        payload: Any = (
            json.loads(ss.event_callback(_slack_inner_event(rng, now), event_id=f"Ev{index:06d}"))
            if kind == "event"
            else {"token": "legacy", "challenge": f"challenge-{index}", "type": "url_verification"}
        )
        if kind == "event":
            notes.append(str(payload["event"]["type"]))
        payload = mutate(rng, payload, mutation_count(rng), notes)
        text = to_json(payload, ascii_only=rng.random() < 0.7)
        if not text.isascii() and not _encodable(text):  # a body on the wire is UTF-8: escape surrogates
            text = to_json(payload)
        return text, "application/json"
    if kind == "command":
        command = rng.choice(("/ask", "/ask", "/retrain", "/unknown", "ask", ""))
        text = rng.choice(("When do deploys happen?", "", "   ", "reason: drift", weird_string(rng)))
        text = text if _encodable(text) else "x\ufffdy"  # slash_command url-encodes it as UTF-8
        body = ss.slash_command(command, text, user=rng.choice(_SLACK_USERS), channel=rng.choice(_SLACK_CHANNELS),
                                response_url=response_url, trigger_id=f"trig{index}")
        notes.append(command or "no command")
        return _mutate_form(rng, dict(parse_qsl(body)), notes), FORM
    if kind == "interactive":
        payload = _slack_interactive(rng, response_url, now)
        notes.append(payload["type"])
        payload = mutate(rng, payload, mutation_count(rng), notes)
        return _mangle_payload(rng, to_json(payload), notes), FORM
    junk = rng.choice(("ssl_check=1&token=legacy", '{"type": "app_rate_limited", "minute_rate_limited": 1}',
                       '{"type": "event_callback"}', "{", "", "null", "[]", '"str"', "payload", "=", "&&",
                       "%ZZ", "a=1&a=2", to_json(weird(rng))))
    return junk, rng.choice(("application/json", FORM))


def _slack_content_type(rng: random.Random, natural: str, notes: list[str]) -> str | None:
    if rng.random() >= 0.1:
        return natural
    other = rng.choice(("application/json", FORM, "text/plain", "", None, "application/json; charset=utf-8",
                        f"{FORM}; charset=UTF-8", "multipart/form-data; boundary=x", "application/JSON"))
    notes.append(f"content-type={other!r}")
    return other


def _arabic(digits: str) -> str:
    return digits.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))


def _slack_unsigned_headers(rng: random.Random, headers: dict[str, Any], body: str, now: int,
                            notes: list[str]) -> None:
    """Signature or timestamp headers that must not verify (or cannot be parsed)."""
    op = rng.randrange(8)
    if op == 0:
        headers.pop("x-slack-signature", None)
        if rng.random() < 0.5:
            headers.pop("x-slack-request-timestamp", None)
        notes.append("signature headers missing")
        return
    if op in (1, 2):
        value = rng.choice(("9" * 13, "9" * 400, "9" * 5_000, "١٢٣٤٥", _arabic(str(now)), "-5", f"-{now}", "1.5",
                            f"{now}.0", "", " ", f" {now}", "NaN", "inf", "0", "1e10", "0x10", "１２３",
                            str(now - 600), str(now + 600)))
        headers["x-slack-request-timestamp"] = value
        notes.append(f"timestamp={short(value, 30)}")
        if rng.random() < 0.5:  # signed over the odd timestamp: only the timestamp is wrong
            signature = SignatureVerifier(SLACK_SECRET).generate_signature(timestamp=value, body=body)
            headers["x-slack-signature"] = signature or ""
        return
    if op in (3, 4):
        value = rng.choice(("v0=" + "é" * 64, "v0=" + "a" * 63, "v0=" + "a" * 65, "v0=" + "A" * 64, "v1=" + "a" * 64,
                            "", "v0=", "v0=" * 2_500, "v0=" + "0" * 64, "v0=" + "٣" * 64, " v0=" + "a" * 64,
                            "v0=" + "a" * 10_000, "v0=" + "\x00" * 64))
        headers["x-slack-signature"] = value
        notes.append(f"signature={short(value, 30)}")
        return
    if op == 5:
        headers["x-slack-signature"] = SignatureVerifier("another-secret").generate_signature(
            timestamp=str(now), body=body) or ""
        notes.append("signed with another secret")
        return
    if op == 6:
        headers["x-slack-signature"] = SignatureVerifier(SLACK_SECRET).generate_signature(
            timestamp=str(now), body=body + " ") or ""
        notes.append("signature of another body")
        return
    headers["x-slack-request-timestamp"], headers["x-slack-signature"] = rng.choice(
        ((7, None), (None, None), (str(now), 12345), ([str(now)], ["v0=" + "a" * 64])))
    notes.append("signature headers retyped")


def slack_case(seed: int, mode: str, index: int, response_url: Callable[[str], str]) -> Case:
    """Case `index` of `mode` ("signed" or "unsigned") for the Slack handler."""
    rng = random.Random(f"{seed}:slack:{mode}:{index}")
    now, notes = int(time.time()), [mode]
    text, natural = _slack_body(rng, index, now, response_url(f"r{index}"), notes)
    content_type = _slack_content_type(rng, natural, notes)
    timestamp = now - rng.randrange(240)
    event = ss.signed_event(text, SLACK_SECRET, content_type=content_type or "x", timestamp=timestamp,
                            retry_num=rng.choice((None, None, None, 1, 2)))
    headers = event["headers"]
    if content_type is None:
        del headers["content-type"]
    roll = rng.random()
    if roll < 0.12:
        event.update(body=base64.b64encode(text.encode("utf-8")).decode(), isBase64Encoded=True)
        notes.append("base64")
    elif roll < 0.15:
        event.update(body=base64.b64encode(text.encode("utf-8") + b"\xff\xfe").decode(), isBase64Encoded=True)
        notes.append("base64 of invalid UTF-8")
    elif roll < 0.18:
        event.update(body=rng.choice(("%%%not base64%%%", text, "YWJj=", "YW Jj", "====")), isBase64Encoded=True)
        notes.append("invalid base64")
    if mode == "unsigned":
        _slack_unsigned_headers(rng, headers, text, timestamp, notes)
    elif rng.random() < 0.03:  # only Bolt's own re-invocations carry these
        headers.update({"x-slack-bolt-lazy-only": "1",
                        "x-slack-bolt-lazy-function-name": rng.choice(("answer_event", "record_feedback", "nope"))})
        notes.append("lazy headers")
    if rng.random() < 0.1:
        name = rng.choice(("x-slack-signature", "x-slack-request-timestamp", "content-type"))
        if name in headers:
            headers[name.upper() if rng.random() < 0.5 else name.title()] = headers.pop(name)
            notes.append(f"{name} renamed")
    if rng.random() < (0.06 if mode == "unsigned" else 0.03):
        return _summarise(Case(mutate_envelope(rng, event, notes), notes))
    return _summarise(Case(event, notes))


def _stub_ask(question: str, **_: Any) -> AgentAnswer:
    """The agent's place: what is fuzzed is the HTTP handler, not retrieval."""
    return AgentAnswer(question=question, condensed_question=question, text="Deploys go out on Tuesdays.",
                       language="en")


@dataclass
class SlackRig:
    fake: ss.FakeSlack
    lam: ss.FakeLambda
    handler: Callable[[Any, Any], Any]
    data_dir: Path


@pytest.fixture
def slack_rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[SlackRig]:
    """The Slack handler as tests/test_slack.py sets it up, with a stub agent and no Lambda retries."""
    fake = ss.FakeSlack().start()
    env = {
        "DATA_DIR": str(tmp_path),
        "LLM_BACKEND": "extractive",
        "SLACK_BOT_TOKEN": SLACK_TOKEN,
        "SLACK_SIGNING_SECRET": SLACK_SECRET,
        "SLACK_API_BASE_URL": fake.base_url,
        "ADMIN_USER_IDS": f"slack:{SLACK_ADMIN}",
        "CHANNEL_SPACES": json.dumps({"CHR00001": ["hr"]}),
        "RETRAIN_THRESHOLD": "1000",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "EchoRAGTest",
        "POWERTOOLS_SERVICE_NAME": "echorag-slack-test",
    }
    for name in ("FEEDBACK_BUCKET", "TRAINING_QUEUE_URL", "SLACK_SECRET_ARN", "QDRANT_URL", "LLM_BASE_URL",
                 "DENSE_MODEL", "RERANKER_MODEL", "STORE_DIR", "QUEUE_PATH", "SLACK_REACTION_THANKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    slack_events = importlib.import_module("handlers.slack_events")
    monkeypatch.setattr(slack_events, "create_app", functools.partial(create_app, ask=_stub_ask))
    get_settings.cache_clear()
    slack_events.reset()
    app = slack_events.request_handler().app
    lam = ss.FakeLambda(slack_events.handler, retries=0)
    app.listener_runner.lazy_listener_runner.lambda_client = lam  # the handler's own runner, fake Lambda
    try:
        yield SlackRig(fake=fake, lam=lam, handler=slack_events.handler, data_dir=tmp_path)
    finally:
        services_of(app).close()
        slack_events.reset()
        get_settings.cache_clear()
        fake.stop()


# --- Discord ----------------------------------------------------------------------------------------

_OTHER_CHANNEL = "1200000000000000200"


def _discord_interaction(rng: random.Random, index: int, notes: list[str]) -> dict[str, Any]:
    kind = rng.choice(("ping", "ask", "ask", "ask", "retrain", "unknown", "button", "button", "autocomplete",
                       "modal", "other"))
    notes.append(kind)
    user = rng.choice(("2000000000000000001", DISCORD_ADMIN))
    channel = rng.choice((sd.CHANNEL_ID, _OTHER_CHANNEL))
    locale = rng.choice(("en-US", "ko", "ko-KR", ""))
    permissions = rng.choice(("0", "32", "8", "2248473465835073"))
    payload: dict[str, Any]
    if kind == "ping":
        payload = {"id": sd.snowflake(), "application_id": sd.APPLICATION_ID, "type": 1, "token": f"t{index}",
                   "version": 1}
    elif kind in ("ask", "autocomplete"):
        question = rng.choice(("When do deployments happen?", "연차 휴가는?", "", "  ", "?"))
        payload = sd.ask_interaction(question, user_id=user, permissions=permissions, channel_id=channel,
                                     locale=locale)
        payload["type"] = 2 if kind == "ask" else 4
    elif kind == "retrain":
        options = [{"name": "reason", "type": 3, "value": "drift"}] if rng.random() < 0.3 else None
        payload = sd.command_interaction("retrain", options=options, user_id=user, permissions=permissions,
                                         channel_id=channel, locale=locale)
    elif kind == "unknown":
        payload = sd.command_interaction(rng.choice(("help", "", "ask ", "ASK", "retrain2")), user_id=user,
                                         channel_id=channel)
    elif kind == "button":
        message_id = sd.snowflake()
        message: dict[str, Any] = {"id": message_id, "channel_id": channel, "content": "", "components": []}
        answer_id = make_answer_id("discord", channel, message_id)
        custom_id = rng.choice((feedback_custom_id(POSITIVE, answer_id), feedback_custom_id(NEGATIVE, answer_id),
                                feedback_custom_id(POSITIVE, "0" * 32), "echorag:fb:+1:" + "g" * 32, "x"))
        payload = sd.button_interaction(custom_id, message, user_id=user, locale=locale)
    else:
        payload = sd.command_interaction("ask", user_id=user, channel_id=channel)
        payload["type"] = 5 if kind == "modal" else rng.choice((0, 6, 99, -1, 2**40))
        payload["data"] = {"custom_id": "modal", "components": []}
    if rng.random() < 0.15:  # a DM: no guild, the user at the top
        member = payload.pop("member", None) or {}
        for name in ("guild_id", "guild", "guild_locale"):
            payload.pop(name, None)
        payload["user"] = member.get("user") or {"id": user}
        notes.append("dm")
    if rng.random() < 0.1:  # a thread under a channel
        payload["channel"] = {"id": sd.snowflake(), "type": rng.choice((10, 11, 12)), "parent_id": channel}
        payload["channel_id"] = payload["channel"]["id"]
        notes.append("thread")
    return payload


def _discord_body(rng: random.Random, payload: Any, notes: list[str]) -> bytes:
    text = to_json(payload, ascii_only=rng.random() < 0.7)
    body = text.encode("utf-8", "surrogatepass")  # a lone surrogate here is invalid UTF-8 on the wire
    op = rng.randrange(30)
    if op == 0:
        notes.append("invalid UTF-8 inside")
        cut = rng.randrange(len(body) + 1)
        return body[:cut] + rng.choice((b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80")) + body[cut:]
    if op == 1:
        notes.append("UTF-16")
        return text.encode("utf-16", "surrogatepass")
    if op == 2:
        notes.append("BOM")
        return b"\xef\xbb\xbf" + body
    if op == 3:
        notes.append("truncated")
        return body[: rng.randrange(len(body) + 1)]
    if op == 4:
        notes.append("trailing junk")
        return body + rng.choice((b"\x00", b" {}", b"]", b"\n\n"))
    return body


def _discord_signed_headers(rng: random.Random, body: bytes, now: int, notes: list[str]) -> dict[str, str]:
    """Headers Discord would accept: a fresh timestamp (a few spellings of it) and its signature."""
    stamp = str(now - rng.randrange(200))
    if rng.random() < 0.1:
        stamp = rng.choice((f" {stamp}", f"+{stamp}", f"{stamp}\n", _arabic(stamp), "0" + stamp))
        notes.append(f"timestamp spelled {stamp!r}")
    signature = DISCORD_KEY.sign(stamp.encode() + body).signature.hex()
    if rng.random() < 0.05:
        signature = signature.upper()
        notes.append("signature upper-case")
    names = ("X-Signature-Ed25519", "X-Signature-Timestamp") if rng.random() < 0.1 else (
        "x-signature-ed25519", "x-signature-timestamp")
    return {names[0]: signature, names[1]: stamp}


def _discord_unsigned_headers(rng: random.Random, body: bytes, now: int, notes: list[str]) -> dict[str, str]:
    stamp = str(now)
    headers = {"x-signature-ed25519": DISCORD_KEY.sign(stamp.encode() + body).signature.hex(),
               "x-signature-timestamp": stamp}
    op = rng.randrange(8)
    if op == 0:
        headers.pop("x-signature-ed25519", None)
        if rng.random() < 0.5:
            headers.pop("x-signature-timestamp", None)
        notes.append("signature headers missing")
    elif op in (1, 2):
        value = rng.choice(("9" * 13, "9" * 400, "9" * 5_000, "١٢٣٤٥", "-5", f"-{now}", "1.5", f"{now}.0", "",
                            " ", "NaN", "inf", "1e10", "0x10", "１２３", str(now - 3600), str(now + 3600)))
        headers["x-signature-timestamp"] = value
        if rng.random() < 0.5:  # signed over the odd timestamp: only the timestamp is wrong
            headers["x-signature-ed25519"] = DISCORD_KEY.sign(value.encode() + body).signature.hex()
        notes.append(f"timestamp={short(value, 30)}")
    elif op in (3, 4):
        value = rng.choice(("é" * 128, "00" * 63, "00" * 65, "0" * 127, "zz" * 64, "", "00" * 64, "٣" * 128,
                            " " + "00" * 64, "0x" + "00" * 63, "00" * 5_000))
        headers["x-signature-ed25519"] = value
        notes.append(f"signature={short(value, 30)}")
    elif op == 5:
        stamp = headers.get("x-signature-timestamp", str(now))
        headers["x-signature-ed25519"] = OTHER_KEY.sign(stamp.encode() + body).signature.hex()
        notes.append("signed with another key")
    elif op == 6:
        stamp = headers.get("x-signature-timestamp", str(now))
        headers["x-signature-ed25519"] = DISCORD_KEY.sign(stamp.encode() + body + b" ").signature.hex()
        notes.append("signature of another body")
    else:
        headers["x-signature-timestamp"] = str(now - 1)
        notes.append("timestamp changed after signing")
    return headers


def discord_case(seed: int, mode: str, index: int) -> Case:
    """Case `index` of `mode` ("signed" or "unsigned") for the Discord handler."""
    rng = random.Random(f"{seed}:discord:{mode}:{index}")
    now, notes = int(time.time()), [mode]
    payload = mutate(rng, _discord_interaction(rng, index, notes), mutation_count(rng), notes)
    body = _discord_body(rng, payload, notes)
    headers = (_discord_signed_headers if mode == "signed" else _discord_unsigned_headers)(rng, body, now, notes)
    base64_body = rng.random() < 0.2
    event = sd.http_event(body, headers, base64_body=base64_body)
    if event["isBase64Encoded"]:
        notes.append("base64")
        if rng.random() < 0.1:
            event["body"] = rng.choice(("%%%not base64%%%", "YWJj=", "YW Jj", "====", event["body"][:-1]))
            notes.append("invalid base64")
    if rng.random() < (0.06 if mode == "unsigned" else 0.03):
        return _summarise(Case(mutate_envelope(rng, event, notes), notes))
    return _summarise(Case(event, notes))


@pytest.fixture
def discord_rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[sd.FakeDiscord]:
    """The Discord handler's settings exported as tests/test_discord.py does, with the fixed key."""
    fake = sd.FakeDiscord().start()
    sd.apply_settings_env(monkeypatch, make_settings(
        tmp_path,
        discord_public_key=DISCORD_KEY.verify_key.encode().hex(),
        discord_application_id=sd.APPLICATION_ID,
        discord_api_base_url=fake.url,
        discord_bot_token="test-bot-token",
        admin_user_ids=[f"discord:{DISCORD_ADMIN}"],
    ))
    try:
        yield fake
    finally:
        close_runtime()
        get_settings.cache_clear()
        fake.stop()


# --- running and reporting --------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the cases did: failures (reproducible descriptions), statuses seen, what users saw."""

    platform: str
    mode: str
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    firsts: list[str] = field(default_factory=list)

    def run(self, index: int, case: Case, call: Callable[[Any], Any]) -> None:
        """Call the handler with the case's event; record a failure for an exception or a 5xx."""
        try:
            response = call(case.event)
        except Exception as exc:  # what this test exists to find
            self.fail(index, case, f"raised {type(exc).__name__}: {short(str(exc), 200)}")
            return
        status = response.get("statusCode") if isinstance(response, dict) else None
        if not isinstance(status, int) or isinstance(status, bool):
            self.fail(index, case, f"answered {short(response)}")
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.seen.append(str(response.get("body") or ""))
        if status >= 500:
            self.fail(index, case, f"answered {status}: {short(response.get('body'), 200)}")

    def fail(self, index: int, case: Case, problem: str) -> None:
        kind = re.sub(r"""['"\d].*""", "", problem)[:60].strip()  # the problem without its details
        self.failures.append(f"{self.platform} seed={SEED} mode={self.mode} case={index}: {problem}\n"
                             f"    {case.describe()}")
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.kinds[kind] == 1:
            self.firsts.append(self.failures[-1])

    def report(self) -> str:
        """The first case of each distinct problem (up to REPORTED), with counts."""
        shown = "\n".join(self.firsts[:REPORTED])
        return (f"{len(self.failures)} failing {self.platform} cases {self.kinds} (rebuild one with "
                f"{self.platform}_case(SEED, mode, case)); statuses {self.statuses}:\n{shown}")


_LEAK_MARKERS = ("Traceback (most recent call last)", 'File "/', SLACK_SECRET, SLACK_TOKEN, "test-bot-token")


def shows_internals(texts: list[str], data_dir: Path) -> list[str]:
    """The texts users saw that carry internals (the suite's `leaked` markers and ours)."""
    markers = (*_LEAK_MARKERS, str(data_dir))
    return leaked(texts) + [t for t in texts if any(m in t for m in markers)]


def _lazy_crash(error: BaseException) -> BaseException | None:
    """What a failed lazy invocation's listener raised when it is not one of our errors (a bug), else None."""
    raised = error.__cause__ if type(error).__name__ == "LazyWorkFailed" and error.__cause__ else error
    return None if isinstance(raised, EchoRagError) else raised


# --- the tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["signed", "unsigned"])
def test_slack_handler_survives_fuzzed_requests(mode: str, slack_rig: SlackRig) -> None:
    rig, outcome = slack_rig, Outcome("slack", mode)
    for index in range(CASES[mode]):
        case = slack_case(SEED, mode, index, rig.fake.response_url)
        errors_before = len(rig.lam.errors)
        outcome.run(index, case, lambda event: rig.handler(event, ss.LambdaContext()))
        for error in rig.lam.errors[errors_before:]:
            if (crash := _lazy_crash(error)) is not None:
                outcome.fail(index, case, f"lazy run crashed: {type(crash).__name__}: {short(str(crash), 200)}")
    assert not outcome.failures, outcome.report()
    seen = [json.dumps(c.args, ensure_ascii=False) for c in rig.fake.calls] + [
        json.dumps(r, ensure_ascii=False) for r in rig.fake.responses]
    assert shows_internals(seen + outcome.seen, rig.data_dir) == []
    if mode == "signed":  # the signed cases did reach the listeners, not only the verifier
        assert rig.lam.invocations and rig.fake.calls_of("chat.update")
        assert outcome.statuses.get(200, 0) > CASES[mode] // 5  # most mutations are refused as 400


@pytest.mark.parametrize("mode", ["signed", "unsigned"])
def test_discord_handler_survives_fuzzed_requests(mode: str, discord_rig: sd.FakeDiscord, tmp_path: Path) -> None:
    outcome = Outcome("discord", mode)
    for index in range(CASES[mode]):
        case = discord_case(SEED, mode, index)
        outcome.run(index, case, lambda event: discord_interactions.handler(event, sd.LambdaContext()))
    assert not outcome.failures, outcome.report()
    seen = [json.dumps(c.body, ensure_ascii=False) for c in discord_rig.calls]
    assert shows_internals(seen + outcome.seen, tmp_path) == []
    if mode == "signed":  # the signed cases did reach the dispatcher: pongs, deferrals, hints
        assert outcome.statuses.get(200, 0) > CASES[mode] // 4
    else:
        assert set(outcome.statuses) <= {400, 401, 404, 405}


# --- regressions: what the fuzzer found, one request each -------------------------------------------


def test_slack_regressions_are_4xx(slack_rig: SlackRig) -> None:
    def signed(body: str, **kwargs: Any) -> dict[str, Any]:
        return ss.signed_event(body, SLACK_SECRET, **kwargs)

    null_timestamp = signed("{}")
    null_timestamp["headers"]["x-slack-request-timestamp"] = None  # Bolt raised on int("None")
    surrogate = signed("{}")
    surrogate["body"] = '{"type": "\ud800"}'  # the verifier's encode() raised (a 500 from Bolt)
    suggestion = signed("payload=" + quote(json.dumps({"type": "block_suggestion", "action_id": ["a"],
                                                       "user": {"id": "U1"}, "team": {"id": ss.TEAM_ID}})),
                        content_type=FORM)  # Bolt's unhandled-request warning concatenated the list: 500
    for event, status in ((null_timestamp, 401), (surrogate, 400), (suggestion, 400)):
        assert slack_rig.handler(event, ss.LambdaContext())["statusCode"] == status


def test_discord_regressions_are_4xx(discord_rig: sd.FakeDiscord) -> None:
    def call(event: Any) -> int:
        status: int = discord_interactions.handler(event, sd.LambdaContext())["statusCode"]
        return status

    ping = {"id": "1", "application_id": sd.APPLICATION_ID, "type": 1, "token": "t"}
    body = json.dumps(ping).encode()
    for stamp in ("9" * 400, "١٧٠٠٠٠٠٠٠٠"):  # 400 digits overflowed `time.time() - int(...)`: a 500
        signature = DISCORD_KEY.sign(stamp.encode() + body).signature.hex()
        assert call(sd.http_event(body, {"x-signature-ed25519": signature, "x-signature-timestamp": stamp})) == 401
    thread = {**sd.ask_interaction("q"), "channel": {"id": sd.CHANNEL_ID, "type": [11], "parent_id": "1"}}
    retrain = {**sd.command_interaction("retrain"), "member": [1]}
    assert call(sd.signed_event(DISCORD_KEY, thread)) == 200  # TypeError (unhashable); now: not a thread
    assert call(sd.signed_event(DISCORD_KEY, retrain)) == 400  # AttributeError on list.get
    no_context = sd.signed_event(DISCORD_KEY, ping)
    del no_context["requestContext"]
    int_header = sd.signed_event(DISCORD_KEY, ping)
    int_header["headers"]["x-signature-timestamp"] = 7
    surrogate = sd.signed_event(DISCORD_KEY, ping)
    surrogate["body"] = "\ud800"
    events: tuple[Any, ...] = (no_context, int_header, surrogate, [], None)
    for event in events:  # the resolver raised on each
        assert call(event) == 400
