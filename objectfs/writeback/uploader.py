"""Write-back: upload staged files in the background, after a delay.

``WriteBack`` owns the journal (``journal.py``) and a scheduler task in the
mount's nursery.  Each staged file is a ``Pending``; there is at most one
per key that is not yet being uploaded, since staging a key again replaces
its previous entry (coalescing).  Entries recovered from an earlier mount are
handed to the filesystem, which shows them like entries staged by this mount;
one it cannot show (``recovered`` stays set) is one this mount's writes were
not based on: it is uploaded first, and a newer version of its key then
follows the conflict rule below.
Entries of one key are uploaded one at a time, oldest first.  An entry
becomes due ``delay`` seconds
after it was last staged, but no later than ``MAX_DEBOUNCE`` delays after it
was first staged, so a file rewritten every few seconds still reaches S3.

Upload of one entry (its ``lock`` held, so rename and unlink wait for it):

1. HEAD the key.  Its ETag is compared with the entry's *base ETag* (the
   object the file was opened from; None for a file created new):
   unchanged (or deleted in S3 meanwhile) -> upload to the key; changed ->
   a conflict, unless the object already holds exactly our bytes (its ETag
   is our MD5, or our parts' for a multipart upload: we uploaded it before
   a crash removed the entry).
2. The PUT is conditional where the server supports it (If-Match on the
   ETag the HEAD saw, If-None-Match: * when the key was absent), so a
   change between the HEAD and the PUT is a conflict as well.  Large files
   go up as a multipart upload, guarded by the HEAD alone.
3. On a conflict the remote object is kept and ours is uploaded beside it as
   ``NAME.objectfs-conflict-<UTC time>`` (see ``conflict_key``; ``-2``,
   ``-3``... when that name is taken), with a warning in the log.

A failed upload is retried with exponential back-off (from
``RETRY_FIRST`` to ``RETRY_MAX`` seconds); the entry stays on disk.  The
filesystem hears of the outcome through ``on_done(pending, info, conflict)``.
"""

from __future__ import annotations

import errno
import itertools
import logging
import time
from dataclasses import replace
from typing import Callable

import trio

from ..data.context import DataContext, ObjectHeaders
from ..data.parts import layout
from ..data.upload import put_conditional, upload_staged
from ..errors import FsError, NotFound, PreconditionFailed
from ..namespace.keys import NAME_MAX
from ..store.base import MAX_KEY_BYTES, ObjectInfo, bare_etag
from ..tasks import first_error
from .journal import SPARE_BATCH, Entry, Journal, Manifest, data_multipart_etag

log = logging.getLogger(__name__)

# An entry staged again and again is uploaded at the latest this many delays
# after it was first staged.
MAX_DEBOUNCE = 3
# Files uploaded at the same time (each may use upload_concurrency parts).
FILE_CONCURRENCY = 8
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
CONFLICT_INFIX = ".objectfs-conflict-"


