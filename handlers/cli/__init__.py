"""`echorag` command line: a thin dispatcher; each command group lives in its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from core.errors import EchoRagError

# Each module exposes `register(subparsers)`, adding parsers whose `func(args) -> int` runs them.
COMMAND_MODULES = (
    "handlers.cli.ingest",  # ingest
    "handlers.cli.ask",  # ask, chat, eval
    "handlers.cli.ops",  # status, retrain, feedback export, adapters
    "handlers.cli.report",  # report
    "handlers.cli.serve",  # serve slack|discord
    "handlers.cli.discord",  # discord register-commands
    "handlers.cli.worker",  # worker
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echorag", description="Knowledge-base Q&A bot that learns from reactions")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EchoRagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line, never a traceback (unless asked for)
        if os.environ.get("ECHORAG_DEBUG"):
            raise
        print(f"error: {type(exc).__name__}: {exc} (set ECHORAG_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1

