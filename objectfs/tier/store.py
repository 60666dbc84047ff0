"""The local tier's store: object data on local disk in checksummed blocks,
indexed in sqlite, never more bytes than its limit.

Layout under the cache root (the write-back work keeps its own files under
``writeback/``, nothing here touches them)::

    tier.db       the index (sqlite, WAL): objects, blocks, pins, total bytes
    tier.lock     held shared by every daemon using the directory
    data/XX/OID.N block N of object OID (see blockfile.py for the format)

Why blocks of 1 MiB: the kernel asks for 128 KiB at a time and the data
path already fetches missing ranges in 1 MiB units, so a random read costs
at most 1 MiB of transfer and disk; a sequential read touches one file per
MiB, whose open/read/CRC cost (well under a millisecond) is small beside the
bytes.  Larger blocks would make random reads pull more; smaller ones would
multiply files and index rows (10 GiB = 10,240 rows at 1 MiB).

Why sqlite: the index must survive a crash and a remount, several daemons
may share the directory, and eviction needs "the least valuable unpinned
blocks" quickly.  sqlite (stdlib) gives atomic transactions, cross-process
locking (a daemon's whole evict-and-insert step is one ``BEGIN IMMEDIATE``
transaction, so the byte bound holds across daemons) and an index on the
eviction score.  An append log would need its own compaction and locking.

Crash safety without fsync: an index row is committed *before* its file is
written (in a second transaction, and only if the row still exists), and a
victim's file is unlinked *before* its row is deleted.  So at every instant
the files on disk are a subset of the rows, and the bytes on disk never
exceed the accounted total, which never exceeds the limit.  A crash can
leave rows whose file is missing (a miss, repaired when the block is stored
again) or a half-written file (caught by its CRC).  The lock file says when
no other daemon uses the directory: only then does a starting daemon sweep
temporary files, rows without files and files without rows.

Hot = recent and frequent: each block has a score, the wall-clock time of
its last use plus FREQ_BONUS seconds for every earlier use (at most
FREQ_CAP of them); the lowest score goes first.  A block read once an hour
ago loses to one read once ten minutes ago; a block read nine times half an
hour ago beats both.  Use counts reach the index in batches (``flush``), so
a cached read never writes to sqlite.  Pinned blocks are never evicted; a
pinned block that does not fit beside the other pinned ones is not stored.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .. import sqlitedb
from ..logs import Sparse
from .blockfile import FLAG_ZSTD, HEADER, Corrupt, check_plain, decode, encode, header

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20
# Bytes are accounted in whole filesystem blocks: a 100-byte file still
# takes 4 KiB of disk.
DISK_UNIT = 4096
FREQ_BONUS = 300.0
FREQ_CAP = 8
EVICT_BATCH = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    oid TEXT PRIMARY KEY, ns TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL,
    size INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS objects_by_key ON objects(ns, key);
CREATE TABLE IF NOT EXISTS blocks (
    oid TEXT NOT NULL, blockno INTEGER NOT NULL, bytes INTEGER NOT NULL,
    pinned INTEGER NOT NULL, last_used REAL NOT NULL, hits INTEGER NOT NULL,
    score REAL NOT NULL, PRIMARY KEY (oid, blockno)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_score ON blocks(pinned, score);
CREATE TABLE IF NOT EXISTS pins (
    ns TEXT NOT NULL, key TEXT NOT NULL, prefix INTEGER NOT NULL,
    PRIMARY KEY (ns, key, prefix));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('total', 0);
"""


class Closed(Exception):
    """The store was closed (the mount is going away)."""


