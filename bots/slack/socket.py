"""`echorag serve slack`: the same Slack app over Socket Mode, for local use and small teams.

No public URL and no signing secret: Slack delivers events over a websocket opened with the
app-level token (`xapp-…`, scope `connections:write`). Lazy listeners run in Bolt's thread pool in
this process, and the embedded defaults (local store, SQLite queue, Qdrant on disk) apply.
"""

from __future__ import annotations

import logging
import threading

from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bots.slack.app import create_app, services_of
from core.errors import ConfigError, EchoRagError
from core.settings import Settings

log = logging.getLogger(__name__)


def build_handler(settings: Settings) -> SocketModeHandler:
    """The Socket Mode handler around our app; connects nothing until `.start()`/`.connect()`."""
    if not settings.slack_app_token or not settings.slack_app_token.startswith("xapp-"):
        raise ConfigError(
            "SLACK_APP_TOKEN (xapp-…) is not set: create an app-level token with connections:write "
            "under Basic Information → App-Level Tokens (see docs/slack.md)"
        )
    if not settings.slack_bot_token:
        raise ConfigError("SLACK_BOT_TOKEN (xoxb-…) is not set: install the app to the workspace (docs/slack.md)")
    app = create_app(settings, socket_mode=True)
    return SocketModeHandler(
        app,
        settings.slack_app_token,
        web_client=WebClient(token=settings.slack_app_token, base_url=settings.slack_api_base_url),
    )


def run(settings: Settings) -> None:
    """Connect and serve until interrupted (Ctrl-C)."""
    handler = build_handler(settings)
    try:
        try:
            handler.connect()
        except SlackApiError as exc:  # apps.connections.open refused the app-level token
            raise ConfigError(
                f"Slack refused SLACK_APP_TOKEN ({exc.response.get('error')}): check the xapp- token and that "
                "Socket Mode is enabled for the app"
            ) from exc
        except OSError as exc:
            raise EchoRagError(f"cannot reach Slack at {settings.slack_api_base_url}: {exc}") from exc
        print("EchoRAG is connected to Slack over Socket Mode; press Ctrl-C to stop.", flush=True)
        threading.Event().wait()
    finally:
        handler.close()
        services_of(handler.app).close()
