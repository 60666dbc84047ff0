"""A fault-injecting HTTP proxy between ObjectFS (or any S3 client) and a test S3 server.

ObjectFS is pointed at the proxy's endpoint; the proxy forwards every request
byte for byte (Host header included, so SigV4 signatures made for the
proxy's host:port reach the server unchanged; moto does not check them) and,
at configurable per-operation rates, misbehaves the way S3 and networks do:

========================  =================================================
fault                     what the client sees
========================  =================================================
``error``                 500 InternalError (request not forwarded)
``slowdown``              503 SlowDown with ``Retry-After`` (not forwarded)
``reset``                 request executed upstream, then the connection is
                          reset before any response byte (a lost response)
``reset_mid``             headers and part of the body, then a reset (RST)
``truncate``              headers (Content-Length of the full body) and part
                          of the body, then a clean close (FIN)
``delay``                 the response, ``delay`` seconds late
``corrupt_upload``        one byte of the request body flipped in transit
========================  =================================================

moto does not verify upload checksums, so by default the proxy does what AWS
does for it (``check_digests``): a body that does not match its ``Content-MD5`` gets 400 BadDigest, one
that does not match a signed ``x-amz-content-sha256`` gets 400
XAmzContentSHA256Mismatch (counted in ``rejected``).  A body with neither is
forwarded, corrupted, as a server would store it.

Faults that need a body (``reset_mid``, ``truncate``) on a response without
one act as ``reset``.  The operation (``GetObject``, ``PutObject``,
``UploadPart``, ``HeadObject``, ``ListObjectsV2``,
``CompleteMultipartUpload``, ...) is recognised from the method, path and
query of a path-style request.

Python API::

    with FaultProxy(s3, seed=1) as proxy:          # s3: a MotoServer
        m = mount(bucket, server=proxy)            # proxy.endpoint, proxy.env()
        proxy.set_rates({"GetObject": {"reset_mid": 0.1, "truncate": 0.1},
                         "*": {"error": 0.05, "slowdown": 0.05}})
        proxy.fail_next("PutObject", "slowdown", count=2)
        ...
        proxy.injected()                  # faults injected in all
        proxy.injected("GetObject", "truncate")
        proxy.counts                      # Counter of (op, fault)
        proxy.requests                    # Counter of op (every request seen)
        proxy.events                      # [Event(t, op, fault, signature)]
        proxy.rejected                    # bodies refused for a bad checksum
        proxy.clear()                     # no more faults
        proxy.hold("GetObject", "/big")   # such requests wait (not counted
        proxy.held("GetObject")           #   as faults) until release()
        proxy.release()

Randomness comes from one ``random.Random(seed)``.  ``max_consecutive``
bounds how many faults in a row one request (same method, target and Range)
can get, so a client with that many retries always gets through: tests
with random faults are then deterministic in outcome.  The proxy listens on
127.0.0.1 only and runs in daemon threads; ``stop()`` (also at context exit
and at interpreter exit) closes the listener and every connection.
"""

from __future__ import annotations

import atexit
import base64
import collections
import hashlib
import http.client
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
FAULTS = ("error", "slowdown", "reset", "reset_mid", "truncate", "delay", "corrupt_upload")
_BODY_FAULTS = ("reset_mid", "truncate")


@dataclass(frozen=True)
class Event:
    """One request the proxy saw: when (monotonic), which op, which fault (or None)."""

    t: float
    op: str
    fault: str | None
    signature: str


def operation(method: str, target: str, headers: dict[str, str]) -> str:
    """The S3 operation of a path-style request (``Other`` if unknown)."""
    parts = urlsplit(target)
    q = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.lstrip("/")
    has_key = "/" in path and path.split("/", 1)[1] != ""
    copy = "x-amz-copy-source" in headers
    if method == "GET":
        if not has_key:
            if "uploads" in q:
                return "ListMultipartUploads"
            if q.get("list-type") == ["2"]:
                return "ListObjectsV2"
            return "ListObjects" if len(q) == 0 or "prefix" in q or "delimiter" in q else "Other"
        return "ListParts" if "uploadId" in q else "GetObject"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "PUT":
        if not has_key:
            return "CreateBucket" if not q else "Other"
        if "partNumber" in q:
            return "UploadPartCopy" if copy else "UploadPart"
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        if "delete" in q:
            return "DeleteObjects"
        return "Other"
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_key else "DeleteBucket"
    return "Other"