def conflict_key(key: str, wall_ns: int | None = None, n: int = 1) -> str:
    """Where our version goes when the remote one changed: beside it, named
    by the UTC time, e.g. ``a/b.txt.objectfs-conflict-20260101T120000Z``
    (the ``n``-th copy made in that second ends in ``-n``).  The name is cut
    short where it must be for the copy's name to fit in 255 bytes and its
    key in 1,024, so it shows in the mount and S3 takes it."""
    t = time.gmtime((wall_ns if wall_ns is not None else time.time_ns()) // 1_000_000_000)
    suffix = (CONFLICT_INFIX + time.strftime("%Y%m%dT%H%M%SZ", t)
              + (f"-{n}" if n > 1 else "")).encode()
    head, _, name = key.rpartition("/")
    raw = name.encode("utf-8", "surrogatepass")
    room = min(NAME_MAX, MAX_KEY_BYTES - len(key.encode("utf-8", "surrogatepass"))
               + len(raw)) - len(suffix)
    raw = raw[:max(room, 1)]
    while True:   # not in the middle of a character
        try:
            name = raw.decode("utf-8", "surrogatepass")
            break
        except UnicodeDecodeError:
            raw = raw[:-1]
    return (head + "/" if head else "") + name + suffix.decode()


class Pending:
    """One staged file waiting for (or in) its upload."""

    def __init__(self, entry: Entry, due: float, first: float):
        self.entry = entry
        self.due = due
        self.first = first
        self.lock = trio.Lock()
        self.busy = False           # an upload task holds it
        self.finished = False       # uploaded or cancelled: the entry is gone
        self.error: Exception | None = None
        self.attempts = 0
        self.attempted = trio.Event()  # set after each upload attempt
        self.successor: Pending | None = None  # the entry that superseded this one
        # an older entry of the key whose upload was under way when this one
        # was staged (kept until that attempt ends; see WriteBack.settle_older)
        self.predecessor: Pending | None = None
        # left by an earlier mount and not shown by this one (see
        # WriteBack.start): never superseded by a version staged in this
        # mount (which was not based on it), uploaded before it
        self.recovered = False
        self.node = None            # the inode showing it (set by the filesystem)

    @property
    def key(self) -> str:
        return self.entry.manifest.key

    @property
    def manifest(self) -> Manifest:
        return self.entry.manifest


DoneFn = Callable[[Pending, ObjectInfo, bool], None]


class WriteBack:
    def __init__(self, ctx: DataContext, journal: Journal, *, delay: float,
                 accept: Callable[[Manifest], bool], on_done: DoneFn):
        self.ctx = ctx
        self.journal = journal
        self.delay = delay
        self.accept = accept
        self.on_done = on_done
        self.pending: dict[str, Pending] = {}      # newest entry per key
        self.active: set[Pending] = set()          # every entry on disk
        # keys with an upload in progress: a newer entry of the same key
        # waits for it (else it would race it and look like a conflict)
        self._busy_keys: set[str] = set()
        self._wake = trio.Event()
        self._limiter = trio.CapacityLimiter(FILE_CONCURRENCY)
        self._nursery: trio.Nursery | None = None
        self._refilling = False      # spare entry files being made
        # group commit of removals after uploads (see _sync_journal)
        self._sync_wanted = 0
        self._sync_done = 0
        self._sync_running = False
        self._synced = trio.Event()
        # keys with a version being written to the journal, and the entries
        # of those keys whose upload finished meanwhile: removed only once
        # the new version's manifest names that upload as its base (stage)
        self._staging: dict[str, int] = {}
        self._uploaded_meanwhile: dict[str, list[Entry]] = {}

    async def _io(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args)

    # -- lifecycle ------------------------------------------------------------

    async def start(self, nursery: trio.Nursery,
                    show: Callable[[Pending], None] = lambda p: None) -> list[Pending]:
        """Open the journal, adopt what dead mounts left for this bucket and
        start the scheduler.  Recovered entries are due at once.

        ``show`` is called with each recovered entry before any upload can
        start; a filesystem that shows it (sets ``node``) clears its
        ``recovered`` flag, so it is then treated exactly like an entry
        staged in this mount."""
        await self._io(self.journal.open)
        self._nursery = nursery
        self._refill()   # the first closes need not wait for entry files
        recovered = await self._io(self.journal.adopt, self.accept, self._etags)
        out = []
        now = trio.current_time()
        for entry in recovered:
            log.warning("write-back: recovered %r (%d bytes) staged before the last mount "
                        "ended; uploading it", entry.manifest.key, entry.manifest.size)
            p = Pending(entry, now, now)
            p.recovered = True
            self.pending[p.key] = p
            self.active.add(p)
            out.append(p)
        for p in out:
            show(p)
        nursery.start_soon(self._run, nursery)
        return out

    def close(self) -> None:
        self.journal.close()

    def _kick(self) -> None:
        self._wake.set()

    async def _run(self, nursery: trio.Nursery) -> None:
        while True:
            now = trio.current_time()
            nxt = float("inf")
            waiting: set[str] = set()   # keys with an older entry still to go
            for p in sorted(self.active, key=lambda p: p.manifest.seq):
                # one upload per key at a time, in staging order
                blocked = p.busy or p.key in self._busy_keys or p.key in waiting
                waiting.add(p.key)
                if blocked:
                    continue
                if p.due <= now:
                    p.busy = True
                    self._busy_keys.add(p.key)
                    nursery.start_soon(self._upload, p)
                else:
                    nxt = min(nxt, p.due)
            with trio.move_on_at(nxt):
                await self._wake.wait()
            self._wake = trio.Event()

    # -- staging --------------------------------------------------------------

    async def stage(self, manifest: Manifest, chunks,
                    attach: Callable[[Pending], None] = lambda p: None,
                    base_fn: Callable[[], str | None] | None = None) -> Pending:
        """Write a staged file durably; it replaces the key's previous entry.

        ``base_fn`` says what S3 should hold now; it is asked again once the
        bytes are on disk, since an upload of this key may have finished
        meanwhile (then the manifest is corrected).  ``attach`` is called with
        the new entry before anything else can happen to it (its upload may
        finish before this returns)."""
        started = time.perf_counter()
        key = manifest.key
        self._staging[key] = self._staging.get(key, 0) + 1
        try:
            entry = await self._io(self.journal.stage, manifest, chunks)
            took = time.perf_counter() - started
            while base_fn is not None and base_fn() != entry.manifest.base_etag:
                await self._persist(entry, replace(entry.manifest, base_etag=base_fn()))
        except BaseException:
            await self._staged_key(key)
            raise
        # (no await from the last look at base_fn until the entry is pending:
        # an upload of the key ending meanwhile corrects it, see _upload)
        left = self._staging_done(key)
        now = trio.current_time()
        old = self.pending.get(manifest.key)
        first = old.first if old is not None else now
        p = Pending(entry, min(now + self.delay, first + MAX_DEBOUNCE * self.delay), first)
        attach(p)
        log.debug("write-back: staged %r (%d bytes, base %s) as %s; staged in %.2f ms "
                  "(%.2f ms of it syncing)", p.key, p.manifest.size, p.manifest.base_etag,
                  entry.id, took * 1e3, entry.sync_s * 1e3)
        self.pending[p.key] = p
        self.active.add(p)
        if old is not None and not old.recovered:
            old.successor = p
            if old.busy:
                p.predecessor = old   # its upload goes on; a failure ends it
            else:
                await self.drop(old, lazy=True)
        await self._remove_uploaded(*left)
        self._kick()
        self._refill()
        return p

    def _staging_done(self, key: str) -> list[Entry]:
        """A version of ``key`` is staged (or failed to be): the entries of
        the key uploaded meanwhile, which may go once no other staging of it
        is under way."""
        self._staging[key] -= 1
        if self._staging[key]:
            return []
        del self._staging[key]
        return self._uploaded_meanwhile.pop(key, [])

    async def _staged_key(self, key: str) -> None:
        await self._remove_uploaded(*self._staging_done(key))

    def _refill(self) -> None:
        """Make spare entry files in the background before they run out, so
        that a close rarely waits for a batch of them."""
        if self._refilling or self._nursery is None \
                or self.journal.spares >= SPARE_BATCH // 2:
            return
        self._refilling = True

        async def refill() -> None:
            try:
                await self._io(self.journal.make_spares)
            except OSError as e:
                # staging makes them itself (and reports the error) if need be
                log.warning("write-back: cannot prepare entry files: %s", e)
            finally:
                self._refilling = False

        self._nursery.start_soon(refill)

    async def drop(self, p: Pending, lazy: bool = False) -> None:
        """Forget a staged file (unlinked, replaced).  The caller holds
        ``p.lock``, or knows no upload of it is in progress.  ``lazy``: it
        was replaced by a newer entry of its key (see ``Journal.remove``)."""
        p.finished = True
        self.active.discard(p)
        if self.pending.get(p.key) is p:
            del self.pending[p.key]
        p.attempted.set()
        await self._io(self.journal.remove, p.entry, lazy)

    async def _sync_journal(self) -> None:
        """Make the removals done so far in this mount's journal directory
        durable: one fsync of the directory shared by every upload that
        finished meanwhile (group commit), instead of one per upload."""
        self._sync_wanted += 1
        ticket = self._sync_wanted
        while self._sync_done < ticket:
            if self._sync_running:
                await self._synced.wait()
                continue
            self._sync_running = True
            target = self._sync_wanted
            try:
                await self._io(self.journal.sync)
                self._sync_done = max(self._sync_done, target)
            finally:
                self._sync_running = False
                synced, self._synced = self._synced, trio.Event()
                synced.set()

    async def _persist(self, entry: Entry, manifest: Manifest) -> None:
        """Change an entry's manifest: in memory at once (so every decision
        from now on sees it), then on disk."""
        entry.manifest = manifest
        await self._io(self.journal.rewrite, entry, manifest)

    async def promise(self, p: Pending, **changes) -> None:
        """Make a change of ``p``'s manifest durable for a recovery only, ahead
        of the change itself (``rewrite``): a rename of a staged file over
        another is re-targeted in the journal before the other file's staged
        version or object goes, so a kill in between leaves a file at the
        name.  A newer ``seq`` makes it win over the replaced version's
        entry at recovery.  ``promise(p)`` alone takes it back."""
        await self._io(self.journal.promise, p.entry, replace(p.manifest, **changes))

    async def rewrite(self, p: Pending, **changes) -> None:
        """Change the manifest (key on rename, metadata on chmod...)."""
        old_key = p.key
        await self._persist(p.entry, replace(p.manifest, **changes))
        if p.key != old_key:
            if self.pending.get(old_key) is p:
                del self.pending[old_key]
            displaced = self.pending.get(p.key)
            self.pending[p.key] = p
            if displaced is not None and displaced is not p and not displaced.busy:
                await self.drop(displaced)
        self._kick()

    # -- waiting --------------------------------------------------------------

    async def settle_older(self, p: Pending) -> None:
        """Wait for the upload of an older version of ``p``'s key that was
        under way when ``p`` was staged: an unlink or rename must not be
        overtaken by it (the old version would come back)."""
        older = p.predecessor
        while older is not None:
            async with older.lock:   # held by its upload attempt
                if not older.finished:
                    await self.drop(older, lazy=True)
            older, p.predecessor = older.predecessor, None

    async def sync(self, p: Pending) -> None:
        """Upload ``p`` (or the entry that superseded it) now and wait (fsync);
        raises the upload's error."""
        while True:
            while p.finished and p.successor is not None:
                p = p.successor
            if p.finished:
                return
            event = p.attempted
            attempts = p.attempts
            if not p.busy:
                p.due = trio.current_time()
                self._kick()
            await event.wait()
            if not p.finished and p.attempts > attempts and p.error is not None:
                raise p.error
            if p.attempted is event:
                p.attempted = trio.Event()

    async def drain(self, timeout: float) -> list[str]:
        """Upload everything now; returns the keys still pending after ``timeout``
        (0: do not wait, and leave every entry to its delay or the next mount)."""
        if timeout <= 0:
            return sorted(p.key for p in self.active)
        with trio.move_on_after(timeout):
            while self.active:
                now = trio.current_time()
                for p in list(self.active):
                    # a failed entry is retried once a second here, not in
                    # a tight loop against a server that keeps refusing it
                    if not p.busy:
                        p.due = now if p.error is None else min(p.due, now + RETRY_FIRST)
                self._kick()
                p = next(iter(self.active))
                with trio.move_on_after(1):
                    event = p.attempted
                    await event.wait()
                    if p.attempted is event:
                        p.attempted = trio.Event()
        return sorted(p.key for p in self.active)

    # -- upload ---------------------------------------------------------------

    async def _upload(self, p: Pending) -> None:
        key = p.key
        try:
            async with self._limiter, p.lock:
                if p.finished:
                    return
                p.attempts += 1
                failed: BaseException | None = None
                try:
                    info, conflict = await self._send(p)
                except* Exception as group:
                    # An upload failing as the mount stops can end in one
                    # group with the unmount's Cancelled: the failure is
                    # recorded (the file stays staged), the cancellation goes
                    # on; neither reaches the mount's nursery as an error.
                    failed = first_error(group)
                if failed is not None:
                    if p.successor is not None and not p.successor.finished:
                        # superseded while it was being sent: the newer
                        # version carries its bytes, so it is not retried
                        # (the newer one would wait behind its back-off)
                        await self.drop(p, lazy=True)
                        return
                    self._failed(p, failed)
                    return
                p.error = None
                p.finished = True
                self.active.discard(p)
                newer = self.pending.get(p.key)
                if newer is p:
                    del self.pending[p.key]
                elif newer is not None and not conflict and not p.recovered \
                        and newer.manifest.base_etag == p.manifest.base_etag:
                    # staged again while we uploaded: its base is now our object
                    await self._persist(newer.entry, replace(newer.manifest,
                                                             base_etag=info.etag))
                self.on_done(p, info, conflict)
                with trio.CancelScope(shield=True):
                    if key in self._staging and not p.recovered:
                        # a newer version being staged still expects what
                        # this one replaced: a crash before its manifest is
                        # corrected must find this entry (see adopt); one
                        # not based on a recovered entry is never corrected
                        self._uploaded_meanwhile.setdefault(key, []).append(p.entry)
                    else:
                        await self._remove_uploaded(p.entry)
        finally:
            p.busy = False
            self._busy_keys.discard(key)
            p.attempted.set()
            self._kick()

    async def _remove_uploaded(self, *entries: Entry) -> None:
        """Remove the entries of finished uploads (their removal is made
        durable by one fsync of this mount's directory for many)."""
        with trio.CancelScope(shield=True):
            for entry in entries:
                await self._io(self.journal.remove, entry, True)
            if any(e.directory == self.journal.directory for e in entries):
                await self._sync_journal()

    def _failed(self, p: Pending, e: BaseException) -> None:
        """Record a failed upload of ``p`` and when to try it again; an
        unexpected error is logged with its traceback and reported as EIO."""
        if not isinstance(e, FsError):
            log.error("write-back upload of %r: unexpected error", p.key, exc_info=e)
            e = FsError(f"upload of {p.key!r}: {e!r}", errno=errno.EIO)
        p.error = e
        wait = min(RETRY_MAX, RETRY_FIRST * 2 ** min(p.attempts - 1, 10))
        log.warning("write-back upload of %r failed (%s); retrying in %.0f s", p.key, e, wait)
        p.due = trio.current_time() + wait

    async def _send(self, p: Pending) -> tuple[ObjectInfo, bool]:
        """Upload ``p``'s bytes; returns (info, True if it went beside a conflict)."""
        m = p.manifest
        store = self.ctx.store
        try:
            remote: ObjectInfo | None = await store.head(m.key)
        except NotFound:
            remote = None
        log.debug("write-back: uploading %s to %r (base %s, S3 has %s)", p.entry.id, m.key,
                  m.base_etag, remote.etag if remote else None)
        if remote is not None and remote.etag != m.base_etag:
            if await self._holds_ours(remote, p.entry):
                log.info("write-back: %r already holds the staged bytes", m.key)
                return remote, False
            if bare_etag(remote.etag or "") not in p.entry.also_ours:
                return await self._conflict(p, remote), True
            # an older version staged here, uploaded just before a crash
            log.info("write-back: %r holds an earlier version staged here; replacing it",
                     m.key)
        try:
            return await self._put(m.key, p.entry, remote), False
        except PreconditionFailed:
            remote = await store.head(m.key)
            return await self._conflict(p, remote), True

    def _etags(self, entry: Entry) -> set[str]:
        """The ETag S3 gives ``entry``'s bytes as ``_put`` sends them (the
        MD5, or the MD5 of its parts' MD5s); blocking file I/O."""
        m = entry.manifest
        if m.size <= self.ctx.single_put_max:
            return {m.md5}
        parts = layout(m.size, self.ctx.part_size)
        return {bare_etag(data_multipart_etag(entry.data_path, parts))}

    async def _holds_ours(self, remote: ObjectInfo, entry: Entry) -> bool:
        """Whether ``remote`` is exactly the staged bytes, uploaded by us before
        a crash kept the entry from being removed: its ETag is their MD5, or,
        for a file ``_put`` sends as a multipart upload, the MD5 of its parts'
        MD5s (the layout follows from the size and part_size alone)."""
        m = entry.manifest
        etag = bare_etag(remote.etag or "")
        if not etag or remote.size != m.size:
            return False
        if etag == m.md5:
            return True
        if m.size <= self.ctx.single_put_max \
                or not etag.endswith(f"-{len(layout(m.size, self.ctx.part_size))}"):
            return False   # (not worth reading the file)
        return etag in await self._io(self._etags, entry)

    async def _conflict(self, p: Pending, remote: ObjectInfo | None) -> ObjectInfo:
        m = p.manifest
        now = time.time_ns()
        for n in itertools.count(1):
            # never overwrite an earlier conflict copy made in the same second
            target = conflict_key(m.key, now, n)
            try:
                await self.ctx.store.head(target)
                continue
            except NotFound:
                pass
            log.warning("write-back conflict: %r changed in S3 while ours was staged (ETag "
                        "%s, expected %s); keeping it and uploading ours as %r", m.key,
                        remote.etag if remote else None, m.base_etag or "no object", target)
            try:
                return await self._put(target, p.entry, None)
            except PreconditionFailed:
                continue
        raise AssertionError("unreachable")

    async def _put(self, key: str, entry: Entry, remote: ObjectInfo | None) -> ObjectInfo:
        m = entry.manifest
        h = ObjectHeaders(m.metadata, m.content_type, m.headers)
        path = entry.data_path

        def read_range(start: int, end: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(end - start)
            if len(data) != end - start:
                raise OSError(f"staged file {path} is shorter than expected")
            return data

        async def read(start: int, end: int) -> bytes:
            return await self._io(read_range, start, end)

        if m.size > self.ctx.single_put_max:
            return await upload_staged(self.ctx, key, m.size, h, touched=lambda s, e: True,
                                       read=read, base_key=None, base_etag=None, base_size=0)
        body = await read(0, m.size)
        if remote is not None:
            return await put_conditional(self.ctx, key, body, h, if_match=remote.etag)
        return await put_conditional(self.ctx, key, body, h, if_none_match=True)

