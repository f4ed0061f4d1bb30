"""Answer quality by article-disjoint fold, for tuning the answer step without fitting the dev set.

    python bench/answer_folds.py --data ../shared/data/korquad1 [--questions questions-full.jsonl] [--misses N]

Runs the agent (extractive unless an LLM is configured) over every question and reports answer
containment and R@1 per fold (KorQuAD article id → crc32 % 3), so a change is kept only when it
helps on every fold. `--misses N` prints N questions whose answer lost the gold, to read.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from rag.evaluation import EVAL_SPACE, eval_settings  # noqa: E402
from rag.metrics import contains_answer, recall_at_k  # noqa: E402

FOLDS = 3


def fold_of(question_id: str) -> int:
    return zlib.crc32(question_id.split("-")[0].encode()) % FOLDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--questions", default="questions-full.jsonl")
    parser.add_argument("--misses", type=int, default=0, help="print this many misses")
    args = parser.parse_args()
    questions = [json.loads(line) for line in (args.data / args.questions).open(encoding="utf-8") if line.strip()]
    from rag.agent import Agent
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever

    started = time.perf_counter()
    per_fold: list[dict[str, float]] = [{"n": 0, "contained": 0, "r1": 0} for _ in range(FOLDS)]
    misses: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="echorag-folds-") as tmp:
        settings = eval_settings(Settings(_env_file=None), Path(tmp))
        ingest_paths([args.data / "corpus.jsonl"], space=EVAL_SPACE, settings=settings, progress=False)
        with Retriever.from_settings(settings) as retriever:
            agent = Agent(retriever, settings=settings)
            for q in questions:
                answer = agent.ask(q["question"], spaces=[EVAL_SPACE])
                ranked = [c.doc_id for c in answer.citations]
                hit = not answer.abstained and contains_answer(answer.text, q["answers"])
                row = per_fold[fold_of(q["id"])]
                row["n"] += 1
                row["contained"] += hit
                row["r1"] += recall_at_k([p.doc_id for p in retriever.search(q["question"], spaces=[EVAL_SPACE], limit=1)],
                                         q["positive_ids"], 1)
                if not hit and len(misses) < args.misses:
                    misses.append({"question": q["question"], "gold": q["answers"], "answer": answer.text[:160],
                                   "cited_gold": any(d in q["positive_ids"] for d in ranked)})
    print(f"{len(questions)} questions, {time.perf_counter() - started:.0f} s")
    print(f"{'fold':<6}{'n':>6}{'containment':>13}{'R@1':>8}")
    for f, row in enumerate(per_fold):
        print(f"{f:<6}{row['n']:>6}{row['contained'] / row['n']:>13.4f}{row['r1'] / row['n']:>8.4f}")
    total = sum(r["n"] for r in per_fold)
    print(f"{'all':<6}{total:>6}{sum(r['contained'] for r in per_fold) / total:>13.4f}"
          f"{sum(r['r1'] for r in per_fold) / total:>8.4f}")
    for miss in misses:
        print(json.dumps(miss, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
