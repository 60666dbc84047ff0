"""Inode numbers and hard links."""

import os

from posix_suite.fsutil import read_file, write_file


def test_inode_stable_across_stat(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    inos = {os.stat(p).st_ino for _ in range(20)}
    assert len(inos) == 1, f"repeated stat gave several inode numbers: {inos}"


def test_inode_stable_across_reopen(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    first = os.stat(p).st_ino
    fd = os.open(p, os.O_RDWR)
    try:
        os.write(fd, b"changed")
        assert os.fstat(fd).st_ino == first, "fstat inode differs from stat inode"
    finally:
        os.close(fd)
    assert os.stat(p).st_ino == first, "inode changed after write and close"


def test_inode_stable_across_rename(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    write_file(a, b"x")
    ino = os.stat(a).st_ino
    os.rename(a, b)
    assert os.stat(b).st_ino == ino, "rename changed the file's inode number"


def test_inode_stable_across_rename_to_other_directory(workdir):
    os.mkdir(os.path.join(workdir, "d"))
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "d", "b")
    write_file(a, b"x")
    ino = os.stat(a).st_ino
    os.rename(a, b)
    assert os.stat(b).st_ino == ino, "moving to another directory changed the inode number"


def test_directory_inode_stable_across_rename(workdir):
    d1, d2 = os.path.join(workdir, "d1"), os.path.join(workdir, "d2")
    os.mkdir(d1)
    write_file(os.path.join(d1, "child"), b"c")
    dino = os.stat(d1).st_ino
    cino = os.stat(os.path.join(d1, "child")).st_ino
    os.rename(d1, d2)
    assert os.stat(d2).st_ino == dino, "renaming a directory changed its inode number"
    assert os.stat(os.path.join(d2, "child")).st_ino == cino, \
        "renaming a directory changed its child's inode number"


def test_directory_inode_stable_when_children_change(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    ino = os.stat(d).st_ino
    write_file(os.path.join(d, "f"), b"x")
    os.mkdir(os.path.join(d, "sub"))
    os.unlink(os.path.join(d, "f"))
    assert os.stat(d).st_ino == ino, "a directory's inode changed when its entries changed"


def test_distinct_files_distinct_inodes(workdir):
    inos = []
    for i in range(20):
        p = os.path.join(workdir, f"f{i}")
        write_file(p, b"%d" % i)
        inos.append(os.stat(p).st_ino)
    os.mkdir(os.path.join(workdir, "d"))
    inos.append(os.stat(os.path.join(workdir, "d")).st_ino)
    assert len(set(inos)) == len(inos), "two live files share an inode number"


def test_same_device_across_files(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    os.mkdir(os.path.join(workdir, "d"))
    devs = {os.stat(os.path.join(workdir, n)).st_dev for n in ("f", "d")}
    devs.add(os.stat(workdir).st_dev)
    assert len(devs) == 1, f"st_dev differs inside one filesystem: {devs}"


def test_hard_link(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    write_file(a, b"shared")
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_ino == sb.st_ino, "hard links must share the inode number"
    assert sa.st_nlink == 2, f"st_nlink after link is {sa.st_nlink}"
    fd = os.open(b, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"+more")
    finally:
        os.close(fd)
    assert read_file(a) == b"shared+more", "a write through one link shows through the other"


def test_hard_link_unlink_one(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    write_file(a, b"data")
    os.link(a, b)
    os.unlink(a)
    assert os.stat(b).st_nlink == 1, "nlink drops to 1 after removing one name"
    assert read_file(b) == b"data", "the other name keeps the content"
