"""The local tier through the real mount, against moto on loopback.

S3 requests are counted from the moto server's own request log (one line
per request), so nothing in ObjectFS is patched or trusted for the count.
Before a read that must reach the daemon, the file's pages are dropped from
the kernel's page cache (POSIX_FADV_DONTNEED), so the read is served by
ObjectFS and not by the kernel.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from objectfs import control
from objectfs.tier.blockfile import HEADER
from objectfs.tier.store import disk_bytes
from tests.conftest import fuse_usable
from tests.support.s3server import MotoServer

pytestmark = pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))

MiB = 1 << 20


@pytest.fixture(scope="module")
def logged_s3(tmp_path_factory):
    """A moto server of this module's own, whose request log we read."""
    log = tmp_path_factory.mktemp("moto-tier") / "requests.log"
    server = MotoServer(log_path=str(log))
    server.log_path = log
    try:
        yield server
    finally:
        server.stop()


def gets(server, bucket: str, key: str) -> int:
    """GetObject requests for ``key`` the server has answered so far."""
    pat = re.compile(r'"(?:\x1b\[[0-9;]*m)*GET /' + re.escape(f"{bucket}/{key}") + r' HTTP')
    return sum(1 for line in Path(server.log_path).read_text(errors="replace").splitlines()
               if pat.search(line))


def stats(m) -> dict:
    return control.request(m.mountpoint, {"op": "cache_stats"}, timeout=30)


def settle(m, blocks: int | None = None, timeout: float = 60) -> dict:
    """Wait until the write-behind queue is empty (and ``blocks`` are cached)."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(m)
        if s["queued_bytes"] == 0 and (blocks is None or s["blocks"] >= blocks):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"the tier did not settle: {s}")
        time.sleep(0.05)


def read_uncached(path) -> bytes:
    """Read ``path`` through the daemon, not the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def block_files(workdir) -> list[Path]:
    return sorted(p for p in (Path(workdir) / "cache" / "data").rglob("*") if p.is_file())


