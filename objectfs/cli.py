"""The ``objectfs`` command: argv -> Config -> mount; no filesystem logic.

Exit codes (documented in the README):
  0  success
  1  the operation failed (bucket, endpoint, credentials, mountpoint, ...)
  2  bad usage: unknown option or bad value
  130  interrupted
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import subprocess
import sys
import threading
import time

from . import __version__, config, procmounts, uploads
from .errors import ConfigError, UserError

EXAMPLES = """\
examples:
  objectfs mount s3://my-bucket /mnt/data
  objectfs mount s3://my-bucket/photos /mnt/photos --profile work -o allow_other
  objectfs mount s3://test /mnt/t --endpoint-url http://127.0.0.1:9000 -o uid=1000,gid=1000
  objectfs mount my-bucket:/photos /mnt/photos -o passwd_file=/etc/passwd-s3fs
  objectfs mount s3://my-bucket /mnt/data --config /etc/objectfs.yaml -f
  objectfs refresh /mnt/data/reports      # after another program changed the bucket
  objectfs stats /mnt/data                # requests, latency, caches, pending uploads
  objectfs cache warm /mnt/data/models    # fetch a tree into the local tier
  objectfs cache stats /mnt/data
  objectfs umount /mnt/data
  mount -t fuse.objectfs my-bucket:/photos /mnt/photos -o allow_other   # after make install
  # /etc/fstab:  my-bucket:/photos /mnt/photos fuse.objectfs _netdev,allow_other,nofail 0 0

SOURCE is s3://BUCKET[/PREFIX], BUCKET[/PREFIX] or BUCKET:/PREFIX (s3fs style);
"objectfs SOURCE DIR -o OPTS" (as mount.fuse3 runs it) means "objectfs mount".
Options for -o are listed, with their defaults, in etc/objectfs.example.yaml;
mount(8) options (_netdev, nofail, noauto, x-systemd.*, nosuid, ...) are accepted.

exit codes: 0 ok, 1 the operation failed, 2 bad usage or configuration,
130 interrupted.
"""

# How long "objectfs mount" waits for the daemon to report that the mount
# answers.  The bucket check itself is bounded to well under this.
READY_TIMEOUT = config.env_seconds("OBJECTFS_READY_TIMEOUT", 60.0)
# How long opening an existing mount may take before it counts as hung.
PROBE_TIMEOUT = 5.0


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="objectfs", description="Mount an S3 bucket as a POSIX directory tree.",
               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"objectfs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    p.commands = sub.choices  # "objectfs SOURCE DIR" means "objectfs mount SOURCE DIR"

    m = sub.add_parser("mount", help="mount a bucket", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("source", metavar="s3://BUCKET[/PREFIX]")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    m.add_argument("--endpoint-url", help="S3 endpoint (e.g. http://127.0.0.1:9000); "
                   "path-style addressing is used")
    m.add_argument("--region", help="region for request signing")
    m.add_argument("--profile", help="AWS profile for credentials")
    m.add_argument("--config", metavar="FILE", help="YAML file of options")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="options as name=value (see etc/objectfs.example.yaml)")
    m.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground and log to stderr")

    r = sub.add_parser("refresh", help="forget cached metadata of a path (and all under it)",
                       description="Make the mount ask S3 again about PATH and everything "
                       "under it, e.g. after another program changed the bucket.")
    r.add_argument("path", metavar="PATH")

    uploads.add_parser(sub)
    st = sub.add_parser("stats", help="show a running mount's figures",
                        description="S3 requests, errors and latency, bytes moved, FUSE "
                        "requests, cache hits and misses, pending uploads: the figures "
                        "served to Prometheus with -o metrics_port=N.")
    st.add_argument("mountpoint", metavar="MOUNTPOINT")
    st.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    c = sub.add_parser("cache", help="the local tier of a running mount",
                       description="Inspect and steer the local tier (hot files on local "
                       "disk) of a running mount.")
    csub = c.add_subparsers(dest="cache_command", metavar="COMMAND", parser_class=Parser,
                            required=True)
    cs = csub.add_parser("stats", help="bytes used and limit, entries, hits and misses")
    cs.add_argument("mountpoint", metavar="MOUNTPOINT")
    cs.add_argument("--json", action="store_true", help="print the figures as JSON")
    for name, text in (("warm", "fetch files (or whole trees) into the tier"),
                       ("pin", "keep files (or trees, now and later) in the tier; warms them"),
                       ("unpin", "let pinned files be evicted again"),
                       ("evict", "drop cached data of files or trees (pinned data stays)")):
        cp = csub.add_parser(name, help=text)
        cp.add_argument("paths", metavar="PATH", nargs="+")

    u = sub.add_parser("umount", help="upload pending data, unmount, wait for the daemon")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("-z", "--lazy", action="store_true", help="lazy unmount (detach now)")
    u.add_argument("--timeout", type=_wait_seconds, default=600.0,
                   help="seconds to wait for the daemon to finish uploading (default 600)")
    return p


def _wait_seconds(text: str) -> float:
    """umount --timeout: a number of seconds more than 0 (0, a negative
    number or nan made the request to the daemon fail with a traceback)."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return v


