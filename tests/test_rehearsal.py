"""The local rehearsal (infra/rehearse.py) passes: the stack from template.yaml on moto's server, the
Lambda handlers behind a local API Gateway front door, and a walk of a Slack question, reaction and
/retrain and a Discord ping, /ask, 👍 and failing /ask, each step checked against real state.

It runs as a deployer runs it, as its own process: the rehearsal starts one process per function
and owns its environment, which a test inside this interpreter could not give it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    "template", "resources", "knowledge base", "slack url check", "slack question", "slack reaction",
    "slack retrain", "discord ping", "discord ask", "discord feedback", "discord retry", "dead letters",
]


@pytest.mark.timeout(360)
def test_rehearsal_walks_the_stack_end_to_end() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "infra" / "rehearse.py")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    lines = done.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert done.returncode == 0, failed or done.stdout[-2000:] + done.stderr[-2000:]
    for step in STEPS:
        assert any(line.startswith(f"ok {step}: ") for line in lines), f"no 'ok {step}:' line in:\n{done.stdout}"
    assert lines[-1].startswith(f"rehearsal passed: {len(STEPS)} steps")
    assert "embedded Qdrant" in lines[0]  # the one difference from the stack that matters, said up front
