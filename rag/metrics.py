"""Retrieval and answer metrics as pure functions (used by `echorag eval`, the bench and the gate).

Ranked lists may hold duplicates (several chunks of one document); a document counts once, at its
best rank, so chunk-level retrieval is scored at document level.
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Sequence


def _dedup(ranked_ids: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for rid in ranked_ids:
        if rid not in seen:
            seen.add(rid)
            out.append(rid)
    return out


def recall_at_k(ranked_ids: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant ids found in the top k (1.0/0.0 for a single relevant id)."""
    if not relevant:
        return 0.0
    top = set(_dedup(ranked_ids)[:k])
    return sum(1 for r in set(relevant) if r in top) / len(set(relevant))


def mrr_at_k(ranked_ids: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Reciprocal rank of the first relevant id within the top k, else 0."""
    rel = set(relevant)
    for rank, rid in enumerate(_dedup(ranked_ids)[:k], start=1):
        if rid in rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked_ids: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Binary-relevance nDCG@k."""
    rel = set(relevant)
    if not rel:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, rid in enumerate(_dedup(ranked_ids)[:k], 1) if rid in rel)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(rel), k) + 1))
    return dcg / ideal


_PUNCT = set(string.punctuation) | set("‘’´`·「」『』《》〈〉“”…")


def korquad_normalize(s: str) -> str:
    """KorQuAD 1.0 answer normalisation: drop quotes/punctuation and all whitespace, lowercase."""
    s = unicodedata.normalize("NFC", s)
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    return "".join(s.split())


def char_f1(prediction: str, gold: str) -> float:
    """Character-level F1 between normalised strings (the KorQuAD 1.0 F1)."""
    pred = list(korquad_normalize(prediction))
    ref = list(korquad_normalize(gold))
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, golds: Iterable[str]) -> bool:
    """Whether any gold answer occurs in the prediction after normalisation."""
    pred = korquad_normalize(prediction)
    return any((g := korquad_normalize(gold)) and g in pred for gold in golds)
