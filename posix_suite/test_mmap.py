"""mmap: shared reads and writes, msync, and what a fresh open sees afterwards.

A page fault the filesystem cannot serve kills the faulting process with
SIGBUS, so every access to a mapping happens in a forked child (same uid):
the test then fails with "killed by SIGBUS" instead of taking the whole run
down.  Children return bytes as hex strings.
"""

import mmap
import os

from posix_suite.fsutil import data, diff_at, read_file, run_as, write_file


def in_child(fn):
    """Run ``fn`` in a forked child of the same user; return its result."""
    return run_as(fn, uid=None).expect_ok("mapped access in a child process")


def test_mmap_read(workdir):
    p = os.path.join(workdir, "f")
    content = data(100_000, seed=1)
    write_file(p, content)

    def child():
        fd = os.open(p, os.O_RDONLY)
        try:
            with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                return [len(m), m[:].hex()]
        finally:
            os.close(fd)

    length, got = in_child(child)
    assert length == 100_000, f"mapping length {length}"
    got = bytes.fromhex(got)
    assert got == content, f"mmap read: {diff_at(got, content)}"


def test_mmap_shared_write_msync_reopen(workdir):
    p = os.path.join(workdir, "f")
    content = bytearray(data(3 * 4096 + 100, seed=2))
    write_file(p, bytes(content))

    def child():
        fd = os.open(p, os.O_RDWR)
        try:
            with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                m[10:20] = b"0123456789"
                m[4096 * 2 + 5:4096 * 2 + 9] = b"PAGE"
                m[-4:] = b"TAIL"
                m.flush()  # msync(MS_SYNC)
        finally:
            os.close(fd)
        return True

    in_child(child)
    content[10:20] = b"0123456789"
    content[4096 * 2 + 5:4096 * 2 + 9] = b"PAGE"
    content[-4:] = b"TAIL"
    got = read_file(p)
    assert got == bytes(content), f"fresh open after msync: {diff_at(got, bytes(content))}"
    assert os.stat(p).st_size == len(content), "a mapped write must not change the size"


def test_mmap_write_visible_to_read_before_msync(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"a" * 8192)

    def child():
        fd = os.open(p, os.O_RDWR)
        try:
            with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                m[100:105] = b"HELLO"
                rfd = os.open(p, os.O_RDONLY)
                try:
                    seen = os.pread(rfd, 5, 100)
                finally:
                    os.close(rfd)
                m.flush()
                return seen.hex()
        finally:
            os.close(fd)

    seen = bytes.fromhex(in_child(child))
    assert seen == b"HELLO", f"read() must see a MAP_SHARED store at once, saw {seen!r}"


def test_write_visible_in_existing_mapping(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"b" * 8192)

    def child():
        fd = os.open(p, os.O_RDWR)
        try:
            with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                first = m[0:1]
                os.pwrite(fd, b"WRITTEN", 4000)
                return [first.hex(), m[4000:4007].hex()]
        finally:
            os.close(fd)

    first, later = (bytes.fromhex(x) for x in in_child(child))
    assert first == b"b", "mapping shows the file"
    assert later == b"WRITTEN", f"a mapping must see a later write() to the file, saw {later!r}"


def test_mmap_extend_with_ftruncate(workdir):
    p = os.path.join(workdir, "f")

    def child():
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 10_000)
            with mmap.mmap(fd, 10_000, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                m[9_990:10_000] = b"9876543210"
                head = m[0:10]
                m.flush()
                return head.hex()
        finally:
            os.close(fd)

    assert bytes.fromhex(in_child(child)) == b"\0" * 10, "new pages of a mapping read as zeros"
    got = read_file(p)
    expect = b"\0" * 9_990 + b"9876543210"
    assert got == expect, f"mapped write into a file grown by ftruncate: {diff_at(got, expect)}"


def test_mmap_private_write_not_stored(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"original" * 1000)

    def child():
        fd = os.open(p, os.O_RDONLY)
        try:
            with mmap.mmap(fd, 0, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                m[0:8] = b"PRIVATE!"
                return m[0:8].hex()
        finally:
            os.close(fd)

    assert bytes.fromhex(in_child(child)) == b"PRIVATE!", "a private mapping sees its own store"
    assert read_file(p)[:8] == b"original", "a MAP_PRIVATE write must not reach the file"


def test_mmap_write_after_unlink_then_read_through_fd(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"c" * 4096)

    def child():
        fd = os.open(p, os.O_RDWR)
        try:
            with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                os.unlink(p)
                m[0:4] = b"GONE"
                m.flush()
            return os.pread(fd, 4, 0).hex()
        finally:
            os.close(fd)

    got = bytes.fromhex(in_child(child))
    assert got == b"GONE", f"mapped write to an unlinked file read via its fd: {got!r}"
    assert not os.path.lexists(p)
