"""Retrieval benchmark: quality against BM25 baselines, and the embedded store at scale.

Quality (one run, same data, same metrics):
    python bench/retrieval.py --data ../shared/data/korquad1
  ours (Kiwi morphemes + morpheme pairs + Hangul bigrams, Qdrant sparse/IDF, embedded store)
  vs BM25 over whitespace tokens (bm25s) vs BM25 over Okt morphemes (konlpy + bm25s)
  vs BM25 over Kiwi morphemes alone (bm25s), the classic Korean baseline.
Scale (synthetic chunks recombined from the dev passages' sentences, plus the real passages):
    python bench/retrieval.py --data ../shared/data/korquad1 --scale 100000 [--backend edge|local]
  ingest chunks/s (end to end: Kiwi, vectors, upserts, flush), query p50/p95, peak RSS, and the
  share of questions whose top chunk contains the gold answer.
Query latency is measured per query, end to end (tokenising the query included), one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from rag.evaluation import percentile  # noqa: E402
from rag.metrics import contains_answer, mrr_at_k, ndcg_at_k, recall_at_k  # noqa: E402

Ranker = Callable[[str], list[str]]


def load(data: Path) -> tuple[list[dict], list[dict]]:
    corpus = [json.loads(line) for line in (data / "corpus.jsonl").open(encoding="utf-8") if line.strip()]
    questions = [json.loads(line) for line in (data / "questions.jsonl").open(encoding="utf-8") if line.strip()]
    return corpus, questions


def score(name: str, rank: Ranker, questions: list[dict]) -> dict:
    sums = {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    latencies = []
    for q in questions:
        start = time.perf_counter()
        ranked = rank(q["question"])
        latencies.append((time.perf_counter() - start) * 1000)
        rel = q["positive_ids"]
        sums["recall@1"] += recall_at_k(ranked, rel, 1)
        sums["recall@5"] += recall_at_k(ranked, rel, 5)
        sums["recall@10"] += recall_at_k(ranked, rel, 10)
        sums["mrr@10"] += mrr_at_k(ranked, rel, 10)
        sums["ndcg@10"] += ndcg_at_k(ranked, rel, 10)
    row = {"method": name, **{k: round(v / len(questions), 4) for k, v in sums.items()}}
    row["query_ms_p50"] = round(statistics.median(latencies), 3)
    row["query_ms_p95"] = round(percentile(latencies, 95), 3)
    return row


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): comparable on a machine others share."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bm25s_ranker(corpus: list[dict], tokenize: Callable[[str], list[str]]) -> Ranker:
    import bm25s

    ids = [d["id"] for d in corpus]
    index = bm25s.BM25()  # Lucene BM25, k1=1.5, b=0.75
    index.index([tokenize(f"{d['title']} {d['text']}") or ["<empty>"] for d in corpus], show_progress=False)

    def rank(question: str) -> list[str]:
        tokens = tokenize(question)
        vocab = index.vocab_dict
        tokens = [t for t in tokens if t in vocab]
        if not tokens:
            return []
        docs, _ = index.retrieve([tokens], k=10, show_progress=False, n_threads=1)
        return [ids[i] for i in docs[0]]

    return rank


def our_ranker(settings: Settings, corpus_file: Path, space: str = "eval") -> tuple[Ranker, object, dict]:
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever

    start, cpu_start = time.perf_counter(), _cpu_seconds()
    summary = ingest_paths([corpus_file], space=space, settings=settings, progress=True)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    retriever = Retriever.from_settings(settings)

    def rank(question: str) -> list[str]:
        return [p.doc_id for p in retriever.search(question, spaces=[space], limit=10)]

    info = {"documents": summary.added, "chunks": summary.chunks, "failed": summary.failed, "ingest_s": round(seconds, 2),
            "ingest_cpu_s": round(cpu, 2)}
    return rank, retriever, info


def run_quality(args: argparse.Namespace) -> list[dict]:
    corpus, questions = load(args.data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="echorag-bench-") as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp), vector_backend=args.backend)
        rank, retriever, info = our_ranker(settings, args.data / "corpus.jsonl")
        print(f"ours: ingested {info}", file=sys.stderr)
        rows.append(score("ours: Kiwi BM25 + pairs + bigrams (Qdrant " + args.backend + ")", rank, questions))
        retriever.close()  # type: ignore[attr-defined]
    rows.append(score("BM25 whitespace tokens (bm25s)", bm25s_ranker(corpus, lambda s: s.lower().split()), questions))
    try:
        from konlpy.tag import Okt

        okt = Okt()
        okt.morphs("자바 가상 머신 시작")
    except Exception as exc:  # JVM missing / JPype problem: say so, keep the other rows
        print(f"Okt baseline skipped: konlpy could not start Okt ({type(exc).__name__}: {exc})", file=sys.stderr)
    else:
        rows.append(score("BM25 Okt morphemes (konlpy + bm25s)", bm25s_ranker(corpus, okt.morphs), questions))
    from rag.text import terms

    rows.append(score("BM25 Kiwi morphemes (bm25s)", bm25s_ranker(corpus, terms), questions))
    ours = rows[0]["query_ms_p50"]
    for row in rows:
        row["latency_vs_ours"] = round(row["query_ms_p50"] / ours, 2) if ours else None
    return rows


def synthetic_rows(corpus: list[dict], n: int, *, chunk_chars: int, seed: int = 7) -> list[dict]:
    """`n` chunk-sized passages recombined from the dev passages' sentences (each one chunk)."""
    from rag.text import split_sentences

    rng = random.Random(seed)
    sentences = [s for d in corpus for s in split_sentences(d["text"]) if 10 <= len(s) <= chunk_chars // 2]
    titles = sorted({d["title"] for d in corpus})
    rows = []
    for i in range(n):
        target = rng.randint(chunk_chars // 3, chunk_chars - 50)
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < target:
            parts.append(rng.choice(sentences))
        rows.append({"id": f"syn-{i:07d}", "title": rng.choice(titles), "text": " ".join(parts)[: chunk_chars - 10]})
    return rows


def reopen_stats(data_dir: Path, backend: str, questions: list[dict]) -> dict:
    """In this (fresh) process: open the store under `data_dir`, then time the questions against it.
    What a Lambda container or a new `echorag ask` pays; RSS is measured after Kiwi is loaded, so
    `rss_open_mb` is what the open store itself keeps resident."""
    import psutil

    from rag.retrieval import Retriever
    from rag.text import get_kiwi

    get_kiwi()
    settings = Settings(_env_file=None, data_dir=data_dir, vector_backend=backend)
    rss = psutil.Process().memory_info().rss
    start = time.perf_counter()
    retriever = Retriever.from_settings(settings)
    retriever.store.count()  # the open is lazy in some backends: make it happen here
    open_s = time.perf_counter() - start
    rss_open = psutil.Process().memory_info().rss
    latencies, contains = [], 0
    for q in questions:
        start = time.perf_counter()
        hits = retriever.search(q["question"], limit=10)
        latencies.append((time.perf_counter() - start) * 1000)
        contains += bool(hits) and contains_answer(hits[0].text, q["answers"])
    result = {
        "open_s": round(open_s, 3),
        "rss_open_mb": round((rss_open - rss) / 2**20, 1),
        "rss_after_queries_mb": round((psutil.Process().memory_info().rss - rss) / 2**20, 1),
        "query_ms_p50": round(statistics.median(latencies), 3),
        "query_ms_p95": round(percentile(latencies, 95), 3),
        "top1_contains_answer": round(contains / len(latencies), 4),
    }
    retriever.close()
    return result


def _reopen(data_dir: Path, args: argparse.Namespace) -> dict:
    """`reopen_stats` in a fresh interpreter (nothing of the ingestion stays in its memory)."""
    command = [sys.executable, __file__, "--data", str(args.data), "--reopen", str(data_dir),
               "--backend", args.backend, "--queries", str(args.queries)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


def run_scale(args: argparse.Namespace) -> dict:
    """Ingest `args.scale` chunks, then reopen the store in fresh processes: as ingestion left it
    before the optimizer ran (the previous method) and after (`finish_writes` today), alternating,
    3 times each (medians)."""
    import psutil

    from rag.vectorstore import open_vector_store
    from rag.vectorstore.edge import EdgeStore

    corpus, questions = load(args.data)
    with tempfile.TemporaryDirectory(prefix="echorag-scale-") as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp) / "optimized", vector_backend=args.backend)
        n_synthetic = args.scale - len(corpus)
        rows = synthetic_rows(corpus, n_synthetic, chunk_chars=settings.chunk_size) + corpus
        corpus_file = Path(tmp) / "corpus.jsonl"
        with corpus_file.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        del rows
        rss_before = psutil.Process().memory_info().rss
        load_before = os.getloadavg()[0]
        optimize = EdgeStore.finish_writes
        EdgeStore.finish_writes = lambda self: self._shard and self._shard.flush()  # type: ignore[method-assign]
        try:
            _, retriever, info = our_ranker(settings, corpus_file)
        finally:
            EdgeStore.finish_writes = optimize  # type: ignore[method-assign]
        retriever.close()  # type: ignore[attr-defined]
        builds = {"appendable": Path(tmp) / "appendable", "optimized": settings.data_dir}
        optimize_s = 0.0
        if args.backend == "edge":
            shutil.copytree(settings.data_dir, builds["appendable"])
            store = open_vector_store(settings)
            start = time.perf_counter()
            store.finish_writes()
            optimize_s = time.perf_counter() - start
            store.close()
        else:
            del builds["appendable"]
        runs: dict[str, list[dict]] = {name: [] for name in builds}
        for _ in range(3):
            for name, folder in builds.items():
                runs[name].append(_reopen(folder, args))
        disk = {name: round(sum(f.stat().st_size for f in (folder / "qdrant").rglob("*") if f.is_file()) / 2**20, 1)
                for name, folder in builds.items()}
    reopened = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    result: dict = {
        "backend": args.backend,
        "chunks": info["chunks"],
        "documents": info["documents"],
        "ingest_s": info["ingest_s"],
        "ingest_chunks_per_s": round(info["chunks"] / info["ingest_s"], 1),
        "ingest_cpu_s": info["ingest_cpu_s"],
        "ingest_chunks_per_cpu_s": round(info["chunks"] / info["ingest_cpu_s"], 1),
        "optimize_s": round(optimize_s, 2),
        "load_avg_1m_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "queries": min(args.queries, len(questions)),
        "ingest_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_ingest_mb": round(rss_before / 2**20, 1),
        "store_on_disk_mb": disk,
        "reopened": reopened,
    }
    if "appendable" in reopened:
        before, after = reopened["appendable"], reopened["optimized"]
        result["optimized/appendable"] = {key: round(after[key] / before[key], 2) if before[key] else None
                                          for key in ("open_s", "rss_open_mb", "query_ms_p50", "query_ms_p95")}
    return result


def print_table(rows: list[dict]) -> None:
    cols = ["recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "query_ms_p50", "query_ms_p95", "latency_vs_ours"]
    width = max(len(r["method"]) for r in rows)
    print(f"{'method':<{width}}  " + "  ".join(f"{c:>12}" for c in cols))
    for row in rows:
        print(f"{row['method']:<{width}}  " + "  ".join(f"{row.get(c)!s:>12}" for c in cols))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with corpus.jsonl and questions.jsonl")
    parser.add_argument("--scale", type=int, default=0, help="run the scale benchmark with this many chunks")
    parser.add_argument("--backend", choices=["edge", "local"], default="edge", help="embedded store to measure")
    parser.add_argument("--queries", type=int, default=500, help="questions timed in the scale run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--reopen", type=Path, help=argparse.SUPPRESS)  # run_scale's fresh-process half
    args = parser.parse_args()
    if args.reopen:
        _, questions = load(args.data)
        print(json.dumps(reopen_stats(args.reopen, args.backend, questions[: args.queries])))
    elif args.scale:
        result = run_scale(args)
        print(json.dumps(result, ensure_ascii=False, indent=None if args.json else 2))
    else:
        rows = run_quality(args)
        if args.json:
            print(json.dumps(rows, ensure_ascii=False))
        else:
            print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