def _error_body(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>faultproxy</RequestId></Error>").encode()


def _digest_mismatch(headers: dict[str, str], body: bytes) -> str | None:
    """The S3 error code a verifying server answers for ``body``, or None."""
    md5 = headers.get("content-md5")
    if md5 and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
        return "BadDigest"
    sha = headers.get("x-amz-content-sha256", "")
    if len(sha) == 64 and hashlib.sha256(body).hexdigest() != sha:
        return "XAmzContentSHA256Mismatch"
    return None


class _Closed(Exception):
    """The client closed its connection."""


class FaultProxy:
    def __init__(self, upstream, *, seed: int = 0, retry_after: float = 1,
                 delay: float = 0.5, max_consecutive: int | None = None,
                 check_digests: bool = True, port: int = 0):
        """``upstream``: a server object with ``endpoint`` (http://host:port)
        and ``env()``, such as ``MotoServer``.  ``check_digests=False`` leaves
        checking upload checksums to the server (for servers that do)."""
        self.upstream = upstream
        u = urlsplit(upstream.endpoint)
        self._up_host, self._up_port = u.hostname, u.port or 80
        self.retry_after = retry_after
        self.check_digests = check_digests
        self.delay = delay
        self.max_consecutive = max_consecutive
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rates: dict[str, dict[str, float]] = {}
        self._scripted: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._streak: dict[str, int] = {}
        self._holds: list[tuple[str, str]] = []
        self._released = threading.Event()
        self.waiting: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()
        self.requests: collections.Counter = collections.Counter()
        self.events: list[Event] = []
        self.rejected = 0
        self._conns: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, port))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._stopped = False
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    # -- public API -----------------------------------------------------------

    @property
    def access_key(self) -> str:
        return self.upstream.access_key

    @property
    def secret_key(self) -> str:
        return self.upstream.secret_key

    def env(self) -> dict[str, str]:
        """Environment for a client of the proxy (the upstream's credentials)."""
        return self.upstream.env()

    def set_rates(self, rates: dict[str, dict[str, float]]) -> None:
        """Per-operation fault probabilities; key ``"*"`` applies to operations
        not listed.  The probabilities of one operation must sum to <= 1."""
        for op, faults in rates.items():
            unknown = set(faults) - set(FAULTS)
            if unknown:
                raise ValueError(f"unknown faults {sorted(unknown)}")
            if sum(faults.values()) > 1 + 1e-9:
                raise ValueError(f"fault rates of {op} sum to more than 1")
        with self._lock:
            self._rates = {op: dict(f) for op, f in rates.items()}

    def fail_next(self, op: str, fault: str, count: int = 1) -> None:
        """Inject ``fault`` into the next ``count`` requests of ``op`` (before rates)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._scripted[op].extend([fault] * count)

    def clear(self) -> None:
        """Stop injecting: no rates, no scripted faults (counters are kept)."""
        with self._lock:
            self._rates = {}
            self._scripted.clear()

    def hold(self, op: str, contains: str = "") -> None:
        """Keep requests of ``op`` whose target holds ``contains`` waiting,
        before they are forwarded, until ``release()`` (at most 120 s)."""
        with self._lock:
            self._released.clear()
            self._holds.append((op, contains))

    def held(self, op: str | None = None) -> int:
        """How many requests (of ``op``) are waiting now."""
        with self._lock:
            return sum(n for o, n in self.waiting.items() if op is None or o == op)

    def release(self) -> None:
        """Let every held request go on; hold nothing more."""
        with self._lock:
            self._holds = []
            self._released.set()

    def _wait_if_held(self, op: str, target: str) -> None:
        with self._lock:
            if not any(op == o and c in target for o, c in self._holds):
                return
            self.waiting[op] += 1
        try:
            self._released.wait(timeout=120)
        finally:
            with self._lock:
                self.waiting[op] -= 1

    def injected(self, op: str | None = None, fault: str | None = None) -> int:
        """How many faults were injected (optionally of one op and/or kind)."""
        with self._lock:
            return sum(n for (o, f), n in self.counts.items()
                       if (op is None or o == op) and (fault is None or f == fault))

    def stop(self) -> None:
        """Close the listener and every connection.  Idempotent, never raises."""
        if self._stopped:
            return
        self._stopped = True
        self._released.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._thread.join(timeout=5)
        atexit.unregister(self.stop)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- fault choice -----------------------------------------------------------

    def _choose(self, op: str, signature: str, has_body: bool) -> str | None:
        with self._lock:
            self.requests[op] += 1
            fault = None
            if self._scripted.get(op):
                fault = self._scripted[op].popleft()
            else:
                streak = self._streak.get(signature, 0)
                rates = self._rates.get(op, self._rates.get("*", {}))
                if rates and (self.max_consecutive is None or streak < self.max_consecutive):
                    x = self._rng.random()
                    for name, p in rates.items():
                        if x < p:
                            fault = name
                            break
                        x -= p
            if fault == "corrupt_upload" and not has_body:
                fault = None
            if fault is None:
                self._streak.pop(signature, None)
            else:
                self._streak[signature] = self._streak.get(signature, 0) + 1
            self.events.append(Event(time.monotonic(), op, fault, signature))
            return fault

    def _count(self, op: str, fault: str) -> None:
        with self._lock:
            self.counts[(op, fault)] += 1

    # -- serving ----------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        try:
            while not self._stopped:
                if not self._one(conn, rfile):
                    break
        except (_Closed, OSError, http.client.HTTPException):
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            rfile.close()
            conn.close()

    def _read_request(self, conn, rfile):
        line = rfile.readline(65537)
        if not line:
            raise _Closed
        method, target, _ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        raw_headers: list[tuple[str, str]] = []
        while True:
            h = rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            raw_headers.append((name.strip(), value.strip()))
        headers = {n.lower(): v for n, v in raw_headers}
        if headers.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _Closed  # botocore sends no chunked bodies with when_required checksums
        body = rfile.read(int(headers.get("content-length", 0) or 0))
        return method, target, raw_headers, headers, body

    def _one(self, conn: socket.socket, rfile) -> bool:
        """Serve one request; False when the connection is to be dropped."""
        method, target, raw_headers, headers, body = self._read_request(conn, rfile)
        op = operation(method, target, headers)
        self._wait_if_held(op, target)
        signature = f"{method} {target} {headers.get('range', '')}"
        fault = self._choose(op, signature, bool(body))
        if fault in ("error", "slowdown"):
            self._count(op, fault)
            if fault == "error":
                status, reason, extra = 500, "Internal Server Error", []
                payload = _error_body("InternalError", "injected by faultproxy")
            else:
                status, reason = 503, "Slow Down"
                extra = [("Retry-After", f"{self.retry_after:g}")]
                payload = _error_body("SlowDown", "Please reduce your request rate.")
            self._send(conn, status, reason,
                       [("Content-Type", "application/xml"),
                        ("Content-Length", str(len(payload)))] + extra,
                       b"" if method == "HEAD" else payload)
            return True
        if fault == "corrupt_upload":
            self._count(op, fault)
            body = bytearray(body)
            body[len(body) // 2] ^= 0xFF
            body = bytes(body)
        refusal = _digest_mismatch(headers, body) if self.check_digests else None
        if refusal is not None:
            with self._lock:
                self.rejected += 1
            payload = _error_body(refusal, "the body does not match its checksum")
            self._send(conn, 400, "Bad Request", [("Content-Type", "application/xml"),
                                                  ("Content-Length", str(len(payload)))], payload)
            return True
        status, reason, resp_headers, resp_body = self._forward(method, target, raw_headers, body)
        if fault in _BODY_FAULTS and not resp_body:
            fault = "reset"
        if fault == "reset":
            self._count(op, fault)
            self._reset(conn)
            return False
        if fault == "delay":
            self._count(op, fault)
            time.sleep(self.delay)
        if fault in _BODY_FAULTS:
            self._count(op, fault)
            cut = self._cut(len(resp_body))
            self._send(conn, status, reason, resp_headers, resp_body[:cut])
            if fault == "reset_mid":
                self._reset(conn)
            else:
                conn.shutdown(socket.SHUT_WR)
            return False
        self._send(conn, status, reason, resp_headers, resp_body)
        return True

    def _cut(self, n: int) -> int:
        with self._lock:
            return self._rng.randrange(0, n)

    def _forward(self, method, target, raw_headers, body):
        up = http.client.HTTPConnection(self._up_host, self._up_port, timeout=120)
        try:
            up.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in raw_headers:
                if name.lower() not in ("expect", "connection"):
                    up.putheader(name, value)
            up.endheaders(body if body else None)
            r = up.getresponse()
            resp_body = r.read() if method != "HEAD" else b""
            hop = {"connection", "transfer-encoding", "keep-alive"}
            headers = [(n, v) for n, v in r.getheaders() if n.lower() not in hop]
            if method != "HEAD" and not any(n.lower() == "content-length" for n, _ in headers):
                headers.append(("Content-Length", str(len(resp_body))))
            return r.status, r.reason, headers, resp_body
        finally:
            up.close()

    @staticmethod
    def _send(conn, status, reason, headers, body) -> None:
        head = [f"HTTP/1.1 {status} {reason}"] + [f"{n}: {v}" for n, v in headers]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    @staticmethod
    def _reset(conn) -> None:
        """Close with RST instead of FIN."""
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
