"""Mount lifecycle: check the bucket, mount, serve, and shut down cleanly.

Order of events, each failure reported as one line (``UserError``):

1. The bucket is listed once with a short-retry client, so a wrong
   endpoint, bucket or credential fails in seconds, before anything is
   mounted.
2. ``pyfuse3.init`` mounts; the trio main loop starts the filesystem's
   background nursery and the FUSE loop.
3. A thread stats the mountpoint; that request is answered by our own loop,
   so when it returns the mount is usable: only then is readiness reported
   (to the parent of a daemon through a pipe, and to systemd).
4. The loop ends when the filesystem is unmounted (``fusermount3 -u``,
   ``umount``, ``objectfs umount``) or on SIGTERM/SIGINT, which first
   upload everything pending.  Anything still dirty when the loop ends is
   uploaded before the process exits (exit code 0, or 1 if an upload
   failed); ``pyfuse3.close`` then makes sure nothing is left mounted.
5. Those final uploads are bounded by ``shutdown_timeout``; when it
   expires, or on a second SIGINT/SIGTERM, the daemon logs every file not
   uploaded, detaches the mount and exits 1 at once (``hard_stop``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from urllib.parse import quote

import trio

from . import credentials, fuseloop, logs, metrics, metrics_http, procmounts, stats
from .control import ControlServer, private_dir, socket_path
from .config import Config
from .errors import StoreError, StoreUnavailable, UserError
from .store.s3 import S3Settings, S3Store, chain_has_credentials, make_client
from .store.s3options import RequestOptions, read_sse_c_key

log = logging.getLogger("objectfs")

# How long the bucket check may take in all (connect timeout x attempts).
CHECK_CONNECT_TIMEOUT = 5.0
CHECK_READ_TIMEOUT = 10.0
CHECK_ATTEMPTS = 2
# How long a hard stop (shutdown_timeout, a second signal) waits for the
# aborts of the multipart uploads it cuts short.
HARD_STOP_ABORT_SECONDS = 5.0
# How long the exit waits for S3 requests still under way once everything
# was uploaded or given up on (see Lifecycle._abandon_requests).
EXIT_GRACE_SECONDS = 5.0


# mallopt parameters and their values (see tune_malloc)
M_ARENA_MAX = -8
MALLOC_ARENAS = 2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def runtime_dir() -> str:
    if os.geteuid() == 0:
        return "/run/objectfs"
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "objectfs")
    return f"/tmp/objectfs-{os.geteuid()}"


def state_path(mountpoint: str) -> str:
    import hashlib

    digest = hashlib.sha1(procmounts.canonical(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"mount-{digest}.json")


def read_state(mountpoint: str) -> dict | None:
    try:
        with open(state_path(mountpoint)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def config_warnings(cfg: Config) -> list[str]:
    """One line per risky setting the user asked for (shown at mount)."""
    out = []
    if not cfg.verify_ssl:
        out.append("TLS certificate verification is off (no_verify_ssl): the S3 endpoint's "
                   "identity is not checked")
    return out


def request_options(cfg: Config) -> RequestOptions:
    return RequestOptions(
        sse=cfg.sse, sse_kms_key_id=cfg.sse_kms_key_id,
        sse_c_key=read_sse_c_key(cfg.sse_c_key_file) if cfg.sse_c_key_file else None,
        storage_class=cfg.storage_class, requester_pays=cfg.requester_pays)


def s3_settings(cfg: Config) -> S3Settings:
    """The store's settings, with credentials from an s3fs passwd file if one applies."""
    settings = S3Settings(
        bucket=cfg.bucket, endpoint_url=cfg.endpoint_url, region=cfg.region,
        profile=cfg.profile, max_connections=cfg.max_connections,
        connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout,
        max_attempts=cfg.retries, checksums=cfg.checksums, verify_ssl=cfg.verify_ssl,
        upload_checksum=cfg.upload_checksum, request_options=request_options(cfg),
        addressing_style="path" if cfg.path_style else None, lean_requests=cfg.lean_requests)
    return with_passwd_credentials(settings, cfg.passwd_file)


