"""Read a large file twice through a mount: from S3, then again (local tier).

For each filesystem a fresh mount reads the whole file (the first read comes
from S3), the kernel's pages of the file are dropped (POSIX_FADV_DONTNEED),
and the file is read again, which a local cache serves.  ObjectFS is run with
its tier off (``cache_size=0``) and on, and rclone with ``--vfs-cache-mode
full`` as the bar to beat.  A quick run, not a test:

    PYTHONPATH=. .venv/bin/python benchmarks/tier_read.py [--server swift|moto] [--mib 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from objectfs import control  # noqa: E402
from tests.support.mounts import ObjectFSMount, RcloneMount  # noqa: E402
from tests.support.s3server import start_server  # noqa: E402

CHUNK = 1 << 20


def read_all(path: str) -> float:
    """MiB/s of one whole read of ``path``, served by the filesystem."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t = time.perf_counter()
        n = 0
        while True:
            b = os.read(fd, CHUNK)
            if not b:
                break
            n += len(b)
        return n / (time.perf_counter() - t) / 2 ** 20
    finally:
        os.close(fd)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="swift", choices=["swift", "moto"])
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds between the reads (lets write-behind finish)")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="objectfs-tierread-", dir="/var/tmp")
    server = start_server(args.server)
    try:
        bucket = server.new_bucket()
        src = os.path.join(work, "src")
        with open(src, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(CHUNK))
        server.client().upload_file(src, bucket, "big")
        os.unlink(src)
        cases = {
            "objectfs, tier off": lambda mp: ObjectFSMount(
                server, bucket, mp, options=["cache_size=0", f"staging_dir={work}/st"]),
            "objectfs, tier on": lambda mp: ObjectFSMount(
                server, bucket, mp, options=[f"cache_dir={work}/tier", f"staging_dir={work}/st"]),
            "rclone --vfs-cache-mode full": lambda mp: RcloneMount(server, bucket, mp),
        }
        print(f"{args.mib} MiB file on {args.server}: MiB/s of a whole sequential read")
        print(f"{'filesystem':32} {'1st (S3)':>9} {'2nd':>9}")
        for name, make in cases.items():
            mp = tempfile.mkdtemp(dir=work)
            m = make(mp)
            try:
                first = read_all(os.path.join(mp, "big"))
                time.sleep(args.settle)
                second = read_all(os.path.join(mp, "big"))
                note = ""
                if "tier on" in name:
                    s = control.request(m.mountpoint, {"op": "cache_stats"})
                    note = (f"  (tier: {s['hits']} block hits, {s['misses']} misses, "
                            f"{s['skipped']} skipped)")
            finally:
                m.stop()
            print(f"{name:32} {first:9.0f} {second:9.0f}{note}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
