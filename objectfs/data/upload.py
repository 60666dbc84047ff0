"""Uploads: a streaming multipart writer, and the upload of a staged file.

``StreamingUpload`` takes the bytes of a file written sequentially from
offset 0.  Nothing is sent until the first part is full; from then on each
full part is uploaded in the background while the writer goes on, up to
``upload_concurrency`` parts in flight for the mount, with the bytes held
counted against the mount's write budget (when it is spent, the file moves
to staging on disk: memory does not grow).  ``finish`` sends the tail and
completes the upload, or sends one PutObject if the file never filled a part.
A failed part aborts the whole upload and the error is raised by ``finish``
(and so reaches close/fsync as EIO); it is never dropped.

``upload_staged`` uploads a file whose bytes are partly local (a staging
file) and partly the unchanged object in S3: parts that were not touched
locally are copied server-side with UploadPartCopy instead of downloaded and
re-uploaded.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
from typing import Awaitable, Callable

import trio

from ..errors import FsError, ObjectNotFound, PreconditionFailed, Stale, StoreError, upload_error
from ..store.base import MIN_PART_SIZE, ObjectInfo, Part
from .context import DataContext, ObjectHeaders
from .parts import layout, part_size
from ..tasks import open_nursery

log = logging.getLogger(__name__)


class StreamingUpload:
    def __init__(self, ctx: DataContext, key_fn: Callable[[], str],
                 headers_fn: Callable[[], ObjectHeaders]):
        self.ctx = ctx
        # the file's current key, asked again when the object is first sent
        # (CreateMultipartUpload or the single PutObject): a rename before
        # then (nothing sent yet, so nothing for the rename to complete)
        # must not leave the upload at the old name
        self.key_fn = key_fn
        self.key = key_fn()
        # evaluated when the object's metadata is sent (CreateMultipartUpload
        # or the single PutObject), so attributes set until then are stored
        self.headers_fn = headers_fn
        self.headers: ObjectHeaders | None = None
        self.size = 0               # bytes appended so far
        self.buf = bytearray()      # the part being filled
        self.buf_start = 0          # file offset of buf[0]
        self._held = 0              # budget bytes held by buf
        self.upload_id: str | None = None
        self.parts: dict[int, Part] = {}
        self.next_part = 1
        self.error: BaseException | None = None
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.closed = False

    @property
    def started(self) -> bool:
        """True once a multipart upload exists on the server."""
        return self.upload_id is not None

    async def append(self, data: bytes | memoryview) -> int:
        """Buffer ``data``, sending each part as it fills; returns how many
        bytes were taken.

        Takes fewer than ``len(data)`` (perhaps none) when the write budget
        is spent, and the caller moves the file to staging instead.  Waiting
        here could deadlock: with more writers than the budget has parts
        (16 writers, 256M, 24M parts), every writer can end up holding part
        of a part, none full, each waiting for the others; and a program
        writing to many files in turn waits on one file while the others
        hold the budget.
        """
        view = memoryview(data)
        taken = 0
        while len(view):
            room = part_size(self.next_part, self.ctx.part_size) - len(self.buf)
            chunk = view[:room]
            if not self.ctx.write_budget.try_acquire(len(chunk)):
                break
            self._held += len(chunk)
            self.buf += chunk
            self.size += len(chunk)
            taken += len(chunk)
            view = view[len(chunk):]
            if len(self.buf) == part_size(self.next_part, self.ctx.part_size):
                await self._ship()
        if self.error is not None:
            raise upload_error(self.error, f"upload of {self.key!r}")
        return taken

    def read_tail(self, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` if they are still in the buffer, else None."""
        if start < self.buf_start:
            return None
        return bytes(self.buf[start - self.buf_start:end - self.buf_start])

    def _renamed(self) -> None:
        """Take the file's current key, before anything is sent."""
        with contextlib.suppress(FsError):   # out of the tree: the last one known
            self.key = self.key_fn()

    async def _ship(self) -> None:
        if self.upload_id is None:
            self._renamed()
            self.headers = h = self.headers_fn()
            self.upload_id = await self.ctx.store.create_multipart(
                self.key, metadata=h.metadata, content_type=h.content_type, headers=h.headers)
        body, held = self.buf, self._held
        number = self.next_part
        self.next_part += 1
        self.buf_start += len(body)
        self.buf = bytearray()
        self._held = 0
        token = object()  # the part's claim on an upload slot
        await self.ctx.upload_slots.acquire_on_behalf_of(token)
        self._inflight += 1
        self._idle = trio.Event()
        self.ctx.nursery.start_soon(self._send, number, body, held, token)

    async def _send(self, number: int, body: bytearray, held: int, token: object) -> None:
        try:
            if self.error is None:
                self.parts[number] = await self.ctx.store.upload_part(
                    self.key, self.upload_id, number, body)
        except Exception as e:  # recorded; finish() raises it
            log.warning("part %d of %r failed: %s", number, self.key, e)
            if self.error is None:
                self.error = e
        finally:
            self.ctx.upload_slots.release_on_behalf_of(token)
            self.ctx.write_budget.release(held)
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def finish(self) -> ObjectInfo:
        """Send what is left and make the object.

        If no multipart upload was started, the file goes up in one
        PutObject; when that fails, the buffer is kept so the caller can save
        the bytes.  A failed multipart upload is aborted and its parts are
        gone.
        """
        if self.upload_id is None:
            self._renamed()
            h = self.headers_fn()
            info = await self.ctx.store.put(
                self.key, self.buf, metadata=h.metadata, content_type=h.content_type,
                headers=h.headers)
            self._release_buf()
            self.closed = True
            return info
        try:
            if self.buf:
                await self._ship()
            await self._idle.wait()
            if self.error is not None:
                raise self.error
            parts = [self.parts[n] for n in sorted(self.parts)]
            info = await self.ctx.store.complete_multipart(self.key, self.upload_id, parts)
            self.closed = True
            h = self.headers
            assert h is not None
            return ObjectInfo(key=self.key, size=self.size, etag=info.etag,
                              mtime_ns=info.mtime_ns, metadata=dict(h.metadata),
                              content_type=h.content_type, headers=dict(h.headers))
        except Exception as e:
            await self.abort()
            raise upload_error(e, f"upload of {self.key!r}") from e

    def _release_buf(self) -> None:
        self.ctx.write_budget.release(self._held)
        self._held = 0
        self.buf = bytearray()

    async def abort(self) -> None:
        """Drop everything; abort the server-side upload.  Never raises."""
        self.closed = True
        self._release_buf()
        with trio.CancelScope(shield=True):
            await self._idle.wait()
            if self.upload_id is not None:
                upload_id, self.upload_id = self.upload_id, None
                await self.ctx.abort_upload(self.key, upload_id)


