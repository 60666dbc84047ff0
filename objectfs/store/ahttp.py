"""Small S3 requests sent from the event loop, without a worker thread.

A request made in a worker thread (``trio.to_thread``) pays for two thread
wake-ups: the worker's, and the event loop's when the answer is handed
back.  On two cores shared with the S3 server, that cost 0.2 ms of CPU and
0.3-0.7 ms of latency per request (sequential DeleteObjects against Swift:
8.2-8.3 ms each through a thread, 7.5-7.9 ms sent from the loop).  An
``rm`` of many files, a cold ``ls -l``, a lookup and a random read each wait
for such requests one after the other.

So the lean path (lean.py) sends requests whose answer is small
(HeadObject, DeleteObject, a ListObjectsV2 of a few keys, a GetObject of a
small range, the multipart upload's requests but UploadPart) through
``AsyncTransport``: HTTP/1.1 over trio streams,
with kept connections, the same timeouts, socket options and TLS settings
as ``lean.Transport``.  Large bodies stay in worker threads, which read them
into kept buffers with the GIL released.

Only what S3 servers send is understood: a status line, headers (folded
lines included), and a body given by Content-Length, chunked transfer
encoding, or the end of the connection.  A body larger than the request's
``limit`` raises ``TooLarge`` (the caller asks again another way); errors
come out as the standard library's (``TimeoutError``, ``OSError``,
``ssl.SSLError``, ``http.client.HTTPException``), a failure to connect
wrapped in ``ConnectFailed``, so lean.py maps them to botocore's exactly as
it maps ``http.client``'s.
"""

from __future__ import annotations

import functools
import http.client
import math
import ssl
from typing import Iterator, Mapping
from urllib.parse import SplitResult, urlsplit

import trio

HEAD_MAX = 64 * 1024    # status line and headers
RECEIVE_SIZE = 64 * 1024


class TooLarge(Exception):
    """The answer's body is larger than the request's limit."""


class ConnectFailed(Exception):
    """Connecting (TCP, then TLS) failed; ``error`` is why."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _Stale(Exception):
    """The connection broke or ended before any of the answer came (a kept
    connection the server had closed meanwhile); the error, if any."""


class Headers:
    """Response headers: ``get`` and ``in`` ignore case and give the first
    value of a repeated header, ``items`` gives every header in order (as
    ``http.client``'s message does)."""

    __slots__ = ("_pairs", "_first")

    def __init__(self, pairs: list[tuple[str, str]]):
        self._pairs = pairs
        first: dict[str, str] = {}
        for name, value in pairs:
            first.setdefault(name.lower(), value)
        self._first = first

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)


class Response:
    """A whole answer, shaped as botocore's (the parts the lean path uses)."""

    __slots__ = ("url", "status_code", "headers", "content")

    def __init__(self, url: str, status: int, headers: Headers, content: bytes):
        self.url, self.status_code, self.headers, self.content = url, status, headers, content


class _Conn:
    __slots__ = ("stream", "buf")

    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.buf = bytearray()


def host_header(parts: SplitResult) -> str:
    """What ``http.client`` sends as Host and botocore signs (sigv4.py signs
    it too): the URL's host, lower-case, and its port unless the scheme's
    default."""
    return _host_header(parts.scheme, parts.netloc)


