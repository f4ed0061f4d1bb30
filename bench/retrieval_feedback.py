"""Retrieval feedback benchmark: do users' 👍/👎 make retrieval better for the next people who ask?

    python bench/retrieval_feedback.py --data ../shared/data/korquad1 [--noise 0.1] [--users 20]

Simulated users on the full KorQuAD dev question file (`questions-full.jsonl`): the questions of
each passage are split into "asked first" and "asked later" (different wording, same need). Users
ask the first group through the real path (retrieve, an answer record citing the top passage, a
reaction recorded in the vote log, the index synced from it) and vote 👍 when the top passage is
the gold one, 👎 otherwise, a share `--noise` of them the wrong way. Then the later group is asked.
A fifth of the passages (by a hash of their id) get no questions asked first: their questions
measure collateral harm. Same run, same index, side by side:

- honest votes: R@1 / MRR@10 of the later group without vs with feedback, per article-disjoint fold;
- poisoned votes (every vote inverted): how far a coordinated wrong crowd can move the same group;
- untouched passages' questions: the change where no vote was cast;
- query latency with vs without the feedback leg (same retriever, same queries).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.retrieval import _cpu_seconds  # noqa: E402
from core.settings import Settings  # noqa: E402
from rag.evaluation import percentile  # noqa: E402
from rag.metrics import mrr_at_k, recall_at_k  # noqa: E402

SPACE = "eval"
FOLDS = 3


def load(data: Path, questions_file: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data / questions_file).open(encoding="utf-8") if line.strip()]


def split(questions: list[dict[str, Any]], seed: int) -> dict[str, list[dict[str, Any]]]:
    """first / later / untouched, by gold passage (a fifth of the passages untouched)."""
    by_passage: dict[str, list[dict[str, Any]]] = {}
    for q in questions:
        by_passage.setdefault(q["positive_ids"][0], []).append(q)
    rng = random.Random(seed)
    groups: dict[str, list[dict[str, Any]]] = {"first": [], "later": [], "untouched": []}
    for passage, items in sorted(by_passage.items()):
        if zlib.crc32(passage.encode()) % 5 == 0:
            groups["untouched"].extend(items)
            continue
        items = items[:]
        rng.shuffle(items)
        cut = max(1, len(items) // 2)
        groups["first"].extend(items[:cut])
        groups["later"].extend(items[cut:])
    return groups


def fold_of(question: dict[str, Any]) -> int:
    """Article-disjoint folds: the KorQuAD article id is the question id's first part."""
    return zlib.crc32(question["id"].split("-")[0].encode()) % FOLDS


def measure(retriever: Any, questions: list[dict[str, Any]]) -> dict[str, Any]:
    ranked = {}
    latencies = []
    for q in questions:
        start = time.perf_counter()
        ranked[q["id"]] = [p.doc_id for p in retriever.search(q["question"], spaces=[SPACE], limit=10)]
        latencies.append((time.perf_counter() - start) * 1000)
    return {"ranked": ranked, "latencies": latencies}


def metrics(ranked: dict[str, list[str]], questions: list[dict[str, Any]]) -> dict[str, float]:
    if not questions:
        return {"n": 0, "recall@1": 0.0, "mrr@10": 0.0}
    r1 = sum(recall_at_k(ranked[q["id"]], q["positive_ids"], 1) for q in questions) / len(questions)
    mrr = sum(mrr_at_k(ranked[q["id"]], q["positive_ids"], 10) for q in questions) / len(questions)
    return {"n": len(questions), "recall@1": round(r1, 4), "mrr@10": round(mrr, 4)}


def vote(retriever: Any, store: Any, settings: Settings, questions: list[dict[str, Any]], *,
         noise: float, invert: bool, users: int, seed: int) -> dict[str, int]:
    """Each first-group question asked by one of `users` people, answered from the top passage, and
    voted on through the real vote path (answer record, reaction, the index synced every 25 votes)."""
    from core.contracts import AnswerRecord, ContextRef, make_answer_id
    from core.feedback import record_reaction
    from core.queue import open_queue
    from core.records import save_answer

    rng = random.Random(seed)
    queue = open_queue(settings)
    counts = {"up": 0, "down": 0, "noisy": 0}
    for i, q in enumerate(questions):
        passages = retriever.search(q["question"], spaces=[SPACE], limit=5)
        if not passages:
            continue
        right = passages[0].doc_id in q["positive_ids"]
        noisy = rng.random() < noise
        up = (right != invert) != noisy  # a wrong-way vote flips the honest (or poisoned) one
        record = AnswerRecord(
            answer_id=make_answer_id("console", "bench", q["id"]), platform="console", channel="bench", message_id=q["id"], question=q["question"],
            condensed_question=q["question"], answer=passages[0].text[:200],
            contexts=[ContextRef(doc_id=p.doc_id, chunk_id=p.chunk_id, text=p.text, space=p.space, cited=j == 0)
                      for j, p in enumerate(passages)],
        )
        save_answer(store, record)
        record_reaction(platform="console", channel="bench", message_id=q["id"], user_id=f"user{i % users}",
                        reaction="+1" if up else "-1", action="added", event_ts=f"{1.8e9 + i:.6f}",
                        settings=settings, store=store, queue=queue)
        counts["up" if up else "down"] += 1
        counts["noisy"] += noisy
        if i % 25 == 24:
            retriever.sync_feedback(store)
    retriever.sync_feedback(store)
    return counts


