"""Request coalescing: concurrent readers of the same bytes share one GET.

Every open handle has its own prefetcher, so two programs reading the same
cold file at the same time (or one program with two descriptors) would each
fetch it from S3.  ``InFlight`` keeps the ranged GETs under way per object
version (key and ETag): a reader that needs bytes already being fetched waits
for that GET and takes its bytes, and fetches only the gaps no GET covers
(each gap is registered in turn, so a third reader shares it too).

Without an ETag (an object whose version is unknown) nothing is shared: two
GETs could then return different versions.  An error of a shared GET reaches
every reader waiting for it, as it would have reached each of them had they
fetched alone.  If the task that owns a GET is cancelled, the readers waiting
for it fetch those bytes themselves.

The local tier shares whole blocks in its own way (``Tier``), because it
also keeps fetched blocks that are waiting to be written.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import trio

Fetch = Callable[[int, int], Awaitable[bytes]]


class Abandoned(BaseException):
    """The reader that owned a GET was cancelled before it finished."""


class _Get:
    __slots__ = ("start", "end", "data", "error", "done")

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()


class InFlight:
    """Ranged GETs under way, by (key, ETag); one per mount."""

    def __init__(self) -> None:
        self._gets: dict[tuple[str, str], list[_Get]] = {}
        self.shared_bytes = 0     # bytes a reader took from another reader's GET

    def __len__(self) -> int:
        return sum(len(v) for v in self._gets.values())

    async def get(self, key: str, etag: str | None, start: int, end: int,
                  fetch: Fetch) -> bytes:
        """Bytes ``[start, end)`` of ``key`` at ``etag``, from GETs already
        under way where they cover the range and ``fetch(s, e)`` for the rest.
        Shorter than asked only if the object is (the first short piece ends
        the result)."""
        if etag is None or end <= start:
            return await fetch(start, end)
        obj = (key, etag)
        running = self._gets.setdefault(obj, [])
        plan: list[tuple[int, int, _Get, bool]] = []   # (start, end, get, mine)
        pos = start
        for g in sorted((g for g in running if g.start < end and g.end > start),
                        key=lambda g: g.start):
            if g.end <= pos:
                continue
            if g.start > pos:
                plan.append(self._own(running, pos, g.start))
            plan.append((max(pos, g.start), min(end, g.end), g, False))
            pos = min(end, g.end)
            if pos >= end:
                break
        if pos < end:
            plan.append(self._own(running, pos, end))

        mine = [g for _, _, g, own in plan if own]
        try:
            if len(mine) == 1 and len(plan) == 1:
                await self._run(obj, mine[0], fetch)
            elif mine:
                async with trio.open_nursery() as nursery:
                    for g in mine:
                        nursery.start_soon(self._run, obj, g, fetch)
        finally:
            for g in mine:  # cancelled before a child ran: never leave one pending
                if not g.done.is_set():
                    g.error = Abandoned()
                    self._finish(obj, g)

        pieces: list[bytes] = []
        for s, e, g, own in plan:
            await g.done.wait()
            if g.error is not None and not own and not isinstance(g.error, Exception):
                # its owner was cancelled: fetch these bytes ourselves
                piece = await fetch(s, e)
            elif g.error is not None:
                raise g.error
            else:
                assert g.data is not None
                piece = g.data if (s, e) == (g.start, g.end) else g.data[s - g.start:e - g.start]
                if not own:
                    self.shared_bytes += len(piece)
            pieces.append(piece)
            if len(piece) < e - s:
                break  # the object is shorter: what follows would be misplaced
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    @staticmethod
    def _own(running: list[_Get], s: int, e: int) -> tuple[int, int, _Get, bool]:
        g = _Get(s, e)
        running.append(g)
        return (s, e, g, True)

    async def _run(self, obj: tuple[str, str], g: _Get, fetch: Fetch) -> None:
        try:
            g.data = await fetch(g.start, g.end)
        except BaseException as e:
            g.error = e
            if isinstance(e, Exception):
                return  # handed to every reader of g (ours re-raises it)
            raise
        finally:
            self._finish(obj, g)

    def _finish(self, obj: tuple[str, str], g: _Get) -> None:
        running = self._gets.get(obj)
        if running is not None and g in running:
            running.remove(g)
            if not running:
                del self._gets[obj]
        g.done.set()
