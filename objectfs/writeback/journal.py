"""The write-back journal: files staged on local disk, durable before close returns.

Layout under ``<cache_root>/writeback/``: one directory per running mount
(a random id), holding a ``lock`` file the mount keeps ``flock``ed for its
whole life, and one file per staged file, ``ID.entry``: the file's bytes,
then its manifest (bucket, endpoint, key, size, MD5 of the bytes, the base
ETag the upload must find in S3, metadata, Content-Type, system headers and
the mode/uid/gid/mtime shown while staged) as JSON, then a 16-byte trailer
(the JSON's length and a magic number).

One flush of the disk per close: entry files are created ahead of time,
empty (*spares*), a batch at a time, and their names made durable with one
fsync of the directory per batch; staging writes into a spare and
``fdatasync``s it, so no directory entry has to be made durable when a file
is closed.  An empty ``ID.entry`` is an unused spare; an ``ID.entry``
without a valid trailer is an interrupted staging (its close never
returned).  Both are deleted at recovery.

A later change of the manifest (rename, chmod while staged) is written to a
sidecar ``ID.json`` (written to ``ID.json.tmp``, fsync'd, renamed, directory
fsync'd), which overrides the trailer.  Removal unlinks ``ID.entry`` first,
then the sidecar, then fsyncs the directory, so neither an uploaded entry
nor an entry under its old name comes back after a power cut (after an
upload, the uploader unlinks and then calls ``sync``: one fsync of the
directory serves every upload that finished meanwhile).  An entry of
this mount's directory replaced by a newer version of its key (``lazy``)
is unlinked without that fsync: if a power cut brings it back, recovery
drops it as the older entry of its key, and every later change that could
make it the newest (a rename or removal of the newer entry) fsyncs the same
directory first, which makes its removal durable too.

Recovery: the lock of a dead mount is free (the kernel drops ``flock`` when
the process dies, even by ``kill -9``), so a new mount locks every unlocked
directory and adopts the entries that belong to its bucket,
endpoint and prefix.  It checks each one against its manifest's size and MD5
(a mismatch is logged and the file set aside as ``ID.entry.corrupt``, never
uploaded) and keeps only the newest entry of each key (older ones were
superseded before they were uploaded).  The entries it adopts move into its
own directory (see ``Journal._move_in``), so the dead directory is unlocked
again at once, and the entries of other buckets or prefixes left in it can be
recovered by their own mount while this one runs; empty directories are
removed.  A directory is locked only through a lock file still at its path
(another recovery may be removing it), and a new mount's directory, empty and
unlocked for a moment after it is made, is replaced if one took it.

Everything here is blocking file I/O; the caller runs it in a worker thread
(an fsync can take as long as the disk wants, and must not stall the FUSE
loop).  Staging and making spares may run in several threads at once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import struct
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable

from ..store.base import etag_of_parts

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_NAME = "lock"
ENTRY_SUFFIX = ".entry"
# After the manifest JSON: its length and this magic number.
TRAILER = struct.Struct("<Q8s")
MAGIC = b"OFSWB\x00v1"
# Bytes copied per read/write while staging or hashing.
CHUNK = 1 << 20
# Spare entry files made (and their names fsync'd) at a time.
SPARE_BATCH = 64

_seq = itertools.count()


def _next_seq() -> int:
    """Strictly increasing within a process, increasing across restarts (wall
    clock in ns, plus a counter for entries staged within one ns)."""
    return time.time_ns() * 1000 + next(_seq) % 1000


next_seq = _next_seq


@dataclass(frozen=True)
class Manifest:
    """What must reach S3 besides the bytes, and how to check the bytes."""

    bucket: str
    endpoint: str
    key: str
    size: int
    md5: str
    base_etag: str | None             # None: the key must not exist in S3
    metadata: dict[str, str]
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    mode: int = 0o100644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    seq: int = 0
    version: int = FORMAT_VERSION
    # ETags of older versions of the key, on the same base, that recovery
    # dropped (see Entry.also_ours); kept here so another crash keeps them
    also_ours: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Manifest":
        d = json.loads(raw)
        if not isinstance(d, dict) or d.get("version") != FORMAT_VERSION:
            raise ValueError("unknown manifest format")
        names = {f for f in cls.__dataclass_fields__}
        m = cls(**{k: v for k, v in d.items() if k in names})
        if not isinstance(m.key, str) or not isinstance(m.size, int) or m.size < 0 \
                or not isinstance(m.also_ours, (list, tuple)):
            raise ValueError("bad manifest fields")
        return replace(m, also_ours=tuple(m.also_ours))


@dataclass
class Entry:
    """One staged file in a journal directory."""

    directory: str
    id: str
    manifest: Manifest
    sync_s: float = 0.0     # seconds staging it spent in fsync (for the debug log)
    # ETags of older versions of its key, on the same base, that recovery
    # dropped: one of them in S3 was our own upload, which the crash kept
    # from being recorded as this entry's base (also in its manifest, made
    # durable before the older entry goes, so a crash during the recovery
    # does not lose them)
    also_ours: set[str] = field(default_factory=set, compare=False)

    @property
    def data_path(self) -> str:
        """The entry file; its first ``manifest.size`` bytes are the data."""
        return os.path.join(self.directory, self.id + ENTRY_SUFFIX)

    @property
    def manifest_path(self) -> str:
        """The sidecar manifest (present once the manifest was changed)."""
        return os.path.join(self.directory, self.id + ".json")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view):]


def _write_entry(path: str, chunks: Iterable[bytes | memoryview],
                 manifest: Manifest) -> tuple[Manifest, float]:
    """Fill the spare ``path`` (an empty file whose name is durable) with the
    bytes, the manifest (size and MD5 filled in) and the trailer, and
    fdatasync it.  Returns the manifest and the seconds the sync took."""
    md5 = hashlib.md5()
    size = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        if os.fstat(fd).st_size:
            raise OSError(errno.EEXIST, "spare entry file is not empty", path)
        pending = bytearray()
        for chunk in chunks:
            md5.update(chunk)
            size += len(chunk)
            if len(chunk) < 65536 and len(pending) + len(chunk) <= CHUNK:
                pending += chunk   # small files: one write() with the manifest
                continue
            if pending:
                _write_all(fd, pending)
                pending = bytearray()
            _write_all(fd, chunk)
        manifest = replace(manifest, size=size, md5=md5.hexdigest())
        raw = manifest.to_json()
        _write_all(fd, bytes(pending) + raw + TRAILER.pack(len(raw), MAGIC))
        t = time.perf_counter()
        os.fdatasync(fd)
        synced = time.perf_counter() - t
    finally:
        os.close(fd)
    return manifest, synced


def read_entry_manifest(path: str) -> Manifest:
    """The manifest in an entry file's trailer; ValueError if it has none
    (the staging was interrupted)."""
    with open(path, "rb") as f:
        length = f.seek(0, os.SEEK_END)
        if length < TRAILER.size:
            raise ValueError("no trailer")
        f.seek(length - TRAILER.size)
        n, magic = TRAILER.unpack(f.read(TRAILER.size))
        if magic != MAGIC or n > length - TRAILER.size:
            raise ValueError("no trailer")
        f.seek(length - TRAILER.size - n)
        m = Manifest.from_json(f.read(n))
    if m.size != length - TRAILER.size - n:
        raise ValueError("size does not match the trailer")
    return m


def _range_md5(f, start: int, end: int):
    """(bytes read, MD5 object) of bytes [start, end) of the open file ``f``
    (fewer read if it ends first)."""
    md5 = hashlib.md5()
    f.seek(start)
    got = 0
    while got < end - start:
        chunk = f.read(min(CHUNK, end - start - got))
        if not chunk:
            break
        md5.update(chunk)
        got += len(chunk)
    return got, md5


def data_md5(path: str, size: int) -> tuple[int, str]:
    """(bytes read, MD5) of the first ``size`` bytes of ``path``."""
    with open(path, "rb") as f:
        got, md5 = _range_md5(f, 0, size)
    return got, md5.hexdigest()


def data_multipart_etag(path: str, parts: list[tuple[int, int, int]]) -> str:
    """The (quoted) ETag S3 gives a multipart upload of ``path`` cut into
    ``parts`` ((number, start, end), as parts.layout gives them)."""
    digests = []
    with open(path, "rb") as f:
        for _, start, end in parts:
            got, md5 = _range_md5(f, start, end)
            if got != end - start:
                raise OSError(errno.EIO, "staged file is shorter than its manifest", path)
            digests.append(md5.digest())
    return etag_of_parts(digests)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _lock(d: str) -> int | None:
    """Lock a journal directory's lock file; None if a live mount holds it,
    or if the directory went away meanwhile.

    Another mount's recovery may remove an empty directory (lock file
    first) while we lock it: a lock taken on a lock file that is no longer
    at its path protects nothing, so it is checked and given up."""
    path = os.path.join(d, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held, there = os.fstat(fd), os.stat(path)
        if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_if_empty(d: str) -> None:
    if [n for n in os.listdir(d) if n != LOCK_NAME]:
        return
    _unlink(os.path.join(d, LOCK_NAME))
    try:
        os.rmdir(d)
    except OSError:
        pass


def staged_files(root: str, accept: Callable[[Manifest], bool]) -> int:
    """How many files (keys) under the journal ``root`` are staged for
    upload and ``accept``ed (this bucket, endpoint and prefix), read only:
    nothing is locked, adopted or removed.  For a mount without write-back,
    which does not upload them."""
    keys: set[str] = set()
    try:
        dirs = os.listdir(root)
    except OSError:
        return 0
    for d in dirs:
        try:
            names = os.listdir(os.path.join(root, d))
        except OSError:
            continue
        for name in names:
            path = os.path.join(root, d, name)
            try:
                if name.endswith(ENTRY_SUFFIX) and os.path.getsize(path):
                    m = read_entry_manifest(path)
                    if accept(m):
                        keys.add(m.key)   # staged again later: one file
            except (OSError, ValueError, TypeError):
                continue   # a spare, or a staging that never finished
    return len(keys)


class Journal:
    """This mount's journal directory (created and locked by ``open``), plus
    the directories of dead mounts it adopted entries from."""

    def __init__(self, root: str):
        self.root = root
        self.directory = ""
        self._locks: dict[str, int] = {}   # directory -> locked fd
        # ids of empty entry files in ``directory`` whose names are durable
        self._spares: list[str] = []
        self._spare_lock = threading.Lock()

    def open(self) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        # Until it is locked, a new directory is an empty dead one to another
        # mount starting at the same moment, whose recovery may lock and
        # remove it: then take another.
        for _ in range(100):
            directory = os.path.join(self.root, uuid.uuid4().hex)
            os.mkdir(directory, 0o700)
            fd = _lock(directory)
            if fd is not None:
                break
            log.debug("write-back: %s was taken while being made; making another", directory)
        else:
            raise OSError(errno.EBUSY, "could not lock a new journal directory", self.root)
        self._locks[directory] = fd
        self.directory = directory
        _fsync_dir(self.root)

    def close(self) -> None:
        """Release the locks; remove unused spares and directories left empty."""
        with self._spare_lock:
            spares, self._spares = self._spares, []
        for id_ in spares:
            _unlink(os.path.join(self.directory, id_ + ENTRY_SUFFIX))
        for d, fd in list(self._locks.items()):
            _remove_if_empty(d)
            os.close(fd)
        self._locks.clear()

    # -- entries ------------------------------------------------------------

    @property
    def spares(self) -> int:
        """Spare entry files ready for staging."""
        return len(self._spares)

    def make_spares(self, n: int = SPARE_BATCH) -> None:
        """Create ``n`` empty entry files and make their names durable (one
        fsync of the directory); only then may staging use them."""
        made: list[str] = []
        try:
            for _ in range(n):
                id_ = f"{_next_seq():024d}"
                fd = os.open(os.path.join(self.directory, id_ + ENTRY_SUFFIX),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
                made.append(id_)
        finally:
            if made:
                _fsync_dir(self.directory)
                with self._spare_lock:
                    self._spares.extend(made)

    def _take_spare(self) -> str:
        while True:
            with self._spare_lock:
                if self._spares:
                    return self._spares.pop(0)
            self.make_spares()

    def stage(self, manifest: Manifest, chunks: Iterable[bytes | memoryview]) -> Entry:
        """Write a new entry durably: into a spare, then one fdatasync.

        ``manifest.size`` and ``md5`` are filled in from the bytes written.
        On any error the partial file is removed and the error raised.
        """
        entry = Entry(self.directory, self._take_spare(), manifest)
        try:
            entry.manifest, entry.sync_s = _write_entry(
                entry.data_path, chunks, replace(manifest, seq=_next_seq()))
        except BaseException:
            _unlink(entry.data_path)
            raise
        return entry

    @staticmethod
    def _write_manifest(entry: Entry, manifest: Manifest) -> None:
        """Write ``entry``'s sidecar (a tmp file, fsync'd, renamed into
        place); the directory is not fsync'd."""
        tmp = entry.manifest_path + ".tmp"
        _unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, manifest.to_json())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, entry.manifest_path)

    def rewrite(self, entry: Entry, manifest: Manifest) -> None:
        """Replace an entry's manifest atomically (rename, key, headers, base)."""
        self.promise(entry, manifest)
        entry.manifest = manifest

    def promise(self, entry: Entry, manifest: Manifest) -> None:
        """Write ``manifest`` as the entry's, durably, for a recovery only:
        the entry in memory keeps its own (see WriteBack.promise)."""
        self._write_manifest(entry, manifest)
        if not os.path.exists(entry.data_path):
            _unlink(entry.manifest_path)  # removed meanwhile: leave no orphan
        _fsync_dir(entry.directory)

    def remove(self, entry: Entry, lazy: bool = False) -> None:
        """Delete an entry (uploaded or superseded); durable when this returns,
        unless ``lazy`` and the entry is in this mount's own directory (a
        version replaced by a newer entry of its key: see the module
        docstring)."""
        _unlink(entry.data_path)
        _unlink(entry.manifest_path)
        if not (lazy and entry.directory == self.directory):
            _fsync_dir(entry.directory)

    def sync(self) -> None:
        """Make every change to this mount's directory durable (the
        removals ``remove(lazy=True)`` left to it)."""
        _fsync_dir(self.directory)

    # -- recovery -----------------------------------------------------------

    def adopt(self, accept: Callable[[Manifest], bool],
              etags: Callable[[Entry], set[str]] = lambda e: {e.manifest.md5}) -> list[Entry]:
        """Take over the entries of dead mounts that ``accept`` (this bucket,
        endpoint and prefix); returns them, oldest first.  An older entry of
        a key is dropped; its ``etags`` (what S3 would show for its upload)
        go to the newer entry's ``also_ours`` if both had the same base."""
        found: list[Entry] = []
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for name in names:
            d = os.path.join(self.root, name)
            if d in self._locks or not os.path.isdir(d):
                continue
            fd = _lock(d)
            if fd is None:
                continue  # a live mount owns it
            mine = self._scan(d, accept)
            moved = self._move_in(d, mine)
            found.extend(moved)
            if len(moved) < len(mine):
                self._locks[d] = fd  # what could not move stays ours until we close
                found.extend(mine[len(moved):])
            else:
                _remove_if_empty(d)
                os.close(fd)
        newest: dict[str, Entry] = {}
        for e in sorted(found, key=lambda e: e.manifest.seq):
            older = newest.get(e.manifest.key)
            if older is not None:
                log.info("write-back: %r was staged again later; dropping the older copy",
                         e.manifest.key)
                if older.manifest.base_etag == e.manifest.base_etag:
                    e.also_ours |= older.also_ours | etags(older)
                    self.rewrite(e, replace(e.manifest, also_ours=tuple(sorted(e.also_ours))))
                self.remove(older)
            newest[e.manifest.key] = e
        return sorted(newest.values(), key=lambda e: e.manifest.seq)

    def _move_in(self, d: str, entries: list[Entry]) -> list[Entry]:
        """Move adopted entries of the dead directory ``d`` into this mount's
        directory, so ``d`` can be released: another mount (another bucket
        or prefix) may recover the rest of it while this one runs.  Returns
        the moved entries, a prefix of ``entries`` (after an error, the rest
        stay where they are).

        An entry is at one of its two places at every moment, each time with
        its manifest: a changed manifest (sidecar) is first written, and
        made durable, under the entry's new id; then the entry file is
        renamed; the old sidecar, an orphan from then on, goes last."""
        if not entries:
            return []
        here = [Entry(self.directory, f"{_next_seq():024d}", e.manifest, also_ours=e.also_ours)
                for e in entries]
        sidecars = [os.path.exists(e.manifest_path) for e in entries]
        moved: list[Entry] = []
        try:
            for old, new, has in zip(entries, here, sidecars):
                if has:
                    self._write_manifest(new, old.manifest)
            _fsync_dir(self.directory)
            for old, new in zip(entries, here):
                os.rename(old.data_path, new.data_path)
                moved.append(new)
        except OSError as e:
            log.warning("write-back: could not move %s into %s (%s); it is recovered in place",
                        d, self.directory, e)
        finally:
            for new, has in zip(here[len(moved):], sidecars[len(moved):]):
                if has:
                    _unlink(new.manifest_path)
            if moved:
                _fsync_dir(self.directory)
                _fsync_dir(d)
                for old, has in zip(entries, sidecars[:len(moved)]):
                    if has:
                        _unlink(old.manifest_path)
                _fsync_dir(d)
        return moved

    def _scan(self, d: str, accept: Callable[[Manifest], bool]) -> list[Entry]:
        out: list[Entry] = []
        names = set(os.listdir(d))
        for n in sorted(names):
            if n.endswith(".json.tmp"):
                _unlink(os.path.join(d, n))  # an interrupted manifest change
            elif n.endswith(".json") and n[:-5] + ENTRY_SUFFIX not in names:
                _unlink(os.path.join(d, n))  # removal interrupted after the entry
        for n in sorted(names):
            if not n.endswith(ENTRY_SUFFIX):
                continue
            entry = Entry(d, n[:-len(ENTRY_SUFFIX)], None)  # type: ignore[arg-type]
            try:
                if os.path.getsize(entry.data_path) == 0:
                    _unlink(entry.data_path)   # an unused spare
                    continue
                manifest = read_entry_manifest(entry.data_path)
            except (OSError, ValueError, TypeError):
                # staging interrupted: its close() never returned
                log.info("write-back: discarding the incomplete staging %s", entry.data_path)
                _unlink(entry.data_path)
                continue
            if os.path.exists(entry.manifest_path):
                try:
                    with open(entry.manifest_path, "rb") as f:
                        manifest = Manifest.from_json(f.read())
                except (OSError, ValueError, TypeError) as e:
                    log.error("write-back: unreadable manifest %s (%s); left in place",
                              entry.manifest_path, e)
                    continue
            if not accept(manifest):
                continue
            entry.manifest = manifest
            entry.also_ours = set(manifest.also_ours)
            got, md5 = data_md5(entry.data_path, manifest.size)
            if got != manifest.size or md5 != manifest.md5:
                log.error("write-back: staged data of %r is damaged (%d bytes, expected %d, "
                          "checksum %s); kept as %s.corrupt, not uploaded", manifest.key, got,
                          manifest.size, "ok" if md5 == manifest.md5 else "wrong",
                          entry.data_path)
                os.rename(entry.data_path, entry.data_path + ".corrupt")
                _unlink(entry.manifest_path)
                continue
            out.append(entry)
        return out
