"""Powertools' Tracer where tracing is on, a no-op stand-in where it is off.

Why: building a `Tracer` imports aws_xray_sdk (~0.2 s of a cold start) even when it then disables
itself: with POWERTOOLS_TRACE_DISABLED set, outside Lambda, or under SAM local / Chalice (Powertools'
own rule, read from its constants). Where the stack runs with `Tracing: Active` the real Tracer is
built, as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools.shared import constants
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

F = TypeVar("F", bound=Callable[..., Any])


class NoTracer:
    """What the handlers use of a Tracer, doing nothing: decorators hand the function back."""

    def capture_lambda_handler(self, lambda_handler: F) -> F:
        return lambda_handler

    def capture_method(self, method: F) -> F:
        return method

    def put_annotation(self, key: str, value: str | float | bool) -> None:
        return None


def tracing_enabled() -> bool:
    """Powertools' rule: off when POWERTOOLS_TRACE_DISABLED is true, outside Lambda, or in an emulator."""
    if resolve_truthy_env_var_choice(env=os.getenv(constants.TRACER_DISABLED_ENV, "false")):
        return False
    emulated = os.getenv(constants.SAM_LOCAL_ENV) or os.getenv(constants.CHALICE_LOCAL_ENV)
    return bool(os.getenv(constants.LAMBDA_TASK_ROOT_ENV)) and not emulated


def tracer_for(service: str) -> Tracer | NoTracer:
    """The handler's tracer: Powertools' (X-Ray) when tracing is on, else a `NoTracer`."""
    if not tracing_enabled():
        return NoTracer()
    from aws_lambda_powertools import Tracer

    return Tracer(service=service)
