#!/usr/bin/env python3
"""Side-by-side benchmarks: ObjectFS vs s3fs-fuse vs rclone mount vs raw boto3.

    python benchmarks/run.py [--server moto|swift|URL] [--repeat N]
                             [--only WORKLOADS] [--fs objectfs,s3fs,...]
                             [--scale small|full]

Every filesystem runs the same workloads against the same S3 endpoint, in one
run, interleaved, repeated; the report gives medians and ratios (see
benchmarks/README.md).  The orchestrator never touches a mountpoint itself:
every filesystem operation runs in a child process (benchmarks/child.py) with a
timeout, under the mount's watchdog.  Mounts and servers are stopped in
finally blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import ipaddress
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_PY = REPO / ".venv" / "bin" / "python"

try:
    import boto3  # noqa: F401  (probe only)
except ImportError:  # re-run under the project's venv, which has boto3/moto/rclone
    if VENV_PY.exists() and Path(sys.executable).resolve() != VENV_PY.resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])
    sys.exit("boto3 is not importable: run `make bench-deps` or use .venv/bin/python")

sys.path.insert(0, str(REPO))

from benchmarks import procstat  # noqa: E402
from benchmarks import report as rpt  # noqa: E402
from benchmarks.datagen import KiB, MiB, GiB, Data  # noqa: E402
from tests.support import mounts as M  # noqa: E402
from tests.support import s3server as S  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def _mount_entry_nostat(mountpoint: str) -> dict | None:
    """tests.support.mounts.mount_entry without os.path.realpath, which lstat()s the
    mountpoint and so blocks the caller when the filesystem hangs.  Our mountpoints
    are already absolute, resolved paths."""
    mp = os.path.normpath(os.path.abspath(mountpoint))
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            if M._unescape(parts[4]) == mp:
                found = {"dev": parts[2], "fstype": parts[sep + 1],
                         "source": M._unescape(parts[sep + 2]),
                         "options": parts[5] + "," + parts[sep + 3]}
    return found


# is_mounted, abort_connection, force_unmount and wait_mounted look it up at call time
M.mount_entry = _mount_entry_nostat

# seeds of the deterministic data streams (datagen.Data)
SEED_FIXTURE, SEED_WRITE, SEED_SMALL, SEED_RENAME, SEED_APPEND = 1, 2, 3, 4, 5
FIXTURE_KEY = "fixture-seq.bin"  # at the bucket root: no directory marker needed
# The big directory, put once through S3 with s3fs's attributes (mode 0640,
# owner 1234:2345), which ls -l must show for every file.
BIG_DIR, BIG_PERMS, BIG_UID, BIG_GID = "fixture-big", "-rw-r-----", 1234, 2345
BIG_META = {"mode": str(0o100640), "uid": str(BIG_UID), "gid": str(BIG_GID),
            "mtime": "1700000000"}
SEED_BIG = 6
# Before each measured operation the server must be idle: under SETTLE_BUSY of
# a core over SETTLE_STEP seconds (Swift idles at about 1%), waiting at most
# SETTLE_MAX seconds (see Bench.settle).
SETTLE_BUSY, SETTLE_STEP, SETTLE_MAX = 0.05, 0.25, 10.0


@dataclass
class Scale:
    file: int            # sequential write/read file size
    n_random: int        # 4 KiB random preads (dense: every region of the file is read)
    n_sparse: int        # 4 KiB random preads (sparse: a few, far apart)
    n_small: int         # small files created/listed/read/deleted
    n_rename: int        # files in the renamed directory
    untar_files: int | None  # None: the whole (test-less) stdlib
    append_base: int
    append: int
    n_big: int           # files of the big directory listed by ls -l, find and du


SCALES = {
    "full": Scale(file=GiB, n_random=500, n_sparse=50, n_small=2000, n_rename=500,
                  untar_files=None, append_base=10 * MiB, append=MiB, n_big=10_000),
    "small": Scale(file=64 * MiB, n_random=200, n_sparse=20, n_small=200, n_rename=100,
                   untar_files=200, append_base=10 * MiB, append=MiB, n_big=1_000),
}


def _size(n: int) -> str:
    for unit, v in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= v and n % v == 0:
            return f"{n // v} {unit}"
    return f"{n} B"


def first_line(e: BaseException | str) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class PhaseError(Exception):
    """A benchmark phase failed (error, timeout, wrong data); the sample is failed."""


class MountError(Exception):
    pass


# ----------------------------------------------------------------- servers

class UrlServer(S._Server):
    """An already running S3 endpoint; credentials from the environment."""

    def __init__(self, url: str):
        u = urllib.parse.urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SystemExit(f"--server: not an http(s) URL: {url}")
        host = u.hostname
        try:
            loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loop = False
        if not loop:
            raise SystemExit(f"--server {url}: only loopback endpoints (127.0.0.0/8, ::1, "
                             "localhost) may be benchmarked here")
        self.endpoint = url.rstrip("/")
        try:
            self.access_key = os.environ["AWS_ACCESS_KEY_ID"]
            self.secret_key = os.environ["AWS_SECRET_ACCESS_KEY"]
        except KeyError:
            raise SystemExit("--server URL needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                             "in the environment") from None
        self.region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") \
            or "us-east-1"

    def stop(self) -> None:
        pass


def start_server(kind: str, workdir: Path):
    if kind == "moto":
        return S.MotoServer(log_path=str(workdir / "moto.log"))
    if kind == "swift":
        # a port block can be taken between the probe and start.sh (or the probe can
        # fail when many TIME-WAIT sockets are around): try a few times
        # Its data lives in the work directory (on /var/tmp: ext4, user xattrs), which
        # is removed at the end whatever happens.
        for attempt in range(3):
            d = workdir / f"swift-data-{attempt}"
            d.mkdir()
            try:
                return S.SwiftServer(data_dir=str(d))
            except RuntimeError as e:
                if attempt == 2 or "port" not in str(e):
                    raise
                log(f"swift start: {first_line(e)}; retrying")
                time.sleep(2)
    return UrlServer(kind)


def server_pids(server) -> list[int]:
    """The processes of a server we started (their CPU is metered with each
    workload's phases): moto's process; Swift's daemons, from the PID files
    its start script writes.  Empty for a server given by URL."""
    proc = getattr(server, "proc", None)
    if proc is not None:
        return [proc.pid]
    data_dir = getattr(server, "data_dir", None)
    pids = []
    for f in sorted(Path(data_dir).glob("run/*.pid")) if data_dir else ():
        try:
            pids.append(int(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return pids


class NullMount:
    """Stands in for a mount when the "filesystem" is raw boto3."""

    name = "boto3"
    proc = None
    mountpoint = None
    watchdog_fired = False

    @contextlib.contextmanager
    def watchdog(self, seconds: float):
        yield

    def stop(self) -> None:
        pass


# ----------------------------------------------------------------- samples

@dataclass
class Sample:
    fs: str
    workload: str
    rep: int
    times: dict = field(default_factory=dict)
    cpu: float = 0.0          # daemon CPU seconds (boto3: the client process)
    rss_kb: int = 0           # daemon peak RSS (boto3: the client process)
    app_cpu: float = 0.0      # CPU of the child doing the POSIX calls (fs only)
    server_cpu: float | None = None  # the S3 server's CPU (None: not ours to measure)
    error: str | None = None
    extra: dict = field(default_factory=dict)


class Bench:
    def __init__(self, args, server, workdir: Path):
        self.args = args
        self.server = server
        self.workdir = workdir
        self.sc = SCALES[args.scale]
        self.s3 = server.client()
        self.samples: list[Sample] = []
        self.unavailable: dict[str, str] = {}
        self.notes: list[str] = []
        self.buckets: dict[str, str] = {}
        self._n = 0
        self._tiers: dict[str, Path] = {}  # each ObjectFS flavour's last cache directory
        self._cur: Sample | None = None
        self._metering = False
        self._children: list[subprocess.Popen] = []
        self.tarball: Path | None = None
        self.tar_files: dict[str, int] = {}
        self.untar_desc = ""
        self._big_put = False
        self.data_dir = getattr(server, "data_dir", None)
        self.server_pids = server_pids(server)
        self.op_env = server.env()
        self.op_env["PYTHONPATH"] = str(REPO)
        self.s3args = dict(endpoint=server.endpoint, region=server.region,
                           chunk_mib=args.boto3_chunk_mib, concurrency=args.boto3_concurrency)
        self.timeout_mult = args.timeout_factor

    # ---------------------------------------------------------- timeouts
    def t_bytes(self, n: int) -> float:
        """Time limit for moving n bytes: 60 s + 1 s per 2 MiB."""
        return (60 + n / (2 * MiB)) * self.timeout_mult

    def t_files(self, n: int) -> float:
        """Time limit for n per-file operations: 60 s + 0.25 s per file."""
        return (60 + 0.25 * n) * self.timeout_mult

    # ---------------------------------------------------------- mounts
    @contextlib.contextmanager
    def mounted(self, fs: str, remount: bool = False):
        """``remount``: ObjectFS mounts with the cache directory of its mount
        before (a reboot, a remount), not a fresh one."""
        if fs == "boto3":
            yield NullMount()
            return
        self._n += 1
        mp = self.workdir / "mnt" / f"{fs}-{self._n}"
        mp.mkdir(parents=True)
        logp = str(self.workdir / "logs" / f"{fs}-{self._n}.log")
        bucket = self.buckets[fs]
        try:
            if fs in ("objectfs", "objectfs-wb"):
                # a fresh local tier per mount, as rclone gets a fresh cache:
                # "cold" means nothing of the bucket is on local disk yet
                tier = self.workdir / "tier" / f"{fs}-{self._n}"
                if remount and fs in self._tiers:
                    tier = self._tiers[fs]
                self._tiers[fs] = tier
                opts = [f"cache_dir={tier}"] + (["writeback"] if fs == "objectfs-wb" else [])
                h = M.ObjectFSMount(self.server, bucket, str(mp), log_path=logp, options=opts)
            elif fs == "s3fs":
                h = M.S3fsMount(self.server, bucket, str(mp), log_path=logp)
            elif fs in ("rclone-full", "rclone-off"):
                h = M.RcloneMount(self.server, bucket, str(mp), cache_mode=fs.split("-")[1],
                                  log_path=logp)
            else:
                raise MountError(f"unknown filesystem {fs}")
        except MountError:
            raise
        except Exception as e:
            raise MountError(self._mount_error(e, logp)) from None
        try:
            yield h
        finally:
            self.reap_children()
            h.stop()
            if not M.is_mounted(str(mp)):
                with contextlib.suppress(OSError):
                    mp.rmdir()

    @staticmethod
    def _mount_error(e: Exception, logp: str) -> str:
        msg = first_line(e)
        try:
            lines = [ln.strip() for ln in Path(logp).read_text(errors="replace").splitlines()
                     if ln.strip()]
        except OSError:
            lines = []
        if lines:
            msg += f" -- {lines[-1][:200]}"
        return msg

    # ---------------------------------------------------------- children
    def op(self, m, fs: str, name: str, timeout: float, s3_side: bool = False, **a) -> dict:
        """Run one operation in a child process, under the mount's watchdog.

        With s3_side (or for boto3) the child works on fs's bucket through boto3;
        s3_side ops are setup or verification and are not metered."""
        if s3_side:
            m = NullMount()
        if fs == "boto3" or s3_side:
            a.update(mode="s3", bucket=self.buckets[fs], **self.s3args)
        else:
            a.update(mode="fs", root=m.mountpoint)
        argv = [sys.executable, "-m", "benchmarks.child", name, json.dumps(a)]
        if not s3_side:
            self.settle()
        server0 = procstat.cpu_seconds_all(self.server_pids)
        with self.watchdog(m, timeout):
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, cwd=self.workdir, env=self.op_env,
                                 start_new_session=True, text=True)
            try:
                line, err = self._result_line(p, timeout + 15)
            except BaseException:
                self._kill(p)
                raise
            if line is None:
                self._kill(p)
                if not m.watchdog_fired:
                    raise PhaseError(f"{name}: timed out after {timeout:.0f} s")
            else:
                # the child has finished its timed work; let it exit while the caller
                # polls S3 (its exit is reaped in reap_children)
                self._children.append(p)
        if m.watchdog_fired:
            raise PhaseError(f"{name}: hung: no answer in {timeout:.0f} s, the watchdog "
                             "killed the filesystem daemon")
        if not line:
            tail = [ln for ln in err.splitlines() if ln.strip()]
            raise PhaseError(f"{name}: child exited {p.poll()}: "
                             f"{tail[-1] if tail else 'no output'}")
        res = json.loads(line)
        s = self._cur if self._metering and not s3_side else None
        if s is not None and self.server_pids:
            # per operation, in order (JSON only): which phase made the server work
            s.extra.setdefault("server_cpu_ops", []).append(
                [name, round(procstat.cpu_seconds_all(self.server_pids) - server0, 3)])
        if s is not None and "cpu" in res:
            if fs == "boto3":
                s.cpu += res["cpu"]
                s.rss_kb = max(s.rss_kb, res["rss_kb"])
            else:
                s.app_cpu += res["cpu"]
        if res.get("error"):
            raise PhaseError(f"{name}: {res['error']}")
        return res

    def settle(self) -> float:
        """Wait until the server we started is idle (under SETTLE_BUSY of a
        core over SETTLE_STEP seconds), at most SETTLE_MAX seconds; the
        seconds waited.  Work a server goes on doing after a sample
        (Swift's updaters, the deletes of the last sample's objects, the end
        of a reader's last GETs) would otherwise be charged to whichever
        filesystem comes next in the rotation."""
        if not self.server_pids:
            return 0.0
        t0 = time.monotonic()
        before = procstat.cpu_seconds_all(self.server_pids)
        while time.monotonic() - t0 < SETTLE_MAX:
            time.sleep(SETTLE_STEP)
            now = procstat.cpu_seconds_all(self.server_pids)
            if now - before < SETTLE_BUSY * SETTLE_STEP:
                break
            before = now
        waited = time.monotonic() - t0
        if self._cur is not None:
            self._cur.extra["settle_s"] = round(self._cur.extra.get("settle_s", 0) + waited, 2)
        return waited

    @contextlib.contextmanager
    def watchdog(self, m, seconds: float):
        """After `seconds`, abort the mount's FUSE connection and SIGKILL its daemon.

        Aborting goes through /sys/fs/fuse/connections (fusectl), which is not
        mounted everywhere; killing the daemon closes /dev/fuse, which aborts the
        connection in every case, so a child blocked in the filesystem wakes up with
        ENOTCONN.  The sample fails; the mount is cleaned up by its stop()."""
        if getattr(m, "proc", None) is None:
            yield
            return
        with m.watchdog(seconds, kill=True):
            yield

    @staticmethod
    def _result_line(p: subprocess.Popen, timeout: float) -> tuple[str | None, str]:
        """Wait for the child's JSON result line (the child prints it as soon as its
        timed work is done).  Returns (line, stderr): line is "" when the child exited
        without one, None on timeout."""
        import selectors
        deadline = time.monotonic() + timeout
        buf, err = "", []
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        sel.register(p.stderr, selectors.EVENT_READ)
        open_ = 2
        try:
            while open_:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, "".join(err)
                for key, _ in sel.select(min(left, 1.0)):
                    chunk = os.read(key.fileobj.fileno(), 65536).decode(errors="replace")
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_ -= 1
                    elif key.fileobj is p.stdout:
                        buf += chunk
                        for ln in buf.splitlines():
                            if ln.startswith("{") and ln.endswith("}"):
                                return ln, "".join(err)
                    else:
                        err.append(chunk)
            return "", "".join(err)
        finally:
            sel.close()

    @staticmethod
    def _kill(p: subprocess.Popen) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=30)
        for f in (p.stdout, p.stderr):
            with contextlib.suppress(Exception):
                f.close()

    def reap_children(self) -> None:
        """Wait for children that already reported their result to exit."""
        while self._children:
            p = self._children.pop()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            self._kill(p)

    @contextlib.contextmanager
    def metered(self, m):
        """Count the daemon's CPU and peak RSS over the block into the current sample."""
        s = self._cur
        pid = m.proc.pid if m.proc is not None else None
        self._metering = True
        server0 = procstat.cpu_seconds_all(self.server_pids)
        try:
            if pid is None or s is None:  # boto3: op() adds the client's own figures
                yield
                return
            procstat.reset_peak(pid)
            c0 = procstat.cpu_seconds(pid)
            try:
                yield
            finally:
                s.cpu += procstat.cpu_seconds(pid) - c0
                s.rss_kb = max(s.rss_kb, procstat.peak_rss_kb(pid))
        finally:
            self._metering = False
            if s is not None and self.server_pids:
                used = procstat.cpu_seconds_all(self.server_pids) - server0
                s.server_cpu = (s.server_cpu or 0.0) + used

    # ---------------------------------------------------------- S3 side (no FUSE)
    def wait_until(self, pred, t0: float, what: str, timeout: float | None = None) -> float:
        """Poll pred() (S3 calls from this process) until true; seconds since t0."""
        timeout = timeout or self._durable_timeout()
        start = time.monotonic()
        while True:
            try:
                if pred():
                    return time.monotonic() - t0
            except Exception:
                pass
            waited = time.monotonic() - start
            if waited > timeout:
                raise PhaseError(f"{what}: not reached in S3 {timeout:.0f} s after the "
                                 "operation returned")
            time.sleep(0.02 if waited < 1 else 0.1 if waited < 10 else 0.5)

    def durable_object(self, fs: str, key: str, size: int, seed: int, t0: float) -> float:
        """Seconds from t0 until key holds exactly the `size` bytes written (stream
        `seed`), checked by a full download.  A filesystem may replace the object after
        it first appears (rclone deletes and re-uploads when its checksum check fails),
        so a version that fails verification is remembered and polling goes on until a
        different version passes or the time limit is reached."""
        budget = self._durable_timeout()
        start = time.monotonic()
        rejected: set = set()
        seen: list = []

        def ready():
            h = self.s3.head_object(Bucket=self.buckets[fs], Key=key)
            ver = (h.get("ETag"), str(h.get("LastModified")))
            seen[:] = [ver]
            return h["ContentLength"] == size and ver not in rejected

        while True:
            left = budget - (time.monotonic() - start)
            if left <= 0:
                raise PhaseError(f"{key}: no correct version in S3 within {budget:.0f} s "
                                 f"({len(rejected)} wrong one(s) seen)")
            d = self.wait_until(ready, t0, "object of full size", timeout=left)
            try:
                self.op(None, fs, "verify_object", self.t_bytes(size), s3_side=True, key=key,
                        size=size, seed=seed)
                return d
            except PhaseError as e:
                rejected.add(seen[0] if seen else None)
                if self._cur is not None:
                    self._cur.extra.setdefault("rejected_versions", []).append(first_line(e))
                log(f"  {fs}: {key}: {first_line(e)}; waiting for another version")

    def _durable_timeout(self) -> float:
        return 120 * self.timeout_mult + (300 if self.args.scale == "full" else 0)

    def head_size(self, fs: str, key: str) -> int | None:
        try:
            return self.s3.head_object(Bucket=self.buckets[fs], Key=key)["ContentLength"]
        except Exception:
            return None

    def list_prefix(self, fs: str, prefix: str) -> dict[str, int]:
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.buckets[fs], Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["Size"]
        return out

    def files_under(self, fs: str, prefix: str) -> dict[str, int]:
        """Objects under prefix that are files (not directory markers), by relative name."""
        return {k[len(prefix):]: v for k, v in self.list_prefix(fs, prefix).items()
                if not k.endswith("/")}

    def delete_prefix(self, fs: str, prefix: str) -> None:
        keys = list(self.list_prefix(fs, prefix))
        for i in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.buckets[fs], Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def drop_caches(self) -> None:
        """Drop the kernel page cache (the server's files included): "cold"."""
        if os.geteuid() != 0:
            self.note("not root: the page cache could not be dropped; cold reads may be warm")
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            # syncfs of the server's data only: a global sync could block on some
            # other (possibly hung) FUSE mount on this machine
            if self.data_dir:
                subprocess.run(["sync", "-f", self.data_dir], timeout=120, check=False)
            subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], timeout=120,
                           check=False)

    # ---------------------------------------------------------- setup
    def probe(self, fs: str) -> None:
        if fs == "boto3":
            return
        try:
            with self.mounted(fs):
                pass
        except MountError as e:
            self.unavailable[fs] = str(e)
            log(f"{fs}: UNAVAILABLE: {e}")

    def make_buckets(self, fs_list: list[str]) -> None:
        """One bucket for the run: the read fixture at its root (put once), and each
        filesystem works under its own top-level directory <fs>/."""
        name = f"objbench-{time.strftime('%m%d%H%M%S')}-{os.getpid()}"
        self.s3.create_bucket(Bucket=name)
        for fs in fs_list:
            self.buckets[fs] = name

    def upload_fixture(self, fs: str) -> None:
        self.op(None, fs, "write_seq", self.t_bytes(self.sc.file), s3_side=True,
                key=FIXTURE_KEY, size=self.sc.file, seed=SEED_FIXTURE)
        if self.head_size(fs, FIXTURE_KEY) != self.sc.file:
            raise RuntimeError("fixture upload: wrong size in S3")

    def make_tarball(self) -> None:
        import sysconfig
        lib = Path(sysconfig.get_paths()["stdlib"])
        skip = {"__pycache__", "site-packages", "lib-dynload", "test", "tests", "idle_test"}
        files: list[Path] = []
        for root, dirs, names in os.walk(lib):
            dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("config-"))
            for n in sorted(names):
                p = Path(root) / n
                if p.is_file() and not p.is_symlink():
                    files.append(p)
        files.sort(key=lambda p: p.relative_to(lib).as_posix())
        if self.sc.untar_files:
            files = files[:self.sc.untar_files]
        self.tarball = self.workdir / "stdlib.tar"
        dirs_added: set[str] = set()
        with tarfile.open(self.tarball, "w") as tf:
            for p in files:
                rel = "Lib/" + p.relative_to(lib).as_posix()
                parts = rel.split("/")[:-1]
                for i in range(1, len(parts) + 1):  # directory entries first, like tar
                    d = "/".join(parts[:i])
                    if d not in dirs_added:
                        dirs_added.add(d)
                        tf.add(str(lib.joinpath(*parts[1:i])), arcname=d, recursive=False)
                tf.add(str(p), arcname=rel, recursive=False)
                self.tar_files[rel] = p.stat().st_size
        total = sum(self.tar_files.values())
        self.untar_desc = (f"Python {platform.python_version()} Lib/ without tests, "
                           f"__pycache__, site-packages, lib-dynload, config-*: "
                           f"{len(self.tar_files)} files in {len(dirs_added)} directories, "
                           f"{total / MiB:.1f} MiB")

    # ---------------------------------------------------------- workloads
    def run_workload(self, wl: str, fs: str, rep: int) -> Sample:
        s = Sample(fs, wl, rep)
        self._cur = s
        prefix = f"{fs}/r{rep}-{wl}"
        try:
            getattr(self, "wl_" + wl)(fs, s, prefix)
        except (PhaseError, MountError) as e:
            s.error = first_line(e)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            s.error = f"harness: {type(e).__name__}: {first_line(e)}"
        finally:
            self._cur = None
            self.reap_children()
            try:
                self.delete_prefix(fs, prefix + "/")
            except Exception as e:
                log(f"  cleanup of {prefix}/ in {fs}'s bucket failed: {first_line(e)}")
        self.samples.append(s)
        return s

    def wl_seq_write(self, fs, s, prefix):
        size, key = self.sc.file, f"{prefix}/seq.bin"
        with self.mounted(fs) as m, self.metered(m):
            if fs != "boto3":
                self.op(m, fs, "mkdir", 60, dir=prefix)
            r = self.op(m, fs, "write_seq", self.t_bytes(size), key=key, size=size,
                        seed=SEED_WRITE)
            s.times["close"] = r["t1"] - r["t0"]
            # verified while still mounted: a filesystem that uploads in the background
            # must not be cut off by the unmount
            s.times["durable"] = self.durable_object(fs, key, size, SEED_WRITE, r["t0"])

    def wl_seq_read(self, fs, s, prefix):
        size = self.sc.file
        expect = Data(SEED_FIXTURE).crc(0, size)
        self.drop_caches()
        with self.mounted(fs) as m, self.metered(m):
            for metric in ("cold", "warm"):
                r = self.op(m, fs, "read_seq", self.t_bytes(size), key=FIXTURE_KEY, size=size,
                            expect_crc=expect, seed=SEED_FIXTURE)
                s.times[metric] = r["t1"] - r["t0"]

    def wl_random_read(self, fs, s, prefix):
        # Two cold runs, each on its own mount: many reads (one per couple of
        # MiB, so nearly every region of the file is read: fetching it all
        # pays) and a few far apart (fetching more than asked for does not).
        for metric, n, seed in (("total", self.sc.n_random, 1000),
                                ("sparse", self.sc.n_sparse, 2000)):
            self.drop_caches()
            with self.mounted(fs) as m, self.metered(m):
                r = self.op(m, fs, "pread", self.t_files(n), key=FIXTURE_KEY,
                            size=self.sc.file, count=n, seed=SEED_FIXTURE,
                            offset_seed=seed + s.rep)
                s.times[metric] = r["t1"] - r["t0"]

    def wl_small_files(self, fs, s, prefix):
        n, d = self.sc.n_small, f"{prefix}/d"
        tmo = self.t_files(n)
        args = dict(dir=d, count=n, seed=SEED_SMALL, fsize=4 * KiB)
        with self.mounted(fs) as m, self.metered(m):
            if fs != "boto3":
                self.op(m, fs, "mkdir", 60, dir=d)
            r = self.op(m, fs, "create_files", tmo, **args)
            s.times["create"] = r["t1"] - r["t0"]

            def all_there():
                f = self.files_under(fs, d + "/")
                return len(f) == n and all(v == 4 * KiB for v in f.values())

            s.times["create_durable"] = self.wait_until(all_there, r["t0"], f"{n} small files")
        self.drop_caches()
        with self.mounted(fs) as m, self.metered(m):
            r = self.op(m, fs, "ls", tmo, dir=d, count=n)
            s.times["ls"] = r["t1"] - r["t0"]
            r = self.op(m, fs, "read_files", tmo, **args)
            s.times["read"] = r["t1"] - r["t0"]
        # the same listing after a remount (ObjectFS with its cache directory
        # kept; s3fs and rclone keep no attributes across mounts)
        self.drop_caches()
        with self.mounted(fs, remount=True) as m, self.metered(m):
            r = self.op(m, fs, "ls", tmo, dir=d, count=n)
            s.times["ls_again"] = r["t1"] - r["t0"]
            r = self.op(m, fs, "delete_files", tmo, dir=d, count=n)
            s.times["delete"] = r["t1"] - r["t0"]
            s.times["delete_durable"] = self.wait_until(
                lambda: not self.list_prefix(fs, d + "/"), r["t0"], "all small files deleted")

    def wl_untar(self, fs, s, prefix):
        d = f"{prefix}/x"
        expect = self.tar_files
        with self.mounted(fs) as m, self.metered(m):
            r = self.op(m, fs, "untar", self.t_files(len(expect)), tarball=str(self.tarball),
                        dir=d)
            s.times["tar"] = r["t1"] - r["t0"]
            s.times["durable"] = self.wait_until(
                lambda: self.files_under(fs, d + "/") == expect, r["t0"], "all untarred files")
            self.op(None, fs, "verify_tar", self.t_files(len(expect)), s3_side=True,
                    tarball=str(self.tarball), dir=d)

    def wl_rename_dir(self, fs, s, prefix):
        # the directory is created through S3 (plain objects, no directory marker, as
        # any other tool would leave them), then renamed through a fresh mount
        n = self.sc.n_rename
        src, dst = f"{prefix}/src", f"{prefix}/dst"
        small = dict(count=n, seed=SEED_RENAME, fsize=4 * KiB)
        self.op(None, fs, "put_small", self.t_files(n), s3_side=True, dir=src, **small)
        self.drop_caches()
        with self.mounted(fs) as m, self.metered(m):
            r = self.op(m, fs, "mv", self.t_files(n), src=src, dst=dst)
            s.times["mv"] = r["t1"] - r["t0"]

            def moved():
                f = self.files_under(fs, dst + "/")
                return len(f) == n and not self.list_prefix(fs, src + "/")

            s.times["durable"] = self.wait_until(moved, r["t0"], "renamed directory")
            self.op(None, fs, "verify_small", self.t_files(n), s3_side=True, dir=dst, **small)

    def wl_append(self, fs, s, prefix):
        # the 10 MiB file is put through S3 (not measured), then appended to through
        # a fresh mount
        base, add, key = self.sc.append_base, self.sc.append, f"{prefix}/log.bin"
        self.op(None, fs, "write_seq", self.t_bytes(base), s3_side=True, key=key, size=base,
                seed=SEED_APPEND)
        self.drop_caches()
        with self.mounted(fs) as m, self.metered(m):
            r = self.op(m, fs, "append", self.t_bytes(base + add), key=key, start=base,
                        size=add, seed=SEED_APPEND)
            s.times["close"] = r["t1"] - r["t0"]
            s.times["durable"] = self.durable_object(fs, key, base + add, SEED_APPEND, r["t0"])

    def wl_big_dir(self, fs, s, prefix):
        # one fixture for every filesystem, put once; each command on a fresh mount
        n, args = self.sc.n_big, dict(dir=BIG_DIR, count=self.sc.n_big, fsize=4 * KiB)
        if not self._big_put:
            log(f"putting the big directory: {n:,} files with s3fs's attributes")
            self.op(None, fs, "put_small", self.t_files(n), s3_side=True, seed=SEED_BIG,
                    meta=BIG_META, **args)
            self._big_put = True
        for metric, op, more in (("ls", "ls", dict(perms=BIG_PERMS, uid=BIG_UID, gid=BIG_GID)),
                                 ("find", "find", {}), ("du", "du", {})):
            self.drop_caches()
            with self.mounted(fs) as m, self.metered(m):
                r = self.op(m, fs, op, self.t_files(n), **args, **more)
            s.times[metric] = r["t1"] - r["t0"]
            if "shown_as_stored" in r:
                s.extra["ls_shown_as_stored"] = r["shown_as_stored"]
                if r["shown_as_stored"] != n:
                    self.note(f"{fs}: `ls -l` of the big directory showed {r['shown_as_stored']:,}"
                              f" of {n:,} files with their stored mode and owner")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # ---------------------------------------------------------- cleanup
    def delete_buckets(self) -> None:
        for b, fs in {b: fs for fs, b in self.buckets.items()}.items():
            try:
                for page in self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=b):
                    for u in page.get("Uploads", []):
                        self.s3.abort_multipart_upload(Bucket=b, Key=u["Key"],
                                                       UploadId=u["UploadId"])
            except Exception:
                pass
            try:
                self.delete_prefix(fs, "")
                self.s3.delete_bucket(Bucket=b)
            except Exception as e:
                log(f"could not delete bucket {b}: {first_line(e)}")


