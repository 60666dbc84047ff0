"""A moto server whose bucket already holds a large series of keys.

Creating 100,000 objects through moto's HTTP API takes minutes (about 400
PUTs per second on this machine with 16 client threads), so the server
process fills its own in-memory backend before it starts listening: 100,000
keys take about three seconds.  To ObjectFS it is an ordinary S3 endpoint;
further keys can be added with boto3 as usual.

Run as ``python -m tests.support.preloaded_moto PORT BUCKET PREFIX COUNT``:
creates ``BUCKET`` holding ``PREFIX`` + ``f%06d`` (one byte each) for
``range(COUNT)``, then serves on 127.0.0.1:PORT like ``python -m moto.server``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.s3server import LOOPBACK, REPO, MotoServer, free_port, wait_for_port


def series_key(prefix: str, i: int) -> str:
    return f"{prefix}f{i:06d}"


class PreloadedMotoServer(MotoServer):
    """MotoServer (same ``endpoint``, ``client()``, ``env()``, ``stop()``)
    started with ``bucket`` already holding ``count`` keys under ``prefix``."""

    def __init__(self, bucket: str, prefix: str, count: int, log_path: str | None = None):
        self.port = free_port()
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._log = open(log_path or os.devnull, "ab")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.preloaded_moto", str(self.port), bucket,
             prefix, str(count)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env)
        try:
            wait_for_port(self.port, 120, self.proc)
        except Exception:
            self.stop()
            raise


def _main(port: str, bucket: str, prefix: str, count: str) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import main

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(bucket, MotoServer.region)
    for i in range(int(count)):
        backend.put_object(bucket, series_key(prefix, i), b"x")
    main(["-H", LOOPBACK, "-p", port])


if __name__ == "__main__":
    _main(*sys.argv[1:])
