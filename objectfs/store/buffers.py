"""Receive buffers for large GET bodies, used again once nothing holds them.

A 16 MiB body read into a new object lands in memory the process has never
touched: ``mount.tune_malloc`` has glibc map every block of 1 MiB or more
afresh (and unmap it when freed, which keeps the daemon's RSS down), so the
kernel takes a page fault and zeroes a page for every 4 KiB received.  In a
cold sequential read on Swift that was 12-15% of the daemon's CPU (perf:
``clear_page`` and the page-fault path under ``recv``).  Reading the next
body into a buffer whose pages are already there costs only the copy.

A buffer may be reused only when nothing refers to it any more: a segment
waiting for its reader, a FUSE reply being sent, a tier block queued for
writing.  Each of these holds the buffer itself or a memoryview of it, and
every memoryview of a buffer holds one reference to it (through its managed
buffer), so CPython's reference count says exactly when a buffer is free.

Only buffers of the exact size asked for are reused (a sequential read asks
for the same segment size over and over), at most ``max_bytes`` of them are
kept, and one not handed out for ``idle`` seconds is dropped by ``trim`` as
soon as it is free, so an idle mount keeps none.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from .base import MiB

# A buffer the pool kept and nothing else refers to has two references: the
# pool's list entry and getrefcount's own argument.
_FREE_REFS = 2


class ReceiveBuffers:
    """Bytearrays to read GET bodies into (thread-safe: bodies are read in
    worker threads)."""

    def __init__(self, max_bytes: int, *, min_size: int = MiB, idle: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.min_size, self.idle = max_bytes, min_size, idle
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: list[list] = []      # [buffer, when last handed out]
        self.kept_bytes = 0
        self.reused = 0                  # bodies read into a kept buffer (stats, tests)

    def take(self, n: int) -> bytearray:
        """A bytearray of ``n`` bytes that nothing else refers to.  Its
        contents are undefined: the caller fills all of it."""
        if n < self.min_size:
            return bytearray(n)
        with self._lock:
            now = self._clock()
            for entry in self._kept:
                if len(entry[0]) == n and sys.getrefcount(entry[0]) == _FREE_REFS:
                    entry[1] = now
                    self.reused += 1
                    return entry[0]
            buf = bytearray(n)
            if self.kept_bytes + n > self.max_bytes:
                self._drop(lambda entry: True, until=self.max_bytes - n)
            if self.kept_bytes + n <= self.max_bytes:
                self._kept.append([buf, now])
                self.kept_bytes += n
            return buf

    def trim(self) -> None:
        """Drop the free buffers not handed out for ``idle`` seconds."""
        with self._lock:
            stale = self._clock() - self.idle
            self._drop(lambda entry: entry[1] <= stale, until=0)

    def _drop(self, which: Callable[[list], bool], until: int) -> None:
        """Drop free buffers that ``which`` picks, oldest first, until at most
        ``until`` bytes are kept.  The caller holds the lock."""
        dropped = set()
        for entry in sorted(self._kept, key=lambda entry: entry[1]):
            if self.kept_bytes <= until:
                break
            if which(entry) and sys.getrefcount(entry[0]) == _FREE_REFS:
                dropped.add(id(entry))
                self.kept_bytes -= len(entry[0])
        if dropped:
            self._kept = [entry for entry in self._kept if id(entry) not in dropped]
