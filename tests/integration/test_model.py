"""The real mount against a local directory, driven by random operation sequences.

hypothesis generates sequences of create, open, write at offsets, read,
truncate (by path and by descriptor), rename of files and directories,
unlink, mkdir, rmdir, chmod, fsync, close and remount; each operation runs
through the kernel on the ObjectFS mount and on a plain local directory,
and both must give the same result: the same return value or the same
errno.  After every step the trees must match (names, types, modes, sizes);
at a remount and at the end every file's bytes must match, and S3 must hold
exactly the tree: a ``dir/`` marker per directory, one object per file with
its bytes and its mode.

The unit-level model (tests/unit/test_filesystem_model.py) drives the core
against an in-memory store; this one drives the kernel, FUSE and boto3
against a real S3 server.  Operations SEMANTICS.md lists as unsupported
(hard links) or different (times, st_nlink, directory sizes) are not
generated or compared.

CI runs a modest, derandomized search (the same sequences every run);
``OBJECTFS_SOAK=1`` (``make soak``) runs a long random one (hypothesis then
prints the failing sequence and a ``@reproduce_failure`` blob).  The
``model_server`` fixture names the S3 endpoint the mount uses: a fault
injecting proxy can be put in front of the server there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from tests.integration.test_hostile import SOAK
from tests.support.mounts import ObjectFSMount

KiB, MiB = 1 << 10, 1 << 20
NAMES = ["a", "b", "c"]
# paths of up to two components; renames can move them deeper
PATHS = NAMES + [f"{p}/{n}" for p in NAMES for n in NAMES]
MODES = [0o644, 0o600, 0o755, 0o700, 0o640, 0o444, 0o777]
OPTIONS = ["part_size=5M", "write_buffer_memory=32M", "read_part_size=1M", "prefetch_max=4M"]
MOUNT_SECONDS = 120  # one example may take this long before its mount is aborted
REMOUNT_EVERY = 10  # steps at least between remounts (each costs seconds)



def model_settings(soak: bool) -> settings:
    if soak:
        return settings(max_examples=int(os.environ.get("OBJECTFS_MODEL_EXAMPLES", 200)),
                        stateful_step_count=int(os.environ.get("OBJECTFS_MODEL_STEPS", 80)),
                        deadline=None, print_blob=True, database=None,
                        suppress_health_check=list(HealthCheck))
    return settings(max_examples=15, stateful_step_count=30, deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck))


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def attempt(fn, *args):
    """("ok", result) or ("err", errno name): comparable across the two sides."""
    try:
        return "ok", fn(*args)
    except OSError as e:
        return "err", errno.errorcode.get(e.errno, e.errno)


def snapshot(root: str) -> dict[str, tuple]:
    """path -> (type, permission bits, size of files) for every entry under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            kind = "d" if stat.S_ISDIR(st_.st_mode) else "f"
            out[os.path.relpath(p, root)] = (kind, stat.S_IMODE(st_.st_mode),
                                             st_.st_size if kind == "f" else None)
    return out


class Counters:
    """Operations run by every example of one test, for the report."""

    def __init__(self):
        self.steps = self.examples = self.remounts = self.bytes_compared = 0


