"""The read path through the real mount: request coalescing, kernel readahead.

Coalescing: several threads, each with its own file descriptor (so its own FUSE handle
and prefetcher), read the same cold file at the same time.  The reads use
O_DIRECT, so the kernel's page cache (which already makes readers of one
page wait for each other) is out of the way and every read reaches the
daemon.  A fault proxy between the mount and moto delays every GET, so the
readers' GETs are under way together.  The proxy counts the GETs and the
daemon's metrics count the bytes received: with sharing, the file crosses
the wire about once, not once per reader.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import subprocess
import threading
import time

import pytest

from tests.conftest import fuse_usable
from tests.support.faultproxy import FaultProxy

pytestmark = pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))

MiB = 1 << 20
READERS = 3


@pytest.fixture
def slow_proxy(s3):
    """Every GetObject answered 0.4 s late; nothing else touched."""
    with FaultProxy(s3, seed=7, delay=0.4) as p:
        p.set_rates({"GetObject": {"delay": 1.0}})
        yield p


def read_direct(path: str, size: int) -> bytes:
    """The whole file in 1 MiB O_DIRECT reads (aligned buffer)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, MiB)
    out = bytearray()
    try:
        while len(out) < size:
            n = os.preadv(fd, [buf], len(out))
            if n == 0:
                break
            out += buf[:n]
        return bytes(out)
    finally:
        buf.close()
        os.close(fd)


def read_together(path: str, size: int, n: int) -> list[bytes | BaseException]:
    results: list[bytes | BaseException] = [b""] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        try:
            start.wait(timeout=30)
            results[i] = read_direct(path, size)
        except BaseException as e:  # reported by the test
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    return results


@pytest.mark.parametrize("tier", ["tier", "no-tier"])
def test_concurrent_readers_of_one_cold_file_share_its_gets(mount, bucket, s3_client,
                                                            slow_proxy, tier):
    size = 8 * MiB + 5
    data = random.Random(3).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="shared.bin", Body=data)
    options = [] if tier == "tier" else ["cache_size=0"]
    m = mount(bucket, options=options, server=slow_proxy)
    path = os.path.join(m.mountpoint, "shared.bin")
    assert os.stat(path).st_size == size
    gets_before = slow_proxy.requests["GetObject"]
    with m.watchdog(120):
        results = read_together(path, size, READERS)
    for r in results:
        if isinstance(r, BaseException):
            raise r
        assert r == data
    got = m.metric("objectfs_s3_received_bytes_total")
    gets = slow_proxy.requests["GetObject"] - gets_before
    # alone, each reader would fetch the whole file: READERS x size
    print(f"\nFIGURES coalescing {tier}: {got / size:.2f}x the file in {gets} GETs")
    assert got < 1.5 * size, f"{got / size:.2f}x the file fetched in {gets} GETs"
    assert gets >= 1


def bdi_read_ahead_kb(mountpoint: str) -> int:
    dev = os.stat(mountpoint).st_dev
    with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
        return int(f.read())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may set a mount's readahead")
@pytest.mark.parametrize("read_ahead", [None, "0"])
def test_sequential_reads_reach_the_daemon_in_1_mib_requests(mount, bucket, s3_client,
                                                             read_ahead):
    size = 16 * MiB
    data = random.Random(4).randbytes(size)
    s3_client.put_object(Bucket=bucket, Key="seq.bin", Body=data)
    options = ["cache_size=0"] + ([f"read_ahead={read_ahead}"] if read_ahead else [])
    m = mount(bucket, options=options)
    path = os.path.join(m.mountpoint, "seq.bin")
    before = m.metric("objectfs_fuse_requests_total", op="read")
    with open(path, "rb") as f:
        assert f.read() == data
    requests = m.metric("objectfs_fuse_requests_total", op="read") - before
    if read_ahead == "0":  # the kernel's own 128 KiB
        assert bdi_read_ahead_kb(m.mountpoint) == 128
        assert requests >= size // (128 << 10)
    else:
        assert bdi_read_ahead_kb(m.mountpoint) == 1024
        assert requests <= size // MiB + 4


def requests(m, op: str) -> float:
    return m.metric("objectfs_s3_requests_total", op=op)


