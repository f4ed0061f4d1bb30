"""One self-contained HTML page (Jinja2 templates, autoescaped): charts inlined as PNG data URLs,
the font inlined as a subset `@font-face`, no script and nothing fetched from the network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.report.charts import Charts
from core.report.collect import Counts, ReportData
from core.report.fonts import font_face_css

if TYPE_CHECKING:
    from rag.evaluation import EvalResult

TEMPLATES = Path(__file__).parent / "templates"
REASON_NAMES = {"wrong": "wrong", "outdated": "outdated", "not_in_docs": "not in the documents",
                "incomplete": "incomplete", "other": "other"}
GAP_CHART_ROWS = 12
GATE_METRIC = "eval_nll"  # the gate's main number: mean NLL of held-out approved answers


def approval(counts: Counts) -> str:
    votes = counts.up + counts.down
    return f"{counts.up / votes:.0%}" if votes else "–"


def render(template: str, *, title: str, command: str, lang: str = "en", **context: Any) -> str:
    """Render a template, then embed the font subset to exactly the characters on the page."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    html = env.get_template(template).render(
        title=title, command=command, lang=lang, generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        approval=approval, **context,
    )
    return html.replace("/*FONT*/", font_face_css(html), 1)


def report_html(data: ReportData, *, command: str, live: str | None, catalogue_error: str = "") -> str:
    """The operator report (see `core.report`)."""
    charts = Charts()
    days = list(data.by_day)
    drawn: dict[str, str] = {
        "questions": charts.questions_per_day(days, [c.answered for c in data.by_day.values()],
                                              [c.abstained for c in data.by_day.values()]),
        "votes": charts.votes_per_day(days, [c.up for c in data.by_day.values()],
                                      [c.down for c in data.by_day.values()]),
    }
    top = data.gaps[:GAP_CHART_ROWS]
    if top:
        drawn["gaps"] = charts.gaps([g.topic for g in top], [g.abstained for g in top],
                                    [g.count - g.abstained for g in top])
    gated = [a for a in data.adapters if GATE_METRIC in a.after]
    if gated:
        drawn["gate"] = charts.gate_timeline(
            [a.label for a in gated], [a.before.get(GATE_METRIC) for a in gated],
            [a.after.get(GATE_METRIC) for a in gated], [a.published for a in gated], [a.live for a in gated],
            GATE_METRIC,
        )
    curves = {a.label: a.loss_curve for a in data.adapters if a.loss_curve}
    if curves:
        drawn["loss"] = charts.loss_curves(curves)
    effect = data.feedback_effect
    notes = list(data.notes)
    if charts.missing_glyphs:
        notes.append(f"{len(charts.missing_glyphs)} character(s) could not be drawn in the charts.")
    return render(
        "report.html.j2", title="EchoRAG report", command=command, d=data, charts=drawn, live=live,
        notes=notes, reason_names=REASON_NAMES, catalogue_error=catalogue_error,
        lifted=Counts(up=effect.lifted_up, down=effect.lifted_down),
        others=Counts(up=effect.other_up, down=effect.other_down),
    )


def eval_html(result: EvalResult, *, command: str, title: str = "EchoRAG evaluation") -> str:
    """Per-question evaluation results, misses first, under the metric table and a rank histogram."""
    from rag.evaluation import RANK_DEPTH

    misses = [i for i in result.items if i.missed]
    ordered = misses + [i for i in result.items if not i.missed]
    chart = Charts().rank_histogram([i.gold_rank for i in result.items if i.ranking], RANK_DEPTH)
    return render("eval.html.j2", title=title, command=command, r=result, misses=misses, ordered=ordered,
                  chart=chart, depth=RANK_DEPTH)
