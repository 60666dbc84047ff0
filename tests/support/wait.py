"""Polling with a deadline, for conditions another process brings about."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 60, what: str = "condition",
             interval: float = 0.05) -> None:
    """Return once ``predicate()`` is true; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        time.sleep(interval)
