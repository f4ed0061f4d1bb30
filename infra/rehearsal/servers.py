"""Loopback HTTP: a threaded server that hands each request to a function, and a POST client."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

from rehearsal import RehearsalError, log, one_line


@dataclass
class HttpRequest:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    client_ip: str


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            raise RehearsalError(f"expected JSON, got {self.status}: {one_line(self.body[:200].decode(errors='replace'))}") from None


@contextmanager
def serve(handle: Callable[[HttpRequest], HttpReply]) -> Iterator[str]:
    """A ThreadingHTTPServer on 127.0.0.1 that hands every request to `handle`; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return None

        def _serve(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("content-length") or 0)
            request = HttpRequest(self.command, url.path, url.query, list(self.headers.items()),
                                  self.rfile.read(length) if length else b"", self.client_address[0])
            try:
                reply = handle(request)
            except Exception as exc:  # a bug in the rehearsal itself: say it, do not hang the client
                log.exception("local server failed")
                reply = HttpReply(500, {"content-type": "text/plain"}, f"rehearsal error: {exc}".encode())
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 60) -> HttpReply:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return HttpReply(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, dict(exc.headers.items()), exc.read())
    except (urllib.error.URLError, TimeoutError) as exc:
        raise RehearsalError(f"POST {url} failed: {one_line(exc)}") from None
