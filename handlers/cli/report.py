"""`echorag report [--since 30d] [--out report.html]`: the operator report as one HTML file."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import EchoRagError, UserError
from core.settings import Settings, get_settings

if TYPE_CHECKING:
    from core.report.collect import Cited

_SPAN = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime) -> datetime:
    """`30d`, `12h`, `2w` before `now`, or a date `2026-11-01` (midnight UTC)."""
    if match := _SPAN.match(text.strip().lower()):
        return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        day = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"--since must look like 30d, 12h, 2w or 2026-11-01, not {text!r}") from None
    return day if day.tzinfo else day.replace(tzinfo=UTC)


def knowledge_catalogue(settings: Settings) -> list[Cited]:
    """One row per document section in the knowledge base (what "never cited" is measured against)."""
    from core.report.collect import Cited
    from rag.vectorstore import open_vector_store

    store = open_vector_store(settings)
    try:
        rows = {
            Cited(str(p.get("space", "")), str(p.get("title", "")), str(p.get("source") or p.get("doc_id", "")),
                  str(p.get("location", "")), 0)
            for hit in store.scroll_points() if (p := hit.payload)
        }
    finally:
        store.close()
    return sorted(rows, key=lambda c: (c.space, c.source, c.section))


def write_atomically(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, out)


def _report(args: argparse.Namespace) -> int:
    from core.registry import AdapterRegistry
    from core.report.collect import collect
    from core.report.fonts import require_packages
    from core.report.page import report_html
    from core.store import open_store

    require_packages()
    settings = get_settings()
    now = datetime.now(UTC)
    since = parse_since(args.since, now)

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    progress("listing the knowledge base…")
    catalogue, catalogue_error = None, ""
    try:
        catalogue = knowledge_catalogue(settings)
    except EchoRagError as exc:  # e.g. a running bot holds the embedded store's lock
        catalogue_error = str(exc)
        progress(f"knowledge base not listed ({exc}); the report shows cited documents only")
    progress(f"reading answers and reactions since {since:%Y-%m-%d %H:%M} UTC…")
    store = open_store(settings)
    data = collect(store, since=since, until=now, adapter_name=settings.adapter_name, catalogue=catalogue,
                   progress=progress)
    current = AdapterRegistry(store, settings.adapter_name).current()
    progress(f"{data.totals.questions} question(s), {len(data.gaps)} gap topic(s), "
             f"{len(data.adapters)} adapter candidate(s); drawing…")
    html = report_html(data, command=f"echorag report --since {args.since}", live=f"v{current}" if current else None,
                       catalogue_error=catalogue_error)
    out = Path(args.out)
    write_atomically(out, html)
    print(f"wrote {out} ({len(html.encode()) / 1024:.0f} KiB)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="an HTML report: questions, votes, knowledge gaps, documents, adapters")
    report.add_argument("--since", default="30d", help="window start: 30d, 12h, 2w or a date (default 30d)")
    report.add_argument("--out", default="report.html", help="output HTML file (default report.html)")
    report.set_defaults(func=_report)