def test_second_read_is_served_from_the_tier_without_any_get(mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    data = blob(3 * MiB + 123, 1)
    logged_s3.client().put_object(Bucket=bucket, Key="f.bin", Body=data)
    m = mount(bucket, server=logged_s3)
    f = Path(m.mountpoint) / "f.bin"
    assert read_uncached(f) == data
    settle(m, blocks=4)
    before = gets(logged_s3, bucket, "f.bin")
    assert before >= 1
    for _ in range(2):
        assert read_uncached(f) == data
    assert gets(logged_s3, bucket, "f.bin") == before
    s = stats(m)
    assert s["hits"] == 8 and s["used"] <= s["limit"]  # each block loaded once per read


def test_cached_reads_go_on_while_s3_is_stopped_and_uncached_reads_fail_with_eio(
        mount, workdir, tmp_path):
    server = MotoServer(log_path=str(tmp_path / "moto.log"))
    try:
        bucket = server.new_bucket()
        c = server.client()
        hot, cold = blob(2 * MiB + 5, 2), blob(3 * MiB, 3)
        c.put_object(Bucket=bucket, Key="d/hot", Body=hot)
        c.put_object(Bucket=bucket, Key="d/cold", Body=cold)
        m = mount(bucket, server=server,
                  options=["metadata_ttl=1", "retries=1", "connect_timeout=1", "read_timeout=2"])
        d = Path(m.mountpoint) / "d"
        assert sorted(os.listdir(d)) == ["cold", "hot"]
        assert read_uncached(d / "hot") == hot
        assert os.stat(d / "cold").st_size == len(cold)
        settle(m, blocks=3)
        server.stop()
        time.sleep(1.5)  # past metadata_ttl: every lookup now tries S3 first
        assert read_uncached(d / "hot") == hot
        assert os.stat(d / "hot").st_size == len(hot)
        assert sorted(os.listdir(d)) == ["cold", "hot"]
        with pytest.raises(OSError) as e:
            read_uncached(d / "cold")
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:  # not in the last listing of d
            os.stat(d / "new")
        assert e.value.errno == errno.ENOENT
        with pytest.raises(OSError) as e:  # never seen, and the root's listing is stale
            os.stat(Path(m.mountpoint) / "other")
        assert e.value.errno == errno.EIO
        assert read_uncached(d / "hot") == hot  # still fine after the failure
    finally:
        server.stop()


def test_the_bound_holds_over_a_random_workload(mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    c = logged_s3.client()
    rnd = random.Random(4)
    objects = {f"o{i}": blob(rnd.randint(1, 1600) * 1024, 10 + i) for i in range(12)}
    for k, v in objects.items():
        c.put_object(Bucket=bucket, Key=k, Body=v)
    limit = 3 * MiB
    m = mount(bucket, server=logged_s3, options=[f"cache_size={limit}"])
    for step in range(60):
        k = rnd.choice(sorted(objects))
        want = objects[k]
        fd = os.open(Path(m.mountpoint) / k, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            off = rnd.randrange(len(want))
            n = rnd.choice([4096, 128 * 1024, len(want)])
            assert os.pread(fd, n, off) == want[off:off + n]
        finally:
            os.close(fd)
        if step % 10 == 9:
            s = settle(m)
            on_disk = sum(max(p.stat().st_blocks * 512, p.stat().st_size)
                          for p in block_files(workdir))
            assert s["used"] <= limit and on_disk <= limit, (s, on_disk)
    assert stats(m)["hits"] > 0


def test_a_corrupted_block_is_detected_and_refetched(mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    data = blob(MiB + 77, 5)
    logged_s3.client().put_object(Bucket=bucket, Key="c.bin", Body=data)
    m = mount(bucket, server=logged_s3)
    f = Path(m.mountpoint) / "c.bin"
    assert read_uncached(f) == data
    settle(m, blocks=2)
    files = block_files(workdir)
    assert len(files) == 2
    victim = max(files, key=lambda p: p.stat().st_size)  # block 0, 1 MiB
    with open(victim, "r+b") as fh:
        fh.seek(500_000)
        fh.write(b"\xff\x00\xff\x00")
    before = gets(logged_s3, bucket, "c.bin")
    assert read_uncached(f) == data
    assert gets(logged_s3, bucket, "c.bin") > before
    assert stats(m)["corrupt"] == 1
    settle(m, blocks=2)  # the refetched block is cached again
    before = gets(logged_s3, bucket, "c.bin")
    assert read_uncached(f) == data
    assert gets(logged_s3, bucket, "c.bin") == before


def test_a_truncated_block_file_is_never_served(mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    data = blob(200_000, 6)
    logged_s3.client().put_object(Bucket=bucket, Key="t", Body=data)
    m = mount(bucket, server=logged_s3)
    assert read_uncached(Path(m.mountpoint) / "t") == data
    settle(m, blocks=1)
    (victim,) = block_files(workdir)
    os.truncate(victim, victim.stat().st_size // 2)
    assert read_uncached(Path(m.mountpoint) / "t") == data
    assert stats(m)["corrupt"] == 1


def test_a_remount_reuses_the_persisted_tier(mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    data = blob(2 * MiB + 9, 7)
    logged_s3.client().put_object(Bucket=bucket, Key="r.bin", Body=data)
    m = mount(bucket, server=logged_s3)
    assert read_uncached(Path(m.mountpoint) / "r.bin") == data
    settle(m, blocks=3)
    m.stop()
    before = gets(logged_s3, bucket, "r.bin")
    m2 = mount(bucket, server=logged_s3)
    assert read_uncached(Path(m2.mountpoint) / "r.bin") == data
    assert gets(logged_s3, bucket, "r.bin") == before
    assert stats(m2)["hits"] == 3


def test_an_object_changed_by_another_client_is_refetched_after_metadata_ttl(
        mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    c = logged_s3.client()
    v1, v2 = blob(MiB + 1, 8), blob(MiB + 1, 9)
    c.put_object(Bucket=bucket, Key="v", Body=v1)
    m = mount(bucket, server=logged_s3, options=["metadata_ttl=1"])
    f = Path(m.mountpoint) / "v"
    assert read_uncached(f) == v1
    settle(m, blocks=2)
    c.put_object(Bucket=bucket, Key="v", Body=v2)
    time.sleep(1.5)
    assert read_uncached(f) == v2
    settle(m)
    assert stats(m)["objects"] == 1  # the old version was dropped


def test_cache_commands_warm_pin_unpin_evict_and_stats(mount, logged_s3, workdir, objectfs_cli):
    bucket = logged_s3.new_bucket()
    c = logged_s3.client()
    files = {"t/a": blob(1500_000, 11), "t/sub/b": blob(10_000, 12), "t/sub/c": blob(1, 13)}
    for k, v in files.items():
        c.put_object(Bucket=bucket, Key=k, Body=v)
    m = mount(bucket, server=logged_s3)
    mp = Path(m.mountpoint)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = objectfs_cli("cache", "warm", str(mp / "t"), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("warmed ") == 3  # not a terminal: one line per file
    assert "3 of 3 file(s) wholly in the local tier, 1.4 MiB kept" in r.stdout
    before = {k: gets(logged_s3, bucket, k) for k in files}
    for k, v in files.items():
        assert read_uncached(mp / k) == v
    assert {k: gets(logged_s3, bucket, k) for k in files} == before
    r = objectfs_cli("cache", "stats", str(mp), "--json", env=env)
    s = json.loads(r.stdout)
    assert s["objects"] == 3 and s["blocks"] == 4 and s["used"] <= s["limit"]
    r = objectfs_cli("cache", "stats", str(mp), env=env)
    assert "4 blocks of 3 objects" in r.stdout

    r = objectfs_cli("cache", "pin", str(mp / "t" / "sub"), env=env)
    assert r.returncode == 0 and "pinned" in r.stdout, r.stderr
    r = objectfs_cli("cache", "evict", str(mp / "t"), env=env)
    assert r.returncode == 0, r.stderr
    assert "2 pinned blocks kept" in r.stdout
    s = stats(m)
    assert s["objects"] == 2 and s["pinned_bytes"] > 0
    r = objectfs_cli("cache", "unpin", str(mp / "t"), env=env)
    assert r.returncode == 0 and "1 pin rules removed" in r.stdout
    r = objectfs_cli("cache", "evict", str(mp / "t" / "sub" / "b"), env=env)
    assert "evicted" in r.stdout
    assert stats(m)["objects"] == 1
    r = objectfs_cli("cache", "warm", "/tmp", env=env)
    assert r.returncode == 1 and "not on an ObjectFS mount" in r.stderr


def test_cache_pin_option_and_whole_file_reads(mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    c = logged_s3.client()
    small = blob(3 * MiB, 14)
    c.put_object(Bucket=bucket, Key="keep/x.db", Body=small)
    m = mount(bucket, server=logged_s3, options=["cache_pin=keep/*.db"])
    fd = os.open(Path(m.mountpoint) / "keep" / "x.db", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 2 * MiB) == small[2 * MiB:2 * MiB + 100]
    finally:
        os.close(fd)
    s = settle(m, blocks=3)  # fetched whole on the first read: up to cache_whole_file_max
    assert s["pinned_bytes"] >= 3 * MiB
    before = gets(logged_s3, bucket, "keep/x.db")
    assert read_uncached(Path(m.mountpoint) / "keep" / "x.db") == small
    assert gets(logged_s3, bucket, "keep/x.db") == before


def test_a_file_written_through_the_mount_is_read_back_from_the_tier(mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    m = mount(bucket, server=logged_s3)
    data = blob(2 * MiB + 3, 15)
    (Path(m.mountpoint) / "w.bin").write_bytes(data)
    settle(m, blocks=3)
    assert logged_s3.client().get_object(Bucket=bucket, Key="w.bin")["Body"].read() == data
    before = gets(logged_s3, bucket, "w.bin")
    assert read_uncached(Path(m.mountpoint) / "w.bin") == data
    assert gets(logged_s3, bucket, "w.bin") == before


def test_mounts_of_two_buckets_share_one_cache_dir_and_its_bound(mount, logged_s3, workdir):
    c = logged_s3.client()
    buckets = [logged_s3.new_bucket(), logged_s3.new_bucket()]
    data = {b: blob(2 * MiB, i) for i, b in enumerate(buckets)}
    for b in buckets:
        c.put_object(Bucket=b, Key="same-key", Body=data[b])
    # room for three of the four blocks (as the store counts a block file's disk space)
    limit = 3 * disk_bytes(HEADER.size + MiB)
    mounts = [mount(b, server=logged_s3, options=[f"cache_size={limit}"]) for b in buckets]
    for m, b in zip(mounts, buckets):
        assert read_uncached(Path(m.mountpoint) / "same-key") == data[b]
        settle(m)
    s0, s1 = stats(mounts[0]), stats(mounts[1])
    assert s0["used"] == s1["used"] <= limit and s0["objects"] == 2 and s0["blocks"] == 3
    on_disk = sum(max(p.stat().st_blocks * 512, p.stat().st_size) for p in block_files(workdir))
    assert on_disk <= limit
    for m, b in zip(mounts, buckets):  # same key, other bucket: never mixed up
        assert read_uncached(Path(m.mountpoint) / "same-key") == data[b]


@pytest.mark.parametrize("fill", ["default", "off"])
def test_a_file_read_at_random_is_fetched_whole_in_the_background(mount, logged_s3, workdir,
                                                                   fill):
    bucket = logged_s3.new_bucket()
    data = blob(12 * MiB + 77, 9)
    logged_s3.client().put_object(Bucket=bucket, Key="r.bin", Body=data)
    m = mount(bucket, server=logged_s3,
              options=["cache_fill_max=0"] if fill == "off" else [])
    f = Path(m.mountpoint) / "r.bin"
    fd = os.open(f, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for off in (9 * MiB + 4096, 2 * MiB + 8192):  # two reads out of sequence
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
    finally:
        os.close(fd)
    if fill == "off":  # each read fetched its own bytes only, and cached nothing
        s = settle(m)
        assert s["blocks"] == 0 and s["fills"] == 0
        return
    s = settle(m, blocks=13)  # every block, fetched in the background
    assert s["fills"] == 1 and s["used"] <= s["limit"]
    before = gets(logged_s3, bucket, "r.bin")
    # the first read's own bytes, then the fill's two GETs (8 MiB, the rest):
    # the second read waited for the fill instead of asking for its bytes too
    assert before == 3
    assert read_uncached(f) == data
    assert gets(logged_s3, bucket, "r.bin") == before


def test_a_file_too_big_for_half_the_tier_is_not_filled(mount, logged_s3, workdir):
    """A fill of a file the tier cannot keep (or could keep only by evicting
    everything else) is not started: with cache_size=16M, two random reads of
    a 12 MiB file used to pull all 12 MiB in the background at every open,
    evicting the rest of the tier, and the next open's reads missed again."""
    bucket = logged_s3.new_bucket()
    data = blob(12 * MiB + 77, 19)
    logged_s3.client().put_object(Bucket=bucket, Key="r.bin", Body=data)
    m = mount(bucket, server=logged_s3, options=["cache_size=16M"])
    f = Path(m.mountpoint) / "r.bin"
    before = m.metric("objectfs_s3_received_bytes_total")
    for _ in range(2):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for off in (9 * MiB + 4096, 2 * MiB + 8192, 5 * MiB):  # out of sequence
                assert os.pread(fd, 4096, off) == data[off:off + 4096]
        finally:
            os.close(fd)
    s = settle(m)
    assert s["fills"] == 0
    # each random read fetched its own bytes (at least 64 KiB), not the file
    assert m.metric("objectfs_s3_received_bytes_total") - before <= 6 * 64 * 1024


def test_a_random_read_fetches_only_its_bytes_until_its_block_is_read_a_third_time(
        mount, logged_s3, workdir):
    bucket = logged_s3.new_bucket()
    data = blob(12 * MiB + 77, 11)
    logged_s3.client().put_object(Bucket=bucket, Key="r.bin", Body=data)
    m = mount(bucket, server=logged_s3, options=["cache_fill_max=0"])
    fd = os.open(Path(m.mountpoint) / "r.bin", os.O_RDONLY)
    try:
        def pread(off: int) -> float:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            before = m.metric("objectfs_s3_received_bytes_total")
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
            return m.metric("objectfs_s3_received_bytes_total") - before

        # first touch of blocks 9 and 2: a small GET each (64 KiB), nothing cached
        assert pread(9 * MiB + 4096) <= 64 * 1024
        assert pread(2 * MiB + 8192) <= 64 * 1024
        assert settle(m)["blocks"] == 0
        # block 9 again, elsewhere in it: still its own bytes only
        assert pread(9 * MiB + 300_000) <= 64 * 1024
        assert settle(m)["blocks"] == 0
        # a third time: now the whole block, into the tier
        assert pread(9 * MiB + 500_000) == MiB
        assert settle(m, blocks=1)["blocks"] == 1
        before = gets(logged_s3, bucket, "r.bin")
        assert pread(9 * MiB + 900_000) == 0  # from the tier
        assert pread(9 * MiB + 4096) == 0
        assert gets(logged_s3, bucket, "r.bin") == before
    finally:
        os.close(fd)
    # a sequential read after a random one still goes by whole blocks
    assert read_uncached(Path(m.mountpoint) / "r.bin") == data
    assert settle(m, blocks=13)["blocks"] == 13


def test_cache_warm_reports_what_the_tier_kept(mount, logged_s3, objectfs_cli):
    """A file bigger than cache_size is not kept (a block goes in only with
    room for it): warm says so and exits 1, rather than reporting it in the
    tier; a file being written is not warmed either."""
    bucket = logged_s3.new_bucket()
    logged_s3.client().put_object(Bucket=bucket, Key="big", Body=blob(12 * MiB, 16))
    m = mount(bucket, server=logged_s3, options=["cache_size=8M"])
    mp = Path(m.mountpoint)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = objectfs_cli("cache", "warm", str(mp / "big"), env=env)
    assert r.returncode == 1
    assert "only 0 B of 12.0 MiB fit in the local tier" in r.stderr, r.stderr
    assert "0 of 1 file(s) wholly in the local tier, 0 B kept" in r.stdout, r.stdout
    # another process writes a file and keeps it open (a descriptor of
    # ours would be closed in the command's child, and a close uploads)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         f"f = open({str(mp / 'new')!r}, 'wb'); f.write(b'not in S3 yet'); f.flush()\n"
         "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        r = objectfs_cli("cache", "warm", str(mp / "new"), env=env)
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    assert r.returncode == 1 and "cannot warm" in r.stderr and "not in S3 yet" in r.stderr, \
        r.stderr


def test_cache_commands_say_why_the_tier_is_off(mount, logged_s3, workdir, objectfs_cli):
    """cache_size=0, or a tier directory the mount could not use (a damaged
    tier.db: the mount works without the tier and logs why): the cache
    commands say which, in one line."""
    bucket = logged_s3.new_bucket()
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    m = mount(bucket, server=logged_s3, options=["cache_size=0"])
    r = objectfs_cli("cache", "stats", m.mountpoint, env=env)
    assert r.returncode == 1 and "disabled on this mount (cache_size=0)" in r.stderr, r.stderr
    m.stop()
    damaged = workdir / "damaged"
    damaged.mkdir()
    (damaged / "tier.db").write_bytes(b"not a database" * 100)
    m = mount(bucket, server=logged_s3, options=[f"cache_dir={damaged}"])
    r = objectfs_cli("cache", "stats", m.mountpoint, env=env)
    assert r.returncode == 1 and "could not be used at mount" in r.stderr, r.stderr
    assert "local tier disabled" in m.log()
