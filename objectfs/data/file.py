"""The bytes of one open file: where they are, and how they reach S3.

A file's content is described relative to a *base*: the object version in
S3 it was opened from (``base_etag``), of which the first ``base_size``
bytes still apply.  Local changes live in one of two places:

* a ``StreamingUpload``, while the file is written strictly sequentially
  from offset 0 after being created or truncated to zero (cp, tar, rsync,
  editors saving a new file).  Full parts go to S3 while the writer goes on.
* a ``Staging`` file on local disk for everything else (random writes,
  overwrites and appends to an existing object, reads of what was written).
  Bytes not staged are fetched from the base on demand; at upload, parts
  that were never touched are copied server-side.

If a streamed file stops being sequential (a seek, a truncate, a read of
bytes already sent), the stream is converted to staging: while nothing has
been sent the buffer is just moved to disk; otherwise the multipart upload
is completed first (so the object holds what was written so far) and used
as the new base.

``flush`` uploads if anything changed and returns the new object's info.
An upload failure raises IOFailure (EIO) to the caller of close/fsync; a
staged file stays dirty and is retried on the next flush, a failed stream
has lost its parts and every later operation on the handle fails with EIO.

With write-back (``ctx.writeback``) no multipart stream is ever started (a
file outgrowing one part moves to staging), and ``export`` hands the whole
content to the write-back journal instead of S3.  The journal's copy then
becomes a *local base* (``local_base_fd``): bytes not staged are read from
it, not from S3, until the file is closed.

All mutating methods hold the file's lock, so writes, truncates and uploads
of one file are applied in arrival order and never interleave.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
from typing import Awaitable, Callable, Iterable, Iterator, TypeVar

import trio

from ..errors import (FsError, IOFailure, NoSpace, ObjectNotFound, PreconditionFailed, Stale,
                      upload_error)
from ..store.base import MIN_PART_SIZE, MiB, ObjectInfo, bare_etag
from .context import DataContext, ObjectHeaders
from .extents import Extents
from .parts import mix_layout
from .staging import Staging
from .upload import StreamingUpload, upload_staged
from ..tasks import open_nursery

log = logging.getLogger(__name__)

# Missing ranges are fetched from S3 in aligned blocks of this size, so a
# run of small reads does not become a run of tiny GETs.
FILL_BLOCK = 1 * MiB
# Pieces in which a staged file is copied into the write-back journal.
EXPORT_CHUNK = 1 * MiB

T = TypeVar("T")


class FileData:
    def __init__(self, ctx: DataContext, key_fn: Callable[[], str],
                 headers_fn: Callable[[], ObjectHeaders], *, base_etag: str | None,
                 base_size: int, published_fn: Callable[[ObjectInfo], None] | None = None,
                 local_base: str | None = None, origin_etag: str | None = None):
        self.ctx = ctx
        self.key_fn = key_fn
        self.headers_fn = headers_fn
        # told about every object this file creates in S3, including the
        # intermediate one a converted stream leaves behind
        self.published_fn = published_fn or (lambda info: None)
        self.base_etag = base_etag
        self.base_size = base_size if base_etag is not None else 0
        self.size = self.base_size
        self.dirty = False
        self.stream: StreamingUpload | None = None
        self.staging: Staging | None = None
        self.lock = trio.Lock()
        self.broken: str | None = None     # a stream failed: its data is gone
        self.stale = False                 # ... or its base version left S3 (ESTALE)
        self.detached = False              # unlinked: never upload
        self.version = 0                   # bumped by every local change
        self.meta_changed = False          # metadata set after a stream started
        self.meta_gen = 0                  # bumped by attrs_changed()
        # write-back: the ETag S3 must still hold when our version is uploaded
        # (the object this file was opened from; None for a new file)
        self.origin_etag = origin_etag
        self.local_base_fd: int | None = None
        if local_base is not None:
            self.local_base_fd = os.open(local_base, os.O_RDONLY)
            self.base_size = self.size = base_size  # the staged copy's size

    @property
    def local_reads(self) -> bool:
        """True when reads must come from here rather than a clean prefetch."""
        return (self.dirty or self.stream is not None or self.staging is not None
                or self.local_base_fd is not None)

    def _check(self) -> None:
        if self.broken:
            raise (Stale if self.stale else IOFailure)(self.broken)

    def mark_dirty(self) -> None:
        self.dirty = True
        self.version += 1

    # -- writes -----------------------------------------------------------

    async def write(self, off: int, data: bytes) -> int:
        async with self.lock:
            self._check()
            n = len(data)
            if self.stream is not None and self.ctx.writeback \
                    and len(self.stream.buf) + n >= self.ctx.part_size:
                await self._to_staging()  # never start a multipart upload
            if self.stream is not None and off == self.size and not self.stream.closed:
                await self._append(data)
                return n
            if (self.stream is None and self.staging is None and self.size == 0
                    and self.base_size == 0 and off == 0
                    and not (self.ctx.writeback and n >= self.ctx.part_size)):
                self.stream = StreamingUpload(self.ctx, self.key_fn, self.headers_fn)
                self.ctx.streaming.add(self)
                await self._append(data)
                return n
            await self._to_staging()
            assert self.staging is not None
            self.staging.write(off, data)
            self.size = max(self.size, off + n)
            self.mark_dirty()
            return n

    async def _append(self, data: bytes) -> None:
        assert self.stream is not None
        self.mark_dirty()
        try:
            taken = await self.stream.append(data)
        except FsError as e:
            self._fail_stream(e)
            raise
        self.size = self.stream.size
        if taken < len(data):
            # the mount's write budget is spent: go on on the staging disk
            # rather than wait (see StreamingUpload.append)
            log.debug("write buffers full: staging %r on disk", self.stream.key)
            await self._to_staging()
            assert self.staging is not None
            self.staging.write(self.size, memoryview(data)[taken:])
            self.size += len(data) - taken
            self.mark_dirty()

    def _fail_stream(self, e: Exception) -> None:
        self.broken = f"upload failed, data of this file was lost: {e}"
        log.error("%s", self.broken)

    def _give_up(self, e: FsError) -> None:
        """The version this file was opened from is no longer the one in S3
        (another client replaced or deleted it): the changes made here, laid
        on that version, can never be uploaded.  They are dropped (not
        dirty: nothing retries them) and the other client's version stays;
        the close that found it fails with ESTALE, and so does every later
        operation on this file's open handles."""
        self.broken = f"{self.key_fn()!r} changed in S3 while open; the changes made here " \
                      f"were dropped ({e})"
        self.stale = True
        self.dirty = False
        log.warning("%s", self.broken)

    async def truncate(self, new_size: int) -> None:
        async with self.lock:
            self._check()
            if new_size == 0:
                if self.stream is not None:
                    await self.stream.abort()
                    self.stream = None
                if self.staging is not None:
                    self.staging.truncate(0)
                self._drop_local_base()
                self.base_etag, self.base_size, self.size = None, 0, 0
                self.mark_dirty()
                return
            if new_size == self.size:
                return
            await self._to_staging()
            assert self.staging is not None
            self.staging.truncate(new_size)
            self.base_size = min(self.base_size, new_size)
            self.size = new_size
            self.mark_dirty()

    async def spill(self) -> bool:
        """Move an idle stream's part buffer to the staging disk (freeing
        its write budget); a file busy with an operation is left alone.
        False if the buffer could not move (its bytes and budget stay)."""
        if (self.stream is None or self.stream.closed or not self.stream.buf
                or self.lock.locked()):
            return True
        async with self.lock:
            if self.stream is None or self.stream.closed:
                return True
            try:
                await self._to_staging()
            except FsError as e:
                log.warning("could not move %r to staging: %s", self.key_fn(), e)
                return False
            return True

    def attrs_changed(self) -> None:
        """The file's attributes changed while it has changes to upload: the
        upload carries them, or, if it has already taken its headers (a
        multipart upload under way, or any upload in flight), stores them
        after it."""
        self.meta_gen += 1
        if self.stream is not None and self.stream.started:
            self.meta_changed = True

    async def _to_staging(self) -> None:
        """Move from streaming (or nothing) to a staging file.  A staging
        file that cannot be made or written (disk full, no file descriptors)
        leaves the stream as it was, its buffered bytes and budget with it."""
        if self.stream is not None:
            stream = self.stream
            staging = Staging(self.ctx.staging_dir)
            if not stream.started:
                try:
                    staging.write(0, stream.buf)
                except BaseException:
                    staging.close()
                    raise
                self.stream = None
                await stream.abort()  # releases the buffer; nothing was sent
                self.base_etag, self.base_size = None, 0
            else:
                self.stream = None
                gen = self.meta_gen
                try:
                    info = await stream.finish()
                except FsError as e:
                    staging.close()
                    self._fail_stream(e)
                    raise
                self.base_etag, self.base_size = info.etag, stream.size
                # attributes set after its headers were taken: the next
                # upload (from staging, with the headers of then) stores them
                self.dirty = self.meta_changed or self.meta_gen != gen
                self.meta_changed = False
                self.published_fn(info)
            self.staging = staging
        elif self.staging is None:
            self.staging = Staging(self.ctx.staging_dir)

    # -- reads ------------------------------------------------------------

    async def read(self, off: int, n: int) -> bytes:
        """Read through local state (staging, stream buffer) and the base."""
        async with self.lock:
            self._check()
            end = min(off + n, self.size)
            if off >= end:
                return b""
            if self.stream is not None:
                tail = self.stream.read_tail(off, end)
                if tail is not None:
                    return tail
            await self._to_staging()
            return await self._read_range(off, end)

    async def _fill(self, start: int, end: int, exact: bool = False) -> None:
        """Fetch the base's bytes of ``[start, end)`` that are not staged;
        whole FILL_BLOCKs around them, unless ``exact`` (an upload reads each
        byte once: what lies around would be fetched for nothing)."""
        staging = self.staging
        assert staging is not None
        limit = min(end, self.base_size)
        if start >= limit or (self.base_etag is None and self.local_base_fd is None):
            return
        lo, hi = start, limit
        if not exact:
            lo -= start % FILL_BLOCK
            hi = min(self.base_size, -(-limit // FILL_BLOCK) * FILL_BLOCK)
        gaps = staging.present.gaps(lo, hi)
        if not gaps:
            return
        if self.local_base_fd is not None:
            for gs, ge in gaps:
                staging.write(gs, self._read_local_base(gs, ge), dirty=False)
            return
        key = self.key_fn()
        chunks: list[tuple[int, int]] = []
        for gs, ge in gaps:
            for s in range(gs, ge, self.ctx.read_part_size):
                chunks.append((s, min(ge, s + self.ctx.read_part_size)))

        async def fetch(s: int, e: int) -> None:
            data = await self._get_base(key, s, e)
            if staging.present.overlaps(s, e):
                # written locally while we fetched: keep those bytes
                for gs, ge in staging.present.gaps(s, e):
                    staging.write(gs, data[gs - s:ge - s], dirty=False)
            else:
                staging.write(s, data, dirty=False)

        if len(chunks) == 1:
            await fetch(*chunks[0])
            return
        async with open_nursery() as nursery:
            for s, e in chunks:
                nursery.start_soon(fetch, s, e)

    def _read_local_base(self, start: int, end: int) -> bytes:
        assert self.local_base_fd is not None
        data = os.pread(self.local_base_fd, end - start, start)
        if len(data) != end - start:
            raise IOFailure("write-back copy of the file is shorter than expected")
        return data

    def _drop_local_base(self) -> None:
        if self.local_base_fd is not None:
            os.close(self.local_base_fd)
            self.local_base_fd = None

    async def _get_base(self, key: str, start: int, end: int) -> bytes:
        try:
            data = await self.ctx.store.get(key, start, end, etag=self.base_etag)
        except PreconditionFailed:
            raise Stale("object changed in S3 while open") from None
        except ObjectNotFound:
            raise Stale("object deleted in S3 while open") from None
        if len(data) != end - start:
            raise Stale("object shorter than expected")
        return data

    async def _read_range(self, start: int, end: int, exact: bool = False) -> bytes:
        staging = self.staging
        assert staging is not None
        try:
            await self._fill(start, end, exact)
        except NoSpace:
            # The staging disk is full: the base's bytes are fetched for this
            # read without being kept, so reads (and the upload, which reads
            # through here) go on working.
            out = bytearray(staging.read(start, end - start))
            key = self.key_fn()
            for gs, ge in staging.present.gaps(start, min(end, self.base_size)):
                out[gs - start:ge - start] = await self._get_base(key, gs, ge)
            return bytes(out)
        return staging.read(start, end - start)

    def _mix_layout(self) -> list[tuple[int, int, int]] | None:
        """Parts for a file up to one PutObject that copy its unchanged start
        and end server-side (parts.mix_layout), or None: one PutObject."""
        staging = self.staging
        assert staging is not None
        first, last = staging.dirty.span or (self.size, 0)
        lo = min(first, self.base_size, self.size)
        hi = max(last, self.size if self.size > self.base_size else 0, lo)
        return mix_layout(self.size, (lo, hi), staging.present.covers, MIN_PART_SIZE)

    # -- upload -----------------------------------------------------------

    async def flush(self) -> ObjectInfo | None:
        """Upload local changes; returns the new object's info, or None if
        there was nothing to upload."""
        async with self.lock:
            self._check()
            if not self.dirty or self.detached:
                return None
            key = self.key_fn()
            gen = self.meta_gen
            if self.stream is not None and not self.stream.started:
                # small file, all in memory: one PutObject
                stream = self.stream   # finish() takes the current key, as key here
                body = stream.buf  # finish() lets go of it; nothing changes it after
                try:
                    info = await stream.finish()
                except FsError as e:
                    await self._to_staging()  # keep the bytes for the next try
                    raise upload_error(e, f"upload of {key!r}") from e
                self.stream = None
                if self.ctx.tier is not None and len(body) == self.size:
                    # every byte of the new object is at hand: cache it
                    self.ctx.tier.offer(key, info.etag, body)
            elif self.stream is not None:
                stream, self.stream = self.stream, None
                try:
                    info = await stream.finish()
                except FsError as e:
                    self._fail_stream(e)
                    raise
                if stream.key != key:
                    # renamed while streaming: the upload went to the old key
                    info = await self._move(stream.key, key, info)
            elif self.staging is not None:
                base_key = key if (self.base_etag is not None and self.base_size
                                   and self.local_base_fd is None) else None
                try:
                    info = await upload_staged(
                        self.ctx, key, self.size, self.headers_fn(),
                        touched=self.staging.dirty.overlaps,
                        read=functools.partial(self._read_range, exact=True),
                        base_key=base_key, base_etag=self.base_etag, base_size=self.base_size,
                        small_parts=self._mix_layout())
                except FsError as e:
                    if e.errno == errno.ESTALE:
                        self._give_up(e)
                    raise
            else:
                h = self.headers_fn()
                try:
                    info = await self.ctx.store.put(key, b"", metadata=h.metadata,
                                                    content_type=h.content_type,
                                                    headers=h.headers)
                except FsError as e:
                    raise upload_error(e, f"upload of {key!r}") from e
            if self.meta_changed or self.meta_gen != gen:
                # attributes set after the upload took its headers (a chmod
                # while a close uploads, or once a multipart upload began)
                h = self.headers_fn()
                info = await self.ctx.store.copy(key, key, size=self.size, metadata=h.metadata,
                                                 content_type=h.content_type, headers=h.headers)
            self.base_etag, self.base_size = info.etag, self.size
            self.dirty = False
            self.meta_changed = False
            if self.staging is not None:
                self.staging.dirty = Extents()  # the object now holds every byte
            self.published_fn(info)
            return info

    async def _move(self, old: str, new: str, info: ObjectInfo) -> ObjectInfo:
        moved = await self.ctx.store.copy(old, new, size=self.size)
        await self.ctx.store.delete(old)
        return ObjectInfo(key=new, size=self.size, etag=moved.etag, mtime_ns=moved.mtime_ns,
                          metadata=info.metadata, content_type=info.content_type,
                          headers=info.headers)

    @contextlib.asynccontextmanager
    async def held_for_move(self):
        """Hold the file while a rename moves its object to another key: a
        multipart upload already under way (bound to the key it started at)
        is completed first, and no upload of it starts until the move is
        done, so none lands at the old key once that was copied."""
        async with self.lock:
            self._check()
            if self.stream is not None and self.stream.started:
                await self._to_staging()
            yield

    async def materialize(self) -> None:
        """Bring every byte local, so the object in S3 may go away."""
        async with self.lock:
            if self.broken:
                return
            await self._to_staging()
            await self._fill(0, self.size)
            self.base_etag, self.base_size = None, 0
            self._drop_local_base()

    def rebase(self, etag: str | None, was: str | None) -> None:
        """Version ``was`` was copied (a rename, an attribute change): its
        copy, the same bytes, has ETag ``etag``.  Only what pointed at
        ``was`` moves: a file opened on an older version (another client
        replaced it since) stays on that one, and meets ESTALE as with any
        version replaced under it, rather than read on in the new one."""
        if etag is None or was is None:
            return
        if self.base_etag is not None and bare_etag(self.base_etag) == bare_etag(was):
            self.base_etag = etag
        if self.origin_etag is not None and bare_etag(self.origin_etag) == bare_etag(was):
            self.origin_etag = etag

    async def export(self, sink: Callable[[Iterable[bytes | memoryview]],
                                          Awaitable[tuple[T, int]]]) -> T | None:
        """Write-back: hand the whole content to ``sink``, which stages it
        durably and returns its result and a read-only descriptor of the
        staged copy; from then on the file is clean and reads what it does
        not hold from that copy (the local base, owned by this object from
        now on).  None if there was nothing to stage.  Holds the file's lock
        throughout, so the bytes cannot change under the sink."""
        async with self.lock:
            self._check()
            if not self.dirty or self.detached:
                return None
            if self.stream is not None:
                chunks: Iterable[bytes | memoryview] = [memoryview(self.stream.buf)]
            elif self.staging is not None:
                try:
                    await self._fill(0, self.size)
                except FsError as e:
                    if e.errno == errno.ESTALE:
                        # the version the changes were laid on left S3: they
                        # can never be staged whole (as flush's upload)
                        self._give_up(e)
                    raise
                chunks = self._staged_chunks(self.staging, self.size)
            else:
                assert self.size == 0
                chunks = []
            result, local_base_fd = await sink(chunks)
            self._drop_local_base()
            self.local_base_fd = local_base_fd
            if self.stream is not None:
                await self.stream.abort()
                self.stream = None
            if self.staging is not None:
                self.staging.dirty = Extents()
            self.base_size = self.size
            self.dirty = False
            self.meta_changed = False
            return result

    @staticmethod
    def _staged_chunks(staging: Staging, size: int) -> Iterator[bytes]:
        for start in range(0, size, EXPORT_CHUNK):
            yield staging.read(start, min(size, start + EXPORT_CHUNK) - start)

    async def close(self) -> None:
        """Release memory and disk.  Pending changes are dropped."""
        async with self.lock:
            if self.stream is not None:
                await self.stream.abort()
                self.stream = None
            if self.staging is not None:
                self.staging.close()
                self.staging = None
            self._drop_local_base()
