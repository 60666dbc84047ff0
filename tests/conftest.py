"""Fixtures: a real S3 server on loopback and real FUSE mounts of ObjectFS.

* ``s3`` — one moto server for the session (stopped at the end, even on
  failure).  ``s3_client`` is a boto3 client for it.
* ``bucket`` — a fresh, empty bucket per test.
* ``mount`` — a factory: ``mount(bucket, prefix="", options=[...])`` mounts
  ObjectFS in the foreground on a fresh directory and returns the handle.
  Every mount is stopped at teardown (escalating to aborting the FUSE
  connection), and a watchdog aborts it if the test runs past its deadline,
  so a hung filesystem call fails the test instead of hanging the suite.
* ``objectfs_cli`` — runs the ``objectfs`` command in a subprocess with
  the server's credentials, with a timeout.

Tests that mount need root and /dev/fuse; they are skipped with a reason
otherwise (never silently passed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.mounts import ObjectFSMount, force_unmount, is_mounted
from tests.support.s3server import MotoServer

REPO = Path(__file__).resolve().parents[1]
# A test may take this long before its mounts are aborted.
WATCHDOG_SECONDS = float(os.environ.get("OBJECTFS_TEST_WATCHDOG", "240"))


def fuse_usable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    if os.geteuid() != 0:
        return "mount tests run as root"
    return None


@pytest.fixture(scope="session", autouse=True)
def fuse_control():
    """The watchdog aborts hung mounts through fusectl: make sure it is there."""
    from tests.support.mounts import ensure_fusectl

    if fuse_usable() is None:
        ensure_fusectl()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = MotoServer(log_path=str(log))
    try:
        yield server
    finally:
        server.stop()


# Denials the authorisation tests rely on (one server for all of them).
AUTH_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/secret/*"},
        {"Effect": "Deny", "Action": "s3:PutObject", "Resource": [
            "arn:aws:s3:::*/readonly/locked*", "arn:aws:s3:::*/locked/f*",
            "arn:aws:s3:::*/denied*"]},
    ],
}


@pytest.fixture(scope="session")
def auth_s3(tmp_path_factory):
    """A moto server that checks credentials and applies AUTH_POLICY."""
    server = MotoServer(policy=AUTH_POLICY,
                        log_path=str(tmp_path_factory.mktemp("moto-auth") / "moto.log"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_client(s3):
    return s3.client()


@pytest.fixture
def bucket(s3):
    return s3.new_bucket()


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="objectfs-test-")
    try:
        yield Path(d)
    finally:
        for mp in Path(d).glob("mnt*"):
            force_unmount(str(mp))
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mount(s3, workdir, request):
    reason = fuse_usable()
    if reason:
        pytest.skip(reason)
    handles: list[ObjectFSMount] = []
    counter = [0]

    def make(bucket: str, prefix: str = "", options: list[str] | None = None,
             env: dict | None = None, server=None) -> ObjectFSMount:
        counter[0] += 1
        mp = workdir / f"mnt{counter[0]}"
        mp.mkdir()
        log = workdir / f"objectfs{counter[0]}.log"
        opts = ["log_level=debug", f"staging_dir={workdir / 'staging'}",
                f"cache_dir={workdir / 'cache'}"] + list(options or [])
        h = ObjectFSMount(server or s3, bucket, str(mp), prefix=prefix, options=opts,
                          log_path=str(log), env=env)
        handles.append(h)
        return h

    import threading

    def fire():
        for h in handles:
            h.abort()

    timer = threading.Timer(WATCHDOG_SECONDS, fire)
    timer.daemon = True
    timer.start()
    try:
        yield make
    finally:
        timer.cancel()
        for h in handles:
            h.stop()
        leftover = [h.mountpoint for h in handles if is_mounted(h.mountpoint)]
        if any(h.watchdog_fired for h in handles):
            pytest.fail(f"watchdog aborted a hung mount after {WATCHDOG_SECONDS}s")
        assert not leftover, f"still mounted after teardown: {leftover}"
        for h in handles:
            # a traceback in the daemon's log is a bug even if the test passed
            text = h.log()
            if "Traceback" in text and request.node.get_closest_marker("allow_tracebacks") is None:
                pytest.fail(f"traceback in the ObjectFS log:\n{text[-4000:]}")


def run_cli(args: list[str], env: dict | None = None, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONPATH", str(REPO))
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "objectfs", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def objectfs_cli(s3):
    def run(*args: str, env: dict | None = None, timeout: float = 60):
        e = s3.env()
        if env:
            e.update(env)
        return run_cli(list(args), env=e, timeout=timeout)
    return run
