"""`echorag status | retrain | feedback export | adapters list|promote|rollback`: operating the loop."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.settings import get_settings

CONSOLE_ADMIN = "console:local"  # whoever runs the CLI on the machine that holds the data
# `status --json` prints exactly these (the documented, scriptable shape); the text view shows more.
STATUS_JSON_KEYS = ("answers", "feedback", "new_since_adapter", "queue_depth", "job", "current_adapter")


def _fmt_job(job: dict[str, Any] | None) -> str:
    if not job:
        return "none"
    state = job.get("state", "queued")
    progress = job.get("progress")
    pct = f" {progress:.0%}" if isinstance(progress, float) and state == "running" else ""
    message = f" - {job['message']}" if job.get("message") else ""
    return f"{str(job['job_id'])[:8]} {state}{pct}{message}"


SPARK = "▁▂▃▄▅▆▇█"


def _fmt_loss(job: dict[str, Any] | None) -> str | None:
    """A job's per-step training loss as a sparkline with its first and last values, or None."""
    if not job or not job.get("loss_curve"):
        return None
    curve = [float(v) for v in job["loss_curve"]]
    low, span = min(curve), (max(curve) - min(curve)) or 1.0
    spark = "".join(SPARK[round((v - low) / span * (len(SPARK) - 1))] for v in curve)
    return f"{spark}  {curve[0]:.3f} → {curve[-1]:.3f} ({str(job['job_id'])[:8]}, {len(curve)} points)"


def _status(args: argparse.Namespace) -> int:
    from core.status import system_status

    status = system_status(get_settings())
    if args.json:
        print(json.dumps({key: status[key] for key in STATUS_JSON_KEYS}, ensure_ascii=False))
        return 0
    fb = status["feedback"]
    adapter = status["adapter"]
    lines = [
        ("answers", str(status["answers"])),
        ("feedback", f"👍 {fb.get('+1', 0)}  👎 {fb.get('-1', 0)}  ({status['feedback_events']} reaction events)"),
        ("new since adapter", f"{status['new_since_adapter']} (auto-retrain at {status['threshold']})"),
        ("queue", f"{status['queue_depth']} job(s) waiting or running, {status['dead_letters']} dead letter(s)"),
        ("job", _fmt_job(status["job"])),
        ("last job", _fmt_job(status["last_job"])),
        ("training loss", _fmt_loss(status["job"]) or _fmt_loss(status["last_job"]) or "no curve yet"),
        (
            "current adapter",
            f"{adapter['name']} v{adapter['version']} ({adapter['created_at'][:16]} UTC)" if adapter else "none (base model)",
        ),
    ]
    lines.append(("retrieval feedback", _feedback_line()))
    lines.append(("report", "echorag report --since 30d --out report.html (charts, knowledge gaps, adapters)"))
    if status["skipped_records"]:
        lines.append(("unreadable records", f"{status['skipped_records']} skipped (see the log for keys)"))
    for label, value in lines:
        print(f"{label:<18} {value}")
    return 0


def _feedback_index() -> Any:
    from rag.feedback_index import FeedbackIndex

    return FeedbackIndex.open(get_settings(), None, None)


def _feedback_line() -> str:
    from core.errors import EchoRagError

    if not get_settings().retrieval_feedback:
        return "off (RETRIEVAL_FEEDBACK=false)"
    try:
        index = _feedback_index()
    except EchoRagError as exc:
        return f"not readable now ({exc})"
    try:
        n = index.summary()
    finally:
        index.close()
    return (f"{n['questions']} answer(s) re-rank {n['passages']} passage(s) (👍 {n['positive']} 👎 {n['negative']}); "
            "echorag feedback index list")


def _index_list(args: argparse.Namespace) -> int:
    index = _feedback_index()
    try:
        entries = [e for e in index.entries() if args.space is None or args.space in e.spaces]
    finally:
        index.close()
    for e in entries:
        if args.json:
            print(json.dumps(e.__dict__, ensure_ascii=False))
        else:
            print(f"👍 {e.positive} 👎 {e.negative}  [{', '.join(e.spaces)}] {e.question[:70]}  → "
                  + ", ".join(c.rsplit("/", 1)[-1] for c in e.chunks))
    if not args.json:
        print(f"{len(entries)} answer(s) with retrieval feedback", file=sys.stderr)
    return 0


def _index_clear(args: argparse.Namespace) -> int:
    if not args.yes:
        raise UserError("clearing retrieval feedback cannot be undone from the index: add --yes "
                        "(the vote log is kept; training still uses it)")
    index = _feedback_index()
    try:
        cleared = index.clear(args.space)
    finally:
        index.close()
    where = f" in space {args.space!r}" if args.space else ""
    print(f"cleared retrieval feedback of {cleared} answer(s){where}; new votes count again from now")
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from core.queue import open_queue
    from core.retrain import announce_targets, request_retrain
    from core.store import open_store

    settings = get_settings()
    outcome = request_retrain(
        requested_by=CONSOLE_ADMIN,
        is_admin=True,
        notify_targets=announce_targets(settings),
        reason=args.reason,
        settings=settings,
        store=open_store(settings),
        queue=open_queue(settings),
        force=args.force,
        force_hint="echorag retrain --force",
    )
    print(outcome.message)
    return 0 if outcome.status == "queued" else 1


