"""Faults as production meets them: an OpenAI-compatible endpoint that is down for a while, and a
blob store whose writes under one prefix fail for a while (S3 503s, a full disk).

Their error messages name hosts, buckets and keys on purpose: a test then checks that none of it
reaches a user.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from core.errors import StoreError
from core.store import BlobStore

INTERNALS = ("10.0.7.12", "s3://echorag-feedback-prod", "HTTP 503", "SlowDown")


class FlakyLLM:
    """POST /v1/chat/completions: 503 for the first `fail_first` requests, then an answer citing [1]
    (streamed word by word as server-sent events when the request asks for a stream)."""

    def __init__(self, fail_first: int, answer: str = "Deploys go out on Tuesdays and Thursdays [1].") -> None:
        self.fail_first, self.answer, self.requests = fail_first, answer, 0
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                flaky.requests += 1
                if flaky.requests <= flaky.fail_first:
                    self._send(503, {"error": {"message": "upstream 10.0.7.12:8000 overloaded", "type": "server"}})
                    return
                if body.get("stream"):
                    self._stream(re.findall(r"\S+\s*", flaky.answer))
                    return
                choice = {"index": 0, "message": {"role": "assistant", "content": flaky.answer}, "finish_reason": "stop"}
                self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]})

            def _stream(self, pieces: list[str]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for piece in pieces:
                    chunk = {"id": "s1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FlakyLLM:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class FlakyStore:
    """A real store whose `put`s under `prefix` fail `failures` times, as S3 does under load; with
    `after`, only once that many of them have succeeded (a publisher that dies midway)."""

    def __init__(self, inner: BlobStore, prefix: str = "", failures: int = 1, *, after: int = 0) -> None:
        self.inner, self.prefix, self.failures, self.after = inner, prefix, failures, after
        self.failed = 0

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        if key.startswith(self.prefix):
            if self.after > 0:
                self.after -= 1
            elif self.failed < self.failures:
                self.failed += 1
                raise StoreError(f"S3 put s3://echorag-feedback-prod/{key} failed after 4 retries: SlowDown")
        return self.inner.put(key, data, if_absent=if_absent)

    def get(self, key: str) -> bytes | None:
        return self.inner.get(key)

    def list(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        return self.inner.list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def leaked(texts: list[str]) -> list[str]:
    """The texts a user saw that carry any internal detail."""
    return [t for t in texts if any(secret in t for secret in INTERNALS)]
