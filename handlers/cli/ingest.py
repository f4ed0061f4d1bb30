"""`echorag ingest PATH... [--space NAME] [--prune]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.settings import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="add files (.md .txt .html .pdf, corpus.jsonl) to the knowledge base",
        description="Add or update documents; unchanged files are skipped, changed ones replaced.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders (recursive)")
    parser.add_argument("--space", default=None, help="knowledge space (default: DEFAULT_SPACE)")
    parser.add_argument(
        "--prune", action="store_true", help="delete documents of this space whose files disappeared"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rag.ingest import ingest_paths

    settings = get_settings()
    space = args.space or settings.default_space
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # a broken PDF is reported once, by us, below
    summary = ingest_paths(list(args.paths), space=space, settings=settings, prune=args.prune,
                           progress=not args.quiet)
    for path, reason in summary.failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"{space}: {summary.line()}")
    return 1 if summary.failed and not (summary.added or summary.updated or summary.unchanged) else 0
