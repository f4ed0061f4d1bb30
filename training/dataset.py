"""The training snapshot: answer records + their latest feedback → SFT examples and preference pairs.

- Rows come from `core.records.labelled_answers` (each person's latest standing reaction per answer,
  the same join `echorag feedback export` shows). Score = 👍 votes − 👎 votes: > 0 approved, < 0 not.
- Approved answers become SFT examples: the exact serving prompt (`rag.prompts.build_messages`:
  system rules + the retrieved contexts the answer was written from, then the question) and the
  approved answer as the target. Same question + same answer is one example.
- A disapproved answer with an approved alternative for the same question becomes a preference
  pair (prompt = the one the bad answer was written for). Pairs are kept in the snapshot for
  preference training; SFT trains on their chosen side (already among the SFT examples).
- The held-out split is a hash of the example id, so an example stays on the same side as the
  data grows and the gate keeps comparing adapters on answers none of them trained on.
- The snapshot is written to `datasets/<job_id>/` before training: the exact data a job used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from core.contracts import AnswerRecord, stable_id
from core.errors import PermanentError
from core.records import LabelledAnswer
from core.store import BlobStore
from rag.prompts import build_messages
from rag.types import Passage

log = logging.getLogger(__name__)

EVAL_PERCENT = 20  # share of examples held out for the gate


class NotEnoughFeedback(PermanentError):
    """Too few approved answers to train on: the job ends without a new adapter (not a failure)."""


@dataclass(frozen=True)
class Example:
    """One SFT example: the serving prompt and the approved answer."""

    id: str
    question: str
    answer: str
    language: str
    messages: list[dict[str, str]]
    answer_ids: tuple[str, ...] = ()
    score: int = 1

    def to_row(self, prompt: str | None = None) -> dict[str, Any]:
        row = asdict(self)
        row["answer_ids"] = list(self.answer_ids)
        if prompt is not None:
            row["prompt"] = prompt  # the rendered chat-format text, for inspection
        return row


@dataclass(frozen=True)
class PreferencePair:
    """A disapproved answer and an approved alternative for the same question."""

    id: str
    question: str
    language: str
    messages: list[dict[str, str]]
    chosen: str
    rejected: str
    chosen_answer_id: str
    rejected_answer_id: str


@dataclass
class Snapshot:
    job_id: str
    train: list[Example]
    eval: list[Example]
    pairs: list[PreferencePair]
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def keys(self) -> dict[str, str]:
        prefix = f"datasets/{self.job_id}"
        return {"train": f"{prefix}/train.jsonl", "eval": f"{prefix}/eval.jsonl", "pairs": f"{prefix}/pairs.jsonl"}


def question_key(text: str) -> str:
    """Questions equal up to case and whitespace are the same question."""
    return " ".join(text.split()).casefold()


def prompt_messages(record: AnswerRecord) -> list[dict[str, str]]:
    """The serving prompt for a recorded answer (standalone question: the thread is not stored)."""
    passages = [
        Passage(chunk_id=c.chunk_id, doc_id=c.doc_id, title=c.title, text=c.text, source=c.source, score=c.score)
        for c in record.contexts
    ]
    question = record.condensed_question or record.question
    return build_messages(question, passages, record.language)


def split_bucket(example_id: str) -> int:
    """0..99 from the id's hash: stable across runs, machines and Python versions."""
    return int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) % 100


