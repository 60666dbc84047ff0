"""Attributes of files kept on local disk across mounts (``metadata_cache``).

Mode, owner, times and xattrs are not in S3 listings, so the first ``ls -l``
of a directory after a mount HEADs every file in it.  This store keeps what
those HEADs found, in ``meta.db`` (sqlite, WAL) under the cache directory,
so a later mount that lists the same directory takes a file's attributes
from disk instead, without a request, when the listing proves the object
unchanged since the HEAD.

When a listing proves it: the row is used only if the listing shows the
same ETag, size and Last-Modified second as the HEAD did, and the HEAD was
answered (the server's ``Date``) at least ``LAST_MODIFIED_SLACK_NS`` (2 s)
after that Last-Modified.  Any later change of the object (new data, or new metadata:
a chmod is a copy of the object onto itself) happens after the HEAD, so
it moves Last-Modified to a later second, and the row no longer matches.
An object changed within a second or two of its last write could not be
told apart that way, so such a HEAD is not kept.  Both times come from the
server's clock, never ours.  Files this mount wrote are not kept either:
a PUT's answer carries no Last-Modified.  Directories are not kept: a
listing shows a subdirectory as a prefix, with nothing to compare.

Rows a listing contradicts (changed or gone) are deleted when that
listing is merged (the first listing of a directory in a mount, or one
showing a name the mount does not know yet); removing or renaming a
directory through the mount and ``objectfs refresh`` delete the rows under
its path, and a file deleted or renamed through the mount loses its row
with the next batch written (``forget_files``).
The file is only a cache: it can be deleted at any time, a row that
cannot be read is dropped, and a file that is not a database any more is
replaced by an empty one.  At most ``MAX_ROWS`` rows are kept (the least
recently checked go first when a mount starts with more).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from typing import Iterable

from .. import sqlitedb
from ..store.base import LAST_MODIFIED_SLACK_NS, ObjectInfo

log = logging.getLogger(__name__)

FILE_NAME = "meta.db"
MAX_ROWS = 1_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS attrs (
    ns TEXT NOT NULL,        -- endpoint and bucket
    dir TEXT NOT NULL,       -- the key up to and including its last '/'
    name TEXT NOT NULL,      -- the rest of the key
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,    -- Last-Modified
    checked_ns INTEGER NOT NULL,  -- the server's Date of the HEAD's answer
    info TEXT NOT NULL,      -- JSON: metadata, content type, kept headers
    PRIMARY KEY (ns, dir, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attrs_checked ON attrs (checked_ns);
"""


def trusted(info: ObjectInfo) -> bool:
    """Whether a HEAD's answer may be kept (see the module's docstring)."""
    return (info.metadata is not None and bool(info.etag) and info.mtime_ns > 0
            and info.checked_ns > 0
            and info.mtime_ns + LAST_MODIFIED_SLACK_NS <= info.checked_ns)