def scenario(kb: Path, tmp: Path, name: str, groups: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    """One fresh copy of the knowledge base: baseline, votes, then the same questions again."""
    from core.store import open_store
    from rag.retrieval import Retriever

    data = tmp / name
    shutil.copytree(kb, data / "qdrant")
    settings = Settings(_env_file=None, data_dir=data, retrieval_feedback=True, retrain_threshold=10**9)
    store = open_store(settings)
    with Retriever.from_settings(settings) as retriever:
        measured = [*groups["first"], *groups["later"], *groups["untouched"]]  # first: asked again
        feedback, retriever.feedback = retriever.feedback, None
        cpu = _cpu_seconds()
        without = measure(retriever, measured)
        cpu_without = _cpu_seconds() - cpu
        retriever.feedback = feedback
        start = time.perf_counter()
        counts = vote(retriever, store, settings, groups["first"], noise=args.noise, invert=name == "poisoned",
                      users=args.users, seed=args.seed)
        vote_s = time.perf_counter() - start
        cpu = _cpu_seconds()
        with_fb = measure(retriever, measured)
        cpu_with = _cpu_seconds() - cpu
        summary = retriever.feedback.summary() if retriever.feedback is not None else {}
    rows: dict[str, Any] = {"votes": counts, "index": summary, "vote_phase_s": round(vote_s, 1)}
    for group in ("first", "later", "untouched"):
        rows[group] = {"without": metrics(without["ranked"], groups[group]), "with": metrics(with_fb["ranked"], groups[group])}
    rows["later_by_fold"] = [
        {"fold": f, "without": metrics(without["ranked"], qs), "with": metrics(with_fb["ranked"], qs)}
        for f in range(FOLDS) for qs in [[q for q in groups["later"] if fold_of(q) == f]]
    ]
    rows["latency_ms_p50"] = {"without": round(statistics.median(without["latencies"]), 2),
                              "with": round(statistics.median(with_fb["latencies"]), 2)}
    rows["latency_ms_p95"] = {"without": round(percentile(without["latencies"], 95), 2),
                              "with": round(percentile(with_fb["latencies"], 95), 2)}
    rows["queries_per_cpu_s"] = {"without": round(len(measured) / cpu_without, 1), "with": round(len(measured) / cpu_with, 1)}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with corpus.jsonl and the questions file")
    parser.add_argument("--questions", default="questions-full.jsonl")
    parser.add_argument("--noise", type=float, default=0.1, help="share of votes cast the wrong way")
    parser.add_argument("--users", type=int, default=20, help="simulated people taking turns")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--weight", type=float, default=None, help="try another FEEDBACK_WEIGHT (tuning)")
    parser.add_argument("--min-similarity", type=float, default=None, help="try another MIN_SIMILARITY (tuning)")
    args = parser.parse_args()
    import rag.feedback_index as fi

    fi.FEEDBACK_WEIGHT = fi.FEEDBACK_WEIGHT if args.weight is None else args.weight
    fi.MIN_SIMILARITY = fi.MIN_SIMILARITY if args.min_similarity is None else args.min_similarity
    if not (args.data / "corpus.jsonl").is_file() or not (args.data / args.questions).is_file():
        print(f"error: {args.data} needs corpus.jsonl and {args.questions}", file=sys.stderr)
        return 2
    from rag.ingest import ingest_paths

    groups = split(load(args.data, args.questions), args.seed)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="echorag-bench-fb-") as tmp_name:
        tmp = Path(tmp_name)
        base = Settings(_env_file=None, data_dir=tmp / "base", retrieval_feedback=False)
        summary = ingest_paths([args.data / "corpus.jsonl"], space=SPACE, settings=base, progress=True)
        print(f"ingested {summary.added} passages ({summary.chunks} chunks)", file=sys.stderr)
        results = {name: scenario(tmp / "base" / "qdrant", tmp, name, groups, args) for name in ("honest", "poisoned")}
    results["setup"] = {
        "questions": {k: len(v) for k, v in groups.items()}, "noise": args.noise, "users": args.users,
        "seed": args.seed, "weight": fi.FEEDBACK_WEIGHT, "min_similarity": fi.MIN_SIMILARITY, "wall_s": round(time.perf_counter() - started, 1),
        "load_avg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return 0


def print_table(results: dict[str, Any]) -> None:
    setup = results["setup"]
    print(f"questions: {setup['questions']}, noise {setup['noise']}, {setup['users']} users, weight {setup['weight']}, "
          f"min similarity {setup['min_similarity']}, "
          f"wall {setup['wall_s']} s, load avg {setup['load_avg_1m_before_after']}")
    print(f"{'run':<9} {'group':<10} {'n':>5} {'R@1 without':>12} {'R@1 with':>9} {'MRR@10 without':>15} {'MRR@10 with':>12}")
    for name in ("honest", "poisoned"):
        run = results[name]
        for group in ("first", "later", "untouched"):
            w, f = run[group]["without"], run[group]["with"]
            print(f"{name:<9} {group:<10} {w['n']:>5} {w['recall@1']:>12.4f} {f['recall@1']:>9.4f} "
                  f"{w['mrr@10']:>15.4f} {f['mrr@10']:>12.4f}")
        for fold in run["later_by_fold"]:
            w, f = fold["without"], fold["with"]
            print(f"{name:<9} {'fold ' + str(fold['fold']):<10} {w['n']:>5} {w['recall@1']:>12.4f} {f['recall@1']:>9.4f} "
                  f"{w['mrr@10']:>15.4f} {f['mrr@10']:>12.4f}")
        lat = run["latency_ms_p50"]
        print(f"{name:<9} votes {run['votes']}, index {run['index']}; query p50 {lat['without']} → {lat['with']} ms "
              f"(×{lat['with'] / lat['without']:.2f}), queries/CPU-s {run['queries_per_cpu_s']}")


if __name__ == "__main__":
    raise SystemExit(main())
