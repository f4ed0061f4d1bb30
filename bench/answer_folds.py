"""Answer quality by article-disjoint fold, for tuning the answer step without fitting the dev set.

    python bench/answer_folds.py --data ../shared/data/korquad1 [--questions questions-full.jsonl] [--misses N]
        [--report folds.html] [--colloquial]

Runs the agent (extractive unless an LLM is configured) over every question and reports answer
containment and R@1 per fold (KorQuAD article id → crc32 % 3), so a change is kept only when it
helps on every fold. `--misses N` prints N questions whose answer lost the gold, to read;
`--report` writes every question's result (misses first) as the same HTML page as `echorag eval --report`.
`--colloquial` also asks every question the way people type it in chat (`bench/colloquial.py`) and
prints both side by side, so a change to the answer step can be checked for robustness on every fold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from rag.evaluation import EVAL_SPACE, EvalResult, eval_settings, load_questions, score_question, summarise  # noqa: E402

FOLDS = 3


def fold_of(question_id: str) -> int:
    return zlib.crc32(question_id.split("-")[0].encode()) % FOLDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--questions", default="questions-full.jsonl")
    parser.add_argument("--misses", type=int, default=0, help="print this many misses")
    parser.add_argument("--report", type=Path, default=None, help="write per-question results as HTML")
    parser.add_argument("--colloquial", action="store_true", help="also ask each question as typed in chat")
    args = parser.parse_args()
    questions = load_questions(args.data / args.questions)
    if args.colloquial:
        from bench.colloquial import colloquial

        questions += [replace(q, id=f"{q.id}~chat", question=colloquial(q.question, q.id)) for q in questions]
    by_id = {q.id: q for q in questions}
    from rag.agent import Agent
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever

    started = time.perf_counter()
    kinds = ("written", "chat") if args.colloquial else ("written",)
    per_fold = {kind: [{"n": 0.0, "contained": 0.0, "r1": 0.0} for _ in range(FOLDS)] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="echorag-folds-") as tmp:
        settings = eval_settings(Settings(_env_file=None), Path(tmp))
        ingest_paths([args.data / "corpus.jsonl"], space=EVAL_SPACE, settings=settings, progress=False)
        with Retriever.from_settings(settings) as retriever:
            agent = Agent(retriever, settings=settings)
            items = [score_question(agent, retriever, q) for q in questions]
    for item in items:
        row = per_fold["chat" if item.id.endswith("~chat") else "written"][fold_of(item.id)]
        row["n"] += 1
        row["contained"] += item.contained
        row["r1"] += item.ranking["recall@1"]
    misses = [{"question": i.question, "gold": i.answers, "answer": i.answer[:160],
               "cited_gold": any(d in i.cited for d in by_id[i.id].positive_ids)}
              for i in items if not i.contained][: args.misses]
    print(f"{len(questions)} questions, {time.perf_counter() - started:.0f} s")
    print(f"{'fold':<6}{'n':>6}" + "".join(f"{kind + ' contained':>20}{kind + ' R@1':>14}" for kind in kinds))
    for f in [*range(FOLDS), None]:
        rows = {kind: per_fold[kind] if f is None else [per_fold[kind][f]] for kind in kinds}
        n = sum(r["n"] for r in rows["written"])
        cells = "".join(f"{sum(r['contained'] for r in rows[k]) / n:>20.4f}{sum(r['r1'] for r in rows[k]) / n:>14.4f}"
                        for k in kinds)
        print(f"{'all' if f is None else f:<6}{n:>6.0f}{cells}")
    for miss in misses:
        print(json.dumps(miss, ensure_ascii=False))
    if args.report:
        from core.report.page import eval_html
        from handlers.cli.report import write_atomically

        result = EvalResult(summarise(items, model=agent.model), items)
        write_atomically(args.report, eval_html(result, command=" ".join(["python", *sys.argv]),
                                                title="EchoRAG answer folds"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