@functools.lru_cache(maxsize=64)
def _host_header(scheme: str, netloc: str) -> str:
    # remembered per server, not per URL (whose path differs from one
    # request to the next): urllib's hostname and port cost about 5 us
    parts = SplitResult(scheme, netloc, "", "", "")
    default = 443 if scheme == "https" else 80
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def request_head(method: str, parts: SplitResult, headers: Mapping[str, str]) -> bytes:
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header(parts)}",
             "Accept-Encoding: identity"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[bytes, int, Headers]:
    """(HTTP version, status, headers) of a response head without its
    final blank line."""
    lines = head.split(b"\r\n")
    status_line = lines[0].split(None, 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise http.client.BadStatusLine(lines[0][:100].decode("latin-1"))
    try:
        status = int(status_line[1])
    except ValueError:
        raise http.client.BadStatusLine(lines[0][:100].decode("latin-1")) from None
    pairs: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and pairs:  # a folded line continues the last header
            name, value = pairs[-1]
            pairs[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise http.client.HTTPException(f"bad header line {line[:100]!r}")
        pairs.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    return status_line[0], status, Headers(pairs)


class AsyncTransport:
    """Kept HTTP/1.1 connections on trio streams, for requests with no body
    or a small one.  ``settings`` is the ``lean.Transport`` whose timeouts, socket
    options, TLS context and pool size these connections use."""

    def __init__(self, settings):
        self._settings = settings
        self._idle: dict[tuple[str, str], list[_Conn]] = {}

    async def send(self, method: str, url: str, headers: Mapping[str, str],
                   limit: int, body: bytes = b"", idempotent: bool = True) -> Response:
        """The whole answer to a request (with a small ``body``, whose
        Content-Length is among ``headers``).  A kept connection the server
        has closed meanwhile is replaced and an ``idempotent`` request sent
        again; every other failure is raised (see the module's docstring),
        as is that one for a request that must not be made twice (the
        server may have acted on it: the caller's retry knows that)."""
        parts = urlsplit(url)
        head = request_head(method, parts, headers) + body
        idle = self._idle.setdefault((parts.scheme, parts.netloc), [])
        while True:
            new = not idle
            conn = await self._connect(parts) if new else idle.pop()
            try:
                try:
                    await conn.stream.send_all(head)
                except trio.BrokenResourceError as e:
                    raise _Stale(e) from None
                response, keep = await self._answer(conn, method, url, limit)
            except _Stale as e:
                await trio.aclose_forcefully(conn.stream)
                if new or not idempotent:
                    raise (_stdlib(e.args[0]) if e.args else http.client.RemoteDisconnected(
                        "Remote end closed connection without response")) from None
                continue  # the kept connection was gone before the answer began
            except trio.BrokenResourceError as e:
                await trio.aclose_forcefully(conn.stream)
                raise _stdlib(e) from None
            except BaseException:
                await trio.aclose_forcefully(conn.stream)
                raise
            if keep and len(idle) < self._settings.keep:
                idle.append(conn)
            else:
                await trio.aclose_forcefully(conn.stream)
            return response

    async def aclose(self) -> None:
        for idle in self._idle.values():
            while idle:
                await trio.aclose_forcefully(idle.pop().stream)

    async def _connect(self, parts: SplitResult) -> _Conn:
        https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(_seconds(self._settings.connect_timeout)):
                tcp = stream = await trio.open_tcp_stream(host, port)
                for opt in self._settings.socket_options:
                    tcp.setsockopt(*opt)
                if https:
                    stream = trio.SSLStream(tcp, self._settings.ssl_context(),
                                            server_hostname=host, https_compatible=True)
                    await stream.do_handshake()
        except trio.TooSlowError:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise ConnectFailed(TimeoutError("connect timed out")) from None
        except (OSError, trio.BrokenResourceError) as e:
            if stream is not None:
                await trio.aclose_forcefully(stream)
            cause = e.__cause__
            if isinstance(cause, ExceptionGroup) and isinstance(cause.exceptions[0], OSError):
                e = cause.exceptions[0]  # trio's "all attempts failed": the first one's error
            raise ConnectFailed(_stdlib(e)) from None
        except BaseException:  # cancelled while connecting
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise
        return _Conn(stream)

    async def _receive(self, conn: _Conn) -> bytes:
        with trio.move_on_after(_seconds(self._settings.read_timeout)):
            return await conn.stream.receive_some(RECEIVE_SIZE)
        raise TimeoutError("read timed out")

    async def _more(self, conn: _Conn, expected: int | None = None) -> None:
        """Receive into ``conn.buf``; the connection ending here is an
        incomplete answer (``expected``: the bytes still missing)."""
        data = await self._receive(conn)
        if not data:
            raise http.client.IncompleteRead(bytes(conn.buf[:100]), expected)
        conn.buf += data

    async def _fill(self, conn: _Conn, n: int) -> None:
        """Receive until ``conn.buf`` holds ``n`` bytes."""
        while len(conn.buf) < n:
            await self._more(conn, n - len(conn.buf))

    async def _line(self, conn: _Conn) -> bytes:
        """One CRLF-terminated line (of a chunked body), without its CRLF."""
        while True:
            end = conn.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(conn.buf[:end])
                del conn.buf[:end + 2]
                return line
            if len(conn.buf) > HEAD_MAX:
                raise http.client.LineTooLong("chunk line")
            await self._more(conn)

    async def _answer(self, conn: _Conn, method: str, url: str,
                      limit: int) -> tuple[Response, bool]:
        buf = conn.buf
        began = False
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > HEAD_MAX:
                    raise http.client.LineTooLong("response head")
                try:
                    data = await self._receive(conn)
                except trio.BrokenResourceError as e:
                    if began:
                        raise
                    raise _Stale(e) from None
                if not data:
                    if not began:
                        raise _Stale()
                    raise http.client.RemoteDisconnected("connection closed in the answer's head")
                began = True
                buf += data
                end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(data) - 3))
            version, status, headers = parse_head(bytes(buf[:end]))
            del buf[:end + 4]
            if status >= 200 or status == 101:
                break   # 1xx (100 Continue...) are followed by the real answer
        keep = version == b"HTTP/1.1" and "close" not in (headers.get("connection") or "").lower()
        length = headers.get("content-length")
        if method == "HEAD" or status in (101, 204, 304):
            body = b""
        elif "chunked" in (headers.get("transfer-encoding") or "").lower():
            body = await self._chunked(conn, limit)
        elif length is not None:
            try:
                n = int(length)
            except ValueError:
                raise http.client.HTTPException(f"Content-Length {length[:40]!r}") from None
            if n < 0:
                raise http.client.HTTPException(f"Content-Length {n}")
            if n > limit:
                raise TooLarge(n)
            await self._fill(conn, n)
            with memoryview(buf) as view:
                body = bytes(view[:n])
            del buf[:n]
        else:  # the body ends with the connection
            while data := await self._receive(conn):
                buf += data
                if len(buf) > limit:
                    raise TooLarge(len(buf))
            body, keep = bytes(buf), False
            buf.clear()
        if buf:
            keep = False  # bytes after the answer: nothing we can make sense of
        return Response(url, status, headers, body), keep

    async def _chunked(self, conn: _Conn, limit: int) -> bytes:
        body = bytearray()
        while True:
            size_line = (await self._line(conn)).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise http.client.HTTPException(f"chunk size {size_line[:40]!r}") from None
            if size == 0:
                while await self._line(conn):
                    pass  # trailers, up to the blank line
                return bytes(body)
            if len(body) + size > limit:
                raise TooLarge(len(body) + size)
            await self._fill(conn, size + 2)
            body += conn.buf[:size]
            del conn.buf[:size + 2]


def _seconds(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


def _stdlib(e: BaseException) -> BaseException:
    """trio's broken stream as the standard library's error under it."""
    if isinstance(e, trio.BrokenResourceError):
        cause = e.__cause__
        if isinstance(cause, (ssl.SSLError, OSError)):
            return cause
        return ConnectionResetError(str(e) or "connection broken")
    return e
