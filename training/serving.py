"""Tell vLLM to serve a newly published adapter under the same name (runtime LoRA update).

vLLM registers `/v1/load_lora_adapter` only when started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`
and `--enable-lora`; replacing an adapter that is already loaded needs `load_inplace`. The path is
read by vLLM itself, so it must be a directory on the vLLM host (the worker runs beside it and
materialises the published version there). A failure is returned, not raised: vLLM then keeps
serving the adapter it had, and the worker reports that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.registry import AdapterRegistry
    from core.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HotLoadResult:
    ok: bool
    detail: str  # "loaded" or why not, in one line


def hot_load(vllm_url: str, *, lora_name: str, lora_path: Path, api_key: str | None = None,
             timeout_s: float = 120.0) -> HotLoadResult:
    """POST {vllm_url}/v1/load_lora_adapter with load_inplace; never raises."""
    import httpx

    url = f"{vllm_url.rstrip('/')}/v1/load_lora_adapter"
    if url.endswith("/v1/v1/load_lora_adapter"):  # VLLM_URL given as the OpenAI base (…/v1)
        url = url.replace("/v1/v1/", "/v1/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"lora_name": lora_name, "lora_path": str(lora_path), "load_inplace": True}
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        log.warning("vLLM hot-load of %s from %s failed: %s", lora_name, lora_path, exc)
        return HotLoadResult(ok=False, detail=f"cannot reach vLLM at {url}: {exc}")
    if response.status_code >= 400:
        text = response.text.strip().replace("\n", " ")[:300]
        log.warning("vLLM refused to hot-load %s: HTTP %s %s", lora_name, response.status_code, text)
        return HotLoadResult(ok=False, detail=f"vLLM answered HTTP {response.status_code}: {text}")
    log.info("vLLM now serves %s from %s", lora_name, lora_path)
    return HotLoadResult(ok=True, detail="loaded")


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
        return HotLoadResult(ok=True, detail=f"vLLM now serves v{version} as {registry.name!r}")
    return HotLoadResult(
        ok=False,
        detail=f"vLLM hot-load FAILED ({result.detail}): vLLM keeps serving the previous adapter until it is reloaded",
    )
