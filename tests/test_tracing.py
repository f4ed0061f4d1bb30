"""Handlers build Powertools' Tracer only where tracing is on: off, they skip aws_xray_sdk's import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.tracing import NoTracer, tracer_for, tracing_enabled

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("env", "enabled"),
    [
        ({"LAMBDA_TASK_ROOT": "/var/task"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, False),
        ({}, False),  # outside Lambda
    ],
)
def test_tracing_is_on_only_in_lambda_and_not_disabled(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], enabled: bool
) -> None:
    for name in ("LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED", "AWS_SAM_LOCAL", "AWS_CHALICE_CLI_MODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing_enabled() is enabled


def test_a_disabled_tracer_hands_functions_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    tracer = tracer_for("svc")
    assert isinstance(tracer, NoTracer)

    def handler(event: dict[str, str], context: object) -> str:
        return "ok"

    assert tracer.capture_lambda_handler(handler) is handler and tracer.capture_method(handler) is handler
    tracer.put_annotation(key="k", value="v")


@pytest.mark.parametrize(("disabled", "imports_xray"), [("true", False), ("false", True)])
def test_the_slack_handler_imports_xray_only_when_tracing(disabled: str, imports_xray: bool) -> None:
    env = {**os.environ, "POWERTOOLS_TRACE_DISABLED": disabled, "LAMBDA_TASK_ROOT": str(ROOT),
           "PYTHONPATH": str(ROOT)}
    code = "import sys, handlers.slack_events as h; print('aws_xray_sdk.core' in sys.modules, type(h.tracer).__name__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(imports_xray), "Tracer" if imports_xray else "NoTracer"]
