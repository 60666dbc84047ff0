"""The filesystem core: every operation, on inode numbers, handles and bytes.

No FUSE import here, so tests drive it directly against the in-memory store.
The FUSE adapter converts arguments and replies; this module decides what
each operation means on S3 (see SEMANTICS.md):

* Metadata (mode, owner, times, xattrs) lives in the object's user metadata
  in s3fs's format.  A change to a stored object is a copy onto itself with
  MetadataDirective=REPLACE that carries every other metadata key, the
  Content-Type and the other system headers along.
* Files are uploaded when they are flushed (close), fsync'd or released;
  until then a new file exists only in this mount.  mkdir, symlink and mknod
  are written at once.  With ``-o writeback`` close stages the file in the
  write-back journal instead (``objectfs.writeback``) and only fsync waits
  for S3; the inode carries the staged version (``node.pending``) until it
  is uploaded.
* Rename is a server-side copy then a delete (for a directory, of every key
  under it); it is not atomic.
* Unlinking a file that is still open keeps its bytes locally until the last
  handle closes, so the handles go on reading and writing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from . import metadata as md, metrics
from .data.context import DataContext, ObjectHeaders
from .data.file import FileData
from .data.prefetch import Prefetcher
from .errors import (BadHandle, Exists, FileTooBig, FsError, InvalidArgument, IsADirectory, NoData,
                     IOFailure, NoSpace, NotADirectory, NotEmpty, NotFound, NotPermitted,
                     NotSupported, PreconditionFailed, RangeError, ReadOnly, Stale, TooBig,
                     UserError)
from .namespace import keys
from .namespace.attrdisk import open_attr_disk
from .namespace.namespace import Namespace, Notifier, clock
from .namespace.tree import ROOT_INODE, Attr, Inode
from .config import cache_root, default_staging_dir, env_seconds
from .store.base import MAX_OBJECT_SIZE, ObjectInfo, ObjectStore, bare_etag
from .tasks import open_nursery
from .tier.tier import Tier, open_tier, tier_namespace
from .writeback.journal import Journal, Manifest, next_seq, staged_files
from .writeback.uploader import Pending, WriteBack

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# Server-side copies in flight while renaming a directory.
RENAME_CONCURRENCY = 16
# What statfs reports: S3 has no capacity limit, so a large round number
# (1 PiB free) keeps tools that check free space (cp, installers) happy.
STATFS_BLOCK = 4096
STATFS_BLOCKS = (1 << 50) // STATFS_BLOCK
STATFS_FILES = 1 << 32
# Seconds an inode the kernel no longer holds stays in the table (see
# prune_inodes); OBJECTFS_INODE_IDLE sets it (tests).
INODE_IDLE = env_seconds("OBJECTFS_INODE_IDLE", 60.0)
# Candidates a second's prune looks at, at most (20-40 ms of the event
# loop): a mount that saw millions of names prunes them over many seconds.
PRUNE_BATCH = 10_000


def _by_name(fn):
    """Marks an operation that finds inodes by name and holds them across
    awaits before the kernel has a reference to them (a lookup's answer,
    a rename's target): prune_inodes waits until none is under way."""
    @functools.wraps(fn)
    async def op(self, *args, **kw):
        self._by_name += 1
        try:
            return await fn(self, *args, **kw)
        finally:
            self._by_name -= 1
    return op


@dataclass(frozen=True)
class Caller:
    """Who is asking (from the FUSE request)."""

    uid: int = 0
    gid: int = 0
    umask: int = 0o022


@dataclass
class SetAttr:
    """The attributes setattr should change (None: leave alone)."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


@dataclass
class FileHandle:
    fh: int
    node: Inode
    flags: int
    prefetcher: Prefetcher | None = None
    prefetch_version: int = -1
    kept_cache: bool = False   # opened keeping pages the kernel had cached
    served: bool = False       # a read has returned bytes
    moves: int = 0             # times it moved to a new version (_follow)
    flush_failed: bool = False  # its last flush failed, nothing written since
    changes: bool = True       # opened for writing, with O_TRUNC, or created by its open


@dataclass
class DirHandle:
    fh: int
    node: Inode
    entries: list[tuple[str, Inode]] = field(default_factory=list)


@dataclass(frozen=True)
class Statfs:
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int


class Filesystem:
    def __init__(self, store: ObjectStore, cfg, notifier: Notifier | None = None):
        self.store = store
        self.cfg = cfg
        self.ns = Namespace(store, cfg, notifier)
        self.table = self.ns.table
        self.handles: dict[int, FileHandle | DirHandle] = {}
        # reads under way, by inode: (offset, done) (see read)
        self._reading: dict[int, list[tuple[int, trio.Event]]] = {}
        self._next_fh = 1
        self.ctx: DataContext | None = None
        self.read_only = bool(cfg.ro)
        self.wb: WriteBack | None = None
        self._drain_deadline: float | None = None
        # write-back: per-inode lock that orders staging with rename, unlink
        # and metadata changes (see _staged)
        self._wb_locks: weakref.WeakKeyDictionary[Inode, trio.Lock] = \
            weakref.WeakKeyDictionary()
        self.tier: Tier | None = None
        # files recovered from the journal whose ``remote`` (the object they
        # replace) comes from the manifest, which does not record its size
        self._size_unknown: weakref.WeakSet[Inode] = weakref.WeakSet()
        # inode -> event: renames under way (a file, or a directory and all
        # under it); uploads of what they move wait for them (_moving_tree)
        self._moving: dict[int, trio.Event] = {}
        # event -> (source, new parent): renames past their lookups, which
        # other renames of their subtrees wait for (_rename_turn)
        self._renames: dict[trio.Event, tuple[Inode, Inode]] = {}
        # event -> nodes: changes past their wait for renames whose S3
        # request may still be under way (_acting); a directory rename
        # waits for those inside it before it lists its keys
        self._acts: dict[trio.Event, tuple[Inode, ...]] = {}
        # inode -> event: files an unlink or a rename over them is removing;
        # an open of one waits for it (_removing_file)
        self._removing: dict[int, trio.Event] = {}
        self._by_name = 0   # operations of _by_name under way

    # -- lifecycle ------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """Attach the background nursery and read the root's attributes."""
        cfg = self.cfg
        self.ctx = DataContext(
            self.store, nursery, part_size=cfg.part_size,
            upload_concurrency=cfg.upload_concurrency,
            write_buffer_memory=cfg.write_buffer_memory, read_part_size=cfg.read_part_size,
            prefetch_max=cfg.prefetch_max, read_memory=max(cfg.write_buffer_memory,
                                                           4 * cfg.prefetch_max),
            staging_dir=cfg.staging_dir or default_staging_dir())
        if cfg.values.get("writeback") is not None and not self.read_only:
            self.ctx.writeback = True
            self.wb = WriteBack(self.ctx, Journal(os.path.join(cache_root(cfg), "writeback")),
                                delay=cfg.writeback, accept=self._owns,
                                on_done=self._written_back)
            try:
                await self.wb.start(nursery, show=self._show_recovered)
            except OSError as e:
                raise UserError(f"cannot use the write-back directory under "
                                f"{cache_root(cfg)}: {e.strerror}") from None
        else:
            journal = os.path.join(cache_root(cfg), "writeback")
            waiting = await trio.to_thread.run_sync(staged_files, journal, self._owns)
            if waiting:
                log.warning("%d file(s) of this bucket staged by a write-back mount wait "
                            "under %s: this mount shows S3's versions of them and does not upload "
                            "them; mount with -o writeback and the same cache_dir to do so",
                            waiting, journal)
        if cfg.metadata_cache or (cfg.metadata_cache is None and cfg.cache_size):
            self.ns.attr_disk = await trio.to_thread.run_sync(open_attr_disk, cache_root(cfg))
            self.ns.disk_ns = tier_namespace(cfg.endpoint_url, cfg.bucket)
        self.tier = await trio.to_thread.run_sync(open_tier, cfg, self.table.root_prefix)
        if self.tier is not None:
            self.ctx.tier = self.tier
            self.ctx.whole_file_max = cfg.cache_whole_file_max
            # a fill evicts whatever it needs: a file that would take more
            # than half the tier (or could not be kept at all) is not
            # filled, or every open of it would pull it whole again and
            # flush the rest of the tier (its random reads fetch their bytes)
            self.ctx.fill_max = min(cfg.cache_fill_max, cfg.cache_size // 2)
            await nursery.start(self.tier.run)
        nursery.start_soon(self._release_idle)
        self.ns.background = nursery
        root = self.table.root
        if self.table.root_prefix:
            try:
                info = await self.store.head(self.table.root_prefix)
                self.ns.apply_info(root, info, is_dir=True)
            except NotFound:
                pass

    async def _release_idle(self) -> None:
        """Memory kept for requests to come goes back once it sits unused:
        receive buffers, inodes the kernel has forgotten (``prune_inodes``),
        and names removed that no answer under way can bring back
        (``Namespace.trim_removed``); aborts the server refused are tried again once a minute."""
        ticks = 0
        prune_every = max(1, min(30, int(INODE_IDLE / 2)))
        prune_left = 0   # candidates the round under way has still to look at
        while True:
            await trio.sleep(1)
            ticks += 1
            try:
                self.store.release_idle()
                if ticks % prune_every == 0 and prune_left <= 0:
                    prune_left = len(self.table.idle)   # a round: each candidate once
                    self.ns.trim_removed()
                if prune_left > 0 and not self._by_name:
                    self.prune_inodes(min(PRUNE_BATCH, prune_left))
                    prune_left -= PRUNE_BATCH           # the rest in the next seconds
                if ticks % 60 == 0 and self.ctx is not None and self.ctx.unaborted:
                    await self.ctx.abort_left()
            except Exception:  # housekeeping must never take the mount down
                log.exception("housekeeping failed")

    def prune_inodes(self, limit: int | None = None) -> int:
        """Drop the inodes the kernel has not held for INODE_IDLE seconds
        and nothing here needs (InodeTable.prune): besides what prune checks
        itself, an entry or listing still fresh is kept (metadata_ttl), as are
        the entries of a directory open for reading (its readdir snapshot
        hands them to the kernel), and anything a rename, a HEAD or a
        write-back step is working on.  Not called while an operation that
        finds inodes by name is under way (``_by_name``): it holds them
        before the kernel counts them."""
        open_dirs = {h.node.ino for h in self.handles.values() if isinstance(h, DirHandle)}
        now = clock()

        def keep(node: Inode) -> bool:
            parent = node.parent
            if parent.ino in open_dirs or self.ns.listing_fresh(parent, now) \
                    or self.ns.fresh(node, now) or self.ns.filling(node) \
                    or (node.is_dir and self.ns.listing_fresh(node, now)):
                return True
            lock = self._wb_locks.get(node)
            if lock is not None and lock.locked():
                return True
            return bool(self._moving) and self._move_under_way(node) is not None

        return self.table.prune(now - INODE_IDLE, keep, limit)

    def _pending_nodes(self) -> list:
        return [node for node in list(self.table.inodes.values())
                if node.data is not None and node.data.dirty and not node.data.detached]

    def pending_uploads(self) -> list[str]:
        """Paths of files with data not yet in S3."""
        return [self.table.path(node) for node in self._pending_nodes()]

    async def flush_all(self) -> list[str]:
        """Upload every dirty file (unmount, SIGTERM), logging each one; returns
        the paths that failed.  With write-back: stage every dirty file, then
        wait up to ``writeback_drain_timeout`` for the uploads; what is left
        stays in the journal for the next mount (one log line per file)."""
        failed = []
        full: list[Inode] = []   # write-back: no room to stage them yet

        async def upload(node: Inode, wait_for_room: bool) -> None:
            try:
                await self._upload(node)
            except FsError as e:
                if wait_for_room and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    full.append(node)   # the drain below makes room
                    return
                path = self.table.path(node)
                log.error("could not upload %s at shutdown: %s", path, e)
                failed.append(path)

        for node in self._pending_nodes():
            if node.data.dirty:
                log.warning("shutdown: uploading %s (%d bytes) before exit",
                            self.table.path(node), node.data.size)
                await upload(node, wait_for_room=self.wb is not None)
        if self.wb is not None:
            await self.drain_writeback()
            for node in full:
                if node.data is not None and node.data.dirty:
                    await upload(node, wait_for_room=False)
            if full:
                await self.drain_writeback()
        if self.ctx is not None and self.ctx.unaborted:
            await self.ctx.abort_left(last=True)
        return failed

    async def drain_writeback(self) -> list[str]:
        """Upload every staged file now, waiting at most writeback_drain_timeout;
        returns the keys left for the next mount (each logged)."""
        assert self.wb is not None
        n = len(self.wb.active)
        if n:
            log.info("write-back: uploading %d staged file(s) before unmounting", n)
        # one budget for the whole shutdown (objectfs umount's request, then
        # the unmount itself), not writeback_drain_timeout per call
        now = trio.current_time()
        if self._drain_deadline is None:
            self._drain_deadline = now + self.cfg.writeback_drain_timeout
        left = await self.wb.drain(max(0.0, self._drain_deadline - now))
        for key in left:
            log.warning("write-back: %r is not in S3 yet; it stays staged under %s and the "
                        "next mount with this cache_dir uploads it", key,
                        self.wb.journal.directory)
        if left:
            log.warning("write-back: %d file(s) left for the next mount", len(left))
        return left

    def close(self) -> None:
        """Release the write-back journal (after the last upload attempt) and
        the local tier (records the last block uses), and write the
        attributes kept on disk."""
        if self.wb is not None:
            self.wb.close()
        self.ns.close_disk()
        if self.tier is not None:
            tier, self.tier = self.tier, None
            if self.ctx is not None:
                self.ctx.tier = None
            try:
                tier.close()
            except Exception:
                log.exception("could not close the local tier")

    # -- helpers --------------------------------------------------------------

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("mounted read-only")

    def _dir(self, ino: int) -> Inode:
        node = self.table.get(ino)
        if not node.is_dir:
            raise NotADirectory()
        return node

    def visible_attr(self, node: Inode) -> Attr:
        """The attributes the kernel sees, with mount overrides applied."""
        a = node.attr.copy()
        if node.data is not None:
            a.size = node.data.size
        cfg = self.cfg
        if cfg.uid is not None:
            a.uid = cfg.uid
        if cfg.gid is not None:
            a.gid = cfg.gid
        if cfg.umask is not None:
            a.mode = stat.S_IFMT(a.mode) | (0o777 & ~cfg.umask)
        return a

    def nlink(self, node: Inode) -> int:
        if node.parent is None and node.ino != ROOT_INODE:
            return 0  # unlinked but still open
        if node.children is not None:
            return 2 + node.subdirs
        return 1

    def headers_for(self, node: Inode, *, content_changed: bool) -> ObjectHeaders:
        a = node.attr
        ours = md.format_attrs(mode=a.mode, uid=a.uid, gid=a.gid, mtime_ns=a.mtime_ns,
                               ctime_ns=a.ctime_ns, atime_ns=a.atime_ns,
                               rdev=a.rdev or None)
        if node.xattrs:
            value = md.format_xattrs(node.xattrs)
            if value:
                ours[md.XATTR_KEY] = value
        remote = node.remote
        existing = dict(remote.metadata or {}) if remote is not None else {}
        if not node.xattrs:
            existing.pop(md.XATTR_KEY, None)
        meta = md.merge_metadata(existing, ours, content_changed=content_changed)
        if node.is_dir:
            ctype = "application/x-directory"
        elif remote is not None and remote.content_type:
            ctype = remote.content_type
        else:
            ctype = md.default_content_type(node.name)
        headers = dict(remote.headers) if remote is not None else {}
        return ObjectHeaders(meta, ctype, headers)

    def _new_attr(self, parent: Inode, mode: int, caller: Caller, size: int = 0) -> Attr:
        now = time.time_ns()
        gid = caller.gid
        if parent.attr.mode & stat.S_ISGID:
            gid = parent.attr.gid  # BSD group semantics of setgid directories
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return Attr(mode=mode, uid=caller.uid, gid=gid, size=size, mtime_ns=now,
                    ctime_ns=now, atime_ns=now)

    def _touch_dir(self, d: Inode) -> None:
        now = time.time_ns()
        d.attr.mtime_ns = d.attr.ctime_ns = now

    def _key_fn(self, node: Inode):
        """The key of an open file's data.  A file out of the tree whose
        bytes are not all here (another client deleted its object, and a
        lookup found it gone) has no key left to read from: ESTALE, as for
        the read that found the object gone, never ENOENT."""
        def key() -> str:
            try:
                return self.table.key(node)
            except NotFound:
                raise Stale("object deleted in S3 while open") from None
        return key

    def _file_data(self, node: Inode) -> FileData:
        if node.data is None:
            assert self.ctx is not None, "filesystem not started"
            remote = node.remote
            etag = remote.etag if remote is not None and not node.local else None
            pending: Pending | None = node.pending
            if pending is not None and pending.finished:
                # dropped (an unlink or a rename over it is removing it), its
                # journal entry gone or going: nothing left to read it from
                raise Stale("its staged copy is being removed")
            node.data = FileData(
                self.ctx, self._key_fn(node),
                lambda: self.headers_for(node, content_changed=True),
                base_etag=etag,
                base_size=(pending.manifest.size if pending is not None
                           else remote.size if remote is not None and not node.local else 0),
                published_fn=lambda info: self._uploaded(node, info),
                local_base=pending.entry.data_path if pending is not None else None,
                origin_etag=pending.manifest.base_etag if pending is not None else etag)
        return node.data

    def _uploaded(self, node: Inode, info: ObjectInfo, stored_mtime: bool = True) -> None:
        """``info`` is what an upload of ``node`` stored; ``stored_mtime``:
        show the mtime it stored (False: the node's, which a later change
        may have set, is what is or will be stored)."""
        node.remote = info
        self._size_unknown.discard(node)
        node.local = False
        node.head_wall_ns = time.time_ns()  # we know what we just stored
        node.cache_etag = info.etag
        node.meta_known = True
        if stored_mtime and info.metadata is not None:
            pa = md.parse_attrs(info.metadata)
            if pa.mtime_ns is not None:
                # a streamed upload stores the mtime of its start; show what is stored
                node.attr.mtime_ns = pa.mtime_ns
        self.ns.touch(node)

    async def _upload(self, node: Inode) -> None:
        """Flush ``node``'s data to S3 (``_uploaded`` hears of the result), or
        with write-back to the journal."""
        while (moving := self._move_under_way(node)) is not None:
            await moving.wait()   # then upload to where the rename put it
        data = node.data
        if data is None:
            return
        if node.parent is None:
            data.detached = True
        if self.wb is not None:
            try:
                await self._stage(node)
            except FsError:
                if data.stale:   # its changes were dropped (FileData._give_up)
                    self._remote_wins(node)
                raise
            return
        try:
            await data.flush()
        except FsError:
            if data.stale:   # its changes were dropped (FileData._give_up)
                self._remote_wins(node)
            raise

    async def _after_moves(self, *nodes: Inode) -> None:
        """Wait for the renames under way of ``nodes`` and of the directories
        above them.  The kernel locks only the parent of a directory it
        renames, so other processes go on working inside it meanwhile; what
        they change must reach S3 at the keys the rename gives it, not at
        the old ones it is copying away (the change would be lost, or come
        back at the old name)."""
        while True:
            ev = next((e for n in nodes if (e := self._move_under_way(n)) is not None), None)
            if ev is None:
                return
            await ev.wait()

    @contextlib.asynccontextmanager
    async def _acting(self, *nodes: Inode):
        """``_after_moves``, then hold off the directory renames that start
        from here on until the change (made at the keys of ``nodes`` or
        under them) is in S3: one whose request was under way as a rename
        listed the keys to copy landed at the old prefix (a deleted file
        came back under the new name, a chmod or a new entry was lost).
        No rename is waited for inside (it would wait for this)."""
        await self._after_moves(*nodes)
        done = trio.Event()
        self._acts[done] = nodes
        try:
            yield
        finally:
            del self._acts[done]
            done.set()

    async def _after_acts(self, top: Inode) -> None:
        """Wait for the changes under way inside ``top`` (see _acting)."""
        while (ev := next((e for e, nodes in self._acts.items()
                           if any(self._within(n, top) for n in nodes)), None)) is not None:
            await ev.wait()

    def _move_under_way(self, node: Inode) -> trio.Event | None:
        """The event of a rename moving ``node`` (or a directory above it)."""
        n: Inode | None = node
        while n is not None:
            ev = self._moving.get(n.ino)
            if ev is not None:
                return ev
            n = n.parent
        return None

    @staticmethod
    def _within(node: Inode, top: Inode) -> bool:
        """Is ``node`` ``top`` or under it?"""
        n: Inode | None = node
        while n is not None:
            if n is top:
                return True
            n = n.parent
        return False

    @contextlib.asynccontextmanager
    async def _rename_turn(self, src: Inode, new_parent: Inode):
        """Wait for, then hold off, the renames that cannot overlap this one:
        one moving ``src`` or ``new_parent`` (or a directory above them),
        and one moving something into, out of or within ``src``.  The
        kernel serializes renames between two directories, not a rename
        within one (``mv t/p t/p2``), which may come while another process
        moves a file into or out of t/p: each computes its keys from the
        tree as it is and copies what it lists, so the copies of one
        landed under a prefix the other had just moved away."""
        def conflict() -> trio.Event | None:
            for ev, (s, p) in self._renames.items():
                if self._within(src, s) or self._within(new_parent, s) \
                        or self._within(s, src) or self._within(p, src):
                    return ev
            return None

        while (ev := conflict()) is not None:
            await ev.wait()
        done = trio.Event()
        self._renames[done] = (src, new_parent)
        try:
            yield
        finally:
            del self._renames[done]
            done.set()

    @contextlib.asynccontextmanager
    async def _removing_file(self, node: Inode | None):
        """Mark ``node`` as being removed (an unlink, or a rename over it)
        until the removal is done or failed.  An open of it that comes
        meanwhile (the kernel looked the name up before the removal) waits,
        then opens the file if it stayed, or answers ESTALE if it went (see
        open): counted in before the removal looked at its open handles, it
        would hold a file that left the tree with nothing kept of its
        bytes, and its writes and reads failed."""
        if node is None or node.ino in self._removing:
            yield
            return
        done = trio.Event()
        self._removing[node.ino] = done
        try:
            yield
        finally:
            del self._removing[node.ino]
            done.set()

    @contextlib.asynccontextmanager
    async def _moving_tree(self, src: Inode):
        """Hold ``src`` and every file under it while a rename moves their
        objects: uploads started meanwhile (a close in another process)
        wait for the move and go to the new keys, those under way finish
        first, and multipart uploads bound to the old keys are completed
        (FileData.held_for_move).  Files are taken in inode order, so two
        renames of nested trees cannot deadlock."""
        while (other := self._moving.get(src.ino)) is not None:
            await other.wait()   # the same file renamed twice at once: in turn
        done = trio.Event()
        self._moving[src.ino] = done
        src.moved_at = float("inf")   # see Namespace.moved_since
        try:
            if src.is_dir:
                # changes that came before are finished first; those that
                # come now wait for this (a file's rename holds its staging
                # locks here, which a change of the file waits for: it is
                # left out, and the kernel serializes those with it anyway)
                await self._after_acts(src)
            async with contextlib.AsyncExitStack() as stack:
                held = sorted((n for n in self.table.walk(src) if n.data is not None),
                              key=lambda n: n.ino)
                for n in held:
                    if n.data is not None:
                        await stack.enter_async_context(n.data.held_for_move())
                yield
        finally:
            src.moved_at = clock()
            del self._moving[src.ino]
            done.set()

    # -- write-back -------------------------------------------------------------

    def _owns(self, m: Manifest) -> bool:
        """Is a journal entry left by an earlier mount ours to upload?"""
        return (m.bucket == self.cfg.bucket and m.endpoint == (self.cfg.endpoint_url or "")
                and m.key.startswith(self.table.root_prefix))

    def _manifest(self, node: Inode, origin: str | None) -> Manifest:
        h = self.headers_for(node, content_changed=True)
        a = node.attr
        return Manifest(bucket=self.cfg.bucket, endpoint=self.cfg.endpoint_url or "",
                        key=self.table.key(node), size=0, md5="", base_etag=origin,
                        metadata=dict(h.metadata), content_type=h.content_type,
                        headers={k: str(v) for k, v in h.headers.items()},
                        mode=a.mode, uid=a.uid, gid=a.gid, mtime_ns=a.mtime_ns)

    async def _stage(self, node: Inode) -> None:
        """Stage ``node``'s content durably in the journal (close with write-back)."""
        assert self.wb is not None
        data = node.data
        assert data is not None
        wb = self.wb

        fds: list[int] = []

        def attach(p: Pending) -> None:
            # before any await: the upload (delay 0) may remove the entry
            # file as soon as we yield
            fds.append(os.open(p.entry.data_path, os.O_RDONLY))
            p.node = node
            node.pending = p

        def base() -> str | None:
            # S3 should still hold what the previous staged version expects,
            # if one is waiting; else what this file was opened from (or
            # what our last upload stored)
            prev = node.pending
            if prev is not None and not prev.finished:
                return prev.manifest.base_etag
            return data.origin_etag

        async def sink(chunks):
            try:
                p = await wb.stage(self._manifest(node, base()), chunks, attach, base)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace("write-back directory is full") from None
                raise IOFailure(f"cannot stage {self.table.path(node)} for write-back: "
                                f"{e.strerror or e}") from None
            return p, fds[0]

        async with self._wb_lock(node):
            gen = data.meta_gen
            await data.export(sink)
        if data.meta_gen != gen and not data.dirty:
            # attributes set while it was being staged, after its manifest
            # was written: the staged entry takes them now
            await self._persist_meta(node)

    def _show_recovered(self, p: Pending) -> None:
        """Show a file staged by an earlier mount (recovered from the journal)
        at once, exactly as if it had been staged by this mount: lookups,
        listings and stat give its recorded attributes and reads its staged
        bytes until its upload.  Called before any FUSE request is served."""
        m = p.manifest
        rel = m.key[len(self.table.root_prefix):]
        names = rel.split("/")
        if not all(keys.valid_component(n) for n in names):
            return  # no name in this mount: uploaded all the same, unseen
        d = self.table.root
        for name in names[:-1]:
            assert d.children is not None
            child = d.children.get(name)
            if child is not None and not child.is_dir:
                # "a" and "a/b" both staged: the directory wins, as in listings
                self._hide_recovered(child)
                child = None
            if child is None:
                child = self.table.new(d, name, self.ns.default_attr(True))
                child.implicit = True
                child.meta_known = False   # a marker in S3 may hold its attributes
            d = child
        assert d.children is not None
        old = d.children.get(names[-1])
        if old is not None:
            if old.is_dir:
                return  # the directory wins
            self._hide_recovered(old)
        pa = md.parse_attrs(m.metadata)
        mtime = m.mtime_ns or pa.mtime_ns or self.ns.mount_time_ns
        attr = Attr(mode=stat.S_IFREG | stat.S_IMODE(m.mode), uid=m.uid, gid=m.gid,
                    size=m.size, mtime_ns=mtime, ctime_ns=pa.ctime_ns or mtime,
                    atime_ns=pa.atime_ns or mtime)
        node = self.table.new(d, names[-1], attr)
        raw = m.metadata.get(md.XATTR_KEY)
        node.xattrs = md.parse_xattrs(raw) if raw else None
        node.meta_known = True
        if m.base_etag is None:
            node.local = True        # a new file: nothing in S3 to replace
        else:
            # the object it replaces, as far as the journal knows it (the
            # metadata it kept is already merged into the manifest's)
            node.remote = ObjectInfo(key=m.key, size=m.size, etag=m.base_etag, mtime_ns=mtime,
                                     metadata=dict(m.metadata), content_type=m.content_type,
                                     headers=dict(m.headers))
            self._size_unknown.add(node)
        node.pending = p
        p.node = node
        p.recovered = False          # shown: what this mount writes now is based on it
        self.ns.touch(node)

    def _hide_recovered(self, node: Inode) -> None:
        p = node.pending
        if p is not None:
            node.pending = None
            p.node = None
            p.recovered = True
        self.table.detach(node, remember=False)

    def _written_back(self, p: Pending, info: ObjectInfo, conflict: bool) -> None:
        """An upload of the journal finished (``conflict``: it went beside the
        object it would have replaced)."""
        node = p.node
        if node is None:
            self._stale_key(p.key)  # recovered at mount: show what S3 now holds
            return
        data = node.data
        if node.pending is not p:
            # superseded while uploading: the newer version shows, and the
            # object just uploaded is what its upload must find in S3 (and
            # what an unlink or rename meanwhile must delete or move)
            if not conflict:
                if data is not None and data.origin_etag == p.manifest.base_etag:
                    data.origin_etag = info.etag
                node.local, node.remote = False, info
            return
        node.pending = None
        if conflict:
            self._remote_wins(node)
            return
        if data is not None and data.origin_etag == p.manifest.base_etag:
            data.origin_etag = info.etag
        # the entry's mtime was the node's when it was staged; one set since
        # waits for this upload to store it (_persist_meta)
        self._uploaded(node, info, stored_mtime=False)

    def _remote_wins(self, node: Inode) -> None:
        """Another client's version wins under ``node``'s name (ours was
        laid on a version it replaced): show S3's from now on."""
        node.local = False
        node.remote = None
        self._size_unknown.discard(node)
        node.validated_at = float("-inf")
        node.meta_known = False
        node.cache_etag = None
        self.ns.notifier.invalidate_inode(node.ino)
        if node.parent is not None:
            node.parent.listed_at = None

    def _wb_lock(self, node: Inode) -> trio.Lock:
        lock = self._wb_locks.get(node)
        if lock is None:
            lock = self._wb_locks[node] = trio.Lock()
        return lock

    @contextlib.asynccontextmanager
    async def _staged(self, *nodes: Inode):
        """Serialize a namespace change with staging and uploads (write-back).

        Holds the staging locks of ``nodes`` (taken in inode order, so two
        renames cannot deadlock; staging takes the same lock, so no new
        version appears meanwhile) and the lock of the first node's staged
        entry, which waits for its upload in progress.  Yields that entry if
        it still waits for its upload, else None (also without write-back).
        """
        if self.wb is None:
            yield None
            return
        async with contextlib.AsyncExitStack() as stack:
            for n in sorted(set(nodes), key=lambda n: n.ino):
                await stack.enter_async_context(self._wb_lock(n))
            p = nodes[0].pending
            if p is not None:
                await self.wb.settle_older(p)
                await stack.enter_async_context(p.lock)
                if p.finished:
                    p = None
            yield p

    def _stale_key(self, key: str) -> None:
        """Make the next access to ``key``'s path (if this mount has it
        cached) and its directory's listing ask S3 again."""
        rel = key[len(self.table.root_prefix):].split("/")
        node: Inode | None = self.table.root
        for name in rel:
            if node is None or not node.children:
                return
            node.listed_at = None
            node = node.children.get(name)
        if node is not None and node.pending is None and node.data is None:
            node.validated_at = float("-inf")
            node.meta_known = False
            self.ns.notifier.invalidate_inode(node.ino)

    async def _settle(self, node: Inode) -> None:
        """Upload ``node``'s staged version now (before a directory rename)."""
        if self.wb is not None and node.pending is not None:
            await self.wb.sync(node.pending)

    async def _release_data(self, node: Inode) -> None:
        if node.open_count == 0 and node.data is not None and not node.data.dirty:
            data, node.data = node.data, None
            await data.close()
            self.table.maybe_drop(node)

    async def _child(self, parent: Inode, name: str) -> Inode:
        return await self.ns.lookup(parent, name)

    async def _child_or_none(self, parent: Inode, name: str) -> Inode | None:
        try:
            return await self.ns.lookup(parent, name)
        except NotFound:
            return None

    def _alloc_fh(self, handle_factory) -> Any:
        fh = self._next_fh
        self._next_fh += 1
        h = handle_factory(fh)
        self.handles[fh] = h
        return h

    def _file_handle(self, fh: int) -> FileHandle:
        h = self.handles.get(fh)
        if not isinstance(h, FileHandle):
            raise BadHandle()
        return h

    # -- lookup and attributes --------------------------------------------------

    @_by_name
    async def lookup(self, parent_ino: int, name: bytes) -> Inode:
        """Resolve a name and count one kernel reference to the result."""
        parent = self._dir(parent_ino)
        if name == b".":
            node = parent
        elif name == b"..":
            node = parent.parent or parent
        else:
            node = await self._child(parent, keys.name_from_kernel(name))
        node.lookups += 1
        return node

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            self.table.forget(ino, n)

    def fresh_for(self, node: Inode) -> float:
        """Seconds the kernel may keep ``node``'s entry and attributes (see
        Namespace.fresh_for)."""
        return self.ns.fresh_for(node)

    def missing_for(self, parent_ino: int, name: bytes) -> float:
        """Seconds the kernel may keep the miss of ``name`` just answered
        (see Namespace.missing_for)."""
        return self.ns.missing_for(self.table.get(parent_ino), keys.name_from_kernel(name))

    def attr_pending(self, node: Inode) -> bool:
        """True while ``node`` shows its listing's attributes, the HEAD a
        readdir did not wait for under way (the kernel must not keep them)."""
        return self.ns.filling(node)

    @staticmethod
    def _vanished(node: Inode) -> bool:
        """A new file S3 never had that left the tree: its upload failed at
        its last close (see flush and release), or it was unlinked or
        renamed over before it was uploaded; nothing can be written to it
        any more.
        The kernel may still hold its entry for a moment; its stat and open
        answer ESTALE, so the kernel looks the name up again (and an open
        with O_CREAT makes a new file) instead of writing into nothing."""
        return node.parent is None and node.local and node.ino != ROOT_INODE \
            and (node.data is None and node.open_count == 0
                 or node.data is not None and node.data.broken)

    async def getattr(self, ino: int) -> Inode:
        node = self.table.get(ino)
        if self._vanished(node):
            raise Stale("the file is gone: removed, or its upload failed")
        await self.ns.settle(node)
        if not self.ns.fresh(node):
            await self.ns.revalidate(node)
        return node

    async def setattr(self, ino: int, changes: SetAttr, fh: int | None = None) -> Inode:
        node = self.table.get(ino)
        await self.ns.settle(node)   # a HEAD under way would undo the change
        self._check_writable()
        now = time.time_ns()
        meta = False
        if changes.size is not None:
            if node.is_dir:
                raise IsADirectory()
            if not node.is_reg:
                raise InvalidArgument("cannot truncate this file type")
            if not await self._truncate(node, changes.size):
                meta = True   # the same size: only the times change, and must be stored
        if (changes.mode is not None or changes.uid is not None or changes.gid is not None
                or changes.atime_ns is not None or changes.mtime_ns is not None) \
                and (node.data is None or not node.data.dirty):
            # The copy onto itself stores every attribute and xattr this
            # mount has: past metadata_ttl (an fchmod or futimens through a
            # descriptor, which no lookup precedes) ask S3 first, or what
            # another client changed meanwhile would be put back.
            if not self.ns.fresh(node):
                await self.ns.revalidate(node)
            # attributes known from a listing alone (trust_listing): the HEAD
            # that _persist_meta needs must not land on top of the change
            await self.ns.ensure_metadata(node)
        a = node.attr
        # what a refused change (the bucket root, S3 saying no) puts back
        before = (a.mode, a.uid, a.gid, a.atime_ns, a.mtime_ns, a.ctime_ns)
        if changes.mode is not None:
            a.mode = stat.S_IFMT(a.mode) | stat.S_IMODE(changes.mode)
            meta = True
        if changes.uid is not None and changes.uid != 0xFFFFFFFF:
            a.uid = changes.uid
            meta = True
        if changes.gid is not None and changes.gid != 0xFFFFFFFF:
            a.gid = changes.gid
            meta = True
        if changes.atime_ns is not None:
            a.atime_ns = changes.atime_ns
            meta = True
        if changes.mtime_ns is not None:
            a.mtime_ns = changes.mtime_ns
            meta = True
        if meta or changes.size is not None:
            a.ctime_ns = now
        if meta:
            try:
                async with self._acting(node):
                    await self._persist_meta(node)
            except BaseException:
                # the call fails: the attributes it did not store must not show
                (a.mode, a.uid, a.gid, a.atime_ns, a.mtime_ns, a.ctime_ns) = before
                raise
        return node

    async def _truncate(self, node: Inode, size: int) -> bool:
        """False if nothing is to be uploaded for it (a truncate to the
        size the file has, of a file without other changes): then the new
        times are the caller's to store."""
        if size > MAX_OBJECT_SIZE:
            raise FileTooBig("S3 objects are at most 5 TiB")
        data = self._file_data(node)
        # held as an open would hold it: a last close() meanwhile leaves it
        # here, and the upload below is ours to make
        node.open_count += 1
        try:
            await self.ns.ensure_metadata(node)
            await data.truncate(size)
            carried = data.dirty
        except BaseException:
            node.open_count -= 1
            await self._release_data(node)
            raise
        node.open_count -= 1
        now = time.time_ns()
        node.attr.size = size
        node.attr.mtime_ns = node.attr.ctime_ns = now
        self.ns.touch(node)
        if node.open_count == 0:
            # truncate(2) on a file nobody has open: persist now
            try:
                await self._upload(node)
            finally:
                await self._release_data(node)
        return carried

    async def _persist_meta(self, node: Inode) -> None:
        """Store ``node``'s attributes (and xattrs) in S3."""
        self.ns.touch(node)
        if self.ns.unlinked(node):
            return  # its object is gone (or another file's): the change stays with it
        data = node.data
        if data is not None and data.dirty:
            data.attrs_changed()  # the pending (or running) upload stores them
            return
        async with self._staged(node) as p:
            if p is not None:
                # the staged copy carries them
                assert self.wb is not None
                m = self._manifest(node, p.manifest.base_etag)
                await self.wb.rewrite(p, metadata=m.metadata, content_type=m.content_type,
                                      headers=m.headers, mode=m.mode, uid=m.uid, gid=m.gid,
                                      mtime_ns=m.mtime_ns)
                return
            await self._persist_stored_meta(node)

    async def _persist_stored_meta(self, node: Inode) -> None:
        data = node.data
        if node.local:
            return
        if node.is_dir:
            await self._persist_dir_meta(node)
            return
        await self.ns.ensure_metadata(node)
        h = self.headers_for(node, content_changed=False)
        key = self.table.key(node)
        assert node.remote is not None
        was = node.remote.etag
        info = await self._copy_same(key, key, node.remote, metadata=h.metadata,
                                     content_type=h.content_type, headers=h.headers)
        if info is None:
            await self._replaced(node, key)
            raise Stale("another client replaced the object since: its attributes are "
                        "left as they are")
        node.remote = replace(info, metadata=h.metadata, content_type=h.content_type,
                              headers=h.headers)
        if data is not None:
            data.rebase(info.etag, was)
        self.ns.touch(node)

    async def _copy_same(self, src: str, dst: str, remote: ObjectInfo,
                         **kw) -> ObjectInfo | None:
        """Copy the version ``remote`` of ``src`` to ``dst`` (``kw``: its new
        metadata).  None if ``src`` holds another version now, put there by
        another client since this mount last looked: then nothing was copied
        (a server that ignores CopySourceIfMatch, as moto does, copied that
        version instead).  Adopting the copy's ETag with ``remote``'s size
        would show the other version cut at the old size, and let an append
        laid on the old one overwrite it."""
        try:
            info = await self.store.copy(src, dst, size=remote.size, src_etag=remote.etag, **kw)
        except PreconditionFailed:
            return None
        if not remote.etag or not info.etag or bare_etag(info.etag) == bare_etag(remote.etag):
            return info
        # a copy of a multipart or encrypted object has an ETag of its own:
        # its size tells whether the condition was ignored and another copied
        if (await self.store.head(dst)).size != remote.size:
            return None
        return info

    async def _replaced(self, node: Inode, key: str) -> None:
        """``node``'s version is gone from S3 (another client replaced it,
        see _copy_same) and its name is at ``key``.  It keeps the old ETag,
        so its open handles and unsaved writes meet ESTALE as with any
        version replaced under them; its attributes are asked of S3 again,
        the kernel's dropped before the caller answers."""
        if node.remote is not None:
            node.remote = replace(node.remote, key=key)
        node.validated_at = float("-inf")
        node.meta_known = False
        node.cache_etag = None
        self.ns.notifier.invalidate_inode(node.ino)
        await self.ns.notifier.invalidate_attrs_now(node.ino)

    async def _persist_dir_meta(self, node: Inode) -> None:
        if node.ino == ROOT_INODE and not self.table.root_prefix:
            # The bucket itself has no object to hold attributes.
            raise NotPermitted("the bucket root has no stored attributes")
        key = self.table.key(node)
        await self.ns.ensure_metadata(node)
        h = self.headers_for(node, content_changed=False)
        if node.remote is not None and node.remote.key == key:
            info = await self.store.copy(key, key, size=0, metadata=h.metadata,
                                         content_type=h.content_type, headers=h.headers)
        else:
            await self.ns.verify_legacy(node)
            info = await self.store.put(key, b"", metadata=h.metadata,
                                        content_type=h.content_type, headers=h.headers)
            if node.legacy is not None:
                # s3fs converts a legacy no-slash directory object the same way
                await self.store.delete(node.legacy)
                node.legacy = None
        node.remote = replace(info, metadata=h.metadata, content_type=h.content_type)
        node.implicit = False
        self.ns.touch(node)

    async def readlink(self, ino: int) -> bytes:
        node = self.table.get(ino)
        if not node.is_symlink:
            raise InvalidArgument("not a symlink")
        if node.target is None:
            body = await self.store.get(self.table.key(node))
            node.target = os.fsdecode(bytes(body))
        return os.fsencode(node.target)

    # -- creating entries -------------------------------------------------------

    async def _check_new(self, parent: Inode, raw: bytes, suffix: str = "") -> str:
        """The name of a new entry, refused if taken or if its key (with
        ``suffix``: "/" for a directory's marker) would be over S3's limit.
        The caller holds ``_acting(parent)``."""
        self._check_writable()
        name = keys.name_from_kernel(raw)
        if await self._child_or_none(parent, name) is not None:
            raise Exists(name)
        keys.check_key(self.table.key(parent) + name + suffix)
        return name

    def _attach(self, parent: Inode, name: str, attr: Attr) -> Inode:
        node = self.table.new(parent, name, attr)
        node.meta_known = True
        self.ns.on_local_change(parent, name)
        self.ns.touch(node)
        self._touch_dir(parent)
        return node

    async def _put_new(self, node: Inode, body: bytes = b"") -> Inode:
        """Write the object of a node just attached (mkdir, symlink, mknod);
        if that fails the node leaves the tree again.  Returns the node, its
        lookup counted for the kernel's reply."""
        try:
            h = self.headers_for(node, content_changed=True)
            info = await self.store.put(self.table.key(node), body, metadata=h.metadata,
                                        content_type=h.content_type, headers=h.headers)
        except BaseException:
            self.table.detach(node)
            raise
        node.remote = info
        node.local = False
        node.lookups += 1
        return node

    @_by_name
    async def mkdir(self, parent_ino: int, raw: bytes, mode: int, caller: Caller) -> Inode:
        parent = self._dir(parent_ino)
        async with self._acting(parent):
            name = await self._check_new(parent, raw, "/")
            attr = self._new_attr(parent, stat.S_IFDIR | stat.S_IMODE(mode), caller, size=4096)
            node = self._attach(parent, name, attr)
            await self._put_new(node)
        node.listed_at = clock()  # a new directory is known to be empty
        return node

    @_by_name
    async def symlink(self, parent_ino: int, raw: bytes, target: bytes, caller: Caller) -> Inode:
        parent = self._dir(parent_ino)
        async with self._acting(parent):
            name = await self._check_new(parent, raw)
            attr = self._new_attr(parent, stat.S_IFLNK | 0o777, caller, size=len(target))
            node = self._attach(parent, name, attr)
            node.target = os.fsdecode(target)
            return await self._put_new(node, target)

    @_by_name
    async def mknod(self, parent_ino: int, raw: bytes, mode: int, rdev: int,
                    caller: Caller) -> Inode:
        parent = self._dir(parent_ino)
        async with self._acting(parent):
            name = await self._check_new(parent, raw)
            ftype = stat.S_IFMT(mode) or stat.S_IFREG
            if ftype == stat.S_IFDIR or ftype == stat.S_IFLNK:
                raise InvalidArgument("use mkdir or symlink")
            attr = self._new_attr(parent, ftype | stat.S_IMODE(mode), caller)
            if ftype in (stat.S_IFCHR, stat.S_IFBLK):
                attr.rdev = rdev
            return await self._put_new(self._attach(parent, name, attr))

    @_by_name
    async def create(self, parent_ino: int, raw: bytes, mode: int, flags: int,
                     caller: Caller) -> tuple[FileHandle, Inode]:
        parent = self._dir(parent_ino)
        self._check_writable()
        name = keys.name_from_kernel(raw)
        existing = await self._child_or_none(parent, name)
        if existing is not None:
            if flags & os.O_EXCL:
                raise Exists(name)
            existing.lookups += 1
            try:
                handle = await self.open(existing.ino, flags & ~os.O_CREAT, caller)
            except BaseException:
                existing.lookups -= 1
                raise
            return handle, existing
        keys.check_key(self.table.key(parent) + name)
        attr = self._new_attr(parent, stat.S_IFREG | stat.S_IMODE(mode), caller)
        node = self._attach(parent, name, attr)
        node.local = True
        data = self._file_data(node)
        data.mark_dirty()  # even an empty new file must reach S3 at close
        node.lookups += 1
        node.open_count += 1
        handle = self._alloc_fh(lambda fh: FileHandle(fh, node, flags))
        return handle, node

    @_by_name
    async def link(self, ino: int, new_parent_ino: int, raw: bytes) -> Inode:
        raise NotSupported("S3 has no hard links")

    # -- removing entries -------------------------------------------------------

    async def _detach_file(self, node: Inode) -> None:
        """Prepare a file for removal: open handles keep their bytes."""
        data = node.data
        if data is not None:
            if node.open_count:
                try:
                    await data.materialize()
                except Stale:
                    # The version its handles opened left S3 (another client
                    # replaced or deleted it): there is no more of it to
                    # keep.  They keep what they hold and get ESTALE for the
                    # rest, as they would have anyway; the name goes.
                    log.info("%s: the version open here is no longer in S3; its "
                             "handles keep only what they read",
                             self.table.path(node))
                data.detached = True
            else:
                node.data = None
                await data.close()

    @_by_name
    async def unlink(self, parent_ino: int, raw: bytes) -> None:
        parent = self._dir(parent_ino)
        self._check_writable()
        name = keys.name_from_kernel(raw)
        node = await self._child(parent, name)
        if node.is_dir:
            raise IsADirectory(name)
        async with self._acting(parent), self._removing_file(node):
            await self._keep_dir(parent)
            async with self._staged(node) as p:
                await self._detach_file(node)
                if not node.local:
                    key = self.table.key(node)
                    await self.store.delete(key)
                    if self.tier is not None:
                        await self.tier.forget(key)
                    await self.ns.file_gone(key)
                if p is not None:
                    # dropped only after the DELETE: an open meanwhile reads
                    # the staged version, not the older one in S3 (a handle
                    # opened meanwhile keeps its bytes)
                    await self._detach_file(node)
                    await self._cancel_pending(node, p)
                self._remove(parent, node)

    async def _cancel_pending(self, node: Inode, p: Pending) -> None:
        """Drop a staged version that will never be wanted (unlinked, replaced).
        The caller holds its lock (``_staged``), so no upload is in progress."""
        assert self.wb is not None
        await self.wb.drop(p)
        if node.pending is p:
            node.pending = None

    async def _keep_dir(self, d: Inode) -> None:
        """Give a prefix-only directory its marker before an entry leaves it.

        A directory that exists only because keys share its prefix would
        vanish from S3 with its last entry, though nobody removed it.
        Writing the ``dir/`` marker first keeps it, as POSIX expects.
        """
        if d.implicit and d.ino != ROOT_INODE and not self.read_only:
            await self.ns.verify_legacy(d)
            if d.legacy is None:
                await self._persist_dir_meta(d)

    def _remove(self, parent: Inode, node: Inode) -> None:
        self.table.detach(node)
        self.ns.negative[(parent.ino, node.name)] = clock()
        self._touch_dir(parent)
        node.attr.ctime_ns = time.time_ns()

    async def _ensure_empty(self, node: Inode) -> None:
        if node.children and any(c.local for c in node.children.values()):
            raise NotEmpty()
        prefix = self.table.key(node)
        page = await self.store.list_page(prefix, delimiter=None, max_keys=2)
        if any(o.key != prefix for o in page.objects):
            raise NotEmpty()

    @_by_name
    async def rmdir(self, parent_ino: int, raw: bytes) -> None:
        parent = self._dir(parent_ino)
        self._check_writable()
        name = keys.name_from_kernel(raw)
        node = await self._child(parent, name)
        if not node.is_dir:
            raise NotADirectory(name)
        async with self._acting(parent):
            prefix = self.table.key(node)
            await self._ensure_empty(node)
            await self._keep_dir(parent)
            await self._delete_dir_objects(node)
            self._remove(parent, node)
            await self.ns.forget_kept(prefix)

    async def _delete_dir_objects(self, node: Inode) -> None:
        prefix = self.table.key(node)
        await self.ns.verify_legacy(node)
        doomed = [prefix]
        if node.legacy:
            doomed.append(node.legacy)
        if self.cfg.compat_dir:
            doomed.append(prefix[:-1] + keys.FOLDER_SUFFIX)
        if len(doomed) == 1:
            await self.store.delete(prefix)
        else:
            await self.store.delete_many(doomed)

    # -- rename -------------------------------------------------------------------

    @_by_name
    async def rename(self, old_parent_ino: int, old_raw: bytes, new_parent_ino: int,
                     new_raw: bytes, flags: int) -> None:
        self._check_writable()
        if flags & RENAME_EXCHANGE:
            raise InvalidArgument("RENAME_EXCHANGE cannot be done atomically on S3")
        if flags & ~RENAME_NOREPLACE:
            raise InvalidArgument("unsupported rename flags (RENAME_WHITEOUT is for overlayfs)")
        old_parent = self._dir(old_parent_ino)
        new_parent = self._dir(new_parent_ino)
        old_name = keys.name_from_kernel(old_raw)
        new_name = keys.name_from_kernel(new_raw)
        await self._after_moves(old_parent, new_parent)
        src = await self._child(old_parent, old_name)
        dst = await self._child_or_none(new_parent, new_name)
        if dst is src:
            return
        async with self._rename_turn(src, new_parent):
            await self._rename_now(src, old_parent, old_name, dst, new_parent, new_name, flags)

    async def _rename_now(self, src: Inode, old_parent: Inode, old_name: str, dst: Inode | None,
                          new_parent: Inode, new_name: str, flags: int) -> None:
        if dst is not None and flags & RENAME_NOREPLACE:
            raise Exists(new_name)
        if src.is_dir:
            n: Inode | None = new_parent
            while n is not None:
                if n is src:
                    raise InvalidArgument("cannot move a directory into itself")
                n = n.parent
            if dst is not None:
                if not dst.is_dir:
                    raise NotADirectory(new_name)
                await self._ensure_empty(dst)
        elif dst is not None and dst.is_dir:
            raise IsADirectory(new_name)
        suffix = "/" if src.is_dir else ""
        keys.check_key(self.table.key(new_parent) + new_name + suffix)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("rename %r to %r", self.table.key(src),
                      self.table.key(new_parent) + new_name + suffix)
        if old_parent is not new_parent:
            await self._keep_dir(old_parent)
        if src.is_dir:
            await self._rename_dir(src, new_parent, new_name, dst)
        else:
            await self._rename_file(src, new_parent, new_name, dst)
        self.ns.on_local_change(new_parent, new_name)
        self.ns.negative[(old_parent.ino, old_name)] = clock()
        self._touch_dir(old_parent)
        self._touch_dir(new_parent)

    async def _rename_file(self, src: Inode, new_parent: Inode, new_name: str,
                           dst: Inode | None) -> None:
        async with self._staged(src, *([dst] if dst is not None else [])) as p:
            await self._rename_file_now(src, new_parent, new_name, dst, p)
            if p is not None:
                # the staged version goes up under the new name, expecting
                # there what the rename left: our copy of the old object, or
                # nothing
                assert self.wb is not None
                base = src.remote.etag if not src.local and src.remote is not None else None
                await self.wb.rewrite(p, key=self.table.key(src), base_etag=base)

    async def _rename_file_now(self, src: Inode, new_parent: Inode, new_name: str,
                               dst: Inode | None, p: Pending | None = None) -> None:
        old_key = self.table.key(src)
        new_key = self.table.key(new_parent) + new_name
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._removing_file(dst))
            dp = None
            if dst is not None:
                await self._detach_file(dst)
                dp = dst.pending
                if dp is not None:
                    # dst's staging lock is held (_rename_file): wait for an
                    # upload in progress, and hold its entry until the move
                    # is done
                    assert self.wb is not None
                    await self.wb.settle_older(dp)
                    await stack.enter_async_context(dp.lock)
                if p is not None:
                    # src's staged version (its lock held) is what the name
                    # will hold: the journal says so before dst's version
                    # or object goes, so that a kill -9 from here on leaves
                    # a file at the name (a new seq wins over dst's entry)
                    assert self.wb is not None
                    ours = set(p.manifest.also_ours)
                    if not src.local and p.manifest.base_etag:
                        ours.add(bare_etag(p.manifest.base_etag))   # our copy of it
                    await self.wb.promise(
                        p, key=new_key, seq=next_seq(), also_ours=tuple(sorted(ours)),
                        base_etag=(dst.remote.etag if not dst.local and dst.remote is not None
                                   else None))
                    stack.push_async_exit(self._unpromise(p))
                if src.local and not dst.local:
                    # src reaches S3 only at its first close, perhaps under yet
                    # another name: the object it replaces must go now
                    await self.store.delete(new_key)
            async with self._moving_tree(src):
                await self._move_file(src, new_parent, new_name, old_key, new_key)
            if dp is not None and not dp.finished:
                # Forget the replaced version only now that dst has left the
                # tree: until then an open of it (a reader that had just
                # looked the name up) reads its staged bytes, as on a local
                # disk, rather than an empty file (no staged copy, no
                # object).  A handle opened meanwhile keeps them.
                assert dst is not None
                await self._detach_file(dst)
                await self._cancel_pending(dst, dp)

    def _unpromise(self, p: Pending):
        """An exit callback: a rename that fails takes back its promise."""
        async def undo(exc_type, exc, tb) -> bool:
            if exc_type is not None and not p.finished:
                assert self.wb is not None
                with trio.CancelScope(shield=True):
                    await self.wb.promise(p)
            return False
        return undo

    async def _move_file(self, src: Inode, new_parent: Inode, new_name: str, old_key: str,
                         new_key: str) -> None:
        src.attr.ctime_ns = time.time_ns()
        if not src.local and src.remote is not None and src in self._size_unknown:
            # recovered from the journal, which does not record the size of
            # the object being replaced (the copy below needs it)
            try:
                info = await self.store.head(old_key)
                src.remote = replace(src.remote, size=info.size)
            except NotFound:
                src.local, src.remote = True, None   # nothing left to move
            self._size_unknown.discard(src)
        staged = src.pending if src.pending is not None and not src.pending.finished else None
        if not src.local and src.remote is not None:
            if staged is None:
                await self.ns.ensure_metadata(src)
            remote = src.remote
            h = self.headers_for(src, content_changed=False)
            h = replace(h, content_type=md.renamed_content_type(h.content_type, src.name,
                                                                new_name))
            base = staged.manifest.base_etag if staged is not None else None
            replaced = False
            try:
                if staged is None:
                    got = await self._copy_same(old_key, new_key, remote, metadata=h.metadata,
                                                content_type=h.content_type, headers=h.headers)
                    if got is None:
                        # another client's version is there now: it moves as it is
                        now = await self.store.head(old_key)
                        got = await self.store.copy(old_key, new_key, size=now.size)
                        replaced = True
                    info = got
                else:
                    # a staged version is based on one object: copy that one or
                    # nothing (the copy's bytes are replaced by its upload)
                    info = await self.store.copy(
                        old_key, new_key, size=remote.size, metadata=h.metadata,
                        content_type=h.content_type, headers=h.headers, src_etag=base)
                if base is not None and "-" not in base and info.etag != base:
                    # a server that ignored the condition (moto): a copy of
                    # an object of one PUT keeps its ETag, so this was another
                    await self.store.delete(new_key)
                    raise PreconditionFailed("PreconditionFailed", "copied another version",
                                             op="CopyObject", key=old_key)
            except (PreconditionFailed, NotFound):
                if staged is None:
                    raise
                # Another client replaced or deleted it since: theirs stays
                # where it is, and ours, whole in the journal, goes up at the
                # new name as a new file.
                src.local, src.remote = True, None
                self.table.move(src, new_parent, new_name)
                return
            await self.store.delete(old_key)
            if self.tier is not None:  # the old key's cached data is of no use now
                await self.tier.forget(old_key)
            await self.ns.file_gone(old_key)
            if replaced:
                await self._replaced(src, new_key)
            else:
                src.remote = replace(info, key=new_key, metadata=h.metadata,
                                     content_type=h.content_type, headers=h.headers)
                if src.data is not None:
                    src.data.rebase(info.etag, remote.etag)
                src.cache_etag = info.etag if src.cache_etag == remote.etag else None
        self.table.move(src, new_parent, new_name)

    async def _rename_dir(self, src: Inode, new_parent: Inode, new_name: str,
                          dst: Inode | None) -> None:
        async with self._moving_tree(src):
            for node in list(self.table.walk(src)):
                # staged files go up first, then move with the rest (a
                # directory rename is a copy of every key under it anyway);
                # files closed meanwhile wait, and are staged at the new keys
                await self._settle(node)
            await self._move_dir(src, new_parent, new_name, dst)

    async def _move_dir(self, src: Inode, new_parent: Inode, new_name: str,
                        dst: Inode | None) -> None:
        old_prefix = self.table.key(src)
        new_prefix = self.table.key(new_parent) + new_name + "/"
        await self.ns.verify_legacy(src)
        objects: list[ObjectInfo] = []
        token = None
        while True:
            page = await self.store.list_page(old_prefix, delimiter=None, token=token)
            objects.extend(page.objects)
            token = page.next_token
            if not token:
                break
        # every key under it, in S3 or not uploaded yet, must fit at its new
        # place: refused before anything is copied or replaced
        longest = max([o.key for o in objects] + [self.table.key(n) for n in self.table.walk(src)],
                      key=lambda k: len(k.encode("utf-8")))
        keys.check_key(new_prefix + longest[len(old_prefix):])
        if dst is not None:
            await self._delete_dir_objects(dst)
        new_etags: dict[str, str | None] = {}
        limiter = trio.CapacityLimiter(RENAME_CONCURRENCY)

        async def copy_one(o: ObjectInfo) -> None:
            async with limiter:
                target = new_prefix + o.key[len(old_prefix):]
                info = await self.store.copy(o.key, target, size=o.size)
                new_etags[target] = info.etag

        async with open_nursery() as nursery:
            for o in objects:
                nursery.start_soon(copy_one, o)
        if src.legacy is not None:
            # its legacy object (s3fs's "name" or compat_dir's
            # "name_$folder$") is replaced by a marker at the new name
            h = self.headers_for(src, content_changed=False)
            await self.store.put(new_prefix, b"", metadata=h.metadata,
                                 content_type="application/x-directory", headers=h.headers)
        old_keys = [o.key for o in objects]
        if src.legacy is not None:
            old_keys.append(src.legacy)
            src.legacy = None
        await self.store.delete_many(old_keys)
        await self.ns.forget_kept(old_prefix)
        self.table.move(src, new_parent, new_name)
        listed = {o.key: o.etag for o in objects}
        replaced: list[tuple[Inode, str]] = []
        for node in self.table.walk(src):
            if node.legacy is not None and node.legacy.startswith(old_prefix):
                node.legacy = new_prefix + node.legacy[len(old_prefix):]  # moved with the rest
            if node.remote is None or node.local:
                continue
            old = node.remote.key
            new_key = (new_prefix + old[len(old_prefix):] if old.startswith(old_prefix)
                       else self.table.key(node))
            was = listed.get(old)
            if node.remote.etag and was and bare_etag(was) != bare_etag(node.remote.etag):
                replaced.append((node, new_key))   # another client's version moved
                continue
            etag = new_etags.get(new_key, node.remote.etag)
            if node.data is not None:
                node.data.rebase(etag, node.remote.etag)
            node.remote = replace(node.remote, key=new_key, etag=etag)
            node.cache_etag = None
        for node, key in replaced:
            await self._replaced(node, key)

    # -- files ----------------------------------------------------------------------

    async def open(self, ino: int, flags: int, caller: Caller | None = None) -> FileHandle:
        node = self.table.get(ino)
        if self._vanished(node):
            raise Stale("the file is gone: removed, or its upload failed")
        await self.ns.settle(node)   # its ETag, if its HEAD is under way
        if node.is_dir:
            raise IsADirectory()
        if not node.is_reg:
            raise InvalidArgument("cannot open this file type")
        accmode = flags & os.O_ACCMODE
        writing = accmode != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            self._check_writable()
            await self.ns.ensure_metadata(node)
        elif node.data is None and node.remote is None and not node.local:
            # another client's version won over changes dropped here
            # (_remote_wins): ask S3 for it rather than open an empty file
            await self.ns.ensure_metadata(node)
        if (removing := self._removing.get(node.ino)) is not None:
            await removing.wait()
            return await self.open(ino, flags, caller)   # as if it came now
        if self.ns.unlinked(node) and node.open_count == 0:
            # removed (by an unlink here, or another client as a lookup
            # found) after the kernel looked the name up: ESTALE makes it
            # look the name up again, and O_CREAT makes a new file
            raise Stale("the file was removed as it was opened")
        fresh = node.data is None
        data = self._file_data(node)
        node.open_count += 1
        try:
            if fresh and node.shown_size is not None and node.shown_size != data.size:
                # The kernel holds another size, given while an earlier open
                # kept the version it read (another client replaced the
                # object meanwhile): it would end reads there.  Its
                # attributes go first.
                node.shown_size = None
                await self.ns.notifier.invalidate_attrs_now(node.ino)
            if flags & os.O_TRUNC:
                if data.size or data.base_size:
                    await data.truncate(0)
                    node.attr.size = 0
                elif not node.local:
                    data.mark_dirty()
                # POSIX: even an empty file's times are marked for update
                node.attr.mtime_ns = node.attr.ctime_ns = time.time_ns()
                self._kill_suid(node, caller)
        except BaseException:
            node.open_count -= 1
            await self._release_data(node)
            raise
        return self._alloc_fh(lambda fh: FileHandle(fh, node, flags, changes=bool(writing)))

    @staticmethod
    def _kill_suid(node: Inode, caller: Caller | None) -> None:
        """A truncate at open (O_TRUNC, which the kernel leaves to us) by
        anyone but root clears set-user-ID, and set-group-ID where group
        execute is set, as truncate(2) and write(2) do; the upload at close
        stores the mode."""
        if caller is None or caller.uid == 0:
            return
        mode = node.attr.mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & kill:
            node.attr.mode = mode & ~kill
            node.attr.ctime_ns = time.time_ns()

    def keep_cache(self, handle: FileHandle) -> bool:
        """True if the kernel's cached pages of this file are still valid."""
        node = handle.node
        current = node.remote.etag if node.remote is not None else None
        keep = current is not None and node.cache_etag == current and not node.local
        node.cache_etag = current
        handle.kept_cache = keep and node.pages
        if not keep:
            node.pages = False
        return keep

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        """A short answer (one that ends the file for the kernel) is sent only
        after the reads of the same file at lower offsets that were under way
        when it was ready: the kernel cuts its size at the end of the first
        short answer it gets, and then ignores the ends that reads sent
        before that answer give (their attribute version is older).  Two
        read-ahead requests of a file the kernel holds a larger size for (at
        0 and 1 MiB, of a handle that moved to a shorter version) would
        otherwise set its size to 1 MiB when the one at 1 MiB answered
        first, and the reader got the new bytes padded with zeros to 1 MiB."""
        h = self._file_handle(fh)
        ino = h.node.ino
        me = (off, trio.Event())
        reading = self._reading.setdefault(ino, [])
        reading.append(me)
        try:
            out = await self._read_moving(h, fh, off, size)
            if len(out) < size:
                for o, done in [r for r in reading if r[0] < off]:
                    await done.wait()
            return out
        finally:
            me[1].set()
            reading.remove(me)
            if not reading:
                del self._reading[ino]

    async def _read_moving(self, h: FileHandle, fh: int, off: int,
                           size: int) -> bytes | memoryview:
        moves = h.moves
        try:
            out = await self._read(h, off, size)
        except Stale:
            if h.moves == moves and not await self._follow(h):
                raise
            return await self._read_moving(h, fh, off, size)  # from the version it moved to
        if h.moves != moves:
            # bytes of the version this handle left while they were read
            raise Stale("object changed in S3 while open")
        h.served = h.node.pages = True
        return out

    async def _follow(self, h: FileHandle) -> bool:
        """Move a handle that has not read anything yet to the object's
        current version, after its first read found the object changed in S3
        (it was opened within ``metadata_ttl`` of a lookup that predates the
        change).  True if the handle moved, here or by another of its reads
        meanwhile: read again.

        The file's data is shared by its handles, so they move together, and
        only if none has returned bytes or kept the kernel's cached pages at
        its open (the old version's), the data is clean, and every other
        handle is read-only (a writer's offsets belong to the version it
        opened: its close fails instead).  Otherwise the reader gets ESTALE,
        as a handle that has returned bytes of the old version always does.
        """
        node, data = h.node, h.node.data
        moves = h.moves

        def unchanged() -> bool:   # after an await, h.moves is checked before it
            if node.data is not data:
                return False
            handles = self._handles_of(node)
            return len(handles) == node.open_count and all(
                not o.served and not o.kept_cache
                and (o is h or o.flags & os.O_ACCMODE == os.O_RDONLY) for o in handles)

        if data is None or data.local_reads or data.base_etag is None \
                or node.local or not unchanged():
            return False
        node.validated_at = float("-inf")
        try:
            await self.ns.revalidate(node)
        except FsError:
            return False
        if h.moves != moves:
            return True
        remote = node.remote
        if not unchanged() or remote is None or remote.etag == data.base_etag:
            return False  # it read or was opened again meanwhile, or deleted
        log.info("%s changed in S3 before its first read: reading the new version",
                 self.table.path(node))
        if remote.size > data.base_size:
            # The kernel must not end reads at the old size: its cached
            # attributes go before a byte of the new version is returned, so
            # a read past the old end asks for them again.  (A shorter
            # version needs nothing: the kernel takes a short read as the
            # end of the file; dropping the attributes during this read
            # would stop it doing so, and pad the old size with zeros.)
            await self.ns.notifier.invalidate_attrs_now(node.ino)
            if h.moves != moves:
                return True
            if not unchanged():
                return False
        for o in self._handles_of(node):
            if o.prefetcher is not None:
                o.prefetcher.close()
                o.prefetcher = None
            o.moves += 1
        node.data = None
        node.cache_etag = None
        self._file_data(node)
        await data.close()
        return True

    def _handles_of(self, node: Inode) -> list[FileHandle]:
        return [o for o in self.handles.values()
                if isinstance(o, FileHandle) and o.node is node]

    async def _read(self, h: FileHandle, off: int, size: int) -> bytes | memoryview:
        node = h.node
        data = node.data
        assert data is not None
        if data.local_reads or data.base_etag is None:
            return await data.read(off, size)
        pf = h.prefetcher
        if pf is None or pf.etag != data.base_etag or h.prefetch_version != data.version:
            if pf is not None:
                pf.close()
            assert self.ctx is not None
            pf = h.prefetcher = Prefetcher(self.ctx, self._key_fn(node), data.base_etag,
                                           data.size)
            h.prefetch_version = data.version
        return await pf.read(off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._file_handle(fh)
        node = h.node
        data = node.data
        assert data is not None
        if h.flags & os.O_ACCMODE == os.O_RDONLY:
            raise BadHandle("not open for writing")
        if off + len(buf) > MAX_OBJECT_SIZE:
            raise FileTooBig("S3 objects are at most 5 TiB")
        n = await data.write(off, buf)
        h.flush_failed = False
        node.pages = True
        now = time.time_ns()
        node.attr.mtime_ns = node.attr.ctime_ns = now
        node.attr.size = data.size
        self.ns.touch(node)
        return n

    async def flush(self, fh: int) -> None:
        """close(2): upload if anything changed; errors reach close().

        The close of a descriptor that could not change the file (opened
        read-only, neither creating nor truncating it) uploads nothing, as
        NFS's does not flush: a reader's close neither waits for the upload
        of what a writer still has open, nor reports its failure, nor cuts a
        streamed upload short.  fsync of any descriptor uploads."""
        h = self._file_handle(fh)
        if not h.changes:
            return
        node = h.node
        try:
            await self._upload(node)
        except FsError:
            h.flush_failed = True
            data = node.data
            if data is not None and data.broken and node.local and node.open_count == 1 \
                    and node.parent is not None:
                # A new file whose streamed upload failed, closed by its last
                # holder: it leaves now (see release), not at the release the
                # kernel sends after close() has returned, so a program that
                # saves again at once finds no dead name to write into.
                parent = node.parent
                self._remove(parent, node)
                self.ns.notifier.invalidate_entry(parent.ino, node.name)
            raise

    async def fsync(self, fh: int, datasync: bool) -> None:
        """Return only once the data is in S3 (with write-back too)."""
        h = self._file_handle(fh)
        await self._upload(h.node)
        await self._settle(h.node)

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if not isinstance(h, FileHandle):
            return
        node = h.node
        if h.prefetcher is not None:
            h.prefetcher.close()
        node.open_count -= 1
        if node.data is not None and node.data.dirty and not node.data.detached \
                and not h.flush_failed and (h.changes or node.open_count == 0):
            # (after a failed close() the bytes wait for the next close, fsync
            # or unmount: trying again here would hold up an unmount that
            # comes now for retries x read_timeout, past shutdown_timeout; a
            # reader's release leaves them to the writers still open)
            try:
                await self._upload(node)
            except FsError as e:
                log.error("upload of %s failed after close: %s", self.table.path(node), e)
        if node.open_count == 0 and node.data is not None:
            if node.data.dirty and not node.data.detached and not node.data.broken:
                return  # keep the bytes: a later flush_all retries
            data, node.data = node.data, None
            if h.flags & os.O_ACCMODE != os.O_RDONLY:
                node.shown_size = data.size   # the kernel's own, after its writes
            await data.close()
            if data.broken and node.parent is not None:
                # its streamed upload failed (its close said EIO) and its
                # bytes are gone: a new file, which S3 never had, goes too
                # rather than show a size that reads as nothing; an existing
                # one shows what S3 still holds
                if node.local:
                    parent = node.parent
                    self._remove(parent, node)
                    self.ns.notifier.invalidate_entry(parent.ino, node.name)
                else:
                    self._remote_wins(node)
        self.table.maybe_drop(node)

    # -- directories ----------------------------------------------------------------

    async def opendir(self, ino: int) -> DirHandle:
        node = self._dir(ino)
        return self._alloc_fh(lambda fh: DirHandle(fh, node))

    def dir_handle(self, fh: int) -> DirHandle:
        h = self.handles.get(fh)
        if not isinstance(h, DirHandle):
            raise BadHandle()
        return h

    async def readdir(self, fh: int, start: int) -> list[tuple[str, Inode]]:
        """Entries from index ``start`` on; index 0 takes a fresh snapshot."""
        h = self.dir_handle(fh)
        if start == 0:
            d = h.node
            fresh = self.ns.listing_fresh(d)
            metrics.cache("listing", hit=fresh)
            if not fresh:
                await self.ns.list_dir(d, defer=True)
            elif not self.cfg.trust_listing:
                await self.ns.fill_metadata(d, defer=True)
            assert d.children is not None
            h.entries = sorted(d.children.items())
        return h.entries[start:]

    def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    # -- xattrs -------------------------------------------------------------------------

    async def _xattr_node(self, ino: int) -> Inode:
        node = self.table.get(ino)
        await self.ns.settle(node)
        # past metadata_ttl as a getattr does: flistxattr through a descriptor
        # comes with no lookup (nor attribute refresh by the kernel) before it
        if not node.meta_known or not self.ns.fresh(node):
            await self.ns.revalidate(node)
        if not node.local and node.remote is not None and node.remote.metadata is None:
            await self.ns.ensure_metadata(node)
        return node

    @staticmethod
    def _xattr_name(raw: bytes) -> str:
        """A ``user.*`` name.  Other namespaces (security, system, trusted)
        are not stored here: EOPNOTSUPP, as a Linux filesystem without them
        answers.  ``ls -l`` then asks once per mount, not twice a file (the
        SELinux label and the ACL; ENODATA made it ask again for each).
        Bytes that are not UTF-8 are kept as they are (surrogate escapes), as
        s3fs stores them."""
        name = raw.decode("utf-8", "surrogateescape")
        if not name.startswith("user."):
            raise NotSupported("only user.* extended attributes are stored")
        if name == "user.":
            raise InvalidArgument("an xattr name needs something after user.")
        return name

    async def getxattr(self, ino: int, raw: bytes) -> bytes:
        name = self._xattr_name(raw)
        node = await self._xattr_node(ino)
        value = (node.xattrs or {}).get(name)
        if value is None:
            raise NoData(name)
        return value

    async def listxattr(self, ino: int) -> list[bytes]:
        node = await self._xattr_node(ino)
        # names of other namespaces that s3fs stored stay in the object,
        # unseen (kept when a user.* attribute changes)
        # names another tool stored that are not UTF-8 come back as they were
        return [md.xattr_name_bytes(n) for n in sorted(node.xattrs or {})
                if n.startswith("user.")]

    async def setxattr(self, ino: int, raw: bytes, value: bytes, flags: int = 0) -> None:
        self._check_writable()
        name = self._xattr_name(raw)
        if not md.valid_xattr_name(name):
            raise InvalidArgument("xattr name contains , : or \"")
        node = await self._xattr_node(ino)
        if node.is_symlink:
            raise NotPermitted("user xattrs on symlinks")
        async with self._acting(node):
            current = dict(node.xattrs or {})
            if flags & os.XATTR_CREATE and name in current:
                raise Exists(name)
            if flags & os.XATTR_REPLACE and name not in current:
                raise NoData(name)
            current[name] = bytes(value)
            self._check_xattr_size(node, current)
            await self._set_xattrs(node, current)

    async def _set_xattrs(self, node: Inode, xattrs: dict[str, bytes] | None) -> None:
        old = node.xattrs
        node.xattrs = xattrs
        node.attr.ctime_ns = time.time_ns()
        try:
            await self._persist_meta(node)
        except BaseException:
            node.xattrs = old
            raise

    def _check_xattr_size(self, node: Inode, xattrs: dict[str, bytes]) -> None:
        value = md.format_xattrs(xattrs) or ""
        a = node.attr
        meta = md.format_attrs(mode=a.mode, uid=a.uid, gid=a.gid, mtime_ns=a.mtime_ns,
                               ctime_ns=a.ctime_ns, atime_ns=a.atime_ns)
        meta[md.XATTR_KEY] = value
        if md.metadata_size(meta) > md.METADATA_LIMIT:
            raise TooBig("extended attributes exceed S3's 2 KB metadata limit",
                         errno=errno.ENOSPC)

    async def removexattr(self, ino: int, raw: bytes) -> None:
        self._check_writable()
        name = self._xattr_name(raw)
        node = await self._xattr_node(ino)
        async with self._acting(node):
            current = dict(node.xattrs or {})
            if name not in current:
                raise NoData(name)
            del current[name]
            await self._set_xattrs(node, current or None)

    # -- control ------------------------------------------------------------------------------

    @_by_name
    async def resolve(self, rel: str) -> Inode:
        """The inode at ``rel`` (relative to the mount root), without counting
        a kernel reference."""
        node = self.table.root
        for part in (p for p in rel.split("/") if p):
            if not node.is_dir:
                raise NotADirectory(rel)
            node = await self.ns.lookup(node, part)
        return node

    @_by_name
    async def refresh(self, rel: str) -> int:
        """Forget cached metadata of ``rel`` and everything under it, in this
        process and in the kernel: the next access asks S3.  Local changes
        not yet uploaded are kept.  Returns the number of entries dropped.
        A name this mount has as missing (a cached miss, or a listing without
        it) is dropped as such: its next lookup asks S3."""
        top = self.table.root
        parts = [p for p in rel.split("/") if p]
        for i, name in enumerate(parts):
            if not top.is_dir:
                raise NotADirectory(rel)
            try:
                node = await self.ns.lookup(top, name)
                if not node.is_dir and i < len(parts) - 1:
                    # a file here, by what this mount saw: another client may
                    # have made a directory of it since, so ask S3
                    self.ns.forget_listing(top)
                    node.validated_at = float("-inf")
                    node = await self.ns.lookup(top, name)
            except NotFound:
                self.ns.forget_negative(top, name)
                self.ns.forget_listing(top)
                self.ns.notifier.invalidate_entry(top.ino, name)
                return 1
            top = node
        if top.parent is not None:
            # the parent's listing vouches for the name's type and existence:
            # a file another client replaced by a directory (or the reverse)
            # would show as this mount saw it, or as missing
            self.ns.forget_listing(top.parent)
        dropped = 0
        notify = self.ns.notifier
        subtree = list(self.table.walk(top))
        inos = {n.ino for n in subtree}
        for n in subtree:
            if n.local or (n.data is not None and n.data.local_reads) or n.pending is not None:
                continue
            n.validated_at = float("-inf")
            n.meta_known = n.ino == ROOT_INODE and not self.table.root_prefix
            self.ns.forget_listing(n)
            n.cache_etag = None
            notify.invalidate_inode(n.ino)
            if n.parent is not None:
                notify.invalidate_entry(n.parent.ino, n.name)
            dropped += 1
        if top.ino == ROOT_INODE and self.table.root_prefix:
            # the root is never revalidated (see Namespace._ours): the
            # attributes in the prefix's marker are asked for here, as at
            # the mount
            try:
                info = await self.store.head(self.table.root_prefix)
            except NotFound:
                info = None
            self.ns.apply_info(top, info, is_dir=True)
            notify.invalidate_inode(top.ino)
        for key in [k for k in self.ns.negative if k[0] in inos]:
            self.ns.negative.pop(key, None)
        await self.ns.forget_kept(self.table.key(top))
        return dropped

    # -- misc -----------------------------------------------------------------------------

    def statfs(self) -> Statfs:
        return Statfs(bsize=STATFS_BLOCK, frsize=STATFS_BLOCK, blocks=STATFS_BLOCKS,
                      bfree=STATFS_BLOCKS, bavail=STATFS_BLOCKS, files=STATFS_FILES,
                      ffree=STATFS_FILES, favail=STATFS_FILES, namemax=keys.NAME_MAX)

    def access(self, ino: int, mode: int, caller: Caller) -> bool:
        """POSIX permission check (used when the kernel does not do it)."""
        node = self.table.get(ino)
        a = self.visible_attr(node)
        if caller.uid == 0:
            return not (mode & os.X_OK) or bool(a.mode & 0o111) or node.is_dir
        if caller.uid == a.uid:
            bits = (a.mode >> 6) & 7
        elif caller.gid == a.gid:
            bits = (a.mode >> 3) & 7
        else:
            bits = a.mode & 7
        return (mode & bits) == mode


def range_error(n: int) -> RangeError:
    return RangeError(f"buffer of {n} bytes too small")
