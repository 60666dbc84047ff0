"""Interoperability with the real s3fs-fuse, on the same bucket of the same server.

A tree written through s3fs must read correctly through ObjectFS, and the
reverse.  The two filesystems never run on the bucket at the same time: each
side is unmounted (and its process gone) before the other mounts, so neither
side's caches matter and the outcome is deterministic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from tests.support.mounts import S3fsMount, is_mounted

pytestmark = pytest.mark.interop

NS = 1_000_000_000
MTIME_NS = 1_600_000_000 * NS + 123_456_789     # with nanoseconds
MTIME2_NS = 1_500_000_000 * NS                  # whole seconds
DEEP = b"deep content\n" * 100


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def s3fs_mount(s3, workdir):
    """Factory for real s3fs-fuse mounts; every one is stopped at teardown."""
    if shutil.which("s3fs") is None:
        pytest.skip("s3fs is not installed (apt-get install s3fs)")
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("s3fs mounts need root and /dev/fuse")
    handles: list[S3fsMount] = []

    def make(bucket: str, options: list[str] | None = None) -> S3fsMount:
        n = len(handles) + 1
        mp = workdir / f"mnt-s3fs{n}"     # "mnt*": the workdir fixture is a backstop
        mp.mkdir()
        h = S3fsMount(s3, bucket, str(mp), options=list(options or []),
                      log_path=str(workdir / f"s3fs{n}.log"))
        handles.append(h)
        return h

    try:
        yield make
    finally:
        for h in handles:
            h.stop()
        leftover = [h.mountpoint for h in handles if is_mounted(h.mountpoint)]
        assert not leftover, f"s3fs still mounted after teardown: {leftover}"


def write_tree(root: str) -> None:
    """The same tree through either filesystem."""
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    with umask(0o022):
        Path(p("plain.txt")).write_bytes(b"hello\n")
        Path(p("secret")).write_bytes(b"s" * 5000)
        os.chmod(p("secret"), 0o600)
        Path(p("run.sh")).write_bytes(b"#!/bin/sh\necho hi\n")
        os.chmod(p("run.sh"), 0o755)
        Path(p("old")).write_bytes(b"old file")
        os.utime(p("old"), ns=(MTIME2_NS, MTIME_NS))
        Path(p("owned")).write_bytes(b"o")
        os.chown(p("owned"), 1000, 1001)
        os.symlink("plain.txt", p("link"))
        os.symlink("../nowhere/at all", p("dangling"))
        os.mkdir(p("empty"))
        os.mkdir(p("private"), 0o700)
        os.makedirs(p("a", "b", "c"))
        Path(p("a", "b", "c", "deep.txt")).write_bytes(DEEP)
        Path(p("a", "top.txt")).write_bytes(b"top")
        os.utime(p("a", "b"), ns=(MTIME2_NS, MTIME2_NS))
        os.mkfifo(p("fifo"), 0o640)


def check_tree(root: str) -> None:
    """What either filesystem must show for ``write_tree``'s tree."""
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    assert sorted(os.listdir(root)) == sorted(
        ["plain.txt", "secret", "run.sh", "old", "owned", "link", "dangling", "empty",
         "private", "a", "fifo"])
    modes = {"plain.txt": stat.S_IFREG | 0o644, "secret": stat.S_IFREG | 0o600,
             "run.sh": stat.S_IFREG | 0o755, "old": stat.S_IFREG | 0o644,
             "owned": stat.S_IFREG | 0o644, "link": stat.S_IFLNK | 0o777,
             "dangling": stat.S_IFLNK | 0o777, "empty": stat.S_IFDIR | 0o755,
             "private": stat.S_IFDIR | 0o700, "a": stat.S_IFDIR | 0o755,
             "a/b": stat.S_IFDIR | 0o755, "a/b/c": stat.S_IFDIR | 0o755,
             "a/b/c/deep.txt": stat.S_IFREG | 0o644, "fifo": stat.S_IFIFO | 0o640}
    for name, mode in modes.items():
        st = os.lstat(p(name))
        assert st.st_mode == mode, (name, oct(st.st_mode), oct(mode))
    assert Path(p("plain.txt")).read_bytes() == b"hello\n"
    assert Path(p("secret")).read_bytes() == b"s" * 5000
    assert Path(p("run.sh")).read_bytes() == b"#!/bin/sh\necho hi\n"
    assert Path(p("a", "b", "c", "deep.txt")).read_bytes() == DEEP
    assert Path(p("a", "top.txt")).read_bytes() == b"top"
    assert os.stat(p("secret")).st_size == 5000
    assert int(os.stat(p("old")).st_mtime) == MTIME_NS // NS
    assert int(os.stat(p("a", "b")).st_mtime) == MTIME2_NS // NS
    st = os.stat(p("owned"))
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    st = os.stat(p("plain.txt"))
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert os.readlink(p("link")) == "plain.txt"
    assert Path(p("link")).read_bytes() == b"hello\n"
    assert os.readlink(p("dangling")) == "../nowhere/at all"
    assert os.listdir(p("empty")) == []
    assert os.listdir(p("private")) == []
    assert sorted(os.listdir(p("a"))) == ["b", "top.txt"]
    assert os.listdir(p("a", "b")) == ["c"]
    assert os.listdir(p("a", "b", "c")) == ["deep.txt"]


