"""Optional cross-encoder reranking (`RERANKER_MODEL`, e.g. `BAAI/bge-reranker-v2-m3`).

A cross-encoder reads question and passage together, so it re-orders the fused candidates more
precisely than either retriever alone; it is loaded lazily (torch) and only when configured.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from typing import Any

from core.errors import ConfigError
from core.settings import Settings
from rag.types import Passage


class CrossEncoderReranker:
    def __init__(self, model: str, *, batch_size: int = 16) -> None:
        self.name = model
        self.batch_size = batch_size

    @cached_property
    def _model(self) -> Any:
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:
            raise ConfigError("RERANKER_MODEL needs sentence-transformers (pip install -r requirements-train.txt)") from exc
        try:
            return CrossEncoder(self.name)
        except Exception as exc:
            raise ConfigError(f"cannot load RERANKER_MODEL {self.name!r}: {exc}") from exc

    def rerank(self, query: str, passages: list[Passage], *, limit: int) -> list[Passage]:
        """Passages re-scored by the cross-encoder, best first, at most `limit`."""
        if not passages:
            return []
        pairs = [(query, f"{p.title}\n{p.text}" if p.title else p.text) for p in passages]
        scores = self._model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        ranked = sorted(zip(passages, scores, strict=True), key=lambda ps: float(ps[1]), reverse=True)
        return [replace(p, score=float(s)) for p, s in ranked[:limit]]


def reranker_from_settings(settings: Settings) -> CrossEncoderReranker | None:
    return CrossEncoderReranker(settings.reranker_model) if settings.reranker_model else None
