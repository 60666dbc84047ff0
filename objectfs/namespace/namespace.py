"""Resolving names against S3 and keeping the inode tree in step with it.

Lookup of ``name`` in directory ``d`` sends, side by side, a HEAD of
``d/name`` and a one-key ListObjectsV2 of the prefix ``d/name/``: a key and
a prefix of the same name can both exist, and the directory wins (what
s3fs's readdir shows and mountpoint-s3 does), so lookup and readdir agree.
Only when the listing shows a ``d/name/`` marker is it HEADed for its
attributes.  A fresh full listing of ``d`` answers lookups of missing
names without a request, as does the negative cache.

Listing a directory pages through ListObjectsV2 with delimiter ``/`` and
merges the result into the tree: new names get inodes, vanished names are
detached (the kernel is told), and entries changed or created locally after
the listing was requested are left alone.  Mode, owner and times are not in
listings, so entries whose metadata is unknown or changed are HEADed in
parallel (``stat_concurrency``) unless ``trust_listing`` is set.  A
readdir does not wait for those of entries whose type the listing already
settles (directories, and files of at least PATH_MAX bytes: no symlink, FIFO
or device is that big): it answers with what the listing gave, the kernel is
told to keep none of it (see ``filling``), and a stat of such an entry waits
for its HEAD (``settle``), sending it at once if its turn has not come.  So
``find`` of a big directory needs its listing only, ``ls -l`` sees each
file's mode and owner as before, and a stat of the last name of a big
directory does not wait for the HEADs of all the names before it.

With the local tier enabled (``cache_size`` > 0), S3 being unreachable
(connection refused, timeouts: ``StoreUnavailable``) does not make known
entries vanish: a lookup or revalidation of an entry this mount has seen
keeps its last known attributes, and a directory listed before keeps its
last listing, each for another ``metadata_ttl`` before S3 is tried again.
So cached files stay readable offline.  Names never seen still fail (EIO).
Once S3 was found unreachable, other known entries are served as last seen
without asking for ``metadata_ttl`` (at least a second), so each lookup of
an offline walk does not pay for its own retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from dataclasses import replace

import trio
from cachetools import LRUCache, TTLCache

from .. import metadata as md, metrics
from ..errors import FsError, NotFound, Stale, StoreUnavailable
from ..store.base import BODY_CACHE_BYTES, LAST_MODIFIED_SLACK_NS, ObjectInfo, ObjectStore
from . import attrdisk, keys
from .tree import Attr, Inode, InodeTable, clock
from ..tasks import open_nursery

log = logging.getLogger(__name__)

# A file this big is a regular file whatever its metadata says: a symlink's
# target is shorter than PATH_MAX, a FIFO or device holds nothing.
PATH_MAX = 4096

NEGATIVE_CACHE_ENTRIES = 100_000
# A directory bigger than one listing page is listed whole by lookups (up to
# this many pages, 16,000 entries) once this many names were looked up one
# by one within metadata_ttl.
LIST_AFTER_MISSES = 4
MAX_LOOKUP_LIST_PAGES = 16
# Once even that many pages did not hold it, lookups try again only after
# this many seconds (plus metadata_ttl), not every metadata_ttl: during a
# scan of a huge directory (du, ls -l) each try is 16 requests thrown away.
HUGE_RELIST_DELAY = 60.0
# A scan of a directory too big to list for a lookup (du or find -ls of
# 100,000 files once the entries are stale, a program opening the files of a
# manifest in order) looks names up one by one in key order.  The
# SCAN_AFTER-th such lookup in a row going forward (the ones before cost a
# HEAD, or a HEAD and a LIST, each) lists a window of SCAN_FIRST_WINDOW names
# from it on, which answers for the names after it too.  While lookups go on
# past a window in which other names were looked up, the next window is four
# times bigger, up to a page; past one nobody else used, lookups go back to
# HEADs, and the next window waits for twice as many lookups going forward
# (names far apart in order do not pay for a listing every few lookups).
# Scans are followed in this many directories at once, each until no lookup
# went through it for three times metadata_ttl (a lookup may first wait for
# a bounded listing, see HUGE_RELIST_DELAY).
SCAN_AFTER = 3
SCAN_FIRST_WINDOW = 8
SCAN_WINDOW_MAX = 1000
SCANS_KEPT = 64
# HEAD answers of single lookups are written to the metadata cache this many
# at a time (a listing's are written at once).
KEEP_BATCH = 256


class Notifier:
    """How the namespace tells the kernel to drop what it cached (no-op here;
    the FUSE adapter supplies the real one)."""

    def invalidate_inode(self, ino: int) -> None:
        pass

    def invalidate_entry(self, parent_ino: int, name: str) -> None:
        pass

    async def invalidate_attrs_now(self, ino: int) -> None:
        """Drop the kernel's cached attributes of ``ino`` (not its pages),
        returning once the kernel has."""


class _Scan:
    """Where lookups in one huge directory have been going (see SCAN_AFTER)."""
    __slots__ = ("at", "last", "forward", "wasted", "window", "listed", "end", "used")

    def __init__(self):
        self.at = clock()       # when a lookup last went through it
        self.last = ""          # the last name that cost a request
        self.forward = 0        # how many of those in a row went forward
        self.wasted = 0         # windows in a row that no other lookup used
        self.window = 0         # its window listing's size (0: none)
        # when that listing started, its last entry (as a name; None: to the
        # end), and how many lookups fell in it
        self.listed = float("-inf")
        self.end: str | None = None
        self.used = 0

    def inside(self, name: str) -> bool:
        return bool(self.window) and self.last < name and (self.end is None or name <= self.end)


class Namespace:
    def __init__(self, store: ObjectStore, cfg, notifier: Notifier | None = None):
        self.store = store
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.mount_time_ns = time.time_ns()
        root_attr = Attr(mode=stat.S_IFDIR | cfg.dir_mode, uid=self.uid, gid=self.gid,
                         size=4096, mtime_ns=self.mount_time_ns, ctime_ns=self.mount_time_ns,
                         atime_ns=self.mount_time_ns)
        self.table = InodeTable(keys.normalise_prefix(cfg.prefix), root_attr)
        self.table.root.implicit = True
        self.negative: TTLCache = TTLCache(NEGATIVE_CACHE_ENTRIES, max(cfg.negative_ttl, 1e-3),
                                           timer=clock)
        self._stat_limiter = trio.CapacityLimiter(cfg.stat_concurrency)
        # until when S3 is taken to be unreachable (see _offline)
        self.unreachable_until = float("-inf")
        # attributes kept on disk across mounts (metadata_cache), under
        # disk_ns; HEAD answers wait in _to_keep until the next write, the
        # keys of files removed through the mount in _gone (deleted first)
        self.attr_disk: attrdisk.AttrDisk | None = None
        self.disk_ns = ""
        self._to_keep: list[ObjectInfo] = []
        self._gone: list[str] = []
        # send time -> how many requests sent then are under way (_asking)
        self._asked: dict[float, int] = {}
        # directory ino -> its scan (see SCAN_AFTER)
        self._scans: LRUCache = LRUCache(SCANS_KEPT)
        # where a readdir's HEADs of entries it did not wait for run (None:
        # it waits for all, as before Filesystem.start), and the inodes whose
        # HEAD is under way there, each with what its stat waits for
        self.background: trio.Nursery | None = None
        self._filling: dict[int, trio.Event | None] = {}
        self._heading: set[int] = set()   # those of _filling whose HEAD is sent

    # -- attributes ---------------------------------------------------------

    def default_attr(self, is_dir: bool, mtime_ns: int | None = None, size: int = 0) -> Attr:
        t = mtime_ns or self.mount_time_ns
        mode = (stat.S_IFDIR | self.cfg.dir_mode) if is_dir else (stat.S_IFREG | self.cfg.file_mode)
        return Attr(mode=mode, uid=self.uid, gid=self.gid, size=4096 if is_dir else size,
                    mtime_ns=t, ctime_ns=t, atime_ns=t)

    def apply_info(self, node: Inode, info: ObjectInfo | None, *, is_dir: bool) -> None:
        """Set ``node``'s attributes from an object's metadata (or defaults).

        For directories ``info`` is the marker (or legacy object), None when
        the directory is only a prefix.  The type of an existing inode never
        changes here: callers replace the inode when the type changes.
        """
        info = self._paired(node.remote, info)
        node.remote = info
        node.validated_at = clock()
        if info is None:
            node.implicit = is_dir
            node.meta_known = True
            return
        node.implicit = False
        if info.metadata is None:
            # from a listing: only size and Last-Modified are known
            if not is_dir:
                node.attr.size = info.size
                if not node.meta_known:
                    node.attr.mtime_ns = node.attr.ctime_ns = node.attr.atime_ns = info.mtime_ns
            return
        if is_dir and info.key.endswith("/") and info.size > 0:
            keys.skip(info.key, "ends in '/' but holds data: shown as a directory, "
                      "its data is hidden")
        node.head_wall_ns = time.time_ns()
        pa = md.parse_attrs(info.metadata)
        ftype = stat.S_IFMT(node.attr.mode)
        default_perm = self.cfg.dir_mode if is_dir else self.cfg.file_mode
        perm = stat.S_IMODE(pa.mode) if pa.mode is not None else default_perm
        lm = info.mtime_ns or self.mount_time_ns
        node.attr = Attr(
            mode=ftype | perm,
            uid=pa.uid if pa.uid is not None else self.uid,
            gid=pa.gid if pa.gid is not None else self.gid,
            size=4096 if is_dir else info.size,
            mtime_ns=pa.mtime_ns if pa.mtime_ns is not None else lm,
            ctime_ns=pa.ctime_ns if pa.ctime_ns is not None else lm,
            atime_ns=pa.atime_ns if pa.atime_ns is not None else lm,
            rdev=pa.rdev or 0)
        raw = info.metadata.get(md.XATTR_KEY)
        node.xattrs = md.parse_xattrs(raw) if raw else None
        # the target is read from the body on the next readlink, unless a
        # geesefs header carries it (empty body)
        node.target = None
        if stat.S_ISLNK(node.attr.mode) and pa.symlink_target and not info.size:
            node.target = pa.symlink_target
        node.meta_known = True

    @staticmethod
    def _paired(known: ObjectInfo | None, info: ObjectInfo | None) -> ObjectInfo | None:
        """``info`` (a HEAD's answer), with the ETag a listing shows for its
        version when that is another (``listed_etag``): the one of
        ``known``, the listing entry it completes, when only the ETags
        differ, or the one ``known`` carried for the same version.  Swift's
        s3api lists an object copied from a multipart one (every chmod,
        utime or rename of a large file) by the MD5 of its bytes, while HEAD
        gives the "-N" ETag; without the pair, every relisting after
        ``metadata_ttl`` would take it for a new version: a HEAD, and its
        cached pages dropped."""
        if info is None or info.metadata is None or info.listed_etag or known is None:
            return info
        if known.metadata is None:
            if (known.etag != info.etag and known.size == info.size
                    and known.mtime_ns == info.mtime_ns):
                return replace(info, listed_etag=known.etag)
        elif known.etag == info.etag and known.listed_etag:
            return replace(info, listed_etag=known.listed_etag)
        return info

    @staticmethod
    def lists_as(known: ObjectInfo | None, listed: ObjectInfo) -> bool:
        """True if listing entry ``listed`` shows the version ``known``
        describes (by its ETag, or the one listings show for it)."""
        return (known is not None and known.size == listed.size
                and listed.etag in (known.etag, known.listed_etag))

    @staticmethod
    def type_of(info: ObjectInfo) -> int:
        """S_IFMT of an object from a HEAD (key, Content-Type, stored mode).

        An object of PATH_MAX bytes or more whose metadata says symlink, FIFO,
        socket or device is a regular file (no such entry is that big): its
        listing already showed it as one (``_type_settled``), and a symlink
        target that long cannot be returned to the kernel anyway."""
        ftype = md.object_file_type(info.key, info.content_type,
                                    md.parse_attrs(info.metadata or {}))
        if ftype not in (stat.S_IFDIR, stat.S_IFREG) and info.size >= PATH_MAX:
            return stat.S_IFREG
        return ftype

    def make_child(self, parent: Inode, name: str, ftype: int, info: ObjectInfo | None,
                   *, is_dir: bool) -> Inode:
        """Create (or replace) ``parent``'s child ``name`` from S3 data."""
        old = parent.children.get(name) if parent.children is not None else None
        if old is not None and stat.S_IFMT(old.attr.mode) == ftype:
            self.apply_info(old, info, is_dir=is_dir)
            return old
        if old is not None:
            self.notifier.invalidate_entry(parent.ino, name)
        attr = self.default_attr(is_dir, info.mtime_ns if info else None,
                                 info.size if info else 0)
        attr.mode = ftype | stat.S_IMODE(attr.mode)
        node = self.table.new(parent, name, attr)
        self.apply_info(node, info, is_dir=is_dir)
        return node

    # -- freshness ----------------------------------------------------------

    @staticmethod
    def _ours(node: Inode) -> bool:
        """True for an entry only this mount changes the attributes of: the
        root, a file not in S3 yet, open with local data, or staged."""
        return node.local or node.ino == 1 or (node.data is not None and node.data.local_reads) \
            or node.pending is not None

    def fresh(self, node: Inode, now: float | None = None) -> bool:
        """True if ``node``'s attributes need no revalidation now."""
        if self._ours(node):
            return True
        now = clock() if now is None else now
        return now - node.validated_at < self.cfg.metadata_ttl

    def fresh_for(self, node: Inode) -> float:
        """Seconds the kernel may keep ``node``'s entry and attributes: what
        is left of ``metadata_ttl`` since they were checked against S3 (a
        full ``metadata_ttl`` for entries of this mount's own, see _ours).
        Not a fresh ``metadata_ttl`` per answer: the kernel's time would add
        to the daemon's, and another client's change could take twice as
        long to show."""
        ttl = self.cfg.metadata_ttl
        if self._ours(node):
            return ttl
        return min(ttl, max(0.0, node.validated_at + ttl - clock()))

    def missing_for(self, parent: Inode, name: str) -> float:
        """Seconds the kernel may keep the miss of ``name`` in ``parent`` that
        this mount just answered: what is left of the listing that lacks it,
        or of the miss remembered (``negative_ttl`` for one just found)."""
        now = clock()
        neg = self.cfg.negative_ttl
        if self.listing_fresh(parent, now):
            assert parent.listed_at is not None
            return min(neg, max(0.0, parent.listed_at + self.cfg.metadata_ttl - now))
        found = self.negative.get((parent.ino, name))
        return neg if found is None else min(neg, max(0.0, found + neg - now))

    def holds_unsaved(self, node: Inode) -> bool:
        """True for a directory with a file under it whose changes are not
        in S3 yet (written since it was opened, or staged for write-back):
        it stays, though S3 may hold nothing under its prefix until that
        upload (a file recovered from an earlier mount; another client
        removed the directory, or put a file at its name), so the upload
        still reaches S3 under the key the file was written at."""
        return node.is_dir and any(
            n.pending is not None or (n.data is not None and n.data.dirty)
            for n in self.table.walk(node))

    def listing_fresh(self, d: Inode, now: float | None = None) -> bool:
        now = clock() if now is None else now
        return d.listed_at is not None and now - d.listed_at < self.cfg.metadata_ttl

    @contextlib.contextmanager
    def _asking(self):
        """The time a request whose answer is checked against ``removed``
        (a listing, a lookup's HEAD + LIST) was sent, counted while it is
        under way (see trim_removed)."""
        started = clock()
        self._asked[started] = self._asked.get(started, 0) + 1
        try:
            yield started
        finally:
            if self._asked[started] == 1:
                del self._asked[started]
            else:
                self._asked[started] -= 1

    def trim_removed(self) -> int:
        """Forget the names removed before every request still under way was
        sent: only an answer to an older request could bring them back (a
        directory never listed again kept one for every file created and
        deleted, or renamed away, in it).  Returns how many were dropped."""
        floor = min(self._asked, default=clock())
        dropped = 0
        for d in list(self.table.removing):
            old = [n for n, t in d.removed.items() if t < floor]
            for n in old:
                del d.removed[n]
            dropped += len(old)
            if not d.removed:
                self.table.removing.discard(d)
        return dropped

    def moved_since(self, node: Inode, key: str, started: float) -> bool:
        """Did a rename move ``node`` or a directory above it (or is one
        moving it) since a request about ``key``, its key then, was sent at
        ``started``?  The answer is about keys the rename was copying away
        and deleting: a listing or a HEAD that came back empty or short
        would take the entries it moves out of the tree (S3 kept them, at
        the new keys, and the mount no longer showed them)."""
        n: Inode | None = node
        while n is not None:
            if n.moved_at >= started:
                return True
            n = n.parent
        return self._key_or_none(node) != key

    def _key_or_none(self, node: Inode) -> str | None:
        try:
            return self.table.key(node)
        except NotFound:
            return None

    def touch(self, node: Inode) -> None:
        """Record a local change (guards it against older listings)."""
        node.changed_at = clock()
        node.validated_at = node.changed_at

    # -- lookup -------------------------------------------------------------

    def _offline(self, node: Inode, err: StoreUnavailable) -> bool:
        """S3 is unreachable: keep serving ``node`` as last seen, if allowed."""
        if not self.cfg.cache_size:
            return False
        log.info("S3 unreachable (%s): using the last known attributes of %r",
                 err.code, self.table.key(node))
        node.validated_at = clock()
        self.unreachable_until = node.validated_at + max(self.cfg.metadata_ttl, 1.0)
        return True

    def _known_offline(self, node: Inode | None) -> bool:
        """True if ``node`` is to be served as last seen without asking S3."""
        return node is not None and clock() < self.unreachable_until

    async def lookup(self, parent: Inode, name: str) -> Inode:
        """The child ``name`` of directory ``parent``; NotFound if none."""
        child = parent.children.get(name) if parent.children is not None else None
        if self._known_offline(child):
            return child
        try:
            return await self._lookup(parent, name)
        except StoreUnavailable as e:
            child = parent.children.get(name) if parent.children is not None else None
            if child is None or not self._offline(child, e):
                raise
            return child

    async def _lookup(self, parent: Inode, name: str) -> Inode:
        if parent.children is None:
            raise NotFound("not a directory")
        child = parent.children.get(name)
        if child is not None and child.ino in self._filling:
            await self.settle(child)
            child = parent.children.get(name)
        now = clock()
        if child is not None and self.fresh(child, now):
            self._count_in_scan(parent, name)
            if child.meta_known or self.cfg.trust_listing:
                metrics.cache("lookup", hit=True)
                return child
            metrics.cache("lookup", hit=False)
            return await self._complete(parent, child)
        if self.listing_fresh(parent, now):
            # the listing is current: a name it lacks does not exist, and an
            # entry it could not vouch for (see _merge) needs one HEAD
            metrics.cache("lookup", hit=child is None)
            if child is None:
                raise NotFound(name)
            return await self._complete(parent, child)
        if child is None and (parent.ino, name) in self.negative:
            metrics.cache("lookup", hit=True)
            raise NotFound(name)
        metrics.cache("lookup", hit=False)
        pages = self._listing_budget(parent, now)
        if pages:
            # A page or a few usually hold the whole directory: the listing
            # answers this lookup and every later one here (hits and misses)
            # for metadata_ttl, for the price of the HEAD + LIST of one name.
            started = clock()
            listed, early = await self._list_and_head(parent, name, child, pages)
            if listed:
                child = parent.children.get(name)
                if child is None:
                    raise NotFound(name)
                if (child.meta_known or self.cfg.trust_listing) and self.fresh(child):
                    return child
                if early is not None and self._same_version(child, early, started) \
                        and not self._small(child):
                    self._apply_head(parent, child, early)
                    if len(self._to_keep) >= KEEP_BATCH:
                        await self.keep_heads()
                    return parent.children[name]
                return await self._complete(parent, child)
            parent.big_at = clock()  # too big: look names up one by one
            parent.misses = 0
            if pages == MAX_LOOKUP_LIST_PAGES:
                # even a bounded listing cannot hold it: do not pay for
                # another in vain while a scan (du, ls -l) goes on
                parent.big_listed_at = clock() + HUGE_RELIST_DELAY
        parent.misses += 1
        if child is None or not child.is_dir:
            return await self._lookup_in_big(parent, name, child)
        return await self._resolve(parent, name)

    async def _list_and_head(self, parent: Inode, name: str, child: Inode | None,
                             pages: int) -> tuple[bool, ObjectInfo | None]:
        """``_list(parent, pages)``, with the HEAD that a file ``name`` would
        need next sent beside it, so a lookup in a directory not listed
        lately waits for one round trip instead of two.  Returns the
        listing's result and the HEAD's answer (None if it failed or was
        not sent: a directory, ``trust_listing``, which needs none, or a
        directory found too big to list before, where the lookup goes on
        without the listing and asks its own way).  A name that is not a
        file costs S3 one HEAD answered 404, once per listing of the
        directory; so does a small file, which the lookup then fetches whole
        as before (see small_file_prefetch): the HEAD goes out before its
        size is known."""
        key = self.table.key(parent) + name
        try:
            keys.check_key(key)
        except (FsError, UnicodeError):
            key = None  # the lookup reports it
        if key is None or self.cfg.trust_listing or (child is not None and child.is_dir) \
                or parent.big_at != float("-inf"):
            return await self._list(parent, max_pages=pages), None
        got: list[ObjectInfo] = []

        async def head() -> None:
            async with self._stat_limiter:
                try:
                    # a HEAD, not a GET of a small file's body as _fill asks:
                    # the size is not known yet, and a large file's first
                    # bytes would be thrown away
                    got.append(await self.store.head(key))
                except FsError:
                    pass  # the lookup asks again if it needs to, and reports errors then

        async with open_nursery() as n:
            n.start_soon(head)
            listed = await self._list(parent, max_pages=pages)
        return listed, (got[0] if got else None)

    @staticmethod
    def _same_version(child: Inode, info: ObjectInfo, started: float) -> bool:
        """True if ``info``, a HEAD sent at ``started`` beside the listing
        that made ``child``, describes the version that listing showed and
        nothing changed ``child`` here since."""
        listed = child.remote
        return (not child.is_dir and listed is not None and child.changed_at < started
                and listed.etag == info.etag and listed.size == info.size
                and (not listed.mtime_ns or not info.mtime_ns
                     or listed.mtime_ns == info.mtime_ns))

    async def _lookup_in_big(self, parent: Inode, name: str, child: Inode | None) -> Inode:
        """A name of a directory too big to list for a lookup, new or a file
        gone stale.  In a scan (see SCAN_AFTER), a window listing from it on
        answers it and the names after it: du of 100,000 stale files asks
        for about a hundred listings, not a request a file.  Otherwise a
        stale file costs one HEAD (a prefix name/ made beside it then shows
        at the next listing that covers it), a new name a HEAD and a LIST."""
        if child is None and self._window_lacks(parent, name):
            self.negative[(parent.ino, name)] = clock()
            raise NotFound(name)
        window = self._scan_window(parent, name)
        if window and await self._list_window(parent, name, window):
            node = parent.children.get(name)
            if node is None:
                self.negative[(parent.ino, name)] = clock()
                raise NotFound(name)
            if node.meta_known and self.fresh(node):
                return node
            return await self._complete(parent, node)  # new, changed or too recent to vouch for
        if child is None:
            return await self._resolve(parent, name)
        return await self._complete(parent, child)

    def _scan_window(self, d: Inode, name: str) -> int:
        """How many names a lookup of ``name`` in huge directory ``d`` lists
        from it on (0: none).  Never with ``trust_listing``: there the HEAD of
        a lookup is what shows the attributes stored in an object's metadata."""
        if self.cfg.trust_listing:
            return 0
        now = clock()
        scan = self._scans.get(d.ino)
        if scan is None or now - scan.at > 3 * self.cfg.metadata_ttl:
            scan = self._scans[d.ino] = _Scan()  # none, or over: a new one
        scan.at = now
        inside = scan.inside(name)
        if inside and now - scan.listed < self.cfg.metadata_ttl:
            scan.used += 1
            return 0  # the last window could not vouch for it: a HEAD, the scan goes on
        forward = name > scan.last
        if inside:
            pass  # the window went stale before the scan came here: list on from here
        elif scan.window and forward and scan.used > 1:
            scan.window = min(SCAN_WINDOW_MAX, scan.window * 4)  # past a window put to use
            scan.wasted = 0
        elif scan.window:
            # nothing else was looked up in it (names far apart): the next
            # try waits for twice as many lookups going forward
            scan.forward, scan.window = 0, 0
            scan.wasted += 1
        else:
            scan.forward = scan.forward + 1 if forward else 0
            due = scan.forward >= SCAN_AFTER << min(scan.wasted, 10)
            scan.window = SCAN_FIRST_WINDOW if due else 0
        scan.last, scan.end, scan.used = name, None, 1
        scan.listed = float("-inf")  # not to be trusted until it is listed
        return scan.window

    def _window_lacks(self, d: Inode, name: str) -> bool:
        """True if a window listed less than metadata_ttl ago holds ``name``'s
        place and not ``name``: it is missing, as a full listing would say
        (rsync or cp of new files into a huge directory, in order)."""
        scan = self._scans.get(d.ino) if self._scans else None
        return (scan is not None and scan.inside(name) and scan.inside(self._last_place(name))
                and clock() - scan.listed < self.cfg.metadata_ttl)

    def _last_place(self, name: str) -> str:
        """The last of the places where ``name`` can show in a listing of its
        directory, in key order: the file ``name``, the prefix ``name/`` (a
        directory, which sorts after ``name.txt``), or ``name_$folder$``."""
        return name + (keys.FOLDER_SUFFIX if self.cfg.compat_dir else "/")

    def _count_in_scan(self, d: Inode, name: str) -> None:
        """A lookup answered from the cache: count it if a window brought it."""
        scan = self._scans.get(d.ino) if self._scans else None
        if scan is not None and scan.inside(name):
            scan.used += 1
            scan.at = clock()

    async def _list_window(self, d: Inode, name: str, size: int) -> bool:
        """List ``size`` entries of ``d`` from ``name`` on, and merge them: the
        names in that key range are as fresh as after a full listing.  True
        if the range holds every place of ``name`` (a file or a directory)."""
        with self._asking() as started:
            return await self._list_window_since(d, name, size, started)

    async def _list_window_since(self, d: Inode, name: str, size: int, started: float) -> bool:
        prefix = self.table.key(d)
        lo = keys.key_before(prefix + name)
        page = await self.store.list_page(prefix, delimiter="/", max_keys=size,
                                          start_after=lo)
        listed = [o.key for o in page.objects] + list(page.prefixes)
        if page.next_token and not listed:
            return False
        # the range it answers for, as entries of d: after lo, up to its last
        # key or prefix if there are more, else to the end
        end = max(listed)[len(prefix):] if page.next_token else None
        files: dict[str, ObjectInfo] = {}
        dirs: set[str] = set()
        legacy: dict[str, str] = {}
        self._collect(prefix, page.objects, page.prefixes, files, dirs, legacy)
        kept = await self._kept(d, prefix, files)
        moving = self.moved_since(d, prefix, started)
        if moving and self._key_or_none(d) != prefix:
            return await self._list_window(d, name, size)   # again where it is now
        self._merge(d, started, files, dirs, legacy, kept, within=(lo[len(prefix):], end),
                    adds_only=moving)
        scan = self._scans.get(d.ino)
        if scan is not None:
            scan.listed, scan.end = started, end
        return end is None or self._last_place(name) <= end

    def _listing_budget(self, d: Inode, now: float) -> int:
        """How many listing pages a lookup in ``d`` may spend to list it whole.

        One page, unless ``d`` was found bigger than a page recently; then
        none, until names keep being looked up one by one (cp into the
        directory, a build): after a few, a bounded multi-page listing is
        cheaper than a HEAD + LIST per name.
        """
        if now - d.big_at >= self.cfg.metadata_ttl:
            return 1
        if d.misses >= LIST_AFTER_MISSES and now - d.big_listed_at >= self.cfg.metadata_ttl:
            d.big_listed_at = now
            return MAX_LOOKUP_LIST_PAGES
        return 0

    async def _legacy_dir(self, child: Inode) -> None:
        """A directory without a marker: its attributes come from a legacy
        directory object if it has one (and if the candidate key really is
        one), else it is a plain prefix."""
        self.apply_info(child, await self.verify_legacy(child), is_dir=True)

    async def verify_legacy(self, node: Inode) -> ObjectInfo | None:
        """HEAD a directory's legacy no-slash object and return it, if the
        key really is one; else forget the key.  A listing only guesses so (a
        key "name" beside "name/"): an ordinary file of that name, hidden by
        the directory, must be left alone (never deleted or moved with it).
        None for a compat_dir ``name_$folder$`` object, kept as it is."""
        if node.legacy is None or node.legacy.endswith(keys.FOLDER_SUFFIX):
            return None
        try:
            info = await self.store.head(node.legacy)
        except NotFound:
            info = None
        if info is None or self.type_of(info) != stat.S_IFDIR:
            node.legacy = None
            return None
        return info

    async def _complete(self, parent: Inode, child: Inode) -> Inode:
        """HEAD a child known from a listing only; NotFound if it is gone."""
        await self._fill(parent, [child], strict=True)
        node = parent.children.get(child.name)
        if node is None:
            raise NotFound(child.name)
        return node

    async def _resolve(self, parent: Inode, name: str) -> Inode:
        with self._asking() as started:
            return await self._resolve_since(parent, name, started)

    async def _resolve_since(self, parent: Inode, name: str, started: float) -> Inode:
        parent_key = self.table.key(parent)
        key = parent_key + name
        keys.check_key(key)
        head: list[ObjectInfo | None] = [None]
        folder: list[ObjectInfo | None] = [None]
        page = [None]

        async def do_head(target: list, k: str) -> None:
            try:
                target[0] = await self.store.head(k)
            except NotFound:
                pass

        async def do_list() -> None:
            page[0] = await self.store.list_page(key + "/", delimiter="/", max_keys=1)

        async with open_nursery() as n:
            n.start_soon(do_head, head, key)
            n.start_soon(do_list)
            if self.cfg.compat_dir:
                n.start_soon(do_head, folder, key + keys.FOLDER_SUFFIX)

        current = parent.children.get(name) if parent.children is not None else None
        if current is not None and current.changed_at >= started:
            return current  # changed locally while we asked: ours is newer
        moving = self.moved_since(parent, parent_key, started)
        if moving:
            # asked at keys a rename was moving: what we hold stays; else,
            # once it has moved them, ask again where they are now (while it
            # is under way, a node made here moves with the rest)
            if current is not None:
                return current
            if self._key_or_none(parent) != parent_key:
                return await self._resolve(parent, name)
        if parent.removed.get(name, -1.0) >= started:
            raise NotFound(name)

        listing = page[0]
        if listing.objects or listing.prefixes:
            marker = None
            if listing.objects and listing.objects[0].key == key + "/":
                try:
                    marker = await self.store.head(key + "/")
                except NotFound:
                    marker = None
            legacy = None
            if head[0] is not None and self.type_of(head[0]) == stat.S_IFDIR:
                legacy = head[0]
            node = self.make_child(parent, name, stat.S_IFDIR, marker or legacy, is_dir=True)
            node.legacy = legacy.key if (legacy is not None and marker is None) else None
            return node
        info = head[0]
        if info is not None and current is not None and self.holds_unsaved(current) \
                and self.type_of(info) != stat.S_IFDIR:
            # the file being saved under it keeps the directory
            self.apply_info(current, None, is_dir=True)
            return current
        if info is not None:
            ftype = self.type_of(info)
            is_dir = ftype == stat.S_IFDIR
            node = self.make_child(parent, name, ftype, info, is_dir=is_dir)
            node.legacy = info.key if is_dir else None
            return node
        if folder[0] is not None:
            node = self.make_child(parent, name, stat.S_IFDIR, None, is_dir=True)
            node.legacy = folder[0].key
            return node
        if current is not None and self.holds_unsaved(current):
            # nothing in S3 yet, but a file being saved under it will create it
            self.apply_info(current, None, is_dir=True)
            return current
        # nothing: forget any stale child and cache the miss
        if current is not None:
            self.notifier.invalidate_entry(parent.ino, name)
            self.table.detach(current, remember=False)
        if not moving:
            self.negative[(parent.ino, name)] = clock()
        raise NotFound(name)

    def forget_negative(self, parent: Inode, name: str) -> None:
        self.negative.pop((parent.ino, name), None)

    def forget_listing(self, d: Inode) -> None:
        """``d``'s listing (and a window of it, see _scan_window) no longer
        answers for its names: the next lookup there asks S3."""
        d.listed_at = None
        self._scans.pop(d.ino, None)

    # -- revalidation -------------------------------------------------------

    async def revalidate(self, node: Inode) -> None:
        """Refresh a stale inode from S3; NotFound (and detached) if it is gone.

        Open files are never detached here: their handles go on working.
        """
        if self.fresh(node) or self._known_offline(node):
            metrics.cache("attr", hit=True)
            if node.parent is not None:
                self._count_in_scan(node.parent, node.name)
            return
        metrics.cache("attr", hit=False)
        parent = node.parent
        if parent is None:
            if node.open_count:
                return
            raise NotFound("deleted")
        try:
            if not node.is_dir and clock() - parent.big_at < self.cfg.metadata_ttl:
                fresh = await self._lookup_in_big(parent, node.name, node)  # as in _lookup
            else:
                fresh = await self._resolve(parent, node.name)
        except StoreUnavailable as e:
            if self._offline(node, e):
                return
            raise
        except NotFound:
            if node.open_count or node.data is not None:
                node.validated_at = clock()
                return
            raise
        if fresh is not node and node.open_count == 0:
            raise NotFound("replaced")

    # -- listing ------------------------------------------------------------

    async def list_dir(self, d: Inode, *, defer: bool = False) -> None:
        """Bring ``d``'s children up to date with a full listing (``defer``:
        see ``fill_metadata``)."""
        if d.listed_at is not None and self._known_offline(d):
            d.listed_at = clock()
            return
        try:
            await self._list(d)
        except StoreUnavailable as e:
            if d.listed_at is None or not self._offline(d, e):
                raise
            d.listed_at = clock()
            return
        if not self.cfg.trust_listing:
            await self.fill_metadata(d, defer=defer)

    async def _list(self, d: Inode, max_pages: int = 0) -> bool:
        """List ``d`` and merge the result; with ``max_pages``, give up
        (returning False, changing nothing) if it takes more pages."""
        with self._asking() as started:
            return await self._list_since(d, max_pages, started)

    async def _list_since(self, d: Inode, max_pages: int, started: float) -> bool:
        prefix = self.table.key(d)
        files: dict[str, ObjectInfo] = {}
        dirs: set[str] = set()
        legacy: dict[str, str] = {}
        token = None
        pages = 0
        while True:
            page = await self.store.list_page(prefix, delimiter="/", token=token)
            self._collect(prefix, page.objects, page.prefixes, files, dirs, legacy)
            token = page.next_token
            if not token:
                break
            pages += 1
            if max_pages and pages >= max_pages:
                return False
        kept = await self._kept(d, prefix, files)
        moving = self.moved_since(d, prefix, started)
        if moving and self._key_or_none(d) != prefix:
            return await self._list(d, max_pages)   # listed where it was: again where it is
        self._merge(d, started, files, dirs, legacy, kept, adds_only=moving)
        return True

    def _collect(self, prefix: str, objects, prefixes, files: dict[str, ObjectInfo],
                 dirs: set[str], legacy: dict[str, str]) -> None:
        """Sort a listing's keys and common prefixes into files, directories
        and legacy directory objects (``name_$folder$``)."""
        for o in objects:
            ent = keys.entry_from_listing(prefix, o.key)
            if ent is None:
                continue
            name, is_dir = ent
            if is_dir:
                dirs.add(name)
            elif self.cfg.compat_dir and name.endswith(keys.FOLDER_SUFFIX) \
                    and len(name) > len(keys.FOLDER_SUFFIX):
                base = name[:-len(keys.FOLDER_SUFFIX)]
                dirs.add(base)
                legacy[base] = o.key
            else:
                files[name] = o
        for p in prefixes:
            ent = keys.entry_from_listing(prefix, p)
            if ent is not None:
                dirs.add(ent[0])

    # -- attributes kept on disk (metadata_cache) ----------------------------

    async def _disk(self, method: str, *args):
        """Call an AttrDisk method in a worker thread; an error turns the
        disk cache off for the rest of the mount (it is only a cache)."""
        disk = self.attr_disk
        if disk is None:
            return None
        try:
            return await trio.to_thread.run_sync(getattr(disk, method), *args)
        except Exception as e:  # sqlite3.Error, OSError: never fail a listing for it
            log.warning("metadata cache disabled: %s", e)
            self.attr_disk = None
            return None

    async def _kept(self, d: Inode, prefix: str,
                    files: dict[str, ObjectInfo]) -> dict[str, ObjectInfo] | None:
        """Kept HEAD answers (by name) for the files of a complete listing of
        ``d`` (at ``prefix``) that it shows unchanged (see attrdisk); the
        rows it contradicts are deleted.  Not looked for when ``d`` was
        listed before in this mount and every file listed is known already
        (a directory listed again and again pays nothing): None then."""
        if self.attr_disk is None:
            return None
        children = d.children or {}
        if d.listed_at is not None and all(
                (c := children.get(n)) is not None and c.meta_known for n in files):
            return None
        found = await self._disk("match", self.disk_ns, prefix,
                                 {o.key: o for o in files.values()})
        if found is None:
            return None
        return {i.key[len(prefix):]: i for i in found}

    async def keep_heads(self) -> None:
        """Write the HEAD answers gathered since the last call to disk,
        after deleting the rows of the files removed since (``file_gone``)."""
        gone, self._gone = self._gone, []
        todo, self._to_keep = self._to_keep, []
        if gone:
            await self._disk("forget_files", self.disk_ns, gone)
        if todo:
            await self._disk("save", self.disk_ns, todo)

    async def file_gone(self, key: str) -> None:
        """The file at ``key`` was deleted or moved away through the mount:
        its kept row goes too, with the next batch (a mount that creates and
        deletes files of new names for weeks would otherwise add a row for
        each, never read again)."""
        if self.attr_disk is None:
            return
        self._to_keep = [i for i in self._to_keep if i.key != key]
        self._gone.append(key)
        if len(self._gone) >= KEEP_BATCH:
            await self.keep_heads()

    async def forget_kept(self, prefix: str) -> None:
        """Drop what is kept of the key ``prefix`` (of every key under it for
        a directory's prefix: see AttrDisk.forget)."""
        self._to_keep = [i for i in self._to_keep if not attrdisk.covers(prefix, i.key)]
        await self._disk("forget", self.disk_ns, prefix)

    def close_disk(self) -> None:
        """Write what is left and close (at unmount, from the loop's thread)."""
        disk, self.attr_disk = self.attr_disk, None
        if disk is None:
            return
        try:
            if self._gone:
                disk.forget_files(self.disk_ns, self._gone)
            disk.save(self.disk_ns, self._to_keep)
            disk.close()
        except Exception as e:
            log.warning("could not write the metadata cache: %s", e)
        self._to_keep, self._gone = [], []

    def _merge(self, d: Inode, started: float, files: dict[str, ObjectInfo],
               dirs: set[str], legacy: dict[str, str],
               kept: dict[str, ObjectInfo] | None = None,
               within: tuple[str, str | None] | None = None, adds_only: bool = False) -> None:
        """Bring ``d``'s children in line with a listing started at
        ``started``.  ``within`` (lo, hi): the listing covers only the entries
        after ``lo`` up to ``hi`` (None: to the end), a directory being at
        ``name/`` as in a listing; names outside are left as they are, and
        the directory does not count as freshly listed.  ``adds_only``: a
        listing made while a rename moved ``d`` (see moved_since), which may
        lack what it had copied away and deleted: as a window that covers no
        name, it adds and updates entries, removes none, and does not count
        as a listing."""
        assert d.children is not None
        if adds_only:
            within = ("", "")   # no entry is after "" and up to ""

        def covered(name: str, is_dir: bool) -> bool:
            if within is None:
                return True
            entry = name + "/" if is_dir else name
            return within[0] < entry and (within[1] is None or entry <= within[1])

        for name in list(d.removed):
            if d.removed[name] < started and (covered(name, False) or covered(name, True)):
                del d.removed[name]
        for name, child in list(d.children.items()):
            if name in dirs or name in files:
                continue
            if not covered(name, child.is_dir):
                continue
            if child.local or child.changed_at >= started or child.data is not None \
                    or child.open_count or child.pending is not None \
                    or self.holds_unsaved(child):
                continue
            if child.is_dir and child.legacy is not None:
                continue  # a legacy (no-slash) dir object shows as a file in listings
            self.notifier.invalidate_entry(d.ino, name)
            self.table.detach(child, remember=False)
            if within is not None:
                self.negative[(d.ino, name)] = clock()  # a full listing answers for itself
        for name in dirs:
            if name in d.removed:
                continue
            child = d.children.get(name)
            if child is not None and (child.changed_at >= started or child.local):
                continue
            if child is None or not child.is_dir:
                child = self.make_child(d, name, stat.S_IFDIR, None, is_dir=True)
                child.meta_known = False  # a marker may hold its attributes
                if name in legacy:
                    child.legacy = legacy[name]
                elif name in files:
                    # a key "name" beside the prefix "name/": perhaps s3fs's
                    # legacy no-slash directory object (checked by _fill)
                    child.legacy = files[name].key
            # A directory already known stays as it is: the listing shows
            # its prefix, not whether a marker "name/" holds attributes (one
            # another client's chmod of a bare prefix writes), so it is
            # checked once stale, as one with a marker is (see _fill).
        for name, info in files.items():
            if name in dirs or name in d.removed:
                continue
            child = d.children.get(name)
            if child is not None and (child.changed_at >= started or child.local
                                      or (child.data is not None and child.data.local_reads)
                                      or child.pending is not None):
                continue
            if child is not None and child.is_dir:
                if child.legacy == info.key or not covered(name, True) \
                        or self.holds_unsaved(child):
                    # its legacy object; or a window that ends before
                    # "name/" cannot tell that the directory is gone; or a
                    # file being saved under it keeps it
                    continue
                child = None
            if kept is not None and (child is None or not child.meta_known):
                # counted as the metadata_cache's hit or miss (a HEAD to come)
                k = kept.get(name)
                ktype = self.type_of(k) if k is not None else 0
                use = k is not None and ktype != stat.S_IFDIR and (
                    child is None or stat.S_IFMT(child.attr.mode) == ktype)
                metrics.cache("metadata_disk", hit=use)
                if use:
                    self.make_child(d, name, ktype, k, is_dir=False)  # as a HEAD would
                    continue
            if child is None:
                child = self.make_child(d, name, stat.S_IFREG, info, is_dir=False)
                child.meta_known = False
                continue
            old = child.remote
            same = self.lists_as(old, info)
            changed = (not same
                       or (old.mtime_ns and info.mtime_ns and old.mtime_ns != info.mtime_ns))
            if changed:
                if old is not None and not (same or old.etag == info.etag):
                    self.notifier.invalidate_inode(child.ino)
                child.remote = info
                child.attr.size = info.size
                child.meta_known = False
            elif info.mtime_ns + LAST_MODIFIED_SLACK_NS < child.head_wall_ns:
                # Unchanged ETag, size and Last-Modified prove the attributes
                # unchanged only if a change would have moved Last-Modified:
                # it has one-second granularity, so an object last modified
                # within a second or two of our HEAD could have been changed
                # again (a chmod is a copy onto itself) without showing here.
                child.validated_at = clock()
        if within is None:
            d.listed_at = started
            d.validated_at = clock()

    async def fill_metadata(self, d: Inode, *, defer: bool = False) -> None:
        """HEAD, in parallel, every child whose attributes are unknown or
        stale.  ``defer`` (a readdir): wait only for the children whose type
        the HEAD may change; the others' HEADs go on in the background, each
        ``filling`` until its answer is in."""
        assert d.children is not None
        now = clock()
        todo = [c for c in d.children.values()
                if not c.local and c.pending is None and c.ino not in self._filling
                and (not c.meta_known or not self.fresh(c, now))]
        later = [c for c in todo if self._type_settled(c)] \
            if defer and self.background is not None else []
        if later:
            # directories first: a walk (find, du) waits for each one it enters
            later.sort(key=lambda c: not c.is_dir)
            try:
                self.background.start_soon(self._fill_later, d, later)
            except RuntimeError:
                pass   # the mount is stopping: do them here
            else:
                for c in later:
                    self._filling[c.ino] = None   # an Event once a stat waits
                todo = [c for c in todo if c.ino not in self._filling]
        await self._fill(d, todo)

    @staticmethod
    def _type_settled(child: Inode) -> bool:
        """True if ``child``'s HEAD cannot change the type its listing
        gave: a directory (a prefix), or a file of PATH_MAX bytes or more."""
        return child.is_dir or (stat.S_ISREG(child.attr.mode) and child.attr.size >= PATH_MAX)

    async def _fill_queued(self, d: Inode, nodes: list[Inode]) -> None:
        """``_fill`` of ``filling`` entries; a bug in it is logged and their
        attributes stay the listing's (it must not take the mount's nursery
        down, nor fail the stat that sent a HEAD itself)."""
        try:
            await self._fill(d, nodes, queued=True)
        except Exception:
            log.exception("filling in the attributes of %r failed", self.table.key(d))

    async def _fill_later(self, d: Inode, later: list[Inode]) -> None:
        try:
            await self._fill_queued(d, later)
        finally:
            for c in later:   # those not reached (cancelled, failed), but not
                if c.ino not in self._heading:   # one a stat is HEADing
                    self._settled(c)

    def filling(self, node: Inode) -> bool:
        """True while ``node``'s attributes are the listing's, its HEAD
        under way: the kernel must not keep them."""
        return node.ino in self._filling

    async def settle(self, node: Inode) -> None:
        """Wait for the HEAD of an entry a readdir answered for without it;
        send it now if the background has not reached it (a stat of the last
        of 10,000 names would otherwise wait for the other 9,999)."""
        if node.ino not in self._filling:
            return
        if node.ino not in self._heading and node.parent is not None:
            await self._fill_queued(node.parent, [node])
            if node.ino not in self._filling:
                return
        event = self._filling[node.ino]   # another task sent it: wait for that
        if event is None:
            event = self._filling[node.ino] = trio.Event()
        await event.wait()

    def _settled(self, node: Inode) -> None:
        self._heading.discard(node.ino)
        event = self._filling.pop(node.ino, None)
        if event is not None:
            event.set()

    async def _fill(self, d: Inode, todo: list[Inode], strict: bool = False,
                    queued: bool = False) -> None:
        """HEAD ``todo`` in parallel.  ``strict``: a file's HEAD error is raised
        (a lookup of that file); else it is logged and the entry kept.
        ``queued``: ``todo`` are ``filling``; one whose HEAD a stat sent
        meanwhile (or whose answer is in) is skipped."""
        if not todo:
            return
        # A small file comes whole with its attributes (small_file_prefetch),
        # unless the batch's small files hold more than a store keeps: most
        # of those bodies would be dropped before a read, so HEADs it is.
        whole = sum(c.attr.size for c in todo if self._small(c)) <= BODY_CACHE_BYTES

        async def one(child: Inode) -> None:
            if queued:
                if child.ino not in self._filling or child.ino in self._heading:
                    return
                self._heading.add(child.ino)
            try:
                await head_one(child)
            finally:
                self._settled(child)

        async def head_one(child: Inode) -> None:
            async with self._stat_limiter:
                if child.parent is not d:
                    return
                key = self.table.key(child)  # "x/" for directories
                started = clock()
                try:
                    info = await self.store.head(
                        key, body_max=self.cfg.small_file_prefetch
                        if whole and self._small(child) else 0)
                except NotFound:
                    if self.moved_since(child, key, started):
                        return   # its old key, copied away by a rename
                    if child.is_dir:
                        await self._legacy_dir(child)
                        return
                    info = None
                except FsError as e:
                    if strict and not child.is_dir:
                        raise
                    # One entry we may not HEAD must not break a listing: it
                    # keeps the attributes the listing gave (a marker we
                    # cannot read makes a plain prefix).
                    log.info("cannot read the attributes of %r (%s)", key, e)
                    if child.is_dir:
                        self.apply_info(child, None, is_dir=True)
                    return
                if child.parent is not d or child.changed_at >= started \
                        or self.moved_since(child, key, started):
                    return   # gone, moved or changed here meanwhile: ours is newer
                if info is None:
                    # deleted since the listing
                    self.notifier.invalidate_entry(d.ino, child.name)
                    self.table.detach(child, remember=False)
                    return
                self._apply_head(d, child, info)

        # A fixed pool of workers, not one task per entry: a listing of
        # 100,000 names would otherwise hold 100,000 tasks at once (about
        # 4 KiB each) while they queue for the limiter.
        pending = iter(todo)

        async def worker() -> None:
            for child in pending:
                await one(child)

        async with open_nursery() as n:
            for _ in range(min(len(todo), self.cfg.stat_concurrency)):
                n.start_soon(worker)
        if len(todo) > 1 or len(self._to_keep) >= KEEP_BATCH:
            await self.keep_heads()  # one lookup's HEAD waits for company

    def _small(self, child: Inode) -> bool:
        """A file to fetch whole in place of its HEAD, for the same price: its
        first read then asks S3 nothing (see small_file_prefetch)."""
        return (not child.is_dir and stat.S_ISREG(child.attr.mode)
                and 0 < child.attr.size <= self.cfg.small_file_prefetch)

    def _apply_head(self, d: Inode, child: Inode, info: ObjectInfo) -> None:
        """Give ``child`` of ``d`` the attributes of its HEAD answer ``info``
        (a new inode if its type is not the one the listing suggested)."""
        ftype = self.type_of(info) if not child.is_dir else stat.S_IFDIR
        if ftype != stat.S_IFMT(child.attr.mode):
            node = self.make_child(d, child.name, ftype, info, is_dir=ftype == stat.S_IFDIR)
            if ftype == stat.S_IFDIR:
                node.legacy = info.key
        else:
            node = child
            self.apply_info(child, info, is_dir=child.is_dir)
        if self.attr_disk is not None and ftype != stat.S_IFDIR and attrdisk.trusted(info):
            self._to_keep.append(node.remote)   # info, with the listing's ETag if another

    def unlinked(self, node: Inode) -> bool:
        """Removed from the tree (unlinked, or replaced by a rename) while
        open: its key is gone, or another file's now."""
        return node.parent is None and node is not self.table.root

    async def ensure_metadata(self, node: Inode) -> None:
        """Make sure ``node.remote.metadata`` is the full set from a HEAD
        (needed before rewriting an object, to keep foreign keys).  Nothing
        for a file of this mount only, or one unlinked (see ``unlinked``)."""
        if node.local or self.unlinked(node):
            return
        await self.settle(node)
        if node.remote is not None and node.remote.metadata is not None:
            return
        if node.is_dir and node.remote is None:
            return  # implicit directory: nothing stored
        info = await self.store.head(node.remote.key if node.remote else self.table.key(node))
        parent = node.parent
        if not node.is_dir and parent is not None \
                and self.type_of(info) != stat.S_IFMT(node.attr.mode):
            # Known from a listing alone (trust_listing), which showed a
            # regular file: its metadata says symlink, FIFO, device (or
            # directory).  A new inode of that type takes the name, as at a
            # lookup's HEAD; this one must not take the attributes with its
            # own type (a chmod would store a symlink as a regular file).
            # ESTALE: the kernel looks the name up again and repeats the call.
            self._apply_head(parent, node, info)
            raise Stale(f"{self.table.key(parent)}{node.name} is not a regular file")
        self.apply_info(node, info, is_dir=node.is_dir)

    def on_local_change(self, parent: Inode, name: str) -> None:
        """A local create/delete in ``parent``: drop a cached miss."""
        self.forget_negative(parent, name)