def with_passwd_credentials(settings: S3Settings, passwd_file: str | None) -> S3Settings:
    """``settings`` with the key pair of an s3fs passwd file when one applies
    (see credentials.resolve), else as they are (boto3's chain)."""
    pair = credentials.resolve(settings.bucket, passwd_file, settings.profile,
                               lambda: chain_has_credentials(settings))
    if pair is None:
        return settings
    return dataclasses.replace(settings, access_key=pair.access_key,
                               secret_key=pair.secret_key, credential_source=pair.source)


def explain(err: StoreError, cfg: Config) -> str:
    """One line telling the user what is wrong with the bucket or endpoint."""
    where = cfg.endpoint_url or "AWS S3"
    if isinstance(err, StoreUnavailable):
        return f"cannot reach the S3 endpoint {where}"
    code = err.code
    if code in ("NoSuchBucket",) or (code in ("404", "NotFound")):
        return f"bucket {cfg.bucket!r} does not exist at {where}"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                "InvalidToken"):
        return f"the S3 credentials were rejected by {where} ({code})"
    if code == "CredentialError":
        detail = getattr(err, "detail", "") or "unknown error"
        hint = " (run aws sso login)" if "SSO" in detail else ""
        return f"could not get AWS credentials for the profile: {detail}{hint}"
    if "no AWS credentials" in str(err):
        return ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "use --profile or -o passwd_file=, or configure ~/.aws/credentials")
    if err.errno == errno.EACCES:
        return f"access to bucket {cfg.bucket!r} denied ({code})"
    if code == "TLSError":
        return (f"TLS connection to {where} failed (untrusted certificate?): set "
                "AWS_CA_BUNDLE=FILE for a private CA, or -o no_verify_ssl to skip verification")
    if code == "PermanentRedirect":
        return f"bucket {cfg.bucket!r} is in another region: pass --region"
    return f"cannot access bucket {cfg.bucket!r} at {where}: {code}"


def check_bucket(cfg: Config, settings: S3Settings | None = None) -> S3Store:
    """Build the store and prove the bucket can be listed (UserError if not)."""
    settings = settings or s3_settings(cfg)
    checker = S3Store(dataclasses.replace(settings, max_attempts=CHECK_ATTEMPTS),
                      client=make_client(settings, connect_timeout=CHECK_CONNECT_TIMEOUT,
                                         read_timeout=CHECK_READ_TIMEOUT))
    from .namespace.keys import normalise_prefix

    try:
        trio.run(checker.check_bucket, normalise_prefix(cfg.prefix))
    except StoreError as e:
        raise UserError(explain(e, cfg)) from None
    store = S3Store(settings)
    if store.lean is not None and checker.lean is not None:
        store.lean.adopt(checker.lean)  # the bucket's URL, from the check's listing
    return store


def check_writeback_dir(cfg: Config) -> None:
    """With -o writeback, the journal directory must be usable before we mount."""
    if cfg.values.get("writeback") is None or cfg.ro:
        return
    from .config import cache_root

    path = os.path.join(cache_root(cfg), "writeback")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the write-back directory {path}: {e.strerror}") \
            from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"the write-back directory {path} is not writable")


def check_staging_dir(cfg: Config) -> None:
    """Writes are staged on local disk: the directory must be usable before we
    mount, or random writes would fail later with EIO.  (A user without a home
    directory, such as nobody, has no ~/.cache: set staging_dir=.)"""
    if cfg.ro:
        return
    from .config import default_staging_dir

    path = cfg.staging_dir or default_staging_dir()
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the staging directory {path}: {e.strerror} "
                        "(set -o staging_dir=DIR)") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"the staging directory {path} is not writable (set -o staging_dir=DIR)")