@pytest.mark.parametrize("prefetch", ["16K", "0"])
@pytest.mark.parametrize("tier", ["tier", "no-tier"])
def test_ls_l_fetches_small_files_whole_so_their_first_read_asks_nothing(
        mount, bucket, s3_client, tier, prefetch):
    """``ls -l`` then reading the files (the usual pattern of find, grep,
    cat *): a file up to small_file_prefetch comes whole with the GET that
    replaces its HEAD, so its read asks S3 nothing; bigger and empty files
    are HEADed and read as before.  Turned off, every file is read by GET."""
    files = {"a.txt": b"a" * 4000, "b.txt": b"b" * 16384, "big.bin": b"c" * 16385,
             "empty": b""}
    for name, body in files.items():
        s3_client.put_object(Bucket=bucket, Key=f"d/{name}", Body=body,
                             Metadata={"mode": "33152"})   # 0600: only the HEAD knows
    options = [f"small_file_prefetch={prefetch}"] + (
        [] if tier == "tier" else ["cache_size=0"])
    m = mount(bucket, options=options)
    d = os.path.join(m.mountpoint, "d")
    os.stat(d)
    heads, gets = requests(m, "HeadObject"), requests(m, "GetObject")
    for name in sorted(os.listdir(d)):
        st = os.stat(os.path.join(d, name))
        assert (st.st_size, st.st_mode & 0o777) == (len(files[name]), 0o600)
    small = 2 if prefetch == "16K" else 0
    assert requests(m, "GetObject") - gets == small
    assert requests(m, "HeadObject") - heads == 4 - small
    gets = requests(m, "GetObject")
    for name, body in files.items():
        with open(os.path.join(d, name), "rb") as f:
            assert f.read() == body
    assert requests(m, "GetObject") - gets == 3 - small   # empty files need no GET


def test_a_prefetched_body_serves_only_its_own_version(mount, bucket, s3_client):
    """Replaced by another S3 client after ``ls -l``: once the change shows
    (metadata_ttl), the read returns the new bytes, never the kept ones."""
    s3_client.put_object(Bucket=bucket, Key="f.txt", Body=b"old " * 100)
    m = mount(bucket, options=["metadata_ttl=0.2", "cache_size=0"])
    path = os.path.join(m.mountpoint, "f.txt")
    assert os.stat(path).st_size == 400
    gets = requests(m, "GetObject")
    s3_client.put_object(Bucket=bucket, Key="f.txt", Body=b"new " * 100)
    deadline = time.monotonic() + 30
    while True:   # until the kernel and the daemon see the new version
        with open(path, "rb") as f:
            got = f.read()
        if got == b"new " * 100 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == b"new " * 100
    assert requests(m, "GetObject") > gets


@pytest.mark.parametrize("change", ["replaced", "deleted"])
def test_an_append_to_a_small_file_changed_after_ls_l_fails_and_keeps_the_other_version(
        mount, bucket, s3_client, change):
    """``ls -l`` kept a small file's body; another client replaces (or
    deletes) the object; an append through the mount within
    ``metadata_ttl`` takes the old bytes from what was kept (no GET pinned to
    the old ETag that S3 would refuse), so its PUT carries If-Match: close()
    fails with ESTALE, S3 keeps the other version (or nothing), the file
    then shows that, nothing is retried, and the unmount is clean."""
    old, new = b"old\n" * 100, b"new\n" * 50
    s3_client.put_object(Bucket=bucket, Key="d/f.txt", Body=old)
    m = mount(bucket, options=["metadata_ttl=60", "cache_size=0"])
    path = os.path.join(m.mountpoint, "d", "f.txt")
    assert [e.stat().st_size for e in os.scandir(os.path.dirname(path))] == [len(old)]
    gets = requests(m, "GetObject")
    if change == "replaced":
        s3_client.put_object(Bucket=bucket, Key="d/f.txt", Body=new)
    else:
        s3_client.delete_object(Bucket=bucket, Key="d/f.txt")
    with pytest.raises(OSError) as e:
        with open(path, "ab") as f:
            f.write(b"appended\n")
    assert e.value.errno == errno.ESTALE
    assert requests(m, "GetObject") == gets   # the old bytes were at hand
    puts = requests(m, "PutObject")
    if change == "replaced":
        with open(path, "rb") as f:
            assert f.read() == new
    else:
        assert not os.path.exists(path)
    m.stop()
    assert m.proc.returncode == 0
    assert "could not be uploaded" not in open(m.log_path).read()
    assert puts == 1   # the refused one; none after it
    if change == "replaced":
        assert s3_client.get_object(Bucket=bucket, Key="d/f.txt")["Body"].read() == new
    else:
        assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)


