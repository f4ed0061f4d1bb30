"""`echorag worker`: the GPU host's training loop, one job at a time from the training queue.

For each message: parse the job (a malformed body is logged and left to the dead-letter queue), skip
it when it already ended (idempotent by job id: a redelivered job that was published or rejected is
acknowledged, not retrained), then snapshot → train → gate → publish → hot-load → announce. A
heartbeat thread keeps the message invisible while the job runs; the message is deleted only after
the job has ended, so a crash means redelivery, never a lost job. SIGTERM stops at the next
training step and releases the message (visibility 0) for the next worker (on its last allowed
receive the job ends as failed and is announced, since the queue then dead-letters it). A failed attempt is
retried after TRAIN_RETRY_DELAY_S and goes to the DLQ after QUEUE_MAX_RECEIVES. The single
active-job slot (`jobs/ACTIVE`) is freed when a job ends for good (published, rejected, failed on its
last attempt, interrupted on its last receive); an interrupted or retrying job otherwise keeps it.
`echorag worker --drain` (the scale-to-zero Batch job, `core/training_trigger.py`) also exits once
no message has come for `--idle-exit-s`.

One module for the message's whole life (~330 lines): its outcomes (duplicate, poison, interrupted,
retrying, failed, published) each touch the queue, the job status and the slot together, and
reading them side by side is how one checks that none loses a job.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from core import jobs, records
from core.contracts import (
    SCHEMA_VERSION,
    TERMINAL_STATES,
    AdapterManifest,
    JobStatus,
    TrainingJob,
    downsample,
    utcnow,
)
from core.errors import QueueError
from core.idempotency import once
from core.queue import JobQueue, QueueMessage, open_queue
from core.registry import FEEDBACK_CUTOFF_KEY, AdapterRegistry
from core.settings import Settings
from core.store import BlobStore, open_store
from rag.llm_transformers import local_adapter, prune_local_adapters
from training.dataset import NotEnoughFeedback, build_snapshot, report_line, write_snapshot
from training.heartbeat import Heartbeat

log = logging.getLogger(__name__)

ProgressHook = Callable[[float, float], None]
ERROR_BACKOFF_S = 10.0


class JobInterrupted(Exception):
    """The worker was asked to stop while a job ran: release the message, keep the job queued."""


@dataclass
class JobOutcome:
    """What one message turned into (for logs, tests and the CLI's exit summary)."""

    job_id: str
    outcome: Literal[
        "published", "rejected", "not_enough_feedback", "failed", "retrying", "interrupted", "duplicate", "malformed"
    ]
    detail: str = ""
    version: int | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    hot_load: str = ""
    notified: int = 0


class Worker:
    """Polls the queue and runs jobs; `run()` until stopped, `run(once=True)` for one message,
    `run(drain_idle_s=…)` until the queue has been empty that long."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: BlobStore | None = None,
        queue: JobQueue | None = None,
        progress_hook: ProgressHook | None = None,
        show_progress: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.queue = queue or open_queue(settings)
        self.progress_hook = progress_hook
        self.show_progress = show_progress
        if not show_progress:  # no "Loading weights" bars in the journal either
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        self.registry = AdapterRegistry(self.store, settings.adapter_name)
        self.stop_event = threading.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        if not self.stop_event.is_set():
            log.warning("stop requested: finishing at the next safe point and releasing the current job")
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM (systemd, docker stop) and SIGINT stop the loop and release the running job."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def sync_serving(self) -> str:
        """At start-up: make vLLM serve CURRENT (it may have missed a hot-load, or restarted)."""
        current = self.registry.current()
        if current is None or not self.settings.vllm_url:
            return ""
        detail = self._hot_load(current)
        log.info("start-up sync: %s", detail)
        return detail

    def run(self, *, once: bool = False, wait_s: int = 20, drain_idle_s: float | None = None) -> list[JobOutcome]:
        """Handle messages until stopped (or one receive when `once`); returns what each became.

        `drain_idle_s`: also stop once no message has come for that long (a failed receive counts
        as none): a scale-to-zero GPU job's container starts, drains the queue and exits."""
        outcomes: list[JobOutcome] = []
        wait_s = wait_s if once else max(1, wait_s)  # a loop of 0 s polls would spin on an empty queue
        drain = _Drain(drain_idle_s) if drain_idle_s is not None else None
        while not self.stop_event.is_set():
            try:
                message = self.queue.receive(wait_s=drain.wait(wait_s) if drain else wait_s,
                                             visibility_s=self.settings.queue_visibility_s)
            except QueueError as exc:  # SQS unreachable: say so, back off, keep polling
                log.error("cannot receive from the training queue: %s; retrying in %s s", exc, ERROR_BACKOFF_S)
                if once:
                    raise
                self.stop_event.wait(ERROR_BACKOFF_S)
                if drain and drain.drained(len(outcomes), failing=exc):
                    break
                continue
            if message is not None and self.stop_event.is_set():
                self.queue.release(message.receipt_handle)  # arrived as we were stopping: give it back
                break
            if message is None:
                outcomes.extend(self.settle_dead_letters())
                if drain and drain.drained(len(outcomes)):
                    break
            else:
                try:
                    outcomes.append(self.handle(message))
                except Exception:  # the store failed outside a job: the message comes back after its timeout
                    log.exception("could not handle message %s; it will be redelivered", message.message_id)
                    if once:
                        raise
                if drain:
                    drain.busy()  # idle time counts from the end of the job
            if once:
                break
        if drain and self.stop_event.is_set():
            log.warning("stopped before the training queue was drained (%d message(s) handled)", len(outcomes))
        return outcomes

    def settle_dead_letters(self) -> list[JobOutcome]:
        """End the jobs the queue dead-lettered while their status still said queued or running:
        their worker died on every attempt (a crash loop), so no attempt could record how it ended.
        One that had published already goes live; any other is marked failed. Either way the slot
        is freed and the channels are told. Also deletes abandoned half-uploaded versions."""
        try:
            letters = self.queue.dead_letters()
        except QueueError as exc:
            log.warning("cannot read the dead-letter queue: %s", exc)
            return []
        outcomes = []
        for letter in letters:
            try:
                job = TrainingJob.model_validate_json(letter.body)
            except ValidationError:
                continue  # a malformed body: logged when it was received, nothing to settle
            status = jobs.load_job_status(self.store, job.job_id)
            if status is None or status.state in TERMINAL_STATES:
                continue
            manifest = next((m for m in self.registry.manifests() if m.job_id == job.job_id), None)
            if manifest is not None:
                outcome = self._go_live(job, manifest, summary=f"adapter v{manifest.version} published "
                                                               "(finished after its worker stopped)")
            else:
                note = (f"its worker stopped on each of its {letter.receive_count} attempts without recording why "
                        "(a crash, or a kill); the job is in the dead-letter queue and the live adapter is "
                        "unchanged. Ask for /retrain again.")
                status = self._set_status(job, state="failed", error="the worker died on every attempt", message=note)
                outcome = JobOutcome(job.job_id, "failed", note, notified=self._announce(job, status))
            jobs.release_active_job(self.store, job.job_id)
            self.registry.collect_orphans(job_id=job.job_id)
            log.error("dead-lettered job %s settled: %s", job.job_id, outcome.outcome)
            outcomes.append(outcome)
        self.registry.collect_orphans()
        return outcomes

    # --- one message ------------------------------------------------------------------------

    def handle(self, message: QueueMessage) -> JobOutcome:
        try:
            job = TrainingJob.model_validate_json(message.body)
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:3])
            return self._poison(message, reason)
        if job.schema_version != SCHEMA_VERSION:
            return self._poison(message, f"unknown job schema {job.schema_version} (this worker reads {SCHEMA_VERSION})")
        status = jobs.load_job_status(self.store, job.job_id)
        if status is not None and status.state in ("published", "rejected"):
            log.info("job %s already %s; acknowledging the redelivered message", job.job_id, status.state)
            self._announce(job, status)  # the worker may have died before telling anyone
            self._finish(message, job.job_id)
            return JobOutcome(job.job_id, "duplicate", f"already {status.state}", version=status.adapter_version)
        manifest = next((m for m in self.registry.manifests() if m.job_id == job.job_id), None)
        if manifest is not None:  # published, but the worker died before it went live or was recorded
            log.warning("job %s published v%s before its worker stopped; finishing it", job.job_id, manifest.version)
            outcome = self._go_live(job, manifest, summary=f"adapter v{manifest.version} published "
                                                           "(finished after a worker restart)")
            self._finish(message, job.job_id)
            return outcome
        self.registry.collect_orphans(job_id=job.job_id)  # an earlier attempt of this job died mid-upload

        workdir = self.settings.data_dir / "work" / job.job_id
        try:
            with Heartbeat(self.queue, message.receipt_handle, self.settings.queue_visibility_s):
                outcome = self._run_job(job, message, workdir)
        except JobInterrupted:
            return self._interrupted(job, message)
        except Exception as exc:
            log.exception("job %s failed (attempt %s)", job.job_id, message.receive_count)
            return self._failed(job, message, exc)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self._finish(message, job.job_id)
        return outcome

    def _finish(self, message: QueueMessage, job_id: str) -> None:
        """The job ended: acknowledge the message and free the single job slot."""
        try:
            self.queue.delete(message.receipt_handle)
        except QueueError as exc:  # e.g. the receipt went stale; a redelivery is acknowledged as a duplicate
            log.warning("could not delete the message of finished job %s: %s", job_id, exc)
        jobs.release_active_job(self.store, job_id)

    def _interrupted(self, job: TrainingJob, message: QueueMessage) -> JobOutcome:
        """Give the message back for the next worker. A release counts as a receive, so on the last
        allowed one the queue moves it to the DLQ instead: then the job ends here, and says so."""
        if message.receive_count < self.settings.queue_max_receives:  # status first: the next worker may start at once
            self._set_status(job, state="queued", message="interrupted by a worker shutdown; it will run again")
            self.queue.release(message.receipt_handle)
            log.warning("job %s interrupted; message released for redelivery", job.job_id)
            return JobOutcome(job.job_id, "interrupted", "released for redelivery")
        note = (f"interrupted by a worker shutdown on attempt {message.receive_count} of "
                f"{self.settings.queue_max_receives}: the job goes to the dead-letter queue; ask for /retrain again")
        status = self._set_status(job, state="failed", error="interrupted by a worker shutdown", message=note)
        self.queue.release(message.receipt_handle)
        jobs.release_active_job(self.store, job.job_id)
        log.error("job %s %s", job.job_id, note)
        self._announce(job, status)
        return JobOutcome(job.job_id, "interrupted", note)

    def _poison(self, message: QueueMessage, reason: str) -> JobOutcome:
        """A body that is not a TrainingJob can never succeed: release it so the queue's redrive
        moves it to the DLQ after QUEUE_MAX_RECEIVES receives (no retry delay, no training)."""
        log.error(
            "malformed training job message %s (receive %s of %s): %s; it goes to the dead-letter queue",
            message.message_id, message.receive_count, self.settings.queue_max_receives, reason,
        )
        self.queue.release(message.receipt_handle)
        return JobOutcome("", "malformed", reason)

    def _failed(self, job: TrainingJob, message: QueueMessage, exc: Exception) -> JobOutcome:
        final = message.receive_count >= self.settings.queue_max_receives
        error = f"{type(exc).__name__}: {exc}"
        if final:
            next_step = (f"This was attempt {message.receive_count} of {self.settings.queue_max_receives}: the job "
                         "goes to the dead-letter queue. The live adapter is unchanged.")
            jobs.release_active_job(self.store, job.job_id)
        else:
            next_step = (f"Attempt {message.receive_count} of {self.settings.queue_max_receives}: it will be retried "
                         f"in {self.settings.train_retry_delay_s} s. The live adapter is unchanged.")
        status = self._set_status(job, state="failed" if final else "queued", error=error, message=next_step)
        try:  # the message comes back after the retry delay (or moves to the DLQ on its next receive)
            self.queue.extend(message.receipt_handle, self.settings.train_retry_delay_s)
        except Exception as queue_exc:
            log.warning("could not set the retry delay for job %s: %s", job.job_id, queue_exc)
        if final:
            notified = self._announce(job, status)
        else:  # each retry is news of its own
            notified = self._notify(job, status.model_copy(update={"state": "failed"}))
        return JobOutcome(job.job_id, "failed" if final else "retrying", error, notified=notified)

    # --- the job ----------------------------------------------------------------------------

    def _set_status(self, job: TrainingJob, **changes: Any) -> JobStatus:
        changes.setdefault("requested_by", job.requested_by)
        return jobs.update_job_status(self.store, job.job_id, **changes)

    def _progress(self, job: TrainingJob, start: float, end: float) -> Callable[[float, float], None]:
        """Training progress → job status (at most every 2 s), test hook, and the stop check."""
        last = [0.0]

        def report(fraction: float, loss: float) -> None:
            if self.progress_hook is not None:
                self.progress_hook(fraction, loss)
            if self.stop_event.is_set():
                raise JobInterrupted
            now = time.monotonic()
            if now - last[0] >= 2.0 or fraction >= 1.0:
                last[0] = now
                self._set_status(job, progress=round(start + (end - start) * fraction, 3),
                                 message=f"training: loss {loss:.4f}")

        return report

    def _run_job(self, job: TrainingJob, message: QueueMessage, workdir: Path) -> JobOutcome:
        from training.evaluate import GOLD_NEW_TOKENS, evaluate, load_gold, notes
        from training.train import TrainConfig, load_tokenizer, train_lora

        settings, name, registry = self.settings, self.settings.adapter_name, self.registry
        config = TrainConfig.from_settings(settings)
        self._set_status(job, state="running", progress=0.0, error=None,
                         message=f"building the dataset (attempt {message.receive_count})")
        taken_at = utcnow()  # feedback up to here is in this snapshot (the retrain counter restarts here)
        try:
            snapshot = build_snapshot(job.job_id, records.labelled_answers(self.store),
                                      min_examples=settings.train_min_examples)
        except NotEnoughFeedback as exc:
            status = self._set_status(job, state="rejected", progress=1.0, message=str(exc))
            notified = self._announce(job, status, next_step="Collect more 👍/👎 on answers, then /retrain again.")
            return JobOutcome(job.job_id, "not_enough_feedback", str(exc), notified=notified)
        write_snapshot(self.store, snapshot, tokenizer=load_tokenizer(config.base_model))
        self._set_status(job, progress=0.05, examples=len(snapshot.train),
                         message=f"training on {len(snapshot.train)} examples")
        if self.stop_event.is_set():
            raise JobInterrupted

        current = registry.current()
        current_dir = local_adapter(registry, current, settings.resolved_adapter_cache_dir) if current else None
        candidate_dir = workdir / "candidate"
        result = train_lora(config, snapshot.train, candidate_dir, init_adapter=current_dir,
                            progress=self._progress(job, 0.05, 0.85), show_progress=self.show_progress)
        self._set_status(job, progress=0.85, message="evaluating against the live adapter",
                         loss_curve=downsample(result.losses))
        if self.stop_event.is_set():
            raise JobInterrupted
        gold = load_gold(settings.gold_questions, settings) if settings.gold_questions else []
        label = f"v{current}" if current else "base"
        report = evaluate(config, candidate_dir, current_dir, snapshot.eval, gold=gold, current_label=label,
                          gold_new_tokens=min(GOLD_NEW_TOKENS, settings.llm_max_tokens))
        metrics = {"candidate": report.candidate, "current": report.current}
        train_metrics = {"train_loss": result.final_loss, "train_steps": float(result.steps)}
        data = report_line(snapshot.report)
        if not report.passed:
            status = self._set_status(job, state="rejected", progress=1.0, message=f"rejected by the gate: {report.reason}",
                                      metrics={**_flat(metrics), **train_metrics})
            next_step = "\n".join(filter(None, [notes(report.details), data]))
            notified = self._announce(job, status, before=report.current, after=report.candidate, next_step=next_step)
            return JobOutcome(job.job_id, "rejected", report.reason, metrics=metrics, notified=notified)
        if self.stop_event.is_set():  # last safe point: after this the adapter is published
            raise JobInterrupted

        manifest = AdapterManifest(
            name=name, version=0, parent_version=current, base_model=config.base_model, job_id=job.job_id,
            dataset={"snapshot": f"datasets/{job.job_id}/", **{k: int(v) for k, v in snapshot.stats.items()},
                     FEEDBACK_CUTOFF_KEY: taken_at.isoformat()},
            metrics={**metrics, "training": train_metrics}, gate=report.details, loss_curve=downsample(result.losses),
        )
        version = registry.publish(candidate_dir, manifest)  # complete and visible, not yet live
        published = registry.manifest(version)
        assert published is not None  # publish wrote it last
        summary = (f"adapter v{version} published: trained on {len(snapshot.train)} examples, scored on "
                   f"{len(snapshot.eval)} held out ({report.reason}). {data}")
        return self._go_live(job, published, summary=summary)

    def _go_live(self, job: TrainingJob, manifest: AdapterManifest, *, summary: str) -> JobOutcome:
        """Promote a version the gate passed, hot-load it, record and announce it. Each step may
        be repeated: a worker that died anywhere in here is finished by the next one (`handle`)."""
        version, registry = manifest.version, self.registry
        metrics = {side: manifest.metrics[side] for side in ("candidate", "current") if side in manifest.metrics}
        flat = {**_flat(metrics), **manifest.metrics.get("training", {})}
        current = registry.current()
        if current not in (version, manifest.parent_version):  # the gate compared against another version
            error = (f"v{version} was published but not made live: CURRENT moved to v{current} while it trained "
                     f"(`echorag adapters promote {version}` makes it live)")
            status = self._set_status(job, state="failed", progress=1.0, adapter_version=version, error=error,
                                      message=summary, metrics=flat)
            self._announce(job, status)
            return JobOutcome(job.job_id, "failed", error, version=version, metrics=metrics)
        if current != version:
            registry.promote(version)  # CURRENT moves atomically
        hot = self._hot_load(version)
        # Keep the new and the previous copy (vLLM serves the previous one until the hot-load lands).
        keep = {version, *([manifest.parent_version] if manifest.parent_version else [])}
        prune_local_adapters(self.settings.resolved_adapter_cache_dir, registry.name, keep)
        status = self._set_status(job, state="published", progress=1.0, adapter_version=version,
                                  message=f"{summary}; {hot}" if hot else summary, metrics=flat)
        notified = self._announce(job, status, before=metrics.get("current"), after=metrics.get("candidate"))
        return JobOutcome(job.job_id, "published", summary, version=version, metrics=metrics, hot_load=hot,
                          notified=notified)

    def _hot_load(self, version: int) -> str:
        """Load `version` into vLLM; '' when no vLLM is configured, else what happened."""
        from training.serving import serve_version

        result = serve_version(self.settings, self.registry, version)
        return result.detail if result else ""

    def _announce(self, job: TrainingJob, status: JobStatus, **details: Any) -> int:
        """Tell the channels how the job ended, once: a worker that finishes a dead one's job, or
        acknowledges a redelivery, repeats nothing already said (a claim on `announce/<job>/<state>`)."""
        # A dead announcer's claim has lapsed by the time its message is redelivered.
        lease_s = self.settings.queue_visibility_s
        with once(self.store, f"announce/{job.job_id}/{status.state}", lease_s=lease_s) as claim:
            if claim.state != "run":
                log.info("job %s was announced already", job.job_id)
                return 0
            return self._notify(job, status, repeat=claim.attempt > 0, **details)

    def _notify(self, job: TrainingJob, status: JobStatus, *, before: dict[str, float] | None = None,
                after: dict[str, float] | None = None, next_step: str = "", repeat: bool = False) -> int:
        from bots.notify import notify_job

        try:
            results = notify_job(job, status, self.settings, before=before, after=after, next_step=next_step,
                                 repeat=repeat)
        except Exception as exc:  # announcing is best effort
            log.warning("could not announce job %s: %s", job.job_id, exc)
            return 0
        return sum(1 for r in results if r.ok)


class _Drain:
    """`run(drain_idle_s=…)`'s clock: how long no message has come (receive waits and backoffs
    count; handling a message restarts it), and when that is long enough to exit."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = max(0.0, idle_s)
        self.since = time.monotonic()
        log.info("draining the training queue: exiting once no message has come for %g s", self.idle_s)

    def busy(self) -> None:
        self.since = time.monotonic()

    def wait(self, wait_s: int) -> int:
        """The next long-poll: at most what is left of the idle period (at least 1 s, so an SQS
        receive still asks every server rather than sampling a few)."""
        left = self.idle_s - (time.monotonic() - self.since)
        return max(1, min(wait_s, math.ceil(left)))

    def drained(self, handled: int, *, failing: Exception | None = None) -> bool:
        idle = time.monotonic() - self.since
        if idle < self.idle_s:
            return False
        why = "the training queue is drained" if failing is None else f"the training queue is unreachable ({failing})"
        log.info("no message for %.0f s: %s; exiting (%d message(s) handled)", idle, why, handled)
        return True


def _flat(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{side}_{key}": value for side, values in metrics.items() for key, value in values.items()}