def parse_source(source: str) -> tuple[str, str]:
    """'s3://bucket/prefix', 'bucket:/prefix' or 'bucket' -> (bucket, prefix)."""
    s = source
    if not s.strip():
        # objectfs@.service with no /etc/objectfs/MOUNTPOINT.env gives SOURCE=""
        raise ConfigError("no bucket given: expected s3://BUCKET[/PREFIX] (for objectfs@.service: "
                          "SOURCE= in /etc/objectfs/MOUNTPOINT.env)")
    scheme, sep, rest = s.partition("://")
    if sep and scheme.lower() == "s3":   # schemes are case-insensitive (RFC 3986)
        bucket, _, prefix = rest.partition("/")
    elif sep:
        raise ConfigError(f"{scheme}:// is not S3: expected s3://BUCKET[/PREFIX]")
    elif ":" in s:
        bucket, _, prefix = s.partition(":")
    else:
        bucket, _, prefix = s.partition("/")
    if not bucket or any(c in bucket for c in " /\\"):
        raise ConfigError(f"bad bucket in {source!r}: expected s3://BUCKET[/PREFIX]")
    from .namespace.keys import normalise_prefix

    try:
        normalise_prefix(prefix)
    except Exception:
        raise ConfigError(f"bad prefix in {source!r}") from None
    return bucket, prefix.strip("/")


def probe(path: str, timeout: float = PROBE_TIMEOUT) -> OSError | None:
    """Open the directory ``path`` in a thread: None if its filesystem
    answered, else the error (ETIMEDOUT if a hung daemon did not answer
    within ``timeout``).  Not stat(): the kernel answers that from its
    attribute cache even after the daemon died; an open always asks."""
    result: list = []

    def run():
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
            result.append(None)
        except OSError as e:
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else OSError(errno.ETIMEDOUT, "no answer")


def clear_dead_mount(mp: str) -> bool:
    """Detach a FUSE mount whose daemon is gone; True if it is gone."""
    for cmd in (["fusermount3", "-u", mp], ["fusermount3", "-uz", mp]):
        subprocess.run(cmd, capture_output=True, timeout=30)
        if procmounts.find(mp) is None:
            break
    from .mount import state_path

    try:
        os.unlink(state_path(mp))
    except OSError:
        pass
    return procmounts.find(mp) is None


# What a FUSE mount whose daemon is gone answers: ENOTCONN, or ECONNABORTED
# once its connection was aborted (fusectl's abort file, the kernel at exit).
DEAD_MOUNT_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)


def check_mountpoint(path: str) -> str:
    """The canonical mountpoint, usable for a new mount (UserError if not).

    A dead ObjectFS mount on it (its daemon was killed) is cleared, with a
    line on stderr; a dead mount of another filesystem is reported."""
    mp = procmounts.canonical(path)
    entry = procmounts.find(mp)
    if entry is not None:
        err = probe(mp)
        dead = err is not None and err.errno in DEAD_MOUNT_ERRNOS
        if dead and entry.fstype == "fuse.objectfs" and clear_dead_mount(mp):
            print(f"objectfs: cleared a dead ObjectFS mount of {entry.source} on {path} "
                  "(its daemon had exited)", file=sys.stderr)
        elif dead:
            raise UserError(f"{path} is a dead {entry.fstype} mount of {entry.source} "
                            f"(its daemon has exited); clear it with fusermount3 -u {path}")
        elif err is not None and err.errno == errno.ETIMEDOUT:
            raise UserError(f"{path} is already mounted ({entry.fstype} {entry.source}) and "
                            f"does not answer; clear it with objectfs umount -z {path}")
        else:
            raise UserError(f"{path} is already mounted ({entry.fstype} {entry.source}); "
                            f"unmount it first (objectfs umount {path})")
    try:
        st = os.stat(mp)
    except FileNotFoundError:
        raise UserError(f"mountpoint {path} does not exist") from None
    except OSError as e:
        if e.errno in DEAD_MOUNT_ERRNOS:
            raise UserError(f"{path} is a dead mount; clear it with objectfs umount {path}") \
                from None
        raise UserError(f"mountpoint {path}: {e.strerror}") from None
    import stat as st_mod

    if not st_mod.S_ISDIR(st.st_mode):
        raise UserError(f"mountpoint {path} is not a directory")
    return mp


