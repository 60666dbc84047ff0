"""unlink(2) and rename(2), including on open files and the error cases."""

import errno
import os

from posix_suite.fsutil import data, diff_at, raises_errno, read_all, read_file, write_file


def test_unlink_removes_name(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    os.unlink(p)
    assert not os.path.lexists(p), "file still exists after unlink"
    assert os.listdir(workdir) == [], "unlinked file still listed"


def test_unlink_while_open_keeps_reading(workdir):
    p = os.path.join(workdir, "f")
    content = data(200_000, seed=1)
    write_file(p, content)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        assert not os.path.lexists(p), "name still present after unlink"
        got = read_all(fd)
        assert got == content, f"open descriptor after unlink: {diff_at(got, content)}"
    finally:
        os.close(fd)


def test_unlink_while_open_keeps_writing(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"before-")
        os.unlink(p)
        os.write(fd, b"after")
        assert os.fstat(fd).st_size == 12, "fstat of the unlinked open file"
        assert os.pread(fd, 100, 0) == b"before-after", "read back through the unlinked descriptor"
    finally:
        os.close(fd)
    assert not os.path.lexists(p), "writing to an unlinked file must not bring its name back"
    assert os.listdir(workdir) == [], f"directory not empty after close: {os.listdir(workdir)}"


def test_unlinked_open_file_has_nlink_zero(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        assert os.fstat(fd).st_nlink == 0, "an open file with no names left has st_nlink 0"
    finally:
        os.close(fd)


def test_new_file_with_name_of_unlinked_open_file(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"old content")
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        write_file(p, b"new")
        assert read_file(p) == b"new", "new file under the old name"
        assert os.pread(fd, 100, 0) == b"old content", "old descriptor still reads the old file"
    finally:
        os.close(fd)
    assert read_file(p) == b"new", "closing the old descriptor must not touch the new file"


def test_unlink_missing(workdir):
    with raises_errno(errno.ENOENT, what="unlink of a missing name"):
        os.unlink(os.path.join(workdir, "missing"))


def test_unlink_directory(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    with raises_errno(errno.EISDIR, errno.EPERM, what="unlink of a directory"):
        os.unlink(d)
    assert os.path.isdir(d), "failed unlink removed the directory"


def test_rename_file(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    write_file(a, b"content")
    os.rename(a, b)
    assert not os.path.lexists(a), "old name still exists after rename"
    assert read_file(b) == b"content", "content under the new name"
    assert sorted(os.listdir(workdir)) == ["b"]


def test_rename_across_directories(workdir):
    os.mkdir(os.path.join(workdir, "d1"))
    os.mkdir(os.path.join(workdir, "d2"))
    a = os.path.join(workdir, "d1", "f")
    b = os.path.join(workdir, "d2", "g")
    write_file(a, b"moved")
    os.rename(a, b)
    assert os.listdir(os.path.join(workdir, "d1")) == [], "source directory still lists the file"
    assert os.listdir(os.path.join(workdir, "d2")) == ["g"]
    assert read_file(b) == b"moved"


def test_rename_while_open_keeps_descriptor(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    write_file(a, b"0123456789")
    fd = os.open(a, os.O_RDWR)
    try:
        os.rename(a, b)
        assert os.pread(fd, 10, 0) == b"0123456789", "read through the descriptor after rename"
        os.pwrite(fd, b"XY", 10)
        assert os.fstat(fd).st_size == 12, "fstat size after writing to the renamed file"
    finally:
        os.close(fd)
    assert read_file(b) == b"0123456789XY", "writes after rename must land in the renamed file"
    assert not os.path.lexists(a), "old name came back"


def test_rename_over_existing_file(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    write_file(a, b"source")
    write_file(b, b"target, longer than the source")
    ino = os.stat(a).st_ino
    os.rename(a, b)
    assert read_file(b) == b"source", "rename over a file must replace its content"
    assert os.stat(b).st_ino == ino, "the replaced name must now refer to the source inode"
    assert not os.path.lexists(a)
    assert os.listdir(workdir) == ["b"]


def test_rename_over_open_file(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    write_file(a, b"new")
    write_file(b, b"old target")
    fd = os.open(b, os.O_RDONLY)
    try:
        os.rename(a, b)
        assert os.pread(fd, 100, 0) == b"old target", \
            "a descriptor open on the replaced file keeps reading the old content"
    finally:
        os.close(fd)
    assert read_file(b) == b"new"


def test_rename_file_over_empty_directory(workdir):
    a, d = os.path.join(workdir, "a"), os.path.join(workdir, "d")
    write_file(a, b"x")
    os.mkdir(d)
    with raises_errno(errno.EISDIR, what="rename a file over a directory"):
        os.rename(a, d)
    assert os.path.isfile(a) and os.path.isdir(d), "failed rename changed something"


def test_rename_directory_over_file(workdir):
    d, f = os.path.join(workdir, "d"), os.path.join(workdir, "f")
    os.mkdir(d)
    write_file(f, b"x")
    with raises_errno(errno.ENOTDIR, what="rename a directory over a file"):
        os.rename(d, f)
    assert os.path.isdir(d) and os.path.isfile(f), "failed rename changed something"


def test_rename_directory_over_empty_directory(workdir):
    d1, d2 = os.path.join(workdir, "d1"), os.path.join(workdir, "d2")
    os.mkdir(d1)
    os.mkdir(d2)
    write_file(os.path.join(d1, "child"), b"c")
    os.rename(d1, d2)
    assert not os.path.lexists(d1)
    assert os.listdir(d2) == ["child"], "rename over an empty directory replaces it"
    assert read_file(os.path.join(d2, "child")) == b"c"


def test_rename_directory_over_nonempty_directory(workdir):
    d1, d2 = os.path.join(workdir, "d1"), os.path.join(workdir, "d2")
    os.mkdir(d1)
    os.mkdir(d2)
    write_file(os.path.join(d2, "keep"), b"k")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST, what="rename over a non-empty directory"):
        os.rename(d1, d2)
    assert os.listdir(d2) == ["keep"] and os.path.isdir(d1), "failed rename changed something"


def test_rename_directory_into_own_subtree(workdir):
    d = os.path.join(workdir, "d")
    os.makedirs(os.path.join(d, "sub"))
    with raises_errno(errno.EINVAL, what="rename a directory into its own subdirectory"):
        os.rename(d, os.path.join(d, "sub", "d"))
    assert os.listdir(d) == ["sub"], "failed rename changed the tree"


def test_rename_directory_with_contents(workdir):
    src = os.path.join(workdir, "src")
    os.makedirs(os.path.join(src, "a", "b"))
    write_file(os.path.join(src, "top"), b"1")
    write_file(os.path.join(src, "a", "b", "deep"), b"2")
    dst = os.path.join(workdir, "dst")
    os.rename(src, dst)
    assert not os.path.lexists(src), "old directory name still exists"
    assert read_file(os.path.join(dst, "top")) == b"1"
    assert read_file(os.path.join(dst, "a", "b", "deep")) == b"2", "nested file after rename"
    assert sorted(os.listdir(dst)) == ["a", "top"]
    assert os.listdir(workdir) == ["dst"]


def test_rename_directory_while_file_inside_open(workdir):
    src = os.path.join(workdir, "src")
    os.mkdir(src)
    write_file(os.path.join(src, "f"), b"abc")
    fd = os.open(os.path.join(src, "f"), os.O_RDWR)
    try:
        os.rename(src, os.path.join(workdir, "dst"))
        os.pwrite(fd, b"d", 3)
        assert os.pread(fd, 10, 0) == b"abcd"
    finally:
        os.close(fd)
    assert read_file(os.path.join(workdir, "dst", "f")) == b"abcd", \
        "write through a descriptor opened before its directory was renamed"


def test_rename_to_same_name(workdir):
    a = os.path.join(workdir, "a")
    write_file(a, b"same")
    os.rename(a, a)
    assert read_file(a) == b"same", "rename onto itself must be a no-op"


def test_rename_missing_source(workdir):
    with raises_errno(errno.ENOENT, what="rename of a missing file"):
        os.rename(os.path.join(workdir, "missing"), os.path.join(workdir, "b"))


def test_rename_into_missing_directory(workdir):
    a = os.path.join(workdir, "a")
    write_file(a, b"x")
    with raises_errno(errno.ENOENT, what="rename into a missing directory"):
        os.rename(a, os.path.join(workdir, "nodir", "a"))
    assert read_file(a) == b"x"


def test_rename_hard_links_to_same_file_is_noop(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    write_file(a, b"x")
    os.link(a, b)
    os.rename(a, b)
    # POSIX: if old and new are links to the same file, rename does nothing.
    assert os.path.exists(a) and os.path.exists(b), "rename between hard links must do nothing"
