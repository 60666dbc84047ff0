"""flock(2) and fcntl record locks on one host.

Locks on a network-backed filesystem are usually local to the host; these
tests only check local semantics: conflicts between two open file
descriptions (flock) or two processes (fcntl).
"""

import errno
import fcntl
import os
import threading
import time

from posix_suite.fsutil import raises_errno, run_as, run_threads, write_file

WOULDBLOCK = (errno.EWOULDBLOCK, errno.EAGAIN)


def _two_opens(workdir):
    p = os.path.join(workdir, "lock")
    write_file(p, b"lock file")
    return p, os.open(p, os.O_RDWR), os.open(p, os.O_RDWR)


def test_exclusive_conflicts(workdir):
    _, a, b = _two_opens(workdir)
    try:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with raises_errno(*WOULDBLOCK, what="second LOCK_EX through another open file description"):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with raises_errno(*WOULDBLOCK, what="LOCK_SH while another description holds LOCK_EX"):
            fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)


def test_shared_locks_coexist(workdir):
    _, a, b = _two_opens(workdir)
    try:
        fcntl.flock(a, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)  # must not raise
        with raises_errno(*WOULDBLOCK, what="LOCK_EX while another description holds LOCK_SH"):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)


def test_unlock_releases(workdir):
    _, a, b = _two_opens(workdir)
    try:
        fcntl.flock(a, fcntl.LOCK_EX)
        fcntl.flock(a, fcntl.LOCK_UN)
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with raises_errno(*WOULDBLOCK, what="LOCK_EX after the other description took it"):
            fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)


def test_close_releases(workdir):
    p, a, b = _two_opens(workdir)
    try:
        fcntl.flock(a, fcntl.LOCK_EX)
        os.close(a)
        a = None
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        c = os.open(p, os.O_RDONLY)
        try:
            with raises_errno(*WOULDBLOCK, what="lock is now held by the second description"):
                fcntl.flock(c, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(c)
    finally:
        if a is not None:
            os.close(a)
        os.close(b)


def test_dup_shares_lock(workdir):
    _, a, b = _two_opens(workdir)
    d = os.dup(a)
    try:
        fcntl.flock(a, fcntl.LOCK_EX)
        fcntl.flock(d, fcntl.LOCK_EX | fcntl.LOCK_NB)  # same open file description: no conflict
        with raises_errno(*WOULDBLOCK, what="other description while a dup holds the lock"):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(d)
        os.close(a)
        os.close(b)


def test_blocked_lock_wakes_on_release(workdir):
    _, a, b = _two_opens(workdir)
    got = threading.Event()
    try:
        fcntl.flock(a, fcntl.LOCK_EX)

        def waiter(_):
            fcntl.flock(b, fcntl.LOCK_EX)  # blocks until a releases
            got.set()
            return True

        def releaser(_):
            time.sleep(0.3)
            assert not got.is_set(), "LOCK_EX was granted while another holder had it"
            fcntl.flock(a, fcntl.LOCK_UN)
            return True

        assert run_threads(lambda r: waiter(r) if r == "w" else releaser(r), ["w", "r"],
                           timeout=30) == [True, True]
        assert got.is_set(), "blocked LOCK_EX was not granted after the release"
    finally:
        os.close(a)
        os.close(b)


def test_flock_conflict_between_processes(workdir):
    p, a, b = _two_opens(workdir)
    os.close(b)
    try:
        fcntl.flock(a, fcntl.LOCK_EX)

        def child():
            fd = os.open(p, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            return "locked"

        run_as(child, uid=None).expect_errno(*WOULDBLOCK, what="flock in another process")
    finally:
        os.close(a)


def test_fcntl_record_lock_conflict_between_processes(workdir):
    p, a, b = _two_opens(workdir)
    os.close(b)
    try:
        fcntl.lockf(a, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)  # bytes 0..99

        def overlapping():
            fd = os.open(p, os.O_RDWR)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
            finally:
                os.close(fd)
            return "locked"

        def disjoint():
            fd = os.open(p, os.O_RDWR)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 200)
            finally:
                os.close(fd)
            return "locked"

        run_as(overlapping, uid=None).expect_errno(
            errno.EAGAIN, errno.EACCES, what="fcntl lock on an overlapping range in another process")
        assert run_as(disjoint, uid=None).expect_ok(
            "fcntl lock on a disjoint range in another process") == "locked"
    finally:
        os.close(a)
