"""Deterministic, incompressible benchmark data.

A ``Data(seed)`` is an endless byte stream built from a 64 MiB random pool:
1 MiB chunk ``i`` of the stream is a page-aligned slice of the pool at an
offset that depends on ``i`` (the first 1024 chunks, i.e. 1 GiB, are all
different slices).  Producing a chunk is a zero-copy memoryview slice, so the
writer spends its time in write(), not in generating data, and any byte range
of the stream can be recomputed to verify what a filesystem returns.

The same seed gives the same bytes in every process that runs the same
Python (``random.Random(seed).randbytes`` is deterministic).
"""

from __future__ import annotations

import io
import random
import zlib

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB
POOL = 64 * MiB
_PAGES = (POOL - CHUNK) // 4096
_MULT = 40503  # odd, coprime with _PAGES: chunk offsets 0..1023 are distinct

allocated = 0  # bytes of pools made in this process (harness memory, see child.Timer)


class Data:
    def __init__(self, seed: int):
        global allocated
        allocated += POOL
        self.seed = seed
        self.pool = memoryview(random.Random(seed).randbytes(POOL))

    def chunk(self, i: int) -> memoryview:
        off = ((i * _MULT + 7) % _PAGES) * 4096
        return self.pool[off:off + CHUNK]

    def pieces(self, start: int, size: int, piece: int = CHUNK):
        """Yield memoryviews covering stream bytes [start, start+size), each
        at most ``piece`` bytes and never crossing a chunk boundary."""
        pos, end = start, start + size
        while pos < end:
            i, within = divmod(pos, CHUNK)
            n = min(CHUNK - within, end - pos, piece)
            yield self.chunk(i)[within:within + n]
            pos += n

    def read(self, start: int, size: int) -> bytes:
        return b"".join(bytes(p) for p in self.pieces(start, size))

    def crc(self, start: int, size: int) -> int:
        c = 0
        for p in self.pieces(start, size):
            c = zlib.crc32(p, c)
        return c

    def reader(self, start: int, size: int) -> "StreamReader":
        return StreamReader(self, start, size)


class StreamReader(io.RawIOBase):
    """A read-only, non-seekable file object over a range of a ``Data`` stream
    (for boto3's upload_fileobj).  ``read(n)`` returns exactly n bytes until the
    end, like a file: s3transfer makes one multipart part of each read()."""

    def __init__(self, data: Data, start: int, size: int):
        self._it = data.pieces(start, size)
        self._left = size
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _next(self) -> memoryview:
        if not self._pending:
            self._pending = next(self._it, memoryview(b""))
        return self._pending

    def readinto(self, b) -> int:
        p = self._next()
        n = min(len(b), len(p))
        b[:n] = p[:n]
        self._pending = p[n:]
        self._left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        out = []
        want = n
        while want:
            p = self._next()
            if not p:
                break
            take = p[:want]
            out.append(take)
            self._pending = p[len(take):]
            want -= len(take)
        self._left -= n - want
        return b"".join(out)


class SegmentSink(io.RawIOBase):
    """A seekable write-only file object that keeps only a CRC-32 per write.

    boto3's download_fileobj writes ranges concurrently downloaded at their
    offsets (seek + write, from one I/O thread), as into a real file; ``check``
    then verifies that the writes cover [0, size) and match the stream.  (A
    non-seekable sink makes s3transfer use its in-order path, which deadlocked
    on 1 GiB downloads in s3transfer 0.19.)
    """

    def __init__(self):
        self.pos = 0
        self.segments: list[tuple[int, int, int]] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, off: int, whence: int = 0) -> int:
        if whence == 1:
            off += self.pos
        elif whence == 2:
            off += self.end()
        self.pos = off
        return off

    def tell(self) -> int:
        return self.pos

    def end(self) -> int:
        return max((o + n for o, n, _ in self.segments), default=0)

    def write(self, b) -> int:
        n = len(b)
        self.segments.append((self.pos, n, zlib.crc32(b)))
        self.pos += n
        return n

    def check(self, data: "Data", start: int, size: int) -> str | None:
        """None if the writes are exactly stream bytes [start, start+size)."""
        pos = 0
        for off, n, crc in sorted(self.segments):
            if off != pos:
                return f"download has a gap or overlap at offset {pos}"
            if data.crc(start + off, n) != crc:
                return f"data differs at offset {off}"
            pos += n
        if pos != size:
            return f"downloaded {pos} bytes, expected {size}"
        return None


def small_file_content(data: Data, i: int, size: int = 4 * KiB) -> bytes:
    """Content of the i-th small file: consecutive, distinct slices of the stream."""
    return data.read(i * size, size)
