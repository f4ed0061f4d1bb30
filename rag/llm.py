"""LLM clients behind one small protocol: any OpenAI-compatible endpoint, or an in-process model.

`llm_from_settings` returns None when no LLM is configured: the agent then answers extractively.
With vLLM serving LoRA adapters, the adapter's name is the `model` of the request, so switching to a
new adapter is a settings change (or a hot-load under the same name), not a code change.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from core.errors import ConfigError, EchoRagError, PermanentError, TransientError
from core.settings import Settings

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

log = logging.getLogger(__name__)
_VERSION_TTL_S = 60.0


class LLMError(EchoRagError):
    """The model failed: condensation falls back to the user's own words; answering cannot."""


class LLMUnavailable(LLMError, TransientError):
    """The endpoint is unreachable, timed out, rate-limited or answered 5xx: retry later."""


class LLMRejected(LLMError, PermanentError):
    """The endpoint refused the request for good (a 4xx other than 408/429: wrong model, bad key)."""


@runtime_checkable
class LLM(Protocol):
    """What the agent needs from a model: chat completion plus what to report about itself."""

    model: str

    @property
    def adapter_version(self) -> str | None:
        """The served adapter's version ("v3"), or None for a plain model (read-only)."""
        ...

    def complete(self, messages: list[dict[str, Any]], *, max_tokens: int) -> str: ...


@runtime_checkable
class StreamingLLM(LLM, Protocol):
    """A model that can also hand its answer over as it writes it."""

    def stream(self, messages: list[dict[str, Any]], *, max_tokens: int) -> Iterator[str]: ...


class OpenAICompatibleLLM:
    """Chat completions over the `openai` client against any compatible base URL (vLLM, Ollama, …)."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        adapter_version: str | None = None,
        temperature: float = 0.0,
        version_source: Callable[[], int | None] | None = None,
    ) -> None:
        from openai import OpenAI  # the client pulls in httpx/pydantic models: load it only when used

        # Local servers ignore the key, but the client refuses to start without one.
        self._client = OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=1
        )
        self.model = model
        self._adapter_version = adapter_version
        self._version_source = version_source
        self._version_checked = -math.inf
        self.base_url = base_url
        self._where = base_url or "the OpenAI API"
        self._timeout_s = timeout_s
        self._temperature = temperature

    @property
    def adapter_version(self) -> str | None:
        """The served adapter's registry version ("v3") when the model is our adapter; re-read at most
        once a minute, since the training host promotes and hot-loads under the same name."""
        if self._version_source is None:
            return self._adapter_version
        now = time.monotonic()
        if now - self._version_checked >= _VERSION_TTL_S:
            self._version_checked = now
            try:
                version = self._version_source()
            except EchoRagError as exc:
                log.warning("could not read the current adapter version: %s", exc)
            else:
                self._adapter_version = f"v{version}" if version is not None else None
        return self._adapter_version

    def _create(self, messages: list[dict[str, Any]], *, max_tokens: int, stream: bool) -> Any:
        with self._errors():
            return self._client.chat.completions.create(
                model=self.model,
                # Our messages are {"role", "content"} dicts, the shape of the client's TypedDicts.
                messages=cast("list[ChatCompletionMessageParam]", messages),
                max_tokens=max_tokens,
                temperature=self._temperature,
                stream=stream,
            )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The client's exceptions as LLMUnavailable (retry) or LLMRejected (do not), one line each."""
        import openai

        try:
            yield
        except openai.APITimeoutError as exc:  # reached, but too slow: not a wrong URL
            raise LLMUnavailable(
                f"the LLM at {self._where} did not answer within {self._timeout_s:g} s (LLM_TIMEOUT_S)"
            ) from exc
        except openai.APIConnectionError as exc:
            raise LLMUnavailable(
                f"cannot reach the LLM at {self._where}: {exc}; check LLM_BASE_URL or unset it"
            ) from exc
        except openai.APIStatusError as exc:
            final = 400 <= exc.status_code < 500 and exc.status_code not in (408, 409, 429)
            raise (LLMRejected if final else LLMUnavailable)(
                f"the LLM endpoint answered HTTP {exc.status_code} for model {self.model!r}: {exc.message}"
            ) from exc
        except openai.APIError as exc:
            raise LLMUnavailable(f"the LLM request failed: {exc}") from exc

    def stream(self, messages: list[dict[str, Any]], *, max_tokens: int) -> Iterator[str]:
        """The answer's text as the endpoint streams it (server-sent events), piece by piece; a
        failure before or during the stream raises as `complete` does."""
        chunks = self._create(messages, max_tokens=max_tokens, stream=True)
        with self._errors():
            for chunk in chunks:
                choices = getattr(chunk, "choices", None) or []
                delta = getattr(choices[0], "delta", None) if choices else None
                text = getattr(delta, "content", None)
                if isinstance(text, str) and text:
                    yield text

    def complete(self, messages: list[dict[str, Any]], *, max_tokens: int) -> str:
        response = self._create(messages, max_tokens=max_tokens, stream=False)
        choices = getattr(response, "choices", None)  # a 200 that is not JSON comes back as a str
        if not isinstance(choices, list):
            raise LLMRejected(
                f"the endpoint at {self._where} answered 200 but not with a chat completion: "
                "is LLM_BASE_URL the /v1 base of an OpenAI-compatible server?"
            )
        if not choices:
            raise LLMUnavailable(f"the LLM returned no choices for model {self.model!r}")
        content = getattr(getattr(choices[0], "message", None), "content", None)
        return content.strip() if isinstance(content, str) else ""


def _registry_version(settings: Settings) -> Callable[[], int | None]:
    """When LLM_MODEL is ADAPTER_NAME, vLLM serves the registry's CURRENT adapter under that name."""

    def current() -> int | None:
        from core.registry import AdapterRegistry

        return AdapterRegistry.from_settings(settings).current()

    return current


def llm_from_settings(settings: Settings) -> LLM | None:
    """The configured LLM, or None for extractive answers.

    LLM_BACKEND=auto: an OpenAI-compatible client when LLM_BASE_URL or LLM_MODEL is set, else None.
    """
    if not settings.uses_llm:
        return None
    backend = "openai" if settings.llm_backend == "auto" else settings.llm_backend
    if backend == "openai":
        if not settings.llm_model:
            raise ConfigError(
                "LLM_MODEL is required for an OpenAI-compatible LLM (with vLLM: the adapter name)"
            )
        return OpenAICompatibleLLM(
            model=settings.llm_model,
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key,
            timeout_s=settings.llm_timeout_s,
            version_source=_registry_version(settings)
            if settings.llm_model == settings.adapter_name
            else None,
        )
    if backend == "transformers":
        # Imported only here: it loads torch/transformers, which Lambda code must never import.
        module = importlib.import_module("rag.llm_transformers")
        return module.llm_from_settings(settings)
    raise ConfigError(f"unknown LLM_BACKEND {backend!r}: use auto, openai, transformers or extractive")
