"""truncate(2) and ftruncate(2): down, up (zero fill), seen at once through open descriptors."""

import errno
import os

from posix_suite.fsutil import data, diff_at, raises_errno, read_file, write_file


def test_truncate_down(workdir):
    p = os.path.join(workdir, "f")
    content = data(100_000, seed=1)
    write_file(p, content)
    os.truncate(p, 12_345)
    assert os.stat(p).st_size == 12_345, "stat size after truncate down"
    got = read_file(p)
    assert got == content[:12_345], f"truncate down keeps the prefix: {diff_at(got, content[:12_345])}"


def test_truncate_up_zero_fills(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"abc")
    os.truncate(p, 70_000)
    assert os.stat(p).st_size == 70_000, "stat size after truncate up"
    got = read_file(p)
    expect = b"abc" + b"\0" * (70_000 - 3)
    assert got == expect, f"truncate up must fill with zeros: {diff_at(got, expect)}"


def test_truncate_to_zero(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"some data")
    os.truncate(p, 0)
    assert os.stat(p).st_size == 0
    assert read_file(p) == b""


def test_ftruncate_down_seen_by_fstat(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, data(50_000, seed=2))
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, 1000)
        assert os.fstat(fd).st_size == 1000, "fstat right after ftruncate down"
        assert len(os.pread(fd, 100_000, 0)) == 1000, "read after ftruncate down"
        assert os.pread(fd, 10, 1000) == b"", "nothing past the new EOF"
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 1000, "size after close"


def test_ftruncate_up_seen_by_fstat(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"xyz")
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, 9000)
        assert os.fstat(fd).st_size == 9000, "fstat right after ftruncate up"
        tail = os.pread(fd, 9000, 3)
        assert tail == b"\0" * 8997, "bytes added by ftruncate up must be zeros"
    finally:
        os.close(fd)
    assert read_file(p) == b"xyz" + b"\0" * 8997, "content after close"


def test_ftruncate_new_file_then_write(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 100_000)
        os.pwrite(fd, b"mid", 50_000)
        assert os.fstat(fd).st_size == 100_000, "write inside the file must not change its size"
    finally:
        os.close(fd)
    got = read_file(p)
    expect = b"\0" * 50_000 + b"mid" + b"\0" * (100_000 - 50_003)
    assert got == expect, f"ftruncate then write: {diff_at(got, expect)}"


def test_truncate_down_then_up_does_not_resurrect(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"A" * 10_000)
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        os.ftruncate(fd, 10_000)
        got = os.pread(fd, 10_000, 0)
    finally:
        os.close(fd)
    expect = b"A" * 10 + b"\0" * 9990
    assert got == expect, f"old bytes came back after truncate down and up: {diff_at(got, expect)}"
    got = read_file(p)
    assert got == expect, f"after close: {diff_at(got, expect)}"


def test_truncate_by_name_seen_through_open_descriptor(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, data(20_000, seed=3))
    fd = os.open(p, os.O_RDONLY)
    try:
        os.truncate(p, 100)
        assert os.fstat(fd).st_size == 100, "an open descriptor sees truncate(path) at once"
        assert len(os.pread(fd, 20_000, 0)) == 100, "and reads only up to the new size"
    finally:
        os.close(fd)


def test_write_after_truncate_down_at_old_offset(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"B" * 8192)
    fd = os.open(p, os.O_RDWR)
    try:
        os.lseek(fd, 8192, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, b"Z")  # the offset is still 8192: a hole of 8192 zeros, then Z
        assert os.fstat(fd).st_size == 8193, "size after writing at the old offset"
    finally:
        os.close(fd)
    got = read_file(p)
    expect = b"\0" * 8192 + b"Z"
    assert got == expect, f"write at the old offset after truncate: {diff_at(got, expect)}"


def test_truncate_directory(workdir):
    with raises_errno(errno.EISDIR, what="truncate on a directory"):
        os.truncate(workdir, 0)


def test_truncate_negative(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"abc")
    with raises_errno(errno.EINVAL, what="truncate to a negative length"):
        os.truncate(p, -1)
    assert read_file(p) == b"abc"


def test_ftruncate_readonly_descriptor(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        with raises_errno(errno.EINVAL, errno.EBADF, what="ftruncate on an O_RDONLY descriptor"):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    assert read_file(p) == b"abc"


def test_truncate_missing(workdir):
    with raises_errno(errno.ENOENT, what="truncate of a missing file"):
        os.truncate(os.path.join(workdir, "missing"), 0)
