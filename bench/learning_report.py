"""Statistics, the results table and the plot for `bench/learning.py` (no model code here).

Per-question differences against the base model are summarised by their mean and a paired
bootstrap 95% interval (the same questions on both sides, resampled together).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = ("contains", "f1", "nll")  # per eval question: gold answer contained (0/1), char F1, answer NLL
LABELS = {"contains": "containment", "f1": "char F1", "nll": "answer NLL (nats/token)"}


@dataclass
class EvalResult:
    """One serving state scored on the eval questions (lists in eval-question order)."""

    label: str  # "base", "learn v2", …
    values: dict[str, list[float]]
    answers: list[str] = field(default_factory=list)

    def mean(self, metric: str) -> float:
        vals = self.values[metric]
        return sum(vals) / len(vals) if vals else float("nan")


def paired_ci(after: Sequence[float], before: Sequence[float], *, resamples: int, seed: int) -> tuple[float, float, float]:
    """(mean of after − before, 2.5th and 97.5th percentile of the bootstrap means of the differences)."""
    import numpy as np

    diffs = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    if diffs.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(resamples, diffs.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diffs.mean()), float(low), float(high)


@dataclass
class RoundRow:
    """One line of the table: a run's state after a round (round 0: the base model)."""

    run: str
    round: int
    serving: str  # "base" or "v3"
    up: int = 0
    down: int = 0
    hits: int = 0  # answers that contained a gold answer (what honest users would 👍)
    answered: int = 0
    job_state: str = "-"
    promoted: bool = False
    gate: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # mean per metric
    deltas: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # vs base: mean, lo, hi
    timings: dict[str, float] = field(default_factory=dict)
    gate_metrics: dict[str, float] = field(default_factory=dict)  # the job status's metrics (both sides)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run, "round": self.round, "serving": self.serving, "up": self.up, "down": self.down,
            "hits": self.hits, "answered": self.answered, "job_state": self.job_state, "promoted": self.promoted,
            "gate": self.gate, "metrics": self.metrics,
            "deltas": {k: {"mean": v[0], "ci_low": v[1], "ci_high": v[2]} for k, v in self.deltas.items()},
            "timings_s": self.timings, "gate_metrics": self.gate_metrics,
        }


def _delta(row: RoundRow, metric: str, digits: int) -> str:
    if metric not in row.deltas:
        return "-"
    mean, low, high = row.deltas[metric]
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def format_table(rows: Sequence[RoundRow]) -> str:
    """The results table: votes, job outcome, CURRENT, and the eval metrics with Δ vs base (95% CI)."""
    header = (f"{'run':<9}{'round':>5}  {'answers hit/n':>13}  {'👍/👎':>7}  {'job':<10}{'CURRENT':<8}"
              f"{'contain':>8}  {'Δ contain [95% CI]':<24}{'F1':>6}  {'Δ F1 [95% CI]':<24}"
              f"{'NLL':>6}  {'Δ NLL [95% CI]':<24}")
    lines = [header, "-" * len(header)]
    for row in rows:
        votes = f"{row.up}/{row.down}" if row.round else "-"
        hits = f"{row.hits}/{row.answered}" if row.answered else "-"
        current = row.serving + ("*" if row.promoted else "")
        m = row.metrics
        lines.append(
            f"{row.run:<9}{row.round:>5}  {hits:>13}  {votes:>7}  {row.job_state:<10}{current:<8}"
            f"{m.get('contains', float('nan')):>8.3f}  {_delta(row, 'contains', 3):<24}"
            f"{m.get('f1', float('nan')):>6.3f}  {_delta(row, 'f1', 3):<24}"
            f"{m.get('nll', float('nan')):>6.3f}  {_delta(row, 'nll', 3):<24}"
        )
    lines.append("CURRENT: the version serving after the round (* = this round's job promoted it); metrics are on the "
                 "eval questions (articles no round trained on), Δ = serving − base, paired bootstrap 95% CI.")
    return "\n".join(lines)


def format_gates(rows: Sequence[RoundRow]) -> str:
    """Each job's outcome in the gate's own words."""
    return "\n".join(f"{row.run} round {row.round}: {row.job_state}: {row.gate}" for row in rows if row.round)


def plot(rows: Sequence[RoundRow], path: Path, title: str) -> Path:
    """Δ containment and Δ answer NLL vs base per round, one line per run, 95% CIs as error bars;
    filled markers where the round's job was promoted."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    runs = list(dict.fromkeys(row.run for row in rows))
    for ax, metric in zip(axes, ("contains", "nll"), strict=True):
        ax.axhline(0.0, color="grey", linewidth=0.8)
        for k, run in enumerate(runs):
            mine = [r for r in rows if r.run == run and metric in r.deltas]
            if not mine:
                continue
            xs = [r.round + (k - (len(runs) - 1) / 2) * 0.06 for r in mine]
            means = [r.deltas[metric][0] for r in mine]
            err = [[m - r.deltas[metric][1] for m, r in zip(means, mine, strict=True)],
                   [r.deltas[metric][2] - m for m, r in zip(means, mine, strict=True)]]
            line = ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=run, markerfacecolor="white")
            color = line[0].get_color()
            promoted = [(x, m) for x, m, r in zip(xs, means, mine, strict=True) if r.promoted]
            if promoted:
                ax.plot(*zip(*promoted, strict=True), "o", color=color, zorder=5)
        ax.set_xlabel("round (0 = base model)")
        ax.set_ylabel(f"Δ {LABELS[metric]} vs base")
        ax.set_xticks(sorted({r.round for r in rows}))
        better = "higher" if metric == "contains" else "lower"
        ax.set_title(f"{better} is better; filled: that round's job was promoted; bars: 95% CI", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_timings(phases: dict[str, dict[str, float]]) -> str:
    """Per phase: wall and CPU seconds, items done, items per wall second and per CPU second."""
    header = f"{'phase':<22}{'wall_s':>9}{'cpu_s':>9}{'items':>7}{'per_s':>9}{'per_cpu_s':>10}  load_1m"
    lines = [header]
    for name, p in phases.items():
        items = p.get("items", 0.0)
        per_s = f"{items / p['wall_s']:.3f}" if items and p["wall_s"] else "-"
        per_cpu = f"{items / p['cpu_s']:.3f}" if items and p["cpu_s"] else "-"
        lines.append(f"{name:<22}{p['wall_s']:>9.1f}{p['cpu_s']:>9.1f}{int(items):>7}{per_s:>9}{per_cpu:>10}  "
                     f"{p.get('load_1m', float('nan')):.2f}")
    return "\n".join(lines)
