"""`echorag discord register-commands [--guild ID]` and `echorag discord invite-url`.

register-commands bulk-overwrites (PUT) the application's commands: globally, or in one guild,
where changes show at once (handy while testing). Needs DISCORD_APPLICATION_ID and DISCORD_BOT_TOKEN.
invite-url prints the link that adds the bot to a server with the permissions it needs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from core.errors import ConfigError
from core.settings import get_settings

if TYPE_CHECKING:
    from core.settings import Settings

# The Discord modules (httpx, ~60 ms) load inside the commands: every other `echorag` command, `ask`
# first, builds this parser and should not pay for them.


def _register_commands(args: argparse.Namespace) -> int:
    from bots.discord.commands import COMMANDS
    from bots.discord.rest import DiscordRest

    settings = _settings()
    rest = DiscordRest.from_settings(settings)
    try:
        application_id = str(settings.discord_application_id)  # _settings() checked it is set
        registered = rest.put_commands(application_id, COMMANDS, guild_id=args.guild) or []
    finally:
        rest.close()
    where = f"guild {args.guild}" if args.guild else "globally"
    names = ", ".join(f"/{c.get('name')} ({c.get('id', '?')})" for c in registered)
    print(f"registered {len(registered)} commands {where}: {names}")
    return 0


def _settings() -> Settings:
    """The settings (with the Discord secret applied), which must name the application."""
    from bots.discord.runtime import resolve_settings

    settings = resolve_settings(get_settings())
    if not settings.discord_application_id:
        raise ConfigError(
            "DISCORD_APPLICATION_ID is not set (Developer Portal → your app → General Information)"
        )
    return settings


def _invite_url(args: argparse.Namespace) -> int:
    from bots.discord.commands import BOT_PERMISSIONS

    query = urlencode(
        {
            "client_id": _settings().discord_application_id,
            "scope": "bot applications.commands",
            "permissions": BOT_PERMISSIONS,
        }
    )
    print(f"https://discord.com/oauth2/authorize?{query}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("discord", help="Discord application setup")
    discord_sub = parser.add_subparsers(dest="discord_command", required=True, metavar="ACTION")
    reg = discord_sub.add_parser("register-commands", help="register the /ask and /retrain slash commands")
    reg.add_argument(
        "--guild", metavar="ID", help="register in this guild only (instant) instead of globally"
    )
    reg.set_defaults(func=_register_commands)
    invite = discord_sub.add_parser("invite-url", help="print the link that adds the bot to a server")
    invite.set_defaults(func=_invite_url)
