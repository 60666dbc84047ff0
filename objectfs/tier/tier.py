"""The mount's side of the local tier: reads through it, write-behind into it.

``read`` serves a byte range of one object version from cached blocks and
fetches only the missing runs of whole blocks (so a fully cached range
makes no S3 request at all).  Fetched blocks are handed to a write-behind
task instead of being written by the reader.  The queue is bounded in bytes
(QUEUE_BYTES): a fetch waits for room only when that much is already
waiting, that is when the local disk is slower than S3, so the first read
of a file runs at the speed of the slower of the two and leaves the whole
file cached.  (Skipping blocks instead kept the first read fast but, on a
busy machine, left a quarter of a 1 GiB file uncached.)  ``warm`` waits
until every block is stored.

Block loads run in worker threads: reading a file and checking its CRC
release the GIL, so they overlap with the FUSE loop.  Counters here are this
mount's; the store's totals are shared by every daemon using the directory.
"""

from __future__ import annotations

import fnmatch
import os
import sqlite3
import logging
import math
from typing import Awaitable, Callable, Iterable

import trio

from ..logs import Sparse
from ..tasks import leaves, open_nursery
from .store import BLOCK_SIZE, Closed, ObjectRef, TierStore

log = logging.getLogger(__name__)

# Bytes of fetched blocks waiting to be written; beyond it blocks are skipped.
QUEUE_BYTES = 64 << 20
# Use counts reach the index at least this often (seconds).
FLUSH_INTERVAL = 2.0
# Parallel disk operations of one mount.
DISK_THREADS = 4
# Deleted keys whose blocks the write-behind task drops together: it waits
# up to FORGET_WAIT seconds for more after the first (anything else queued
# ends the wait).  One trip to a disk thread costs about 150 us of CPU, the
# index lookup of a key never cached 20 us, and ``rm`` of many files sends
# one key a file.
FORGET_WAIT = 0.25
FORGET_BATCH = 1000
# Background fills of files read at random: GET size, and GETs in parallel
# for all fills of the mount together (so fills hold at most 64 MiB).  A
# random read of bytes the fill has not brought yet waits for it (its step is
# fetched next) instead of asking for them beside it, so the fill's
# throughput is what counts.  64 MiB multipart file on Swift, 2 cores, 6
# runs each, median seconds for 20 / 200 random 4 KiB reads: 8 MiB x 2:
# 0.182 / 0.212; x 4: 0.173-0.192 / 0.193-0.204; x 6: 0.172 / 0.201; x 8:
# 0.159-0.175 / 0.185-0.198; 16 MiB x 4: 0.227 / 0.268; 4 MiB x 16: 0.197 /
# 0.216 (s3fs in the same runs: 0.141-0.145 / 0.177-0.184; reads that asked
# S3 themselves beside a fill of 8 MiB x 2, as before: 0.222 / 0.276).
FILL_STEP = 8 << 20
FILL_CONCURRENCY = 8

Fetch = Callable[[int, int], Awaitable[bytes]]


class PinPolicy:
    """``cache_pin`` globs, matched against paths relative to the mount root."""

    def __init__(self, ns: str, root_prefix: str, globs: tuple[str, ...]):
        self.ns, self.root_prefix, self.globs = ns, root_prefix, globs

    def __call__(self, ns: str, key: str) -> bool:
        if not self.globs or ns != self.ns or not key.startswith(self.root_prefix):
            return False
        rel = key[len(self.root_prefix):]
        return any(fnmatch.fnmatchcase(rel, g) for g in self.globs)


class _Pending:
    """A block one reader is fetching (``data`` once it has it, until it is
    written); other readers wait for it instead of fetching it again."""

    __slots__ = ("data", "error", "done", "written")

    def __init__(self):
        self.data: memoryview | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()      # data or error is there
        self.written = trio.Event()   # stored (or given up): no longer shared


