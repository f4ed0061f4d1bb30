"""In-process LLM (LLM_BACKEND=transformers): the base model at LLM_MODEL plus the CURRENT adapter.

One machine closes the whole loop with it: answers come from the base model with the adapter the
registry calls CURRENT, and a newly published (or rolled back) version is picked up on the next
request after at most ADAPTER_POLL_S seconds, without a restart. Imported only when selected
(`rag.llm.llm_from_settings`); torch/transformers/peft are imported inside the functions, so
`render_prompt` and `local_adapter` (shared with the training host) cost nothing to import.

The prompt is rendered with the tokenizer's chat template when it has one, else a plain
`### System / ### User / ### Assistant` layout; training renders with the same function, so the
adapter learns the exact text it is served with.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.registry import MANIFEST, AdapterRegistry
from core.settings import Settings
from core.store import BlobStore
from rag.llm import LLMUnavailable

log = logging.getLogger(__name__)

_PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Chat messages → the text the model continues (generation prompt included)."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception as exc:  # some templates refuse a system turn: fold it into the first user turn
            if not messages or messages[0]["role"] != "system":
                raise
            log.debug("chat template refused the system turn (%s); merging it into the user turn", exc)
            system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
            if rest and rest[0]["role"] == "user":
                rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
            else:
                rest.insert(0, {"role": "user", "content": system})
            return str(tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True))
    parts = [f"### {_PLAIN_ROLES.get(m['role'], m['role'].title())}:\n{m['content']}\n\n" for m in messages]
    return "".join(parts) + "### Assistant:\n"


PLAIN_TURN = "\n### "  # where the plain layout's next turn starts: a base model writes one on its own


def generate_greedy(model: Any, tokenizer: Any, messages: list[dict[str, Any]], *, max_tokens: int) -> str:
    """The greedy answer as served (the bot and the gate's gold check alike).

    A model without a chat template continues the plain layout past its answer with made-up
    `### User:` turns; generation stops at the next turn marker and the text is cut there."""
    import torch

    plain = not getattr(tokenizer, "chat_template", None)
    inputs = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
    inputs = inputs.to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, **({"stop_strings": [PLAIN_TURN], "tokenizer": tokenizer} if plain else {}),
        )
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    text = text if isinstance(text, str) else "".join(text)  # one sequence decodes to a str
    return (text.split(PLAIN_TURN, 1)[0] if plain else text).strip()


def local_adapter(registry: AdapterRegistry, version: int, cache_root: Path) -> Path:
    """A local directory holding `version` (downloaded once; a finished copy has its manifest).

    Downloads go to a temporary sibling and are renamed into place, so a crash never leaves a
    half-copied adapter that looks complete.
    """
    dest = cache_root / registry.name / f"v{version}"
    if (dest / MANIFEST).is_file():
        return dest
    tmp = dest.parent / f".tmp-v{version}-{uuid.uuid4().hex[:8]}"
    try:
        registry.download(version, tmp)
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first (or left a partial copy without a manifest)
            if not (dest / MANIFEST).is_file():
                shutil.rmtree(dest, ignore_errors=True)
                tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def prune_local_adapters(cache_root: Path, name: str, keep: set[int]) -> list[Path]:
    """Delete local copies of versions not in `keep` (the registry keeps every version)."""
    removed = []
    folder = cache_root / name
    for path in folder.glob("v*") if folder.is_dir() else []:
        if path.name[1:].isdigit() and int(path.name[1:]) not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class TransformersLLM:
    """Greedy chat completion from a local causal LM with the registry's CURRENT LoRA adapter."""

    def __init__(self, settings: Settings, *, store: BlobStore | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        base = settings.llm_model or settings.base_model
        if not base:
            raise ConfigError("LLM_BACKEND=transformers needs LLM_MODEL (a local path or hub id of the base model)")
        device, dtype = ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(base)
            # transformers types `PreTrainedModel.to` through a decorator whose stub drops `self`.
            self._base = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)  # type: ignore[arg-type]
        except OSError as exc:
            raise ConfigError(f"cannot load LLM_MODEL {base!r}: {exc}") from exc
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._device = device
        self._model: Any = self._base
        self._peft: Any = None
        self._registry = AdapterRegistry.from_settings(settings, store)
        self._cache_root = settings.resolved_adapter_cache_dir
        self._poll_s = settings.adapter_poll_s
        self._checked_at = float("-inf")
        self._loaded: int | None = None
        self._lock = threading.Lock()
        self.model = str(base)
        self.adapter_version: str | None = None
        self._refresh(force=True)

    def _refresh(self, *, force: bool = False) -> None:
        """Follow CURRENT (at most every ADAPTER_POLL_S); a failed load keeps the adapter in use."""
        now = time.monotonic()
        if not force and now - self._checked_at < self._poll_s:
            return
        self._checked_at = now
        try:
            version = self._registry.current()
            if version == self._loaded:
                return
            if version is None:
                self._model, self._loaded, self.adapter_version = self._base, None, None
                if self._peft is not None:
                    self._model = self._peft
                    self._peft.base_model.disable_adapter_layers()
                return
            self._load(version)
        except Exception as exc:
            log.warning("could not switch to the CURRENT adapter (still using %s): %s", self.adapter_version or "base", exc)

    def _load(self, version: int) -> None:
        from peft import PeftModel

        path = local_adapter(self._registry, version, self._cache_root)
        name = f"v{version}"
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(path), adapter_name=name).to(self._device)
        else:
            self._peft.load_adapter(str(path), adapter_name=name)
            self._peft.to(self._device)
            self._peft.base_model.enable_adapter_layers()
        self._peft.set_adapter(name)
        old = self._loaded
        if old is not None and f"v{old}" in self._peft.peft_config:
            self._peft.delete_adapter(f"v{old}")
        self._peft.eval()
        self._model, self._loaded, self.adapter_version = self._peft, version, name
        log.info("serving adapter %s v%s", self._registry.name, version)

    def complete(self, messages: list[dict[str, Any]], *, max_tokens: int) -> str:
        with self._lock:
            self._refresh()
            try:
                return generate_greedy(self._model, self._tokenizer, messages, max_tokens=max_tokens)
            except RuntimeError as exc:
                raise LLMUnavailable(f"the in-process model failed to generate: {exc}") from exc


def llm_from_settings(settings: Settings) -> TransformersLLM:
    """Entry point `rag.llm.llm_from_settings` calls for LLM_BACKEND=transformers."""
    return TransformersLLM(settings)