def same_version(row: ObjectInfo, listed: ObjectInfo) -> bool:
    """Whether a listing entry shows the object a kept row describes (its
    ETag, or the one listings show for it: ``ObjectInfo.listed_etag``)."""
    return (listed.etag in (row.etag, row.listed_etag) and row.size == listed.size
            and row.mtime_ns // 1_000_000_000 == listed.mtime_ns // 1_000_000_000)


def _subtree(prefix: str) -> bool:
    """A directory's prefix (ending in '/', or the bucket's root ''), not a file's key."""
    return not prefix or prefix.endswith("/")


def covers(prefix: str, key: str) -> bool:
    """Whether ``forget(ns, prefix)`` drops ``key``'s row."""
    return key.startswith(prefix) if _subtree(prefix) else key == prefix


def _split(key: str) -> tuple[str, str]:
    head, sep, tail = key.rpartition("/")
    return head + sep, tail


class AttrDisk:
    """``meta.db`` under ``root``; every method is blocking (call it from a
    worker thread) and safe to call from several threads."""

    def __init__(self, root: str):
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlitedb.connect(os.path.join(root, FILE_NAME), SCHEMA)
        self._trim()

    def _trim(self) -> None:
        with self._lock:
            n = self.db.execute("SELECT count(*) FROM attrs").fetchone()[0]
            if n > MAX_ROWS:
                self.db.execute("DELETE FROM attrs WHERE (ns, dir, name) IN (SELECT ns, dir, "
                                "name FROM attrs ORDER BY checked_ns LIMIT ?)", (n - MAX_ROWS,))

    def save(self, ns: str, infos: Iterable[ObjectInfo]) -> None:
        """Keep the trusted ones among ``infos`` (HEAD answers)."""
        rows = []
        for i in infos:
            if not trusted(i):
                continue
            d, name = _split(i.key)
            extra = {"m": dict(i.metadata or {}), "t": i.content_type, "h": dict(i.headers)}
            if i.listed_etag:
                extra["l"] = i.listed_etag
            blob = json.dumps(extra, separators=(",", ":"))
            rows.append((ns, d, name, i.etag, i.size, i.mtime_ns, i.checked_ns, blob))
        if not rows:
            return
        with self._lock, sqlitedb.transaction(self.db):
            self.db.executemany("INSERT OR REPLACE INTO attrs VALUES (?,?,?,?,?,?,?,?)", rows)

    def match(self, ns: str, prefix: str, listed: dict[str, ObjectInfo]) -> list[ObjectInfo]:
        """The kept HEAD answers for the files of a complete listing of
        ``prefix`` (``listed``: listing entries by key) that it shows
        unchanged; rows it contradicts are deleted."""
        with self._lock:
            rows = self.db.execute("SELECT name, etag, size, mtime_ns, checked_ns, info "
                                   "FROM attrs WHERE ns=? AND dir=?", (ns, prefix)).fetchall()
            found, stale = [], []
            for name, etag, size, mtime_ns, checked_ns, blob in rows:
                key = prefix + name
                entry = listed.get(key)
                try:
                    extra = json.loads(blob)
                    info = ObjectInfo(key=key, size=size, etag=etag, mtime_ns=mtime_ns,
                                      metadata=dict(extra["m"]), content_type=extra["t"],
                                      headers=dict(extra["h"]), checked_ns=checked_ns,
                                      listed_etag=extra.get("l"))
                except (ValueError, KeyError, TypeError):
                    info = None
                if info is None or entry is None or not same_version(info, entry):
                    stale.append(name)
                    continue
                found.append(info)
            if stale:
                with sqlitedb.transaction(self.db):
                    self.db.executemany("DELETE FROM attrs WHERE ns=? AND dir=? AND name=?",
                                        [(ns, prefix, n) for n in stale])
            return found

    def forget(self, ns: str, prefix: str) -> int:
        """Delete the row of the key ``prefix``, or with a directory's
        ``prefix`` (ending in '/', or the bucket's root '') the rows of
        every key under it."""
        with self._lock:
            if not _subtree(prefix):
                d, name = _split(prefix)
                return self.db.execute("DELETE FROM attrs WHERE ns=? AND dir=? AND name=?",
                                       (ns, d, name)).rowcount
            # a range of the primary key: every dir that starts with prefix
            return self.db.execute("DELETE FROM attrs WHERE ns=? AND dir>=? AND dir<?",
                                   (ns, prefix, prefix + "\U0010ffff")).rowcount

    def forget_files(self, ns: str, keys: Iterable[str]) -> None:
        """Delete the rows of the files ``keys``, in one transaction."""
        with self._lock, sqlitedb.transaction(self.db):
            self.db.executemany("DELETE FROM attrs WHERE ns=? AND dir=? AND name=?",
                                [(ns, *_split(k)) for k in keys])

    def close(self) -> None:
        with self._lock:
            self.db.close()


def open_attr_disk(root: str) -> AttrDisk | None:
    """The store under ``root``, or None (logged) when it cannot be used.
    A file sqlite cannot read (damaged, or not a database) is replaced by an
    empty one: it only ever held a cache."""
    for attempt in (1, 2):
        try:
            return AttrDisk(root)
        except sqlite3.DatabaseError as e:
            if attempt == 2 or isinstance(e, sqlite3.OperationalError):
                log.warning("metadata cache disabled: cannot use %s (%s)", root, e)
                return None
            log.warning("metadata cache: %s is unreadable (%s); starting a new one",
                        os.path.join(root, FILE_NAME), e)
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(os.path.join(root, FILE_NAME + suffix))
                except FileNotFoundError:
                    pass
                except OSError:
                    return None
        except (OSError, sqlite3.Error) as e:
            log.warning("metadata cache disabled: cannot use %s (%s)", root, e)
            return None
    return None
