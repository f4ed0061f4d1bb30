"""The HTTP API in front of the functions: API Gateway payload 2.0 events in, proxy responses out."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from rehearsal import ACCOUNT, REGION, log
from rehearsal.aws_lambda import Function, FunctionError
from rehearsal.servers import HttpReply, HttpRequest

_TEXT_TYPES = re.compile(r"text/.*|application/(json|[\w.+-]+\+json|xml|javascript)", re.IGNORECASE)


def api_gateway_event(request: HttpRequest, route_key: str) -> dict[str, Any]:
    """The event HTTP APIs hand a Lambda proxy integration: lower-case headers (repeats joined with
    commas, cookies apart), and a body that is base64 unless its content type is text, which means
    Slack's form posts (slash commands, interactivity) arrive base64-encoded, as they do on AWS."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        else:
            headers[key] = f"{headers[key]},{value}" if key in headers else value
    headers.setdefault("x-forwarded-for", request.client_ip)
    headers.setdefault("x-forwarded-proto", "https")
    content_type = headers.get("content-type", "").split(";")[0].strip()
    try:
        text = request.body.decode("utf-8") if _TEXT_TYPES.fullmatch(content_type) else None
    except UnicodeDecodeError:
        text = None
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.path,
        "rawQueryString": request.query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT, "apiId": "rehearsal", "domainName": f"rehearsal.execute-api.{REGION}.amazonaws.com",
            "domainPrefix": "rehearsal", "requestId": uuid.uuid4().hex, "routeKey": route_key, "stage": "$default",
            "http": {"method": request.method, "path": request.path, "protocol": "HTTP/1.1",
                     "sourceIp": request.client_ip, "userAgent": headers.get("user-agent", "")},
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": text is None and bool(request.body),
    }
    if cookies:
        event["cookies"] = cookies
    if request.query:
        pairs: dict[str, str] = {}
        for key, value in parse_qsl(request.query, keep_blank_values=True):
            pairs[key] = f"{pairs[key]},{value}" if key in pairs else value
        event["queryStringParameters"] = pairs
    if request.body:
        event["body"] = text if text is not None else base64.b64encode(request.body).decode()
    return event


def api_gateway_reply(result: Any) -> HttpReply:
    """The function's answer as HTTP API turns a 2.0 response into HTTP."""
    if not (isinstance(result, dict) and "statusCode" in result):  # a bare value is a 200 JSON body
        return HttpReply(200, {"content-type": "application/json"}, json.dumps(result).encode())
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    headers = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    headers.setdefault("content-type", "application/json" if raw[:1] in (b"{", b"[") else "text/plain")
    return HttpReply(int(result["statusCode"]), headers, raw)


class FrontDoor:
    """The HTTP API: each route goes to the function the template attaches it to."""

    def __init__(self, routes: dict[str, Function]) -> None:
        self.routes = routes
        self.events: list[dict[str, Any]] = []  # what the functions were handed, for the walk's checks
        self.errors: list[str] = []  # what made a function fail (API Gateway only says 500)

    def handle(self, request: HttpRequest) -> HttpReply:
        route_key = f"{request.method} {request.path}"
        function = self.routes.get(route_key)
        if function is None:
            return HttpReply(404, {"content-type": "application/json"}, b'{"message":"Not Found"}')
        event = api_gateway_event(request, route_key)
        self.events.append(event)
        try:
            result = function.invoke(event)
        except FunctionError as exc:
            log.error("%s failed: %s", function.spec.name, exc)
            self.errors.append(f"{function.spec.name}: {exc}")
            return HttpReply(500, {"content-type": "application/json"}, b'{"message":"Internal Server Error"}')
        return api_gateway_reply(result)
