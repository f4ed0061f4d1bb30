"""Ingestion throughput: Kiwi one batch ahead of the writes vs one after the other, vs one core.

    python bench/ingest_speed.py --data ../shared/data/korquad1 [--chunks 3000] [--rounds 3] [--json]

One process, one corpus, the methods interleaved round by round, each ingesting into a fresh
embedded store with `ingest_paths` (what `echorag ingest` runs: JSONL read, Kiwi, features,
payloads, upserts, optimizer):

- **ahead** (today): Kiwi analyses batch k+1 in a worker thread while batch k is written.
- **serial**: the same code with `rag.ingest.ANALYSE_AHEAD = False`, the previous method: Kiwi's two
  threads analyse a batch, then this thread builds and writes its points while Kiwi waits.
- **one_core**: serial with a `Kiwi(num_workers=1)`: what a single core does.

The corpus is the dev passages plus synthetic chunk-sized rows recombined from their sentences
(`bench/retrieval.py synthetic_rows`, fixed seed). Nothing is cached between runs: Kiwi analyses
every text anew (ingestion has no analysis cache) and every run writes a new store, so repeated
sentences cost what new ones would. Prints chunks per wall second and per CPU second (process CPU,
all threads), the ratios, the load average, and whether every method stored the same points.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rag.ingest  # noqa: E402
import rag.text  # noqa: E402
from bench.retrieval import _cpu_seconds, load, synthetic_rows  # noqa: E402
from core.settings import Settings  # noqa: E402
from rag.vectorstore import open_vector_store  # noqa: E402

METHODS = ("ahead", "serial", "one_core")


def _fingerprint(settings: Settings) -> str:
    """A hash of every stored point's id and payload (text, stored analysis, hash): equal means the same chunks."""
    store = open_vector_store(settings)
    try:
        rows = sorted((hit.id, json.dumps(hit.payload, sort_keys=True, ensure_ascii=False)) for hit in store.scroll_points())
    finally:
        store.close()
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def ingest_once(method: str, corpus_file: Path, one_core_kiwi: object) -> dict:
    rag.ingest.ANALYSE_AHEAD = method == "ahead"
    shared_kiwi = rag.text.get_kiwi
    if method == "one_core":
        rag.text.get_kiwi = lambda: one_core_kiwi
    try:
        with tempfile.TemporaryDirectory(prefix=f"echorag-ingest-{method}-") as tmp:
            settings = Settings(_env_file=None, data_dir=Path(tmp))
            wall, cpu = time.perf_counter(), _cpu_seconds()
            summary = rag.ingest.ingest_paths([corpus_file], space="bench", settings=settings, progress=False)
            wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
            return {"chunks": summary.chunks, "wall_s": wall, "cpu_s": cpu, "fingerprint": _fingerprint(settings)}
    finally:
        rag.text.get_kiwi = shared_kiwi
        rag.ingest.ANALYSE_AHEAD = True


def run(args: argparse.Namespace) -> dict:
    from kiwipiepy import Kiwi

    corpus, _ = load(args.data)
    settings = Settings(_env_file=None)
    rows = synthetic_rows(corpus, max(args.chunks - len(corpus), 0), chunk_chars=settings.chunk_size) + corpus
    rag.text.get_kiwi()  # both Kiwis loaded before anything is timed
    one_core_kiwi = Kiwi(num_workers=1)
    one_core_kiwi.tokenize("초기화")
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory(prefix="echorag-ingest-corpus-") as tmp:
        corpus_file = Path(tmp) / "corpus.jsonl"
        corpus_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        for round_no in range(args.rounds):
            order = METHODS if round_no % 2 == 0 else METHODS[::-1]  # neither method always goes first
            for method in order:
                runs[method].append(ingest_once(method, corpus_file, one_core_kiwi))
                print(f"round {round_no + 1}/{args.rounds} {method}: {runs[method][-1]['wall_s']:.1f} s",
                      file=sys.stderr)
    table = {}
    for method, results in runs.items():
        chunks = results[0]["chunks"]
        table[method] = {
            "chunks": chunks,
            "wall_s": round(statistics.median(r["wall_s"] for r in results), 2),
            "chunks_per_wall_s": round(chunks / statistics.median(r["wall_s"] for r in results), 1),
            "chunks_per_cpu_s": round(chunks / statistics.median(r["cpu_s"] for r in results), 1),
            "cores_busy": round(statistics.median(r["cpu_s"] / r["wall_s"] for r in results), 2),
        }
    prints = {r["fingerprint"] for results in runs.values() for r in results}
    return {
        "rows": len(rows),
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "methods": table,
        "ahead/serial wall": round(table["serial"]["wall_s"] / table["ahead"]["wall_s"], 2),
        "ahead/one_core wall": round(table["one_core"]["wall_s"] / table["ahead"]["wall_s"], 2),
        "same points in every run": len(prints) == 1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with corpus.jsonl and questions.jsonl")
    parser.add_argument("--chunks", type=int, default=3000, help="rows to ingest (dev passages + synthetic)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each method (medians are printed)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"{result['rows']} rows, {result['rounds']} rounds, {result['cpus']} CPUs, load average before "
          f"{result['load_avg_before']} after {result['load_avg_after']}")
    print(f"{'method':<10} {'chunks':>7} {'wall s':>7} {'chunks/s':>9} {'chunks/CPU-s':>13} {'cores busy':>11}")
    for method, row in result["methods"].items():
        print(f"{method:<10} {row['chunks']:>7} {row['wall_s']:>7} {row['chunks_per_wall_s']:>9} "
              f"{row['chunks_per_cpu_s']:>13} {row['cores_busy']:>11}")
    print(f"ahead/serial wall speed-up   {result['ahead/serial wall']}")
    print(f"ahead/one_core wall speed-up {result['ahead/one_core wall']}")
    print(f"same points in every run: {result['same points in every run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
