"""The clients a Discord entry point needs, built lazily once per process and settings.

Lambda keeps a warm process between invocations, so the store, queues, REST client and (in the
worker only) the agent are built on first use and reused. The interactions function never touches
`agent`, so it never loads Kiwi or Qdrant and answers within Discord's 3-second deadline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bots.discord.rest import DiscordRest
from core.clients import ClientCache
from core.queue import JobQueue, SqliteQueue, SqsQueue, open_queue
from core.secrets import read_json_secret
from core.settings import Settings
from core.store import BlobStore, open_store

if TYPE_CHECKING:
    from rag.agent import Agent

log = logging.getLogger(__name__)

ASK_VISIBILITY_S = 300  # as the SQS ask queue (template.yaml): longer than one worker run
ASK_QUEUE_FILE = "ask-queue.sqlite"  # the embedded default's ask queue, beside the training queue


def open_ask_queue(settings: Settings) -> JobQueue:
    """ASK_QUEUE_URL (SQS; standard unless the name ends in .fifo) or, on the embedded default,
    DATA_DIR/ask-queue.sqlite — a file of its own so asks never wait behind a training job."""
    url = settings.ask_queue_url
    if url:
        return SqsQueue(url, max_attempts=settings.aws_max_attempts)
    return SqliteQueue(
        settings.data_dir / ASK_QUEUE_FILE,
        max_receives=settings.queue_max_receives,
        visibility_s=ASK_VISIBILITY_S,
    )


class DiscordRuntime:
    """Lazily built clients for one `Settings`, safe to share between threads (the gateway runs
    blocking work in a thread pool: two first `/ask`s must not open the Qdrant folder twice)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients = ClientCache()

    @property
    def store(self) -> BlobStore:
        return self._clients.get("store", lambda: open_store(self.settings))

    @property
    def training_queue(self) -> JobQueue:
        return self._clients.get("training_queue", lambda: open_queue(self.settings))

    @property
    def ask_queue(self) -> JobQueue:
        return self._clients.get("ask_queue", lambda: open_ask_queue(self.settings))

    @property
    def rest(self) -> DiscordRest:
        return self._clients.get("rest", lambda: DiscordRest.from_settings(self.settings))

    @property
    def agent(self) -> Agent:
        def build() -> Agent:
            from rag.agent import Agent  # heavy (Kiwi, Qdrant): only the worker and the gateway load it

            return Agent.from_settings(self.settings, store=self.store)

        return self._clients.get("agent", build)

    def close(self) -> None:
        """Release what was opened (the local Qdrant folder lock above all)."""
        self._clients.close()


def resolve_settings(settings: Settings) -> Settings:
    """The settings with the Discord credentials from Secrets Manager when DISCORD_SECRET_ARN names a
    JSON secret {"public_key", "bot_token", "application_id"} (cached 5 minutes: rotation applies)."""
    if not settings.discord_secret_arn:
        return settings
    # an empty public_key is the endpoint's to report (setup order)
    secret = read_json_secret(settings.discord_secret_arn, expect="at least public_key")
    update = {
        field: secret[name]
        for name, field in (
            ("public_key", "discord_public_key"),
            ("bot_token", "discord_bot_token"),
            ("application_id", "discord_application_id"),
        )
        if name in secret
    }
    return settings.model_copy(update=update)


_current: DiscordRuntime | None = None


def runtime_for(settings: Settings) -> DiscordRuntime:
    """The process's runtime for these settings (a new one, closing the old, when they change)."""
    global _current
    if _current is None or _current.settings != settings:
        if _current is not None:
            _current.close()
        _current = DiscordRuntime(settings)
        log.info(settings.space_mapping_summary())
    return _current


def close_runtime() -> None:
    """Close the process's runtime (process shutdown; tests between settings)."""
    global _current
    if _current is not None:
        _current.close()
        _current = None
