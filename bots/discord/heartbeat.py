"""The gateway process's liveness file, for a container health check (ECS, Docker, systemd).

A websocket process can look alive while it is not: a stalled event loop, or a connection that
discord.py keeps failing to resume. The gateway touches this file every BEAT_EVERY_S while it is
connected and ready; `python -m bots.discord.heartbeat --check` exits 1 once the file is older than
MAX_AGE_S, so the orchestrator replaces the task. It reads only DATA_DIR: no secrets, no network.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BEAT_EVERY_S = 30.0
MAX_AGE_S = 120.0
FILE_NAME = "gateway.alive"


def heartbeat_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def beat(path: Path) -> None:
    """Mark the process alive now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{time.time():.0f}\n")


def is_fresh(path: Path, *, max_age_s: float = MAX_AGE_S) -> bool:
    """Whether the process beat within `max_age_s` (a missing file is not fresh)."""
    try:
        return time.time() - path.stat().st_mtime <= max_age_s
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bots.discord.heartbeat", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 unless the gateway beat recently")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", "./data")))
    parser.add_argument("--max-age-s", type=float, default=MAX_AGE_S)
    args = parser.parse_args(argv)
    path = heartbeat_path(args.data_dir)
    if is_fresh(path, max_age_s=args.max_age_s):
        return 0
    print(f"unhealthy: {path} is missing or older than {args.max_age_s:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
