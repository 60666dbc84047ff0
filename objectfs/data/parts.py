"""Multipart part layout: how a file of unknown final size is cut into parts.

S3 allows at most 10,000 parts, each of 5 MiB to 5 GiB (the last may be
smaller).  A fixed part size P caps the file at 10,000 * P (78 GiB for
8 MiB), so the size grows: parts 1..900 have the configured size, and it
doubles after every further 900 parts, capped at 5 GiB.  With the 5 MiB
minimum that reaches 5 TiB (S3's object limit) within 10,000 parts, and a
file under 7 GiB (at 8 MiB) never sees a larger part.  Sizes depend only on
the part number, so a streaming writer and a later re-upload of the same
file agree on the layout, which lets unchanged parts be copied server-side.
"""

from __future__ import annotations

from typing import Callable

from ..store.base import MAX_PART_SIZE, MAX_PARTS

GROUP = 900


def part_size(number: int, base: int) -> int:
    """Size of part ``number`` (1-based) for a configured part size ``base``."""
    if number < 1:
        raise ValueError("part numbers start at 1")
    return min(MAX_PART_SIZE, base << ((number - 1) // GROUP))


def layout(size: int, base: int) -> list[tuple[int, int, int]]:
    """(number, start, end) of each part for a file of ``size`` bytes.

    An empty file has no parts.  Raises ValueError past 10,000 parts.
    """
    out = []
    pos, n = 0, 1
    while pos < size:
        if n > MAX_PARTS:
            raise ValueError("file too large for 10,000 parts")
        end = min(size, pos + part_size(n, base))
        out.append((n, pos, end))
        pos, n = end, n + 1
    return out


def max_file_size(base: int) -> int:
    return sum(part_size(n, base) for n in range(1, MAX_PARTS + 1))


def mix_layout(size: int, changed: tuple[int, int], here: Callable[[int, int], bool],
               min_part: int) -> list[tuple[int, int, int]] | None:
    """Parts for a file small enough for one PutObject whose bytes outside
    ``changed`` = [lo, hi) are the base object's, so that its unchanged start
    and end can be copied server-side: (number, start, end) of [0, lo)
    copied, [lo, mid) sent, [mid, size) copied.  ``lo == hi == size``: no
    byte changed (a file cut shorter), so it is all copied.  None when
    nothing is worth copying: the file goes up in one PutObject.

    An end is copied when it holds ``min_part`` bytes or more (S3's minimum
    for every part but the last; worth a request of its own) and is not all
    at hand already (``here(start, end)``: sending local bytes costs no GET).
    The sent part is not the last when the end is copied, so it takes at
    least ``min_part`` bytes, reaching into the unchanged end (those bytes
    are read from the base); the copied end shrinks, or is not copied at all
    when less than ``min_part`` would be left of it.
    """
    lo, hi = changed
    if not (0 <= lo <= hi <= size and (lo < hi or lo == size)):
        raise ValueError(f"bad changed range {changed} for size {size}")
    head = lo if lo >= min_part and not here(0, lo) else 0
    if head == size:
        return [(1, 0, size)]
    mid = max(hi, head + min_part)
    if size - mid < min_part or here(mid, size):
        mid = size
    if not head and mid == size:
        return None
    spans = ([(0, head)] if head else []) + [(head, mid)] + ([(mid, size)] if mid < size else [])
    return [(n, s, e) for n, (s, e) in enumerate(spans, 1)]
