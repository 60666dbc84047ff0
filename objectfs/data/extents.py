"""Range arithmetic for the data path: a set of disjoint half-open byte ranges.

``Extents`` records which bytes of a file are held locally (in a staging
file), so reads know what to fetch from S3 and uploads know which parts can
be copied server-side.  All ranges are ``[start, end)`` with ``start < end``;
adjacent and overlapping ranges are merged, so the representation is
canonical and two Extents with the same bytes compare equal.
"""

from __future__ import annotations

import bisect
from typing import Iterator


class Extents:
    __slots__ = ("_starts", "_ends")

    def __init__(self, ranges: list[tuple[int, int]] | None = None):
        self._starts: list[int] = []
        self._ends: list[int] = []
        for s, e in ranges or ():
            self.add(s, e)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Extents) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Extents({list(self)!r})"

    @property
    def span(self) -> tuple[int, int] | None:
        """(start of the first range, end of the last); None when empty."""
        return (self._starts[0], self._ends[-1]) if self._starts else None

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    def add(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` present (merging with neighbours)."""
        if end <= start:
            return
        # first range whose end >= start (touching counts: merge adjacent)
        i = bisect.bisect_left(self._ends, start)
        # last range whose start <= end
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` absent."""
        if end <= start:
            return
        i = bisect.bisect_right(self._ends, start)
        j = bisect.bisect_left(self._starts, end)
        keep_s: list[int] = []
        keep_e: list[int] = []
        if i < j:
            if self._starts[i] < start:
                keep_s.append(self._starts[i])
                keep_e.append(start)
            if self._ends[j - 1] > end:
                keep_s.append(end)
                keep_e.append(self._ends[j - 1])
        self._starts[i:j] = keep_s
        self._ends[i:j] = keep_e

    def truncate(self, size: int) -> None:
        """Forget everything at or beyond ``size``."""
        self.remove(size, max(size, self._ends[-1]) if self._ends else size)

    def covers(self, start: int, end: int) -> bool:
        """True if every byte of ``[start, end)`` is present (empty ranges are)."""
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def overlaps(self, start: int, end: int) -> bool:
        """True if any byte of ``[start, end)`` is present."""
        if end <= start:
            return False
        i = bisect.bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] < end

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The absent sub-ranges of ``[start, end)``, in order."""
        out: list[tuple[int, int]] = []
        pos = start
        i = bisect.bisect_right(self._ends, start)
        while pos < end and i < len(self._starts):
            s, e = self._starts[i], self._ends[i]
            if s >= end:
                break
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
            i += 1
        if pos < end:
            out.append((pos, end))
        return out
