"""open(2) flags: O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_DIRECTORY, O_NOFOLLOW."""

import errno
import os
import stat

from posix_suite.fsutil import raises_errno, read_file, write_file


def test_creat_rdonly_creates_file(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDONLY, 0o644)
    try:
        assert os.read(fd, 10) == b"", "a new file opened O_CREAT|O_RDONLY must read as empty"
    finally:
        os.close(fd)
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode), f"O_CREAT|O_RDONLY must leave a regular file, mode {st.st_mode:o}"
    assert st.st_size == 0, f"new file has size {st.st_size}"
    assert "f" in os.listdir(workdir), "file created with O_CREAT|O_RDONLY missing from listing"


def test_creat_existing_keeps_content(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"hello")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    os.close(fd)
    assert read_file(p) == b"hello", "O_CREAT without O_TRUNC must not change an existing file"


def test_excl_on_existing_file(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    with raises_errno(errno.EEXIST, what="open(O_CREAT|O_EXCL) on an existing file"):
        os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    assert read_file(p) == b"x", "failed O_EXCL open changed the file"


def test_excl_on_new_file(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        assert os.write(fd, b"abc") == 3
    finally:
        os.close(fd)
    assert read_file(p) == b"abc"


def test_excl_on_directory(workdir):
    with raises_errno(errno.EEXIST, what="open(O_CREAT|O_EXCL) on an existing directory"):
        os.open(workdir, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o644)


def test_excl_on_dangling_symlink(workdir):
    link = os.path.join(workdir, "l")
    os.symlink("nowhere", link)
    with raises_errno(errno.EEXIST, what="O_CREAT|O_EXCL on a dangling symlink"):
        os.open(link, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    assert not os.path.lexists(os.path.join(workdir, "nowhere")), \
        "O_CREAT|O_EXCL followed a symlink and created its target"


def test_trunc_existing(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"0123456789")
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0, "fstat after O_TRUNC must show size 0"
        os.write(fd, b"ab")
    finally:
        os.close(fd)
    assert read_file(p) == b"ab", "O_TRUNC left old bytes behind"


def test_trunc_seen_by_other_descriptor(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"0123456789")
    rfd = os.open(p, os.O_RDONLY)
    try:
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
        assert os.fstat(rfd).st_size == 0, "an open descriptor must see the size O_TRUNC set"
        assert os.pread(rfd, 10, 0) == b"", "read after O_TRUNC by another open returned old data"
    finally:
        os.close(rfd)


def test_append_writes_at_end(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"start-")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"one-")
        os.lseek(fd, 2, os.SEEK_SET)
        os.write(fd, b"two")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 13, "offset after an O_APPEND write must be the end"
    finally:
        os.close(fd)
    assert read_file(p) == b"start-one-two", "O_APPEND writes must go to the end of the file"


def test_append_two_descriptors_interleave(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"")
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(5):
            os.write(a, b"A%d" % i)
            os.write(b, b"B%d" % i)
    finally:
        os.close(a)
        os.close(b)
    assert read_file(p) == b"A0B0A1B1A2B2A3B3A4B4", \
        "appends through two descriptors must not overwrite each other"


def test_directory_flag_on_file(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    with raises_errno(errno.ENOTDIR, what="open(O_DIRECTORY) on a regular file"):
        os.open(p, os.O_RDONLY | os.O_DIRECTORY)


def test_directory_flag_on_directory(workdir):
    os.mkdir(os.path.join(workdir, "d"))
    fd = os.open(os.path.join(workdir, "d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert stat.S_ISDIR(os.fstat(fd).st_mode), "O_DIRECTORY descriptor is not a directory"
    finally:
        os.close(fd)


def test_nofollow_on_symlink(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    os.symlink("f", os.path.join(workdir, "l"))
    with raises_errno(errno.ELOOP, what="open(O_NOFOLLOW) on a symlink"):
        os.open(os.path.join(workdir, "l"), os.O_RDONLY | os.O_NOFOLLOW)


def test_nofollow_on_regular_file(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        assert os.read(fd, 1) == b"x"
    finally:
        os.close(fd)


def test_open_missing_without_creat(workdir):
    with raises_errno(errno.ENOENT, what="open of a missing file without O_CREAT"):
        os.open(os.path.join(workdir, "missing"), os.O_RDONLY)
    assert not os.path.lexists(os.path.join(workdir, "missing"))


def test_open_directory_for_writing(workdir):
    with raises_errno(errno.EISDIR, what="open(O_WRONLY) on a directory"):
        os.open(workdir, os.O_WRONLY)


def test_creat_under_a_file(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    with raises_errno(errno.ENOTDIR, what="O_CREAT of f/child where f is a file"):
        os.open(os.path.join(p, "child"), os.O_CREAT | os.O_WRONLY, 0o644)


def test_creat_in_missing_directory(workdir):
    with raises_errno(errno.ENOENT, what="O_CREAT in a missing directory"):
        os.open(os.path.join(workdir, "nodir", "f"), os.O_CREAT | os.O_WRONLY, 0o644)


def test_access_mode_enforced_on_descriptor(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"abc")
    rfd = os.open(p, os.O_RDONLY)
    wfd = os.open(p, os.O_WRONLY)
    try:
        with raises_errno(errno.EBADF, what="write on an O_RDONLY descriptor"):
            os.write(rfd, b"x")
        with raises_errno(errno.EBADF, what="read on an O_WRONLY descriptor"):
            os.read(wfd, 1)
    finally:
        os.close(rfd)
        os.close(wfd)
    assert read_file(p) == b"abc"


def test_rdwr_read_back_through_same_descriptor(workdir):
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"hello world")
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 100) == b"hello world", "O_RDWR descriptor must read what it wrote"
    finally:
        os.close(fd)


def test_creat_through_dangling_symlink_creates_target(workdir):
    os.symlink("target", os.path.join(workdir, "l"))
    fd = os.open(os.path.join(workdir, "l"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"via link")
    finally:
        os.close(fd)
    assert read_file(os.path.join(workdir, "target")) == b"via link", \
        "O_CREAT through a dangling symlink must create the link's target"
    assert os.path.islink(os.path.join(workdir, "l")), "the symlink itself must remain a symlink"
