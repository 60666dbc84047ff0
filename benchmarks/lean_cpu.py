"""Client CPU per request on the lean path (HEAD, and the small GET that
replaces it for files up to small_file_prefetch), as the daemon sends them:
through ``S3Store`` from the event loop, 32 at a time.

The server is a canned one in a child process: every request on a kept
connection gets the same S3-like answer at once, so the figure is the
client's CPU alone (signing, the HTTP exchange on trio, parsing the answer
into an ObjectInfo), free of any S3 server's noise.  A quick run, not a test:

    PYTHONPATH=. .venv/bin/python benchmarks/lean_cpu.py [--requests 5000] [--rounds 3]

Run it on two checkouts alternately to compare them (``PYTHONPATH`` picks
the one measured; start it from outside either checkout).
"""

from __future__ import annotations

import argparse
import multiprocessing
import selectors
import socket
import time

BODY = b"x" * 4096
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n"
        b"ETag: \"0123456789abcdef0123456789abcdef\"\r\n"
        b"Last-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\n"
        b"Date: Sun, 06 Dec 2026 00:00:01 GMT\r\nContent-Type: application/octet-stream\r\n"
        b"x-amz-meta-mode: 33188\r\nx-amz-meta-uid: 0\r\nx-amz-meta-gid: 0\r\n"
        b"x-amz-meta-mtime: 1700000000\r\nx-amz-request-id: tx0123456789\r\n\r\n")


def serve(listener: socket.socket) -> None:
    """Answer every request on every connection (HEAD: headers only)."""
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                conn.setblocking(True)
                sel.register(conn, selectors.EVENT_READ)
                pending[conn] = b""
                continue
            conn = key.fileobj
            data = conn.recv(65536)
            if not data:
                sel.unregister(conn)
                conn.close()
                pending.pop(conn, None)
                continue
            buf = pending[conn] + data
            while b"\r\n\r\n" in buf:
                request, _, buf = buf.partition(b"\r\n\r\n")
                conn.sendall(HEAD if request.startswith(b"HEAD ") else HEAD + BODY)
            pending[conn] = buf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import trio

    from objectfs.store.s3 import S3Settings, S3Store

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    server = multiprocessing.Process(target=serve, args=(listener,), daemon=True)
    server.start()
    try:
        store = S3Store(S3Settings(bucket="bench", endpoint_url=f"http://127.0.0.1:{port}",
                                   access_key="AKIDBENCH", secret_key="secret",
                                   region="us-east-1", addressing_style="path"))
        # what the mount's first listing teaches the lean path (lean.py
        # _learn_base); the canned server cannot answer a listing
        store.lean._base = f"http://127.0.0.1:{port}/bench/"
        store.lean._use_transport()

        async def run(n: int, body_max: int) -> None:
            limit = trio.CapacityLimiter(32)

            async def one(i: int) -> None:
                async with limit:
                    await store.head(f"d/f{i % 200:04d}", body_max=body_max)

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)

        for name, body_max in (("HEAD", 0), ("GET of a small file", 16384)):
            trio.run(run, 200, body_max)  # connections made, signers chosen
            figures = []
            for _ in range(args.rounds):
                cpu = time.process_time()
                trio.run(run, args.requests, body_max)
                figures.append((time.process_time() - cpu) / args.requests * 1e6)
            print(f"{name}: {', '.join(f'{f:.0f}' for f in figures)} us of client CPU a request")
    finally:
        server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
