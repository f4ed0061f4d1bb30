"""Training throughput and memory: a baseline and a variant, side by side in one process.

    python bench/training.py --base-model /models/Qwen2.5-0.5B-Instruct --compare lm_head
    python bench/training.py --tiny --compare dtype          # CPU smoke run on a random 2-layer model

Reports examples/s of the optimisation loop (loading and saving excluded), peak process RSS during
the run (sampled every 10 ms) and, on a GPU, `torch.cuda.max_memory_allocated`, then the ratio
variant / baseline. A short warm-up run first pays torch's one-time start-up costs, so neither side
is charged for them; the two configurations alternate `--repeats` times and the best run of each is
reported. Comparisons:

- `lm_head`: LoRA only (baseline) vs LoRA + a fully trained `lm_head` (modules_to_save), the
  setting the tests need for tiny random models — what it costs on a real model.
- `dtype`: fp32 (baseline) vs bf16 weights (bf16 autocast on a GPU).
- `rank`: LoRA rank 8 (baseline) vs rank 64.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag.prompts import build_messages
from rag.types import Passage
from training.dataset import Example
from training.train import TrainConfig, train_lora

TOPICS = [
    ("휴가는 며칠인가요?", "휴가 규정", "정규직 직원의 연차 휴가는 연 15일이며 입사 첫 해에는 비례하여 부여됩니다.",
     "연차 휴가는 연 15일입니다 [1].", "ko"),
    ("재학습은 어떻게 요청하나요?", "봇 사용법", "관리자가 /retrain 을 입력하면 재학습 작업이 대기열에 들어갑니다.",
     "관리자가 /retrain 을 입력하면 됩니다 [1].", "ko"),
    ("Who approves expenses?", "Expenses", "Expenses up to $500 are approved by your team lead within a week.",
     "Your team lead approves expenses up to $500 [1].", "en"),
    ("Where is the VPN guide?", "IT help", "The VPN guide is on the IT wiki under Remote access, with setup steps.",
     "It is on the IT wiki under Remote access [1].", "en"),
]


def synthetic_examples(n: int, contexts: int) -> list[Example]:
    """`n` examples shaped like real ones: `contexts` retrieved passages per prompt, short cited answers."""
    out = []
    for i in range(n):
        question, title, text, answer, language = TOPICS[i % len(TOPICS)]
        passages = [
            Passage(chunk_id=f"c{i}-{k}", doc_id=f"d{k}", title=f"{title} {k}", text=f"{text} ({i}-{k})")
            for k in range(contexts)
        ]
        out.append(Example(id=f"ex{i}", question=question, answer=answer, language=language,
                           messages=build_messages(f"{question} ({i})", passages, language)))
    return out


class PeakRss:
    """Samples this process's RSS in a thread; `peak` after the `with` block (bytes)."""

    def __init__(self, interval_s: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process(os.getpid())
        self._interval = interval_s
        self._stop = threading.Event()
        self.start = self.peak = self._proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def run_one(label: str, config: TrainConfig, examples: list[Example], workdir: Path) -> dict[str, Any]:
    import torch

    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with PeakRss() as rss:
        result = train_lora(config, examples, workdir / label, show_progress=False)
    seen = result.examples * config.epochs
    row: dict[str, Any] = {
        "config": label,
        "examples_per_s": seen / result.train_seconds,
        "train_s": result.train_seconds,
        "steps": result.steps,
        "trainable_params": result.trainable_params,
        "final_loss": result.final_loss,
        "peak_rss_mib": rss.peak / 2**20,
        "rss_growth_mib": (rss.peak - rss.start) / 2**20,
    }
    if gpu:
        row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


class Overrides(TypedDict, total=False):
    """The TrainConfig fields a variant changes."""

    modules_to_save: tuple[str, ...]
    dtype: str
    r: int
    alpha: int


Variant = tuple[str, Overrides]  # (label, TrainConfig overrides)

VARIANTS: dict[str, tuple[Variant, Variant]] = {
    "lm_head": (("lora", {}), ("lora+lm_head", {"modules_to_save": ("lm_head",)})),
    "dtype": (("fp32", {"dtype": "float32"}), ("bf16", {"dtype": "bfloat16"})),
    "rank": (("r8", {"r": 8, "alpha": 16}), ("r64", {"r": 64, "alpha": 128})),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--base-model", help="path or hub id of the base causal LM")
    where.add_argument("--tiny", action="store_true", help="build a random 2-layer model + tokenizer (CPU smoke run)")
    parser.add_argument("--compare", choices=sorted(VARIANTS), default="lm_head")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--contexts", type=int, default=3, help="retrieved passages per prompt")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (best one reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        workdir = Path(tmp)
        base = args.base_model
        if args.tiny:
            from tests.support_training import build_tiny_base

            base = str(build_tiny_base(workdir / "tiny-base"))
        config = TrainConfig(base_model=base, r=16, alpha=32, target_modules=tuple(args.targets.split(",")),
                             epochs=args.epochs, lr=1e-4, max_length=args.max_length, batch_size=args.batch_size,
                             objective="sft")  # the step these results were measured on (KTO adds one reference pass)
        examples = synthetic_examples(args.examples, args.contexts)
        train_lora(config, examples[: args.batch_size], workdir / "warmup", show_progress=False)  # one-time costs
        (base_label, base_over), (var_label, var_over) = VARIANTS[args.compare]
        runs: dict[str, list[dict[str, Any]]] = {base_label: [], var_label: []}
        for _ in range(args.repeats):  # interleaved, so a busy machine slows both sides alike
            runs[base_label].append(run_one(base_label, dataclasses.replace(config, **base_over), examples, workdir))
            runs[var_label].append(run_one(var_label, dataclasses.replace(config, **var_over), examples, workdir))
        rows = [max(runs[label], key=lambda r: r["examples_per_s"]) for label in (base_label, var_label)]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"base model: {'tiny random Llama (hidden 64, 2 layers)' if args.tiny else args.base_model}")
    print(f"device: {device}; {args.examples} examples x {args.epochs} epoch(s), batch {args.batch_size}, "
          f"max length {args.max_length}, {args.contexts} contexts per prompt; best of {args.repeats} runs each")
    # RSS growth per run stays in --json only: the allocator reuses what the previous run freed.
    cols = ["examples_per_s", "train_s", "trainable_params", "peak_rss_mib"]
    if "cuda_peak_mib" in rows[0]:
        cols.append("cuda_peak_mib")
    print(f"{'config':<14}" + "".join(f"{c:>18}" for c in cols))
    for row in rows:
        print(f"{row['config']:<14}" + "".join(f"{row[c]:>18.2f}" if isinstance(row[c], float) else f"{row[c]:>18}"
                                              for c in cols))
    ratio = {c: rows[1][c] / rows[0][c] for c in cols if rows[0][c]}
    print(f"{'ratio':<14}" + "".join(f"{ratio[c]:>17.2f}x" if c in ratio else f"{'-':>18}" for c in cols)
          + f"   ({var_label} / {base_label})")
    if args.json:
        print(json.dumps({"rows": rows, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