def raw_objects(s3_client, bucket: str) -> dict[str, dict]:
    out = {}
    for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]:
        h = s3_client.head_object(Bucket=bucket, Key=o["Key"])
        out[o["Key"]] = {"size": o["Size"], "type": h["ContentType"], **h["Metadata"]}
    return out


def test_tree_written_by_s3fs_reads_through_objectfs(s3fs_mount, mount, bucket, s3_client):
    s = s3fs_mount(bucket)
    write_tree(s.mountpoint)
    check_tree(s.mountpoint)             # s3fs agrees with itself
    s.stop()
    assert not is_mounted(s.mountpoint)
    raw = raw_objects(s3_client, bucket)
    # s3fs's own format, as interop.md describes it (sanity check of the fixture)
    assert raw["empty/"]["mode"] == "493"                 # no S_IFDIR from mkdir
    assert raw["link"]["mode"] == "41471"
    assert raw["old"]["mtime"] == "1600000000.123456789"
    m = mount(bucket)
    check_tree(m.mountpoint)
    # ObjectFS reads the nanoseconds too
    assert os.stat(os.path.join(m.mountpoint, "old")).st_mtime_ns == MTIME_NS
    # and reading changed nothing in S3
    assert raw_objects(s3_client, bucket) == raw


def test_tree_written_by_objectfs_reads_through_s3fs(s3fs_mount, mount, bucket, s3_client):
    m = mount(bucket)
    write_tree(m.mountpoint)
    check_tree(m.mountpoint)
    m.stop()
    assert not is_mounted(m.mountpoint)
    raw = raw_objects(s3_client, bucket)
    assert raw["empty/"]["mode"] == "16877"
    assert raw["empty/"]["type"] == "application/x-directory"
    s = s3fs_mount(bucket)
    check_tree(s.mountpoint)
    assert raw_objects(s3_client, bucket) == raw


def test_changes_by_s3fs_to_objectfs_tree_and_back(s3fs_mount, mount, bucket, s3_client):
    # ObjectFS writes; s3fs changes attributes and content; ObjectFS reads
    # the result and changes it again; s3fs reads that.
    m = mount(bucket)
    mp = m.mountpoint
    with umask(0o022):
        Path(mp, "f").write_bytes(b"v1")
        os.mkdir(os.path.join(mp, "d"))
        Path(mp, "d", "g").write_bytes(b"g")
    m.stop()
    s3_client.copy_object(Bucket=bucket, Key="f", CopySource={"Bucket": bucket, "Key": "f"},
                          MetadataDirective="REPLACE", ContentType="text/plain",
                          Metadata={**s3_client.head_object(Bucket=bucket, Key="f")["Metadata"],
                                    "foo": "bar"})

    s = s3fs_mount(bucket)
    sp = s.mountpoint
    os.chmod(os.path.join(sp, "f"), 0o604)
    os.utime(os.path.join(sp, "f"), ns=(MTIME2_NS, MTIME2_NS))
    os.chmod(os.path.join(sp, "d"), 0o711)
    os.rename(os.path.join(sp, "d", "g"), os.path.join(sp, "d", "h"))
    with umask(0o022):
        os.mkdir(os.path.join(sp, "s3fsdir"))
        Path(sp, "s3fsdir", "x").write_bytes(b"x")
    s.stop()
    assert s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]["foo"] == "bar"

    m2 = mount(bucket)
    mp = m2.mountpoint
    st = os.stat(os.path.join(mp, "f"))
    assert st.st_mode == stat.S_IFREG | 0o604
    assert int(st.st_mtime) == MTIME2_NS // NS
    assert os.stat(os.path.join(mp, "d")).st_mode == stat.S_IFDIR | 0o711
    assert os.listdir(os.path.join(mp, "d")) == ["h"]
    assert Path(mp, "d", "h").read_bytes() == b"g"
    assert os.stat(os.path.join(mp, "s3fsdir")).st_mode == stat.S_IFDIR | 0o755
    # ObjectFS changes an s3fs-made directory (mode "493") and the file
    os.chmod(os.path.join(mp, "s3fsdir"), 0o750)
    assert s3_client.head_object(Bucket=bucket, Key="s3fsdir/")["Metadata"]["mode"] == "16872"
    with open(os.path.join(mp, "f"), "ab") as f:
        f.write(b"+v2")
    os.utime(os.path.join(mp, "f"), ns=(MTIME_NS, MTIME_NS))
    m2.stop()
    md = s3_client.head_object(Bucket=bucket, Key="f")["Metadata"]
    assert md["foo"] == "bar"
    assert md["mode"] == str(stat.S_IFREG | 0o604)

    s2 = s3fs_mount(bucket)
    sp = s2.mountpoint
    assert Path(sp, "f").read_bytes() == b"v1+v2"
    st = os.stat(os.path.join(sp, "f"))
    assert st.st_mode == stat.S_IFREG | 0o604
    assert int(st.st_mtime) == MTIME_NS // NS
    assert os.stat(os.path.join(sp, "s3fsdir")).st_mode == stat.S_IFDIR | 0o750
    assert os.listdir(os.path.join(sp, "s3fsdir")) == ["x"]


