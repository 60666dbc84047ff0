"""Attributes: chmod, chown, utime/utimensat (UTIME_NOW, UTIME_OMIT), ctime and mtime updates."""

import os
import stat
import time

import pytest

from posix_suite.fsutil import (NOBODY_UID, NOGROUP_GID, TIMESTAMP_GRANULARITY_PAUSE, UTIME_NOW,
                                UTIME_OMIT, utimensat, write_file)

PAST = 1_000_000_000  # 2001-09-09, whole seconds: representable everywhere


def _file(workdir, name="f", content=b"x"):
    p = os.path.join(workdir, name)
    write_file(p, content)
    return p


def test_create_mode_with_umask(workdir):
    old = os.umask(0o027)
    try:
        fd = os.open(os.path.join(workdir, "f"), os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(os.path.join(workdir, "f")).st_mode)
    assert mode == 0o640, f"create with 0666 and umask 027 gave {mode:o}"


def test_chmod(workdir):
    p = _file(workdir)
    for mode in (0o600, 0o751, 0o4755, 0o000, 0o644):
        os.chmod(p, mode)
        got = stat.S_IMODE(os.stat(p).st_mode)
        assert got == mode, f"chmod {mode:o} gave {got:o}"
    assert stat.S_ISREG(os.stat(p).st_mode), "chmod must not change the file type"


def test_fchmod(workdir):
    p = _file(workdir)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o604)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o604, "fstat after fchmod"
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o604, "stat after fchmod"


def test_chmod_directory_sticky(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    os.chmod(d, 0o1777)
    got = stat.S_IMODE(os.stat(d).st_mode)
    assert got == 0o1777, f"chmod 1777 on a directory gave {got:o}"


@pytest.mark.needs_root
def test_chown(workdir):
    p = _file(workdir)
    os.chown(p, NOBODY_UID, NOGROUP_GID)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (NOBODY_UID, NOGROUP_GID), \
        f"chown to {NOBODY_UID}:{NOGROUP_GID} gave {st.st_uid}:{st.st_gid}"


@pytest.mark.needs_root
def test_chown_minus_one_keeps_field(workdir):
    p = _file(workdir)
    os.chown(p, NOBODY_UID, -1)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (NOBODY_UID, 0), f"chown uid only gave {st.st_uid}:{st.st_gid}"
    os.chown(p, -1, NOGROUP_GID)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (NOBODY_UID, NOGROUP_GID), \
        f"chown gid only gave {st.st_uid}:{st.st_gid}"


@pytest.mark.needs_root
def test_fchown(workdir):
    p = _file(workdir)
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fchown(fd, NOBODY_UID, NOGROUP_GID)
        assert os.fstat(fd).st_uid == NOBODY_UID, "fstat uid after fchown"
    finally:
        os.close(fd)
    assert os.stat(p).st_uid == NOBODY_UID, "stat uid after fchown"


@pytest.mark.needs_root
def test_lchown_symlink(workdir):
    _file(workdir)
    link = os.path.join(workdir, "l")
    os.symlink("f", link)
    os.lchown(link, NOBODY_UID, NOGROUP_GID)
    assert os.lstat(link).st_uid == NOBODY_UID, "lchown changes the link"
    assert os.stat(link).st_uid == 0, "lchown must not change the target"


def test_new_file_owned_by_creator(workdir):
    p = _file(workdir)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), \
        f"new file owned by {st.st_uid}:{st.st_gid}, creator is {os.geteuid()}:{os.getegid()}"


def test_utime_explicit_seconds(workdir):
    p = _file(workdir)
    os.utime(p, (PAST, PAST + 12345))
    st = os.stat(p)
    assert st.st_mtime_ns == (PAST + 12345) * 10**9, f"mtime after utime: {st.st_mtime_ns}"
    assert st.st_atime_ns == PAST * 10**9, f"atime after utime: {st.st_atime_ns}"