class MountVersusLocal(RuleBasedStateMachine):
    # set by the test function before the run; the mounts use mount_server
    # (a fault proxy in front of server) when it is set
    server = None
    mount_server = None
    workdir: Path
    counters: Counters

    def __init__(self):
        super().__init__()
        cls = type(self)
        cls.counters.examples += 1
        self.dir = cls.workdir / f"ex{cls.counters.examples}"
        self.local = self.dir / "local"
        self.local.mkdir(parents=True)
        self.bucket = cls.server.new_bucket("model")
        self.client = cls.server.client()
        self.mounts: list[ObjectFSMount] = []
        self.m = self._mount()
        # open descriptors: (mount fd, local fd)
        self.handles: list[tuple[int, int]] = []
        self.since_remount = 0

    def _mount(self) -> ObjectFSMount:
        mp = self.dir / f"mnt{len(self.mounts)}"
        mp.mkdir()
        cls = type(self)
        m = ObjectFSMount(cls.mount_server or cls.server, self.bucket, str(mp),
                          options=["log_level=debug", f"staging_dir={self.dir / 'staging'}",
                                   f"cache_dir={self.dir / 'cache'}", *OPTIONS],
                          log_path=str(self.dir / f"objectfs{len(self.mounts)}.log"))
        self.mounts.append(m)
        self._watchdog = m.watchdog(MOUNT_SECONDS)
        self._watchdog.__enter__()
        return m

    def _unmount(self) -> None:
        try:
            self.m.stop()
        finally:
            self._watchdog.__exit__(None, None, None)
        assert not self.m.watchdog_fired, "a filesystem call hung; the mount was aborted"
        text = Path(self.m.log_path).read_text(errors="replace")
        assert "Traceback" not in text, text[-4000:]

    def teardown(self):
        try:
            self.close_all()
            self.check_s3()
            self._unmount()
        finally:
            for fm, fl in self.handles:
                for fd in (fm, fl):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            for m in self.mounts:
                m.stop()
            self._watchdog.__exit__(None, None, None)
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------

    def on_paths(self, fn, path: str, *args, path2: str | None = None):
        mp, lp = os.path.join(self.m.mountpoint, path), os.path.join(self.local, path)
        if path2 is None:
            got, want = attempt(fn, mp, *args), attempt(fn, lp, *args)
        else:
            got = attempt(fn, mp, os.path.join(self.m.mountpoint, path2), *args)
            want = attempt(fn, lp, os.path.join(self.local, path2), *args)
        type(self).counters.steps += 1
        assert got == want, f"{fn.__name__}({path!r}, {path2!r}, {args}): mount {got}, local {want}"
        return got

    def on_fds(self, fn, i: int, *args):
        fm, fl = self.handles[i]
        got, want = attempt(fn, fm, *args), attempt(fn, fl, *args)
        type(self).counters.steps += 1
        assert got == want, f"{fn.__name__}(fd {i}, {args}): mount {got}, local {want}"
        if got[0] == "ok" and isinstance(got[1], bytes):
            type(self).counters.bytes_compared += len(got[1])
        return got

    def open_both(self, path: str, flags: int, mode: int = 0o644) -> None:
        mp, lp = os.path.join(self.m.mountpoint, path), os.path.join(self.local, path)
        got, want = attempt(os.open, mp, flags, mode), attempt(os.open, lp, flags, mode)
        type(self).counters.steps += 1
        if got[0] == "ok" and want[0] == "ok":
            self.handles.append((got[1], want[1]))
            return
        for r in (got, want):
            if r[0] == "ok":
                os.close(r[1])
        assert got == want, f"open({path!r}, {flags:#o}): mount {got}, local {want}"

    def close_all(self) -> None:
        while self.handles:
            self.close_handle(0)

    def close_handle(self, i: int) -> None:
        fm, fl = self.handles.pop(i)
        got, want = attempt(os.close, fm), attempt(os.close, fl)
        type(self).counters.steps += 1
        assert got == want, f"close: mount {got}, local {want}"

    def check_bytes(self) -> None:
        for path, (kind, _, size) in snapshot(str(self.local)).items():
            if kind == "f":
                mine = Path(self.m.mountpoint, path).read_bytes()
                assert mine == Path(self.local, path).read_bytes(), f"bytes of {path!r} differ"
                type(self).counters.bytes_compared += len(mine)

    def check_s3(self) -> None:
        """With every descriptor closed, S3 holds exactly the local tree."""
        want = {}
        for path, (kind, mode, _) in snapshot(str(self.local)).items():
            key = path + "/" if kind == "d" else path
            want[key] = (mode, b"" if kind == "d" else Path(self.local, path).read_bytes())
        got = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for o in page.get("Contents", []):
                r = self.client.get_object(Bucket=self.bucket, Key=o["Key"])
                got[o["Key"]] = (stat.S_IMODE(int(r["Metadata"].get("mode", "0"))),
                                 r["Body"].read())
        assert sorted(got) == sorted(want), "keys in S3 differ from the local tree"
        for key, (mode, body) in want.items():
            assert got[key][0] == mode, f"mode of {key!r} in S3"
            assert got[key][1] == body, f"bytes of {key!r} in S3"
            type(self).counters.bytes_compared += len(body)
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads")
        assert not uploads, f"multipart uploads left behind: {uploads}"

    # -- rules: names ----------------------------------------------------------------------

    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(MODES))
    def mkdir(self, path, mode):
        self.on_paths(os.mkdir, path, mode)

    @rule(path=st.sampled_from(PATHS))
    def rmdir(self, path):
        self.on_paths(os.rmdir, path)

    @rule(path=st.sampled_from(PATHS))
    def unlink(self, path):
        self.on_paths(os.unlink, path)

    @rule(src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def rename(self, src, dst):
        self.on_paths(os.rename, src, path2=dst)

    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(MODES))
    def chmod(self, path, mode):
        self.on_paths(os.chmod, path, mode)

    @rule(path=st.sampled_from(PATHS), size=st.integers(0, 200 * KiB))
    def truncate(self, path, size):
        self.on_paths(os.truncate, path, size)

    # -- rules: descriptors ----------------------------------------------------------------

    @rule(path=st.sampled_from(PATHS), mode=st.sampled_from(MODES), excl=st.booleans(),
          trunc=st.booleans())
    def create(self, path, mode, excl, trunc):
        flags = os.O_CREAT | os.O_RDWR | (os.O_EXCL if excl else 0) | (os.O_TRUNC if trunc else 0)
        self.open_both(path, flags, mode)

    @rule(path=st.sampled_from(PATHS),
          access=st.sampled_from([os.O_RDONLY, os.O_WRONLY, os.O_RDWR]), trunc=st.booleans())
    def open(self, path, access, trunc):
        self.open_both(path, access | (os.O_TRUNC if trunc and access != os.O_RDONLY else 0))

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), off=st.integers(0, 160 * KiB), n=st.integers(1, 64 * KiB),
          seed=st.integers(0, 1000))
    def write(self, data, off, n, seed):
        i = data.draw(st.integers(0, len(self.handles) - 1), label="handle")
        self.on_fds(os.pwrite, i, blob(n, seed), off)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), seed=st.integers(0, 1000))
    def write_big(self, data, seed):
        """Past one part (5 MiB): sequential from 0 streams as multipart."""
        i = data.draw(st.integers(0, len(self.handles) - 1), label="handle")
        off = data.draw(st.sampled_from([0, 0, 100 * KiB]), label="off")
        self.on_fds(os.pwrite, i, blob(5 * MiB + 300 * KiB, seed), off)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), off=st.integers(0, 200 * KiB), n=st.integers(1, 200 * KiB))
    def read(self, data, off, n):
        i = data.draw(st.integers(0, len(self.handles) - 1), label="handle")
        self.on_fds(os.pread, i, n, off)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), size=st.integers(0, 200 * KiB))
    def ftruncate(self, data, size):
        i = data.draw(st.integers(0, len(self.handles) - 1), label="handle")
        self.on_fds(os.ftruncate, i, size)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def fsync(self, data):
        i = data.draw(st.integers(0, len(self.handles) - 1), label="handle")
        self.on_fds(os.fsync, i)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def close(self, data):
        self.close_handle(data.draw(st.integers(0, len(self.handles) - 1), label="handle"))

    @precondition(lambda self: self.since_remount >= REMOUNT_EVERY)
    @rule()
    def remount(self):
        """Close everything, check S3, mount afresh over the same bucket."""
        self.since_remount = 0
        self.close_all()
        self.check_bytes()
        self.check_s3()
        self._unmount()
        self.m = self._mount()
        type(self).counters.remounts += 1
        self.check_bytes()

    @invariant()
    def trees_match(self):
        self.since_remount += 1
        assert snapshot(self.m.mountpoint) == snapshot(str(self.local))


