"""A byte budget shared by the mount's write buffers: back-pressure, not growth.

Writers ``acquire`` bytes before buffering them and the upload that ships
them ``release``s them.  When the budget is spent, ``acquire`` waits, so the
kernel's write request (and the application) waits instead of the daemon's
memory growing.  Waiters are served first come, first served.  A single
request larger than the whole budget is admitted when nothing else is held,
so it can never deadlock.
"""

from __future__ import annotations

from collections import deque

import trio


class ByteBudget:
    def __init__(self, limit: int):
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: deque[tuple[int, trio.Event]] = deque()

    def _fits(self, n: int) -> bool:
        return self.used + n <= self.limit or self.used == 0

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` bytes if they are free now and nobody is waiting."""
        if self._waiters or not self._fits(n):
            return False
        self.take(n)
        return True

    def take(self, n: int) -> None:
        """Take ``n`` bytes now, over the limit if need be (``acquire``
        checks the limit first; where waiting could wait for ever, callers
        take them outright); ``release`` them as usual."""
        self.used += n
        self.peak = max(self.peak, self.used)

    async def acquire(self, n: int) -> None:
        if n <= 0:
            await trio.lowlevel.checkpoint()
            return
        if not self._waiters and self._fits(n):
            self.take(n)
            await trio.lowlevel.checkpoint()
            return
        ev = trio.Event()
        entry = (n, ev)
        self._waiters.append(entry)
        try:
            await ev.wait()
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif ev.is_set():
                self.release(n)  # granted while we were being cancelled
            raise

    def release(self, n: int) -> None:
        if n <= 0:
            return
        self.used -= n
        assert self.used >= 0, "released more than acquired"
        while self._waiters and self._fits(self._waiters[0][0]):
            n, ev = self._waiters.popleft()
            self.take(n)
            ev.set()
