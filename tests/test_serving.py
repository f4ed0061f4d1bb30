"""vLLM hot-load (`training.serving`) against a small fake vLLM that behaves like the real builds:
it reads `lora_path` from its own working directory, and an old build ignores `load_inplace`."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.contracts import AdapterManifest
from core.registry import AdapterRegistry
from tests.conftest import make_settings
from training.serving import hot_load, serve_version


class FakeVLLM:
    """`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` with vLLM's answers.

    `inplace`: "supported" (current builds), "ignored" (older builds: the field is dropped, so a
    second load of a name is 400 "already been loaded"), "rejected" (strict validation: 422 naming
    the field). A relative `lora_path` is looked up under `cwd`, as vLLM's own process would.
    """

    def __init__(self, cwd: Path, inplace: str = "supported", unload_status: int | None = None) -> None:
        self.cwd, self.inplace, self.unload_status = cwd, inplace, unload_status
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.loaded: dict[str, str] = {}  # lora_name -> path it serves
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                fake.calls.append((self.path, body))
                status, text = fake.answer(self.path, body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if status == 200 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        name = body.get("lora_name", "")
        if path == "/v1/unload_lora_adapter":
            if self.unload_status is not None:
                return self.unload_status, json.dumps({"message": "injected unload failure"})
            if self.loaded.pop(name, None) is None:
                return 404, json.dumps({"message": f"The lora adapter '{name}' cannot be found."})
            return 200, f"Success: LoRA adapter '{name}' removed successfully."
        if path != "/v1/load_lora_adapter":
            return 404, json.dumps({"message": "Not Found"})
        if "load_inplace" in body and self.inplace == "rejected":
            return 422, json.dumps({"detail": [{"loc": ["body", "load_inplace"], "msg": "Extra inputs are not permitted"}]})
        inplace = bool(body.get("load_inplace")) and self.inplace == "supported"
        if name in self.loaded and not inplace:
            return 400, json.dumps({"message": f"The lora adapter '{name}' has already been loaded.", "code": 400})
        where = self.cwd / body["lora_path"]  # an absolute lora_path stays as it is
        if not (where / "adapter_config.json").is_file():
            return 400, json.dumps({"message": f"No adapter found for {body['lora_path']}"})
        self.loaded[name] = str(where)
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def __enter__(self) -> FakeVLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def vllm_cwd(tmp_path: Path) -> Path:
    path = tmp_path / "vllm-cwd"  # not the worker's directory
    path.mkdir()
    return path


@pytest.fixture
def vllm(vllm_cwd: Path) -> Iterator[FakeVLLM]:
    with FakeVLLM(vllm_cwd) as fake:
        yield fake


@pytest.fixture
def old_vllm(vllm_cwd: Path) -> Iterator[FakeVLLM]:
    with FakeVLLM(vllm_cwd, inplace="ignored") as fake:
        yield fake


def _adapter(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    return path


@pytest.mark.parametrize("cache", [None, "cache"], ids=["DATA_DIR-adapters", "ADAPTER_CACHE_DIR"])
def test_a_relative_data_dir_sends_an_absolute_lora_path(
    cache: str | None, vllm: FakeVLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(Path("data"), vllm_url=vllm.url, adapter_cache_dir=Path(cache) if cache else None)
    registry = AdapterRegistry.from_settings(settings)
    registry.publish(_adapter(tmp_path, "files"), AdapterManifest(name="x", version=0, job_id="job1"), promote=True)

    result = serve_version(settings, registry, 1)

    assert result is not None and result.ok, result
    [(path, body)] = vllm.calls
    expected = (tmp_path / (cache or "data/adapters") / settings.adapter_name / "v1").resolve()
    assert path == "/v1/load_lora_adapter" and body["load_inplace"] is True
    assert Path(body["lora_path"]).is_absolute() and Path(body["lora_path"]) == expected
    assert vllm.loaded == {settings.adapter_name: str(expected)}


def test_current_vllm_replaces_in_place_without_an_unload(vllm: FakeVLLM, tmp_path: Path) -> None:
    first, second = _adapter(tmp_path, "v1"), _adapter(tmp_path, "v2")
    assert hot_load(vllm.url, lora_name="echorag", lora_path=first).ok
    result = hot_load(vllm.url, lora_name="echorag", lora_path=second)
    assert result.ok and result.detail == "loaded"
    assert [path for path, _ in vllm.calls] == ["/v1/load_lora_adapter"] * 2
    assert vllm.loaded == {"echorag": str(second)}


def test_a_vllm_without_load_inplace_gets_an_unload_then_a_load(old_vllm: FakeVLLM, tmp_path: Path) -> None:
    first, second = _adapter(tmp_path, "v1"), _adapter(tmp_path, "v2")
    assert hot_load(old_vllm.url, lora_name="echorag", lora_path=first).ok  # not loaded yet: plain success
    old_vllm.calls.clear()

    result = hot_load(old_vllm.url + "/v1", lora_name="echorag", lora_path=second)  # VLLM_URL as the OpenAI base

    assert result.ok and "unload" in result.detail and "load_inplace" in result.detail
    assert old_vllm.calls == [
        ("/v1/load_lora_adapter", {"lora_name": "echorag", "lora_path": str(second), "load_inplace": True}),
        ("/v1/unload_lora_adapter", {"lora_name": "echorag"}),
        ("/v1/load_lora_adapter", {"lora_name": "echorag", "lora_path": str(second)}),
    ]
    assert old_vllm.loaded == {"echorag": str(second)}  # the new version is served, not the old one


def test_a_vllm_that_rejects_the_field_gets_a_load_without_it(vllm_cwd: Path, tmp_path: Path) -> None:
    """Strict validation (422 naming load_inplace) on a first load: the unload finds nothing (404),
    and the plain load goes ahead."""
    with FakeVLLM(vllm_cwd, inplace="rejected") as strict:
        result = hot_load(strict.url, lora_name="echorag", lora_path=_adapter(tmp_path, "v1"))
        assert result.ok, result
        assert [path for path, _ in strict.calls] == [
            "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/load_lora_adapter"]
        assert "echorag" in strict.loaded


def test_a_failed_unload_is_reported_and_nothing_else_is_tried(vllm_cwd: Path, tmp_path: Path) -> None:
    with FakeVLLM(vllm_cwd, inplace="ignored", unload_status=500) as broken:
        broken.loaded["echorag"] = "/old/v1"
        result = hot_load(broken.url, lora_name="echorag", lora_path=_adapter(tmp_path, "v2"))
        assert not result.ok and "HTTP 500" in result.detail and "unload" in result.detail
        assert [path for path, _ in broken.calls] == ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
        assert broken.loaded == {"echorag": "/old/v1"}  # still serving the previous adapter


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_vllm_that_is_down_is_reported_not_raised(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    result = hot_load(url, lora_name="echorag", lora_path=_adapter(tmp_path, "v1"), timeout_s=5)
    assert not result.ok and "cannot reach vLLM" in result.detail

    settings = make_settings(tmp_path / "data", vllm_url=url)
    registry = AdapterRegistry.from_settings(settings)
    registry.publish(_adapter(tmp_path, "files"), AdapterManifest(name="x", version=0, job_id="job1"), promote=True)
    served = serve_version(settings, registry, 1)
    assert served is not None and not served.ok
    assert "vLLM hot-load FAILED" in served.detail and "cannot reach vLLM" in served.detail


def test_follow_serves_current_and_each_later_promotion(vllm: FakeVLLM, tmp_path: Path) -> None:
    """The serving host of the Batch shape: no worker beside vLLM, so it follows CURRENT itself."""
    import threading

    from training.serving import follow_current

    settings = make_settings(tmp_path / "data", vllm_url=vllm.url)
    registry = AdapterRegistry.from_settings(settings)
    stop = threading.Event()
    assert follow_current(settings, registry, interval_s=0, stop=stop, once=True) is None  # nothing published
    assert vllm.calls == []
    registry.publish(_adapter(tmp_path, "one"), AdapterManifest(name="x", version=0, job_id="job1"), promote=True)
    assert follow_current(settings, registry, interval_s=0, stop=stop, once=True) == 1
    registry.publish(_adapter(tmp_path, "two"), AdapterManifest(name="x", version=0, job_id="job2"), promote=True)
    assert follow_current(settings, registry, interval_s=0, stop=stop, once=True) == 2
    assert vllm.loaded[settings.adapter_name].endswith("v2")
    assert [body["lora_path"].rsplit("/", 1)[-1] for _, body in vllm.calls] == ["v1", "v2"]


def test_follow_retries_a_failed_load_at_the_next_check(tmp_path: Path) -> None:
    import threading

    from training.serving import follow_current

    settings = make_settings(tmp_path / "data", vllm_url=f"http://127.0.0.1:{_closed_port()}")
    registry = AdapterRegistry.from_settings(settings)
    registry.publish(_adapter(tmp_path, "one"), AdapterManifest(name="x", version=0, job_id="job1"), promote=True)
    stop = threading.Event()
    checks = 0

    def stop_after_two(timeout: float | None = None) -> bool:
        nonlocal checks
        checks += 1
        return checks >= 2

    stop.wait = stop_after_two  # type: ignore[method-assign]
    assert follow_current(settings, registry, interval_s=0, stop=stop) is None  # vLLM down: tried twice, never served
    assert checks == 2
