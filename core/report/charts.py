"""The report's pictures (matplotlib, Agg backend), each a PNG for a data URL.

Every chart is drawn with the report's font (`fonts.font_path`), so Korean labels render; a glyph
the font still lacks is not an error but is counted in `Charts.missing_glyphs`, which the page
shows, so tofu never goes unnoticed.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from core.report.fonts import font_path

UP, DOWN, ABSTAIN, ANSWERED, NEUTRAL = "#2e7d32", "#c62828", "#f9a825", "#1565c0", "#607d8b"


@dataclass
class Charts:
    """Draws figures with one font; collects glyphs it could not draw."""

    missing_glyphs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import font_manager

        path = str(font_path())
        font_manager.fontManager.addfont(path)
        # process-wide: the report is its own process (the CLI); nothing else draws there
        matplotlib.rcParams.update({"font.family": font_manager.FontProperties(fname=path).get_name(),
                                    "axes.unicode_minus": False})

    def _figure(self, width: float = 8.0, height: float = 3.0) -> tuple[Any, Any]:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(width, height), dpi=110)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        return fig, ax

    def png(self, fig: Any) -> str:
        """The figure as a `data:image/png;base64,…` URL (the figure is closed)."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.tight_layout()
            fig.savefig(buffer, format="png")
        plt.close(fig)
        self.missing_glyphs += [str(w.message) for w in caught if "missing from" in str(w.message)]
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    # --- the charts ------------------------------------------------------------------------------

    def questions_per_day(self, days: Sequence[date], answered: Sequence[int], abstained: Sequence[int]) -> str:
        fig, ax = self._figure()
        ax.bar(days, answered, color=ANSWERED, label="answered")
        ax.bar(days, abstained, bottom=answered, color=ABSTAIN, label="abstained")
        self._dates(ax, days)
        ax.set_ylabel("questions")
        ax.legend(frameon=False)
        return self.png(fig)

    def votes_per_day(self, days: Sequence[date], up: Sequence[int], down: Sequence[int]) -> str:
        fig, ax = self._figure()
        ax.bar(days, up, color=UP, label="up votes")
        ax.bar(days, [-d for d in down], color=DOWN, label="down votes")
        ax.axhline(0, color="#999", linewidth=0.8)
        self._dates(ax, days)
        ax.set_ylabel("votes (down below 0)")
        ax.legend(frameon=False)
        return self.png(fig)

    def gaps(self, topics: Sequence[str], abstained: Sequence[int], downvoted: Sequence[int]) -> str:
        """Horizontal bars, the largest gap on top."""
        fig, ax = self._figure(height=0.45 * len(topics) + 1.0)
        rows = list(range(len(topics)))[::-1]
        ax.barh(rows, abstained, color=ABSTAIN, label="abstained")
        ax.barh(rows, downvoted, left=abstained, color=DOWN, label="voted down")
        ax.set_yticks(rows, labels=list(topics))
        ax.set_xlabel("questions")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False, loc="lower right")
        return self.png(fig)

    def gate_timeline(self, labels: Sequence[str], before: Sequence[float | None], after: Sequence[float | None],
                      published: Sequence[bool], live: Sequence[bool], metric: str) -> str:
        """Each candidate's gate metric before → after (an arrow), published ones filled, the live one starred."""
        fig, ax = self._figure()
        for x, (b, a, pub, on) in enumerate(zip(before, after, published, live, strict=True)):
            color = UP if pub else DOWN
            if b is not None and a is not None:
                ax.annotate("", xy=(x, a), xytext=(x, b), arrowprops={"arrowstyle": "->", "color": color, "lw": 1.6})
                ax.plot([x], [b], "o", color=NEUTRAL, markersize=5)
            if a is not None:
                ax.plot([x], [a], "*" if on else "o", color=color, markersize=14 if on else 7,
                        markerfacecolor=color if pub else "white")
        ax.set_xticks(range(len(labels)), labels=list(labels))
        ax.set_ylabel(f"{metric} (lower is better)")
        ax.margins(x=0.15, y=0.2)
        return self.png(fig)

    def loss_curves(self, curves: dict[str, list[float]]) -> str:
        fig, ax = self._figure()
        for label, curve in curves.items():
            ax.plot(range(1, len(curve) + 1), curve, label=label, linewidth=1.4)
        ax.set_xlabel("step (downsampled)")
        ax.set_ylabel("training loss")
        ax.legend(frameon=False)
        return self.png(fig)

    def rank_histogram(self, ranks: Sequence[int | None], k: int) -> str:
        """Where the gold passage ranked (1..k, or past k)."""
        counts = [sum(1 for r in ranks if r == i) for i in range(1, k + 1)]
        counts.append(sum(1 for r in ranks if r is None))
        fig, ax = self._figure(height=2.6)
        labels = [str(i) for i in range(1, k + 1)] + [f">{k}"]
        ax.bar(labels, counts, color=[ANSWERED] + [NEUTRAL] * (k - 1) + [DOWN])
        ax.set_xlabel("rank of the gold passage")
        ax.set_ylabel("questions")
        return self.png(fig)

    def _dates(self, ax: Any, days: Sequence[date]) -> None:
        from matplotlib import dates

        ax.xaxis.set_major_formatter(dates.DateFormatter("%m-%d"))
        ax.xaxis.set_major_locator(dates.DayLocator(interval=max(1, round(len(days) / 8))))  # whole days only
        ax.yaxis.get_major_locator().set_params(integer=True)
