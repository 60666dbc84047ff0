"""Local staging of a file's bytes on disk, for writes that are not sequential.

A staging file is an unlinked sparse temporary file holding the bytes of one
open S3 object that are present locally, with ``present`` saying which they
are and ``dirty`` which of them were written locally (the rest are copies of
the object in S3, fetched for reading).  Bytes not present are either the unchanged object in S3 (below
the file's base size) or zeros (above it); the owner (``FileData``) decides.
Local I/O is done inline: pread/pwrite on a page-cached temporary file take
microseconds, far less than handing them to a thread.  A full disk raises
``NoSpace`` (ENOSPC to the writer) and leaves the previous state intact
(blocks are reserved before they are written); running out of file
descriptors gives EMFILE or ENFILE.
"""

from __future__ import annotations

import errno
import os
import tempfile

from ..errors import FsError, IOFailure, NoSpace
from .extents import Extents


_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)


def _reserve(fd: int, offset: int, length: int) -> None:
    """Allocate ``[offset, offset+length)`` of ``fd``; ENOSPC if it does not fit.

    Filesystems without fallocate (EOPNOTSUPP, EINVAL) are written without
    the reservation.
    """
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


class Staging:
    def __init__(self, directory: str):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            try:
                self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
            except OSError as e:
                if e.errno in _OUT_OF_FILES:
                    raise
                # filesystems without O_TMPFILE: a named file, unlinked at once
                fd, path = tempfile.mkstemp(dir=directory, prefix="staging-")
                os.unlink(path)
                self.fd = fd
        except OSError as e:
            raise self._os_error(e, "creating") from None
        self.present = Extents()
        self.dirty = Extents()

    def _os_error(self, e: OSError, what: str) -> Exception:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"staging disk full while {what}")
        if e.errno in _OUT_OF_FILES:
            # the daemon's file descriptors (or the system's) are spent: the
            # caller gets that errno, not EIO, and the mount goes on
            return FsError(f"staging file {what}: {e.strerror}", errno=e.errno)
        return IOFailure(f"staging file {what}: {e.strerror}")

    def write(self, offset: int, data: bytes | memoryview, *, dirty: bool = True) -> None:
        """Store bytes; ``dirty=False`` for bytes fetched from the object."""
        view = memoryview(data)
        pos = offset
        try:
            # Reserve the blocks first: a disk that fills up in the middle of
            # pwrite would leave bytes overwritten by a write that failed.
            if len(view):
                _reserve(self.fd, offset, len(view))
            while len(view):
                n = os.pwrite(self.fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as e:
            raise self._os_error(e, "writing") from None
        self.present.add(offset, offset + len(data))
        if dirty:
            self.dirty.add(offset, offset + len(data))

    def read(self, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset+size)`` as stored (zeros where never written)."""
        chunks = []
        pos, end = offset, offset + size
        try:
            while pos < end:
                chunk = os.pread(self.fd, end - pos, pos)
                if not chunk:
                    break
                chunks.append(chunk)
                pos += len(chunk)
        except OSError as e:
            raise self._os_error(e, "reading") from None
        data = b"".join(chunks)
        if len(data) < size:  # past the staging file's end: sparse zeros
            data += bytes(size - len(data))
        return data

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise self._os_error(e, "truncating") from None
        self.present.truncate(size)
        self.dirty.truncate(size)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