def disk_bytes(n: int) -> int:
    """Disk space a block file of ``n`` bytes may take: whole allocation units,
    plus one for the file system's own map of a fragmented file (ext4 keeps
    four extents in the inode and needs an extent block beyond that; the
    hypothesis model caught a 1 MiB block file taking that extra 4 KiB)."""
    units = -(-n // DISK_UNIT)
    return (units + (1 if units > 4 else 0)) * DISK_UNIT


@dataclass(frozen=True)
class ObjectRef:
    """One version of one object: ``ns`` names the endpoint and bucket."""

    ns: str
    key: str
    etag: str
    size: int
    oid: str = field(init=False, compare=False)

    def __post_init__(self):
        # the size too: an ETag that comes back with another size (a server
        # whose ETags are not content hashes) is another object, never
        # blocks of the old one under the new lengths
        h = hashlib.blake2b(f"{self.ns}\0{self.key}\0{self.etag}\0{self.size}".encode(),
                            digest_size=16)
        object.__setattr__(self, "oid", h.hexdigest())

    @property
    def nblocks(self) -> int:
        return -(-self.size // BLOCK_SIZE)

    def block_len(self, blockno: int) -> int:
        return max(0, min(BLOCK_SIZE, self.size - blockno * BLOCK_SIZE))


def _ident(oid: str, blockno: int) -> bytes:
    return bytes.fromhex(oid) + blockno.to_bytes(8, "little")


def _prefix_match(key: str, pattern: str, prefix: bool) -> bool:
    return key.startswith(pattern) if prefix else key == pattern


def _plain_part(fd: int, length: int, lo: int, hi: int, flags: int = 0) -> bytearray | None:
    """Bytes ``[lo, hi)`` of the payload of the open block file ``fd``, if
    its header still says plain (uncompressed) and ``length`` bytes long and
    all of them could be read (``flags`` for preadv, e.g. RWF_NOWAIT); None
    otherwise.  Checks no CRC: for blocks this process has checked before."""
    head, buf = bytearray(HEADER.size), bytearray(hi - lo)
    if os.preadv(fd, [head], 0, flags) != HEADER.size:
        return None
    try:
        fl, raw_len, stored_len, _ = header(head)
    except Corrupt:
        return None
    if fl & FLAG_ZSTD or not raw_len == stored_len == length:
        return None
    return buf if os.preadv(fd, [buf], HEADER.size + lo, flags) == hi - lo else None


class TierStore:
    """Thread-safe: every index access holds ``_lock``; block files are
    written under temporary names and renamed into place."""

    def __init__(self, root: str, limit: int, *, compress: bool = False,
                 extra_pinned: Callable[[str, str], bool] | None = None,
                 clock: Callable[[], float] = time.time):
        self.root = root
        self.limit = limit
        self.compress = compress
        self.extra_pinned = extra_pinned or (lambda ns, key: False)
        self.clock = clock
        # a full disk refuses every block: a line a minute, not one a block
        self._unwritable, self._unindexable = Sparse(log), Sparse(log)
        self.data_dir = os.path.join(root, "data")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        # cached data is as private as the files it came from may be: only
        # the mount's owner may read it, whatever the directory's history
        os.chmod(self.data_dir, 0o700)
        self._lock = threading.Lock()
        self.closed = False
        self._local = threading.local()
        self._touches: dict[tuple[str, int], int] = {}
        # plain blocks this process has checked whole (loaded with a good
        # CRC) or written itself: a part of one is read without reading and
        # checking the whole block again (see load_range).  Blocks this
        # process deletes leave it; those another daemon sharing the tier
        # evicts do not, so it is emptied when it outgrows twice the blocks
        # the tier can hold (they are then checked once more).
        self._verified: set[tuple[str, int]] = set()
        self._verified_max = max(1024, 2 * (limit // BLOCK_SIZE))
        # read_now can ask the kernel for cached bytes only (preadv RWF_NOWAIT)
        self._nowait = hasattr(os, "preadv") and hasattr(os, "RWF_NOWAIT")
        self._dirs: set[str] = set()   # data subdirectories known to exist
        self.corrupt = 0          # corrupt blocks found (and dropped) by this process
        self.refused = 0          # blocks not stored: no room beside pinned data
        self._lock_fd = os.open(os.path.join(root, "tier.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        exclusive = True
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            exclusive = False
        self.db = sqlitedb.connect(os.path.join(root, "tier.db"), SCHEMA)
        self._pins = self._load_pins()
        if exclusive:
            self.reconcile()
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # let other daemons in
        else:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            log.info("local tier %s is shared with another running daemon", root)
        self.exclusive_at_start = exclusive
        with self._lock, self._tx():
            self._make_room(0)

    # -- plumbing -----------------------------------------------------------

    def _tx(self):
        if self.closed:
            raise Closed()
        return sqlitedb.transaction(self.db)

    def path(self, oid: str, blockno: int) -> str:
        return os.path.join(self.data_dir, oid[:2], f"{oid}.{blockno}")

    def _compressor(self):
        c = getattr(self._local, "zc", None)
        if c is None:
            import zstandard
            c = self._local.zc = zstandard.ZstdCompressor(level=3)
        return c

    def _total(self) -> int:
        return self.db.execute("SELECT value FROM meta WHERE name='total'").fetchone()[0]

    def _set_total(self, total: int) -> None:
        self.db.execute("UPDATE meta SET value=? WHERE name='total'", (total,))

    def _unlink(self, oid: str, blockno: int) -> None:
        self._verified.discard((oid, blockno))
        try:
            os.unlink(self.path(oid, blockno))
        except FileNotFoundError:
            pass

    def _delete_block(self, oid: str, blockno: int) -> int:
        """Unlink then unindex one block (in a transaction); its bytes."""
        row = self.db.execute("SELECT bytes FROM blocks WHERE oid=? AND blockno=?",
                              (oid, blockno)).fetchone()
        if row is None:
            return 0
        self._unlink(oid, blockno)
        self.db.execute("DELETE FROM blocks WHERE oid=? AND blockno=?", (oid, blockno))
        return row[0]

    def _drop_empty_objects(self, oids: Iterable[str]) -> None:
        for oid in set(oids):
            self.db.execute("DELETE FROM objects WHERE oid=? AND NOT EXISTS "
                            "(SELECT 1 FROM blocks WHERE oid=?)", (oid, oid))

    def _make_room(self, need: int) -> bool:
        """Evict unpinned blocks, lowest score first, until ``need`` more
        bytes fit; False, evicting nothing, if even evicting every unpinned
        block would not make room."""
        total = self._total()
        if total + need <= self.limit:
            return True
        evictable = self.db.execute("SELECT coalesce(sum(bytes), 0) FROM blocks "
                                    "WHERE pinned=0").fetchone()[0]
        if total - evictable + need > self.limit:
            return False  # pinned data leaves no room: evict nothing in vain
        touched = []
        while total + need > self.limit:
            rows = self.db.execute("SELECT oid, blockno, bytes FROM blocks WHERE pinned=0 "
                                   "ORDER BY score LIMIT ?", (EVICT_BATCH,)).fetchall()
            if not rows:
                break
            for oid, blockno, _ in rows:
                total -= self._delete_block(oid, blockno)
                touched.append(oid)
                if total + need <= self.limit:
                    break
        self._set_total(total)
        self._drop_empty_objects(touched)
        return total + need <= self.limit

    # -- reading ------------------------------------------------------------

    def load(self, ref: ObjectRef, blockno: int) -> bytearray | None:
        """Block ``blockno`` of ``ref``, or None if it is not (validly) here.
        A corrupt block is dropped, so the caller's refetch replaces it.
        The buffer is allocated once the block's file is open: a miss (most
        random reads of a file being fetched) costs one failed open, not a
        1 MiB allocation."""
        f = self._open(ref, blockno)
        if f is None:
            return None
        with f:
            buf = bytearray(ref.block_len(blockno))
            return buf if self._read(f, ref, blockno, memoryview(buf)) else None

    def load_into(self, ref: ObjectRef, blockno: int, out: memoryview) -> bool:
        """Block ``blockno`` of ``ref`` read into ``out`` (exactly the
        block's length): a plain block's payload is read into it with no
        copy in between, so a cached read of many blocks fills one buffer.
        False, ``out`` undefined, if the block is not (validly) here; a
        corrupt block is dropped, so the caller's refetch replaces it."""
        f = self._open(ref, blockno)
        if f is None:
            return False
        with f:
            return self._read(f, ref, blockno, out)

    def _open(self, ref: ObjectRef, blockno: int):
        p = self.path(ref.oid, blockno)
        try:
            return open(p, "rb", buffering=0)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("cannot read cached block %s: %s", p, e)
            return None

    def _read(self, f, ref: ObjectRef, blockno: int, out: memoryview) -> bool:
        ident = _ident(ref.oid, blockno)
        try:
            head = f.read(HEADER.size)
            flags = header(head)[0]
            if flags & FLAG_ZSTD:
                data = decode(ident, head + f.readall())
                if len(data) != len(out):
                    raise Corrupt(f"holds {len(data)} bytes, expected {len(out)}")
                out[:] = data
            else:
                got = 0
                while got < len(out):
                    n = f.readinto(out[got:])
                    if not n:
                        break
                    got += n
                if got != len(out) or f.read(1):
                    raise Corrupt(f"not the {len(out)} bytes expected")
                check_plain(ident, head, out)
                self._checked(ref.oid, blockno)
        except OSError as e:
            log.warning("cannot read cached block %s: %s", f.name, e)
            return False
        except Corrupt as e:
            self._corrupt(ref, blockno, e)
            return False
        self._touch(ref.oid, blockno)
        return True

    def _checked(self, oid: str, blockno: int) -> None:
        if len(self._verified) >= self._verified_max:
            self._verified.clear()
        self._verified.add((oid, blockno))

    def _touch(self, oid: str, blockno: int) -> None:
        k = (oid, blockno)
        self._touches[k] = self._touches.get(k, 0) + 1

    def load_range(self, ref: ObjectRef, blockno: int, lo: int,
                   hi: int) -> bytes | bytearray | None:
        """Bytes ``[lo, hi)`` of block ``blockno`` of ``ref``, or None if the
        block is not (validly) here.  A plain block that this process has
        already checked whole (or written) is read in part, with no second
        CRC over the whole block: a random 4 KiB read of a cached block then
        reads 4 KiB, not 1 MiB.  Block files never change in place (they are
        written under a temporary name and renamed, and a name always holds
        the same payload), so a checked block stays good unless the disk
        itself corrupts it later.  Its header is read each time all the
        same: another daemon sharing the directory with ``cache_compress``
        set differently may have evicted the block and stored it again,
        compressed.  Any other block is loaded and checked whole."""
        k = (ref.oid, blockno)
        if k in self._verified:
            try:
                with open(self.path(ref.oid, blockno), "rb", buffering=0) as f:
                    data = _plain_part(f.fileno(), ref.block_len(blockno), lo, hi)
            except FileNotFoundError:
                self._verified.discard(k)
                return None
            except OSError as e:
                log.warning("cannot read cached block %d of %r: %s", blockno, ref.key, e)
                return None
            if data is not None:
                self._touch(ref.oid, blockno)
                return data
            self._verified.discard(k)  # changed since it was checked: check it whole
        buf = self.load(ref, blockno)
        return None if buf is None else bytes(memoryview(buf)[lo:hi])

    def read_now(self, ref: ObjectRef, blockno: int, lo: int, hi: int) -> bytearray | None:
        """Bytes ``[lo, hi)`` of block ``blockno`` of ``ref`` if they can be
        had at once: the block is one this process has checked or written
        (``_verified``, as in load_range) and its bytes are in the page cache
        (``RWF_NOWAIT``: the read fails rather than wait for the disk).  None
        otherwise, and the caller reads through a worker thread.  Made for
        the event loop, where a thread's round trip (about 0.1 ms here) costs
        far more than the read: only the open() of the block file can touch
        the disk, and a block this process used lately has its directory
        entry and inode in memory."""
        if not self._nowait or (ref.oid, blockno) not in self._verified:
            return None
        try:
            fd = os.open(self.path(ref.oid, blockno), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # gone or unreadable: load_range finds out why
        try:
            # None: stored again since, short, or only partly cached (see
            # load_range); the slow path finds out which
            buf = _plain_part(fd, ref.block_len(blockno), lo, hi, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self._nowait = False  # this file system cannot say "not cached"
            return None
        finally:
            os.close(fd)
        if buf is not None:
            self._touch(ref.oid, blockno)
        return buf

    def _corrupt(self, ref: ObjectRef, blockno: int, e: Corrupt) -> None:
        """A corrupt block is dropped, so the caller's refetch replaces it."""
        log.warning("cached block %d of %r is corrupt (%s): dropped, refetching",
                    blockno, ref.key, e)
        self.corrupt += 1
        try:
            self.drop(ref.oid, blockno)
        except Closed:
            pass
        except sqlite3.Error as err:
            # The index cannot be written (a full disk, a lock held past the
            # busy timeout): the file goes all the same, so it is never read
            # again, and its row is a miss until stored again or reconciled.
            # The caller refetches: a read never fails for it.
            log.warning("could not drop corrupt block %d of %r from the index: %s",
                        blockno, ref.key, err)
            self._unlink(ref.oid, blockno)

    def cached_bytes(self, ref: ObjectRef, start: int, end: int) -> int:
        """Bytes of the blocks holding ``[start, end)`` of ``ref`` that are
        stored now."""
        if end <= start:
            return 0
        with self._lock:
            rows = self.db.execute(
                "SELECT blockno FROM blocks WHERE oid=? AND blockno BETWEEN ? AND ?",
                (ref.oid, start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE)).fetchall()
        return sum(ref.block_len(r[0]) for r in rows)

    def has(self, ref: ObjectRef, blockno: int) -> bool:
        return os.path.exists(self.path(ref.oid, blockno))

    def drop(self, oid: str, blockno: int) -> None:
        with self._lock, self._tx():
            freed = self._delete_block(oid, blockno)
            self._set_total(self._total() - freed)
            self._drop_empty_objects([oid])

    def flush(self) -> None:
        """Write the use counts gathered by ``load`` to the index."""
        touches, self._touches = self._touches, {}
        if not touches:
            return
        now = self.clock()
        with self._lock, self._tx():
            self.db.executemany(
                "UPDATE blocks SET hits = hits + :n, last_used = :now, "
                "score = :now + :bonus * MIN(hits + :n - 1, :cap) "
                "WHERE oid = :oid AND blockno = :b",
                [{"n": n, "now": now, "bonus": FREQ_BONUS, "cap": FREQ_CAP, "oid": oid, "b": b}
                 for (oid, b), n in touches.items()])

    # -- storing ------------------------------------------------------------

    def pinned(self, ns: str, key: str) -> bool:
        return (any(n == ns and _prefix_match(key, k, p) for n, k, p in self._pins)
                or self.extra_pinned(ns, key))

    def put(self, ref: ObjectRef, blocks: list[tuple[int, bytes | memoryview]]) -> int:
        """Store whole blocks of ``ref``; returns how many were stored.

        Each payload must be the full block (the last one of the object may
        be short).  Blocks that do not fit (pinned data fills the limit) are
        not stored.  Storing a new version of a key drops the old versions.
        """
        encoded = []
        zc = self._compressor() if self.compress else None
        for blockno, payload in blocks:
            if len(payload) != ref.block_len(blockno) or not payload:
                raise ValueError(f"block {blockno} of {ref.key!r} has {len(payload)} bytes")
            pieces = encode(_ident(ref.oid, blockno), payload, zc)
            encoded.append((blockno, pieces, disk_bytes(sum(len(p) for p in pieces))))
        if not encoded:
            return 0
        pinned = self.pinned(ref.ns, ref.key)
        now = self.clock()
        with self._lock, self._tx():
            if self.db.execute("INSERT OR IGNORE INTO objects VALUES (?,?,?,?,?)",
                               (ref.oid, ref.ns, ref.key, ref.etag, ref.size)).rowcount:
                self._drop_versions(ref)
            need = 0
            for blockno, _, nbytes in encoded:
                row = self.db.execute("SELECT bytes FROM blocks WHERE oid=? AND blockno=?",
                                      (ref.oid, blockno)).fetchone()
                need += nbytes - (row[0] if row else 0)
            if not self._make_room(need):
                self.refused += len(encoded)
                self._drop_empty_objects([ref.oid])
                return 0
            self.db.executemany(
                "INSERT OR REPLACE INTO blocks VALUES (?,?,?,?,?,?,?)",
                [(ref.oid, b, n, int(pinned), now, 1, now) for b, _, n in encoded])
            self._set_total(self._total() + need)
        tmp_suffix = f".tmp{os.getpid()}-{threading.get_ident()}"
        written = []
        plain = {b for b, pieces, _ in encoded if not header(pieces[0])[0] & FLAG_ZSTD}
        for blockno, pieces, _ in encoded:
            final = self.path(ref.oid, blockno)
            tmp = final + tmp_suffix
            try:
                self._write(tmp, pieces)
            except OSError as e:
                self._unwritable.warning("cannot write cached block %s: %s", final, e)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                try:
                    with self._lock, self._tx():
                        freed = self.db.execute("DELETE FROM blocks WHERE oid=? AND blockno=? "
                                                "RETURNING bytes", (ref.oid, blockno)).fetchall()
                        self._set_total(self._total() - sum(r[0] for r in freed))
                except sqlite3.Error as err:
                    # the index is full too: the row stays, a miss (and bytes
                    # counted) until the block is stored again, evicted or
                    # reconciled; the blocks written before it are still
                    # renamed into place below, not left as temporary files
                    self._unindexable.warning("cannot unindex cached block %s: %s", final, err)
                continue
            written.append((blockno, tmp, final))
        stored = 0
        try:
            with self._lock, self._tx():
                for blockno, tmp, final in written:
                    # evicted by someone else meanwhile: the file must not appear
                    if self.db.execute("SELECT 1 FROM blocks WHERE oid=? AND blockno=?",
                                       (ref.oid, blockno)).fetchone():
                        os.replace(tmp, final)
                        stored += 1
                        if blockno in plain:
                            self._checked(ref.oid, blockno)
                    else:
                        os.unlink(tmp)
        except BaseException:
            for _, tmp, _ in written:  # those not renamed yet
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise
        return stored

    def _write(self, path: str, pieces: list) -> None:
        """One new file, its directory made only the first time this
        process writes there.  (Plain write()s: writev() of the 17-byte
        header and the payload cost more CPU on the test machine.)"""
        parent = os.path.dirname(path)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            for p in pieces:
                view = memoryview(p).cast("B")
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def _drop_versions(self, ref: ObjectRef) -> None:
        """Forget every other version of ``ref``'s key (pinned ones too:
        pins follow the key, and an old version is never served again)."""
        old = [r[0] for r in self.db.execute(
            "SELECT oid FROM objects WHERE ns=? AND key=? AND oid<>?",
            (ref.ns, ref.key, ref.oid))]
        if old:
            self._forget_objects(old, keep_pinned=False)

    def _forget_objects(self, oids: list[str], keep_pinned: bool) -> tuple[int, int, int]:
        """Drop the blocks of ``oids``; (blocks, bytes) dropped and pinned kept."""
        total = self._total()
        nblocks = nbytes = kept = 0
        for oid in oids:
            for blockno, b, pinned in self.db.execute(
                    "SELECT blockno, bytes, pinned FROM blocks WHERE oid=?", (oid,)).fetchall():
                if pinned and keep_pinned:
                    kept += 1
                    continue
                self._delete_block(oid, blockno)
                nblocks += 1
                nbytes += b
        self._set_total(total - nbytes)
        self._drop_empty_objects(oids)
        return nblocks, nbytes, kept

    # -- pins and explicit eviction ----------------------------------------

    def _load_pins(self) -> set[tuple[str, str, bool]]:
        return {(n, k, bool(p)) for n, k, p in self.db.execute("SELECT ns, key, prefix FROM pins")}

    def _objects_matching(self, ns: str, key: str, prefix: bool) -> list[tuple[str, str]]:
        if prefix:
            rows = self.db.execute("SELECT oid, key FROM objects WHERE ns=? AND "
                                   "substr(key, 1, ?) = ?", (ns, len(key), key))
        else:
            rows = self.db.execute("SELECT oid, key FROM objects WHERE ns=? AND key=?",
                                   (ns, key))
        return rows.fetchall()

    def _repin(self, ns: str, objects: list[tuple[str, str]]) -> int:
        """Recompute the pinned flag of ``objects``' blocks; blocks now pinned."""
        count = 0
        for oid, key in objects:
            flag = int(self.pinned(ns, key))
            self.db.execute("UPDATE blocks SET pinned=? WHERE oid=?", (flag, oid))
            if flag:
                count += self.db.execute("SELECT count(*) FROM blocks WHERE oid=?",
                                         (oid,)).fetchone()[0]
        return count

    def pin(self, ns: str, key: str, prefix: bool) -> int:
        """Pin ``key`` (every key under it with ``prefix``), now and for
        versions cached later; returns the number of cached blocks pinned."""
        with self._lock, self._tx():
            self.db.execute("INSERT OR IGNORE INTO pins VALUES (?,?,?)", (ns, key, int(prefix)))
            self._pins = self._load_pins()
            return self._repin(ns, self._objects_matching(ns, key, prefix))

    def apply_policy(self, ns: str) -> int:
        """Pin the cached blocks that ``extra_pinned`` (the mount's
        ``cache_pin``) now covers; returns how many.  Never unpins: pins of
        another mount's policy or of a removed glob stay until ``unpin``."""
        with self._lock, self._tx():
            rows = self.db.execute("SELECT DISTINCT o.oid, o.key FROM objects o JOIN blocks b "
                                   "ON b.oid = o.oid WHERE o.ns=? AND b.pinned=0",
                                   (ns,)).fetchall()
            count = 0
            for oid, key in rows:
                if self.extra_pinned(ns, key):
                    count += self.db.execute("UPDATE blocks SET pinned=1 WHERE oid=?",
                                             (oid,)).rowcount
            return count

    def unpin(self, ns: str, key: str, prefix: bool) -> int:
        """Remove the pin of ``key`` (with ``prefix``: every pin at or under
        it); returns the number of pins removed."""
        with self._lock, self._tx():
            if prefix:
                n = self.db.execute("DELETE FROM pins WHERE ns=? AND substr(key, 1, ?) = ?",
                                    (ns, len(key), key)).rowcount
            else:
                n = self.db.execute("DELETE FROM pins WHERE ns=? AND key=? AND prefix=0",
                                    (ns, key)).rowcount
            self._pins = self._load_pins()
            self._repin(ns, self._objects_matching(ns, key, prefix))
            return n

    def evict(self, ns: str, key: str, prefix: bool) -> tuple[int, int, int]:
        """Drop the cached blocks of ``key`` (or everything under it);
        pinned blocks stay.  Returns (blocks, bytes) dropped and pinned kept."""
        with self._lock, self._tx():
            oids = [oid for oid, _ in self._objects_matching(ns, key, prefix)]
            return self._forget_objects(oids, keep_pinned=True)

    def forget_keys(self, ns: str, keys: list[str]) -> None:
        """The objects were deleted or replaced through this mount: drop
        every cached version of each, pinned or not (one transaction)."""
        with self._lock, self._tx():
            oids = list(dict.fromkeys(oid for key in keys
                                      for oid, _ in self._objects_matching(ns, key, False)))
            if oids:
                self._forget_objects(oids, keep_pinned=False)

    # -- maintenance and figures ------------------------------------------

    def reconcile(self) -> None:
        """Make index and files agree (only when no other daemon runs here):
        temporary files and files without a row are removed, rows without a
        file are dropped, and the total is recounted."""
        rows = set()
        with self._lock, self._tx():
            for oid, blockno in self.db.execute("SELECT oid, blockno FROM blocks").fetchall():
                if os.path.exists(self.path(oid, blockno)):
                    rows.add(f"{oid}.{blockno}")
                else:
                    self.db.execute("DELETE FROM blocks WHERE oid=? AND blockno=?",
                                    (oid, blockno))
            self.db.execute("DELETE FROM objects WHERE oid NOT IN (SELECT oid FROM blocks)")
            total = self.db.execute("SELECT coalesce(sum(bytes), 0) FROM blocks").fetchone()[0]
            self._set_total(total)
        removed = 0
        for sub in os.scandir(self.data_dir):
            if not sub.is_dir():
                continue
            for f in os.scandir(sub.path):
                if f.name not in rows:
                    try:
                        os.unlink(f.path)
                        removed += 1
                    except OSError:
                        pass
        if removed:
            log.info("local tier: removed %d stray file(s) left by an earlier crash", removed)

    def usage(self) -> int:
        with self._lock:
            if self.closed:
                raise Closed()
            return self._total()

    def stats(self) -> dict:
        with self._lock:
            if self.closed:
                raise Closed()
            blocks, used, pinned = self.db.execute(
                "SELECT count(*), coalesce(sum(bytes), 0), "
                "coalesce(sum(CASE WHEN pinned THEN bytes ELSE 0 END), 0) FROM blocks").fetchone()
            objects = self.db.execute("SELECT count(*) FROM objects").fetchone()[0]
            pins = self.db.execute("SELECT count(*) FROM pins").fetchone()[0]
            return {"used": self._total(), "limit": self.limit, "blocks": blocks,
                    "objects": objects, "pinned_bytes": pinned, "pins": pins,
                    "indexed_bytes": used, "corrupt": self.corrupt, "refused": self.refused}

    def close(self) -> None:
        """Record the last uses and close; later calls that need the index
        raise Closed (a worker thread may still be finishing a put)."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            with self._lock:
                self.closed = True
                self.db.close()
                os.close(self._lock_fd)
