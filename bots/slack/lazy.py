"""Lazy listeners on Lambda whose failures reach Lambda's retry, in one place for every listener.

Bolt's `LambdaLazyListenerRunner` starts lazy work by invoking the function again asynchronously;
the re-invocation runs the listener through `LazyListenerRunner.run`, which only logs an exception.
An answer whose store or LLM failed would then be acked, logged and lost. This runner lets the
exception through instead, and records it for `lazy_failures()`: `handlers.slack_events` fails
that invocation with it (chained), so Lambda's async retry runs the work again. The listeners
themselves never have to report anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from slack_bolt.adapter.aws_lambda.lazy_listener_runner import LambdaLazyListenerRunner
from slack_bolt.kwargs_injection import build_required_kwargs
from slack_bolt.request import BoltRequest
from slack_bolt.util.utils import get_arg_names_of_callable

# Per thread and per nested invocation (tests run re-invocations inside the request that started them).
_failures: ContextVar[list[BaseException] | None] = ContextVar("slack_lazy_failures", default=None)


@contextmanager
def lazy_failures() -> Iterator[list[BaseException]]:
    """The exceptions of lazy listeners this runner ran inside the `with` block."""
    failures: list[BaseException] = []
    token = _failures.set(failures)
    try:
        yield failures
    finally:
        _failures.reset(token)


class RetryingLazyListenerRunner(LambdaLazyListenerRunner):
    """`start` as Bolt's (an async self-invocation); `run` raises what the listener raised."""

    def run(self, function: Callable[..., None], request: BoltRequest) -> None:
        kwargs = build_required_kwargs(
            logger=self.logger,
            required_arg_names=get_arg_names_of_callable(function),
            request=request,
            response=None,
            this_func=function,
        )
        try:
            function(**kwargs)
        except Exception as exc:
            if (failures := _failures.get()) is not None:
                failures.append(exc)
            self.logger.exception("lazy listener %s failed; failing the invocation so Lambda retries it",
                                  getattr(function, "__name__", function))
            raise
