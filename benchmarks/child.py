"""One benchmark phase, run in its own process: ``python -m benchmarks.child OP JSON``.

The orchestrator (run.py) never touches a mountpoint itself: every access to a
filesystem under test happens here, in a child process it can time out and
kill (with the mount's watchdog aborting the FUSE connection first, so a child
stuck in a syscall wakes up).  Timing happens here too, around the operation
only (interpreter start-up and imports are not timed), with
``time.monotonic()``, which is the same clock in every process, so the parent
can measure "time until durable in S3" from the child's start timestamp.

Each operation has two implementations: ``fs`` (POSIX calls and standard
tools on the mounted tree at ``root``) and ``s3`` (raw boto3 against the
bucket, with a tuned TransferConfig and a thread pool where a tuned native
client would use one).  The result is one JSON object on stdout with at least
``t0``/``t1`` (monotonic start/end of the timed part), ``cpu`` (this process's
CPU seconds during it) and ``rss_kb`` (this process's peak RSS during it).
Data that is read back is checked against the deterministic stream it was
written from (``datagen``); a mismatch is reported as ``error``.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tarfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from benchmarks import datagen
from benchmarks.datagen import KiB, MiB, Data, SegmentSink, small_file_content


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Timer:
    def __enter__(self):
        _reset_hwm()
        self.c0 = _cpu()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.t1 = time.monotonic()
        self.cpu = _cpu() - self.c0
        # the data generator's pool is harness memory, not the client's
        self.rss_kb = max(0, _hwm_kb() - datagen.allocated // KiB)

    def result(self, **extra) -> dict:
        return dict(t0=self.t0, t1=self.t1, cpu=self.cpu, rss_kb=self.rss_kb, **extra)


# ---------------------------------------------------------------- s3 helpers

def _client(a: dict):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=a["endpoint"], region_name=a.get("region", "us-east-1"),
        config=Config(s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required",
                      retries={"mode": "standard", "max_attempts": 3},
                      max_pool_connections=a["concurrency"] + 4))


def _tconfig(a: dict):
    from boto3.s3.transfer import TransferConfig

    chunk = a["chunk_mib"] * MiB
    return TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                          max_concurrency=a["concurrency"], use_threads=True,
                          preferred_transfer_client="classic")


def _pool(a: dict) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=a["concurrency"])


def _list(s3, bucket: str, prefix: str, delimiter: str | None = None) -> list[dict]:
    kw = dict(Bucket=bucket, Prefix=prefix)
    if delimiter:
        kw["Delimiter"] = delimiter
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(**kw):
        out += page.get("Contents", [])
        out += [{"Key": p["Prefix"]} for p in page.get("CommonPrefixes", [])]
    return out


def _delete_keys(s3, bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        r = s3.delete_objects(Bucket=bucket, Delete={
            "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        if r.get("Errors"):
            raise RuntimeError(f"delete_objects: {r['Errors'][0]}")


def _map(a: dict, fn, items) -> list:
    with _pool(a) as ex:
        return list(ex.map(fn, items))


# ---------------------------------------------------------------- operations
# Each op(a) -> dict.  a["mode"] is "fs" (a["root"] = mountpoint) or "s3"
# (a["endpoint"], a["bucket"]).  Keys/paths are relative ("r1-x/y").


def op_write_seq(a):
    data = Data(a["seed"])
    size, start = a["size"], a.get("start", 0)
    if a["mode"] == "s3":
        s3, cfg = _client(a), _tconfig(a)
        with Timer() as t:
            s3.upload_fileobj(data.reader(start, size), a["bucket"], a["key"], Config=cfg)
        return t.result()
    path = os.path.join(a["root"], a["key"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with Timer() as t:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for piece in data.pieces(start, size):
                while piece:
                    n = os.write(fd, piece)
                    piece = piece[n:]
        finally:
            os.close(fd)
    return t.result()


def op_append(a):
    data = Data(a["seed"])
    start, size = a["start"], a["size"]
    payload = data.read(start, size)
    if a["mode"] == "s3":
        # S3 has no append.  The cheapest native way: a multipart upload whose
        # part 1 is a server-side copy of the existing object and part 2 the
        # new bytes (the last part may be smaller than 5 MiB).
        s3, b, k = _client(a), a["bucket"], a["key"]
        with Timer() as t:
            up = s3.create_multipart_upload(Bucket=b, Key=k)["UploadId"]
            try:
                p1 = s3.upload_part_copy(Bucket=b, Key=k, UploadId=up, PartNumber=1,
                                         CopySource={"Bucket": b, "Key": k})
                p2 = s3.upload_part(Bucket=b, Key=k, UploadId=up, PartNumber=2, Body=payload)
                s3.complete_multipart_upload(
                    Bucket=b, Key=k, UploadId=up, MultipartUpload={"Parts": [
                        {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]},
                        {"PartNumber": 2, "ETag": p2["ETag"]}]})
            except Exception:
                s3.abort_multipart_upload(Bucket=b, Key=k, UploadId=up)
                raise
        return t.result(method="multipart upload_part_copy + upload_part")
    path = os.path.join(a["root"], a["key"])
    with Timer() as t:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    return t.result()


def op_read_seq(a):
    size, expect = a["size"], a["expect_crc"]
    if a["mode"] == "s3":
        s3, cfg = _client(a), _tconfig(a)
        sink = SegmentSink()  # crc32 of each piece as it arrives, like the fs path
        with Timer() as t:
            s3.download_fileobj(a["bucket"], a["key"], sink, Config=cfg)
        err = sink.check(Data(a["seed"]), 0, size)
        return t.result(error=f"boto3 download: {err}" if err else None)
    path = os.path.join(a["root"], a["key"])
    buf = bytearray(MiB)
    view = memoryview(buf)
    crc = got = 0
    with Timer() as t:
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                n = os.readv(fd, [view])
                if n == 0:
                    break
                crc = zlib.crc32(view[:n], crc)
                got += n
        finally:
            os.close(fd)
    err = None
    if got != size:
        err = f"read {got} bytes, expected {size}"
    elif crc != expect:
        err = "data read back differs from data written (crc32)"
    return t.result(bytes=got, error=err)


def op_pread(a):
    data = Data(a["seed"])
    size, n, bs = a["size"], a["count"], a.get("bs", 4 * KiB)
    rnd = random.Random(a["offset_seed"])
    offsets = [rnd.randrange(size // bs) * bs for _ in range(n)]
    got = []
    if a["mode"] == "s3":
        s3 = _client(a)
        with Timer() as t:
            for off in offsets:
                r = s3.get_object(Bucket=a["bucket"], Key=a["key"],
                                  Range=f"bytes={off}-{off + bs - 1}")
                got.append(r["Body"].read())
    else:
        path = os.path.join(a["root"], a["key"])
        with Timer() as t:
            fd = os.open(path, os.O_RDONLY)
            try:
                for off in offsets:
                    got.append(os.pread(fd, bs, off))
            finally:
                os.close(fd)
    bad = sum(1 for off, g in zip(offsets, got) if g != data.read(off, bs))
    err = f"{bad} of {n} random reads returned wrong data" if bad else None
    return t.result(error=err)


def op_mkdir(a):
    with Timer() as t:
        if a["mode"] == "fs":
            os.makedirs(os.path.join(a["root"], a["dir"]), exist_ok=True)
    return t.result()


def _names(n: int) -> list[str]:
    return [f"f{i:05d}" for i in range(n)]


def op_create_files(a):
    data = Data(a["seed"])
    names = _names(a["count"])
    contents = [small_file_content(data, i, a["fsize"]) for i in range(a["count"])]
    if a["mode"] == "s3":
        s3, b, d = _client(a), a["bucket"], a["dir"]

        def put(i):
            s3.put_object(Bucket=b, Key=f"{d}/{names[i]}", Body=contents[i])

        with Timer() as t:
            _map(a, put, range(len(names)))
        return t.result()
    base = os.path.join(a["root"], a["dir"])
    with Timer() as t:
        for name, body in zip(names, contents):
            with open(os.path.join(base, name), "wb", buffering=0) as f:
                f.write(body)
    return t.result()


def _run_timed(argv: list[str]) -> tuple[Timer, str, str | None]:
    """Run a command, timed: its output, and what went wrong if it failed."""
    with Timer() as t:
        r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        return t, r.stdout, f"{argv[0]} exited {r.returncode}: {r.stderr.strip()[:200]}"
    return t, r.stdout, None


def op_ls(a):
    """``ls -ln`` of dir (numeric owners: the same stat calls as ``ls -l``).
    With ``perms``, ``uid`` and ``gid`` the result also counts the entries
    shown with that mode string and owner (``shown_as_stored``)."""
    if a["mode"] == "s3":
        s3 = _client(a)
        with Timer() as t:
            entries = _list(s3, a["bucket"], a["dir"] + "/", delimiter="/")
        count = len(entries)
        extra = {}
    else:
        t, out, err = _run_timed(["ls", "-ln", os.path.join(a["root"], a["dir"])])
        if err:
            return t.result(error=err)
        rows = [line.split() for line in out.splitlines()
                if line and not line.startswith("total ")]
        count = len(rows)
        extra = {}
        if "perms" in a:
            want = [a["perms"], str(a["uid"]), str(a["gid"])]
            extra["shown_as_stored"] = sum(1 for f in rows if [f[0], f[2], f[3]] == want)
    err = None if count == a["count"] else f"ls saw {count} entries, expected {a['count']}"
    return t.result(entries=count, error=err, **extra)


def op_find(a):
    """``find dir`` (names only: no stat a file is needed): every entry."""
    if a["mode"] == "s3":
        s3 = _client(a)
        with Timer() as t:
            count = len(_list(s3, a["bucket"], a["dir"] + "/"))
    else:
        t, out, err = _run_timed(["find", os.path.join(a["root"], a["dir"]), "-mindepth", "1"])
        if err:
            return t.result(error=err)
        count = len(out.splitlines())
    err = None if count == a["count"] else f"find saw {count} entries, expected {a['count']}"
    return t.result(entries=count, error=err)


def op_du(a):
    """``du -sb dir``: the apparent size of every file (a stat each)."""
    if a["mode"] == "s3":
        s3 = _client(a)
        with Timer() as t:
            total = sum(o.get("Size", 0) for o in _list(s3, a["bucket"], a["dir"] + "/"))
    else:
        t, out, err = _run_timed(["du", "-sb", os.path.join(a["root"], a["dir"])])
        if err:
            return t.result(error=err)
        # du counts the directory itself too: its size is the filesystem's to choose
        total = int(out.split()[0])
    want = a["count"] * a["fsize"]
    err = None if want <= total < want + (1 << 16) else f"du saw {total} bytes, expected {want}"
    return t.result(total=total, error=err)


def op_read_files(a):
    data = Data(a["seed"])
    names = _names(a["count"])
    if a["mode"] == "s3":
        s3, b, d = _client(a), a["bucket"], a["dir"]

        def get(name):
            return s3.get_object(Bucket=b, Key=f"{d}/{name}")["Body"].read()

        with Timer() as t:
            got = _map(a, get, names)
    else:
        base = os.path.join(a["root"], a["dir"])
        got = []
        with Timer() as t:
            for name in names:
                with open(os.path.join(base, name), "rb", buffering=0) as f:
                    got.append(f.read())
    bad = sum(1 for i, g in enumerate(got) if g != small_file_content(data, i, a["fsize"]))
    err = f"{bad} of {len(names)} files read back wrong" if bad else None
    return t.result(error=err)


def op_delete_files(a):
    names = _names(a["count"])
    if a["mode"] == "s3":
        s3 = _client(a)
        with Timer() as t:
            _delete_keys(s3, a["bucket"], [f"{a['dir']}/{n}" for n in names])
        return t.result()
    base = os.path.join(a["root"], a["dir"])
    with Timer() as t:
        for name in names:
            os.unlink(os.path.join(base, name))
        os.rmdir(base)
    return t.result()


def op_untar(a):
    if a["mode"] == "s3":
        s3, b, d = _client(a), a["bucket"], a["dir"]
        with tarfile.open(a["tarball"]) as tf:
            members = [m for m in tf.getmembers() if m.isfile()]
            bodies = [tf.extractfile(m).read() for m in members]

        def put(i):
            s3.put_object(Bucket=b, Key=f"{d}/{members[i].name}", Body=bodies[i])

        # reading the tarball into memory is not timed: tar -x reads it too,
        # but from the page cache, which is negligible next to the uploads
        with Timer() as t:
            _map(a, put, range(len(members)))
        return t.result()
    dest = os.path.join(a["root"], a["dir"])
    os.makedirs(dest, exist_ok=True)
    with Timer() as t:
        r = subprocess.run(["tar", "--no-same-owner", "--no-same-permissions", "-x",
                            "-f", a["tarball"], "-C", dest], capture_output=True, text=True)
    err = None
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        err = f"tar -x exited {r.returncode}: {lines[0] if lines else ''} ({len(lines)} messages)"
    return t.result(error=err)


def op_mv(a):
    if a["mode"] == "s3":
        s3, b = _client(a), a["bucket"]
        src, dst = a["src"] + "/", a["dst"] + "/"
        with Timer() as t:
            keys = [o["Key"] for o in _list(s3, b, src)]

            def copy(k):
                s3.copy_object(Bucket=b, Key=dst + k[len(src):],
                               CopySource={"Bucket": b, "Key": k})

            _map(a, copy, keys)
            _delete_keys(s3, b, keys)
        return t.result(objects=len(keys))
    with Timer() as t:
        r = subprocess.run(["mv", os.path.join(a["root"], a["src"]),
                            os.path.join(a["root"], a["dst"])], capture_output=True, text=True)
    err = None if r.returncode == 0 else f"mv exited {r.returncode}: {r.stderr.strip()[:200]}"
    return t.result(error=err)


# ---------------------------------------------------------------- S3-side checks
# Verification and setup through S3 (never through the mount), in a child too so
# that a stuck S3 call cannot hang the orchestrator.  Not measured.


def op_verify_object(a):
    """The object equals stream bytes [start, start+size) of Data(seed)."""
    s3, cfg = _client(a), _tconfig(a)
    sink = SegmentSink()
    with Timer() as t:
        s3.download_fileobj(a["bucket"], a["key"], sink, Config=cfg)
    err = sink.check(Data(a["seed"]), a.get("start", 0), a["size"])
    return t.result(error=f"verify: object in S3 differs from what was written: {err}"
                    if err else None)


def op_verify_small(a):
    """dir/ holds exactly f00000..f{count-1} with their small-file contents."""
    s3, b, d = _client(a), a["bucket"], a["dir"]
    data = Data(a["seed"])
    with Timer() as t:
        keys = sorted(o["Key"][len(d) + 1:] for o in _list(s3, b, d + "/")
                      if not o["Key"].endswith("/"))
        names = _names(a["count"])
        got = _map(a, lambda n: s3.get_object(Bucket=b, Key=f"{d}/{n}")["Body"].read(), names) \
            if keys == names else []
    if keys != names:
        return t.result(error=f"verify: {len(keys)} objects under {d}/, expected {len(names)} "
                        "named f00000...")
    bad = sum(1 for i, g in enumerate(got) if g != small_file_content(data, i, a["fsize"]))
    return t.result(error=f"verify: {bad} of {len(names)} objects differ" if bad else None)


def op_verify_tar(a):
    """dir/ holds every regular file of the tarball, byte for byte."""
    s3, b, d = _client(a), a["bucket"], a["dir"]
    with tarfile.open(a["tarball"]) as tf:
        want = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    with Timer() as t:
        got = _map(a, lambda k: s3.get_object(Bucket=b, Key=f"{d}/{k}")["Body"].read(),
                   sorted(want))
    bad = sum(1 for k, g in zip(sorted(want), got) if want[k] != g)
    return t.result(error=f"verify: {bad} of {len(want)} untarred files differ in S3"
                    if bad else None)


def op_put_small(a):
    """Setup: count small-file objects under dir/, straight into S3, with
    the object metadata ``meta`` if given (s3fs's mode, uid, gid, mtime)."""
    s3, b, d = _client(a), a["bucket"], a["dir"]
    data = Data(a["seed"])
    meta = a.get("meta") or {}
    with Timer() as t:
        _map(a, lambda i: s3.put_object(Bucket=b, Key=f"{d}/f{i:05d}", Metadata=meta,
                                        Body=small_file_content(data, i, a["fsize"])),
             range(a["count"]))
    return t.result()


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}


def main() -> int:
    op, a = sys.argv[1], json.loads(sys.argv[2])
    try:
        res = OPS[op](a)
    except Exception as e:  # reported, not raised: the parent records it
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        res = dict(error=msg, exception=True)
    res.setdefault("error", None)
    # one line, flushed at once: the parent starts polling S3 as soon as it reads it
    sys.stdout.write("\n" + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
