"""The pyfuse3 binding: converts arguments and replies, nothing else.

This is the only module that knows pyfuse3's types and the only place that
raises ``FUSEError``.  Every handler runs behind one guard (applied to the
class below): our ``FsError``s become their errno; any other exception is
logged with its traceback and becomes EIO, because pyfuse3 only catches
``FUSEError`` and anything else would end the main loop and the mount.
trio's ``Cancelled`` is a BaseException and passes through untouched.
"""

from __future__ import annotations

import errno
import functools
import logging
import queue
import threading

import pyfuse3
import trio

from . import metrics
from .errors import FsError, StoreError
from .filesystem import Caller, FileHandle, Filesystem, SetAttr
from .namespace.keys import name_to_kernel
from .namespace.namespace import Notifier
from .namespace.tree import Inode
from .tasks import first_error

log = logging.getLogger(__name__)

# st_blksize: the I/O size the kernel reports to programs.  cp, cat and
# friends read and write in chunks of max(128 KiB, st_blksize), so a larger
# value means fewer, larger FUSE requests.
BLKSIZE = 1 << 20


def _guard(name: str, fn):
    requests = metrics.counter("objectfs_fuse_requests_total", op=name)

    def failed(code: int) -> None:
        metrics.counter("objectfs_fuse_errors_total", op=name,
                        errno=errno.errorcode.get(code, str(code))).inc()

    @functools.wraps(fn)
    async def handler(self, *args):
        requests.inc()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError as e:
            failed(e.errno)
            raise
        except Exception as e:
            err = e
            if isinstance(e, ExceptionGroup):  # from a nursery not using tasks.open_nursery
                err = first_error(e) or e
            if isinstance(err, FsError):
                # a failed S3 call was logged once by the store already
                level = logging.DEBUG if isinstance(err, StoreError) else err.log_level
                log.log(level, "%s failed: %s", name, err)
                failed(err.errno)
                raise pyfuse3.FUSEError(err.errno) from None
            log.exception("unexpected error in %s; returning EIO", name)
            failed(errno.EIO)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return handler


HANDLERS = ("lookup", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir",
            "symlink", "rename", "link", "open", "read", "write", "flush", "release", "fsync",
            "opendir", "readdir", "releasedir", "fsyncdir", "statfs", "setxattr", "getxattr",
            "listxattr", "removexattr", "access", "create")


def guarded(cls):
    """Wrap every request handler of ``cls`` in the one error guard."""
    for name in HANDLERS:
        setattr(cls, name, _guard(name, getattr(cls, name)))
    return cls


def _notify(call, *args, **kw) -> None:
    """One libfuse notify call; an entry the kernel no longer holds, or a
    connection gone, is no error."""
    try:
        call(*args, **kw)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTCONN, errno.EBADF):
            log.debug("kernel invalidation failed: %s", e)


class KernelNotifier(Notifier):
    """Sends cache invalidations to the kernel from a thread of its own.

    libfuse's notify calls block until the kernel has processed them, and the
    kernel may need our reply to the request that triggered them to get
    there, so calling them from a handler could deadlock.
    """

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fuse-notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, a, b = item
            try:
                if kind == "inode":
                    _notify(pyfuse3.invalidate_inode, a)
                else:
                    _notify(pyfuse3.invalidate_entry, a, b)
            except Exception:  # the notifier must never die
                log.exception("kernel invalidation failed")

    def invalidate_inode(self, ino: int) -> None:
        self._queue.put(("inode", ino, None))

    def invalidate_entry(self, parent_ino: int, name: str) -> None:
        self._queue.put(("entry", parent_ino, name_to_kernel(name)))

    async def invalidate_attrs_now(self, ino: int) -> None:
        # Safe to wait for from a handler, unlike the calls above: dropping
        # attributes alone (a negative offset to the kernel) locks no page,
        # so it never waits for a read that is waiting for us.
        await trio.to_thread.run_sync(
            functools.partial(_notify, pyfuse3.invalidate_inode, ino, attr_only=True))

    def stop(self) -> None:
        self._queue.put(None)


def _caller(ctx) -> Caller:
    if ctx is None:
        return Caller()
    return Caller(uid=ctx.uid, gid=ctx.gid, umask=ctx.umask)


