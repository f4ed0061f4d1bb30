"""Dense embeddings, off until configured: a sentence-transformers model or an `/embeddings` API.

- `DENSE_MODEL` = a sentence-transformers model name or folder (e.g. `BAAI/bge-m3`): loaded in
  this process. torch is imported only here, inside the loader, never at module import, so the
  Lambda functions (no torch) can import `rag` freely.
- `EMBEDDING_BASE_URL` + `EMBEDDING_MODEL` (+ `EMBEDDING_API_KEY`): any OpenAI-compatible
  embeddings endpoint (OpenAI, vLLM, Ollama, TEI). Nothing heavy is imported.
Vectors are L2-normalised and stored with cosine distance.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Protocol

from core.errors import ConfigError, TransientError
from core.settings import Settings


class DenseEncoder(Protocol):
    name: str

    @property
    def size(self) -> int: ...
    def documents(self, texts: list[str]) -> list[list[float]]: ...
    def query(self, text: str) -> list[float]: ...


def _normalise(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


class SentenceTransformerEncoder:
    """A local sentence-transformers model (name or path), loaded on first use."""

    def __init__(self, model: str, *, batch_size: int = 32) -> None:
        self.name = model
        self.batch_size = batch_size

    @cached_property
    def _model(self) -> Any:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # the Lambda requirements have no torch
            raise ConfigError(
                "DENSE_MODEL needs sentence-transformers (pip install -r requirements-train.txt), "
                "or use EMBEDDING_BASE_URL for an embeddings server"
            ) from exc
        try:
            return SentenceTransformer(self.name, device="cpu" if not _cuda() else None)
        except Exception as exc:
            raise ConfigError(f"cannot load DENSE_MODEL {self.name!r}: {exc}") from exc

    @property
    def size(self) -> int:
        model = self._model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        return int(dim) if dim else len(self.query("dimension probe"))

    def documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return [list(map(float, v)) for v in vectors]

    def query(self, text: str) -> list[float]:
        return self.documents([text])[0]


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class OpenAIEmbeddingEncoder:
    """An OpenAI-compatible `/embeddings` endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str | None, *, batch_size: int = 64) -> None:
        from openai import OpenAI

        self.name = model
        self.batch_size = batch_size
        self._client = OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=60.0, max_retries=3)
        self._size: int | None = None

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = len(self.query("dimension probe"))
        return self._size

    def documents(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            try:
                response = self._client.embeddings.create(model=self.name, input=batch)
            except Exception as exc:
                raise TransientError(f"embeddings endpoint failed ({self.name}): {exc}") from exc
            rows = sorted(response.data, key=lambda d: d.index)
            out.extend(_normalise(list(map(float, row.embedding))) for row in rows)
        return out

    def query(self, text: str) -> list[float]:
        return self.documents([text])[0]


def dense_from_settings(settings: Settings) -> DenseEncoder | None:
    """The configured encoder, or None (sparse-only retrieval, the embedded default)."""
    if settings.embedding_base_url:
        if not settings.embedding_model:
            raise ConfigError("EMBEDDING_BASE_URL is set but EMBEDDING_MODEL is not")
        return OpenAIEmbeddingEncoder(settings.embedding_base_url, settings.embedding_model, settings.embedding_api_key)
    if settings.dense_model:
        return SentenceTransformerEncoder(settings.dense_model)
    return None
