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


@dataclass(frozen=True)
class EvalItem:
    """One question's outcome: where its gold passage ranked and whether the answer holds a gold answer."""

    id: str
    question: str
    answers: list[str]
    gold_rank: int | None  # 1-based rank of the first gold passage in the top RANK_DEPTH, None: not there
    answer: str
    abstained: bool
    contained: bool
    f1: float
    cited: list[str]  # doc ids the answer cites
    ranking: dict[str, float]  # recall@1/5/10, mrr@10, ndcg@10 (empty without gold passages)
    latency_ms: float
    retrieve_ms: float

    @property
    def missed(self) -> bool:
        """Wrong or incomplete: the gold passage not first, or the answer without a gold answer."""
        return (bool(self.ranking) and self.gold_rank != 1) or (bool(self.answers) and not self.contained)


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, Any]
    items: list[EvalItem]


RANK_DEPTH = 10


def score_question(agent: Agent, retriever: Retriever, item: EvalQuestion, *, space: str = EVAL_SPACE) -> EvalItem:
    """Rank the corpus for one question and answer it (what `echorag eval` and the benches count)."""
    ranked = [p.doc_id for p in retriever.search(item.question, spaces=[space], limit=RANK_DEPTH)]
    ranking: dict[str, float] = {}
    if item.positive_ids:
        ranking = {
            "recall@1": recall_at_k(ranked, item.positive_ids, 1),
            "recall@5": recall_at_k(ranked, item.positive_ids, 5),
            "recall@10": recall_at_k(ranked, item.positive_ids, 10),
            "mrr@10": mrr_at_k(ranked, item.positive_ids, 10),
            "ndcg@10": ndcg_at_k(ranked, item.positive_ids, 10),
        }
    gold_rank = next((i for i, doc in enumerate(ranked, 1) if doc in item.positive_ids), None)
    answer = agent.ask(item.question, spaces=[space])
    answered = bool(item.answers) and not answer.abstained
    return EvalItem(
        id=item.id, question=item.question, answers=item.answers, gold_rank=gold_rank, answer=answer.text,
        abstained=answer.abstained, contained=answered and contains_answer(answer.text, item.answers),
        f1=max(char_f1(answer.text, gold) for gold in item.answers) if answered else 0.0,
        cited=[c.doc_id for c in answer.citations], ranking=ranking,
        latency_ms=answer.timings_ms.get("total", 0.0), retrieve_ms=answer.timings_ms.get("retrieve", 0.0),
    )


def evaluate(
    corpus: Path,
    questions: Path,
    *,
    settings: Settings,
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
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
            scored = [score_question(agent, retriever, item) for item in _progress(items, progress)]
            return EvalResult(summarise(scored, model=agent.model), scored)
        finally:
            retriever.close()


def summarise(items: list[EvalItem], *, model: str) -> dict[str, Any]:
    """The metric table over scored questions."""
    n = len(items)
    ranked = [i for i in items if i.ranking] or None
    with_answers = sum(1 for i in items if i.answers) or 1
    report: dict[str, Any] = {"questions": n}
    for name in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"):
        report[name] = round(sum(i.ranking[name] for i in ranked) / len(ranked), 4) if ranked else 0.0
    report.update(
        {
            "answer_containment": round(sum(i.contained for i in items) / with_answers, 4),
            "answer_f1": round(sum(i.f1 for i in items) / with_answers, 4),
            "abstained": round(sum(i.abstained for i in items) / n, 4),
            "answer_chars_mean": round(sum(len(i.answer) for i in items) / n, 1),
            "latency_ms_p50": round(percentile([i.latency_ms for i in items], 50), 2),
            "latency_ms_p95": round(percentile([i.latency_ms for i in items], 95), 2),
            "retrieve_ms_p50": round(percentile([i.retrieve_ms for i in items], 50), 2),
            "model": model,
        }
    )
    return report