@guarded
class FuseOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem):
        super().__init__()
        self.fs = fs
        self.negative_ttl = fs.cfg.negative_ttl

    def _entry(self, node: Inode) -> pyfuse3.EntryAttributes:
        a = self.fs.visible_attr(node)
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        # what is left of the daemon's own trust in them (not a fresh
        # metadata_ttl), so another client's change shows within metadata_ttl
        left = self.fs.fresh_for(node)
        e.entry_timeout = left
        # the listing's attributes while a HEAD is under way: a stat asks again
        e.attr_timeout = 0 if self.fs.attr_pending(node) else left
        e.st_mode = a.mode
        e.st_nlink = self.fs.nlink(node)
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = node.shown_size = a.size
        e.st_blksize = BLKSIZE
        e.st_blocks = 0 if node.is_dir else (a.size + 511) // 512
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    # -- namespace ------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        try:
            node = await self.fs.lookup(parent_inode, name)
        except FsError as e:
            if e.errno != errno.ENOENT or self.negative_ttl <= 0:
                raise
            # a zero inode tells the kernel to cache the miss for entry_timeout
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = self.fs.missing_for(parent_inode, name)
            return neg
        return self._entry(node)

    async def forget(self, inode_list):
        try:
            self.fs.forget(list(inode_list))
        except Exception:  # forget must never raise
            log.exception("forget failed")

    async def getattr(self, inode, ctx=None):
        return self._entry(await self.fs.getattr(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        changes = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None)
        return self._entry(await self.fs.setattr(inode, changes, fh))

    async def readlink(self, inode, ctx):
        return await self.fs.readlink(inode)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(await self.fs.mknod(parent_inode, name, mode, rdev, _caller(ctx)))

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(await self.fs.mkdir(parent_inode, name, mode, _caller(ctx)))

    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, name)

    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, name)

    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(await self.fs.symlink(parent_inode, name, target, _caller(ctx)))

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(await self.fs.link(inode, new_parent_inode, new_name))

    # -- files -----------------------------------------------------------------

    def _file_info(self, h: FileHandle) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=h.fh, keep_cache=self.fs.keep_cache(h))

    async def open(self, inode, flags, ctx):
        return self._file_info(await self.fs.open(inode, flags, _caller(ctx)))

    async def create(self, parent_inode, name, mode, flags, ctx):
        h, node = await self.fs.create(parent_inode, name, mode, flags, _caller(ctx))
        return self._file_info(h), self._entry(node)

    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    async def flush(self, fh):
        await self.fs.flush(fh)

    async def release(self, fh):
        await self.fs.release(fh)

    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh, datasync)

    # -- directories -------------------------------------------------------------

    async def opendir(self, inode, ctx):
        return (await self.fs.opendir(inode)).fh

    async def readdir(self, fh, start_id, token):
        # Offsets 0 and 1 are "." and "..", which carry no lookup reference;
        # the directory's entries follow.
        first = max(0, start_id - 2)
        entries = await self.fs.readdir(fh, first)  # listing first: "." shows its nlink
        d = self.fs.dir_handle(fh).node
        for i, (name, node) in enumerate(((b".", d), (b"..", d.parent or d))):
            if i >= start_id:
                if not pyfuse3.readdir_reply(token, name, self._entry(node), i + 1):
                    return
        for i, (name, node) in enumerate(entries, first + 3):
            if not pyfuse3.readdir_reply(token, name_to_kernel(name), self._entry(node), i):
                break
            node.lookups += 1

    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    async def fsyncdir(self, fh, datasync):
        pass  # directory changes are written to S3 when they are made

    # -- misc ------------------------------------------------------------------------

    async def statfs(self, ctx):
        s = self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.bsize
        out.f_frsize = s.frsize
        out.f_blocks = s.blocks
        out.f_bfree = s.bfree
        out.f_bavail = s.bavail
        out.f_files = s.files
        out.f_ffree = s.ffree
        out.f_favail = s.favail
        out.f_namemax = s.namemax
        return out

    async def setxattr(self, inode, name, value, ctx):
        await self.fs.setxattr(inode, name, value)

    async def getxattr(self, inode, name, ctx):
        return await self.fs.getxattr(inode, name)

    async def listxattr(self, inode, ctx):
        return await self.fs.listxattr(inode)

    async def removexattr(self, inode, name, ctx):
        await self.fs.removexattr(inode, name)

    async def access(self, inode, mode, ctx):
        return self.fs.access(inode, mode, _caller(ctx))