def use_own_home(env=None) -> str | None:
    """Point $HOME at the user's own home directory when it is not theirs.

    A user mount from fstab reaches us through the set-uid mount(8), which
    drops HOME from the environment, and mount.fuse3 then sets HOME=/root
    for every file system it starts.  A non-root user's ~/.passwd-s3fs,
    ~/.aws/ and ~/.cache/objectfs must come from their own home (the
    password database), never from another user's.  Returns the home
    directory put in place, or None when $HOME was left alone."""
    env = os.environ if env is None else env
    uid = os.geteuid()
    if uid == 0:
        return None
    home = env.get("HOME")
    if home:
        try:
            if os.stat(home).st_uid == uid:
                return None
        except OSError:
            pass
    import pwd

    try:
        own = pwd.getpwuid(uid).pw_dir
    except KeyError:
        return None
    if not own or own == home:
        return None
    env["HOME"] = own
    return own


def cmd_mount(args) -> int:
    use_own_home()
    bucket, prefix = parse_source(args.source)
    mountpoint = procmounts.canonical(args.mountpoint)
    flags = {"endpoint_url": args.endpoint_url, "region": args.region, "profile": args.profile}
    cfg = config.build(bucket, prefix, mountpoint, foreground=args.foreground,
                       yaml_path=args.config, o_options=args.options, flags=flags)
    from . import mount

    # Credentials are resolved here so a bad passwd file is exit code 2.
    settings = mount.s3_settings(cfg)
    check_mountpoint(args.mountpoint)
    check_log_file(cfg.log_file)
    if args.foreground:
        return mount.run(cfg, settings=settings)
    code = _daemonize(cfg, settings)
    from .logs import no_log_warning

    # the daemon's own log may be out of sight: say these where the user looks
    # (after success, so that a failure stays one line)
    for warning in mount.config_warnings(cfg) + [no_log_warning(cfg)]:
        if warning:
            print(f"objectfs: warning: {warning}", file=sys.stderr)
    return code


def check_log_file(path: str | None) -> None:
    """A log_file the daemon could not open fails the mount here, in one
    line, rather than in a daemon with nowhere to say so."""
    if not path:
        return
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise ConfigError(f"cannot open log_file {path}: {e.strerror}") from None


def _daemonize(cfg, settings) -> int:
    """Fork a daemon and wait until it reports the mount usable (or fails)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(r)
        os.setsid()
        code = 1
        try:
            # Detach from the caller's terminal or pipes: a caller capturing
            # our output must see EOF when "objectfs mount" returns.  Logs go
            # to log_file or syslog.
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            from . import mount

            code = mount.run(cfg, ready_fd=w, daemon=True, settings=settings)
        except UserError as e:
            try:
                os.write(w, f"ERR {e}\n".encode())
            except OSError:
                pass
            code = e.exit_code
        except BaseException as e:
            try:  # one line, where the user looks, rather than nothing
                os.write(w, f"ERR unexpected error while mounting: {e!r}\n".encode())
            except OSError:
                pass
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    # SIGTERM (systemd's mount timeout, a kill) ends the wait like Ctrl-C:
    # the daemon goes too, so that no mount appears after we failed
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        message = _wait_ready(r)
    except KeyboardInterrupt:
        _stop_unready_daemon(pid, cfg.mountpoint)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if message == "OK":
        return 0
    if message is None:
        _stop_unready_daemon(pid, cfg.mountpoint)
        raise UserError(f"the mount did not become ready within {READY_TIMEOUT:g} s")
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    raise UserError(message)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_unready_daemon(pid: int, mountpoint: str) -> None:
    """Undo a mount that was given up before it was ready (by the user, or
    after READY_TIMEOUT): nothing has been written through it, so the daemon
    is killed and its mount, if any, detached."""
    from .mount import state_path

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    if procmounts.find(mountpoint) is not None:
        subprocess.run(["fusermount3", "-uz", mountpoint], capture_output=True)
    try:
        os.unlink(state_path(mountpoint))
    except OSError:
        pass


def _wait_ready(fd: int) -> str | None:
    """The daemon's report: "OK", or why the mount failed; None if it said
    nothing within READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            os.close(fd)
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    os.close(fd)
    line = buf.decode(errors="replace").strip()
    if line == "OK":
        return "OK"
    if line.startswith("ERR "):
        return line[4:]
    return "the mount daemon exited before the mount was ready (see the system log)"


