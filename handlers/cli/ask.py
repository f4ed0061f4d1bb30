"""`echorag ask`, `echorag chat` and `echorag eval`: the agent from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.settings import get_settings


def register(subparsers: Any) -> None:
    ask = subparsers.add_parser("ask", help="ask the knowledge base one question")
    ask.add_argument("question", help="the question, in Korean or English")
    ask.add_argument(
        "--space", action="append", dest="spaces", metavar="S", help="limit to a space (repeatable)"
    )
    ask.add_argument("--json", action="store_true", help="print the whole answer object as JSON")
    ask.set_defaults(func=run_ask)

    chat = subparsers.add_parser("chat", help="console chat: follow-ups, +1/-1 reactions, /retrain")
    chat.add_argument(
        "--space", action="append", dest="spaces", metavar="S", help="limit to a space (repeatable)"
    )
    chat.add_argument("--user", default="local", help="who is chatting (recorded as console:<user>)")
    chat.set_defaults(func=run_chat)

    ev = subparsers.add_parser("eval", help="retrieval + answer metrics on a QA set (private temp index)")
    ev.add_argument("--corpus", type=Path, required=True, help='corpus.jsonl: {"id","title","text"} per line')
    ev.add_argument("--questions", type=Path, required=True, help="questions.jsonl (korquad1 format)")
    ev.add_argument("--limit", type=int, default=None, help="only the first N questions")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--report", type=Path, default=None, metavar="FILE.html",
                    help="also write per-question results (misses first) as an HTML page")
    ev.set_defaults(func=run_eval)


def run_ask(args: argparse.Namespace) -> int:
    from bots.console import answer_json, render_answer
    from rag.agent import Agent

    if not args.question.strip():
        raise UserError('the question is empty: echorag ask "연차는 며칠인가요?"')
    with Agent.from_settings(get_settings()) as agent:
        answer = agent.ask(args.question, spaces=args.spaces, llm_fallback=True)
    if args.json:
        print(json.dumps(answer_json(answer), ensure_ascii=False, indent=2))
    else:
        print(render_answer(answer))
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from bots.console import ConsoleChat, prompt_lines
    from core.store import open_store
    from rag.agent import Agent

    settings = get_settings()
    store = open_store(settings)
    with Agent.from_settings(settings, store=store) as agent:
        chat = ConsoleChat(agent=agent, settings=settings, store=store, user=args.user, spaces=args.spaces)
        return chat.run(prompt_lines(sys.stdin), interactive=sys.stdin.isatty())


def run_eval(args: argparse.Namespace) -> int:
    from rag.evaluation import evaluate

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.report is not None:
        from core.report.fonts import require_packages

        require_packages()  # before minutes of evaluation, not after
    result = evaluate(args.corpus, args.questions, settings=get_settings(), limit=args.limit, progress=True)
    report = result.metrics
    if args.report is not None:
        from core.report.page import eval_html
        from handlers.cli.report import write_atomically

        write_atomically(args.report, eval_html(result, command=f"echorag eval --questions {args.questions}"))
        print(f"wrote {args.report}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0
