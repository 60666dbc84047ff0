"""Extended attributes in the user.* namespace."""

import errno
import os

from posix_suite.fsutil import getxattr_raw, listxattr_raw, raises_errno, write_file

ENODATA = errno.ENODATA


def _file(workdir):
    p = os.path.join(workdir, "f")
    write_file(p, b"x")
    return p


def test_set_get(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.color", b"blue")
    assert os.getxattr(p, "user.color") == b"blue", "getxattr returns what setxattr stored"


def test_list(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.a", b"1")
    os.setxattr(p, "user.b", b"2")
    names = [n for n in os.listxattr(p) if n.startswith("user.")]
    assert sorted(names) == ["user.a", "user.b"], f"listxattr gave {os.listxattr(p)}"


def test_remove(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.gone", b"v")
    os.removexattr(p, "user.gone")
    assert "user.gone" not in os.listxattr(p), "removed attribute still listed"
    with raises_errno(ENODATA, what="getxattr after removexattr"):
        os.getxattr(p, "user.gone")


def test_get_missing(workdir):
    p = _file(workdir)
    with raises_errno(ENODATA, what="getxattr of a missing attribute"):
        os.getxattr(p, "user.missing")


def test_remove_missing(workdir):
    p = _file(workdir)
    with raises_errno(ENODATA, what="removexattr of a missing attribute"):
        os.removexattr(p, "user.missing")


def test_replace_value(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.k", b"first value, long")
    os.setxattr(p, "user.k", b"2nd")
    assert os.getxattr(p, "user.k") == b"2nd", "setxattr replaces the value entirely"


def test_erange_small_buffer(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.big", b"0123456789")
    assert getxattr_raw(p, "user.big", 0) == 10, "getxattr with size 0 returns the value size"
    with raises_errno(errno.ERANGE, what="getxattr with a 4-byte buffer for a 10-byte value"):
        getxattr_raw(p, "user.big", 4)
    assert getxattr_raw(p, "user.big", 10) == b"0123456789", "exact-size buffer"


def test_listxattr_erange(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.some_long_attribute_name", b"v")
    need = listxattr_raw(p, 0)
    assert need >= len(b"user.some_long_attribute_name\0"), f"listxattr size {need}"
    with raises_errno(errno.ERANGE, what="listxattr with a 3-byte buffer"):
        listxattr_raw(p, 3)


def test_xattr_create_on_existing(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.k", b"v1")
    with raises_errno(errno.EEXIST, what="setxattr XATTR_CREATE on an existing attribute"):
        os.setxattr(p, "user.k", b"v2", os.XATTR_CREATE)
    assert os.getxattr(p, "user.k") == b"v1", "a refused XATTR_CREATE must not change the value"


def test_xattr_create_on_new(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.k", b"v", os.XATTR_CREATE)
    assert os.getxattr(p, "user.k") == b"v"


def test_xattr_replace_on_missing(workdir):
    p = _file(workdir)
    with raises_errno(ENODATA, what="setxattr XATTR_REPLACE on a missing attribute"):
        os.setxattr(p, "user.k", b"v", os.XATTR_REPLACE)
    assert "user.k" not in os.listxattr(p)


def test_xattr_replace_on_existing(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.k", b"old")
    os.setxattr(p, "user.k", b"new", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.k") == b"new"


def test_binary_value(workdir):
    p = _file(workdir)
    value = bytes(range(256))
    os.setxattr(p, "user.bin", value)
    assert os.getxattr(p, "user.bin") == value, "a value with NUL and high bytes must round-trip"


def test_empty_value(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.empty", b"")
    assert os.getxattr(p, "user.empty") == b"", "an empty value"
    assert "user.empty" in os.listxattr(p), "an attribute with an empty value is listed"


def test_large_value(workdir):
    p = _file(workdir)
    value = bytes(i % 251 for i in range(4000))
    os.setxattr(p, "user.large", value)
    assert os.getxattr(p, "user.large") == value, "a 4000-byte value"


def test_xattr_on_directory(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    os.setxattr(d, "user.dir", b"yes")
    assert os.getxattr(d, "user.dir") == b"yes"


def test_xattr_kept_after_write_and_rename(workdir):
    p = _file(workdir)
    os.setxattr(p, "user.keep", b"me")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"more data")
    finally:
        os.close(fd)
    os.rename(p, p + ".moved")
    assert os.getxattr(p + ".moved", "user.keep") == b"me", \
        "xattrs survive a write and a rename"


def test_fd_xattr_calls(workdir):
    p = _file(workdir)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.setxattr(fd, "user.viafd", b"1")
        assert os.getxattr(fd, "user.viafd") == b"1"
        assert "user.viafd" in os.listxattr(fd)
    finally:
        os.close(fd)
    assert os.getxattr(p, "user.viafd") == b"1", "fsetxattr visible by path"
