"""`echorag eval`: retrieval and answer quality of the configured pipeline on a QA set.

The corpus is ingested into a throwaway embedded collection under a temp dir, so an evaluation never
touches the user's knowledge base (or a Qdrant server) and always starts from the same state. The
configured models (dense, reranker, LLM) are kept: the numbers describe the pipeline as configured.

Files (the `korquad1` format): corpus.jsonl `{"id","title","text"}`, questions.jsonl
`{"id","question","answers":[str],"positive_ids":[corpus id]}`.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError
from core.settings import Settings
from rag.metrics import char_f1, contains_answer, mrr_at_k, ndcg_at_k, recall_at_k

if TYPE_CHECKING:
    from rag.agent import Agent
    from rag.retrieval import Retriever

EVAL_SPACE = "eval"


@dataclass(frozen=True)
class EvalQuestion:
    id: str
    question: str
    answers: list[str]
    positive_ids: list[str]


def load_questions(path: Path, *, limit: int | None = None) -> list[EvalQuestion]:
    """Questions from a JSONL file; a malformed line is an error naming the line (a silent skip would
    quietly change the denominator)."""
    if not path.is_file():
        raise UserError(f"questions file not found: {path}")
    out: list[EvalQuestion] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item = EvalQuestion(
                    id=str(row.get("id", lineno)),
                    question=str(row["question"]),
                    answers=[str(a) for a in row.get("answers", [])],
                    positive_ids=[str(p) for p in row.get("positive_ids", [])],
                )
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise UserError(
                    f"{path}:{lineno}: not a question line ({type(exc).__name__}: {exc}); "
                    'expected {"id","question","answers":[…],"positive_ids":[…]}'
                ) from exc
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise UserError(f"no questions in {path}")
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _progress(items: list[EvalQuestion], enabled: bool) -> Iterator[EvalQuestion]:
    if not enabled:
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc="eval", unit="q", dynamic_ncols=True)


def eval_settings(settings: Settings, data_dir: Path) -> Settings:
    """The user's settings pointed at a private embedded collection and store under `data_dir`."""
    return settings.model_copy(
        update={
            "data_dir": data_dir,
            "qdrant_url": None,
            "qdrant_api_key": None,
            "qdrant_path": data_dir / "qdrant",
            "vector_backend": "auto",
            "qdrant_collection": "eval",
            "store_dir": data_dir / "store",
            "feedback_bucket": None,
            "retrieval_feedback": False,  # a benchmark measures the ranking, not earlier users' votes
            "queue_path": data_dir / "queue.sqlite",
            "training_queue_url": None,
        }
    )


def evaluate(
    corpus: Path,
    questions: Path,
    *,
    settings: Settings,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Ingest `corpus` privately, then score retrieval (doc-id ranking) and the agent's answers."""
    if not corpus.is_file():
        raise UserError(f"corpus file not found: {corpus}")
    items = load_questions(questions, limit=limit)

    from rag.agent import Agent
    from rag.ingest import ingest_paths
    from rag.llm import llm_from_settings
    from rag.retrieval import Retriever

    with tempfile.TemporaryDirectory(prefix="echorag-eval-") as tmp:
        local = eval_settings(settings, Path(tmp))
        summary = ingest_paths([corpus], space=EVAL_SPACE, settings=local, progress=progress)
        if summary.failed:
            reasons = "; ".join(f"{name}: {why}" for name, why in summary.failures[:3])
            raise UserError(f"could not ingest the corpus {corpus}: {reasons}")
        retriever = Retriever.from_settings(local)
        try:
            agent = Agent(retriever, settings=local, llm=llm_from_settings(settings))
            return _score(agent, retriever, items, progress=progress)
        finally:
            retriever.close()


def _score(agent: Agent, retriever: Retriever, items: list[EvalQuestion], *, progress: bool) -> dict[str, Any]:
    sums = {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    contained = 0
    f1_total = 0.0
    abstained = 0
    latencies: list[float] = []
    retrieval_ms: list[float] = []
    answer_chars = 0
    for item in _progress(items, progress):
        ranked = [p.doc_id for p in retriever.search(item.question, spaces=[EVAL_SPACE], limit=10)]
        if item.positive_ids:
            sums["recall@1"] += recall_at_k(ranked, item.positive_ids, 1)
            sums["recall@5"] += recall_at_k(ranked, item.positive_ids, 5)
            sums["recall@10"] += recall_at_k(ranked, item.positive_ids, 10)
            sums["mrr@10"] += mrr_at_k(ranked, item.positive_ids, 10)
            sums["ndcg@10"] += ndcg_at_k(ranked, item.positive_ids, 10)
        answer = agent.ask(item.question, spaces=[EVAL_SPACE])
        latencies.append(answer.timings_ms.get("total", 0.0))
        retrieval_ms.append(answer.timings_ms.get("retrieve", 0.0))
        abstained += answer.abstained
        answer_chars += len(answer.text)
        if item.answers and not answer.abstained:
            contained += contains_answer(answer.text, item.answers)
            f1_total += max(char_f1(answer.text, gold) for gold in item.answers)
    n = len(items)
    with_positives = sum(1 for item in items if item.positive_ids) or 1
    with_answers = sum(1 for item in items if item.answers) or 1
    report: dict[str, Any] = {"questions": n}
    report.update({name: round(total / with_positives, 4) for name, total in sums.items()})
    report.update(
        {
            "answer_containment": round(contained / with_answers, 4),
            "answer_f1": round(f1_total / with_answers, 4),
            "abstained": round(abstained / n, 4),
            "answer_chars_mean": round(answer_chars / n, 1),
            "latency_ms_p50": round(percentile(latencies, 50), 2),
            "latency_ms_p95": round(percentile(latencies, 95), 2),
            "retrieve_ms_p50": round(percentile(retrieval_ms, 50), 2),
            "model": agent.model,
        }
    )
    return report