def split(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """Deterministic held-out split; both sides non-empty when there are two or more examples."""
    train = [ex for ex in examples if split_bucket(ex.id) >= EVAL_PERCENT]
    held = [ex for ex in examples if split_bucket(ex.id) < EVAL_PERCENT]
    ranked = sorted(examples, key=lambda ex: (split_bucket(ex.id), ex.id))
    if not held and len(examples) >= 2:
        held = [ranked[0]]
        train = [ex for ex in examples if ex.id != ranked[0].id]
    elif not train and len(examples) >= 2:
        train = [ranked[-1]]
        held = [ex for ex in examples if ex.id != ranked[-1].id]
    return train, held


def build_examples(rows: Iterable[LabelledAnswer]) -> tuple[list[Example], list[PreferencePair], dict[str, int]]:
    """SFT examples (deduplicated) and preference pairs from labelled answers, with counts."""
    by_question: dict[str, dict[str, list[tuple[int, AnswerRecord]]]] = defaultdict(lambda: {"pos": [], "neg": []})
    stats = {"labelled": 0, "approved": 0, "disapproved": 0, "duplicates": 0, "empty": 0}
    for row in rows:
        stats["labelled"] += 1
        record, score = row.answer, row.positive - row.negative
        if score == 0:
            continue
        if not record.answer.strip() or not record.question.strip():
            stats["empty"] += 1
            continue
        side = "pos" if score > 0 else "neg"
        stats["approved" if score > 0 else "disapproved"] += 1
        by_question[question_key(record.condensed_question or record.question)][side].append((score, record))

    examples: dict[str, Example] = {}
    pairs: list[PreferencePair] = []
    for qkey in sorted(by_question):
        group = by_question[qkey]
        positives = sorted(group["pos"], key=lambda sr: (-sr[0], -sr[1].created_at.timestamp(), sr[1].answer_id))
        for score, record in positives:
            ex_id = stable_id("sft", qkey, " ".join(record.answer.split()))
            if ex_id in examples:
                stats["duplicates"] += 1
                kept = examples[ex_id]
                examples[ex_id] = replace(kept, answer_ids=(*kept.answer_ids, record.answer_id), score=kept.score + score)
                continue
            examples[ex_id] = Example(
                id=ex_id,
                question=record.condensed_question or record.question,
                answer=record.answer.strip(),
                language=record.language,
                messages=prompt_messages(record),
                answer_ids=(record.answer_id,),
                score=score,
            )
        if positives:
            best = positives[0][1]
            for _, bad in sorted(group["neg"], key=lambda sr: sr[1].answer_id):
                if " ".join(bad.answer.split()) == " ".join(best.answer.split()):
                    continue
                pairs.append(
                    PreferencePair(
                        id=stable_id("pair", bad.answer_id, best.answer_id),
                        question=bad.condensed_question or bad.question,
                        language=bad.language,
                        messages=prompt_messages(bad),
                        chosen=best.answer.strip(),
                        rejected=bad.answer.strip(),
                        chosen_answer_id=best.answer_id,
                        rejected_answer_id=bad.answer_id,
                    )
                )
    ordered = sorted(examples.values(), key=lambda ex: ex.id)
    stats.update(examples=len(ordered), pairs=len(pairs))
    return ordered, pairs, stats


def build_snapshot(job_id: str, rows: Iterable[LabelledAnswer], *, min_examples: int) -> Snapshot:
    """The job's dataset; raises NotEnoughFeedback below `min_examples` approved examples."""
    examples, pairs, stats = build_examples(rows)
    need = max(min_examples, 2)  # one to train on, one to hold out
    if len(examples) < need:
        raise NotEnoughFeedback(
            f"not enough feedback to retrain: {len(examples)} approved (👍) answer(s) after dedup, "
            f"need at least {need} (TRAIN_MIN_EXAMPLES)"
        )
    train, held = split(examples)
    stats.update(train=len(train), eval=len(held))
    return Snapshot(job_id=job_id, train=train, eval=held, pairs=pairs, stats=stats)


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def write_snapshot(store: BlobStore, snapshot: Snapshot, *, tokenizer: Any = None) -> dict[str, str]:
    """Write train/eval/pairs JSONL (with the rendered chat-format prompt when a tokenizer is given)."""
    def render(messages: list[dict[str, str]]) -> str | None:
        if tokenizer is None:
            return None
        from rag.llm_transformers import render_prompt

        return render_prompt(tokenizer, messages)

    keys = snapshot.keys
    for name, rows in (("train", snapshot.train), ("eval", snapshot.eval)):
        store.put(keys[name], _jsonl(ex.to_row(render(ex.messages)) for ex in rows))
    store.put(keys["pairs"], _jsonl(asdict(pair) for pair in snapshot.pairs))
    return keys