def cmd_umount(args) -> int:
    from .mount import read_state, state_path

    mp = procmounts.canonical(args.mountpoint)
    entry = procmounts.find(mp)
    state = read_state(mp)
    if entry is None:
        if state is not None:
            os.unlink(state_path(mp))
        raise UserError(f"{args.mountpoint} is not mounted")
    if entry.fstype != "fuse.objectfs":
        raise UserError(f"{args.mountpoint} is not an ObjectFS mount ({entry.fstype})")
    if not args.lazy:
        _drain_writeback(mp, args.timeout)
    cmd = ["fusermount3", "-u"] + (["-z"] if args.lazy else []) + [mp]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and procmounts.find(mp) is not None:
        detail = (res.stderr.strip().splitlines() or ["unmount failed"])[-1]
        raise UserError(f"cannot unmount {args.mountpoint}: {detail}")
    pid = state.get("pid") if state else None
    if pid and _alive(int(pid)):
        if args.lazy and not _exited_within(int(pid), LAZY_GRACE):
            # Detached, but the daemon still serves the files open there
            # (or is hung, which is when "umount -z" is the advice): waiting
            # for it would take as long as they stay open.
            print(f"objectfs: {args.mountpoint} is detached; its daemon (pid {pid}) exits "
                  "once the files still open there are closed and uploaded", file=sys.stderr)
            return 0
        _wait_exit(int(pid), args.timeout, args.mountpoint)
        last = read_state(mp)   # the daemon leaves one only to say what it lost
        if last is None or last.get("pid") != pid or "not_uploaded" not in last:
            return 0
        lost = last["not_uploaded"]
        shown = ", ".join(lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
        try:
            os.unlink(state_path(mp))
        except OSError:
            pass
        raise UserError(f"{len(lost)} file(s) could not be uploaded before the daemon exited "
                        f"and are lost: {shown} (the daemon's log says why)")
    if state is not None:  # the daemon was killed: its state file is stale
        try:
            os.unlink(state_path(mp))
        except OSError:
            pass
    return 0


def _drain_writeback(mp: str, timeout: float) -> None:
    """Let the daemon upload its staged write-back files before unmounting
    (bounded by its writeback_drain_timeout) and say what is left."""
    from . import control

    try:
        control.request(mp, {"op": "ping"}, timeout=control.QUICK)
        reply = control.request(mp, {"op": "drain"}, timeout=min(timeout, config.MAX_TIMEOUT))
    except UserError:
        return  # no answer: the daemon drains on unmount as well, if it can
    left = reply.get("left") or []
    if left:
        print(f"objectfs: {len(left)} staged file(s) not yet in S3 stay in "
              f"{reply.get('journal')}; the next mount with the same cache_dir uploads them",
              file=sys.stderr)


def cmd_refresh(args) -> int:
    from . import control

    entry, rel = control.mount_of(args.path)
    reply = control.request(entry.mountpoint, {"op": "refresh", "path": rel},
                            timeout=control.QUICK)
    print(f"objectfs: refreshed {reply['dropped']} cached entries under {args.path}")
    return 0


def cmd_stats(args) -> int:
    import json

    from . import control, stats

    entry = procmounts.find(args.mountpoint)
    if entry is None or entry.fstype != "fuse.objectfs":
        entry, _ = control.mount_of(args.mountpoint)
    reply = control.request(entry.mountpoint, {"op": "stats"}, timeout=control.QUICK)
    if args.json:
        reply.pop("ok", None)
        print(json.dumps(reply, indent=1, sort_keys=True))
    else:
        sys.stdout.write(stats.format_table(reply))
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# How long "objectfs umount -z" waits for the daemon to exit after detaching.
LAZY_GRACE = 5.0


def _exited_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _wait_exit(pid: int, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    said = False
    while _alive(pid):
        if time.monotonic() > deadline:
            raise UserError(f"the ObjectFS daemon (pid {pid}) for {name} is still uploading "
                            f"after {timeout:.0f} s; it goes on in the background")
        if not said and time.monotonic() > deadline - timeout + 2:
            print(f"objectfs: waiting for the daemon (pid {pid}) to finish uploading...",
                  file=sys.stderr)
            said = True
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # mount.fuse3 (mount -t fuse.objectfs, fstab) runs "objectfs SOURCE DIR -o OPTS"
    if argv and not argv[0].startswith("-") and argv[0] not in parser.commands:
        argv.insert(0, "mount")
    try:
        args = parser.parse_args(argv)
        if args.command == "mount":
            return cmd_mount(args)
        if args.command == "umount":
            return cmd_umount(args)
        if args.command == "refresh":
            return cmd_refresh(args)
        if args.command == "uploads":
            return uploads.run(args, *parse_source(args.source))
        if args.command == "stats":
            return cmd_stats(args)
        if args.command == "cache":
            from .tier.cli import main as cache_main
            return cache_main(args)
        parser.print_help()
        return 2
    except UserError as e:
        print(f"objectfs: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
