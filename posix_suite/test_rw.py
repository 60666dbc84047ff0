"""read, write, pread, pwrite and lseek (including SEEK_DATA / SEEK_HOLE)."""

import errno
import os

import pytest

from posix_suite.fsutil import (data, diff_at, pwrite_all, raises_errno, read_all, read_file,
                                write_file)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 131072 + 7, (1 << 20) + 13])
def test_write_then_read_back(workdir, size):
    p = os.path.join(workdir, "f")
    content = data(size, seed=size)
    write_file(p, content)
    assert os.stat(p).st_size == size, "stat size after writing"
    got = read_file(p)
    assert got == content, f"read back after close: {diff_at(got, content)}"


def test_large_write_in_chunks(workdir):
    p = os.path.join(workdir, "f")
    chunk = 64 * 1024 + 3  # not aligned to pages, so writes straddle page boundaries
    content = data(chunk * 64, seed=7)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(0, len(content), chunk):
            assert os.write(fd, content[i:i + chunk]) == len(content[i:i + chunk])
    finally:
        os.close(fd)
    got = read_file(p)
    assert got == content, f"chunked write read back: {diff_at(got, content)}"


def test_read_in_odd_chunks(workdir):
    p = os.path.join(workdir, "f")
    content = data(300_000, seed=3)
    write_file(p, content)
    fd = os.open(p, os.O_RDONLY)
    try:
        parts = []
        while True:
            b = os.read(fd, 7919)
            if not b:
                break
            parts.append(b)
    finally:
        os.close(fd)
    got = b"".join(parts)
    assert got == content, f"sequential reads of 7919 bytes: {diff_at(got, content)}"


def test_pread_pwrite_leave_offset_alone(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"0123456789")
    fd = os.open(p, os.O_RDWR)
    try:
        os.lseek(fd, 3, os.SEEK_SET)
        assert os.pread(fd, 4, 5) == b"5678", "pread at offset 5"
        assert os.pwrite(fd, b"AB", 1) == 2
        assert os.lseek(fd, 0, os.SEEK_CUR) == 3, "pread/pwrite must not move the file offset"
        assert os.read(fd, 2) == b"34", "read continues at the file offset"
        assert os.pread(fd, 10, 0) == b"0AB3456789", "pwrite result through the same descriptor"
    finally:
        os.close(fd)
    assert read_file(p) == b"0AB3456789", "pwrite result after close"


def test_overwrite_middle_keeps_rest(workdir):
    p = os.path.join(workdir, "f")
    content = bytearray(data(200_000, seed=1))
    write_file(p, bytes(content))
    patch = data(5000, seed=2)
    fd = os.open(p, os.O_WRONLY)
    try:
        pwrite_all(fd, patch, 100_000)
    finally:
        os.close(fd)
    content[100_000:105_000] = patch
    got = read_file(p)
    assert got == bytes(content), f"overwrite in the middle: {diff_at(got, bytes(content))}"
    assert os.stat(p).st_size == 200_000, "overwrite in the middle must not change the size"


def test_write_past_eof_fills_zeros(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"abc")
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"xyz", 10_000)
    finally:
        os.close(fd)
    got = read_file(p)
    expect = b"abc" + b"\0" * (10_000 - 3) + b"xyz"
    assert got == expect, f"gap after a write past EOF must read as zeros: {diff_at(got, expect)}"


def test_read_at_and_past_eof(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 3) == b"", "read at EOF returns no bytes"
        assert os.pread(fd, 10, 1000) == b"", "read past EOF returns no bytes"
        assert os.pread(fd, 10, 1) == b"bc", "short read at the end"
    finally:
        os.close(fd)


def test_lseek_whence(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"0123456789")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.lseek(fd, -3, os.SEEK_END) == 7
        assert os.read(fd, 10) == b"789"
        assert os.lseek(fd, -5, os.SEEK_CUR) == 5
        assert os.lseek(fd, 100, os.SEEK_SET) == 100, "seeking past EOF is allowed"
        assert os.read(fd, 1) == b""
        with raises_errno(errno.EINVAL, what="lseek to a negative offset"):
            os.lseek(fd, -1, os.SEEK_SET)
    finally:
        os.close(fd)


