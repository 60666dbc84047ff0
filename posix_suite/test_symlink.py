"""Symbolic links: readlink, lstat vs stat, dangling links, loops."""

import errno
import os
import stat

from posix_suite.fsutil import raises_errno, read_file, write_file


def test_symlink_readlink(workdir):
    link = os.path.join(workdir, "l")
    os.symlink("some/target", link)
    assert os.readlink(link) == "some/target", "readlink must return the exact target"


def test_lstat_vs_stat(workdir):
    write_file(os.path.join(workdir, "f"), b"12345")
    link = os.path.join(workdir, "l")
    os.symlink("f", link)
    lst = os.lstat(link)
    st = os.stat(link)
    assert stat.S_ISLNK(lst.st_mode), f"lstat of a symlink has mode {lst.st_mode:o}"
    assert stat.S_ISREG(st.st_mode), f"stat through a symlink has mode {st.st_mode:o}"
    assert st.st_size == 5, "stat follows the link to the file's size"
    assert st.st_ino == os.stat(os.path.join(workdir, "f")).st_ino, "stat follows to the target inode"
    assert lst.st_ino != st.st_ino, "the link has its own inode"


def test_symlink_size_is_target_length(workdir):
    link = os.path.join(workdir, "l")
    os.symlink("abcdefghij/klm", link)
    assert os.lstat(link).st_size == 14, "lstat st_size of a symlink is the length of its target"


def test_read_through_symlink(workdir):
    write_file(os.path.join(workdir, "f"), b"via link")
    os.symlink("f", os.path.join(workdir, "l"))
    assert read_file(os.path.join(workdir, "l")) == b"via link"


def test_write_through_symlink(workdir):
    write_file(os.path.join(workdir, "f"), b"old")
    os.symlink("f", os.path.join(workdir, "l"))
    write_file(os.path.join(workdir, "l"), b"new")
    assert read_file(os.path.join(workdir, "f")) == b"new", "writing via the link changes the target"
    assert os.path.islink(os.path.join(workdir, "l")), "the link is still a link"


def test_dangling_symlink(workdir):
    link = os.path.join(workdir, "l")
    os.symlink("does-not-exist", link)
    assert stat.S_ISLNK(os.lstat(link).st_mode), "lstat of a dangling link"
    with raises_errno(errno.ENOENT, what="stat through a dangling link"):
        os.stat(link)
    assert os.readlink(link) == "does-not-exist"
    assert os.listdir(workdir) == ["l"], "a dangling link is listed"


def test_symlink_loop(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    os.symlink("b", a)
    os.symlink("a", b)
    with raises_errno(errno.ELOOP, what="stat of a two-link loop"):
        os.stat(a)
    with raises_errno(errno.ELOOP, what="open of a two-link loop"):
        os.open(a, os.O_RDONLY)


def test_symlink_self_loop(workdir):
    s = os.path.join(workdir, "s")
    os.symlink("s", s)
    with raises_errno(errno.ELOOP, what="stat of a link to itself"):
        os.stat(s)


def test_symlink_to_directory(workdir):
    os.mkdir(os.path.join(workdir, "d"))
    write_file(os.path.join(workdir, "d", "inner"), b"i")
    link = os.path.join(workdir, "dl")
    os.symlink("d", link)
    assert os.listdir(link) == ["inner"], "listing through a link to a directory"
    assert read_file(os.path.join(link, "inner")) == b"i", "path traversal through a link"
    assert stat.S_ISLNK(os.lstat(link).st_mode) and os.path.isdir(link)


def test_relative_symlink_with_dotdot(workdir):
    os.makedirs(os.path.join(workdir, "a", "b"))
    write_file(os.path.join(workdir, "a", "target"), b"up")
    link = os.path.join(workdir, "a", "b", "l")
    os.symlink("../target", link)
    assert read_file(link) == b"up", "a relative target is resolved from the link's directory"


def test_absolute_symlink(workdir):
    write_file(os.path.join(workdir, "f"), b"abs")
    link = os.path.join(workdir, "l")
    os.symlink(os.path.join(workdir, "f"), link)
    assert read_file(link) == b"abs"


def test_symlink_over_existing_name(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    with raises_errno(errno.EEXIST, what="symlink over an existing file"):
        os.symlink("t", os.path.join(workdir, "f"))
    assert read_file(os.path.join(workdir, "f")) == b"x"


def test_readlink_on_regular_file(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    with raises_errno(errno.EINVAL, what="readlink on a regular file"):
        os.readlink(os.path.join(workdir, "f"))


def test_unlink_symlink_keeps_target(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    os.symlink("f", os.path.join(workdir, "l"))
    os.unlink(os.path.join(workdir, "l"))
    assert os.listdir(workdir) == ["f"], "unlink of a link must remove only the link"


def test_rename_symlink(workdir):
    os.symlink("target/path", os.path.join(workdir, "l"))
    os.rename(os.path.join(workdir, "l"), os.path.join(workdir, "m"))
    assert os.readlink(os.path.join(workdir, "m")) == "target/path", "target after rename"
    assert not os.path.lexists(os.path.join(workdir, "l"))


def test_symlink_target_bytes_preserved(workdir):
    target = "  spaced name\twith tab and ünïcode  "
    link = os.path.join(workdir, "l")
    os.symlink(target, link)
    assert os.readlink(link) == target, "readlink must return the target byte for byte"


def test_long_symlink_target(workdir):
    target = "/".join(["x" * 200] * 20)  # 4019 bytes, below PATH_MAX
    link = os.path.join(workdir, "l")
    os.symlink(target, link)
    assert os.readlink(link) == target, "a 4019-byte target must round-trip"
    assert os.lstat(link).st_size == len(target)


def test_nofollow_stat_of_symlink_in_listing(workdir):
    os.symlink("nowhere", os.path.join(workdir, "l"))
    with os.scandir(workdir) as it:
        entries = list(it)
    assert len(entries) == 1 and entries[0].is_symlink(), "directory entry type of a symlink"