ReadLocal = Callable[[int, int], Awaitable[bytes]]


async def upload_staged(ctx: DataContext, key: str, size: int, headers: ObjectHeaders, *,
                        touched: Callable[[int, int], bool], read: ReadLocal,
                        base_key: str | None, base_etag: str | None,
                        base_size: int,
                        small_parts: list[tuple[int, int, int]] | None = None) -> ObjectInfo:
    """Upload a file of ``size`` bytes to ``key``.

    ``read(start, end)`` returns the file's bytes (fetching from the base
    object where needed); ``touched(start, end)`` says whether any byte of
    the range differs from the base object at ``base_key``/``base_etag``
    (the first ``base_size`` bytes are the base's).  Untouched whole parts
    within the base are copied server-side.

    A file that fits one PutObject goes up in one, unless ``small_parts``
    (parts.mix_layout: its unchanged start and end, not at hand locally,
    copied server-side, the changed bytes between them sent) is given: so an
    append or an edit to a file of a few MiB neither downloads nor re-sends
    what did not change.  A server that refuses the copy (no
    UploadPartCopy) gets the one PutObject instead, from then on.
    """
    mp = functools.partial(_multipart, ctx, key, size, headers, touched=touched, read=read,
                           base_key=base_key, base_etag=base_etag, base_size=base_size)
    if size > ctx.single_put_max:
        return await mp(layout(size, ctx.part_size))
    if base_key is not None and small_parts and ctx.small_copies:
        try:
            return await mp(small_parts)
        except FsError as e:
            cause = e.__cause__ if isinstance(e.__cause__, StoreError) else e
            if not (isinstance(cause, StoreError) and _refused(cause)):
                raise
            ctx.small_copies = False
            log.warning("the server refused a server-side copy (%s): files up to part_size "
                        "are sent whole from now on", cause)
    await ctx.acquire_for_upload(size)
    try:
        body = await read(0, size)
        if base_key is None:
            return await ctx.store.put(key, body, metadata=headers.metadata,
                                       content_type=headers.content_type,
                                       headers=headers.headers)
        # The base's bytes may have come from a cache (a small file's body
        # fetched with its attributes, the local tier), not from a GET pinned
        # to its ETag that S3 would have refused: the PUT checks it itself.
        try:
            return await put_conditional(ctx, key, body, headers, if_match=base_etag)
        except PreconditionFailed:
            raise Stale("object changed in S3 while open") from None
        except ObjectNotFound as e:
            if e.code == "NoSuchBucket":
                raise
            raise Stale("object deleted in S3 while open") from None
    except StoreError as e:
        raise upload_error(e, f"upload of {key!r}") from e
    finally:
        ctx.write_budget.release(size)


