"""Helpers shared by the posix_suite tests: errno checks, running a call as
another uid in a forked child, and libc calls Python does not expose.

Nothing here knows which filesystem is under test.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import random
import select
import signal
import threading
import time

import pytest

NOBODY_UID = 65534
NOGROUP_GID = 65534

# Filesystems that store whole-second timestamps need a pause of more than a
# second before a changed ctime/mtime can be told apart from the old one.
TIMESTAMP_GRANULARITY_PAUSE = 1.1


def errname(code: int | None) -> str:
    if code is None:
        return "no errno"
    return errno.errorcode.get(code, str(code))


def names(codes) -> str:
    return "/".join(errname(c) for c in codes)


class raises_errno:
    """Context manager: the block must fail with OSError whose errno is one of ``codes``.

    ``what`` describes the call for the failure message.
    """

    def __init__(self, *codes: int, what: str = "call"):
        self.codes = codes
        self.what = what
        self.exc: OSError | None = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            pytest.fail(f"{self.what}: expected {names(self.codes)}, but it succeeded")
        if not issubclass(exc_type, OSError):
            return False
        if exc.errno not in self.codes:
            pytest.fail(f"{self.what}: expected {names(self.codes)}, got "
                        f"{errname(exc.errno)} ({exc})")
        self.exc = exc
        return True


def data(n: int, seed: int = 0) -> bytes:
    """``n`` reproducible pseudo-random bytes (no long runs of zeros)."""
    return random.Random(seed).randbytes(n)


def write_file(path: str, content: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(content)
        while view:
            n = os.write(fd, view)
            assert n > 0, f"write to {path} returned {n}"
            view = view[n:]
    finally:
        os.close(fd)


def read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_all(fd)
    finally:
        os.close(fd)


def read_all(fd: int, offset: int = 0) -> bytes:
    """Everything from ``offset`` to EOF, with pread (the file offset is not moved)."""
    chunks = []
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def pwrite_all(fd: int, content: bytes, offset: int) -> None:
    view = memoryview(content)
    while view:
        n = os.pwrite(fd, view, offset)
        assert n > 0, f"pwrite at {offset} returned {n}"
        view = view[n:]
        offset += n


def diff_at(a: bytes, b: bytes) -> str:
    """Describe the first difference between two byte strings."""
    if a == b:
        return "equal"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at byte {i} ({x:#04x} != {y:#04x}); lengths {len(a)}, {len(b)}"
    return f"lengths differ: {len(a)} != {len(b)}"


# ---------------------------------------------------------------------------
# Running a call as another user


class Outcome:
    """What a call made in a forked child returned or raised."""

    def __init__(self, ok: bool, value=None, err: int | None = None, msg: str = ""):
        self.ok = ok
        self.value = value
        self.errno = err
        self.msg = msg

    def __repr__(self):
        if self.ok:
            return f"Outcome(ok, {self.value!r})"
        return f"Outcome({errname(self.errno)}: {self.msg})"

    def expect_errno(self, *codes: int, what: str) -> None:
        if self.ok:
            pytest.fail(f"{what}: expected {names(codes)}, but it succeeded")
        if self.errno not in codes:
            pytest.fail(f"{what}: expected {names(codes)}, got {errname(self.errno)} ({self.msg})")

    def expect_ok(self, what: str):
        if not self.ok:
            pytest.fail(f"{what}: failed with {errname(self.errno)} ({self.msg})")
        return self.value


def run_as(fn, uid: int | None = NOBODY_UID, gid: int | None = NOGROUP_GID,
           timeout: float = 30) -> Outcome:
    """Run ``fn()`` in a forked child with the given uid/gid (no supplementary groups).

    With uid=None the child keeps the caller's identity (another process, same user).

    ``fn`` must return something JSON-serialisable.  An OSError in the child is
    reported as a failed Outcome; anything else fails the test.  A child that
    does not finish within ``timeout`` seconds is killed (SIGKILL also ends a
    wait on a FUSE request) and the test fails.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(r)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            if uid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            try:
                res = {"ok": True, "value": fn()}
            except OSError as e:
                res = {"ok": False, "errno": e.errno, "msg": str(e)}
            os.write(w, json.dumps(res).encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            try:
                os.write(w, json.dumps({"ok": False, "errno": None, "crash": repr(e)}).encode())
            except BaseException:  # noqa: BLE001
                status = 2
        finally:
            os._exit(status)
    os.close(w)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"call in a child (uid {uid}) did not finish within {timeout}s")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                buf += chunk
    finally:
        os.close(r)
        status = _reap(pid)
    if not buf:
        if os.WIFSIGNALED(status):
            sig = signal.Signals(os.WTERMSIG(status)).name
            pytest.fail(f"child process (uid {uid}) was killed by {sig}"
                        + (" (a mapped page could not be read or written)" if sig == "SIGBUS"
                           else ""))
        pytest.fail(f"child running as uid {uid} died without reporting (status {status})")
    res = json.loads(buf)
    if "crash" in res:
        pytest.fail(f"child running as uid {uid} crashed: {res['crash']}")
    if res["ok"]:
        return Outcome(True, res["value"])
    return Outcome(False, err=res["errno"], msg=res["msg"])


def _reap(pid: int) -> int:
    """Wait for the child (killing it after 10 s); returns its wait status."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


# ---------------------------------------------------------------------------
# libc calls Python does not expose

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]
_libc.utimensat.restype = ctypes.c_int
_libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.getxattr.restype = ctypes.c_ssize_t
_libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.listxattr.restype = ctypes.c_ssize_t


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int],
              follow: bool = True) -> None:
    """utimensat(2) with (sec, nsec) pairs; nsec may be UTIME_NOW or UTIME_OMIT."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), times, flags), f"utimensat {path}")


def getxattr_raw(path: str, name: str, size: int) -> bytes | int:
    """getxattr(2) with a buffer of exactly ``size`` bytes.

    With size 0 returns the value's length (an int); otherwise the value.
    """
    if size == 0:
        return _check(_libc.getxattr(os.fsencode(path), name.encode(), None, 0), "getxattr")
    buf = ctypes.create_string_buffer(size)
    n = _check(_libc.getxattr(os.fsencode(path), name.encode(), buf, size), "getxattr")
    return buf.raw[:n]


def listxattr_raw(path: str, size: int) -> bytes | int:
    """listxattr(2) with a buffer of exactly ``size`` bytes (0: return the needed size)."""
    if size == 0:
        return _check(_libc.listxattr(os.fsencode(path), None, 0), "listxattr")
    buf = ctypes.create_string_buffer(size)
    n = _check(_libc.listxattr(os.fsencode(path), buf, size), "listxattr")
    return buf.raw[:n]


# ---------------------------------------------------------------------------
# Threads that cannot hang the run


def run_threads(fn, args, timeout: float = 120) -> list:
    """Call ``fn(a)`` for each ``a`` in its own daemon thread; return the results in order.

    An exception in a thread is re-raised here.  A thread still running after
    ``timeout`` seconds fails the test; being a daemon thread, it cannot keep
    the interpreter from exiting.
    """
    args = list(args)
    results: list = [None] * len(args)
    errors: list = [None] * len(args)

    def body(i, a):
        try:
            results[i] = fn(a)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors[i] = e

    threads = [threading.Thread(target=body, args=(i, a), daemon=True) for i, a in enumerate(args)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        pytest.fail(f"{stuck} of {len(threads)} threads still running after {timeout}s")
    for e in errors:
        if e is not None:
            raise e
    return results
