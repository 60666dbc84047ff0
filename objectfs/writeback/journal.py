"""The write-back journal: files staged on local disk, durable before close returns.

Layout under ``<cache_root>/writeback/``: one directory per running mount
(a random id), holding a ``lock`` file the mount keeps ``flock``ed for its
whole life, and per staged file two files named by the entry id:

* ``ID.data``: the file's bytes;
* ``ID.json``: the manifest (bucket, endpoint, key, size, MD5 of the bytes,
  the base ETag the upload must find in S3, metadata, Content-Type, system
  headers and the mode/uid/gid/mtime shown while staged).

Durability order, so that a crash or power cut at any point leaves either no
entry or a complete one:

1. ``ID.data`` is written and fsync'd;
2. the manifest is written to ``ID.json.tmp``, fsync'd, renamed to
   ``ID.json``, and the directory is fsync'd (which also makes the data
   file's directory entry durable).

An entry exists only once its ``.json`` does; a ``.data`` without one is an
interrupted staging (nothing was acknowledged) and is deleted at recovery.
Removal unlinks the manifest first, then the data, then fsyncs the directory,
so an uploaded entry does not come back after a power cut.

Recovery: the lock of a dead mount is free (the kernel drops ``flock`` when
the process dies, even by ``kill -9``), so a new mount adopts the entries of
every unlocked directory that belong to its bucket, endpoint and prefix: it
checks each data file against the manifest's size and MD5 (a mismatch is
logged and the entry set aside as ``ID.corrupt``, never uploaded), keeps only
the newest entry of each key (older ones were superseded before they were
uploaded), and moves them into its own directory.  Entries of other buckets
stay where they are; an unlocked directory left empty is removed.

Everything here is blocking file I/O; the caller runs it in a worker thread
(an fsync can take as long as the disk wants, and must not stall the FUSE
loop).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_NAME = "lock"
# Bytes copied per read/write while staging or hashing.
CHUNK = 1 << 20

_seq = itertools.count()


def _next_seq() -> int:
    """Strictly increasing within a process, increasing across restarts (wall
    clock in ns, plus a counter for entries staged within one ns)."""
    return time.time_ns() * 1000 + next(_seq) % 1000


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

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Manifest":
        d = json.loads(raw)
        if not isinstance(d, dict) or d.get("version") != FORMAT_VERSION:
            raise ValueError("unknown manifest format")
        names = {f for f in cls.__dataclass_fields__}
        m = cls(**{k: v for k, v in d.items() if k in names})
        if not isinstance(m.key, str) or not isinstance(m.size, int) or m.size < 0:
            raise ValueError("bad manifest fields")
        return m


@dataclass
class Entry:
    """One staged file in a journal directory."""

    directory: str
    id: str
    manifest: Manifest

    @property
    def data_path(self) -> str:
        return os.path.join(self.directory, self.id + ".data")

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.directory, self.id + ".json")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, chunks: Iterable[bytes | memoryview]) -> tuple[int, str]:
    """Create ``path`` (must not exist), write, fsync; returns (size, md5 hex)."""
    md5 = hashlib.md5()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            md5.update(view)
            size += len(view)
            while len(view):
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return size, md5.hexdigest()


def file_md5(path: str) -> tuple[int, str]:
    md5 = hashlib.md5()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Journal:
    """This mount's journal directory (created and locked by ``open``)."""

    def __init__(self, root: str):
        self.root = root
        self.directory = ""
        self._lock_fd = -1

    def open(self) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        directory = os.path.join(self.root, uuid.uuid4().hex)
        os.mkdir(directory, 0o700)
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd
        self.directory = directory
        _fsync_dir(self.root)

    def close(self) -> None:
        """Release the lock; remove the directory if nothing is left in it."""
        if self._lock_fd < 0:
            return
        leftover = [n for n in os.listdir(self.directory) if n != LOCK_NAME]
        if not leftover:
            _unlink(os.path.join(self.directory, LOCK_NAME))
            try:
                os.rmdir(self.directory)
            except OSError:
                pass
        os.close(self._lock_fd)
        self._lock_fd = -1

    # -- entries ------------------------------------------------------------

    def stage(self, manifest: Manifest, chunks: Iterable[bytes | memoryview]) -> Entry:
        """Write a new entry durably (see the module docstring for the order).

        ``manifest.size`` and ``md5`` are filled in from the bytes written.
        On any error the partial files are removed and the error raised.
        """
        seq = _next_seq()
        entry_id = f"{seq:024d}"
        entry = Entry(self.directory, entry_id, manifest)
        try:
            size, md5 = _write_file(entry.data_path, chunks)
            entry.manifest = replace(manifest, size=size, md5=md5, seq=seq)
            self._write_manifest(entry)
        except BaseException:
            _unlink(entry.data_path)
            _unlink(entry.manifest_path + ".tmp")
            _unlink(entry.manifest_path)
            raise
        return entry

    def rewrite(self, entry: Entry, manifest: Manifest) -> None:
        """Replace an entry's manifest atomically (rename, key, headers, base)."""
        old = entry.manifest
        entry.manifest = manifest
        try:
            self._write_manifest(entry)
        except BaseException:
            entry.manifest = old
            raise

    def _write_manifest(self, entry: Entry) -> None:
        tmp = entry.manifest_path + ".tmp"
        _unlink(tmp)
        _write_file(tmp, [entry.manifest.to_json()])
        os.rename(tmp, entry.manifest_path)
        _fsync_dir(entry.directory)

    def remove(self, entry: Entry) -> None:
        """Delete an entry (uploaded or superseded); durable when this returns."""
        _unlink(entry.manifest_path)
        _unlink(entry.data_path)
        _fsync_dir(entry.directory)

    # -- recovery -----------------------------------------------------------

    def adopt(self, accept: Callable[[Manifest], bool]) -> list[Entry]:
        """Take over the entries of dead mounts that ``accept`` (this bucket,
        endpoint and prefix); returns them, oldest first."""
        found: list[Entry] = []
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for name in names:
            d = os.path.join(self.root, name)
            if d == self.directory or not os.path.isdir(d):
                continue
            lock_fd = _try_lock(d)
            if lock_fd is None:
                continue  # a live mount owns it
            try:
                found.extend(self._adopt_dir(d, accept))
            finally:
                os.close(lock_fd)
        newest: dict[str, Entry] = {}
        for e in sorted(found, key=lambda e: e.manifest.seq):
            older = newest.get(e.manifest.key)
            if older is not None:
                log.info("write-back: %r was staged again later; dropping the older copy",
                         e.manifest.key)
                self.remove(older)
            newest[e.manifest.key] = e
        return sorted(newest.values(), key=lambda e: e.manifest.seq)

    def _adopt_dir(self, d: str, accept: Callable[[Manifest], bool]) -> list[Entry]:
        out: list[Entry] = []
        names = set(os.listdir(d))
        for n in sorted(names):
            if n.endswith(".json.tmp"):
                _unlink(os.path.join(d, n))  # an interrupted manifest write
            elif n.endswith(".data") and n[:-5] + ".json" not in names:
                _unlink(os.path.join(d, n))  # staging interrupted before its manifest
        for n in sorted(names):
            if not n.endswith(".json"):
                continue
            entry_id = n[:-5]
            src = Entry(d, entry_id, None)  # type: ignore[arg-type]
            try:
                with open(src.manifest_path, "rb") as f:
                    manifest = Manifest.from_json(f.read())
            except (OSError, ValueError, TypeError) as e:
                log.error("write-back: unreadable manifest %s (%s); left in place",
                          src.manifest_path, e)
                continue
            if not accept(manifest):
                continue
            src.manifest = manifest
            try:
                size, md5 = file_md5(src.data_path)
            except OSError as e:
                size, md5 = -1, str(e)
            if size != manifest.size or md5 != manifest.md5:
                log.error("write-back: staged data of %r is damaged (%d bytes, expected %d, "
                          "checksum %s); kept as %s.corrupt, not uploaded", manifest.key, size,
                          manifest.size, "ok" if md5 == manifest.md5 else "wrong",
                          src.data_path)
                _rename_if_exists(src.data_path, src.data_path + ".corrupt")
                _unlink(src.manifest_path)
                continue
            dst = Entry(self.directory, entry_id, manifest)
            # data first: a crash in between leaves the manifest (the entry)
            # where it was, and its data is found by the next adoption
            os.rename(src.data_path, dst.data_path)
            os.rename(src.manifest_path, dst.manifest_path)
            out.append(dst)
        if out:
            _fsync_dir(self.directory)
            _fsync_dir(d)
        leftover = [n for n in os.listdir(d) if n != LOCK_NAME]
        if not leftover:
            _unlink(os.path.join(d, LOCK_NAME))
            try:
                os.rmdir(d)
            except OSError:
                pass
        return out


def _rename_if_exists(src: str, dst: str) -> None:
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        pass


def _try_lock(d: str) -> int | None:
    """Lock a journal directory's lock file; None if a live mount holds it."""
    path = os.path.join(d, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def manifest_fields(**kw: Any) -> Manifest:
    """A manifest whose size and MD5 ``Journal.stage`` fills in."""
    return Manifest(size=0, md5="", **kw)
