"""The feedback loop at a glance: one dict for `echorag status --json` and any status endpoint."""

from __future__ import annotations

from typing import Any

from core import jobs, records
from core.queue import JobQueue, open_queue
from core.registry import AdapterRegistry
from core.retrain import new_feedback_since_adapter
from core.settings import Settings
from core.store import BlobStore, open_store


def system_status(settings: Settings, store: BlobStore | None = None, queue: JobQueue | None = None) -> dict[str, Any]:
    """Keys: answers, feedback (label → effective votes), feedback_events, skipped_records,
    new_since_adapter, threshold, queue_depth, dead_letters, job (the queued/running job's status
    or None), last_job, current_adapter (version or None), adapter (its manifest summary or None)."""
    store = store or open_store(settings)
    queue = queue or open_queue(settings)
    summary = records.feedback_summary(store)
    active = jobs.active_job_id(store)
    job = jobs.load_job_status(store, active) if active else None
    last = jobs.last_job(store)
    last_status = jobs.load_job_status(store, last[0]) if last else None
    manifest = AdapterRegistry(store, settings.adapter_name).current_manifest()
    return {
        "answers": summary.answers,
        "feedback": summary.feedback,
        "feedback_events": summary.events,
        "skipped_records": summary.skipped,
        "new_since_adapter": new_feedback_since_adapter(settings, store),
        "threshold": settings.retrain_threshold,
        "queue_depth": queue.depth(),
        "dead_letters": len(queue.dead_letters()),
        "job": job.model_dump(mode="json", by_alias=True) if job else ({"job_id": active} if active else None),
        "last_job": last_status.model_dump(mode="json", by_alias=True) if last_status else None,
        "current_adapter": manifest.version if manifest else None,
        "adapter": (
            {
                "name": manifest.name,
                "version": manifest.version,
                "parent_version": manifest.parent_version,
                "created_at": manifest.created_at.isoformat(),
                "job_id": manifest.job_id,
                "metrics": manifest.metrics,
            }
            if manifest
            else None
        ),
    }
