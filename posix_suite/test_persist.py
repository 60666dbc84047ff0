"""Persistence without remounting: what was written, closed and reopened stays."""

import os
import stat

from posix_suite.fsutil import data, diff_at, read_file, write_file


def test_write_close_reopen_read(workdir):
    p = os.path.join(workdir, "f")
    content = data(123_457, seed=1)
    write_file(p, content)
    got = read_file(p)
    assert got == content, f"after close and reopen: {diff_at(got, content)}"


def test_overwrite_shorter_leaves_no_tail(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"long original content")
    write_file(p, b"short")
    assert read_file(p) == b"short", "O_TRUNC rewrite with shorter data left an old tail"


def test_append_in_second_session(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"first;")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"second;")
    finally:
        os.close(fd)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"third")
    finally:
        os.close(fd)
    assert read_file(p) == b"first;second;third", "appends across three open/close sessions"


def test_patch_in_second_session(workdir):
    p = os.path.join(workdir, "f")
    content = bytearray(data(2 << 20, seed=2))
    write_file(p, bytes(content))
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, b"PATCH", 1 << 20)
    finally:
        os.close(fd)
    content[1 << 20:(1 << 20) + 5] = b"PATCH"
    got = read_file(p)
    assert got == bytes(content), f"small patch in a large file: {diff_at(got, bytes(content))}"


def test_metadata_persists(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    os.chmod(p, 0o751)
    os.utime(p, (1_000_000_000, 1_000_000_000))
    fd = os.open(p, os.O_RDONLY)
    os.close(fd)
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o751, f"mode after reopen {stat.S_IMODE(st.st_mode):o}"
    assert st.st_mtime == 1_000_000_000, f"mtime after reopen {st.st_mtime}"


def test_empty_file_persists(workdir):
    p = os.path.join(workdir, "empty")
    write_file(p, b"")
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0, "an empty file stays an empty regular file"
    assert os.listdir(workdir) == ["empty"]


def test_tree_persists(workdir):
    os.makedirs(os.path.join(workdir, "a", "b"))
    os.mkdir(os.path.join(workdir, "empty"))
    write_file(os.path.join(workdir, "a", "b", "f"), b"1")
    write_file(os.path.join(workdir, "a", "g"), b"2")
    found = {}
    for root, dirs, files in os.walk(workdir):
        rel = os.path.relpath(root, workdir)
        found[rel] = (sorted(dirs), sorted(files))
    assert found == {
        ".": (["a", "empty"], []),
        "a": (["b"], ["g"]),
        os.path.join("a", "b"): ([], ["f"]),
        "empty": ([], []),
    }, f"tree walk: {found}"


def test_rewrite_many_times(workdir):
    p = os.path.join(workdir, "f")
    for i in range(10):
        write_file(p, b"version %d" % i)
        assert read_file(p) == b"version %d" % i, f"read after rewrite {i}"