@pytest.mark.parametrize("tier", ["tier", "no-tier"])
@pytest.mark.parametrize("new_size", [300 * 1024, 40 * 1024], ids=["longer", "shorter"])
def test_a_handle_that_has_read_nothing_reads_the_version_now_in_s3(
        mount, bucket, s3_client, tier, new_size):
    """``stat``, another client replaces the object, then ``open`` and a read
    within ``metadata_ttl``: the read finds the object changed, and as the
    handle has returned nothing yet it moves to the new version (ESTALE
    before), whole, neither cut at the old size nor padded to it; two such
    handles of one file move together.  A handle that has read old bytes
    still gets ESTALE: no mix."""
    old, new = b"o" * (100 * 1024), b"n" * new_size
    big = b"b" * (16 * MiB)   # more than the first read fetches, with or without the tier
    for key in ("f.bin", "two.bin"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=old)
    s3_client.put_object(Bucket=bucket, Key="g.bin", Body=big)
    opts = ["metadata_ttl=60"] + (["cache_size=0"] if tier == "no-tier" else [])
    m = mount(bucket, options=opts)
    f, g, two = (os.path.join(m.mountpoint, n) for n in ("f.bin", "g.bin", "two.bin"))
    assert os.stat(f).st_size == len(old)   # the lookup's HEAD: the old version
    assert os.stat(two).st_size == len(old)
    with open(g, "rb", buffering=0) as held:
        assert held.read(4096) == big[:4096]
        for key in ("f.bin", "g.bin", "two.bin"):
            s3_client.put_object(Bucket=bucket, Key=key, Body=new)
        with open(f, "rb") as h:
            assert h.read() == new
        assert os.stat(f).st_size == len(new)
        with open(two, "rb") as a, open(two, "rb") as b:
            assert b.read() == new and a.read() == new
        with pytest.raises(OSError) as e:
            held.seek(12 * MiB)
            held.read(4096)
        assert e.value.errno == errno.ESTALE


@pytest.mark.parametrize("tier", ["tier", "no-tier"])
def test_a_file_shortened_since_its_lookup_is_not_padded_with_zeros(mount, bucket, s3_client,
                                                                   tier):
    """``stat`` of a 3 MiB file, another client replaces it with a short one
    (or an empty one), then ``cat`` within ``metadata_ttl``: the kernel sends
    read-ahead requests at 0 and at 1 MiB together, both find the object
    changed and move to the new version.  When the one at 1 MiB, with nothing
    to read, was answered first, the kernel took 1 MiB as the end of the file
    and ignored the end the read at 0 gave: ``cat`` printed the new bytes
    padded with zeros to 1 MiB (in 10-20% of the files, a race).
    (unit: test_a_short_read_answers_after_the_reads_at_lower_offsets_under_way)"""
    old = b"o" * (3 * MiB)
    sizes = [1000, 0, 100_000, 1] * 8
    keys = [f"f{i}" for i in range(len(sizes))]
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=old)
    m = mount(bucket, options=["metadata_ttl=60"] + (["cache_size=0"] if tier == "no-tier"
                                                      else []))
    bad = []
    with m.watchdog(120):
        for key, size in zip(keys, sizes):
            path = os.path.join(m.mountpoint, key)
            assert os.stat(path).st_size == len(old)   # the old version's size
            new = key.encode() * (size // len(key)) + b"n" * (size % len(key))
            s3_client.put_object(Bucket=bucket, Key=key, Body=new)
            got = subprocess.run(["cat", path], capture_output=True, timeout=60, check=True).stdout
            if got != new:
                bad.append((key, size, len(got)))
    assert not bad, f"(key, size, bytes read): {bad}"


@pytest.mark.parametrize("cache", ["tier", "no tier"])
def test_a_file_reopened_after_another_client_grew_it_reads_whole(mount, bucket, s3_client,
                                                                 cache):
    """Open and read a file; another client replaces it with a longer one;
    a stat while it is still open gives the open version's size (the
    kernel keeps it); close, open again: the read returns the whole new
    version, not its bytes cut at the old size."""
    v1, v2 = os.urandom(3 << 20), os.urandom(5 << 20)
    s3_client.put_object(Bucket=bucket, Key="f", Body=v1)
    m = mount(bucket, options=["metadata_ttl=1"] + (["cache_size=0"] if cache == "no tier"
                                                   else []))
    path = os.path.join(m.mountpoint, "f")
    with m.watchdog(60):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.read(fd, 8 << 20) == v1
            s3_client.put_object(Bucket=bucket, Key="f", Body=v2)
            time.sleep(1.5)
            assert os.stat(path).st_size == len(v1)   # the open version's
        finally:
            os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = b""
            while chunk := os.read(fd, 8 << 20):
                got += chunk
        finally:
            os.close(fd)
        assert len(got) == len(v2) and got == v2


@pytest.mark.parametrize("size", [100_000, 5_000_000])
def test_the_first_read_of_a_file_another_client_deleted_is_estale(mount, bucket, s3_client,
                                                                  size):
    """Opened, then deleted by another client before its first read: every
    read gives ESTALE (the kernel's read-ahead found the object gone first,
    and took the inode out of the tree: a read after that gave ENOENT)."""
    s3_client.put_object(Bucket=bucket, Key="f", Body=os.urandom(size))
    m = mount(bucket, options=["metadata_ttl=2"])
    path = os.path.join(m.mountpoint, "f")
    time.sleep(2.5)
    with m.watchdog(60):
        fd = os.open(path, os.O_RDONLY)
        try:
            s3_client.delete_object(Bucket=bucket, Key="f")
            for _ in range(2):
                with pytest.raises(OSError) as e:
                    os.read(fd, 1 << 24)
                assert e.value.errno == errno.ESTALE
        finally:
            os.close(fd)


def test_a_file_opened_right_after_a_close_dropped_its_changes_reads_the_other_version(
        mount, bucket, s3_client):
    """Another client replaces a file this mount had looked up; an append
    here within ``metadata_ttl`` fails at close() with ESTALE and its
    changes are dropped. An open for reading that comes at once, before any
    stat, reads the other client's version. Before, when the kernel's
    release of the failed descriptor came before that open, the file had no
    object version left to read from: the open made an empty file of it,
    and read() and fstat() gave 0 bytes."""
    m = mount(bucket)
    for i in range(8):
        key = f"f{i}"
        s3_client.put_object(Bucket=bucket, Key=key, Body=os.urandom(MiB))  # fetched by GETs
        path = os.path.join(m.mountpoint, key)
        assert os.stat(path).st_size == MiB
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"theirs %d" % i)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"appended")
        finally:
            with pytest.raises(OSError) as e:
                os.close(fd)
        assert e.value.errno == errno.ESTALE
        with open(path, "rb") as f:
            assert f.read() == b"theirs %d" % i
    assert m.unmount() == 0
    assert m.proc.wait(30) == 0
    assert sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]) \
        == [f"f{i}" for i in range(8)]


