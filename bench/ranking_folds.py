"""BM25 settings by article-disjoint fold, for tuning the ranking without fitting the dev set.

    python bench/ranking_folds.py --data ../shared/data/korquad1 [--questions questions-full.jsonl]
        --config "k1=1.2" --config "k1=0.8 b=0.9" --config "w_b=0.5" ...

Ingests the corpus once per configuration into a throwaway embedded store and ranks every question
(`Retriever.search`, what the agent's retrieve node runs), then prints R@1 and MRR@10 per fold
(KorQuAD article id → crc32 % 3, as `bench/answer_folds.py`) for the shipped settings and each
configuration, and whether a configuration is better on every fold. Knobs: `k1`, `b`, `avg`
(BM25's average length as a fraction of CHUNK_SIZE) and `w_m` / `w_p` / `w_b`, a weight on the
morpheme, morpheme-pair and character-bigram features (applied to the stored values, which is the
same as weighing the query's). Nothing is cached between configurations but Kiwi's per-text
analysis, which is the same for all of them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rag.ingest  # noqa: E402
import rag.sparse  # noqa: E402
from bench.answer_folds import FOLDS, fold_of  # noqa: E402
from core.settings import Settings  # noqa: E402
from rag.evaluation import EVAL_SPACE, RANK_DEPTH, EvalQuestion, eval_settings, load_questions  # noqa: E402
from rag.metrics import mrr_at_k, recall_at_k  # noqa: E402
from rag.sparse import SparseEncoder, SparseVec  # noqa: E402

SHIPPED = {"k1": 0.8, "b": 0.75, "avg": 0.8, "w_m": 1.0, "w_p": 1.0, "w_b": 1.0}
_KIND: dict[int, str] = {}  # feature index → kind ("m", "p", "b"), filled as features are hashed


def parse_config(text: str) -> dict[str, float]:
    config = dict(SHIPPED)
    for part in text.split():
        key, _, value = part.partition("=")
        if key not in SHIPPED:
            raise SystemExit(f"unknown knob {key!r} in {text!r}; knobs: {', '.join(SHIPPED)}")
        config[key] = float(value)
    return config


class _Weighted(SparseEncoder):
    def __init__(self, config: dict[str, float], chunk_size: int) -> None:
        super().__init__(k1=config["k1"], b=config["b"], avg_chars=config["avg"] * chunk_size)
        self.weights = {"m": config["w_m"], "p": config["w_p"], "b": config["w_b"]}

    def document_vector(self, counts: Counter[int], length: int) -> SparseVec:
        vec = super().document_vector(counts, length)
        return SparseVec(vec.indices, [v * self.weights[_KIND[i]] for i, v in zip(vec.indices, vec.values, strict=True)])


@contextmanager
def configured(config: dict[str, float]) -> Iterator[None]:
    """Ingestion builds its encoder with `config` (queries are 1.0 per feature whatever the config)."""
    real_hash, real_factory = rag.sparse._hash, rag.ingest.sparse_from_settings

    def recording(kind: str, term: str) -> int:
        index = real_hash(kind, term)
        _KIND[index] = kind
        return index

    rag.sparse._hash = recording  # type: ignore[assignment]
    rag.ingest.sparse_from_settings = lambda settings: _Weighted(config, settings.chunk_size)
    try:
        yield
    finally:
        rag.sparse._hash, rag.ingest.sparse_from_settings = real_hash, real_factory


def ranks(corpus: Path, questions: list[EvalQuestion], config: dict[str, float]) -> list[tuple[float, float]]:
    """(recall@1, MRR@10) per question under `config`."""
    from rag.ingest import ingest_paths
    from rag.retrieval import Retriever

    with tempfile.TemporaryDirectory(prefix="echorag-ranking-") as tmp, configured(config):
        settings = eval_settings(Settings(_env_file=None), Path(tmp))
        ingest_paths([corpus], space=EVAL_SPACE, settings=settings, progress=False)
        with Retriever.from_settings(settings) as retriever:
            out = []
            for q in questions:
                ranked = [p.doc_id for p in retriever.search(q.question, spaces=[EVAL_SPACE], limit=RANK_DEPTH)]
                out.append((recall_at_k(ranked, q.positive_ids, 1), mrr_at_k(ranked, q.positive_ids, 10)))
    return out


def by_fold(questions: list[EvalQuestion], scores: list[tuple[float, float]]) -> list[tuple[float, float]]:
    sums = [[0.0, 0.0, 0] for _ in range(FOLDS)]
    for q, (r1, mrr) in zip(questions, scores, strict=True):
        row = sums[fold_of(q.id)]
        row[0] += r1
        row[1] += mrr
        row[2] += 1
    return [(r1 / n, mrr / n) for r1, mrr, n in sums]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--questions", default="questions-full.jsonl")
    parser.add_argument("--config", action="append", default=[], help='knobs, e.g. "k1=1.2 b=0.9" (repeatable)')
    args = parser.parse_args()
    questions = [q for q in load_questions(args.data / args.questions) if q.positive_ids]
    configs = [("shipped", dict(SHIPPED))] + [(text, parse_config(text)) for text in args.config]
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    started = time.perf_counter()
    print(f"{len(questions)} questions, folds of n " +
          " / ".join(str(sum(fold_of(q.id) == f for q in questions)) for f in range(FOLDS)) + f", load {load}")
    print(f"{'config':<28}" + "".join(f"{f'R@1 f{f}':>10}" for f in range(FOLDS)) +
          "".join(f"{f'MRR f{f}':>10}" for f in range(FOLDS)) + f"{'R@1 all':>10}{'MRR all':>10}  every fold")
    baseline: list[tuple[float, float]] = []
    for name, config in configs:
        scores = ranks(args.data / "corpus.jsonl", questions, config)
        folds = by_fold(questions, scores)
        baseline = baseline or folds
        r1_all = sum(s[0] for s in scores) / len(scores)
        mrr_all = sum(s[1] for s in scores) / len(scores)
        better = [(r - br, m - bm) for (r, m), (br, bm) in zip(folds, baseline, strict=True)]
        verdict = ("—" if name == "shipped" else
                   "better" if all(dr >= 0 and dm >= 0 for dr, dm in better) and any(dr > 0 or dm > 0 for dr, dm in better)
                   else "worse" if all(dr <= 0 and dm <= 0 for dr, dm in better) else "mixed")
        print(f"{name:<28}" + "".join(f"{r:>10.4f}" for r, _ in folds) + "".join(f"{m:>10.4f}" for _, m in folds) +
              f"{r1_all:>10.4f}{mrr_all:>10.4f}  {verdict}", flush=True)
    load_after = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"{time.perf_counter() - started:.0f} s, load {load} → {load_after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
