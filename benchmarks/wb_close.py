"""Where the time of a write-back close() goes: N small files created one after
another through ObjectFS with ``-o writeback`` (as the small_files workload
does), timing each open+write+close, against a local S3 server.

    .venv/bin/python benchmarks/wb_close.py [--server moto|swift] [--count 2000]
                                            [--delay 5] [--size 4096]

Prints the total and the percentiles of one file's open+write+close, and from
the daemon's debug log the time the journal spent staging (write and fsync
in the worker thread) per close.  ``--delay 600`` keeps the background
uploads out of the measured window (so the difference to the default delay
is their cost to the closes running beside them).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mounts import ObjectFSMount  # noqa: E402
from tests.support import s3server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="moto", choices=["moto", "swift"])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--delay", default="5")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--code", help="run the daemon from this source tree (A/B comparisons)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="objectfs-wbclose-", dir="/var/tmp"))
    server = (s3server.MotoServer(log_path=str(work / "moto.log")) if a.server == "moto"
              else s3server.SwiftServer(data_dir=str(work / "swift")))
    try:
        for run in range(a.runs):
            bucket = server.new_bucket()
            mp = work / f"mnt{run}"
            mp.mkdir()
            log = work / f"objectfs{run}.log"
            m = ObjectFSMount(server, bucket, str(mp), log_path=str(log), options=[
                "log_level=debug", f"cache_dir={work / f'cache{run}'}",
                f"staging_dir={work / 'staging'}", f"writeback={a.delay}"],
                env={"PYTHONPATH": a.code} if a.code else None)
            try:
                d = mp / "d"
                d.mkdir()
                body = os.urandom(a.size)
                each = []
                t0 = time.perf_counter()
                for i in range(a.count):
                    s = time.perf_counter()
                    with open(d / f"f{i:05d}", "wb", buffering=0) as f:
                        f.write(body)
                    each.append(time.perf_counter() - s)
                total = time.perf_counter() - t0
            finally:
                m.stop()
            text = log.read_text(errors="replace")
            staged = [float(x) for x in re.findall(r"staged in ([0-9.]+) ms", text)]
            synced = [float(x) for x in re.findall(r"ms \(([0-9.]+) ms of it syncing", text)]
            q = statistics.quantiles(each, n=100)
            print(f"{a.code or 'this tree'} run {run}: {a.count} files of {a.size} B, writeback={a.delay}: "
                  f"{total:.2f} s, {total / a.count * 1e3:.2f} ms per file "
                  f"(p50 {q[49] * 1e3:.2f}, p90 {q[89] * 1e3:.2f}, p99 {q[98] * 1e3:.2f} ms)")
            if staged:
                print(f"  journal staging (worker thread, from the event loop): "
                      f"{sum(staged) / 1e3:.2f} s in all, median "
                      f"{statistics.median(staged):.2f} ms per close; of it fsync/fdatasync "
                      f"{sum(synced) / 1e3:.2f} s, median {statistics.median(synced):.2f} ms")
    finally:
        server.stop()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
