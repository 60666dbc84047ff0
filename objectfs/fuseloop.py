"""A cheaper wait for the next FUSE request than pyfuse3's own.

pyfuse3's worker tasks take turns at reading /dev/fuse.  Before each request
a worker calls ``pyfuse3._wait_fuse_readable``, which takes a ``trio.Lock``
(a yield to the scheduler even when free; waiting workers are served first
in, first out, so every worker in turn touches its own request buffer) and
then ``trio.lowlevel.wait_readable`` (an epoll registration and a second
yield).  For a request answered from memory (a cached getattr, a getxattr
of an attribute we do not keep, a read from the page cache) that is most of
the daemon's 100-150 us round trip.

``install`` replaces that function with one that
* hands the turn over last in, first out among the workers that have read
  a request before, and to a worker that never has (whose request buffer,
  up to 1 MiB, is not allocated yet) only when none of those is waiting: so
  one or two workers and their buffers do the work of a sequential client;
* looks whether a request is already queued (a poll with no timeout, one
  system call) and then reads it without going through the scheduler, at
  most ``FAST_MAX`` times in a row, so a flood of requests cannot keep the
  other tasks (S3 transfers, timers) from running;
* keeps pyfuse3's way of stopping: once ``pyfuse3.terminate()`` closed the
  fd for trio, every waiter, present and future, is told False.

pyfuse3's own count of waiting workers (``active_readers``, inside the
extension) is no longer kept, so pyfuse3 starts a worker after each request
until it has ``max_tasks`` (99); those wait at the back and cost a parked
task each.  Workers that served a burst of requests at once (16 writers
blocked on the write budget) keep their buffers; one that comes back while
``IDLE_KEEP`` others are waiting ends instead, as pyfuse3's idle workers do,
and its buffer is freed.

This reaches into pyfuse3's internals, so it is installed only on the
pyfuse3 versions it was checked against (``VERSIONS``); on any other, the
stock function stays.  A sequential loop of getxattr calls of an attribute
we do not keep: 104-113 us a call with pyfuse3's function, 61-68 us with
this one.
"""

from __future__ import annotations

import logging
import os
import select
from collections import deque
from types import ModuleType

import trio

log = logging.getLogger(__name__)

VERSIONS = ("3.5.",)
FAST_MAX = 16   # requests read in a row without a pass through the scheduler
IDLE_KEEP = 2   # workers kept waiting for the turn; one more that comes back ends


def fuse_fd() -> int | None:
    """This process's /dev/fuse descriptor, if it has exactly one."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


def make_wait(fd: int):
    """The replacement for ``_wait_fuse_readable`` on descriptor ``fd``:
    True when a request can be read, False when the session is closing or
    the calling worker is not needed (it then ends, freeing its buffer)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    used: list[trio.lowlevel.Task] = []   # waiting workers that have read before: LIFO
    fresh: deque[trio.lowlevel.Task] = deque()   # ... that never have: FIFO, after those
    seen: set[trio.lowlevel.Task] = set()
    state = {"busy": False, "closed": False, "fast": 0}

    async def wait_fuse_readable() -> bool:
        if state["closed"]:
            return False
        task = trio.lowlevel.current_task()
        if state["busy"]:
            queue = used if task in seen else fresh
            if queue is used and len(used) >= IDLE_KEEP:
                seen.discard(task)
                return False
            queue.append(task)

            def abort(_):
                queue.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)  # the turn is handed to us
        else:
            state["busy"] = True
        seen.add(task)
        try:
            if state["closed"]:
                return False
            if state["fast"] < FAST_MAX and poller.poll(0):
                state["fast"] += 1
                return True
            state["fast"] = 0
            await trio.lowlevel.wait_readable(fd)
            return True
        except trio.ClosedResourceError:  # pyfuse3.terminate()
            state["closed"] = True
            return False
        finally:
            if used:
                trio.lowlevel.reschedule(used.pop())
            elif fresh:
                trio.lowlevel.reschedule(fresh.popleft())
            else:
                state["busy"] = False

    return wait_fuse_readable


def install(pyfuse3: ModuleType) -> bool:
    """Put the cheaper wait in place in ``pyfuse3`` (after ``pyfuse3.init``,
    before ``pyfuse3.main``); False, leaving pyfuse3 as it is, on a version
    not checked, when the descriptor is not found, or when the environment
    says ``OBJECTFS_FUSE_WAIT=pyfuse3``."""
    if os.environ.get("OBJECTFS_FUSE_WAIT") == "pyfuse3":   # the way back, documented
        log.info("OBJECTFS_FUSE_WAIT=pyfuse3: pyfuse3's own request loop is used")
        return False
    version = getattr(pyfuse3, "__version__", "")
    if not version.startswith(VERSIONS) or not hasattr(pyfuse3, "_wait_fuse_readable"):
        log.debug("pyfuse3 %s: its own request loop is used", version)
        return False
    fd = fuse_fd()
    if fd is None:
        log.debug("no single /dev/fuse descriptor: pyfuse3's own request loop is used")
        return False
    pyfuse3._wait_fuse_readable = make_wait(fd)
    logging.getLogger("pyfuse3").addFilter(_quiet_workers)
    return True


def _quiet_workers(record: logging.LogRecord) -> bool:
    """Leave out pyfuse3's debug line for each worker it starts and ends:
    with this wait it starts one after each of its first 99 requests."""
    return not (isinstance(record.msg, str) and record.msg.startswith(
        ("%s: No tasks waiting, starting another worker", "%s: terminated")))
