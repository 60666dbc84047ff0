"""The filesystem core against a plain model of a directory tree.

mountpoint-s3's reference test in our terms: hypothesis generates sequences
of operations (create, open, write, truncate, read, rename of files and
directories, unlink, mkdir, rmdir, chmod, fsync, close, listing), applies
each to ``Filesystem`` over a ``MemoryStore`` and to the model, and requires
the same outcome: the same errno for refusals, the same bytes for reads.
``remount`` closes every handle, builds a new Filesystem over the same
store and checks the whole tree (names, types, modes, bytes) against the
model, so whatever was acknowledged must be in S3.

The core is async and needs a live nursery for its background tasks, so a
trio run lives in a helper thread for the life of each example and the
(synchronous) state machine submits every operation to it.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import tempfile
import threading

import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule)

from objectfs.config import build
from objectfs.errors import FsError
from objectfs.filesystem import Caller, Filesystem, SetAttr
from objectfs.store.base import KiB, MiB
from objectfs.store.memory import MemoryStore


NAMES = ["a", "b", "c"]
MODES = [0o644, 0o600, 0o755, 0o700, 0o640, 0o000, 0o777, 0o1777]
CALLER = Caller(uid=os.getuid(), gid=os.getgid(), umask=0o022)


class TrioThread:
    """A trio run in a thread with a long-lived nursery; ``run`` submits work.

    The run uses a MockClock so that TTLs are deterministic: every submitted
    operation first advances virtual time by one second.  The clock starts
    far ahead of time.monotonic(), as trio's own clock does (it adds a large
    random offset), and each operation returns only once every background
    task it started has settled, so a run does not depend on thread timing.
    """

    def __init__(self):
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.clock = trio.testing.MockClock()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _main(self):
        async def main():
            self.clock.jump(1e6)
            self.token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        try:
            trio.run(main, clock=self.clock)
        except BaseException as e:  # reported by close()
            self._error = e
            self._ready.set()

    def run(self, afn, *args):
        async def settled():
            self.clock.jump(1)
            try:
                return await afn(*args)
            finally:
                await trio.testing.wait_all_tasks_blocked()
        return trio.from_thread.run(settled, trio_token=self.token)

    def close(self):
        try:
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        except trio.RunFinishedError:
            pass
        self._thread.join(30)
        if self._error is not None:
            raise self._error


# -- the model --------------------------------------------------------------------

class MFile:
    def __init__(self, mode: int):
        self.mode = mode
        self.data = bytearray()


class MDir:
    def __init__(self, mode: int):
        self.mode = mode
        self.children: dict[str, MFile | MDir | MLink | MSpecial] = {}


class MLink:
    def __init__(self, target: bytes):
        self.target = target


class MSpecial:
    """A FIFO or socket: only its type and mode are stored."""

    def __init__(self, ftype: int, mode: int):
        self.ftype = ftype
        self.mode = mode


OTHER = (MLink, MSpecial)  # neither file nor directory: the kernel never opens them


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class FilesystemModel(RuleBasedStateMachine):
    metadata_ttl = "0"

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="objectfs-model-")
        self.cfg = build("bucket", "", "/mnt", o_options=[
            f"staging_dir={self.tmp.name},part_size=5M,write_buffer_memory=32M",
            f"cache_dir={self.tmp.name}/cache,cache_size=8M",
            f"metadata_ttl={self.metadata_ttl},negative_ttl={self.metadata_ttl}",
            "read_part_size=1M,prefetch_max=4M"])
        self.store = MemoryStore()
        self.trio = TrioThread()
        self.root = MDir(self.cfg.dir_mode)
        self.handles: dict[int, MFile] = {}
        self.fs = self._mount()

    def teardown(self):
        try:
            for fh in list(self.handles):
                self.run(self.fs.release, fh)
        finally:
            self.fs.close()
            self.trio.close()
            self.tmp.cleanup()

    def _mount(self) -> Filesystem:
        fs = Filesystem(self.store, self.cfg)
        self.trio.run(fs.start, self.trio.nursery)
        return fs

    def run(self, afn, *args):
        return self.trio.run(afn, *args)

    # -- helpers ---------------------------------------------------------------------

    def dirs(self) -> list[tuple[tuple[str, ...], MDir]]:
        out = []
        stack = [((), self.root)]
        while stack:
            path, d = stack.pop()
            out.append((path, d))
            for name, c in d.children.items():
                if isinstance(c, MDir):
                    stack.append((path + (name,), c))
        return sorted(out, key=lambda x: x[0])

    def draw_dir(self, data) -> tuple[tuple[str, ...], MDir]:
        return data.draw(st.sampled_from(self.dirs()), label="dir")

    def draw_entry(self, data):
        """(dir path, dir, name): the name may or may not exist."""
        path, d = self.draw_dir(data)
        name = data.draw(st.sampled_from(NAMES), label="name")
        return path, d, name

    def ino(self, path: tuple[str, ...]) -> int:
        async def walk():
            ino = 1
            for name in path:
                ino = (await self.fs.lookup(ino, name.encode())).ino
            return ino
        return self.run(walk)

    def expect(self, expected: int | None, afn, *args):
        """Run ``afn``; it must fail with errno ``expected`` (None: succeed)."""
        try:
            result = self.run(afn, *args)
        except FsError as e:
            assert expected is not None, f"unexpected {type(e).__name__}: {e}"
            assert e.errno == expected, (
                f"errno {errno.errorcode.get(e.errno)} ({e}), expected "
                f"{errno.errorcode[expected]}")
            return None
        assert expected is None, f"succeeded, expected {errno.errorcode[expected]}"
        return result

    # -- rules: entries ------------------------------------------------------------------

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def mkdir(self, data, mode):
        path, d, name = self.draw_entry(data)
        if len(path) >= 3:
            return  # keep trees shallow
        expected = errno.EEXIST if name in d.children else None
        node = self.expect(expected, self.fs.mkdir, self.ino(path), name.encode(),
                           stat.S_IFDIR | mode, CALLER)
        if expected is None:
            assert stat.S_ISDIR(node.attr.mode)
            d.children[name] = MDir(mode)

    @rule(data=st.data(), mode=st.sampled_from(MODES), excl=st.booleans(),
          trunc=st.booleans())
    def create(self, data, mode, excl, trunc):
        path, d, name = self.draw_entry(data)
        existing = d.children.get(name)
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if excl else 0) | (os.O_TRUNC if trunc else 0)
        if isinstance(existing, OTHER) and not excl:
            return  # the kernel resolves these itself (follows links, opens FIFOs)
        if existing is not None and excl:
            expected = errno.EEXIST
        elif isinstance(existing, MDir):
            expected = errno.EISDIR
        else:
            expected = None
        res = self.expect(expected, self.fs.create, self.ino(path), name.encode(),
                          stat.S_IFREG | mode, flags, CALLER)
        if expected is None:
            handle, node = res
            if existing is None:
                existing = d.children[name] = MFile(mode)
            elif trunc:
                existing.data.clear()
            self.handles[handle.fh] = existing

    @rule(data=st.data(), trunc=st.booleans(), readonly=st.booleans())
    def open(self, data, trunc, readonly):
        path, d, name = self.draw_entry(data)
        existing = d.children.get(name)
        if isinstance(existing, OTHER):
            return  # the kernel resolves these itself
        if existing is None:
            expected = errno.ENOENT
        elif isinstance(existing, MDir):
            expected = errno.EISDIR
        else:
            expected = None
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | (os.O_TRUNC if trunc else 0)

        async def do():
            node = await self.fs.lookup(parent_ino, name.encode())
            return await self.fs.open(node.ino, flags)

        parent_ino = self.ino(path)
        handle = self.expect(expected, do)
        if expected is None:
            if trunc:
                existing.data.clear()
            self.handles[handle.fh] = existing

    @rule(data=st.data())
    def unlink(self, data):
        path, d, name = self.draw_entry(data)
        existing = d.children.get(name)
        if existing is None:
            expected = errno.ENOENT
        elif isinstance(existing, MDir):
            expected = errno.EISDIR
        else:
            expected = None
        self.expect(expected, self.fs.unlink, self.ino(path), name.encode())
        if expected is None:
            del d.children[name]  # open handles keep the MFile

    @rule(data=st.data())
    def rmdir(self, data):
        path, d, name = self.draw_entry(data)
        existing = d.children.get(name)
        if existing is None:
            expected = errno.ENOENT
        elif not isinstance(existing, MDir):
            expected = errno.ENOTDIR
        elif existing.children:
            expected = errno.ENOTEMPTY
        else:
            expected = None
        self.expect(expected, self.fs.rmdir, self.ino(path), name.encode())
        if expected is None:
            del d.children[name]

    @rule(data=st.data())
    def rename(self, data):
        spath, sdir, sname = self.draw_entry(data)
        dpath, ddir, dname = self.draw_entry(data)
        src = sdir.children.get(sname)
        dst = ddir.children.get(dname)
        if src is None:
            expected = errno.ENOENT
        elif dst is src:
            expected = None
        elif isinstance(src, MDir) and dpath[:len(spath) + 1] == spath + (sname,):
            expected = errno.EINVAL  # into its own subtree
        elif isinstance(src, MDir) and dst is not None and not isinstance(dst, MDir):
            expected = errno.ENOTDIR
        elif isinstance(src, MDir) and isinstance(dst, MDir) and dst.children:
            expected = errno.ENOTEMPTY
        elif not isinstance(src, MDir) and isinstance(dst, MDir):
            expected = errno.EISDIR
        else:
            expected = None
        if isinstance(src, MDir) and len(dpath) >= 3:
            return  # keep trees shallow
        self.expect(expected, self.fs.rename, self.ino(spath), sname.encode(), self.ino(dpath),
                    dname.encode(), 0)
        if expected is None and dst is not src:
            del sdir.children[sname]
            ddir.children[dname] = src

    @rule(data=st.data(), mode=st.sampled_from(MODES))
    def chmod(self, data, mode):
        path, d, name = self.draw_entry(data)
        existing = d.children.get(name)
        if isinstance(existing, MLink):
            return  # Linux has no lchmod: the kernel follows the link
        expected = errno.ENOENT if existing is None else None
        parent_ino = self.ino(path)

        async def do():
            node = await self.fs.lookup(parent_ino, name.encode())
            return await self.fs.setattr(node.ino, SetAttr(mode=mode))

        node = self.expect(expected, do)
        if expected is None:
            existing.mode = mode
            assert stat.S_IMODE(node.attr.mode) == mode

    @rule(data=st.data(), size=st.integers(0, 40 * KiB))
    def truncate_path(self, data, size):
        """truncate(2) by name: persisted at once when the file is not open."""
        path, d, name = self.draw_entry(data)
        existing = d.children.get(name)
        if isinstance(existing, OTHER):
            return  # truncate(2) refuses these in the kernel
        if existing is None:
            expected = errno.ENOENT
        elif isinstance(existing, MDir):
            expected = errno.EISDIR
        else:
            expected = None
        parent_ino = self.ino(path)

        async def do():
            node = await self.fs.lookup(parent_ino, name.encode())
            return await self.fs.setattr(node.ino, SetAttr(size=size))

        self.expect(expected, do)
        if expected is None:
            del existing.data[size:]
            existing.data.extend(bytes(size - len(existing.data)))

    @rule(data=st.data(), link=st.sampled_from([b"a", b"../b", b"/abs/path", b"x" * 300,
                                                  "é/ü".encode()]))
    def symlink(self, data, link):
        path, d, name = self.draw_entry(data)
        expected = errno.EEXIST if name in d.children else None
        node = self.expect(expected, self.fs.symlink, self.ino(path), name.encode(), link,
                           CALLER)
        if expected is None:
            assert stat.S_ISLNK(node.attr.mode)
            d.children[name] = MLink(link)

    @rule(data=st.data(), ftype=st.sampled_from([stat.S_IFIFO, stat.S_IFSOCK]),
          mode=st.sampled_from(MODES))
    def mknod(self, data, ftype, mode):
        path, d, name = self.draw_entry(data)
        expected = errno.EEXIST if name in d.children else None
        node = self.expect(expected, self.fs.mknod, self.ino(path), name.encode(), ftype | mode,
                           0, CALLER)
        if expected is None:
            assert stat.S_IFMT(node.attr.mode) == ftype
            d.children[name] = MSpecial(ftype, mode)

    # -- rules: another S3 client ---------------------------------------------------------
    # Only without caching (metadata_ttl=0), where changes must show at once,
    # and only for entries no handle of ours has open.

    def is_open(self, entry) -> bool:
        return any(f is entry for f in self.handles.values())

    @precondition(lambda self: self.metadata_ttl == "0")
    @rule(data=st.data(), n=st.integers(0, 20 * KiB), seed=st.integers(0, 1000))
    def external_put(self, data, n, seed):
        path, d, name = self.draw_entry(data)
        existing = d.children.get(name)
        if isinstance(existing, MDir) or self.is_open(existing):
            return
        body = blob(n, seed)
        self.store.put_sync("/".join(path + (name,)), body)  # no metadata: default mode
        f = d.children[name] = MFile(self.cfg.file_mode)
        f.data[:] = body

    @precondition(lambda self: self.metadata_ttl == "0")
    @rule(data=st.data())
    def external_delete(self, data):
        path, d, name = self.draw_entry(data)
        existing = d.children.get(name)
        if existing is None or isinstance(existing, MDir) or self.is_open(existing):
            return
        key = "/".join(path + (name,))
        if key not in self.store.objects:
            return  # not uploaded yet: nothing another client could delete
        del self.store.objects[key]
        del d.children[name]

    # -- rules: handles -------------------------------------------------------------------

    def draw_handle(self, data) -> int:
        return data.draw(st.sampled_from(sorted(self.handles)), label="fh")

    def writable(self, fh: int) -> bool:
        return self.fs.handles[fh].flags & os.O_ACCMODE != os.O_RDONLY

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), off=st.integers(0, 32 * KiB), n=st.integers(1, 8 * KiB),
          seed=st.integers(0, 1000), append=st.booleans())
    def write(self, data, off, n, seed, append):
        fh = self.draw_handle(data)
        f = self.handles[fh]
        if append:
            off = len(f.data)
        buf = blob(n, seed)
        expected = None if self.writable(fh) else errno.EBADF
        got = self.expect(expected, self.fs.write, fh, off, buf)
        if expected is None:
            assert got == n
            if off > len(f.data):
                f.data.extend(bytes(off - len(f.data)))
            f.data[off:off + n] = buf

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), seed=st.integers(0, 1000))
    def write_big(self, data, seed):
        """Append past a part boundary: streams a multipart upload if the file is new."""
        fh = self.draw_handle(data)
        f = self.handles[fh]
        if not self.writable(fh) or len(f.data) > 64 * KiB:
            return
        buf = blob(5 * MiB + 100 * KiB, seed)
        off = len(f.data)
        for i in range(0, len(buf), 1 * MiB):
            assert self.run(self.fs.write, fh, off + i, buf[i:i + MiB]) == len(buf[i:i + MiB])
        f.data.extend(buf)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), off=st.integers(0, 48 * KiB), n=st.integers(1, 48 * KiB))
    def read(self, data, off, n):
        fh = self.draw_handle(data)
        f = self.handles[fh]
        got = self.run(self.fs.read, fh, off, n)
        assert got == bytes(f.data[off:off + n]), f"read({off}, {n}) differs from the model"

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), size=st.integers(0, 40 * KiB))
    def truncate_handle(self, data, size):
        """ftruncate(2) on an open handle."""
        fh = self.draw_handle(data)
        f = self.handles[fh]
        ino = self.fs.handles[fh].node.ino
        self.run(self.fs.setattr, ino, SetAttr(size=size), fh)
        del f.data[size:]
        f.data.extend(bytes(size - len(f.data)))

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def fsync(self, data):
        fh = self.draw_handle(data)
        self.run(self.fs.fsync, fh, False)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def close(self, data):
        fh = self.draw_handle(data)
        self.run(self.fs.flush, fh)
        self.run(self.fs.release, fh)
        del self.handles[fh]

    # -- rules: checks ---------------------------------------------------------------------

    async def _listing(self, ino: int):
        h = await self.fs.opendir(ino)
        try:
            entries = await self.fs.readdir(h.fh, 0)
        finally:
            self.fs.releasedir(h.fh)
        for _, node in entries:
            node.lookups += 1   # each readdirplus entry is a kernel reference
        return entries

    def check_dir(self, path: tuple[str, ...], d: MDir, *, deep: bool) -> None:
        ino = self.ino(path)
        entries = self.run(self._listing, ino)
        # "." and ".." may lead the listing; they are not children
        entries = [(n, node) for n, node in entries if n not in (".", "..")]
        where = "/" + "/".join(path)
        names = [n for n, _ in entries]
        assert names == sorted(d.children), f"listing of {where}: {names} != {sorted(d.children)}"
        for name, node in entries:
            m = d.children[name]
            a = self.fs.visible_attr(node)
            full = where.rstrip("/") + "/" + name
            if isinstance(m, MDir):
                assert stat.S_ISDIR(a.mode), f"{full} should be a directory"
            elif isinstance(m, MLink):
                assert stat.S_ISLNK(a.mode), f"{full} should be a symlink"
            elif isinstance(m, MSpecial):
                assert stat.S_IFMT(a.mode) == m.ftype, f"type of {full}"
            else:
                assert stat.S_ISREG(a.mode), f"{full} should be a file"
                assert a.size == len(m.data), f"size of {full}"
            if deep:
                # attributes come from S3 after a remount: check them through getattr
                node = self.run(self.fs.getattr, self.ino(path + (name,)))
                a = self.fs.visible_attr(node)
            if isinstance(m, MLink):
                target = self.run(self.fs.readlink, node.ino)
                assert target == m.target, f"target of {full}"
                continue
            assert stat.S_IMODE(a.mode) == m.mode, f"mode of {full}"
            if deep and isinstance(m, MFile):
                self.check_file(path + (name,), m)
            if deep and isinstance(m, MDir):
                self.check_dir(path + (name,), m, deep=True)

    def check_file(self, path, m: MFile) -> None:
        ino = self.ino(path)
        h = self.run(self.fs.open, ino, os.O_RDONLY)
        try:
            # in the kernel's 128 KiB requests, sequentially, past the end
            chunks = [self.run(self.fs.read, h.fh, off, 128 * KiB)
                      for off in range(0, len(m.data) + 128 * KiB, 128 * KiB)]
            got = b"".join(chunks)
        finally:
            self.run(self.fs.release, h.fh)
        assert got == bytes(m.data), f"content of /{'/'.join(path)}"

    @rule(data=st.data())
    def listdir(self, data):
        path, d = self.draw_dir(data)
        self.check_dir(path, d, deep=False)

    @rule()
    def kernel_forgets(self):
        """Two minutes pass and the kernel forgets every inode it does not need
        (all but open files and the directories above them), as under memory
        pressure; the daemon then prunes what it may (prune_inodes). Whatever
        follows must not notice."""
        held = set()
        for h in self.fs.handles.values():
            n = h.node
            while n is not None:
                held.add(n.ino)
                n = n.parent
        self.fs.forget([(n.ino, n.lookups) for n in list(self.fs.table.inodes.values())
                        if n.lookups and n.ino not in held and n.ino != 1])
        self.trio.clock.jump(120)
        before = len(self.fs.table)
        pruned = self.fs.prune_inodes()
        assert len(self.fs.table) == before - pruned

    @rule()
    def remount(self):
        """Close everything, mount afresh over the same bucket, compare it all."""
        for fh in list(self.handles):
            self.run(self.fs.flush, fh)
            self.run(self.fs.release, fh)
        self.handles.clear()
        assert self.run(self.fs.flush_all) == []
        self.fs.close()
        assert not self.store.uploads, "a multipart upload was left behind"
        self.fs = self._mount()
        self.check_dir((), self.root, deep=True)

    @invariant()
    def no_leaked_budget_when_idle(self):
        if not self.handles and self.fs.ctx is not None:
            assert self.fs.ctx.write_budget.used == 0


SETTINGS = settings(max_examples=int(os.environ.get("OBJECTFS_MODEL_EXAMPLES", 50)),
                    stateful_step_count=int(os.environ.get("OBJECTFS_MODEL_STEPS", 40)),
                    deadline=None, suppress_health_check=list(HealthCheck))


class ModelNoCache(FilesystemModel):
    """metadata_ttl=0: every lookup and listing goes to S3 and merges with local state."""
    metadata_ttl = "0"


class ModelCached(FilesystemModel):
    """metadata_ttl=60: answers come from the inode tree and negative cache."""
    metadata_ttl = "60"


TestModelNoCache = ModelNoCache.TestCase
TestModelNoCache.settings = SETTINGS
TestModelCached = ModelCached.TestCase
TestModelCached.settings = SETTINGS
