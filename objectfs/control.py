"""The daemon's control socket: commands for a running mount.

Each mount listens on a Unix socket in the runtime directory
(``/run/objectfs`` for root), readable by its owner only.  A request is one
JSON object on one line, ``{"op": NAME, ...}``; the answer is one JSON line,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.  Requests are
served one connection at a time per client, concurrently across clients;
a handler's FsError becomes its message, anything unexpected is logged.

The CLI side (``request``) finds the mount that holds a path from the
kernel's mount table, so ``objectfs refresh /mnt/data/some/dir`` needs no
other argument.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from typing import Any, Awaitable, Callable

import trio

from . import procmounts
from .config import env_seconds
from .errors import FsError, UserError

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
Handler = Callable[[dict], Awaitable[dict]]


def socket_path(state_file: str) -> str:
    return state_file[:-len(".json")] + ".sock"


def private_dir(path: str) -> None:
    """Create ``path`` (mode 0700) or check that it is ours and private.

    Without $XDG_RUNTIME_DIR a user's runtime directory is /tmp/objectfs-UID,
    a name anyone could create first; a directory of someone else's, or one
    others can enter, is not used (OSError): its mount state and control
    socket could be read or replaced."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{path} is not a private directory of uid "
                      f"{os.geteuid()} (owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler]):
        self.path = path
        self.handlers = handlers

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        private_dir(os.path.dirname(self.path))
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            await sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            await trio.serve_listeners(self._client, [listener])
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _client(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not chunk:
                    return
                buf += chunk
                if len(buf) > MAX_REQUEST:
                    return
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    reply = await self._handle(line)
                    try:
                        await stream.send_all(json.dumps(reply).encode() + b"\n")
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return

    async def _handle(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            handler = self.handlers[req["op"]]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "bad request"}
        try:
            reply = await handler(req)
        except FsError as e:   # "No such file or directory: a/b", not "a/b"
            return {"ok": False, "error": f"{os.strerror(e.errno)}: {e}"}
        except Exception:
            log.exception("control request %r failed", req.get("op"))
            return {"ok": False, "error": "internal error (see the daemon's log)"}
        return {"ok": True, **reply}


def mount_of(path: str) -> tuple[procmounts.MountEntry, str]:
    """The ObjectFS mount holding ``path`` and the path relative to its root."""
    mounts = procmounts.entries()
    real = procmounts.canonical(path, mounts)  # never a stat() of the mount: it may hang
    best = None
    for e in mounts:
        if e.fstype != "fuse.objectfs":
            continue
        mp = e.mountpoint
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best.mountpoint):
                best = e
    if best is None:
        raise UserError(f"{path} is not on an ObjectFS mount")
    rel = os.path.relpath(real, best.mountpoint)
    return best, "" if rel == "." else rel


# How long a request that makes the daemon do little (stats, refresh, the
# cache's bookkeeping) waits for its answer: a hung daemon is reported, not
# waited for.
QUICK = env_seconds("OBJECTFS_ANSWER_TIMEOUT", 10.0)


def request(mountpoint: str, req: dict[str, Any], timeout: float = 600) -> dict:
    """Send one request to the daemon of ``mountpoint`` and return its answer."""
    from .mount import state_path

    path = socket_path(state_path(mountpoint))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise UserError(f"cannot reach the ObjectFS daemon of {mountpoint} "
                        "(is it still running?)") from None
    except socket.timeout:
        raise UserError(f"the ObjectFS daemon of {mountpoint} did not answer") from None
    finally:
        s.close()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise UserError(f"the ObjectFS daemon of {mountpoint} sent a bad answer") from None
    if not reply.get("ok"):
        raise UserError(reply.get("error", "request failed"))
    return reply