class _Fill:
    """A background fill: the steps not started yet (in the order they will
    be fetched), those being fetched, and an event set (and replaced) as
    each step ends."""

    __slots__ = ("todo", "busy", "changed")

    def __init__(self, size: int):
        self.todo: list[int] = list(range(0, size, FILL_STEP))
        self.busy: set[int] = set()
        self.changed = trio.Event()

    def start(self) -> int:
        step = self.todo.pop(0)
        self.busy.add(step)
        return step

    def done(self, step: int) -> None:
        self.busy.discard(step)
        self.changed.set()
        self.changed = trio.Event()

    def first(self, start: int, end: int) -> bool:
        """Put the steps holding ``[start, end)`` first; False if none of
        them is left to fetch or being fetched."""
        want = [s for s in self.todo if s < end and s + FILL_STEP > start]
        if want:
            self.todo[:] = want + [s for s in self.todo if s not in want]
        return bool(want) or any(s < end and s + FILL_STEP > start for s in self.busy)


class Tier:
    def __init__(self, store: TierStore, ns: str):
        self.store = store
        self.ns = ns
        # a full disk refuses every block: a line a minute, not one a block
        self._unstored, self._unrecorded = Sparse(log), Sparse(log)
        self.hits = 0            # blocks served from disk
        self.misses = 0          # blocks fetched from S3
        self.hit_bytes = 0
        self.miss_bytes = 0
        self.skipped = 0         # fetched blocks not cached (no room, or no writer)
        self.shared = 0          # blocks taken from another reader's fetch
        self.fills = 0           # files fetched whole in the background
        self._filling: dict[str, _Fill] = {}
        # blocks being fetched, or fetched and not yet written: (oid, blockno)
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._queued = 0
        self._room = trio.Event()   # set (and replaced) whenever the queue shrinks
        self._running = False
        self._send, self._recv = trio.open_memory_channel(math.inf)
        self._forgetting: list[str] = []   # forgets taken from the queue, not done yet
        self._disk = trio.CapacityLimiter(DISK_THREADS)
        self._fill_gets = trio.CapacityLimiter(FILL_CONCURRENCY)

    def ref(self, key: str, etag: str | None, size: int) -> ObjectRef | None:
        if etag is None or size <= 0:
            return None
        return ObjectRef(self.ns, key, etag, size)

    # -- reading ------------------------------------------------------------

    def _load(self, ref: ObjectRef, first: int,
              last: int) -> tuple[bytearray | None, list[memoryview | None]]:
        """The cached blocks among ``first..last``, read into one buffer
        (allocated at the first hit): (buffer, a view of it per cached
        block, None for the others).  When every block is cached the buffer
        is the answer, with no join."""
        buf: bytearray | None = None
        view = memoryview(b"")
        blocks: list[memoryview | None] = []
        for b in range(first, last + 1):
            if buf is None and self.store.has(ref, b):
                buf = bytearray(min(ref.size, (last + 1) * BLOCK_SIZE) - first * BLOCK_SIZE)
                view = memoryview(buf)
            piece = None
            if buf is not None:
                s = (b - first) * BLOCK_SIZE
                piece = view[s:s + ref.block_len(b)]
                if not self.store.load_into(ref, b, piece):
                    piece = None
            blocks.append(piece)
        return buf, blocks

    async def _blocks(self, ref: ObjectRef, start: int, end: int, fetch: Fetch,
                      wait: bool) -> tuple[int, list[bytes | memoryview | None],
                                           bytes | bytearray | None]:
        """The whole blocks covering ``[start, end)``: (first block, data,
        and one buffer holding them all in order when one GET brought every
        block or every block was cached, so the caller need not join them)."""
        first, last = start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        loaded, found = await trio.to_thread.run_sync(
            self._load, ref, first, last, limiter=self._disk)
        blocks: list[bytes | memoryview | None] = list(found)
        hit = [b for b in blocks if b is not None]
        self.hits += len(hit)
        self.hit_bytes += sum(len(b) for b in hit)
        # Blocks not on disk may be in memory: fetched by another reader and
        # waiting to be written, or being fetched right now.  Those are
        # shared, never fetched twice; the others are fetched and announced.
        waits: list[tuple[int, _Pending]] = []
        runs: list[tuple[int, int]] = []
        for i, b in enumerate(blocks):
            if b is not None:
                continue
            p = self._pending.get((ref.oid, first + i))
            if p is not None and p.data is not None:
                blocks[i] = p.data
                self.shared += 1
                if wait:
                    waits.append((i, p))  # warm: until it is stored
                continue
            if p is not None and not p.done.is_set():
                waits.append((i, p))
                continue
            self._pending[(ref.oid, first + i)] = _Pending()
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        whole: list[bytes | bytearray] = []
        if loaded is not None and len(hit) == len(blocks):
            whole.append(loaded)  # all cached: the buffer holds them in order

        async def get(i: int, j: int) -> None:
            s = (first + i) * BLOCK_SIZE
            e = min((first + j) * BLOCK_SIZE, ref.size)
            mine = [(first + k, self._pending[(ref.oid, first + k)]) for k in range(i, j)]
            try:
                data = await fetch(s, e)
            except BaseException as exc:
                self._abandon(ref, mine, exc)
                raise
            self.misses += j - i
            self.miss_bytes += len(data)
            if i == 0 and j == len(blocks) and len(data) == e - s:
                whole.append(data)
            view = memoryview(data)
            got = []
            for k in range(i, j):
                piece = view[(k - i) * BLOCK_SIZE:(k - i + 1) * BLOCK_SIZE]
                if len(piece) != ref.block_len(first + k):
                    break  # short: the object changed; the caller sees it
                blocks[k] = piece
                p = mine[k - i][1]
                p.data = piece
                p.done.set()
                got.append((first + k, piece))
            self._abandon(ref, mine[len(got):], None)
            if got:
                try:
                    await self._store(ref, got, wait)
                except BaseException:
                    self._written(ref, got)
                    raise

        async def share(i: int, p: _Pending) -> None:
            await p.done.wait()
            if p.data is not None:
                if blocks[i] is None:
                    blocks[i] = p.data
                    self.shared += 1
                if wait:
                    await p.written.wait()
            elif isinstance(p.error, Exception):
                raise p.error
            else:  # its reader was cancelled, or the object was short: ask S3
                s = (first + i) * BLOCK_SIZE
                data = await fetch(s, s + ref.block_len(first + i))
                self.misses += 1
                self.miss_bytes += len(data)
                if len(data) == ref.block_len(first + i):
                    blocks[i] = data

        if len(runs) == 1 and not waits:
            await get(*runs[0])
        elif runs or waits:
            async with open_nursery() as nursery:
                for i, j in runs:
                    nursery.start_soon(get, i, j)
                for i, p in waits:
                    nursery.start_soon(share, i, p)
        return first, blocks, whole[0] if whole else None

    def _abandon(self, ref: ObjectRef, mine: list[tuple[int, "_Pending"]],
                 error: BaseException | None) -> None:
        """Blocks this reader announced but will not bring: wake whoever
        waits for them (they re-raise ``error``, or fetch the block)."""
        for blockno, p in mine:
            if not p.done.is_set():
                p.error = error
                p.done.set()
            p.written.set()
            if self._pending.get((ref.oid, blockno)) is p:
                del self._pending[(ref.oid, blockno)]

    def _written(self, ref: ObjectRef, blocks: list[tuple[int, memoryview]]) -> None:
        """``blocks`` are on disk now (or will never be): forget them here."""
        for blockno, piece in blocks:
            p = self._pending.get((ref.oid, blockno))
            if p is not None and p.data is piece:
                del self._pending[(ref.oid, blockno)]
                p.written.set()

    async def read(self, ref: ObjectRef, start: int, end: int,
                   fetch: Fetch) -> bytes | bytearray | memoryview:
        """Bytes ``[start, end)`` of ``ref`` (``end`` at most its size), from
        cached blocks and ``fetch(s, e)`` for missing whole blocks."""
        first, blocks, whole = await self._blocks(ref, start, end, fetch, wait=False)
        lo = start - first * BLOCK_SIZE
        if whole is not None:  # one GET or one disk buffer has it all: no copy
            if lo == 0 and len(whole) == end - start:
                return whole
            return memoryview(whole)[lo:lo + end - start]
        return _join(first, blocks, start, end)

    async def peek(self, ref: ObjectRef, start: int,
                   end: int) -> bytes | bytearray | memoryview | None:
        """Bytes ``[start, end)`` of ``ref`` if every block covering them is
        on disk or already fetched into memory; None (and nothing fetched,
        nothing waited for) otherwise.  A random read that touches a block for
        the first time asks S3 for just its bytes instead of the whole block,
        and does not wait behind a background fill's GET.  Only the bytes
        asked for are read and copied (``TierStore.load_range``)."""
        parts: list[bytes | bytearray | memoryview | None] = []
        missing: list[tuple[int, int, int, int]] = []  # (part, block, lo, hi)
        for b, lo, hi in _spans(start, end):
            p = self._pending.get((ref.oid, b))
            if p is not None and p.data is not None:
                parts.append(memoryview(p.data)[lo:hi])
            else:
                missing.append((len(parts), b, lo, hi))
                parts.append(None)
        if missing:
            loaded = await trio.to_thread.run_sync(
                lambda: [self.store.load_range(ref, b, lo, hi) for _, b, lo, hi in missing],
                limiter=self._disk)
            for (i, *_), data in zip(missing, loaded):
                if data is None:
                    return None
                parts[i] = data
            self.hits += len(missing)
            self.hit_bytes += sum(len(parts[i]) for i, *_ in missing)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def peek_now(self, ref: ObjectRef, start: int,
                 end: int) -> bytes | bytearray | memoryview | None:
        """``peek`` without a worker thread, for the event loop: the bytes if
        every block covering them is in memory or on disk with its bytes in
        the page cache (``TierStore.read_now``); None otherwise, having
        waited for nothing, and the caller goes on to ``peek``.  A random
        read of a cached file then costs no thread round trip."""
        parts: list[bytes | bytearray | memoryview] = []
        read: list[bytearray] = []  # from disk (counted as hits, as in peek)
        for b, lo, hi in _spans(start, end):
            p = self._pending.get((ref.oid, b))
            if p is not None and p.data is not None:
                parts.append(memoryview(p.data)[lo:hi])
                continue
            data = self.store.read_now(ref, b, lo, hi)
            if data is None:
                return None
            parts.append(data)
            read.append(data)
        self.hits += len(read)
        self.hit_bytes += sum(len(d) for d in read)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def warm(self, ref: ObjectRef, start: int, end: int, fetch: Fetch) -> int:
        """Make sure ``[start, end)`` is cached; returns the bytes fetched."""
        before = self.miss_bytes
        await self._blocks(ref, start, end, fetch, wait=True)
        return self.miss_bytes - before

    def fill(self, ref: ObjectRef, fetch: Fetch, nursery: trio.Nursery) -> None:
        """Fetch every block of ``ref`` not cached yet, in the background
        (a file read at random: the reads that follow become local).  Blocks
        go through the usual path, so readers share them while they arrive;
        a failure only leaves the rest to be fetched when read."""
        if ref.oid in self._filling:
            return
        fill = self._filling[ref.oid] = _Fill(ref.size)
        self.fills += 1
        nursery.start_soon(self._fill, ref, fill, fetch)

    async def from_fill(self, ref: ObjectRef, start: int,
                        end: int) -> bytes | bytearray | memoryview | None:
        """Bytes ``[start, end)`` of ``ref`` through its background fill: the
        steps holding them are fetched next, and the caller waits for them
        rather than asking S3 for the same bytes beside the fill.  None if no
        fill is running, or it ended or passed them without bringing them;
        the caller then fetches them itself."""
        fill = self._filling.get(ref.oid)
        while fill is not None and fill.first(start, end):
            data = self.peek_now(ref, start, end)
            if data is not None:
                return data
            await fill.changed.wait()
            if self._filling.get(ref.oid) is not fill:
                break
        return None if fill is None else await self.peek(ref, start, end)

    async def _fill(self, ref: ObjectRef, fill: _Fill, fetch: Fetch) -> None:
        """The first failure (the object changed or went away, S3 down)
        stops the fill; it is logged, never raised: the fill runs in the
        mount's nursery, where an error beside the Cancelled of an unmount
        would end the mount loop with a traceback."""
        failed: list[BaseException] = []
        try:
            async with trio.open_nursery() as nursery:
                async def one() -> None:
                    try:
                        async with self._fill_gets:
                            s = fill.start()
                            try:
                                await self._blocks(ref, s, min(ref.size, s + FILL_STEP), fetch,
                                                   wait=False)
                            finally:
                                fill.done(s)
                    except* Exception as errors:  # the reads fetch what they need themselves
                        # A step's errors can come in one group with a
                        # cancellation (this nursery cancelled by another
                        # step's failure): the errors end here, the
                        # cancellation goes on to the nursery's scope.
                        failed.extend(leaves(errors))
                        nursery.cancel_scope.cancel()

                for _ in range(len(fill.todo)):
                    nursery.start_soon(one)
        finally:
            del self._filling[ref.oid]
            fill.changed.set()
            if failed:
                log.info("background fill of %r stopped: %s", ref.key, failed[0])

    # -- write-behind ------------------------------------------------------

    def offer(self, key: str, etag: str | None, data: bytes | bytearray) -> None:
        """Cache a whole object whose bytes are at hand (one just uploaded),
        if the write-behind queue has room."""
        ref = self.ref(key, etag, len(data))
        if ref is None:
            return
        view = memoryview(data)
        blocks = [(b, view[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) for b in range(ref.nblocks)]
        self._store_nowait(ref, blocks)

    async def _store(self, ref: ObjectRef, blocks: list[tuple[int, memoryview]],
                     wait: bool) -> None:
        if wait:
            try:
                await trio.to_thread.run_sync(self._put, ref, blocks, limiter=self._disk)
            finally:
                self._written(ref, blocks)
            return
        size = sum(len(b) for _, b in blocks)
        while self._running and self._queued and self._queued + size > QUEUE_BYTES:
            await self._room.wait()
        self._store_nowait(ref, blocks)

    def _store_nowait(self, ref: ObjectRef, blocks: list[tuple[int, memoryview]]) -> None:
        size = sum(len(b) for _, b in blocks)
        if not self._running or (self._queued and self._queued + size > QUEUE_BYTES):
            self.skipped += len(blocks)
            self._written(ref, blocks)
            return
        self._queued += size
        self._send.send_nowait((ref, blocks, size))

    async def forget(self, key: str) -> None:
        """``key`` was deleted or replaced through this mount: drop what is
        cached of it, after any of its blocks still queued (in the
        write-behind task, off the caller's path: until then the blocks are
        only held under a version nobody reads any more)."""
        if self._running:
            self._send.send_nowait(key)
        else:
            await trio.to_thread.run_sync(self._forget, [key], limiter=self._disk)

    def _forget(self, keys: list[str]) -> None:
        try:
            self.store.forget_keys(self.ns, keys)
        except Closed:
            pass
        except Exception:  # a broken disk must not break an unlink
            log.exception("could not drop the cached blocks of %d deleted key(s)", len(keys))

    async def _more_forgets(self, keys: list[str]):
        """Add the keys to forget that follow in the queue (within
        FORGET_WAIT) to ``keys``; the first item of another kind, which
        ends the wait, is returned to be handled next (else None)."""
        with trio.move_on_after(FORGET_WAIT):
            while len(keys) < FORGET_BATCH:
                item = await self._recv.receive()
                if not isinstance(item, str):
                    return item
                keys.append(item)
        return None

    def _put(self, ref: ObjectRef, blocks: list[tuple[int, memoryview]]) -> None:
        try:
            self.store.put(ref, blocks)
        except Closed:
            pass
        except (OSError, sqlite3.Error) as e:  # a full disk: one line, reads go on
            self._unstored.warning("could not store %d block(s) of %r in the local tier: %s",
                                   len(blocks), ref.key, e)
        except Exception:  # a broken disk must not break reads either
            log.exception("could not store %d block(s) of %r in the local tier",
                          len(blocks), ref.key)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The write-behind task (runs for the life of the mount)."""
        self._running = True
        task_status.started()
        try:
            await self._serve()
        finally:
            self._running = False
            self._room.set()  # nobody will make room any more: waiters give up

    async def _serve(self) -> None:
        last_flush = trio.current_time()
        held = None   # an item taken from the queue while gathering forgets
        while True:
            item, held = held, None
            if item is None:
                with trio.move_on_after(FLUSH_INTERVAL):
                    item = await self._recv.receive()
            if isinstance(item, str):
                keys = self._forgetting = [item]
                held = await self._more_forgets(keys)
                await trio.to_thread.run_sync(self._forget, keys, limiter=self._disk)
                self._forgetting = []
            elif item is not None:
                ref, blocks, size = item
                try:
                    await trio.to_thread.run_sync(self._put, ref, blocks, limiter=self._disk)
                finally:
                    self._written(ref, blocks)
                    self._queued -= size
                    self._room.set()
                    self._room = trio.Event()
                    # the blocks view receive buffers: holding them while
                    # waiting for the next item kept one out of use for good
                    item = blocks = None
            if trio.current_time() - last_flush >= FLUSH_INTERVAL:
                last_flush = trio.current_time()
                try:
                    await trio.to_thread.run_sync(self.store.flush, limiter=self._disk)
                except Closed:
                    return
                except (OSError, sqlite3.Error) as e:  # a full disk: one line, as in _put
                    self._unrecorded.warning("could not record block use in the local tier: %s",
                                             e)
                except Exception:
                    log.exception("could not record block use in the local tier")

    def close(self) -> None:
        """At unmount, once the write-behind task has stopped: drop the
        blocks of the deleted or replaced keys whose forget was still
        queued, then close the index.  Blocks still queued to be written
        are not written (a later read fetches them again), but a forget
        left undone would keep a deleted file's blocks on disk until
        evicted."""
        keys, self._forgetting = self._forgetting, []
        while True:
            try:
                item = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(item, str):
                keys.append(item)
        if keys:
            self._forget(keys)
        self.store.close()

    # -- figures -------------------------------------------------------------

    def stats(self) -> dict:
        s = self.store.stats()
        s.update(hits=self.hits, misses=self.misses, hit_bytes=self.hit_bytes,
                 miss_bytes=self.miss_bytes, skipped=self.skipped, shared=self.shared,
                 fills=self.fills,
                 queued_bytes=self._queued, compress="zstd" if self.store.compress else "none")
        return s


def _spans(start: int, end: int) -> Iterable[tuple[int, int, int]]:
    """(block, lo, hi) for each block covering ``[start, end)``: the part
    ``[lo, hi)`` of the block that lies in the range."""
    for b in range(start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1):
        yield b, max(start - b * BLOCK_SIZE, 0), min(end - b * BLOCK_SIZE, BLOCK_SIZE)


def _join(first: int, blocks: list[bytes | memoryview | None], start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` out of consecutive blocks from block ``first``,
    copied once (a 4 KiB read of a 1 MiB block copies 4 KiB); up to the
    first missing or short block (a short fetch: what there is)."""
    out = []
    for i, b in enumerate(blocks):
        if b is None:
            break
        base = (first + i) * BLOCK_SIZE
        a, z = max(start, base) - base, min(end, base + len(b)) - base
        if z > a:
            whole = a == 0 and z == len(b) and isinstance(b, bytes)
            out.append(b if whole else memoryview(b)[a:z])
        if len(b) < BLOCK_SIZE:
            break
    return b"".join(out)  # a single whole bytes block is returned as it is


def tier_namespace(endpoint_url: str | None, bucket: str) -> str:
    """What tells buckets of the same name at different endpoints apart."""
    return f"{endpoint_url or 'aws'}|{bucket}"


def open_tier(cfg, root_prefix: str) -> Tier | None:
    """The tier for a mount's configuration; None when ``cache_size`` is 0 or
    the directory is unusable (the mount then works without it, and says so)."""
    from ..config import cache_root

    if not cfg.cache_size:
        return None
    root = cache_root(cfg)
    ns = tier_namespace(cfg.endpoint_url, cfg.bucket)
    policy = PinPolicy(ns, root_prefix, tuple(cfg.cache_pin or ()))
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        store = TierStore(root, cfg.cache_size, compress=cfg.cache_compress == "zstd",
                          extra_pinned=policy)
        if policy.globs:
            store.apply_policy(ns)
    except (OSError, sqlite3.Error) as e:
        log.warning("local tier disabled: cannot use %s (%s)", root, e)
        return None
    return Tier(store, ns)
