"""Local staging of a file's bytes on disk, for writes that are not sequential.

A staging file is an unlinked sparse temporary file holding the bytes of one
open S3 object that are present locally, with ``present`` saying which they
are and ``dirty`` which of them were written locally (the rest are copies of
the object in S3, fetched for reading).  Bytes not present are either the unchanged object in S3 (below
the file's base size) or zeros (above it); the owner (``FileData``) decides.
Local I/O is done inline: pread/pwrite on a page-cached temporary file take
microseconds, far less than handing them to a thread.  A full disk raises
``NoSpace`` (ENOSPC to the writer) and leaves the previous state intact.
"""

from __future__ import annotations

import errno
import os
import tempfile

from ..errors import IOFailure, NoSpace
from .extents import Extents


class Staging:
    def __init__(self, directory: str):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:
            # filesystems without O_TMPFILE: a named file, unlinked at once
            fd, path = tempfile.mkstemp(dir=directory, prefix="staging-")
            os.unlink(path)
            self.fd = fd
        self.present = Extents()
        self.dirty = Extents()

    def _os_error(self, e: OSError, what: str) -> Exception:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpace(f"staging disk full while {what}")
        return IOFailure(f"staging file {what}: {e.strerror}")

    def write(self, offset: int, data: bytes | memoryview, *, dirty: bool = True) -> None:
        """Store bytes; ``dirty=False`` for bytes fetched from the object."""
        view = memoryview(data)
        pos = offset
        try:
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
