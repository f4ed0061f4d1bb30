"""The publish gate: a new adapter goes live only when it is not worse than the live one.

Both adapters (or the candidate and the bare base model when nothing is live yet) are scored on the
snapshot's held-out split — mean NLL of the approved answer tokens given the serving prompt — and,
when GOLD_QUESTIONS is set, on a gold QA set (answer NLL and the share of greedy answers that
contain a gold answer). The candidate passes when its held-out NLL is not higher and its gold hit
rate not lower. Both sides' numbers go into the adapter manifest and the job's announcement.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.settings import Settings
from rag.prompts import build_messages
from rag.types import Passage
from training.dataset import Example
from training.train import (
    IGNORE,
    TrainConfig,
    collate,
    encode_example,
    load_base,
    pick_device,
    release_memory,
)

log = logging.getLogger(__name__)

GOLD_NEW_TOKENS = 96


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


def answer_nll(model: Any, tokenizer: Any, examples: Sequence[Example], *, max_length: int, batch_size: int = 8) -> float:
    """Mean negative log-likelihood per answer token (prompt tokens excluded), over all examples."""
    import torch

    device = next(model.parameters()).device
    rows = [encode_example(tokenizer, ex.messages, ex.answer, max_length) for ex in examples]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size], tokenizer.pad_token_id, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            mask = labels != IGNORE
            picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total += float(-(picked * mask).sum())
            count += int(mask.sum())
    return total / max(count, 1)


def gold_hit_rate(model: Any, tokenizer: Any, items: Sequence[GoldItem]) -> float:
    """Share of gold questions whose greedy answer contains a gold answer (KorQuAD normalisation)."""
    import torch

    from rag.llm_transformers import render_prompt
    from rag.metrics import contains_answer

    device = next(model.parameters()).device
    hits = 0
    model.eval()
    with torch.no_grad():
        for item in items:
            ids = tokenizer(render_prompt(tokenizer, item.messages), add_special_tokens=False, return_tensors="pt")
            ids = {k: v.to(device) for k, v in ids.items()}
            out = model.generate(**ids, max_new_tokens=GOLD_NEW_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            hits += contains_answer(text, item.answers)
    return hits / max(len(items), 1)


def score(model: Any, tokenizer: Any, examples: Sequence[Example], gold: Sequence[GoldItem], max_length: int) -> dict[str, float]:
    metrics = {"eval_nll": answer_nll(model, tokenizer, examples, max_length=max_length)}
    if gold:
        gold_examples = [Example(id=f"gold{i}", question=g.question, answer=g.answers[0], language="", messages=g.messages)
                         for i, g in enumerate(gold)]
        metrics["gold_nll"] = answer_nll(model, tokenizer, gold_examples, max_length=max_length)
        metrics["gold_contains"] = gold_hit_rate(model, tokenizer, gold)
    return metrics


def decide(candidate: dict[str, float], current: dict[str, float], compared_with: str) -> tuple[bool, str]:
    """Not worse on every gated metric → publish; the reason names the metric that blocked it."""
    if candidate["eval_nll"] > current["eval_nll"]:
        return False, (
            f"held-out answer NLL got worse ({current['eval_nll']:.3f} with {compared_with} → "
            f"{candidate['eval_nll']:.3f}); {compared_with} stays live"
        )
    if "gold_contains" in candidate and candidate["gold_contains"] < current.get("gold_contains", 0.0):
        return False, (
            f"fewer gold answers found ({current['gold_contains']:.0%} with {compared_with} → "
            f"{candidate['gold_contains']:.0%}); {compared_with} stays live"
        )
    return True, f"not worse than {compared_with} on the held-out set" + (" and the gold set" if "gold_contains" in candidate else "")


def evaluate(
    config: TrainConfig,
    candidate_dir: Path,
    current_dir: Path | None,
    examples: Sequence[Example],
    *,
    gold: Sequence[GoldItem] = (),
    current_label: str = "base",
) -> GateReport:
    """Score the candidate and the live adapter (or the base) on the same data, then decide."""
    from peft import PeftModel

    device, dtype = pick_device()
    base, tokenizer = load_base(config.base_model, device=device, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(candidate_dir), adapter_name="candidate").to(device)
    candidate = score(model, tokenizer, examples, gold, config.max_length)
    if current_dir is not None:
        model.load_adapter(str(current_dir), adapter_name="current")
        model.set_adapter("current")
        model.to(device)
        current = score(model, tokenizer, examples, gold, config.max_length)
    else:
        with model.disable_adapter():
            current = score(model, tokenizer, examples, gold, config.max_length)
    del model, base
    release_memory()
    passed, reason = decide(candidate, current, current_label)
    log.info("gate: %s (candidate %s, %s %s)", "pass" if passed else "reject", candidate, current_label, current)
    return GateReport(candidate=candidate, current=current, passed=passed, reason=reason, compared_with=current_label,
                      details={"eval_examples": len(examples), "gold_items": len(gold)})