@pytest.fixture
def model_server(s3):
    """The S3 endpoint the model's mounts use (a fault proxy may stand here)."""
    return s3


def run_model(server, tmp_path, soak: bool, mount_server=None) -> Counters:
    from tests.conftest import fuse_usable

    reason = fuse_usable()
    if reason:
        pytest.skip(reason)
    counters = Counters()
    MountVersusLocal.server = server
    MountVersusLocal.mount_server = mount_server
    MountVersusLocal.workdir = tmp_path
    MountVersusLocal.counters = counters
    try:
        run_state_machine_as_test(MountVersusLocal, settings=model_settings(soak))
    finally:
        print(f"\nmodel: {counters.examples} examples, {counters.steps} operations, "
              f"{counters.remounts} remounts, {counters.bytes_compared} bytes compared")
    assert counters.examples >= 1 and counters.steps > counters.examples
    return counters


@pytest.mark.timeout(900)
def test_mount_behaves_like_a_local_directory(model_server, tmp_path):
    run_model(model_server, tmp_path, soak=False)


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
@pytest.mark.skipif(not SOAK, reason="OBJECTFS_SOAK=1 (make soak) runs the long random search")
def test_mount_behaves_like_a_local_directory_long_random(model_server, tmp_path):
    run_model(model_server, tmp_path, soak=True)


# Faults at about 5% of requests.  A request is faulted at most once in a row
# (max_consecutive=1), fewer than the mount's retries, so every operation must
# still give exactly what the local directory gives.
MODEL_FAULT_RATES = {
    "*": {"error": 0.02, "slowdown": 0.015, "reset": 0.015},
    "GetObject": {"error": 0.01, "reset_mid": 0.02, "truncate": 0.02},
    "PutObject": {"error": 0.02, "reset": 0.01, "corrupt_upload": 0.02},
    "UploadPart": {"error": 0.02, "reset": 0.01, "corrupt_upload": 0.02},
}


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
@pytest.mark.skipif(not SOAK, reason="OBJECTFS_SOAK=1 (make soak) runs the model under faults")
def test_mount_behaves_like_a_local_directory_under_faults(s3, tmp_path):
    from tests.support.faultproxy import FaultProxy

    with FaultProxy(s3, seed=int(os.environ.get("OBJECTFS_SOAK_SEED", "5")), retry_after=0.2,
                    delay=0.2, max_consecutive=1) as proxy:
        proxy.set_rates(MODEL_FAULT_RATES)
        counters = run_model(s3, tmp_path, soak=True, mount_server=proxy)
        injected, requests = proxy.injected(), sum(proxy.requests.values())
    print(f"model under faults: {requests} requests, {injected} faults injected, "
          f"{counters.steps} operations, {counters.bytes_compared} bytes compared, 0 wrong")
    assert injected > 0
