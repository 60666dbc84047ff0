"""Permission enforcement against another uid (65534, nobody).

Each check runs in a forked child that switches to uid/gid 65534.  On a FUSE
mount this needs ``allow_other`` (so the other uid can reach the mount at all)
and ``default_permissions`` or the filesystem's own checks (so modes are
enforced).  When uid 65534 cannot reach the mount, the tests are skipped with
the reason; a mount that is reachable but does not enforce modes fails them.
"""

import errno
import os
import stat

import pytest

from posix_suite.fsutil import NOBODY_UID, NOGROUP_GID, read_file, write_file

pytestmark = pytest.mark.needs_root


def _root_file(workdir, mode, name="f", content=b"root data"):
    p = os.path.join(workdir, name)
    write_file(p, content)
    os.chmod(p, mode)
    return p


def _open_close(path, flags):
    def fn():
        fd = os.open(path, flags)
        os.close(fd)
        return True
    return fn


def test_other_can_read_0644(workdir, as_nobody):
    p = _root_file(workdir, 0o644)
    res = as_nobody(lambda: read_file(p).decode())
    assert res.expect_ok("uid 65534 reading a 0644 root file") == "root data"


def test_other_cannot_write_0644(workdir, as_nobody):
    p = _root_file(workdir, 0o644)
    as_nobody(_open_close(p, os.O_WRONLY)).expect_errno(
        errno.EACCES, what="uid 65534 opening a 0644 root file for writing")
    assert read_file(p) == b"root data", "the refused call changed the file"


def test_other_cannot_truncate_0644(workdir, as_nobody):
    p = _root_file(workdir, 0o644)
    as_nobody(lambda: os.truncate(p, 0)).expect_errno(
        errno.EACCES, what="uid 65534 truncating a 0644 root file")
    assert read_file(p) == b"root data", "the refused call changed the file"


def test_other_cannot_read_0600(workdir, as_nobody):
    p = _root_file(workdir, 0o600)
    as_nobody(_open_close(p, os.O_RDONLY)).expect_errno(
        errno.EACCES, what="uid 65534 reading a 0600 root file")


def test_other_can_write_0666(workdir, as_nobody):
    p = _root_file(workdir, 0o666)

    def fn():
        fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"nobody was here")
        finally:
            os.close(fd)
        return True

    as_nobody(fn).expect_ok("uid 65534 writing a 0666 root file")
    assert read_file(p) == b"nobody was here"


def test_group_permission_applies(workdir, as_nobody):
    p = _root_file(workdir, 0o640)
    os.chown(p, 0, NOGROUP_GID)
    res = as_nobody(lambda: read_file(p).decode())
    assert res.expect_ok("uid 65534 (gid 65534) reading a 0640 file of group 65534") == "root data"


def test_group_class_denies_even_if_other_allows(workdir, as_nobody):
    p = _root_file(workdir, 0o604)
    os.chown(p, 0, NOGROUP_GID)
    as_nobody(_open_close(p, os.O_RDONLY)).expect_errno(
        errno.EACCES, what="gid 65534 reading a 0604 file of group 65534 (group bits apply, not other)")


def test_other_cannot_create_in_0755_dir(workdir, as_nobody):
    target = os.path.join(workdir, "new")
    as_nobody(_open_close(target, os.O_CREAT | os.O_WRONLY)).expect_errno(
        errno.EACCES, what="uid 65534 creating a file in a 0755 root directory")
    assert not os.path.lexists(target), "a refused create must not leave a file"


def test_other_cannot_mkdir_in_0755_dir(workdir, as_nobody):
    target = os.path.join(workdir, "newdir")
    as_nobody(lambda: os.mkdir(target)).expect_errno(
        errno.EACCES, what="uid 65534 mkdir in a 0755 root directory")
    assert not os.path.lexists(target), "the refused mkdir left a directory"


def test_other_creates_in_0777_dir_and_owns_file(workdir, as_nobody):
    d = os.path.join(workdir, "open")
    os.mkdir(d)
    os.chmod(d, 0o777)
    target = os.path.join(d, "mine")
    as_nobody(lambda: write_file(target, b"by nobody")).expect_ok(
        "uid 65534 creating a file in a 0777 directory")
    st = os.stat(target)
    assert (st.st_uid, st.st_gid) == (NOBODY_UID, NOGROUP_GID), \
        f"file created by 65534:65534 is owned by {st.st_uid}:{st.st_gid}"
    assert read_file(target) == b"by nobody"


def test_other_cannot_unlink_in_0755_dir(workdir, as_nobody):
    p = _root_file(workdir, 0o666)
    as_nobody(lambda: os.unlink(p)).expect_errno(
        errno.EACCES, what="uid 65534 unlinking from a 0755 root directory")
    assert os.path.exists(p), "the refused unlink removed the file"


