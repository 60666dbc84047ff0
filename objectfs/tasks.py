"""Structured concurrency helpers.

trio wraps whatever its nurseries' children raise in an ExceptionGroup, even
a single exception.  Callers of the filesystem core expect one error with an
errno, so ``open_nursery`` here re-raises the first error of the group
(``FsError``s first), unless the group carries a cancellation, which must
propagate untouched.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from .errors import FsError


def leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            out.extend(leaves(e))
        else:
            out.append(e)
    return out


def first_error(group: BaseExceptionGroup) -> BaseException | None:
    """The exception to raise in place of ``group``; None to keep the group."""
    found = leaves(group)
    if any(not isinstance(e, Exception) for e in found):
        return None  # Cancelled, KeyboardInterrupt, ...: not ours to flatten
    for e in found:
        if isinstance(e, FsError):
            return e
    return found[0] if found else None


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        err = first_error(group)
        if err is None:
            raise
        raise err from None
