"""The publish gate: a new adapter goes live only when it is a real improvement on the live one.

Both adapters (or the candidate and the bare base model when nothing is live yet) are scored item
by item on the snapshot's held-out split (per-token NLL of each answer given its serving prompt)
and, when GOLD_QUESTIONS is set, on a gold QA set (gold answer NLL, and whether the greedy answer
contains a gold answer). The comparison is paired, item by item, and every rule must hold:

1. enough to judge: at least MIN_ITEMS approved (👍) answers held out;
2. no approved answer regresses: none gets more than REGRESSION nats/token less likely;
3. approved answers likelier beyond noise: the mean per-item gain is at least MIN_GAIN nats/token
   and the lower end of its paired-bootstrap 95% interval is above zero (a no-op or a tie fails);
4. rejected (👎) answers do not gain on approved ones: their mean gain in likelihood is not above
   the approved answers' (the preference margin does not shrink);
5. gold answers not less likely beyond noise: the paired-bootstrap 95% interval of the mean
   per-item gold NLL gain does not lie wholly below zero. Votes cannot catch votes that are wrong
   (users who approve wrong answers make them "likelier" by rule 3); the gold set can;
6. gold containment not lower beyond noise: items lost minus items gained is not significant by
   an exact sign test at 5% (lost items are listed either way).

Per-item regressions and lost gold items go into the report's details, the manifest and the
announcement.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import Settings
from rag.prompts import build_messages
from rag.types import Passage
from training.dataset import MIN_HELDOUT, Example
from training.train import (
    TrainConfig,
    answer_logps,
    collate,
    encode_example,
    load_base,
    pick_device,
    release_memory,
)

log = logging.getLogger(__name__)

GOLD_NEW_TOKENS = 96
MIN_ITEMS = MIN_HELDOUT  # approved held-out answers needed to judge at all (the snapshot ensures them)
MIN_GAIN = 0.01  # nats/token: a smaller mean gain is a tie, not an improvement
REGRESSION = 0.1  # nats/token: an approved answer this much less likely is a regression
BOOTSTRAP_RESAMPLES = 2000
ALPHA = 0.05


@dataclass(frozen=True)
class GoldItem:
    question: str
    answers: list[str]
    messages: list[dict[str, str]]


@dataclass
class GateReport:
    candidate: dict[str, float]
    current: dict[str, float]
    passed: bool
    reason: str
    compared_with: str  # "v3" or "base"
    details: dict[str, Any] = field(default_factory=dict)


def load_gold(path: Path, settings: Settings | None = None) -> list[GoldItem]:
    """Gold QA from JSONL: {"question", "answers": [...], "contexts": [{"title","text"} | "text", ...]}.

    Items without contexts are retrieved with the configured retriever, as the bot would.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read GOLD_QUESTIONS {path}: {exc}") from exc
    items: list[GoldItem] = []
    retriever = None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, answers = str(row["question"]), [str(a) for a in row["answers"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"GOLD_QUESTIONS {path}:{n}: expected {{'question', 'answers': [...]}}: {exc}") from exc
        if "contexts" in row:
            passages = [
                Passage(chunk_id=f"gold-{n}-{i}", doc_id=f"gold-{n}", title=c.get("title", "") if isinstance(c, dict) else "",
                        text=c.get("text", "") if isinstance(c, dict) else str(c))
                for i, c in enumerate(row["contexts"])
            ]
        else:
            if settings is None:
                raise ConfigError(f"GOLD_QUESTIONS {path}:{n}: no contexts, and no settings to retrieve them with")
            if retriever is None:
                from rag.retrieval import Retriever

                retriever = Retriever.from_settings(settings)
            passages = retriever.search(question, limit=settings.top_k)
        from rag.language import detect_language

        language = row.get("language") or detect_language(question)
        items.append(GoldItem(question=question, answers=answers, messages=build_messages(question, passages, language)))
    if retriever is not None:
        retriever.close()
    return items


@dataclass(frozen=True)
class Scores:
    """One adapter's per-item numbers: held-out answers (in snapshot order), gold answers, gold hits."""

    nll: list[float]
    gold_nll: list[float] = field(default_factory=list)
    gold_hits: list[bool] = field(default_factory=list)

    def summary(self, examples: Sequence[Example]) -> dict[str, float]:
        """The headline metrics (means): approved held-out NLL, rejected held-out NLL, gold."""
        good = [v for v, ex in zip(self.nll, examples, strict=True) if ex.label > 0]
        bad = [v for v, ex in zip(self.nll, examples, strict=True) if ex.label < 0]
        metrics = {"eval_nll": _mean(good)} if good else {}
        if bad:
            metrics["rejected_nll"] = _mean(bad)
        if self.gold_nll:
            metrics["gold_nll"] = _mean(self.gold_nll)
            metrics["gold_contains"] = _mean([float(h) for h in self.gold_hits])
        return metrics


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def item_nlls(model: Any, tokenizer: Any, examples: Sequence[Example], *, max_length: int, batch_size: int = 8) -> list[float]:
    """Each example's mean negative log-likelihood per answer token (prompt tokens excluded)."""
    import torch

    device = next(model.parameters()).device
    rows = [encode_example(tokenizer, ex.messages, ex.answer, max_length) for ex in examples]
    out: list[float] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            logps, counts = answer_logps(model, collate(rows[start : start + batch_size], tokenizer.pad_token_id, device))
            out.extend(float(-lp / max(int(n), 1)) for lp, n in zip(logps, counts, strict=True))
    return out


def gold_hits(model: Any, tokenizer: Any, items: Sequence[GoldItem], max_new_tokens: int = GOLD_NEW_TOKENS) -> list[bool]:
    """Per gold question: does the greedy answer contain a gold answer (KorQuAD normalisation)?"""
    from rag.llm_transformers import generate_greedy
    from rag.metrics import contains_answer

    model.eval()
    hits: list[bool] = []
    for item in items:
        text = generate_greedy(model, tokenizer, item.messages, max_tokens=max_new_tokens)
        hits.append(bool(contains_answer(text, item.answers)))
    return hits


def score(model: Any, tokenizer: Any, examples: Sequence[Example], gold: Sequence[GoldItem], max_length: int,
          gold_new_tokens: int = GOLD_NEW_TOKENS) -> Scores:
    nll = item_nlls(model, tokenizer, examples, max_length=max_length)
    if not gold:
        return Scores(nll)
    gold_examples = [Example(id=f"gold{i}", question=g.question, answer=g.answers[0], language="", messages=g.messages)
                     for i, g in enumerate(gold)]
    return Scores(nll, item_nlls(model, tokenizer, gold_examples, max_length=max_length),
                  gold_hits(model, tokenizer, gold, gold_new_tokens))


def bootstrap_interval(values: Sequence[float], *, seed: int = 0) -> tuple[float, float]:
    """The paired-bootstrap (1 − ALPHA) interval of the mean of `values`."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(BOOTSTRAP_RESAMPLES))
    return means[int(BOOTSTRAP_RESAMPLES * ALPHA / 2)], means[int(BOOTSTRAP_RESAMPLES * (1 - ALPHA / 2)) - 1]


def sign_test_p(lost: int, gained: int) -> float:
    """One-sided exact sign test: the chance of losing at least `lost` of the changed items by luck."""
    n = lost + gained
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n if n else 1.0


def decide(examples: Sequence[Example], candidate: Scores, current: Scores, compared_with: str,
           gold: Sequence[GoldItem] = ()) -> tuple[bool, str, dict[str, Any]]:
    """Apply the module's rules; (passed, reason in plain words, details for the manifest)."""
    good = [i for i, ex in enumerate(examples) if ex.label > 0]
    bad = [i for i, ex in enumerate(examples) if ex.label < 0]
    gains = [current.nll[i] - candidate.nll[i] for i in good]  # > 0: the approved answer got likelier
    details: dict[str, Any] = {"approved_items": len(good), "rejected_items": len(bad)}
    stays = f"{compared_with} stays live"
    if len(good) < MIN_ITEMS:
        return False, f"too few approved answers held out to judge ({len(good)}, need {MIN_ITEMS}); {stays}", details
    mean_gain, (lower, _) = _mean(gains), bootstrap_interval(gains)
    details.update(mean_gain=round(mean_gain, 4), gain_ci_low=round(lower, 4))
    regressions = [
        {"question": examples[i].question[:80], "current_nll": round(current.nll[i], 3), "candidate_nll": round(candidate.nll[i], 3)}
        for i, gain in zip(good, gains, strict=True) if gain < -REGRESSION
    ]
    details["regressions"] = regressions
    bad_gain = _mean([current.nll[i] - candidate.nll[i] for i in bad]) if bad else None
    if bad_gain is not None:
        details["rejected_mean_gain"] = round(bad_gain, 4)
    lost = [g.question[:80] for g, before, after in zip(gold, current.gold_hits, candidate.gold_hits, strict=False) if before and not after]
    gained = sum(1 for before, after in zip(current.gold_hits, candidate.gold_hits, strict=False) if after and not before)
    details.update(gold_lost=lost, gold_gained=gained)
    gold_gains = [before - after for before, after in zip(current.gold_nll, candidate.gold_nll, strict=False)]
    gold_low, gold_high = bootstrap_interval(gold_gains) if gold_gains else (0.0, 0.0)
    if gold_gains:
        details.update(gold_mean_gain=round(_mean(gold_gains), 4), gold_gain_ci=[round(gold_low, 4), round(gold_high, 4)])

    if mean_gain < -MIN_GAIN:
        return False, f"held-out answer NLL got worse (mean {-mean_gain:.3f} nats/token per answer); {stays}", details
    if regressions:
        return False, (f"{len(regressions)} held-out answer(s) got much less likely "
                       f"(first: {regressions[0]['question']!r}); {stays}"), details
    if mean_gain < MIN_GAIN or lower <= 0:
        return False, (f"no improvement beyond noise on {len(good)} held-out answers (mean gain {mean_gain:.3f} "
                       f"nats/token, 95% interval from {lower:.3f}); {stays}"), details
    if bad_gain is not None and bad_gain > mean_gain:
        return False, (f"👎 answers became likelier than the 👍 ones (by {bad_gain:.3f} vs {mean_gain:.3f} "
                       f"nats/token); {stays}"), details
    if gold_high < 0:
        return False, (f"gold answers became less likely (mean {-_mean(gold_gains):.3f} nats/token, 95% interval "
                       f"{-gold_high:.3f} to {-gold_low:.3f}): the votes approve what the gold set says is wrong; "
                       f"{stays}"), details
    if len(lost) > gained and sign_test_p(len(lost), gained) < ALPHA:
        return False, f"fewer gold answers found ({len(lost)} lost, {gained} gained); {stays}", details
    return True, (f"better than {compared_with}: held-out 👍 answers {mean_gain:.3f} nats/token likelier "
                  f"(95% interval from {lower:.3f})" + (", gold not worse" if gold else "")), details


def notes(details: dict[str, Any]) -> str:
    """The per-item findings a person should see in the announcement ('' when there are none)."""
    lines = [f"Held-out answer worse: {r['question']!r} {r['current_nll']:.3f} → {r['candidate_nll']:.3f}"
             for r in details.get("regressions", [])[:5]]
    lines += [f"Gold answer lost: {question!r}" for question in details.get("gold_lost", [])[:5]]
    return "\n".join(lines)


def evaluate(
    config: TrainConfig,
    candidate_dir: Path,
    current_dir: Path | None,
    examples: Sequence[Example],
    *,
    gold: Sequence[GoldItem] = (),
    current_label: str = "base",
    gold_new_tokens: int = GOLD_NEW_TOKENS,
) -> GateReport:
    """Score the candidate and the live adapter (or the base) on the same data, then decide.

    `gold_new_tokens`: the greedy gold answers' length cap (the bot's own LLM_MAX_TOKENS when lower:
    a gold answer past what the bot would say is not one it would give)."""
    from peft import PeftModel

    device, dtype = pick_device()
    base, tokenizer = load_base(config.base_model, device=device, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(candidate_dir), adapter_name="candidate").to(device)
    candidate = score(model, tokenizer, examples, gold, config.max_length, gold_new_tokens)
    if current_dir is not None:
        model.load_adapter(str(current_dir), adapter_name="current")
        model.set_adapter("current")
        model.to(device)
        current = score(model, tokenizer, examples, gold, config.max_length, gold_new_tokens)
    else:
        with model.disable_adapter():
            current = score(model, tokenizer, examples, gold, config.max_length, gold_new_tokens)
    del model, base
    release_memory()
    passed, reason, details = decide(examples, candidate, current, current_label, gold)
    log.info("gate: %s: %s", "pass" if passed else "reject", reason)
    return GateReport(candidate=candidate.summary(examples), current=current.summary(examples), passed=passed,
                      reason=reason, compared_with=current_label,
                      details={"eval_examples": len(examples), "gold_items": len(gold), **details})