# ----------------------------------------------------------------- environment

def _cmd_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        out = (r.stdout or r.stderr).strip().splitlines()
        return out[0] if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def environment(server_kind: str) -> dict:
    import boto3
    v = {"python": platform.python_version(), "boto3": boto3.__version__}
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        d = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "objectfs"],
                           capture_output=True, text=True, timeout=10)
        v["objectfs"] = "git " + r.stdout.strip() + (" + uncommitted changes"
                                                     if d.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    v["s3fs"] = _cmd_version(["s3fs", "--version"]).replace("Amazon Simple Storage Service "
                                                           "File System ", "")
    rc = M.rclone_binary()
    v["rclone"] = _cmd_version([rc, "version"]).replace("rclone ", "") if rc else "missing"
    if server_kind == "moto":
        import moto
        v["moto"] = moto.__version__
    elif server_kind == "swift":
        v["swift"] = _cmd_version(["dpkg-query", "-W", "-f", "${Version}", "swift"])
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return {"versions": v,
            "machine": f"{os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}"}


# ----------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="swift",
                   help="moto, swift (started here, on 127.0.0.1) or an http://127.x URL of a "
                        "running S3 endpoint (credentials: AWS_ACCESS_KEY_ID / "
                        "AWS_SECRET_ACCESS_KEY). Default: swift")
    p.add_argument("--repeat", type=int, default=None,
                   help="repetitions (default 3 at --scale small, 1 at full: one full "
                        "repetition of all five filesystems takes about 25-30 min here)")
    p.add_argument("--only", default=None,
                   help="comma-separated workloads (default all but big_dir): "
                        + ",".join(rpt.WORKLOADS))
    p.add_argument("--fs", default=",".join(rpt.FS_ORDER),
                   help="comma-separated filesystems (default all): " + ",".join(rpt.FS_ORDER))
    p.add_argument("--scale", choices=sorted(SCALES), default="full",
                   help="full (1 GiB files, 2,000 small files) or small (smoke run)")
    p.add_argument("--boto3-chunk-mib", type=int, default=16,
                   help="boto3 baseline multipart chunk size in MiB (default 16)")
    p.add_argument("--boto3-concurrency", type=int, default=8,
                   help="boto3 baseline max_concurrency / thread-pool size (default 8)")
    p.add_argument("--timeout-factor", type=float, default=1.0,
                   help="multiply every per-operation time limit (default 1)")
    p.add_argument("--out", default=str(RESULTS), help="results directory")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the work directory (mount logs) for debugging")
    a = p.parse_args(argv)
    a.only_given = a.only is not None
    a.only = [w.strip() for w in (a.only or ",".join(rpt.DEFAULT_WORKLOADS)).split(",")
              if w.strip()]
    a.fs = [f.strip() for f in a.fs.split(",") if f.strip()]
    for w in a.only:
        if w not in rpt.WORKLOADS:
            p.error(f"unknown workload {w!r}; choose from {','.join(rpt.WORKLOADS)}")
    for f in a.fs:
        if f not in rpt.FS_ORDER:
            p.error(f"unknown filesystem {f!r}; choose from {','.join(rpt.FS_ORDER)}")
    if a.repeat is None:
        a.repeat = 3 if a.scale == "small" else 1
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    return a


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def server_label(kind: str) -> str:
    if kind in ("moto", "swift"):
        return kind
    u = urllib.parse.urlparse(kind)
    return f"url-{u.hostname}-{u.port or 80}".replace(":", "-")


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    import faulthandler
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 PID: dump every thread's stack
    workloads = [w for w in rpt.WORKLOADS if w in args.only]
    skipped_note = None
    if args.server == "moto" and args.scale == "full" and not args.only_given:
        # moto copies the whole 1 GiB object for every ranged GET: hundreds of them
        # take many minutes and measure nothing
        skip = [w for w in ("seq_read", "random_read") if w in workloads]
        workloads = [w for w in workloads if w not in skip]
        skipped_note = (f"{', '.join(skip)} skipped: moto re-reads the whole object for "
                        "every ranged GET (use --server swift, or name them in --only)")
    fs_list = [f for f in rpt.FS_ORDER if f in args.fs]
    sc = SCALES[args.scale]
    label = server_label(args.server)
    started = _dt.datetime.now()
    workdir = Path(tempfile.mkdtemp(prefix="objectfs-bench-", dir="/var/tmp"))
    (workdir / "logs").mkdir()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y-%m-%d-%H%M")
    base = f"{label}-{args.scale}-{stamp}"
    server = bench = None
    interrupted = None
    try:
        log(f"starting {args.server} server" if args.server in ("moto", "swift")
            else f"using {args.server}")
        server = start_server(args.server, workdir)
        log(f"endpoint {server.endpoint}; scale {args.scale}; repeat {args.repeat}; "
            f"filesystems {','.join(fs_list)}; workloads {','.join(workloads)}")
        bench = Bench(args, server, workdir)
        if skipped_note:
            bench.notes.append(skipped_note)
            log(skipped_note)
        if args.repeat == 1:
            bench.notes.append("one repetition: each figure is a single sample, not a median; "
                               "run with --repeat 3 to see how much they vary")
        bench.make_buckets(fs_list)
        for fs in fs_list:
            bench.probe(fs)
        live = [f for f in fs_list if f not in bench.unavailable]
        if "untar" in workloads:
            bench.make_tarball()
            log(f"untar tree: {bench.untar_desc}")
        if {"seq_read", "random_read"} & set(workloads) and live:
            log(f"uploading the {_size(sc.file)} read fixture")
            bench.upload_fixture(live[0])
        for rep in range(1, args.repeat + 1):
            for wl in workloads:
                k = (rep - 1) % max(1, len(live))
                for fs in live[k:] + live[:k]:  # rotate the order between repetitions
                    t = time.monotonic()
                    smp = bench.run_workload(wl, fs, rep)
                    times = " ".join(f"{k2} {v:.3g}s" for k2, v in smp.times.items())
                    status = f"FAILED: {smp.error}" if smp.error else "ok"
                    log(f"[{rep}/{args.repeat}] {wl:12s} {fs:12s} {times} | cpu {smp.cpu:.2f}s "
                        f"rss {smp.rss_kb / 1024:.0f}MiB | {time.monotonic() - t:.0f}s {status}")
    except KeyboardInterrupt as e:
        interrupted = f"interrupted ({e or 'Ctrl-C'})"
        log(interrupted)
    except Exception as e:
        interrupted = f"aborted: {type(e).__name__}: {first_line(e)}"
        log(interrupted)
        import traceback
        traceback.print_exc()
    finally:
        if bench is not None:
            with contextlib.suppress(Exception, KeyboardInterrupt):
                bench.delete_buckets()
        if server is not None:
            log("stopping server")
            server.stop()
        if args.keep_work:
            log(f"work directory kept: {workdir}")
        else:
            # never rmtree a directory with something still mounted under it
            mnts = list((workdir / "mnt").glob("*")) if (workdir / "mnt").exists() else []
            for p in mnts:
                M.force_unmount(str(p))
            if any(M.is_mounted(str(p)) for p in mnts):
                log(f"something is still mounted under {workdir}; left in place")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if bench is None or not bench.samples:
        log("no results")
        return 1
    finished = _dt.datetime.now()
    meta = {
        "server": label, "endpoint": server.endpoint if server else "?",
        "scale": args.scale, "repeat": args.repeat, "fs": fs_list, "workloads": workloads,
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "elapsed_min": (finished - started).total_seconds() / 60,
        "interrupted": interrupted, "unavailable": bench.unavailable, "notes": bench.notes,
        "env": environment(args.server if args.server in ("moto", "swift") else "url"),
        "boto3_config": (f"TransferConfig(multipart_chunksize=multipart_threshold="
                         f"{args.boto3_chunk_mib} MiB, max_concurrency="
                         f"{args.boto3_concurrency}); per-object work on a thread pool of "
                         f"{args.boto3_concurrency}"),
        "untar_desc": bench.untar_desc or "(not run)",
        "sizes": asdict(sc),
        "size_labels": {"file": _size(sc.file), "n_random": sc.n_random,
                        "n_sparse": sc.n_sparse,
                        "n_small": f"{sc.n_small:,}", "n_rename": sc.n_rename,
                        "untar": f"{len(bench.tar_files)} files" if bench.tar_files else "",
                        "append_base": _size(sc.append_base), "append": _size(sc.append),
                        "n_big": f"{sc.n_big:,}"},
        "command": "python benchmarks/run.py " + " ".join(shlex.quote(x) for x in
                                                          (argv or sys.argv[1:])),
        "json_name": base + ".json",
    }
    summary = rpt.Summary(meta, [asdict(s) for s in bench.samples])
    png = out / (base + ".png")
    why = rpt.chart(summary, str(png))
    if why:
        meta["notes"].append(why)
    md = rpt.markdown(summary, None if why else png.name)
    (out / (base + ".md")).write_text(md)
    (out / f"latest-{label}.md").write_text(md)
    (out / (base + ".json")).write_text(json.dumps(
        {"meta": meta, "summary": summary.to_json(),
         "samples": [asdict(s) for s in bench.samples]}, indent=1))
    log(f"wrote {out / (base + '.md')}, .json" + ("" if why else ", .png")
        + f" and latest-{label}.md")
    print()
    print(md)
    return 0 if not interrupted else 2


if __name__ == "__main__":
    sys.exit(main())
