"""Tell vLLM to serve a newly published adapter under the same name (runtime LoRA update).

vLLM registers `/v1/load_lora_adapter` only when started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`
and `--enable-lora`; replacing an adapter that is already loaded needs `load_inplace`. Builds from
before `load_inplace` ignore the field and answer 400 "already been loaded" (stricter ones reject
the field), so then the old adapter is unloaded and the new one loaded: requests naming the adapter
fail for the moment in between, which beats serving the old one until vLLM restarts. The path is
read by vLLM itself, from its own working directory, so it is sent absolute and must be a directory
on the vLLM host (the worker runs beside it and materialises the published version there). A
failure is returned, not raised: vLLM then keeps serving the adapter it had, and the worker reports
that.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import EchoRagError

if TYPE_CHECKING:
    import httpx

    from core.registry import AdapterRegistry
    from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HotLoadResult:
    ok: bool
    detail: str  # "loaded" or why not, in one line


def _endpoint(vllm_url: str, name: str) -> str:
    url = f"{vllm_url.rstrip('/')}/v1/{name}"
    return url.replace("/v1/v1/", "/v1/")  # VLLM_URL given as the OpenAI base (…/v1)


def _body_text(response: httpx.Response) -> str:
    return response.text.strip().replace("\n", " ")[:300]


def _refuses_inplace(response: httpx.Response) -> bool:
    """A build without `load_inplace`: 400 "…has already been loaded" (the field was ignored), or a
    validation error naming the field (400/422)."""
    text = response.text.lower()
    return response.status_code in (400, 422) and ("already been loaded" in text or "load_inplace" in text)


def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float) -> httpx.Response | str:
    """The response, or why there is none (one line)."""
    import httpx

    try:
        return httpx.post(url, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"cannot reach vLLM at {url}: {exc}"


def hot_load(vllm_url: str, *, lora_name: str, lora_path: Path, api_key: str | None = None,
             timeout_s: float = 120.0) -> HotLoadResult:
    """POST /v1/load_lora_adapter with load_inplace (unload + load where vLLM refuses that); never raises."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    path = str(Path(lora_path).resolve())  # vLLM resolves a relative path against its own cwd
    load_url = _endpoint(vllm_url, "load_lora_adapter")
    response = _post(load_url, {"lora_name": lora_name, "lora_path": path, "load_inplace": True}, headers, timeout_s)
    how = "loaded"
    if not isinstance(response, str) and _refuses_inplace(response):
        log.info("vLLM refused load_inplace for %s (HTTP %s %s): unloading, then loading again",
                 lora_name, response.status_code, _body_text(response))
        unload_url = _endpoint(vllm_url, "unload_lora_adapter")
        unloaded = _post(unload_url, {"lora_name": lora_name}, headers, timeout_s)
        if isinstance(unloaded, str):
            log.warning("vLLM unload of %s failed: %s", lora_name, unloaded)
            return HotLoadResult(ok=False, detail=f"vLLM refused load_inplace, then the unload failed: {unloaded}")
        # 400/404 "cannot be found": it was not loaded (only the field was refused), so just load it.
        if unloaded.status_code >= 400 and unloaded.status_code not in (400, 404):
            text = _body_text(unloaded)
            log.warning("vLLM refused to unload %s: HTTP %s %s", lora_name, unloaded.status_code, text)
            return HotLoadResult(
                ok=False, detail=f"vLLM refused load_inplace, then answered HTTP {unloaded.status_code} to the unload: {text}"
            )
        response = _post(load_url, {"lora_name": lora_name, "lora_path": path}, headers, timeout_s)
        how = "loaded after an unload (this vLLM does not support load_inplace)"
    if isinstance(response, str):
        log.warning("vLLM hot-load of %s from %s failed: %s", lora_name, path, response)
        return HotLoadResult(ok=False, detail=response)
    if response.status_code >= 400:
        text = _body_text(response)
        log.warning("vLLM refused to hot-load %s: HTTP %s %s", lora_name, response.status_code, text)
        return HotLoadResult(ok=False, detail=f"vLLM answered HTTP {response.status_code}: {text}")
    log.info("vLLM now serves %s from %s (%s)", lora_name, path, how)
    return HotLoadResult(ok=True, detail=how)


def serve_version(settings: Settings, registry: AdapterRegistry, version: int) -> HotLoadResult | None:
    """Copy `version` next to vLLM and hot-load it under the adapter name; None when no vLLM is
    configured. Never raises: the version is published already, serving it is reported."""
    if not settings.vllm_url:
        return None
    from rag.llm_transformers import local_adapter

    try:
        path = local_adapter(registry, version, settings.resolved_adapter_cache_dir)
    except Exception as exc:
        log.warning("could not copy v%s to the adapter cache for vLLM: %s", version, exc)
        return HotLoadResult(
            ok=False, detail=f"vLLM hot-load FAILED (could not copy v{version} locally: {exc}): vLLM keeps the previous adapter"
        )
    result = hot_load(settings.vllm_url, lora_name=registry.name, lora_path=path, api_key=settings.llm_api_key)
    if result.ok:
        note = "" if result.detail == "loaded" else f" ({result.detail})"
        return HotLoadResult(ok=True, detail=f"vLLM now serves v{version} as {registry.name!r}{note}")
    return HotLoadResult(
        ok=False,
        detail=f"vLLM hot-load FAILED ({result.detail}): vLLM keeps serving the previous adapter until it is reloaded",
    )


def follow_current(
    settings: Settings, registry: AdapterRegistry, *, interval_s: float, stop: threading.Event, once: bool = False
) -> int | None:
    """Keep the local vLLM serving the registry's CURRENT: the serving host's side when training runs
    elsewhere (AWS Batch), where no worker sits beside vLLM to hot-load what it publishes. Checks
    every `interval_s` until `stop` is set (or one check when `once`); a failed load is retried at the
    next check. Returns the version served last, None if none was."""
    served: int | None = None
    while True:
        try:
            current = registry.current()
        except EchoRagError as exc:  # the store is unreachable for now: vLLM keeps what it serves
            log.warning("could not read CURRENT for %r: %s", registry.name, exc)
            current = served
        if current is not None and current != served:
            result = serve_version(settings, registry, current)
            if result is not None and result.ok:
                served = current
            log.log(logging.INFO if result is not None and result.ok else logging.WARNING,
                    "%s", result.detail if result is not None else "VLLM_URL is not set")
        if once or stop.wait(interval_s):
            return served
