"""The Discord gateway's liveness file and the container health check that reads it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bots.discord.heartbeat import MAX_AGE_S, beat, heartbeat_path, is_fresh
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _check(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """The health check exactly as the ECS task definition runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bots.discord.heartbeat", "--check"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "DATA_DIR": str(data_dir)},
    )


def test_health_check_follows_the_heartbeat(tmp_path: Path) -> None:
    missing = _check(tmp_path)
    assert missing.returncode == 1 and "unhealthy" in missing.stderr and "Traceback" not in missing.stderr
    path = heartbeat_path(tmp_path)
    beat(path)
    assert is_fresh(path) and _check(tmp_path).returncode == 0
    stale = time.time() - MAX_AGE_S - 60
    os.utime(path, (stale, stale))  # the process stopped beating two minutes ago
    assert not is_fresh(path) and _check(tmp_path).returncode == 1


def test_gateway_beats_only_while_connected(tmp_path: Path) -> None:
    from bots.discord.gateway import GatewayBot

    bot = GatewayBot(Settings(_env_file=None, data_dir=tmp_path))
    try:
        assert bot.beat_once() is False  # never connected: no websocket, no heartbeat
        assert not heartbeat_path(tmp_path).exists()
    finally:
        bot.runtime.close()
