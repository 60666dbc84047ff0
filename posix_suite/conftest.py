"""Fixtures for the POSIX suite: ``--mountpoint``, a fresh working directory
per test, and access to the mount as another uid.

Usage: ``pytest posix_suite --mountpoint DIR`` (or set POSIX_SUITE_MOUNTPOINT).
Each test gets its own new subdirectory of DIR and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
import warnings

import pytest

from posix_suite.fsutil import NOBODY_UID, errname, read_file, run_as, write_file


class CleanupWarning(UserWarning):
    """A test's working directory could not be removed."""


def pytest_addoption(parser):
    group = parser.getgroup("posix_suite")
    group.addoption("--mountpoint", default=os.environ.get("POSIX_SUITE_MOUNTPOINT"),
                    help="directory (usually a mountpoint) to run the POSIX suite in")
    group.addoption("--skip-huge-objects", metavar="REASON", default=None,
                    help="skip the tests marked huge_object (they make a file of more than "
                    "5 GiB, which an S3 filesystem may upload in full), giving REASON")
    group.addoption("--posix-report", metavar="FILE", default=None,
                    help="append one JSON line per test phase to FILE as it finishes "
                    "(survives a run that is killed half-way; used by score.py)")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_root: skipped when not running as root")
    config.addinivalue_line("markers", "huge_object: makes a file of more than 5 GiB, which "
                            "an S3 filesystem may upload in full; skipped with "
                            "--skip-huge-objects REASON")
    mp = config.getoption("--mountpoint")
    if not mp:
        raise pytest.UsageError("posix_suite needs --mountpoint DIR (or POSIX_SUITE_MOUNTPOINT)")
    if not os.path.isdir(mp):
        raise pytest.UsageError(f"--mountpoint {mp!r} is not a directory")
    global _report_path
    _report_path = config.getoption("--posix-report")
    # Modes in the tests assume the usual umask; set it once for the session.
    os.umask(0o022)


def _short_message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0] if crash.message else ""
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:  # skip
        return str(report.longrepr[2])
    text = str(report.longrepr or "")
    lines = [ln[2:].strip() for ln in text.splitlines() if ln.startswith("E ")]
    if not lines:
        lines = text.strip().splitlines()[-1:]
    return lines[0] if lines else ""


def pytest_runtest_logreport(report):
    path = _report_path
    if path is None:
        return
    rec = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
           "duration": round(report.duration, 3)}
    if report.outcome != "passed":
        rec["message"] = _short_message(report)[:500]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


_report_path: str | None = None


def pytest_report_header(config):
    return f"posix_suite mountpoint: {os.path.realpath(config.getoption('--mountpoint'))}"


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_root") and os.geteuid() != 0:
        pytest.skip("needs root")
    reason = item.config.getoption("--skip-huge-objects")
    if reason and item.get_closest_marker("huge_object"):
        pytest.skip(f"--skip-huge-objects: {reason}")


@pytest.fixture(scope="session")
def mountpoint(pytestconfig) -> str:
    return os.path.realpath(pytestconfig.getoption("--mountpoint"))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def _remove_tree(path: str) -> None:
    def onerror(func, p, exc_info):
        # A directory made unreadable or unwritable by a test: fix it and retry once.
        try:
            os.chmod(os.path.dirname(p), 0o755)
            os.chmod(p, 0o755)
        except OSError:
            pass
        try:
            func(p)
        except FileNotFoundError:
            pass

    shutil.rmtree(path, onerror=onerror)


GONE = (errno.ENOTCONN, errno.ECONNABORTED)


def _mkdir_or_exit(path: str) -> None:
    """mkdir; when the filesystem is gone (ENOTCONN: its FUSE daemon died or the
    connection was aborted) stop the whole run, since every later test would
    only fail the same way.  score.py remounts and resumes with the tests not run."""
    try:
        os.mkdir(path)
    except OSError as e:
        if e.errno in GONE:
            pytest.exit(f"the filesystem under {os.path.dirname(path)} is gone "
                        f"({errname(e.errno)}); stopping the run", returncode=3)
        raise


@pytest.fixture
def workdir(mountpoint, request) -> str:
    """A new, empty directory under the mountpoint, removed after the test.

    A failure to remove it does not fail the test (the test already reported on
    its own behaviour) but is reported as a CleanupWarning.
    """
    path = os.path.join(mountpoint, f"ps-{_safe(request.node.name)}-{uuid.uuid4().hex[:8]}")
    _mkdir_or_exit(path)
    yield path
    try:
        _remove_tree(path)
    except OSError as e:
        warnings.warn(CleanupWarning(f"could not remove {path}: {errname(e.errno)} {e}"))
        return
    if os.path.lexists(path):
        warnings.warn(CleanupWarning(f"{path} still exists after removing it"))


@pytest.fixture(scope="session")
def other_uid_problem(mountpoint) -> str | None:
    """Why uid 65534 cannot use the mount, or None when it can.

    Probes: uid 65534 stats and lists a fresh root-owned 0755 directory and
    reads a 0644 file in it.  That needs ``allow_other`` on a FUSE mount and a
    mountpoint whose parents are searchable by others.
    """
    if os.geteuid() != 0:
        return "not running as root, so cannot switch to uid 65534"
    probe = os.path.join(mountpoint, f"ps-probe-{uuid.uuid4().hex[:8]}")
    _mkdir_or_exit(probe)
    try:
        try:
            f = os.path.join(probe, "f")
            write_file(f, b"probe", 0o644)

            def look():
                os.stat(probe)
                os.listdir(probe)
                return read_file(f).decode()

            res = run_as(look)
        finally:
            with contextlib.suppress(OSError):
                _remove_tree(probe)
    except OSError as e:
        if e.errno in GONE:
            pytest.exit(f"the filesystem under {mountpoint} is gone ({errname(e.errno)}); "
                        "stopping the run", returncode=3)
        raise
    if not res.ok:
        return (f"the mount is not usable by uid {NOBODY_UID} ({errname(res.errno)}: {res.msg}); "
                "mount it with allow_other and make every parent of the mountpoint "
                "searchable by others")
    if res.value != "probe":
        return f"uid {NOBODY_UID} read {res.value!r} instead of 'probe' from a 0644 file"
    return None


@pytest.fixture
def as_nobody(other_uid_problem):
    """``run_as`` for uid/gid 65534; skips the test when that uid cannot reach the mount."""
    if other_uid_problem:
        pytest.skip(other_uid_problem)
    return run_as
