"""Sparse files: data only at the end, holes read as zeros, sizes beyond 5 GiB.

5 GiB is S3's limit for a single PUT, so a file larger than that must be
stored some other way.  The tests only touch a few pages: they never read GiBs.
"""

import os

import pytest

from posix_suite.fsutil import read_file

GIB = 1 << 30
BIG = 5 * GIB + 12345  # beyond S3's single-PUT limit, not page aligned
TAIL = b"end of a sparse file"


# Both 5 GiB tests are marked huge_object: an S3 filesystem may upload the
# whole hole as zeros, in parts (5 GiB is S3's single-PUT limit), before the
# file is even closed (s3fs does, once its dirty data passes max_dirty_data).
# That takes minutes, and a blocked write or close cannot be interrupted by
# the timeout, hence the generous timeouts.  Not every S3 server can hold
# such an object (moto assembles it in memory), so --skip-huge-objects REASON
# skips them.
@pytest.mark.huge_object
@pytest.mark.timeout(300)
def test_sparse_over_5gib(workdir):
    """Checked through the open descriptor, then truncated to 0 before closing."""
    p = os.path.join(workdir, "big")
    size = BIG + len(TAIL)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.lseek(fd, BIG, os.SEEK_SET)
        assert os.write(fd, TAIL) == len(TAIL)
        assert os.fstat(fd).st_size == size, f"fstat size {os.fstat(fd).st_size}, expected {size}"
        assert os.stat(p).st_size == size, f"stat size {os.stat(p).st_size}, expected {size}"
        assert os.pread(fd, 4096, 2 * GIB + 7) == b"\0" * 4096, "the middle must read as zeros"
        assert os.pread(fd, 4096, 0) == b"\0" * 4096, "the start must read as zeros"
        assert os.pread(fd, 100, BIG - 10) == b"\0" * 10 + TAIL, "the tail reads back"
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 0, "size after truncating the sparse file to 0"


@pytest.mark.huge_object
@pytest.mark.timeout(300)
def test_sparse_over_5gib_persists(workdir):
    p = os.path.join(workdir, "big")
    size = BIG + len(TAIL)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, TAIL, BIG)
    finally:
        os.close(fd)
    assert os.stat(p).st_size == size, f"size after close {os.stat(p).st_size}, expected {size}"
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == b"\0" * 4096, "start of the hole after reopening"
        assert os.pread(fd, 4096, 3 * GIB + 1) == b"\0" * 4096, "middle after reopening"
        assert os.pread(fd, 100, BIG - 10) == b"\0" * 10 + TAIL, "the tail after reopening"
    finally:
        os.close(fd)


def test_small_sparse_file(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"A", 0)
        os.pwrite(fd, b"Z", (1 << 20) - 1)
    finally:
        os.close(fd)
    got = read_file(p)
    assert len(got) == 1 << 20, f"size {len(got)}"
    assert got[0:1] == b"A" and got[-1:] == b"Z", "data at both ends"
    assert got[1:-1] == b"\0" * ((1 << 20) - 2), "the hole between them reads as zeros"


def test_several_holes(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        offsets = [0, 100_000, 3_000_000, 3_000_001, 9_999_990]
        for off in offsets:
            os.pwrite(fd, b"X", off)
        assert os.fstat(fd).st_size == 9_999_991
        for off in offsets:
            assert os.pread(fd, 1, off) == b"X", f"data byte at {off}"
        for off in (1, 99_999, 1_500_000, 3_000_002, 9_999_989):
            assert os.pread(fd, 1, off) == b"\0", f"hole byte at {off}"
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 9_999_991, "size after close"


def test_extend_by_truncate_then_write_at_end(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 64 << 20)
        os.pwrite(fd, b"last", (64 << 20) - 4)
        assert os.fstat(fd).st_size == 64 << 20
        assert os.pread(fd, 8, 32 << 20) == b"\0" * 8
    finally:
        os.close(fd)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 4, (64 << 20) - 4) == b"last", "tail of a 64 MiB file after reopening"
        assert os.pread(fd, 8, 32 << 20) == b"\0" * 8, "middle after reopening"
    finally:
        os.close(fd)
