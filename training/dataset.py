"""The training snapshot: answer records + their latest feedback → labelled examples, pairs, a report.

- Rows come from `core.records.labelled_answers` (each person's latest standing reaction per answer,
  the same join `echorag feedback export` shows). Score = 👍 votes − 👎 votes.
- Every effective vote counts. The same question + answer text (up to case and spacing) is one
  example whose score sums over the answer records that carry it: > 0 is a desirable example
  (label +1), < 0 an undesirable one (label −1), 0 (votes cancel) is dropped and counted. The
  prompt is the exact serving prompt the answer was written from (`rag.prompts.build_messages`).
  Unpaired 👍 and 👎 both train (KTO-style, `training/train.py`); a 👎 with a 👍 alternative for the
  same question is also kept as a preference pair, for the gate's report and for pair trainers.
- Abstentions ("not in the documents") are not trained on, either way: the grader wrote them, not
  the model, so a 👍 would teach the model to refuse on evidence the grader found sufficient, and a
  👎 means the retrieval or the grader failed (a retrieval signal), not the wording.
- The held-out split is by **group**: examples that share a normalised question or a normalised
  answer are one group (connected components), and a group's side is a hash of its smallest key.
  Nothing held out was trained on in any form, and a group stays on its side as data grows. Small
  data has a floor: at least MIN_HELDOUT desirable examples are held out (whole groups, moved in
  hash order) while at least one example stays to train on.
- `Snapshot.report` says what the snapshot holds (per-language counts, abstentions, duplicates
  merged, conflicting votes, votes per answer), so polluted feedback shows before it trains.
- The snapshot is written to `datasets/<job_id>/` before training: the exact data a job used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
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

EVAL_PERCENT = 20  # share of groups held out for the gate
MIN_HELDOUT = 2  # desirable examples the gate needs to judge by, when there are enough groups


class NotEnoughFeedback(PermanentError):
    """Too few rated answers to train on: the job ends without a new adapter (not a failure)."""


@dataclass(frozen=True)
class Example:
    """One training example: the serving prompt, an answer, and whether it is desirable (+1) or not (−1)."""

    id: str
    question: str
    answer: str
    language: str
    messages: list[dict[str, str]]
    answer_ids: tuple[str, ...] = ()
    score: int = 1
    group: str = ""
    reasons: tuple[str, ...] = ()  # what 👎 voters said was wrong (wrong, outdated, …), one per voter

    @property
    def label(self) -> int:
        return 1 if self.score > 0 else -1

    def to_row(self, prompt: str | None = None) -> dict[str, Any]:
        row = asdict(self)
        row["answer_ids"] = list(self.answer_ids)
        row["reasons"] = list(self.reasons)
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
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> dict[str, str]:
        prefix = f"datasets/{self.job_id}"
        return {name: f"{prefix}/{name}.{'json' if name == 'report' else 'jsonl'}"
                for name in ("train", "eval", "pairs", "report")}


def question_key(text: str) -> str:
    """Questions equal up to case and whitespace are the same question."""
    return " ".join(text.split()).casefold()


def prompt_messages(record: AnswerRecord) -> list[dict[str, str]]:
    """The serving prompt for a recorded answer: the standalone question, and the thread turns the
    model saw when the question was still a follow-up (`prompt_history`)."""
    passages = [
        Passage(chunk_id=c.chunk_id, doc_id=c.doc_id, title=c.title, text=c.text, source=c.source, score=c.score)
        for c in record.contexts
    ]
    question = record.condensed_question or record.question
    history = [(turn.role, turn.text) for turn in record.prompt_history]
    return build_messages(question, passages, record.language, history)


def split_bucket(key: str) -> int:
    """0..99 from a key's hash: stable across runs, machines and Python versions."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


def _answer_key(text: str) -> str:
    return " ".join(text.split()).casefold()


def assign_groups(examples: list[Example]) -> list[Example]:
    """Each example with its group: the connected component of shared normalised questions and answers."""
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for ex in examples:
        q, a = find("q:" + question_key(ex.question)), find("a:" + _answer_key(ex.answer))
        if q != a:
            parent[max(q, a)] = min(q, a)  # the smallest key names the group: stable as data grows
    return [replace(ex, group=stable_id("group", find("q:" + question_key(ex.question)))) for ex in examples]