def test_utime_subsecond(workdir):
    p = _file(workdir)
    os.utime(p, ns=(PAST * 10**9 + 123_456_789, PAST * 10**9 + 987_654_321))
    st = os.stat(p)
    assert st.st_mtime_ns == PAST * 10**9 + 987_654_321, \
        f"nanoseconds of mtime not kept: {st.st_mtime_ns}"
    assert st.st_atime_ns == PAST * 10**9 + 123_456_789, \
        f"nanoseconds of atime not kept: {st.st_atime_ns}"


def test_utime_none_is_now(workdir):
    p = _file(workdir)
    os.utime(p, (PAST, PAST))
    os.utime(p, None)
    now = time.time()
    st = os.stat(p)
    assert abs(st.st_mtime - now) < 5, f"utime(None) set mtime {st.st_mtime}, now is {now}"


def test_utimensat_utime_now(workdir):
    p = _file(workdir)
    os.utime(p, (PAST, PAST))
    utimensat(p, (0, UTIME_NOW), (0, UTIME_NOW))
    now = time.time()
    st = os.stat(p)
    assert abs(st.st_mtime - now) < 5, f"UTIME_NOW mtime {st.st_mtime}, now {now}"
    assert abs(st.st_atime - now) < 5, f"UTIME_NOW atime {st.st_atime}, now {now}"


def test_utimensat_omit_atime(workdir):
    p = _file(workdir)
    os.utime(p, (PAST, PAST))
    utimensat(p, (0, UTIME_OMIT), (PAST + 500, 0))
    st = os.stat(p)
    assert st.st_atime_ns == PAST * 10**9, f"UTIME_OMIT changed atime to {st.st_atime_ns}"
    assert st.st_mtime_ns == (PAST + 500) * 10**9, f"mtime not set: {st.st_mtime_ns}"


def test_utimensat_omit_mtime(workdir):
    p = _file(workdir)
    os.utime(p, (PAST, PAST))
    utimensat(p, (PAST + 700, 0), (0, UTIME_OMIT))
    st = os.stat(p)
    assert st.st_mtime_ns == PAST * 10**9, f"UTIME_OMIT changed mtime to {st.st_mtime_ns}"
    assert st.st_atime_ns == (PAST + 700) * 10**9, f"atime not set: {st.st_atime_ns}"


def test_utimensat_now_and_omit(workdir):
    p = _file(workdir)
    os.utime(p, (PAST, PAST))
    utimensat(p, (0, UTIME_OMIT), (0, UTIME_NOW))
    st = os.stat(p)
    assert st.st_atime_ns == PAST * 10**9, "atime must be left alone by UTIME_OMIT"
    assert abs(st.st_mtime - time.time()) < 5, "mtime must be now with UTIME_NOW"


