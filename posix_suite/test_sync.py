"""fsync(2) and fdatasync(2): they succeed, and the data is there afterwards."""

import os

from posix_suite.fsutil import data, diff_at, read_file, write_file


def test_fsync_after_write(workdir):
    p = os.path.join(workdir, "f")
    content = data(300_000, seed=1)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, content)
        os.fsync(fd)
        got = read_file(p)
        assert got == content, f"fresh open after fsync, writer still open: {diff_at(got, content)}"
    finally:
        os.close(fd)
    assert read_file(p) == content


def test_fdatasync_after_write(workdir):
    p = os.path.join(workdir, "f")
    content = data(50_000, seed=2)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, content)
        os.fdatasync(fd)
        assert os.stat(p).st_size == 50_000, "size after fdatasync"
    finally:
        os.close(fd)
    got = read_file(p)
    assert got == content, f"after fdatasync: {diff_at(got, content)}"


def test_fsync_repeated_with_writes_between(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(5):
            os.write(fd, b"line %d\n" % i)
            os.fsync(fd)
    finally:
        os.close(fd)
    assert read_file(p) == b"".join(b"line %d\n" % i for i in range(5)), \
        "data written between several fsyncs"


def test_fsync_then_overwrite(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"A" * 10_000)
        os.fsync(fd)
        os.pwrite(fd, b"B" * 10, 5000)
        os.fsync(fd)
    finally:
        os.close(fd)
    got = read_file(p)
    expect = b"A" * 5000 + b"B" * 10 + b"A" * 4990
    assert got == expect, f"overwrite after fsync: {diff_at(got, expect)}"


def test_fsync_readonly_descriptor(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)  # allowed on Linux on any descriptor
        assert os.read(fd, 1) == b"x"
    finally:
        os.close(fd)


def test_fsync_directory(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert os.listdir(workdir) == ["f"]


def test_fsync_empty_new_file(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.fsync(fd)
        assert os.path.exists(p)
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 0


def test_fsync_unlinked_open_file(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"orphan")
        os.unlink(p)
        os.fsync(fd)
        assert os.pread(fd, 10, 0) == b"orphan"
    finally:
        os.close(fd)
    assert not os.path.lexists(p), "fsync of an unlinked file must not bring its name back"