async def put_conditional(ctx: DataContext, key: str, body: bytes | bytearray,
                          headers: ObjectHeaders, *, if_match: str | None = None,
                          if_none_match: bool = False) -> ObjectInfo:
    """PutObject only if S3 holds the version ``if_match`` (or, with
    ``if_none_match``, nothing) under ``key``.  A server that refuses the
    condition (Swift's s3api, older MinIO and Ceph answer 501) gets the plain
    PUT, and so does every later one with that condition for the mount
    (``ctx.refused_conditions``): there the check is the caller's alone.  The
    other condition is still tried: a server may take If-None-Match and not
    If-Match (AWS added them two years apart)."""
    put = functools.partial(ctx.store.put, key, body, metadata=headers.metadata,
                            content_type=headers.content_type, headers=headers.headers)
    kind = "If-Match" if if_match is not None else "If-None-Match" if if_none_match else None
    if kind is None or kind in ctx.refused_conditions:
        return await put()
    try:
        return await put(if_match=if_match, if_none_match=if_none_match)
    except FsError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
    if kind not in ctx.refused_conditions:
        log.info("the server refuses %s on PutObject; uploads rely on checks before them", kind)
        ctx.refused_conditions.add(kind)
    return await put()


def _refused(e: StoreError) -> bool:
    """An answer meaning the server does not take this kind of request."""
    return e.status in (400, 405, 501) or e.code in (
        "NotImplemented", "InvalidRequest", "InvalidArgument", "MethodNotAllowed")


async def _multipart(ctx: DataContext, key: str, size: int, headers: ObjectHeaders,
                     spans: list[tuple[int, int, int]], *,
                     touched: Callable[[int, int], bool], read: ReadLocal,
                     base_key: str | None, base_etag: str | None,
                     base_size: int) -> ObjectInfo:
    """Upload ``spans`` (number, start, end) as the parts of ``key``: those
    untouched within the base are copied server-side, the others sent."""
    upload_id = await ctx.store.create_multipart(key, metadata=headers.metadata,
                                                 content_type=headers.content_type,
                                                 headers=headers.headers)
    parts: list[Part] = []
    copied = 0
    try:
        async def send(number: int, start: int, end: int) -> None:
            body = await read(start, end)
            parts.append(await ctx.store.upload_part(key, upload_id, number, body))

        async def one(number: int, start: int, end: int) -> None:
            nonlocal copied
            n = end - start
            async with ctx.upload_slots:
                if base_key is not None and end <= base_size and not touched(start, end) \
                        and (n >= MIN_PART_SIZE or end == size):
                    parts.append(await ctx.store.upload_part_copy(
                        key, upload_id, number, base_key, start, end, src_etag=base_etag))
                    copied += n
                    return
                if ctx.write_budget.try_acquire(n):
                    try:
                        await send(number, start, end)
                    finally:
                        ctx.write_budget.release(n)
                    return
            # The budget is spent: wait for it holding no upload slot, since
            # making room may take one (an idle stream moved to disk sends
            # its last part to complete its multipart upload).
            await ctx.acquire_for_upload(n)
            try:
                async with ctx.upload_slots:
                    await send(number, start, end)
            finally:
                ctx.write_budget.release(n)

        async with open_nursery() as nursery:
            for number, start, end in spans:
                nursery.start_soon(one, number, start, end)
        parts.sort(key=lambda p: p.number)
        info = await ctx.store.complete_multipart(key, upload_id, parts)
    except BaseException as e:
        with trio.CancelScope(shield=True):
            await ctx.abort_upload(key, upload_id)
        if isinstance(e, Exception):
            raise upload_error(e, f"upload of {key!r}") from e
        raise
    if copied:
        log.debug("upload of %r: %d of %d bytes copied server-side", key, copied, size)
    return ObjectInfo(key=key, size=size, etag=info.etag, mtime_ns=info.mtime_ns,
                      metadata=dict(headers.metadata), content_type=headers.content_type,
                      headers=dict(headers.headers))
