"""The answer step's cost with the analysis stored at ingestion vs re-analysing the passages, next to
the retrieval it follows, in one process over the same questions and passages.

    python bench/answer_speed.py --data ../shared/data/korquad1 [--questions questions.jsonl] [--json]

Per question: retrieval (`Retriever.search`, what the agent's retrieve node runs), then the answer
step (grade + extractive answer, `rag.grading.assess` + `rag.extractive.extractive_answer`) on the
same top passages twice, interleaved: with the stored sentences (`rag.passage_analysis`) and with
them dropped (`analysis=None`: the previous method, Kiwi on every passage). The per-text analysis
cache is cleared before each answer call, so both methods analyse the question anew and the old one
re-analyses every passage (a question and passages the process has not seen lately); `reanalyse_warm`
repeats the old method with that cache warm (the same passages asked about again). Prints ms p50/p95
per call, calls per CPU-second (process CPU time, robust to a shared machine's load), the ratios, how
many answers the two methods disagree on, and the payload bytes per chunk with and without the
stored analysis.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from rag.evaluation import EVAL_SPACE, eval_settings  # noqa: E402
from rag.types import Passage  # noqa: E402

METHODS = ("retrieval", "stored", "reanalyse", "reanalyse_warm")


class Meter:
    """Wall time per call and process CPU time in total, per method."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {m: [] for m in METHODS}
        self.cpu: dict[str, float] = dict.fromkeys(METHODS, 0.0)

    def time(self, method: str, call: Callable[[], Any]) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        result = call()
        self.wall[method].append((time.perf_counter() - wall) * 1000.0)
        self.cpu[method] += time.process_time() - cpu
        return result

    def row(self, method: str) -> dict[str, float]:
        wall = sorted(self.wall[method])
        return {
            "ms_p50": round(statistics.median(wall), 3),
            "ms_p95": round(wall[int(0.95 * (len(wall) - 1))], 3),
            "cpu_ms_per_call": round(1000.0 * self.cpu[method] / len(wall), 3),
            "calls_per_cpu_s": round(len(wall) / self.cpu[method], 1) if self.cpu[method] else 0.0,
        }


def payload_bytes(hits: list[Any]) -> dict[str, float]:
    """Mean JSON bytes (UTF-8, as stored) of a chunk's payload with and without the analysis."""
    def size(payload: dict[str, Any]) -> int:
        return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())

    with_analysis = [size(h.payload) for h in hits]
    without = [size({k: v for k, v in h.payload.items() if k != "analysis"}) for h in hits]
    text = [len(h.payload["text"].encode()) for h in hits]
    return {
        "chunks": len(hits),
        "payload_bytes_before": round(statistics.mean(without), 1),
        "payload_bytes_after": round(statistics.mean(with_analysis), 1),
        "analysis_bytes": round(statistics.mean(with_analysis) - statistics.mean(without), 1),
        "text_bytes": round(statistics.mean(text), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--questions", default="questions.jsonl")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import rag.text
    from rag.extractive import extractive_answer
    from rag.grading import assess
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever

    questions = [json.loads(line)["question"] for line in (args.data / args.questions).open(encoding="utf-8")
                 if line.strip()]
    load_before = os.getloadavg()
    meter = Meter()
    disagree = 0
    with tempfile.TemporaryDirectory(prefix="echorag-answer-speed-") as tmp:
        settings = eval_settings(Settings(_env_file=None), Path(tmp))
        ingest_paths([args.data / "corpus.jsonl"], space=EVAL_SPACE, settings=settings, progress=False)
        with Retriever.from_settings(settings) as retriever:
            sizes = payload_bytes(list(retriever.store.scroll_points()))

            def answer(question: str, passages: list[Passage], *, clear: bool) -> tuple[bool, str | None]:
                if clear:
                    rag.text._cache.clear()
                return assess(question, passages).sufficient(), extractive_answer(question, passages)

            for i, question in enumerate(questions):
                def search(q: str = question) -> list[Passage]:
                    return retriever.search(q, spaces=[EVAL_SPACE], limit=settings.top_k + 2)

                found: list[Passage] = meter.time("retrieval", search)[: settings.top_k]
                stored = [dataclasses.replace(p) for p in found]  # fresh: each call decodes its payloads
                live = [dataclasses.replace(p, analysis=None) for p in found]
                runs = [("stored", stored), ("reanalyse", live)]
                results: dict[str, tuple[bool, str | None]] = {}
                for method, passages in runs if i % 2 == 0 else runs[::-1]:  # interleaved, either order first
                    results[method] = meter.time(method, partial(answer, question, passages, clear=True))
                meter.time("reanalyse_warm", partial(answer, question, live, clear=False))
                disagree += results["stored"] != results["reanalyse"]
    rows = {m: meter.row(m) for m in METHODS}
    retrieval = rows["retrieval"]
    ratios = {
        "stored/retrieval ms_p50": rows["stored"]["ms_p50"] / retrieval["ms_p50"],
        "reanalyse/retrieval ms_p50": rows["reanalyse"]["ms_p50"] / retrieval["ms_p50"],
        "stored/retrieval cpu": rows["stored"]["cpu_ms_per_call"] / retrieval["cpu_ms_per_call"],
        "reanalyse/retrieval cpu": rows["reanalyse"]["cpu_ms_per_call"] / retrieval["cpu_ms_per_call"],
        "stored/reanalyse cpu": rows["stored"]["cpu_ms_per_call"] / rows["reanalyse"]["cpu_ms_per_call"],
        "reanalyse_warm/retrieval cpu": rows["reanalyse_warm"]["cpu_ms_per_call"] / retrieval["cpu_ms_per_call"],
    }
    report: dict[str, Any] = {
        "questions": len(questions),
        "load_avg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "methods": rows,
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "answers_that_differ": disagree,
        **sizes,
    }
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    print(f"{len(questions)} questions, load average (1 min) before/after {report['load_avg_before_after']}")
    print(f"{'method':<16}{'ms p50':>9}{'ms p95':>9}{'CPU ms/call':>13}{'calls/CPU-s':>13}")
    for method, row in rows.items():
        print(f"{method:<16}{row['ms_p50']:>9.3f}{row['ms_p95']:>9.3f}{row['cpu_ms_per_call']:>13.3f}"
              f"{row['calls_per_cpu_s']:>13.1f}")
    for name, value in report["ratios"].items():
        print(f"{name:<32}{value:>7.2f}")
    print(f"answers that differ between the methods: {disagree} of {len(questions)}")
    print(f"payload bytes per chunk ({sizes['chunks']} chunks): {sizes['payload_bytes_before']} without the analysis, "
          f"{sizes['payload_bytes_after']} with it (+{sizes['analysis_bytes']}; the text alone {sizes['text_bytes']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