def split(examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """Held-out split by group (see the module doc); both sides non-empty from two groups on."""
    examples = assign_groups(examples) if any(not ex.group for ex in examples) else examples
    groups = sorted({ex.group for ex in examples}, key=lambda g: (split_bucket(g), g))
    held = {g for g in groups if split_bucket(g) < EVAL_PERCENT}
    positives = {g: sum(1 for ex in examples if ex.group == g and ex.label > 0) for g in groups}
    for g in groups:  # the floor: enough desirable examples for the gate, one group left to train on
        if sum(positives[h] for h in held) >= MIN_HELDOUT or len(held) >= len(groups) - 1:
            break
        if g not in held and positives[g]:
            held.add(g)
    if not held and len(groups) >= 2:
        held = {groups[0]}
    if len(held) == len(groups) and len(groups) >= 2:
        held.discard(groups[-1])
    return [ex for ex in examples if ex.group not in held], [ex for ex in examples if ex.group in held]


def build_examples(rows: Iterable[LabelledAnswer]) -> tuple[list[Example], list[PreferencePair], dict[str, int]]:
    """Labelled examples (one per question + answer text, scores summed) and preference pairs, with counts."""
    stats = {"labelled": 0, "approved": 0, "disapproved": 0, "duplicates": 0, "empty": 0, "abstentions": 0,
             "conflicting": 0, "tied": 0}
    merged: dict[str, tuple[int, list[AnswerRecord], list[str]]] = {}
    for row in rows:
        stats["labelled"] += 1
        record, score = row.answer, row.positive - row.negative
        if score == 0:
            stats["tied"] += 1
            continue
        if not record.answer.strip() or not record.question.strip():
            stats["empty"] += 1
            continue
        if record.abstained:
            stats["abstentions"] += 1
            continue
        stats["approved" if score > 0 else "disapproved"] += 1
        key = stable_id("ex", question_key(record.condensed_question or record.question), _answer_key(record.answer))
        total, records_, reasons = merged.get(key, (0, [], []))
        if records_:
            stats["duplicates"] += 1
        said = [vote.reason for vote in row.votes if vote.label < 0 and vote.reason]
        merged[key] = (total + score, [*records_, record], [*reasons, *said])

    examples: list[Example] = []
    for key, (score, recs, reasons) in sorted(merged.items()):
        if score == 0:
            stats["conflicting"] += 1  # the same text 👍'd under one record and 👎'd under another
            continue
        best = max(recs, key=lambda r: (r.created_at, r.answer_id))  # the latest wording of the prompt
        examples.append(Example(
            id=key, question=best.condensed_question or best.question, answer=best.answer.strip(),
            language=best.language, messages=prompt_messages(best),
            answer_ids=tuple(r.answer_id for r in recs), score=score, reasons=tuple(reasons),
        ))
    pairs = _pairs(examples)
    stats.update(examples=len(examples), desirable=sum(ex.label > 0 for ex in examples),
                 undesirable=sum(ex.label < 0 for ex in examples), pairs=len(pairs))
    return assign_groups(examples), pairs, stats


def _pairs(examples: list[Example]) -> list[PreferencePair]:
    """Each undesirable example with the best desirable answer to the same question."""
    by_question: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_question[question_key(ex.question)].append(ex)
    pairs = []
    for qkey in sorted(by_question):
        good = sorted((ex for ex in by_question[qkey] if ex.label > 0), key=lambda ex: (-ex.score, ex.id))
        for bad in (ex for ex in by_question[qkey] if ex.label < 0):
            if good:
                pairs.append(PreferencePair(
                    id=stable_id("pair", bad.id, good[0].id), question=bad.question, language=bad.language,
                    messages=bad.messages, chosen=good[0].answer, rejected=bad.answer,
                    chosen_answer_id=good[0].answer_ids[0], rejected_answer_id=bad.answer_ids[0],
                ))
    return pairs


def snapshot_report(train: list[Example], held: list[Example], stats: dict[str, int]) -> dict[str, Any]:
    """What a snapshot holds, for a person to check before trusting what it trained."""
    def side(examples: list[Example]) -> dict[str, Any]:
        languages: dict[str, dict[str, int]] = defaultdict(lambda: {"desirable": 0, "undesirable": 0})
        for ex in examples:
            languages[ex.language]["desirable" if ex.label > 0 else "undesirable"] += 1
        return {"examples": len(examples), "groups": len({ex.group for ex in examples}),
                "by_language": dict(sorted(languages.items()))}

    votes = sorted(abs(ex.score) for ex in [*train, *held])
    return {
        "train": side(train),
        "held_out": side(held),
        "skipped": {k: stats.get(k, 0) for k in ("tied", "conflicting", "abstentions", "empty")},
        "duplicates_merged": stats.get("duplicates", 0),
        "votes_per_example": {"max": votes[-1] if votes else 0, "median": votes[len(votes) // 2] if votes else 0},
        "pairs": stats.get("pairs", 0),
        "reasons": dict(sorted(Counter(r for ex in [*train, *held] for r in ex.reasons).items())),
    }


def report_line(report: dict[str, Any]) -> str:
    """The report in one line for the announcement: what was trained on, by language, what was skipped."""
    def counts(side: dict[str, Any]) -> str:
        langs = ", ".join(f"{lang} {c['desirable']}👍/{c['undesirable']}👎" for lang, c in side["by_language"].items())
        return f"{side['examples']} ({langs})" if langs else "0"

    skipped = ", ".join(f"{n} {k}" for k, n in report["skipped"].items() if n) or "none"
    return (f"Data: trained on {counts(report['train'])}, held out {counts(report['held_out'])}; "
            f"duplicates merged {report['duplicates_merged']}; skipped: {skipped}")


def build_snapshot(job_id: str, rows: Iterable[LabelledAnswer], *, min_examples: int) -> Snapshot:
    """The job's dataset; raises NotEnoughFeedback below `min_examples` rated examples, or when
    fewer than MIN_HELDOUT approved answers can be held out (the gate could only reject)."""
    examples, pairs, stats = build_examples(rows)
    need = max(min_examples, 2)  # one to train on, one to hold out
    if len(examples) < need:
        raise NotEnoughFeedback(
            f"not enough feedback to retrain: {len(examples)} rated (👍/👎) answer(s) after merging duplicates, "
            f"need at least {need} (TRAIN_MIN_EXAMPLES)"
        )
    train, held = split(examples)
    approved = sum(ex.label > 0 for ex in held)
    if approved < MIN_HELDOUT:  # no candidate could pass the gate: spare the GPU
        raise NotEnoughFeedback(
            f"not enough 👍 to judge a new adapter by: {approved} approved answer(s) can be held out for the "
            f"gate, it needs {MIN_HELDOUT} ({len(examples)} rated, {sum(ex.label > 0 for ex in examples)} 👍)"
        )
    stats.update(train=len(train), eval=len(held))
    return Snapshot(job_id=job_id, train=train, eval=held, pairs=pairs, stats=stats,
                    report=snapshot_report(train, held, stats))


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def write_snapshot(store: BlobStore, snapshot: Snapshot, *, tokenizer: Any = None) -> dict[str, str]:
    """Write train/eval/pairs JSONL (with the rendered chat-format prompt when a tokenizer is given)
    and the report."""
    def render(messages: list[dict[str, str]]) -> str | None:
        if tokenizer is None:
            return None
        from rag.llm_transformers import render_prompt

        return render_prompt(tokenizer, messages)

    keys = snapshot.keys
    for name, rows in (("train", snapshot.train), ("eval", snapshot.eval)):
        store.put(keys[name], _jsonl(ex.to_row(render(ex.messages)) for ex in rows))
    store.put(keys["pairs"], _jsonl(asdict(pair) for pair in snapshot.pairs))
    store.put(keys["report"], json.dumps(snapshot.report, ensure_ascii=False, indent=2).encode())
    return keys
