"""What the Slack listeners work with: store, queue, agent and an observer, built on first use.

The ack path touches only the store, so a cold start that only acks never loads Kiwi, Qdrant or the
LLM client. One `SlackServices` is shared by every listener of an app (Bolt injects it as the
`services` argument, see `bots.slack.app`); it is thread-safe because in Socket Mode lazy listeners
run in a pool, and Qdrant's embedded engines allow a single opener per folder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from core.clients import ClientCache
from core.contracts import FeedbackEvent
from core.queue import JobQueue, open_queue
from core.settings import Settings
from core.store import BlobStore, open_store
from rag.types import AgentAnswer

AskFn = Callable[..., AgentAnswer]  # Agent.ask(question, *, history, spaces, ref)


class SlackObserver(Protocol):
    """Where the app reports what it did (the Lambda handler turns these into metrics)."""

    def answered(self, answer: AgentAnswer, seconds: float) -> None: ...

    def feedback(self, event: FeedbackEvent) -> None: ...


class NullObserver:
    def answered(self, answer: AgentAnswer, seconds: float) -> None:
        return None

    def feedback(self, event: FeedbackEvent) -> None:
        return None


class SlackServices:
    """The app's collaborators (see the module docstring); `ask` defaults to the real agent."""

    def __init__(
        self,
        settings: Settings,
        *,
        ask: AskFn | None = None,
        store: BlobStore | None = None,
        queue: JobQueue | None = None,
        observer: SlackObserver | None = None,
        retries: int = 0,
    ) -> None:
        self.settings = settings
        self.retries = retries  # how often a failed answer is tried again (Lambda's async retries)
        self._ask = ask
        self._store = store
        self._queue = queue
        self._clients = ClientCache()
        self.observer: SlackObserver = observer or NullObserver()

    def __deepcopy__(self, memo: dict[int, Any]) -> SlackServices:
        """Shared, never copied: Bolt deep-copies a request's context for each lazy listener."""
        return self

    @property
    def store(self) -> BlobStore:
        return self._store or self._clients.get("store", lambda: open_store(self.settings))

    @property
    def queue(self) -> JobQueue:
        return self._queue or self._clients.get("queue", lambda: open_queue(self.settings))

    @property
    def ask(self) -> AskFn:
        if self._ask is not None:
            return self._ask

        def build() -> Any:
            from rag.agent import Agent  # heavy (Kiwi, Qdrant, LangGraph): only answering pays

            return Agent.from_settings(self.settings, store=self.store)

        ask: AskFn = self._clients.get("agent", build).ask
        return ask

    def close(self) -> None:
        """Release what was built (the embedded Qdrant allows one opener per folder)."""
        self._clients.close()

    @property
    def lease_s(self) -> float:
        """How long a question's claim holds: at least the Lambda timeout (120 s), so a live attempt
        is never overtaken, and short enough that Lambda's async retry of an attempt that died (timed
        out, crashed) without releasing its claim retakes it. `SLACK_ANSWER_LEASE_S` overrides it."""
        if self.settings.slack_answer_lease_s is not None:
            return self.settings.slack_answer_lease_s
        return max(120.0, 2 * self.settings.llm_timeout_s + 30)