def test_attributes_s3fs_changes_show_past_the_metadata_cache(s3fs_mount, mount, bucket,
                                                              s3_client):
    # ObjectFS lists files it keeps the attributes of (metadata_cache); s3fs
    # then changes mode, owner and mtime of some (each a copy of the object
    # onto itself); the next ObjectFS mount, with the same cache_dir, shows
    # s3fs's changes, and the untouched files from its cache.
    for name in ("a", "b", "c"):
        s3_client.put_object(Bucket=bucket, Key=f"d/{name}", Body=b"x",
                             Metadata={"mode": str(stat.S_IFREG | 0o600), "uid": "0",
                                       "gid": "0", "mtime": "1500000000"})
    time.sleep(2.2)   # attributes are kept only when HEADed 2 s after the last change
    m = mount(bucket)
    assert sorted(os.listdir(os.path.join(m.mountpoint, "d"))) == ["a", "b", "c"]
    for name in ("a", "b", "c"):
        os.stat(os.path.join(m.mountpoint, "d", name))
    assert m.metric("objectfs_cache_misses_total", cache="metadata_disk") == 3
    m.stop()

    s = s3fs_mount(bucket)
    os.chmod(os.path.join(s.mountpoint, "d", "a"), 0o644)
    os.chown(os.path.join(s.mountpoint, "d", "b"), 1000, 1001)
    s.stop()

    m2 = mount(bucket)
    names = sorted(os.listdir(os.path.join(m2.mountpoint, "d")))
    st = {n: os.stat(os.path.join(m2.mountpoint, "d", n)) for n in names}
    assert stat.S_IMODE(st["a"].st_mode) == 0o644
    assert (st["b"].st_uid, st["b"].st_gid) == (1000, 1001)
    assert stat.S_IMODE(st["c"].st_mode) == 0o600 and st["c"].st_uid == 0
    assert int(st["c"].st_mtime) == 1_500_000_000
    # c came from the cache; a and b, changed by s3fs, were asked again
    assert m2.metric("objectfs_cache_hits_total", cache="metadata_disk") == 1
    assert m2.metric("objectfs_cache_misses_total", cache="metadata_disk") == 2


def test_a_refused_chmod_chown_utime_of_the_bucket_root_changes_nothing(mount, bucket,
                                                                        s3_client):
    # The bucket root has no object to hold attributes (s3fs refuses too, with
    # EIO): chmod, chown and utime of it fail with EPERM, and what they asked
    # for must not show afterwards (it did, at the next stat that reached the
    # daemon: a root turned 0700 and owned by someone else locks users out).
    m = mount(bucket)
    mp = m.mountpoint
    before = os.stat(mp)
    for call in (lambda: os.chmod(mp, 0o700), lambda: os.chown(mp, 1000, 1001),
                 lambda: os.utime(mp, ns=(MTIME2_NS, MTIME2_NS))):
        with pytest.raises(PermissionError):
            call()
    Path(mp, "f").write_bytes(b"x")       # the kernel asks the daemon for the root again
    time.sleep(1.5)
    after = os.stat(mp)
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid) == (
        stat.S_IMODE(before.st_mode), before.st_uid, before.st_gid)
    assert after.st_mtime_ns != MTIME2_NS
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == ["f"]