def _export(args: argparse.Namespace) -> int:
    from core.records import SkipCounter, labelled_answers
    from core.store import open_store

    settings = get_settings()
    skipped = SkipCounter()
    rows = labelled_answers(open_store(settings), skipped=skipped)
    out = Path(args.out)
    if str(out) == "-":
        for row in rows:
            sys.stdout.write(row.to_json() + "\n")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(row.to_json() + "\n")
        os.replace(tmp, out)
    note = f"; skipped {skipped.count} unreadable record(s)" if skipped.count else ""
    print(f"exported {len(rows)} rated answer(s) to {out}{note}", file=sys.stderr)
    return 0


def _registry() -> Any:
    from core.registry import AdapterRegistry

    return AdapterRegistry.from_settings(get_settings())


def _parse_version(text: str) -> int:
    value = text.lower().removeprefix("v")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"adapter version must look like 3 or v3, not {text!r}")
    return int(value)


def _adapters_list(args: argparse.Namespace) -> int:
    registry = _registry()
    current = registry.current()
    manifests = registry.manifests()
    if args.json:
        rows = [{**m.model_dump(mode="json", by_alias=True), "current": m.version == current} for m in manifests]
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not manifests:
        print(f"no adapters published for {registry.name} yet")
        return 0
    for m in manifests:
        mark = "*" if m.version == current else " "
        parent = f"v{m.parent_version}" if m.parent_version else "base"
        scores = ", ".join(
            f"{k}={v:.3f}" for k, v in (m.metrics.get("candidate") or {}).items() if isinstance(v, int | float)
        )
        print(f"{mark} v{m.version:<4} {m.created_at:%Y-%m-%d %H:%M}  from {parent:<5} job {m.job_id[:8] or '-':<8} {scores}")
    return 0


def _adapters_promote(args: argparse.Namespace) -> int:
    registry = _registry()
    version = _parse_version(args.version)
    before = registry.current()
    registry.promote(version)
    print(f"{registry.name}: CURRENT is now v{version}" + (f" (was v{before})" if before else ""))
    return _serve(registry, version)


def _adapters_rollback(args: argparse.Namespace) -> int:
    registry = _registry()
    before = registry.current()
    version = registry.rollback()
    print(f"{registry.name}: rolled back from v{before} to v{version}")
    return _serve(registry, version)


def _serve(registry: Any, version: int) -> int:
    """With VLLM_URL set (run on the GPU host), make vLLM serve the new CURRENT at once."""
    from training.serving import serve_version

    result = serve_version(get_settings(), registry, version)
    if result is None:
        return 0
    print(result.detail, file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def _adapters_follow(args: argparse.Namespace) -> int:
    """Serve CURRENT on this host's vLLM, and every version promoted later, until stopped."""
    import signal
    import threading

    from training.serving import follow_current

    settings = get_settings()
    if not settings.vllm_url:
        raise UserError("VLLM_URL is not set: `adapters follow` hot-loads CURRENT into the vLLM on this host")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"following CURRENT of {settings.adapter_name!r} every {args.interval_s:.0f} s into {settings.vllm_url}",
          file=sys.stderr)
    follow_current(settings, _registry(), interval_s=args.interval_s, stop=stop, once=args.once)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="answers, feedback, queue, training job and current adapter")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_status)

    retrain = sub.add_parser("retrain", help="queue a training job now (as the local admin)")
    retrain.add_argument("--reason", default="requested from the command line")
    retrain.add_argument(
        "--force", action="store_true", help="queue even when there are no new ratings since the last job"
    )
    retrain.set_defaults(func=_retrain)

    feedback = sub.add_parser("feedback", help="feedback data")
    fsub = feedback.add_subparsers(dest="feedback_command", required=True, metavar="COMMAND")
    export = fsub.add_parser("export", help="answers joined with their latest reactions, as JSON lines")
    export.add_argument("--out", required=True, help="output .jsonl file ('-' for stdout)")
    export.set_defaults(func=_export)
    index = fsub.add_parser("index", help="retrieval feedback: the votes that re-rank passages now")
    isub = index.add_subparsers(dest="index_command", required=True, metavar="COMMAND")
    ilist = isub.add_parser("list", help="answers whose votes re-rank passages, with their passages")
    ilist.add_argument("--space", default=None, help="only answers citing this knowledge space")
    ilist.add_argument("--json", action="store_true", help="one JSON object per answer")
    ilist.set_defaults(func=_index_list)
    iclear = isub.add_parser("clear", help="forget retrieval feedback (all, or one space's)")
    iclear.add_argument("--space", default=None, help="only answers citing this knowledge space")
    iclear.add_argument("--yes", action="store_true", help="really clear")
    iclear.set_defaults(func=_index_clear)

    adapters = sub.add_parser("adapters", help="list, promote or roll back LoRA adapter versions")
    asub = adapters.add_subparsers(dest="adapters_command", required=True, metavar="COMMAND")
    listing = asub.add_parser("list", help="published versions (* = current)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_adapters_list)
    promote = asub.add_parser("promote", help="make a published version current")
    promote.add_argument("version", help="e.g. 3 or v3")
    promote.set_defaults(func=_adapters_promote)
    rollback = asub.add_parser("rollback", help="make the previously current version current again")
    rollback.set_defaults(func=_adapters_rollback)
    follow = asub.add_parser("follow", help="keep this host's vLLM serving CURRENT (training runs elsewhere)")
    follow.add_argument("--interval-s", type=float, default=30.0, help="how often CURRENT is checked")
    follow.add_argument("--once", action="store_true", help="check and serve once, then exit")
    follow.set_defaults(func=_adapters_follow)