def test_sticky_dir_other_cannot_delete_root_file(workdir, as_nobody):
    d = os.path.join(workdir, "tmp")
    os.mkdir(d)
    os.chmod(d, 0o1777)
    p = _root_file(d, 0o666)
    as_nobody(lambda: os.unlink(p)).expect_errno(
        errno.EPERM, errno.EACCES, what="uid 65534 unlinking root's file in a 01777 directory")
    assert os.path.exists(p), "sticky directory let another uid delete root's file"


def test_sticky_dir_other_cannot_rename_root_file(workdir, as_nobody):
    d = os.path.join(workdir, "tmp")
    os.mkdir(d)
    os.chmod(d, 0o1777)
    p = _root_file(d, 0o666)
    as_nobody(lambda: os.rename(p, os.path.join(d, "stolen"))).expect_errno(
        errno.EPERM, errno.EACCES, what="uid 65534 renaming root's file in a 01777 directory")
    assert os.path.exists(p) and not os.path.lexists(os.path.join(d, "stolen"))


def test_sticky_dir_other_can_delete_own_file(workdir, as_nobody):
    d = os.path.join(workdir, "tmp")
    os.mkdir(d)
    os.chmod(d, 0o1777)
    p = os.path.join(d, "own")

    def fn():
        write_file(p, b"mine")
        os.unlink(p)
        return os.path.lexists(p)

    assert as_nobody(fn).expect_ok("uid 65534 creating and deleting its own file in 01777") is False


def test_other_cannot_chmod_root_file(workdir, as_nobody):
    p = _root_file(workdir, 0o666)
    as_nobody(lambda: os.chmod(p, 0o777)).expect_errno(
        errno.EPERM, what="uid 65534 chmod of root's file")
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert mode == 0o666, f"mode is {mode:o} after the refused chmod (root set 0666)"


def test_other_cannot_chown_to_root(workdir, as_nobody):
    p = _root_file(workdir, 0o644)
    os.chown(p, NOBODY_UID, NOGROUP_GID)
    assert os.stat(p).st_uid == NOBODY_UID, "setup: root's chown to 65534 did not take effect"
    as_nobody(lambda: os.chown(p, 0, 0)).expect_errno(
        errno.EPERM, what="uid 65534 giving its file to root")
    assert os.stat(p).st_uid == NOBODY_UID, "the refused chown changed the owner"


def test_other_cannot_set_explicit_times_on_root_file(workdir, as_nobody):
    p = _root_file(workdir, 0o666)
    before = os.stat(p).st_mtime_ns
    as_nobody(lambda: os.utime(p, (1_000_000_000, 1_000_000_000))).expect_errno(
        errno.EPERM, what="uid 65534 setting explicit times on root's (writable) file")
    assert os.stat(p).st_mtime_ns == before, "the refused utime changed mtime"


def test_other_can_touch_writable_root_file(workdir, as_nobody):
    p = _root_file(workdir, 0o666)
    os.utime(p, (1_000_000_000, 1_000_000_000))
    as_nobody(lambda: os.utime(p, None)).expect_ok(
        "uid 65534 utime(NULL) on a root file it may write")
    assert os.stat(p).st_mtime > 1_000_000_000 + 1000, "utime(NULL) must set the times to now"


def test_other_cannot_traverse_0700_dir(workdir, as_nobody):
    d = os.path.join(workdir, "private")
    os.mkdir(d)
    os.chmod(d, 0o700)
    _root_file(d, 0o644)
    as_nobody(lambda: os.stat(os.path.join(d, "f")) and True).expect_errno(
        errno.EACCES, what="uid 65534 looking up a name in a 0700 root directory")
    as_nobody(lambda: os.listdir(d)).expect_errno(
        errno.EACCES, what="uid 65534 listing a 0700 root directory")


def test_other_cannot_list_0711_dir_but_can_traverse(workdir, as_nobody):
    d = os.path.join(workdir, "hidden")
    os.mkdir(d)
    os.chmod(d, 0o711)
    _root_file(d, 0o644)
    as_nobody(lambda: os.listdir(d)).expect_errno(
        errno.EACCES, what="uid 65534 listing a 0711 directory")
    res = as_nobody(lambda: read_file(os.path.join(d, "f")).decode())
    assert res.expect_ok("uid 65534 reading a known name in a 0711 directory") == "root data"


def test_root_reads_0000_file(workdir):
    p = _root_file(workdir, 0o000)
    assert read_file(p) == b"root data", "root must be able to read a mode 0000 file"
