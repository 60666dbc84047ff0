"""Resource limits of the daemon, through a real FUSE mount of ObjectFS.

* Write buffers: 16 files written at once stay within ``write_buffer_memory``
  (the daemon's peak RSS, VmHWM, is measured; writers beyond the budget go
  on in staging files instead of waiting for each other), and reading them
  back at once stays within the prefetch memory.
* A full staging disk (a 20 MiB tmpfs as ``staging_dir``) gives ENOSPC to
  the writer; what is in S3 afterwards is exactly the writes that succeeded.
* Running out of file descriptors (the daemon's RLIMIT_NOFILE lowered with
  prlimit) gives the caller EMFILE, and the mount recovers once files close.

The soak run (OBJECTFS_SOAK=1, ``make soak``) writes 16 x 200 MiB with the
default 256M budget.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import resource
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from objectfs.tier.tier import QUEUE_BYTES as TIER_QUEUE_BYTES
from tests.integration.test_hostile import SOAK, reset_peak_rss, vm_kib

MiB = 1 << 20
# RSS an idle daemon may keep after a burst of writers, over what it had before
IDLE_SLACK = 16 * MiB
# seconds the daemon gets to become idle after the last close() returned
IDLE_WAIT = 10.0


# -- write buffers -------------------------------------------------------------------------

def write_in_parallel(m, n_files: int, size: int, budget: int, slack: int) -> dict:
    """Write ``n_files`` files of ``size`` bytes at once; check them in S3
    and that the daemon's peak RSS grew by less than ``budget + slack``."""
    pid, mp = m.proc.pid, m.mountpoint
    chunk = random.Random(7).randbytes(MiB)
    base = vm_kib(pid, "VmRSS") * 1024
    reset_peak_rss(pid)

    def write(i: int) -> None:
        with open(os.path.join(mp, f"w{i:02d}"), "wb") as f:
            for j in range(size // MiB):
                f.write(bytes([i]) + chunk[1:])  # each file's chunks differ from the others'

    t = time.monotonic()
    with ThreadPoolExecutor(n_files) as pool:
        list(pool.map(write, range(n_files)))
    elapsed = time.monotonic() - t
    peak = vm_kib(pid, "VmHWM") * 1024
    figures = {"files": n_files, "size_mib": size // MiB, "budget_mib": budget // MiB,
               "rss_before_mib": base // MiB, "peak_rss_mib": peak // MiB,
               "growth_mib": (peak - base) // MiB, "seconds": round(elapsed, 1)}
    # Every file is closed: uploaded, its buffers freed.  The kernel sends
    # the RELEASE of each file after close() has returned, so the daemon
    # may still be finishing with the last ones: wait a little for idle.
    figures["rss_at_close_mib"] = vm_kib(pid, "VmRSS") // 1024
    deadline = time.monotonic() + IDLE_WAIT
    while True:
        idle = vm_kib(pid, "VmRSS") * 1024
        if idle - base < IDLE_SLACK or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    figures["rss_idle_mib"] = idle // MiB
    print(f"\n16 writers: {figures}")
    assert peak - base < budget + slack, figures
    # freed part buffers go back to the system (mount.tune_malloc), not
    # stay in malloc's arenas
    assert idle - base < IDLE_SLACK, figures
    return figures


def read_in_parallel(m, n_files: int, size: int, budget: int, slack: int) -> dict:
    """Read the files back at once through the mount (sequential reads,
    prefetched): bytes right, peak RSS growth under ``budget + slack``."""
    pid, mp = m.proc.pid, m.mountpoint
    chunk = random.Random(7).randbytes(MiB)
    base = vm_kib(pid, "VmRSS") * 1024
    reset_peak_rss(pid)

    def read(i: int) -> bool:
        want = bytes([i]) + chunk[1:]
        with open(os.path.join(mp, f"w{i:02d}"), "rb", buffering=0) as f:
            return all(f.read(MiB) == want for _ in range(size // MiB)) and f.read(1) == b""

    with ThreadPoolExecutor(n_files) as pool:
        assert all(pool.map(read, range(n_files)))
    peak = vm_kib(pid, "VmHWM") * 1024
    figures = {"read_budget_mib": budget // MiB, "rss_before_mib": base // MiB,
               "peak_rss_mib": peak // MiB, "growth_mib": (peak - base) // MiB}
    print(f"16 readers: {figures}")
    assert peak - base < budget + slack, figures
    return figures


def check_written(s3_client, bucket: str, n_files: int, size: int) -> None:
    chunk = random.Random(7).randbytes(MiB)
    for i in range(n_files):
        body = s3_client.get_object(Bucket=bucket, Key=f"w{i:02d}")["Body"].read()
        assert len(body) == size
        assert body == (bytes([i]) + chunk[1:]) * (size // MiB), f"w{i:02d} differs"
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_sixteen_writers_stay_within_the_write_budget(mount, bucket, s3_client):
    # 16 x 12 MiB with a 32 MiB budget of 5 MiB parts: more writers than parts
    budget, size = 32 * MiB, 12 * MiB
    # prefetch memory: max(write_buffer_memory, 4 x prefetch_max) = 32 MiB
    m = mount(bucket, options=["part_size=5M", f"write_buffer_memory={budget}",
                               "prefetch_max=8M", "read_part_size=1M"])
    write_in_parallel(m, 16, size, budget, slack=48 * MiB)
    check_written(s3_client, bucket, 16, size)
    # the local tier's write-behind queue holds fetched blocks until they are
    # on disk: a second bounded pool beside the read budget
    read_in_parallel(m, 16, size, budget, slack=96 * MiB + TIER_QUEUE_BYTES)
    assert m.proc.poll() is None


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not SOAK, reason="OBJECTFS_SOAK=1 (make soak) writes 16 x 200 MiB")
def test_sixteen_writers_of_200_mib_stay_within_the_default_budget(mount, bucket, s3_client):
    budget, size = 256 * MiB, 200 * MiB
    m = mount(bucket, options=[f"write_buffer_memory={budget}"])
    write_in_parallel(m, 16, size, budget, slack=256 * MiB)
    check_written(s3_client, bucket, 16, size)
    read_in_parallel(m, 16, size, budget, slack=256 * MiB + TIER_QUEUE_BYTES)


# -- a full staging disk -------------------------------------------------------------------

@pytest.fixture
def small_staging(workdir):
    """A 20 MiB tmpfs to stage on, unmounted at the end even on failure."""
    d = workdir / "small-staging"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        # the mount fixture has stopped the daemon by now (fixtures unwind
        # in reverse); a lazy unmount also covers a daemon that still holds it
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_full_staging_disk_gives_enospc_and_keeps_s3_consistent(small_staging, mount, bucket,
                                                                 s3_client):
    rng = random.Random(3)
    original = rng.randbytes(8 * MiB)
    s3_client.put_object(Bucket=bucket, Key="big", Body=original)
    s3_client.put_object(Bucket=bucket, Key="other", Body=b"untouched")
    m = mount(bucket, options=[f"staging_dir={small_staging}"])
    path = os.path.join(m.mountpoint, "big")
    model = bytearray(original)
    error = None
    fd = os.open(path, os.O_RDWR)
    try:
        # random writes (staged, not streamed) over 40 MiB: the tmpfs fills
        for _ in range(400):
            off = rng.randrange(0, 40 * MiB)
            data = rng.randbytes(rng.choice([4096, 100_000, 1 * MiB]))
            try:
                # a short count is a legal answer (the kernel sends a big
                # write as several requests, and a later one failed): the
                # rest is tried again and gives the error
                while data:
                    n = os.pwrite(fd, data, off)
                    assert 0 < n <= len(data)
                    if off > len(model):
                        model.extend(bytes(off - len(model)))
                    model[off:off + n] = data[:n]
                    off, data = off + n, data[n:]
            except OSError as e:
                error = e
                break
        assert error is not None and error.errno == errno.ENOSPC, error
        # what the writer was told is there reads back
        assert os.pread(fd, len(model) + 10, 0) == bytes(model)
        os.fsync(fd)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    # S3 holds exactly the acknowledged writes; the other object is untouched
    assert s3_client.get_object(Bucket=bucket, Key="big")["Body"].read() == bytes(model)
    assert s3_client.get_object(Bucket=bucket, Key="other")["Body"].read() == b"untouched"
    assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # the space is back once the file is closed: staging works again
    with open(os.path.join(m.mountpoint, "other"), "r+b") as f:
        f.seek(2)
        f.write(b"UCHED")
    assert s3_client.get_object(Bucket=bucket, Key="other")["Body"].read() == b"unUCHEDed"
    assert m.proc.poll() is None
    assert "staging disk full" in Path(m.log_path).read_text(errors="replace")


def test_full_cache_disk_gives_enospc_at_close_with_writeback(small_staging, mount, bucket,
                                                               s3_client):
    """cache_dir (local tier and write-back journal) on a 20 MiB tmpfs: a file
    that does not fit fails close() with ENOSPC and S3 keeps the old version;
    reads through the full tier still work, and so does a file that fits."""
    rng = random.Random(4)
    old = rng.randbytes(2 * MiB)
    s3_client.put_object(Bucket=bucket, Key="doc", Body=old)
    m = mount(bucket, options=[f"cache_dir={small_staging}", "writeback=60"])
    path = os.path.join(m.mountpoint, "doc")
    assert open(path, "rb").read() == old  # cached in the tier
    big = rng.randbytes(30 * MiB)
    f = open(path, "wb")
    try:
        f.write(big)
        with pytest.raises(OSError) as ei:
            f.close()  # staging the 30 MiB file durably cannot fit
        assert ei.value.errno == errno.ENOSPC, ei.value
    finally:
        with contextlib.suppress(OSError):
            f.close()
    assert s3_client.get_object(Bucket=bucket, Key="doc")["Body"].read() == old
    small = rng.randbytes(100_000)
    with open(os.path.join(m.mountpoint, "small"), "wb") as g:
        g.write(small)
        g.flush()
        os.fsync(g.fileno())  # fsync: in S3 now, write-back or not
    assert s3_client.get_object(Bucket=bucket, Key="small")["Body"].read() == small
    assert m.proc.poll() is None


def test_a_file_refused_by_a_full_cache_disk_is_uploaded_at_unmount_with_writeback(
        small_staging, mount, bucket, s3_client):
    """With write-back, a close() that the full cache disk refused (ENOSPC)
    leaves the file dirty in the mount, to be tried again at unmount.  The
    unmount tried to stage it before uploading the files filling the disk,
    failed the same way, and exited 1 with the file lost, though the disk
    had room once those were uploaded.  It is tried again after them now."""
    rng = random.Random(5)
    m = mount(bucket, options=[f"cache_dir={small_staging}", "writeback=600"])
    bodies, refused = {}, []
    with m.watchdog(120):
        for i in range(3):
            bodies[f"f{i}"] = rng.randbytes(7 * MiB)
            f = open(os.path.join(m.mountpoint, f"f{i}"), "wb")
            try:
                f.write(bodies[f"f{i}"])
                f.close()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                refused.append(f"f{i}")
                with contextlib.suppress(OSError):
                    f.close()
        assert refused == ["f2"]
        assert m.unmount(timeout=90) == 0
    assert m.proc.wait(timeout=60) == 0, m.log()[-3000:]
    for k, data in bodies.items():
        assert s3_client.get_object(Bucket=bucket, Key=k)["Body"].read() == data, k


# -- file descriptors --------------------------------------------------------------------------

def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_file_descriptor_exhaustion_gives_emfile_and_the_mount_recovers(mount, bucket,
                                                                       s3_client):
    n_files = 40
    for i in range(n_files):
        s3_client.put_object(Bucket=bucket, Key=f"e{i:02d}", Body=b"0123456789")
    m = mount(bucket)
    mp, pid = m.mountpoint, m.proc.pid
    os.listdir(mp)  # connections and the listing come first
    # every file edited in place needs a staging file (one descriptor) in
    # the daemon; leave room for 10
    limit = open_fds(pid) + 10
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, old[1]))
    held, refused = [], []
    try:
        for i in range(n_files):
            fd = os.open(os.path.join(mp, f"e{i:02d}"), os.O_RDWR)
            held.append(fd)
            try:
                os.pwrite(fd, b"X", 3)
            except OSError as e:
                refused.append(e.errno)
        assert refused and set(refused) <= {errno.EMFILE, errno.ENFILE}, refused
        assert len(refused) < n_files
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
        for fd in held[:-1]:
            with contextlib.suppress(OSError):
                os.close(fd)
    os.close(held[-1])  # closes (uploads) succeed again
    # the edits that were accepted are in S3, the refused ones left no trace
    bodies = [s3_client.get_object(Bucket=bucket, Key=f"e{i:02d}")["Body"].read()
              for i in range(n_files)]
    assert bodies.count(b"012X456789") == n_files - len(refused)
    assert bodies.count(b"0123456789") == len(refused)
    # descriptors are back: the mount works as before
    with open(os.path.join(mp, "e00"), "r+b") as f:
        f.seek(0)
        f.write(b"Y")
    assert s3_client.get_object(Bucket=bucket, Key="e00")["Body"].read()[:1] == b"Y"
    assert m.proc.poll() is None


# -- the inode table -----------------------------------------------------------------------

def drop_kernel_caches() -> None:
    """Have the kernel evict every dentry and inode not in use (it sends
    FORGET for each of ours), as memory pressure would."""
    Path("/proc/sys/vm/drop_caches").write_text("2")


def test_inodes_the_kernel_forgets_are_pruned_and_come_back_the_same(mount, bucket,
                                                                      s3_client):
    """The daemon keeps an inode while the kernel holds it, a file is open or
    unsaved, or it was seen lately (OBJECTFS_INODE_IDLE, 1 s here; 60 s by
    default). Once the kernel forgets the rest they leave the table, and
    coming back to them (listings, stats, reads, renames) finds them as
    before, also while the kernel keeps forgetting under a stat and read loop."""
    from tests.integration.test_observability import scrape, value
    from tests.support.s3server import free_port

    names = [f"f{i:03d}" for i in range(300)]
    for n in names:
        s3_client.put_object(Bucket=bucket, Key=f"d/{n}", Body=n.encode() * 3)
    for i in range(20):
        s3_client.put_object(Bucket=bucket, Key=f"d/sub/g{i}", Body=b"g" * i)
    port = free_port()
    m = mount(bucket, options=[f"metrics_port={port}", "metadata_ttl=1"],
              env={"OBJECTFS_INODE_IDLE": "1"})
    d = Path(m.mountpoint) / "d"

    def seen() -> list:
        return sorted((p.relative_to(d).as_posix(), p.stat().st_size, p.stat().st_mode)
                      for p in d.rglob("*"))

    def inodes() -> float:
        return value(scrape(port), "objectfs_inodes")

    before = seen()
    assert len(before) == 321 and inodes() >= 322
    kept = open(d / "f000", "rb")            # open: stays
    unsaved = open(d / "new", "wb")          # written, not closed: stays
    unsaved.write(b"not in S3 yet")
    try:
        deadline = time.monotonic() + 60
        while inodes() > 10:
            assert time.monotonic() < deadline, f"{inodes()} inodes left after 60 s"
            drop_kernel_caches()
            time.sleep(0.5)
        assert kept.read() == b"f000" * 3
        unsaved.write(b", still")
    finally:
        kept.close()
        unsaved.close()
    assert s3_client.get_object(Bucket=bucket, Key="d/new")["Body"].read() == \
        b"not in S3 yet, still"
    assert [e for e in seen() if e[0] != "new"] == before
    # renames and removals of names pruned since
    drop_kernel_caches()
    time.sleep(3)
    os.rename(d / "f001", d / "sub" / "moved")
    os.unlink(d / "f002")
    os.rename(d / "sub", d / "sub2")
    assert (d / "sub2" / "moved").read_bytes() == b"f001" * 3
    assert sorted(os.listdir(d / "sub2")) == sorted([f"g{i}" for i in range(20)] + ["moved"])
    assert not (d / "f002").exists() and not (d / "sub").exists()

    # stats and reads while the kernel keeps forgetting and the daemon pruning
    errors: list = []
    stop = time.monotonic() + 8
    rng = random.Random(3)

    def reader() -> None:
        while time.monotonic() < stop:
            n = rng.choice(names[3:])
            try:
                assert os.stat(d / n).st_size == 12
                assert (d / n).read_bytes() == n.encode() * 3
                assert len(os.listdir(d / "sub2")) == 21
            except (OSError, AssertionError) as e:
                errors.append(f"{n}: {e!r}")

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(reader) for _ in range(2)]
        while time.monotonic() < stop:
            drop_kernel_caches()
            time.sleep(0.2)
        for f in futures:
            f.result()
    assert not errors, errors[:5]
    assert "Traceback" not in Path(m.log_path).read_text()
