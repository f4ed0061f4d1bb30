"""A small Discord REST client (httpx) for what the Lambda side and the CLI need.

Interaction webhooks (edit the deferred response) need no bot token; command registration uses
`Authorization: Bot …`. The base URL is a setting so tests point it at a local
fake. Rate limits (429) are waited out briefly; 5xx and network errors are marked retryable so the
SQS worker lets the message come back, while 4xx (an expired interaction token) is final.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from core.errors import ConfigError, EchoRagError, PermanentError, TransientError
from core.settings import Settings

log = logging.getLogger(__name__)

_MAX_RATE_LIMIT_WAIT_S = 5.0
_ATTEMPTS = 3


class DiscordApiError(EchoRagError):
    """A Discord REST call failed; the subclass says whether trying again later can help."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DiscordUnavailable(DiscordApiError, TransientError):
    """Network error, 5xx or a rate limit too long to wait out here: the queue redelivers."""


class DiscordRejected(DiscordApiError, PermanentError):
    """A 4xx (an expired interaction token, a deleted message, missing access): final."""


class DiscordRest:
    """Discord's REST API at `base_url` (https://discord.com/api/v10 in production)."""

    def __init__(self, base_url: str, *, bot_token: str | None = None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.bot_token = bot_token
        self._http = httpx.Client(timeout=timeout_s, headers={"User-Agent": "DiscordBot (echorag, 0.1)"})

    @classmethod
    def from_settings(cls, settings: Settings) -> DiscordRest:
        return cls(settings.discord_api_base_url, bot_token=settings.discord_bot_token)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, json: Any = None, bot: bool = False) -> Any:
        headers = {}
        if bot:
            if not self.bot_token:
                raise ConfigError(
                    "DISCORD_BOT_TOKEN is not set (Developer Portal → your app → Bot → Reset Token)"
                )
            headers["Authorization"] = f"Bot {self.bot_token}"
        url = f"{self.base_url}{path}"
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                response = self._http.request(method, url, json=json, headers=headers)
            except httpx.HTTPError as exc:
                if attempt == _ATTEMPTS:
                    raise DiscordUnavailable(f"Discord {method} {path}: {exc}") from exc
                continue
            if response.status_code == 429 and attempt < _ATTEMPTS:
                wait = _retry_after(response)
                if wait <= _MAX_RATE_LIMIT_WAIT_S:
                    log.warning("discord rate limited on %s %s; retrying in %.2fs", method, path, wait)
                    time.sleep(wait)
                    continue
            if response.status_code >= 400:
                retryable = response.status_code == 429 or response.status_code >= 500
                raise (DiscordUnavailable if retryable else DiscordRejected)(
                    f"Discord {method} {path} -> {response.status_code}: {response.text[:300]}",
                    status=response.status_code,
                )
            return response.json() if response.content else None
        raise DiscordUnavailable(f"Discord {method} {path}: gave up after {_ATTEMPTS} attempts")

    # --- interaction webhooks (no bot token) -------------------------------------------------
    def get_original(self, application_id: str, token: str) -> dict[str, Any]:
        """The interaction's original response (the deferred "thinking…" message): gives its id."""
        return self._request("GET", f"/webhooks/{application_id}/{token}/messages/@original")

    def edit_original(self, application_id: str, token: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", f"/webhooks/{application_id}/{token}/messages/@original", json=payload)

    # --- bot-token calls ---------------------------------------------------------------------
    def create_message(self, channel_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Post a message as the bot (training announcements, answers in threads)."""
        return self._request("POST", f"/channels/{channel_id}/messages", json=payload, bot=True)

    def edit_message(self, channel_id: str, message_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Edit one of the bot's messages (a thread reply's "💭 …" becomes its answer)."""
        return self._request("PATCH", f"/channels/{channel_id}/messages/{message_id}", json=payload, bot=True)

    def put_commands(
        self, application_id: str, commands: list[dict[str, Any]], *, guild_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Bulk-overwrite the application's commands, globally or in one guild (instant there)."""
        path = f"/applications/{application_id}/commands"
        if guild_id:
            path = f"/applications/{application_id}/guilds/{guild_id}/commands"
        return self._request("PUT", path, json=commands, bot=True)


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.json().get("retry_after", 1.0))
    except (ValueError, AttributeError):
        return float(response.headers.get("Retry-After", 1.0))
