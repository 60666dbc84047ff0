"""Local S3-protocol servers for tests and benchmarks, on 127.0.0.1 only.

Two servers are supported:

* moto's server mode (``moto.server``): in memory, starts in well under a
  second, the default for tests.  It re-reads a whole object for every ranged
  GET, so read throughput measured against it is meaningless.
* OpenStack Swift's s3api (Debian packages), started and stopped through the
  scripts in ``../shared/tools/swift-s3``: a production implementation that
  stores on disk.  Used by the benchmarks.

Both expose ``endpoint``, ``access_key``, ``secret_key``, ``client()`` and
``stop()``; both can be used as context managers.  ``stop()`` is idempotent
and never raises, so it is safe in ``finally`` blocks and fixtures.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
SWIFT_TOOLS = (REPO / ".." / "shared" / "tools" / "swift-s3").resolve()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s")


class _Server:
    endpoint: str
    access_key: str
    secret_key: str
    region = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment that points boto3 (and ObjectFS) at this server."""
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=self.region,
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
        return env

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "max_attempts": 3},
            ),
        )

    def new_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class MotoServer(_Server):
    """moto in server mode as a child process on a free loopback port.

    With ``policy`` (an IAM policy document), moto checks credentials and
    authorises every request: the server starts with authentication off for
    exactly the bootstrap requests (create a user, its access key, attach
    the policy), after which only that user's key is accepted and only what
    the policy allows succeeds.  Buckets are then created by the user.
    """

    access_key = "testing"
    secret_key = "testing"
    _BOOTSTRAP_REQUESTS = 3

    def __init__(self, port: int | None = None, log_path: str | None = None,
                 policy: dict | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._log = open(log_path or os.devnull, "ab")
        env = dict(os.environ)
        if policy is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self._BOOTSTRAP_REQUESTS)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        try:
            wait_for_port(self.port, 30, self.proc)
            if policy is not None:
                self._bootstrap(policy)
        except Exception:
            self.stop()
            raise

    def _bootstrap(self, policy: dict) -> None:
        import json

        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=self.region,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="objectfs-test")
        key = iam.create_access_key(UserName="objectfs-test")["AccessKey"]
        iam.put_user_policy(UserName="objectfs-test", PolicyName="test",
                            PolicyDocument=json.dumps(policy))
        self.access_key = key["AccessKeyId"]
        self.secret_key = key["SecretAccessKey"]

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._log.close()


SWIFT_PACKAGES = ["swift", "swift-proxy", "swift-object", "swift-container",
                  "swift-account", "memcached", "python3-swift"]


def swift_available() -> bool:
    return (SWIFT_TOOLS / "start.sh").exists() and shutil.which("swift-ring-builder") is not None


class SwiftServer(_Server):
    """OpenStack Swift with s3api, through the shared start/stop scripts.

    The data directory must be on a filesystem with user xattrs (ext4, xfs);
    by default a fresh directory under /var/tmp is used and removed on stop.
    """

    access_key = "testkey"
    secret_key = "testsecret"

    def __init__(self, data_dir: str | None = None, port: int | None = None, keep_data: bool = False):
        if not swift_available():
            raise RuntimeError(
                "Swift is not installed: apt-get install " + " ".join(SWIFT_PACKAGES))
        self._own_dir = data_dir is None
        self.keep_data = keep_data
        # start.sh uses PORT..PORT+4 (probed before making anything to clean up)
        self.port = port or self._free_port_block(5)
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="objectfs-swift-", dir="/var/tmp")
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        res = subprocess.run(
            ["bash", str(SWIFT_TOOLS / "start.sh"), self.data_dir, str(self.port)],
            capture_output=True, text=True, timeout=120,
        )
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"swift start failed: {res.stderr.strip() or res.stdout.strip()}")

    @staticmethod
    def _free_port_block(n: int) -> int:
        for _ in range(50):
            base = free_port()
            if base + n >= 65535:
                continue
            ok = True
            for p in range(base, base + n):
                with socket.socket() as s:
                    try:
                        s.bind((LOOPBACK, p))
                    except OSError:
                        ok = False
                        break
            if ok:
                return base
        raise RuntimeError("no block of free ports found")

    def stop(self) -> None:
        subprocess.run(["bash", str(SWIFT_TOOLS / "stop.sh"), self.data_dir],
                       capture_output=True, timeout=60)
        if self._own_dir and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start_server(kind: str = "moto", **kw) -> _Server:
    """Start a server by name: ``moto`` or ``swift``."""
    if kind == "moto":
        return MotoServer(**kw)
    if kind == "swift":
        return SwiftServer(**kw)
    raise ValueError(f"unknown server kind {kind!r}")
