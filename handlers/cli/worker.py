"""`echorag worker`: run the training worker (the GPU host's long-running process, or with
`--drain` the scale-to-zero Batch job's: drain the queue, then exit)."""

from __future__ import annotations

import argparse
import logging

from core.settings import get_settings


def _worker(args: argparse.Namespace) -> int:
    from training.train import TrainConfig
    from training.worker import Worker

    settings = get_settings()
    TrainConfig.from_settings(settings)  # a misconfigured worker must not take jobs (and burn their retries)
    logging.getLogger("training").setLevel(logging.INFO)
    worker = Worker(settings, show_progress=not args.no_progress)
    worker.install_signal_handlers()
    if not args.no_sync:
        worker.sync_serving()
    outcomes = worker.run(once=args.once, wait_s=args.wait_s, drain_idle_s=args.idle_exit_s if args.drain else None)
    for outcome in outcomes:
        print(f"job {outcome.job_id or '-'}: {outcome.outcome}" + (f" — {outcome.detail}" if outcome.detail else ""))
    if args.drain:  # a failed job is the queue's to retry (then its DLQ), not Batch's: the container succeeded
        return 0
    return 1 if any(o.outcome in ("failed", "retrying") for o in outcomes) else 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("worker", help="train LoRA adapters from feedback: long-poll the training queue")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="handle at most one message, then exit")
    mode.add_argument("--drain", action="store_true",
                      help="handle messages until the queue has been empty for --idle-exit-s, then exit 0 "
                           "(the scale-to-zero Batch job's command)")
    parser.add_argument("--idle-exit-s", type=float, default=60.0,
                        help="with --drain: exit after this long without a message (seconds; default 60)")
    parser.add_argument("--wait-s", type=int, default=20, help="long-poll wait per receive (seconds, max 20 on SQS)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("--no-sync", action="store_true", help="do not hot-load CURRENT into vLLM at start-up")
    parser.set_defaults(func=_worker)
