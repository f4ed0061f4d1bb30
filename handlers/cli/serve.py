"""`echorag serve slack|discord`: long-running chat processes on the embedded defaults."""

from __future__ import annotations

import argparse

from core.settings import get_settings


def _serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.platform == "slack":
        from bots.slack.socket import run
    else:
        from bots.discord.gateway import run_gateway as run  # discord.py: loaded only here
    run(settings)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run the Slack (Socket Mode) or Discord (gateway) bot process")
    parser.add_argument("platform", choices=["slack", "discord"])
    parser.set_defaults(func=_serve)
