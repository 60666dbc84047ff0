"""Sequential read-ahead with parallel ranged GETs, for one open handle.

The kernel sends reads of at most 128 KiB (its readahead unit), far too
small to get throughput from S3, so we keep our own window of ranged GETs
ahead of the reader:

* The first read at offset 0 fetches 1 MiB + 128 KiB: Linux readahead asks
  for 128 KiB beyond a 1 MiB read, so the second kernel request is served
  from the first GET and the first byte comes back quickly.
* While reads stay sequential (within the scheduled window), the window
  doubles on every read up to ``prefetch_max``; it is cut into segments of
  at most ``read_part_size`` that are fetched in parallel.
* A read outside the window is random access: the window is dropped and
  only the requested bytes (at least 64 KiB) are fetched, so random 4 KiB
  reads never pull megabytes.  Up to 1 MiB behind the reader is kept for
  small backward seeks.
* Prefetch memory is taken from the mount's read budget; when it is spent,
  read-ahead stops short but reads are still served (fetching only what
  they need).

Readers of the same object version in other handles share GETs that are
under way (``ctx.inflight``, see coalesce.py; the tier shares whole blocks
itself), so two programs reading the same cold file fetch it once.

Every GET is pinned to the ETag the file was opened with: if the object is
replaced or deleted in S3 while it is open, the reader gets ESTALE, never a
mix of old and new bytes.

With the local tier (``ctx.tier``), segments go through it: cached blocks
are read from disk and only missing blocks are fetched.  Segments are then
aligned to the tier's blocks, so every fetched block is whole and can be
cached, and a file no larger than ``ctx.whole_file_max`` is fetched whole
on its first read (later reads at any offset are local).  A random read
(out of sequence, with the tier) is served from cached blocks when they are
there, copying only the bytes asked for (at once, with no task and no worker
thread, when they are in the page cache: Tier.peek_now); otherwise the first and second
random reads of a block fetch only their own bytes (at least 64 KiB, nothing
cached: one latency, not a whole block's transfer) and the third fetches the
whole block into the tier (WHOLE_BLOCK_AT).  A file no larger than
``ctx.fill_max`` that is read at random (a second read out of sequence) is
fetched whole into the tier in the background; a random read of bytes not
cached yet then waits for the fill, which fetches the part holding them
next (Tier.from_fill), rather than asking S3 for them beside it.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable

import trio

from ..errors import ObjectNotFound, PreconditionFailed, Stale
from ..store.base import KiB, MiB
from ..tasks import leaves
from ..tier.store import BLOCK_SIZE
from .context import DataContext

log = logging.getLogger(__name__)

FIRST_WINDOW = 1 * MiB + 128 * KiB
MIN_RANDOM_FETCH = 64 * KiB
FIRST_TOUCH, LATER_TOUCH = 1, 2
# The random read that asks for a block for the third time fetches it whole
# into the tier.  A ranged GET costs about one latency whatever its size up
# to a block, so fetching the block whole pays only if it is read again
# after that: in 500 random reads of a 1 GiB file (about 100 blocks read
# twice, a handful three times) whole blocks at the second read cost 20%
# more time (Swift, multipart object), for almost no hits.
WHOLE_BLOCK_AT = 3
# Blocks whose random reads a handle counts (a dict entry each, ~100 bytes):
# the counts start again when a long-running random reader of a huge file
# has touched this many, so the handle's memory stays bounded.
TOUCHED_MAX = 1 << 16
BACKWARD = 1 * MiB


def _for_reader(e: BaseException) -> BaseException:
    if isinstance(e, PreconditionFailed):
        return Stale("object changed in S3 while open")
    if isinstance(e, ObjectNotFound):
        return Stale("object deleted in S3 while open")
    return e


class Segment:
    __slots__ = ("start", "end", "data", "error", "done", "held", "dropped", "random")

    def __init__(self, start: int, end: int, held: int, random: int = 0):
        self.start, self.end, self.held = start, end, held
        # a random read's own bytes (with the tier): from cached blocks if
        # there, else FIRST_TOUCH: a GET of these bytes, LATER_TOUCH (a block's
        # WHOLE_BLOCK_AT-th random read): whole blocks
        self.random = random
        self.data: bytes = b""
        self.error: BaseException | None = None
        self.done = trio.Event()
        self.dropped = False


class Prefetcher:
    def __init__(self, ctx: DataContext, key_fn: Callable[[], str], etag: str | None, size: int):
        self.ctx = ctx
        tier = ctx.tier
        self.tier_ref = tier.ref(key_fn(), etag, size) if tier is not None else None
        self.align = BLOCK_SIZE if self.tier_ref is not None else 1
        self.whole = self.tier_ref is not None and size <= ctx.whole_file_max
        self.key_fn = key_fn
        self.etag = etag
        self.size = size
        self.segments: deque[Segment] = deque()
        self.next_fetch = 0          # end of what is scheduled
        self.window = FIRST_WINDOW
        self.last_end: int | None = None
        self.random_reads = 0        # reads out of sequence
        self.touched: dict[int, int] = {}  # tier block -> random reads that asked for it
        self.gets = 0                # GETs issued (for tests and stats)
        # The kernel sends readahead requests of one file concurrently; they
        # are served one at a time (in arrival order) so that one cannot
        # reset the window under another.  The GETs still run in parallel.
        self._lock = trio.Lock()

    # -- scheduling -------------------------------------------------------

    def _fetch(self, start: int, end: int, need_end: int, random: int = 0) -> bool:
        """Schedule ``[start, end)``; False if the budget refused a prefetch.

        Bytes the current read needs (below ``need_end``) are fetched even
        when the budget is spent, but then only those: a read never waits,
        and many readers at once do not each hold a whole segment outside
        the budget.
        """
        n = end - start
        held = n if self.ctx.read_budget.try_acquire(n) else 0
        if not held:
            if start >= need_end:
                return False
            end = min(end, max(need_end, start + MIN_RANDOM_FETCH))
        seg = Segment(start, end, held, random)
        self.segments.append(seg)
        self.next_fetch = end
        self.gets += 1
        self.ctx.nursery.start_soon(self._run, seg)
        return True

    def _cached_now(self, start: int, end: int, random: int) -> bool:
        """A random read's bytes from the tier at once, when it has them in
        memory or in the page cache (Tier.peek_now): a segment that is done
        already, with no task and no worker thread for it."""
        assert self.ctx.tier is not None and self.tier_ref is not None
        data = self.ctx.tier.peek_now(self.tier_ref, start, end)
        if data is None:
            return False
        seg = Segment(start, end, 0, random)
        seg.data = data
        seg.done.set()
        self.segments.append(seg)
        self.next_fetch = end
        return True

    async def _get(self, start: int, end: int) -> bytes:
        return await self.ctx.store.get(self.key_fn(), start, end, etag=self.etag)

    async def _run(self, seg: Segment) -> None:
        try:
            if self.tier_ref is not None and seg.random:
                assert self.ctx.tier is not None
                data = await self.ctx.tier.peek(self.tier_ref, seg.start, seg.end)
                if data is None:
                    data = await self.ctx.tier.from_fill(self.tier_ref, seg.start, seg.end)
                if data is None and seg.random == FIRST_TOUCH:
                    data = await self.ctx.inflight.get(self.key_fn(), self.etag, seg.start,
                                                       seg.end, self._get)
                elif data is None:
                    data = await self.ctx.tier.read(self.tier_ref, seg.start, seg.end,
                                                    self._get)
                seg.data = data
            elif self.tier_ref is not None:
                assert self.ctx.tier is not None
                seg.data = await self.ctx.tier.read(self.tier_ref, seg.start, seg.end, self._get)
            else:
                seg.data = await self.ctx.inflight.get(self.key_fn(), self.etag, seg.start,
                                                       seg.end, self._get)
        except* Exception as errors:  # handed to the reader that waits for it
            # A GET failing as the mount stops can end in one group with the
            # unmount's Cancelled: the error goes to the reader, the
            # cancellation on to the mount's nursery (an error reaching that
            # nursery would end the mount loop with a traceback).
            seg.error = _for_reader(leaves(errors)[0])
        finally:
            seg.done.set()
            if seg.dropped:
                self._release(seg)

    def _release(self, seg: Segment) -> None:
        if seg.held:
            self.ctx.read_budget.release(seg.held)
            seg.held = 0
        seg.data = b""

    def _drop(self, seg: Segment) -> None:
        seg.dropped = True
        if seg.done.is_set():
            self._release(seg)

    def _reset(self, off: int, need_end: int) -> None:
        for seg in self.segments:
            self._drop(seg)
        self.segments.clear()
        self.next_fetch = off - off % self.align
        if self.whole:
            self.next_fetch, self.window = 0, self.size
        elif off == 0 and self.last_end is None:
            self.window = FIRST_WINDOW
        else:
            self.window = max(MIN_RANDOM_FETCH, need_end - off)

    def _schedule(self, until: int, need_end: int) -> None:
        until = max(until, need_end)
        until = min(until + (-until) % self.align, self.size)
        if self.segments and self.segments[-1].random and self.next_fetch < self.size:
            # read on from a random read's own bytes: whole segments again
            self.next_fetch -= self.next_fetch % self.align
        step = self.ctx.read_part_size
        # Top the window up in whole segments only: moved on by one kernel
        # read at a time, it would become one small GET per read.
        step = min(step, self.window)
        step = max(self.align, step - step % self.align)
        while self.next_fetch < until:
            start = self.next_fetch
            end = min(until, start + step)
            if start >= need_end and end - start < step and end < self.size:
                break  # a short tail: leave it for a later whole segment
            if not self._fetch(start, end, need_end):
                break

    # -- reading ----------------------------------------------------------

    def _in_window(self, off: int) -> bool:
        if not self.segments:
            return self.last_end is not None and off == self.last_end == self.next_fetch
        return self.segments[0].start <= off <= self.next_fetch + self.window

    def _touch(self, off: int, end: int) -> int:
        """For a random read with the tier (of a file not fetched whole on
        its first read; the very first read at offset 0 is the start of a
        sequential read, not a random one): LATER_TOUCH if random reads of
        this handle asked for one of its blocks WHOLE_BLOCK_AT - 1 times
        before, else FIRST_TOUCH; 0 without the tier."""
        if self.tier_ref is None or self.whole or (off == 0 and self.last_end is None):
            return 0
        if len(self.touched) >= TOUCHED_MAX:
            self.touched.clear()
        hot = False
        for b in range(off // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1):
            n = self.touched.get(b, 0) + 1
            self.touched[b] = n
            hot = hot or n >= WHOLE_BLOCK_AT
        return LATER_TOUCH if hot else FIRST_TOUCH

    async def read(self, off: int, n: int) -> bytes | memoryview:
        """Bytes ``[off, off + n)``: a read within one segment is a view of
        it, not a copy (pyfuse3 replies from any buffer; the view keeps the
        segment's bytes alive only until the reply is sent)."""
        async with self._lock:
            return await self._read(off, n)

    async def _read(self, off: int, n: int) -> bytes | memoryview:
        end = min(off + n, self.size)
        if off >= end:
            return b""
        sequential = self._in_window(off)
        if not sequential:
            self.random_reads += 1
            if (self.random_reads == 2 and self.tier_ref is not None and not self.whole
                    and self.size <= self.ctx.fill_max):
                assert self.ctx.tier is not None
                self.ctx.tier.fill(self.tier_ref, self._get, self.ctx.nursery)
            self._reset(off, end)
            touch = self._touch(off, end)
            if touch:
                # the bytes asked for (at least MIN_RANDOM_FETCH): from cached
                # blocks (copying only those bytes), else a GET of just those
                # bytes the first time, whole blocks into the tier later
                # (not beyond the last block asked for)
                block_end = ((end - 1) // BLOCK_SIZE + 1) * BLOCK_SIZE
                stop = min(self.size, max(end, min(off + MIN_RANDOM_FETCH, block_end)))
                if not self._cached_now(off, stop, touch):
                    self._fetch(off, stop, end, random=touch)
            else:
                self._schedule(off + self.window, end)
        else:
            if off >= self.next_fetch:
                # skipped ahead within the window: drop what lies behind
                for seg in self.segments:
                    self._drop(seg)
                self.segments.clear()
                self.next_fetch = off - off % self.align
            self.window = min(self.window * 2, self.ctx.prefetch_max)
            self._schedule(end + self.window, end)
        out: list[memoryview] = []
        pos = off
        for seg in list(self.segments):
            if seg.end <= pos:
                continue
            if seg.start >= end:
                break
            await seg.done.wait()
            if seg.error is not None:
                err = seg.error
                self._reset(off, end)
                raise err
            a, b = pos - seg.start, min(end, seg.end) - seg.start
            out.append(memoryview(seg.data)[a:b])
            pos = seg.start + b
            if pos >= end:
                break
        self.last_end = end
        while self.segments and self.segments[0].end <= off - BACKWARD:
            self._drop(self.segments.popleft())
        data = out[0] if len(out) == 1 else b"".join(out)
        if len(data) != end - off:
            # the object is shorter than it was when opened
            raise Stale("object shorter than expected")
        return data

    def close(self) -> None:
        for seg in self.segments:
            self._drop(seg)
        self.segments.clear()