def test_utime_on_directory(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    os.utime(d, (PAST, PAST + 1))
    assert os.stat(d).st_mtime_ns == (PAST + 1) * 10**9, "utime on a directory"


def test_mtime_updates_on_write(workdir):
    p = _file(workdir)
    os.utime(p, (PAST, PAST))
    fd = os.open(p, os.O_WRONLY)
    try:
        os.write(fd, b"new data")
    finally:
        os.close(fd)
    st = os.stat(p)
    assert abs(st.st_mtime - time.time()) < 5, f"mtime after write is {st.st_mtime}, not now"


def test_mtime_updates_on_truncate(workdir):
    p = _file(workdir, content=b"0123456789")
    os.utime(p, (PAST, PAST))
    os.truncate(p, 3)
    assert abs(os.stat(p).st_mtime - time.time()) < 5, "truncate that changes the size sets mtime"


def test_mtime_and_ctime_update_on_o_trunc_of_empty_file(workdir):
    """POSIX: open(O_TRUNC) of an existing file marks mtime and ctime for
    update even when it is already empty (``: > stamp``)."""
    p = _file(workdir, content=b"")
    os.utime(p, (PAST, PAST))
    before = os.stat(p).st_ctime_ns
    time.sleep(TIMESTAMP_GRANULARITY_PAUSE)
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    st = os.stat(p)
    assert abs(st.st_mtime - time.time()) < 5, f"mtime after O_TRUNC is {st.st_mtime}, not now"
    assert st.st_ctime_ns > before, f"ctime did not advance on O_TRUNC ({before} -> {st.st_ctime_ns})"


def test_mtime_kept_after_close(workdir):
    """An explicit mtime set after writing must survive the close (no late flush overwrite)."""
    p = os.path.join(workdir, "f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"data")
        os.utime(p, (PAST, PAST))
    finally:
        os.close(fd)
    assert os.stat(p).st_mtime_ns == PAST * 10**9, \
        f"mtime set before close was replaced: {os.stat(p).st_mtime}"


def test_ctime_updates_on_chmod(workdir):
    p = _file(workdir)
    before = os.stat(p).st_ctime_ns
    time.sleep(TIMESTAMP_GRANULARITY_PAUSE)
    os.chmod(p, 0o600)
    after = os.stat(p).st_ctime_ns
    assert after > before, f"ctime did not advance on chmod ({before} -> {after})"


def test_ctime_updates_on_write(workdir):
    p = _file(workdir)
    before = os.stat(p).st_ctime_ns
    time.sleep(TIMESTAMP_GRANULARITY_PAUSE)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"more")
    finally:
        os.close(fd)
    after = os.stat(p).st_ctime_ns
    assert after > before, f"ctime did not advance on write ({before} -> {after})"


def test_ctime_updates_on_utime(workdir):
    p = _file(workdir)
    before = os.stat(p).st_ctime_ns
    time.sleep(TIMESTAMP_GRANULARITY_PAUSE)
    os.utime(p, (PAST, PAST))
    after = os.stat(p).st_ctime_ns
    assert after > before, f"ctime did not advance on utime ({before} -> {after})"


def test_directory_mtime_updates_on_create_and_unlink(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    os.utime(d, (PAST, PAST))
    write_file(os.path.join(d, "f"), b"x")
    m1 = os.stat(d).st_mtime
    assert abs(m1 - time.time()) < 5, f"creating an entry must set the directory mtime (got {m1})"
    os.utime(d, (PAST, PAST))
    os.unlink(os.path.join(d, "f"))
    m2 = os.stat(d).st_mtime
    assert abs(m2 - time.time()) < 5, f"removing an entry must set the directory mtime (got {m2})"


def test_st_blocks_cover_size(workdir):
    p = _file(workdir, content=b"z" * 100_000)
    st = os.stat(p)
    assert st.st_blocks * 512 >= 100_000, \
        f"st_blocks {st.st_blocks} (x512) is less than the 100000 bytes written"
    assert st.st_blksize > 0, "st_blksize must be positive"


def test_fstat_matches_stat(workdir):
    p = _file(workdir, content=b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        a, b = os.fstat(fd), os.stat(p)
    finally:
        os.close(fd)
    for field in ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_mtime_ns"):
        assert getattr(a, field) == getattr(b, field), f"fstat and stat disagree on {field}"


@pytest.mark.needs_root
def test_setgid_directory_group_inheritance(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    os.chown(d, 0, NOGROUP_GID)
    os.chmod(d, 0o2775)
    write_file(os.path.join(d, "f"), b"x")
    os.mkdir(os.path.join(d, "sub"))
    assert os.stat(os.path.join(d, "f")).st_gid == NOGROUP_GID, \
        "a file created in a setgid directory takes the directory's group"
    sub = os.stat(os.path.join(d, "sub"))
    assert sub.st_gid == NOGROUP_GID, "a subdirectory takes the setgid directory's group"
    assert sub.st_mode & stat.S_ISGID, "a subdirectory of a setgid directory is setgid too"