@pytest.mark.parametrize("other", ["replaces", "deletes"])
@pytest.mark.parametrize("op", ["unlink", "rename over"])
def test_a_name_whose_open_version_another_client_replaced_can_be_removed(
        mount, bucket, s3_client, other, op):
    """A file is open here, partly read; another client replaces (or deletes)
    it; `rm` of the name, or a rename over it (an editor's save), removes what
    the name holds now.  The handle, whose version is no longer in S3, keeps
    what it read and gets ESTALE for the rest, never the other version's
    bytes.  Before, the unlink or rename failed with ESTALE for as long as the
    file stayed open: it first fetched the rest of the open version, to keep
    it for the handle, and S3 no longer had it."""
    v1, v2 = b"1" * (3 << 20), b"2" * (4 << 20)
    s3_client.put_object(Bucket=bucket, Key="f", Body=v1)
    s3_client.put_object(Bucket=bucket, Key="new", Body=b"saved")
    m = mount(bucket, options=["metadata_ttl=1", "cache_size=0", "read_part_size=64K",
                               "prefetch_max=64K"])
    path = os.path.join(m.mountpoint, "f")
    with m.watchdog(60):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.read(fd, 100) == v1[:100]
            if other == "replaces":
                s3_client.put_object(Bucket=bucket, Key="f", Body=v2)
            else:
                s3_client.delete_object(Bucket=bucket, Key="f")
            time.sleep(1.5)
            if op == "unlink":
                if other == "replaces":
                    os.unlink(path)
                else:
                    with pytest.raises(FileNotFoundError):
                        os.unlink(path)
            else:
                os.rename(os.path.join(m.mountpoint, "new"), path)
            keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}
            assert keys == ({"new"} if op == "unlink" else {"f"})
            if op == "rename over":
                assert s3_client.get_object(Bucket=bucket, Key="f")["Body"].read() == b"saved"
                with open(path, "rb") as f:
                    assert f.read() == b"saved"
            else:
                assert not os.path.exists(path)
            got = b""
            try:
                while chunk := os.pread(fd, 1 << 20, len(got)):
                    got += chunk
            except OSError as e:
                assert e.errno == errno.ESTALE
            assert got == v1[:len(got)]
        finally:
            os.close(fd)
