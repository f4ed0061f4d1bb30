"""Data contracts shared by the bots, the Lambda handlers and the training host.

Every record carries a `schema` version so readers can skip (and count) what they do not understand.
Ids are deterministic (uuid5 of the platform identity) so retries and replays overwrite, never add.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
_NAMESPACE = uuid.UUID("5b0c5f3e-6f2a-4c1e-9d43-0e8f2f9b7a11")

Platform = Literal["slack", "discord", "console"]
Language = Literal["ko", "en"]
JobState = Literal["queued", "running", "published", "rejected", "failed"]
TERMINAL_STATES: frozenset[JobState] = frozenset({"published", "rejected", "failed"})
ReactionAction = Literal["added", "removed"]
# What a 👎 says was wrong (asked after the vote, optional): the report's gaps and training read it.
FeedbackReason = Literal["wrong", "outdated", "not_in_docs", "incomplete", "other"]
FEEDBACK_REASONS: tuple[FeedbackReason, ...] = ("wrong", "outdated", "not_in_docs", "incomplete", "other")


def utcnow() -> datetime:
    return datetime.now(UTC)


def stable_id(*parts: str) -> str:
    """A deterministic 32-hex id from identity parts (uuid5 over a unit-separator join)."""
    return uuid.uuid5(_NAMESPACE, "\x1f".join(parts)).hex


def make_answer_id(platform: str, channel: str, message_id: str) -> str:
    """The answer's id from the bot message that carries it: a reaction joins without a lookup."""
    return stable_id("answer", platform, channel, message_id)


def make_feedback_id(
    platform: str, user_id: str, channel: str, message_id: str, reaction: str, action: str, event_ts: str = ""
) -> str:
    """Who, which message, which emoji, added/removed (+ the platform's event time when it has one,
    so a re-add after a removal is a new event while a retried delivery is not)."""
    return stable_id("feedback", platform, user_id, channel, message_id, reaction, action, event_ts)


class Contract(BaseModel):
    """Base: `schema` on the wire, `schema_version` in Python (BaseModel owns `.schema`)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class ContextRef(BaseModel):
    """A passage the answer was built from."""

    doc_id: str
    chunk_id: str
    title: str = ""
    source: str = ""
    location: str = ""  # the section or page ("§ 휴가 규정", "p. 3")
    url: str = ""  # the document's http(s) URL; "" when it has none (and in records written before)
    score: float = 0.0
    text: str = ""  # kept so the training set can rebuild the prompt exactly
    space: str = ""  # the passage's knowledge space (retrieval feedback applies only there)
    cited: bool = False  # the answer cites it: a vote on the answer is a vote on these passages
    feedback_lift: int = 0  # places retrieval feedback moved it up (negative: down)


class TurnRef(BaseModel):
    """An earlier turn of the thread, as the answer's prompt showed it to the model."""

    role: Literal["user", "assistant"]
    text: str


class AnswerRecord(Contract):
    """`answers/dt=YYYY-MM-DD/<answer_id>.json`: one answer the bot posted."""

    answer_id: str
    platform: Platform
    channel: str
    message_id: str
    thread_id: str = ""
    user_hash: str = ""
    question: str
    condensed_question: str = ""
    prompt_history: list[TurnRef] = Field(default_factory=list)  # turns the model saw (a follow-up left as asked)
    contexts: list[ContextRef] = Field(default_factory=list)
    answer: str
    language: Language = "ko"
    abstained: bool = False
    model: str = ""
    adapter_version: str | None = None
    spaces: list[str] | None = None
    latencies_ms: dict[str, float] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)


class FeedbackEvent(Contract):
    """`feedback/dt=YYYY-MM-DD/<feedback_id>.json`: one reaction added to or removed from an answer."""

    feedback_id: str
    answer_id: str
    platform: Platform
    channel: str
    message_id: str
    user_hash: str
    reaction: str  # normalised name, e.g. "+1"
    label: int  # +1, -1 (0 for a removal's retraction is expressed by action="removed")
    action: ReactionAction
    event_ts: str = ""
    reason: FeedbackReason | None = None  # a 👎 re-cast with what was wrong (the latest event wins)
    reason_text: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class NotifyTarget(BaseModel):
    """Where a job's result is announced: a Slack channel (+thread) or a Discord channel."""

    platform: Platform
    channel: str
    thread_ts: str | None = None


class TrainingJob(Contract):
    """The SQS message body of a retrain request (FIFO: dedup by job_id)."""

    job_id: str
    requested_by: str  # "slack:U123", "discord:456", "console:local", "threshold"
    reason: str = ""
    notify_targets: list[NotifyTarget] = Field(default_factory=list)
    parent_version: int | None = None  # the CURRENT adapter when the job was queued
    created_at: datetime = Field(default_factory=utcnow)


class JobStatus(Contract):
    """`jobs/<job_id>.json`: state and progress of one training job."""

    job_id: str
    state: JobState = "queued"
    progress: float = 0.0  # 0..1
    message: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    adapter_version: int | None = None
    examples: int = 0
    error: str | None = None
    requested_by: str = ""
    loss_curve: list[float] = Field(default_factory=list)  # training loss per step (at most LOSS_CURVE_POINTS)
    updated_at: datetime = Field(default_factory=utcnow)


LOSS_CURVE_POINTS = 200


def downsample(values: list[float], points: int = LOSS_CURVE_POINTS) -> list[float]:
    """At most `points` values, each the mean of an equal run of steps (the curve's shape kept)."""
    if len(values) <= points:
        return [round(v, 5) for v in values]
    size = len(values) / points
    runs = [values[int(i * size) : int((i + 1) * size)] for i in range(points)]
    return [round(sum(run) / len(run), 5) for run in runs if run]


class AdapterManifest(Contract):
    """`adapters/<name>/v<N>/manifest.json`: what a published adapter is and how it scored."""

    name: str
    version: int
    parent_version: int | None = None
    base_model: str = ""
    job_id: str = ""
    dataset: dict[str, int | str] = Field(default_factory=dict)  # snapshot keys and counts
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)  # {"candidate": …, "current": …}
    gate: dict[str, Any] = Field(default_factory=dict)  # the gate's verdict: item counts, gain and its interval, regressions
    loss_curve: list[float] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)


class AskJob(BaseModel):
    """The Discord ask queue's message: what the worker needs to answer and edit the deferred reply."""

    interaction_id: str
    application_id: str
    token: str  # the interaction token: valid 15 minutes for editing the original response
    channel_id: str
    space_channel_id: str = ""  # whose knowledge spaces apply: a thread's (or forum post's) parent channel
    guild_id: str = ""
    user_id: str
    question: str
    locale: str = ""
    follow_up_of: str = ""  # the answer id a follow-up continues ("": a new conversation)