def unmount(mountpoint: str, lazy: bool) -> bool:
    """fusermount3 -u [-z]; True if ``mountpoint`` is no longer mounted."""
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    try:
        subprocess.run(cmd, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.error("%s failed: %s", " ".join(cmd), e)
    return procmounts.find(mountpoint) is None


def fuse_options(cfg: Config) -> set[str]:
    fsname = cfg.fsname or ("s3://" + cfg.bucket + ("/" + cfg.prefix.strip("/")
                                                    if cfg.prefix.strip("/") else ""))
    # libfuse splits options at commas (a backslash escapes one) and pyfuse3
    # hands them over as ASCII: a prefix "a,allow_other" must not become an
    # option, nor "données" an error
    fsname = quote(fsname, safe="".join(chr(c) for c in range(0x20, 0x7f) if chr(c) != "%"))
    fsname = fsname.replace("\\", "\\\\").replace(",", "\\,")
    opts = {f"fsname={fsname}", "subtype=objectfs", "noatime"}
    for name in ("allow_other", "allow_root", "default_permissions", "ro"):
        if cfg.values.get(name):
            opts.add(name)
    opts.update(cfg.kernel_flags)  # nosuid, nodev, noexec... from mount(8)
    return opts


class FuseMessages:
    """What libfuse and fusermount3 say on stderr while mounting.

    A daemon's stderr is /dev/null, so without this the reason a mount fails
    ("option allow_other only allowed if 'user_allow_other' is set in
    /etc/fuse.conf", "user has no write access to mountpoint") would be lost
    and the user would see only "fuse_session_mount failed".  File
    descriptor 2 goes to a temporary file for the length of the block; lines
    from libfuse ("fuse: ...") and fusermount3 are kept, anything else (our
    own log lines in the foreground) is written back to stderr afterwards."""

    PREFIXES = ("fuse:", "fusermount3:", "fusermount:")

    def __init__(self):
        self.fuse_lines: list[str] = []
        self._saved: int | None = None
        self._tmp = None

    def __enter__(self) -> "FuseMessages":
        import sys
        import tempfile

        try:
            self._tmp = tempfile.TemporaryFile()
            sys.stderr.flush()
            self._saved = os.dup(2)
            os.dup2(self._tmp.fileno(), 2)
        except OSError:  # nowhere to capture: leave stderr alone
            self._restore()
        return self

    def _restore(self) -> None:
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None

    def __exit__(self, *exc) -> None:
        import sys

        if self._tmp is None:
            return
        sys.stderr.flush()
        self._restore()
        with self._tmp:
            self._tmp.seek(0)
            text = self._tmp.read().decode(errors="replace")
        other = []
        for line in text.splitlines(keepends=True):
            if line.strip().startswith(self.PREFIXES):
                self.fuse_lines.append(line.strip())
            else:
                other.append(line)
        if other:
            try:
                os.write(2, "".join(other).encode())
            except OSError:
                pass

    def reason(self) -> str | None:
        """The last thing libfuse or fusermount3 said, with a hint if we have one."""
        if not self.fuse_lines:
            return None
        line = self.fuse_lines[-1]
        if "/dev/fuse" in line and "Permission denied" in line and os.geteuid() != 0:
            line += (" (mounts by users other than root need /dev/fuse readable and "
                     "writable by all, mode 0666, as udev sets it)")
        return line
def set_read_ahead(cfg: Config) -> None:
    """Raise the kernel's readahead for this mount (``read_ahead``).

    A FUSE mount has a backing device of its own whose readahead the kernel
    sets to 128 KiB (the INIT reply can only lower it, and resets it: so
    this runs once the mount has answered its first stat), so a sequential
    reader's pages are asked for 128 KiB at a time: 8,192 requests per GiB,
    each a round trip through the kernel and our event loop.  With 1 MiB the
    kernel sends up to libfuse's largest request (1 MiB, max_pages 256).
    Only root may write the sysfs file; anyone else keeps the default.  The
    device is read from /proc/self/mountinfo, never by a stat of the mount
    (which would wait for this daemon's own loop).
    """
    kb = cfg.read_ahead // 1024
    if not kb:
        return
    entry = procmounts.find(cfg.mountpoint)
    if entry is None:
        return
    path = f"/sys/class/bdi/{entry.dev}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kb))
    except OSError as e:
        log.info("kernel readahead left at its default (%s: %s)", path, e.strerror)
    else:
        log.debug("kernel readahead of %s set to %d KiB", cfg.mountpoint, kb)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state, if it is listening."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("could not notify systemd: %s", e)


class Lifecycle:
    def __init__(self, cfg: Config, fs, ready_fd: int | None):
        self.cfg = cfg
        self.fs = fs
        self.ready_fd = ready_fd
        self.stopping = False
        self.metrics: metrics_http.MetricsServer | None = None
        self.notified_stopping = False
        self.failed: set[str] = set()  # paths whose upload failed at shutdown

    def _report(self, text: str) -> None:
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, text.encode() + b"\n")
                os.close(self.ready_fd)
            except OSError:
                pass
            self.ready_fd = None

    async def _probe_ready(self) -> None:
        try:
            await trio.to_thread.run_sync(os.stat, self.cfg.mountpoint)
        except OSError as e:
            log.error("mount does not answer: %s", e)
            self._report(f"ERR the mount did not answer: {e.strerror}")
            import pyfuse3
            pyfuse3.terminate()
            return
        log.info("mounted s3://%s/%s on %s", self.cfg.bucket, self.cfg.prefix,
                 self.cfg.mountpoint)
        set_read_ahead(self.cfg)  # the kernel has processed INIT, which resets it
        self._write_state(bucket=self.cfg.bucket, prefix=self.cfg.prefix, started=time.time())
        self._report("OK")
        sd_notify("READY=1\nSTATUS=mounted")

    def _write_state(self, **fields) -> None:
        try:
            private_dir(runtime_dir())
            tmp = state_path(self.cfg.mountpoint) + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "mountpoint": self.cfg.mountpoint, **fields}, f)
            os.replace(tmp, state_path(self.cfg.mountpoint))
        except OSError as e:
            log.warning("could not write mount state: %s", e)

    def _clear_state(self) -> None:
        try:
            os.unlink(state_path(self.cfg.mountpoint))
        except OSError:
            pass

    def _final_state(self, lost: list[str]) -> None:
        """At exit: no state file if everything reached S3; else one naming
        what did not, which ``objectfs umount`` (waiting for this process
        to end) reports before it exits 1."""
        if lost:
            self._write_state(not_uploaded=sorted(lost))
        else:
            self._clear_state()

    async def _signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    continue
                if self.stopping:
                    self.hard_stop("a second signal")  # does not return
                self.stopping = True
                log.info("signal %d: uploading pending data, then unmounting", signum)
                # in its own task, so that a second signal is seen at once
                nursery.start_soon(self._stop, nursery)

    async def _stop(self, nursery: trio.Nursery) -> None:
        import pyfuse3

        self._notify_stopping()
        await self.flush_bounded(nursery)
        # Unmount while we still serve requests: the kernel then ends
        # the session and pyfuse3.main() returns by itself.
        if not await trio.to_thread.run_sync(unmount, self.cfg.mountpoint, False):
            log.warning("%s is busy; open files there will fail with ENOTCONN",
                        self.cfg.mountpoint)
            pyfuse3.terminate()

    def _notify_stopping(self) -> None:
        if not self.notified_stopping:
            self.notified_stopping = True
            sd_notify("STOPPING=1")

    async def flush_bounded(self, nursery: trio.Nursery) -> None:
        """Upload everything pending; after ``shutdown_timeout`` give up and exit."""
        async def deadline(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await trio.sleep(self.cfg.shutdown_timeout)
                if self.fs.pending_uploads():
                    self.hard_stop(f"shutdown_timeout ({self.cfg.shutdown_timeout:g} s)")
                # else nothing is left to upload or lose: the flush ends by itself

        watchdog = await nursery.start(deadline)
        try:
            # the last attempt decides: a file that failed at SIGTERM may
            # succeed at the final flush
            self.failed = set(await self.fs.flush_all())
        finally:
            watchdog.cancel()

    def hard_stop(self, reason: str) -> None:
        """Stop now, without uploading: log what is lost, detach, exit 1.

        Store requests run in threads that cannot be cancelled, so waiting
        for them could take minutes; the process exits instead, which also
        ends the FUSE connection."""
        for path in self.fs.pending_uploads():
            log.error("not uploaded, stopped by %s: %s", reason, path)
        log.warning("stopped by %s without finishing uploads", reason)
        abort_now = getattr(self.fs.store, "abort_open_uploads_now", None)
        if abort_now is not None:
            # the multipart uploads cut short would stay on the server
            # (and be billed): aborted, waiting a few seconds at most
            for key in abort_now(HARD_STOP_ABORT_SECONDS):
                log.error("the multipart upload of %r is left on the server; "
                          "`objectfs uploads s3://%s --abort` removes it", key, self.cfg.bucket)
        self._notify_stopping()
        self._final_state(self.fs.pending_uploads())
        unmount(self.cfg.mountpoint, lazy=True)
        logging.shutdown()
        os._exit(1)

    def control_handlers(self) -> dict:
        async def ping(req: dict) -> dict:
            return {"pid": os.getpid(), "bucket": self.cfg.bucket, "prefix": self.cfg.prefix}

        async def refresh(req: dict) -> dict:
            return {"dropped": await self.fs.refresh(str(req.get("path", "")))}

        async def drain(req: dict) -> dict:
            # objectfs umount: upload staged write-back files while the
            # mount still serves, and tell the user what is left
            if self.fs.wb is None:
                return {"left": []}
            return {"left": await self.fs.drain_writeback(),
                    "journal": self.fs.wb.journal.directory}

        from .tier.commands import handlers as cache_handlers

        return {"ping": ping, "refresh": refresh, "drain": drain,
                "stats": stats.control_handler(self.cfg), **cache_handlers(self.fs)}

    async def main(self) -> None:
        import pyfuse3

        async with trio.open_nursery() as nursery:
            await self.fs.start(nursery)
            server = ControlServer(socket_path(state_path(self.cfg.mountpoint)),
                                   self.control_handlers())
            try:
                await nursery.start(server.serve)
            except OSError as e:
                log.warning("no control socket (%s): objectfs refresh will not work", e)
            if self.metrics is not None:
                await nursery.start(self.metrics.serve)
            nursery.start_soon(self._signals, nursery)
            nursery.start_soon(self._probe_ready)
            await pyfuse3.main()
            self._notify_stopping()
            await self.flush_bounded(nursery)
            if self.failed:
                log.error("%d file(s) could not be uploaded before exit", len(self.failed))
            nursery.cancel_scope.cancel()
            # A request in a worker thread cannot be cancelled: one the server
            # does not answer (a hung part of a write-back upload that the
            # drain gave up on) would hold the exit for up to read_timeout.
            watchdog = threading.Timer(EXIT_GRACE_SECONDS, self._abandon_requests)
            watchdog.daemon = True
            watchdog.start()
        watchdog.cancel()
        await self._close_connections()
        self.fs.close()

    def _abandon_requests(self) -> None:
        """The exit waited EXIT_GRACE_SECONDS for S3 requests still under
        way after everything was uploaded or given up on: exit without
        them (what they were for is already counted as uploaded or not)."""
        log.warning("exiting without waiting for S3 requests still under way")
        self._final_state(sorted(self.failed))
        logging.shutdown()
        os._exit(1 if self.failed else 0)

    async def _close_connections(self) -> None:
        """Say goodbye to the server: close the kept connections (bounded:
        the process is about to exit, which would close them anyway)."""
        with trio.move_on_after(5):
            try:
                await self.fs.store.aclose()
            except Exception as e:
                log.debug("closing the S3 connections: %s", e)


def tune_malloc(arenas: int = MALLOC_ARENAS) -> bool:
    """Make glibc's malloc give big buffers back (unless its env vars say otherwise).

    Part buffers are multi-MiB bytearrays that grow and are freed all the
    time.  glibc serves such sizes with mmap at first, but its threshold
    then rises to the largest size freed (up to 32 MiB), so later buffers
    come from the heap, fragment it and stay in RSS; and threads allocating
    at once get arenas of their own (up to eight per core), each keeping
    what was freed.  A fixed 1 MiB mmap threshold and two arenas: 16 writers
    of 100 MiB on a 256 MiB write budget peaked at 350-362 MiB RSS and fell
    to 77-84 MiB once idle, against 434-533 MiB and 141-438 MiB with glibc's
    defaults.  Must run before the first worker thread starts.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        ok = True
        if not os.environ.get("MALLOC_ARENA_MAX"):
            ok = libc.mallopt(M_ARENA_MAX, arenas) == 1
        if not os.environ.get("MALLOC_MMAP_THRESHOLD_"):
            ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and ok
        return ok
    except (OSError, AttributeError):   # not glibc
        return False


def run(cfg: Config, ready_fd: int | None = None, daemon: bool = False,
        settings: S3Settings | None = None) -> int:
    """Mount and serve until unmounted; returns the process exit code.

    Failures before the mount is up raise UserError (nothing is left
    mounted); ``ready_fd`` gets "OK" once the mount answers.
    """
    tune_malloc()
    logs.setup(cfg, daemon)
    for warning in config_warnings(cfg):
        log.warning("%s", warning)
    if not cfg.verify_ssl:
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once above
    settings = settings or s3_settings(cfg)
    if settings.credential_source:
        log.info("using the key pair from %s", settings.credential_source)
    store = check_bucket(cfg, settings)
    check_staging_dir(cfg)
    check_writeback_dir(cfg)
    metrics_sock = metrics_http.bind(cfg.metrics_port) if cfg.metrics_port else None

    import pyfuse3

    from .filesystem import Filesystem
    from .fuse_adapter import FuseOperations, KernelNotifier

    notifier = KernelNotifier()
    fs = Filesystem(store, cfg, notifier)
    ops = FuseOperations(fs)
    stats.install_gauges(fs)
    try:
        with FuseMessages() as messages:
            pyfuse3.init(ops, cfg.mountpoint, fuse_options(cfg))
    except RuntimeError as e:
        notifier.stop()
        if metrics_sock is not None:
            metrics_sock.close()
        reason = messages.reason()
        if reason:
            raise UserError(f"cannot mount on {cfg.mountpoint}: {reason}") from None
        raise UserError(f"cannot mount on {cfg.mountpoint}: {e} (is FUSE available "
                        "and the mountpoint usable?)") from None
    for line in messages.fuse_lines:
        log.warning("%s", line)
    metrics.gauge("objectfs_fuse_fast_wait", "1 when the cheaper wait for FUSE requests "
                  "(fuseloop.py) is in place").set(1 if fuseloop.install(pyfuse3) else 0)
    life = Lifecycle(cfg, fs, ready_fd)
    if metrics_sock is not None:
        life.metrics = metrics_http.MetricsServer(metrics_sock)
    code = 0
    try:
        trio.run(life.main)
        code = 1 if life.failed else 0
    except BaseException:
        log.exception("mount loop failed")
        code = 1
    finally:
        notifier.stop()
        life._final_state(sorted(life.failed) or (fs.pending_uploads() if code else []))
        # Closing /dev/fuse aborts the connection if the kernel still has it
        # (loop stopped by a signal or a crash); only then is it safe to
        # detach the mount, since nothing would answer a stat of it.
        still_mounted = procmounts.find(cfg.mountpoint) is not None
        pyfuse3.close(unmount=False)
        if still_mounted:
            unmount(cfg.mountpoint, lazy=True)
    if life.ready_fd is not None:
        life._report("ERR the mount stopped before it was ready")
        code = code or 1
    log.info("unmounted %s", cfg.mountpoint)
    return code