def test_size_visible_through_fstat_while_writing(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * 5000)
        assert os.fstat(fd).st_size == 5000, "fstat during writing must show the written size"
        assert os.stat(p).st_size == 5000, "stat by name during writing must show the written size"
    finally:
        os.close(fd)


def test_writes_visible_to_other_descriptor_before_close(workdir):
    p = os.path.join(workdir, "f")
    wfd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(wfd, b"first")
        rfd = os.open(p, os.O_RDONLY)
        try:
            assert os.read(rfd, 100) == b"first", \
                "a second descriptor must read data written (not yet closed) by the first"
            os.write(wfd, b"-second")
            assert os.pread(rfd, 100, 0) == b"first-second", \
                "a later write must be visible to an already open reader"
        finally:
            os.close(rfd)
    finally:
        os.close(wfd)


def test_writes_through_one_descriptor_read_through_another_rdwr(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, data(10_000, seed=5))
    a = os.open(p, os.O_RDWR)
    b = os.open(p, os.O_RDWR)
    try:
        os.pwrite(a, b"AAAA", 100)
        os.pwrite(b, b"BBBB", 200)
        assert os.pread(b, 4, 100) == b"AAAA", "b sees a's write"
        assert os.pread(a, 4, 200) == b"BBBB", "a sees b's write"
    finally:
        os.close(a)
        os.close(b)
    got = read_file(p)
    assert got[100:104] == b"AAAA" and got[200:204] == b"BBBB", "both writes kept after close"


def test_seek_data_hole_dense_file(workdir):
    """On a file without holes every implementation (even the generic one) agrees."""
    p = os.path.join(workdir, "f")
    write_file(p, data(10_000, seed=9))
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0, "SEEK_DATA at 0 of a written file"
        assert os.lseek(fd, 5000, os.SEEK_DATA) == 5000, "SEEK_DATA inside data returns the offset"
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 10_000, \
            "SEEK_HOLE in a file without holes is its size (the implicit hole at EOF)"
        with raises_errno(errno.ENXIO, what="SEEK_DATA at EOF"):
            os.lseek(fd, 10_000, os.SEEK_DATA)
        with raises_errno(errno.ENXIO, what="SEEK_HOLE past EOF"):
            os.lseek(fd, 20_000, os.SEEK_HOLE)
    finally:
        os.close(fd)


def test_seek_data_hole_consistent_on_sparse_file(workdir):
    """A filesystem may report holes or not; whatever it reports must read as zeros."""
    p = os.path.join(workdir, "f")
    size = 4 << 20
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"head" * 1024, 0)
        os.pwrite(fd, b"tail" * 1024, size - 4096)
        hole = os.lseek(fd, 0, os.SEEK_HOLE)
        assert 4096 <= hole <= size, f"SEEK_HOLE from 0 returned {hole}, outside [4096, {size}]"
        if hole < size:
            nxt = os.lseek(fd, hole, os.SEEK_DATA)
            assert hole < nxt <= size - 4096, f"SEEK_DATA after the hole at {hole} gave {nxt}"
            zeros = os.pread(fd, min(nxt - hole, 65536), hole)
            assert zeros == b"\0" * len(zeros), "a region reported as a hole must read as zeros"
        assert os.pread(fd, 4, size - 4) == b"tail", "data after the hole"
    finally:
        os.close(fd)


def test_content_persists_after_reopen(workdir):
    p = os.path.join(workdir, "f")
    content = data(70_000, seed=11)
    write_file(p, content)
    fd = os.open(p, os.O_RDONLY)
    try:
        got = read_all(fd)
    finally:
        os.close(fd)
    assert got == content, f"first reopen: {diff_at(got, content)}"
    got = read_file(p)
    assert got == content, f"second reopen: {diff_at(got, content)}"
