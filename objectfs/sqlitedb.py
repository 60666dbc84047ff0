"""The sqlite set-up the local tier's index and the metadata cache share.

Both are files under the cache directory that several daemons may open at
once: WAL (readers never wait for the writer), ``synchronous=NORMAL`` (a
crash may lose the last commits, never the file: both hold only what can
be fetched again), a generous busy timeout for the other daemons'
transactions, and writes in ``BEGIN IMMEDIATE`` transactions so two
daemons never deadlock upgrading a read to a write.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Iterator


def connect(path: str, schema: str) -> sqlite3.Connection:
    """Open (or create, mode 0600) the database at ``path`` and apply
    ``schema`` (statements that are no-ops when they ran before).  The
    connection is in autocommit mode and may be used from any thread (the
    caller serialises its use)."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    try:
        os.chmod(path, 0o600)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: committed at the end, rolled back on an error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
