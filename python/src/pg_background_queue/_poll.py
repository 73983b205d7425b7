"""Polling with a deadline (used by the CLI, the benchmark and the test harness)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class PollTimeout(AssertionError):
    """:func:`poll_until` ran out of time; the message says what was awaited and last seen."""


def poll_until(
    condition: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``condition`` until it returns a truthy value, and return that value.

    Raises :class:`PollTimeout` after ``timeout`` seconds, naming ``message`` (default: the
    callable) with the last value returned or exception raised. Exceptions listed in
    ``ignore`` count as "not yet"; any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last: str = "never evaluated"
    while True:
        try:
            value = condition()
        except ignore as exc:
            last = f"raised {exc!r}"
        else:
            if value:
                return value
            last = f"returned {value!r}"
        if time.monotonic() >= deadline:
            label = message or getattr(condition, "__qualname__", repr(condition))
            raise PollTimeout(f"timed out after {timeout:g}s waiting for {label}; last {last}")
        time.sleep(interval)
