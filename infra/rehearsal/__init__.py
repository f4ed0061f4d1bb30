"""The pieces of the local rehearsal (infra/rehearse.py): the template stood up on moto (`template`),
Lambda's containers, async Invoke API and SQS event sources (`aws_lambda`), the HTTP API front door
(`apigateway`) and the walk through Slack and Discord (`walk`). See docs/rehearsal.md.

Importing the package puts the repository root on sys.path: the functions' code (core, bots,
handlers) and the test suite's fake Slack and Discord (tests/support_*.py) are imported from there.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STACK = "rehearsal"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
WAIT_S = 90.0  # the longest any one step waits for asynchronous work

log = logging.getLogger("rehearsal")
T = TypeVar("T")


class RehearsalError(Exception):
    """A step found the stack not doing what it should: one line for the deployer."""


def one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def wait_for(check: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RehearsalError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.05)
