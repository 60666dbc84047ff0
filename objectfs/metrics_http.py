"""The opt-in metrics endpoint: ``GET /metrics`` on 127.0.0.1:metrics_port.

Bound to the loopback address only: the figures name operations and error
codes, never keys or credentials, but they are nobody else's business and
a scraper on the same host (node exporter style) is the common set-up.
The socket is bound before the filesystem is mounted, so a port that is
taken fails the mount with one line instead of leaving a mount without
metrics.  Requests are served on the mount's trio loop: rendering takes
microseconds and never waits for S3, so it cannot hold up FUSE requests;
a client that sends nothing is dropped after ``CLIENT_TIMEOUT``.
"""

from __future__ import annotations

import logging
import socket

import trio

from . import metrics
from .errors import UserError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 10.0
MAX_REQUEST_HEAD = 8192
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` (UserError if unavailable)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        s.listen(16)
    except OSError as e:
        s.close()
        raise UserError(f"cannot serve metrics on {HOST}:{port}: {e.strerror}") from None
    s.setblocking(False)
    return s


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head if head_only else head + body


def answer(request_head: bytes) -> bytes:
    """The whole HTTP response to one request head."""
    try:
        line = request_head.split(b"\r\n", 1)[0].decode("ascii")
        method, target, _version = line.split(" ", 2)
    except ValueError:
        return _response("400 Bad Request", b"bad request\n")
    path = target.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET only\n")
    if path not in ("/metrics", "/"):
        return _response("404 Not Found", b"try /metrics\n")
    return _response("200 OK", metrics.render().encode(), CONTENT_TYPE,
                     head_only=method == "HEAD")


class MetricsServer:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.port = sock.getsockname()[1]

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        task_status.started()
        log.info("metrics on http://%s:%d/metrics", HOST, self.port)
        await trio.serve_listeners(self._client, [listener])

    async def _client(self, stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            with trio.move_on_after(CLIENT_TIMEOUT):
                while b"\r\n\r\n" not in head and len(head) < MAX_REQUEST_HEAD:
                    try:
                        chunk = await stream.receive_some(4096)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    if not chunk:
                        break
                    head += chunk
                try:
                    await stream.send_all(answer(head))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
