"""Announce a training job's result on Slack and Discord.

The worker calls `notify_job` once a job ends (published, rejected, failed). Every target the job
names is told, plus the announcement channels from settings; a target is told once even when it is
listed twice. A failed post is logged and returned, never raised: an unreachable chat platform must
not fail (or retry) a training job whose adapter is already published.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.contracts import JobStatus, NotifyTarget, TrainingJob
from core.retrain import announce_targets
from core.secrets import read_json_secret
from core.settings import Settings

if TYPE_CHECKING:
    from slack_sdk import WebClient

log = logging.getLogger(__name__)

_METRIC_LABELS = {
    "eval_nll": "held-out answer NLL",
    "gold_nll": "gold answer NLL",
    "gold_contains": "gold answers found",
}


@dataclass(frozen=True)
class NotifyResult:
    """What happened to one post: `ok` False carries the reason in `error`."""

    target: NotifyTarget
    ok: bool
    error: str = ""


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def format_metrics(before: dict[str, float], after: dict[str, float]) -> list[str]:
    """`held-out answer NLL: 2.310 → 1.204` lines for the metrics both sides have (or either side)."""
    lines = []
    for key in sorted(set(before) | set(after)):
        label = _METRIC_LABELS.get(key, key)
        if key in before and key in after:
            lines.append(f"{label}: {_fmt(before[key])} → {_fmt(after[key])}")
        elif key in after:
            lines.append(f"{label}: {_fmt(after[key])}")
    return lines


def format_job_message(
    job: TrainingJob,
    status: JobStatus,
    *,
    before: dict[str, float] | None = None,
    after: dict[str, float] | None = None,
    next_step: str = "",
) -> str:
    """Plain-words summary: outcome, version, examples used, before/after metrics, what happens next."""
    head = {
        "published": f"✅ Retraining done: adapter v{status.adapter_version} is now live.",
        "rejected": "⛔ Retraining finished, but the new adapter was not published.",
        "failed": "❌ Retraining failed.",
        "running": "⏳ Retraining is running.",
        "queued": "⏳ Retraining is queued.",
    }[status.state]
    lines = [head]
    if status.message:
        lines.append(status.message)
    if status.examples:
        lines.append(f"Examples used: {status.examples}")
    metric_lines = format_metrics(before or {}, after or {})
    if metric_lines:
        lines.append("Before → after: " + "; ".join(metric_lines))
    if status.error:
        lines.append(f"Error: {status.error}")
    if next_step:
        lines.append(next_step)
    lines.append(f"(job {job.job_id}, requested by {job.requested_by})")
    return "\n".join(lines)


def job_targets(job: TrainingJob, settings: Settings) -> list[NotifyTarget]:
    """The job's targets, then the announcement channels; duplicates (same place) dropped."""
    targets = [*job.notify_targets, *announce_targets(settings)]
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for target in targets:
        key = (target.platform, target.channel, target.thread_ts or "")
        if key not in seen:
            seen.add(key)
            unique.append(target)
    return unique


def bot_token(settings: Settings, platform: str) -> str:
    """SLACK_BOT_TOKEN / DISCORD_BOT_TOKEN, else `bot_token` from the JSON secret SLACK_SECRET_ARN /
    DISCORD_SECRET_ARN names (the GPU host reads the stack's secrets; cached 5 min, so rotation applies)."""
    token = settings.slack_bot_token if platform == "slack" else settings.discord_bot_token
    if token:
        return token
    arn = settings.slack_secret_arn if platform == "slack" else settings.discord_secret_arn
    if not arn:
        raise RuntimeError(f"{platform.upper()}_BOT_TOKEN (or {platform.upper()}_SECRET_ARN) is not set")
    token = read_json_secret(arn, expect="bot_token").get("bot_token")
    if not token:
        raise RuntimeError(f"secret {arn} has no bot_token")
    return token


ANNOUNCEMENT_EVENT = "echorag_job_result"
_LOOKBACK = 100  # recent messages searched for an earlier attempt's post


def _already_posted_slack(client: WebClient, target: NotifyTarget, announcement: str) -> bool:
    """Whether the channel (or thread) holds this announcement already, by its message metadata."""
    if target.thread_ts:
        response = client.conversations_replies(
            channel=target.channel, ts=target.thread_ts, limit=_LOOKBACK, include_all_metadata=True
        )
    else:
        response = client.conversations_history(channel=target.channel, limit=_LOOKBACK, include_all_metadata=True)
    return any(
        (m.get("metadata") or {}).get("event_type") == ANNOUNCEMENT_EVENT
        and ((m.get("metadata") or {}).get("event_payload") or {}).get("announcement") == announcement
        for m in response.get("messages") or []
    )


def _post_slack(target: NotifyTarget, text: str, settings: Settings, *, announcement: str, repeat: bool) -> None:
    from slack_sdk import WebClient

    client = WebClient(token=bot_token(settings, "slack"), base_url=settings.slack_api_base_url, timeout=15)
    if repeat and _already_posted_slack(client, target, announcement):
        log.info("announcement %s is in %s already; not posted again", announcement, target.channel)
        return
    metadata = {"event_type": ANNOUNCEMENT_EVENT, "event_payload": {"announcement": announcement}}
    client.chat_postMessage(channel=target.channel, text=text, thread_ts=target.thread_ts, metadata=metadata)


def _post_discord(target: NotifyTarget, text: str, settings: Settings, *, announcement: str) -> None:
    from bots.discord.rest import DiscordRest

    # Discord drops a second message with the same enforced nonce (25 characters at most) for a few minutes.
    nonce = hashlib.sha256(announcement.encode()).hexdigest()[:25]
    rest = DiscordRest(settings.discord_api_base_url, bot_token=bot_token(settings, "discord"), timeout_s=15)
    try:
        rest.create_message(
            target.channel,
            {"content": text[:2000], "allowed_mentions": {"parse": []}, "nonce": nonce, "enforce_nonce": True},
        )
    finally:
        rest.close()


def notify_job(
    job: TrainingJob,
    status: JobStatus,
    settings: Settings,
    *,
    before: dict[str, float] | None = None,
    after: dict[str, float] | None = None,
    next_step: str = "",
    repeat: bool = False,
) -> list[NotifyResult]:
    """Post the job's result to every target; returns one result per target, failures included.

    `repeat`: an earlier attempt may have posted before it died. Each post carries the
    announcement's identity (job and outcome): Slack's is looked up in the channel's recent
    messages first, Discord's is an enforced nonce, so a repeat is not posted twice."""
    text = format_job_message(job, status, before=before, after=after, next_step=next_step)
    announcement = f"{job.job_id}/{status.state}"
    results = []
    for target in job_targets(job, settings):
        try:
            if target.platform == "slack":
                _post_slack(target, text, settings, announcement=announcement, repeat=repeat)
            elif target.platform == "discord":
                _post_discord(target, text, settings, announcement=announcement)
            else:  # console: the person is at the terminal, where the worker logs
                log.info("job %s result for %s:%s\n%s", job.job_id, target.platform, target.channel, text)
            results.append(NotifyResult(target=target, ok=True))
        except Exception as exc:  # a chat outage must never fail the job
            log.warning(
                "could not notify %s channel %s about job %s: %s", target.platform, target.channel, job.job_id, exc
            )
            results.append(NotifyResult(target=target, ok=False, error=str(exc)))
    return results
