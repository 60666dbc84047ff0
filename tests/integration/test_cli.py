"""The objectfs command as users run it: daemon mount, umount, signals, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from objectfs.mount import read_state
from tests.conftest import REPO, WATCHDOG_SECONDS, fuse_usable, run_cli
from tests.support.mounts import abort_connection, force_unmount, is_mounted, wait_mounted
from tests.support.s3server import free_port

pytestmark = pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))


def daemon_pid(mp) -> int | None:
    state = read_state(str(mp))
    return int(state["pid"]) if state else None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def objectfs_processes(mp) -> list[int]:
    """PIDs of objectfs processes whose command line names ``mp``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"objectfs" in b" ".join(argv) and str(mp).encode() in argv and alive(int(d)):
            out.append(int(d))
    return out


@pytest.fixture
def mountpoint(workdir):
    mp = workdir / "mnt-cli"
    mp.mkdir()
    # a hung mount must fail the test, not hang the suite
    timer = threading.Timer(WATCHDOG_SECONDS, abort_connection, [str(mp)])
    timer.daemon = True
    timer.start()
    yield mp
    timer.cancel()
    pid = daemon_pid(mp)
    force_unmount(str(mp))
    for p in objectfs_processes(mp) + ([pid] if pid else []):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def mount_args(s3, bucket, mp, *extra):
    # the local tier of a test lives in its work directory, not the system's cache
    cache = ["-o", f"cache_dir={Path(mp).parent / 'cache'}"]
    return ["mount", f"s3://{bucket}", str(mp), "--endpoint-url", s3.endpoint, *cache, *extra]


# -- the normal life of a mount ------------------------------------------------------

def test_daemon_mount_is_usable_at_once_and_umount_waits_for_exit(
        objectfs_cli, s3, bucket, s3_client, mountpoint, workdir):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"x")
    r = objectfs_cli(*mount_args(s3, bucket, mountpoint, "-o", f"log_file={workdir / 'log'}"))
    assert r.returncode == 0, r.stderr
    assert os.listdir(mountpoint) == ["f"]  # usable the moment the command returns
    pid = daemon_pid(mountpoint)
    assert pid and alive(pid)
    (mountpoint / "g").write_bytes(b"written")
    r = objectfs_cli("umount", str(mountpoint))
    assert r.returncode == 0, r.stderr
    assert not is_mounted(str(mountpoint))
    assert not alive(pid), "umount returns only once the daemon has exited"
    assert s3_client.get_object(Bucket=bucket, Key="g")["Body"].read() == b"written"


def test_fusermount_unmount_also_ends_the_daemon(objectfs_cli, s3, bucket, mountpoint):
    r = objectfs_cli(*mount_args(s3, bucket, mountpoint))
    assert r.returncode == 0, r.stderr
    pid = daemon_pid(mountpoint)
    assert pid
    subprocess.run(["fusermount3", "-u", str(mountpoint)], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert read_state(str(mountpoint)) is None


def test_umount_of_busy_mount_fails_cleanly(objectfs_cli, s3, bucket, mountpoint):
    assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
    f = open(mountpoint / "busy", "w")
    try:
        r = objectfs_cli("umount", str(mountpoint))
        assert r.returncode == 1
        assert len(r.stderr.strip().splitlines()) == 1 and "busy" in r.stderr.lower()
        assert is_mounted(str(mountpoint))
    finally:
        f.close()
    assert objectfs_cli("umount", str(mountpoint)).returncode == 0


def test_lazy_umount_of_a_busy_mount_returns_at_once(objectfs_cli, s3, bucket, s3_client,
                                                     mountpoint):
    """objectfs umount -z detaches at once; it used to wait (600 s) for a
    daemon that serves an open file until it is closed, or that is hung,
    the very case the "already mounted ... does not answer" line advises
    umount -z for."""
    assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
    pid = daemon_pid(mountpoint)
    f = open(mountpoint / "open-at-umount", "w")
    try:
        f.write("still written")
        r, t = timed(lambda: objectfs_cli("umount", "-z", str(mountpoint), timeout=120))
        assert r.returncode == 0, r.stderr
        assert t < 30, t
        assert not is_mounted(str(mountpoint))
        assert "detached" in r.stderr and "Traceback" not in r.stderr
        assert alive(pid)
    finally:
        f.close()
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    body = s3_client.get_object(Bucket=bucket, Key="open-at-umount")["Body"].read()
    assert body == b"still written"


def test_lazy_umount_of_a_hung_mount_returns_at_once(objectfs_cli, s3, bucket, mountpoint):
    assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
    pid = daemon_pid(mountpoint)
    os.kill(pid, signal.SIGSTOP)
    try:
        r, t = timed(lambda: objectfs_cli("umount", "-z", str(mountpoint), timeout=120))
        assert r.returncode == 0, r.stderr
        assert t < 30, t
        assert not is_mounted(str(mountpoint))
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def test_umount_with_a_bad_timeout_is_one_line_and_leaves_the_mount(objectfs_cli, s3, bucket,
                                                                     mountpoint):
    """--timeout 0, a negative number or nan went on to the daemon's control
    socket and failed there with a traceback (BlockingIOError, ValueError)."""
    assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
    for value in ("0", "-1", "nan"):
        r = objectfs_cli("umount", str(mountpoint), f"--timeout={value}")
        assert r.returncode == 2, (value, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f"objectfs: argument --timeout: must be more than 0 seconds: {value!r}"]
        assert is_mounted(str(mountpoint))
    r = objectfs_cli("umount", str(mountpoint), "--timeout", "1e12")  # past a socket's timeout
    assert r.returncode == 0, r.stderr
    assert not is_mounted(str(mountpoint))


def test_umount_says_what_the_daemon_could_not_upload_and_exits_1(auth_s3, mountpoint):
    """A file whose upload S3 refuses (close gave EACCES) is tried again at
    unmount; when that fails too the daemon exits 1, and objectfs umount
    says which file is lost instead of exiting 0."""
    bucket = auth_s3.new_bucket()
    auth_s3.client().put_object(Bucket=bucket, Key="readonly/", Body=b"")
    env = auth_s3.env()
    r = run_cli(mount_args(auth_s3, bucket, mountpoint), env=env)
    assert r.returncode == 0, r.stderr
    f = open(mountpoint / "readonly" / "locked.txt", "wb")
    f.write(b"refused")
    with pytest.raises(PermissionError):
        f.close()
    pid = daemon_pid(mountpoint)
    r = run_cli(["umount", str(mountpoint)], env=env, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "objectfs: 1 file(s) could not be uploaded before the daemon exited and are lost: "
        "/readonly/locked.txt (the daemon's log says why)"]
    assert not is_mounted(str(mountpoint)) and not alive(pid)
    assert read_state(str(mountpoint)) is None


def test_commands_on_a_hung_mount_fail_in_one_line(objectfs_cli, s3, bucket, mountpoint):
    """refresh, stats and cache stats never stat() the mount (its daemon
    would have to answer) and wait for the daemon's answer a few seconds."""
    r = objectfs_cli(*mount_args(s3, bucket, mountpoint, "-o", "metadata_ttl=1"))
    assert r.returncode == 0, r.stderr
    pid = daemon_pid(mountpoint)
    time.sleep(1.5)  # the kernel's cached attributes of the root expire
    os.kill(pid, signal.SIGSTOP)
    try:
        for cmd in (["refresh", str(mountpoint)], ["stats", str(mountpoint)],
                    ["cache", "stats", str(mountpoint)]):
            r, t = timed(lambda: objectfs_cli(*cmd, timeout=60,
                                              env={"OBJECTFS_ANSWER_TIMEOUT": "2"}))
            assert r.returncode == 1, (cmd, r.stderr)
            assert r.stderr.strip().splitlines() == [
                f"objectfs: the ObjectFS daemon of {mountpoint} did not answer"], cmd
            assert t < 30, cmd
    finally:
        os.kill(pid, signal.SIGCONT)
    assert objectfs_cli("umount", str(mountpoint)).returncode == 0


def test_a_mountpoint_given_through_a_symlink(objectfs_cli, s3, bucket, mountpoint):
    """The mount is on the symlink's target; every command finds it by
    either name, and a second mount there is refused."""
    link = mountpoint.parent / "link-to-mnt"
    link.symlink_to(mountpoint.name)
    r = objectfs_cli(*mount_args(s3, bucket, link))
    assert r.returncode == 0, r.stderr
    try:
        assert is_mounted(str(mountpoint))
        assert objectfs_cli("stats", str(link)).returncode == 0
        assert objectfs_cli("stats", str(mountpoint)).returncode == 0
        r = objectfs_cli(*mount_args(s3, bucket, link))
        assert r.returncode == 1 and "already" in r.stderr, r.stderr
        r = objectfs_cli(*mount_args(s3, bucket, mountpoint))
        assert r.returncode == 1 and "already" in r.stderr, r.stderr
        assert sum(e.split()[1] == str(mountpoint) for e in open("/proc/mounts")) == 1
        r = objectfs_cli("umount", str(link))
        assert r.returncode == 0, r.stderr
        assert not is_mounted(str(mountpoint))
    finally:
        force_unmount(str(mountpoint))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_mount_given_up_while_waiting_leaves_nothing(s3, bucket, mountpoint, sig):
    """Ctrl-C, or systemd's mount timeout (SIGTERM), while objectfs mount
    waits for a slow endpoint: the command exits 130, and its daemon goes
    with it; no mount appears later."""
    from tests.support.faultproxy import FaultProxy

    with FaultProxy(s3, delay=6) as proxy:
        proxy.fail_next("ListObjectsV2", "delay")   # the bucket check takes 6 s
        env = {**os.environ, **s3.env(), "PYTHONPATH": str(REPO)}
        p = subprocess.Popen([sys.executable, "-m", "objectfs", "mount", f"s3://{bucket}",
                              str(mountpoint), "--endpoint-url", proxy.endpoint], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2)
            p.send_signal(sig)
            assert p.wait(timeout=30) == 130
            time.sleep(6)   # past the slow answer
            assert not is_mounted(str(mountpoint))
            assert objectfs_processes(mountpoint) == []
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()


def test_a_mount_not_ready_in_time_fails_in_one_line_and_leaves_nothing(s3, bucket,
                                                                       mountpoint):
    """The daemon does not report the mount ready within the wait
    (OBJECTFS_READY_TIMEOUT, 60 s by default; here the bucket check takes
    6 s): exit 1 with one line, and neither the daemon nor a mount nor its
    state stays."""
    from objectfs.mount import state_path
    from tests.support.faultproxy import FaultProxy

    with FaultProxy(s3, delay=6) as proxy:
        proxy.fail_next("ListObjectsV2", "delay")
        env = {**s3.env(), "OBJECTFS_READY_TIMEOUT": "2"}
        r = run_cli(["mount", f"s3://{bucket}", str(mountpoint), "--endpoint-url",
                     proxy.endpoint], env=env, timeout=60)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines() == [
            "objectfs: the mount did not become ready within 2 s"]
        time.sleep(6)   # past the slow answer
        assert not is_mounted(str(mountpoint))
        assert objectfs_processes(mountpoint) == []
        assert not os.path.exists(state_path(str(mountpoint)))


def test_umount_of_something_not_mounted(objectfs_cli, mountpoint):
    r = objectfs_cli("umount", str(mountpoint))
    assert r.returncode == 1 and "not mounted" in r.stderr


def test_sigterm_uploads_pending_data_then_exits(s3, bucket, s3_client, mountpoint):
    env = s3.env()
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "objectfs", *mount_args(s3, bucket, mountpoint),
                             "-f"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_mounted(str(mountpoint), proc, 30)
        f = open(mountpoint / "open-file", "wb")
        f.write(b"not yet closed")
        f.flush()  # reaches the daemon, not yet uploaded (the file is still open)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not is_mounted(str(mountpoint))
        assert s3_client.get_object(Bucket=bucket, Key="open-file")["Body"].read() \
            == b"not yet closed"
        try:
            f.close()
        except OSError:
            pass  # the mount is gone under it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_yaml_config_and_o_options(objectfs_cli, s3, bucket, s3_client, mountpoint, workdir):
    cfg = workdir / "objectfs.yaml"
    cfg.write_text("file_mode: 0600\ndir_mode: 0700\nmetadata_ttl: 2\n")
    s3_client.put_object(Bucket=bucket, Key="d/f", Body=b"x")
    r = objectfs_cli(*mount_args(s3, bucket, mountpoint, "--config", str(cfg),
                                 "-o", "dir_mode=0711"))
    assert r.returncode == 0, r.stderr
    try:
        assert oct(os.stat(mountpoint / "d" / "f").st_mode & 0o7777) == "0o600"
        assert oct(os.stat(mountpoint / "d").st_mode & 0o7777) == "0o711"  # -o wins
    finally:
        objectfs_cli("umount", str(mountpoint))


def test_profile_credentials(s3, bucket, mountpoint, workdir):
    creds = workdir / "credentials"
    creds.write_text(f"[p1]\naws_access_key_id = {s3.access_key}\n"
                     f"aws_secret_access_key = {s3.secret_key}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(workdir / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    r = run_cli(mount_args(s3, bucket, mountpoint, "--profile", "p1"), env=env)
    assert r.returncode == 0, r.stderr
    run_cli(["umount", str(mountpoint)], env=env)
    r = run_cli(mount_args(s3, bucket, mountpoint, "--profile", "nope"), env=env)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "profile" in r.stderr


def test_help_and_version():
    r = run_cli(["--help"])
    assert r.returncode == 0 and "objectfs mount s3://" in r.stdout
    r = run_cli(["mount", "--help"])
    assert r.returncode == 0 and "--endpoint-url" in r.stdout and "examples" in r.stdout
    r = run_cli(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("objectfs ")


# -- bad input: one line, non-zero, fast, nothing left behind ---------------------------

def assert_clean_failure(r: subprocess.CompletedProcess, elapsed: float, mp, code: int,
                         *words: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(lines) == 1, f"expected one line, got: {r.stderr!r}"
    assert lines[0].startswith("objectfs: ")
    for w in words:
        assert w in lines[0].lower(), (w, lines[0])
    assert "Traceback" not in r.stderr + r.stdout
    assert elapsed < 30
    assert not is_mounted(str(mp))
    time.sleep(0.2)
    assert objectfs_processes(mp) == [], "a daemon was left running"


def timed(fn):
    t = time.monotonic()
    r = fn()
    return r, time.monotonic() - t


def test_missing_bucket(objectfs_cli, s3, mountpoint):
    r, t = timed(lambda: objectfs_cli(*mount_args(s3, "no-such-bucket-xyz", mountpoint)))
    assert_clean_failure(r, t, mountpoint, 1, "no-such-bucket-xyz", "does not exist")


def test_unreachable_endpoint(objectfs_cli, bucket, mountpoint):
    port = free_port()
    r, t = timed(lambda: objectfs_cli("mount", f"s3://{bucket}", str(mountpoint),
                                      "--endpoint-url", f"http://127.0.0.1:{port}"))
    assert_clean_failure(r, t, mountpoint, 1, "cannot reach", str(port))


def test_uploads_command_against_a_bad_endpoint_is_one_line_and_bounded(objectfs_cli, bucket,
                                                                        mountpoint):
    """objectfs uploads against an endpoint that refuses connections printed
    the store's log line as well as its error (two lines), and against one
    that accepts and never answers it took 5 x read_timeout (over 5 min)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)   # accepts (the kernel does) and never answers
    try:
        for port in (free_port(), silent.getsockname()[1]):
            r, t = timed(lambda: objectfs_cli("uploads", f"s3://{bucket}", "--endpoint-url",
                                              f"http://127.0.0.1:{port}", timeout=120))
            assert_clean_failure(r, t, mountpoint, 1, "cannot list multipart uploads",
                                 "unreachable")
    finally:
        silent.close()
    r, t = timed(lambda: objectfs_cli("uploads", f"s3://{bucket}", "--region", "us east"))
    assert_clean_failure(r, t, mountpoint, 2, "--region")


def test_missing_credentials(s3, bucket, mountpoint, workdir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(workdir / "none"),
               AWS_CONFIG_FILE=str(workdir / "none"), AWS_EC2_METADATA_DISABLED="true")
    r, t = timed(lambda: run_cli(mount_args(s3, bucket, mountpoint), env=env))
    assert_clean_failure(r, t, mountpoint, 1, "credentials")


@pytest.mark.parametrize("problem", ["partial-env", "unparsable-config"])
@pytest.mark.parametrize("command", ["mount", "mount -f", "uploads"])
def test_unusable_aws_configuration_is_one_line(s3, bucket, mountpoint, workdir, problem,
                                                command):
    """botocore resolves credentials when the client is made: a key id
    without its secret, or a shared config file that does not parse, failed
    there with a traceback (-f, objectfs uploads) or 'unexpected error'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(workdir / "none"),
               AWS_CONFIG_FILE=str(workdir / "none"), AWS_EC2_METADATA_DISABLED="true")
    if problem == "partial-env":
        env["AWS_ACCESS_KEY_ID"] = s3.access_key   # no AWS_SECRET_ACCESS_KEY
        words = ("credentials", "aws_secret_access_key")
    else:
        (workdir / "aws-config").write_text("[default]\nregion = us-east-1\n[profile broken\n")
        env["AWS_CONFIG_FILE"] = str(workdir / "aws-config")
        words = ("unable to parse config file",)
    if command == "uploads":
        args = ["uploads", f"s3://{bucket}", "--endpoint-url", s3.endpoint]
    else:
        args = mount_args(s3, bucket, mountpoint, *command.split()[1:])
    r, t = timed(lambda: run_cli(args, env=env))
    assert "unexpected error" not in r.stderr
    assert_clean_failure(r, t, mountpoint, 1, *words)


@pytest.mark.parametrize("problem", ["missing", "file", "mounted"])
def test_bad_mountpoint(objectfs_cli, s3, bucket, workdir, mountpoint, problem):
    if problem == "missing":
        mp = workdir / "does-not-exist"
        words = ("does not exist",)
    elif problem == "file":
        mp = workdir / "a-file"
        mp.write_text("")
        words = ("not a directory",)
    else:
        assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
        mp = mountpoint
        words = ("already mounted",)
    r, t = timed(lambda: objectfs_cli(*mount_args(s3, bucket, mp)))
    if problem == "mounted":
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
        assert "already mounted" in r.stderr and "Traceback" not in r.stderr
        assert objectfs_cli("umount", str(mountpoint)).returncode == 0
    else:
        assert_clean_failure(r, t, mp, 1, *words)


@pytest.mark.parametrize("args,words", [
    (["-o", "no_such_option=1"], ("unknown option", "no_such_option")),
    (["-o", "part_size=lots"], ("bad value", "part_size")),
    (["-o", "part_size=1M"], ("part_size",)),
    (["-o", "file_mode=0999"], ("file_mode",)),
    (["-o", "metadata_ttl=-1"], ("metadata_ttl",)),
    (["--config", "/nonexistent/objectfs.yaml"], ("cannot read config file",)),
    (["--no-such-flag"], ("unrecognized",)),
    (["--endpoint-url", "127.0.0.1:9000"], ("bad value", "endpoint_url")),
    (["-o", "log_file=/nonexistent/dir/objectfs.log"], ("cannot open log_file",)),
    (["-f", "-o", "log_file=/nonexistent/dir/objectfs.log"], ("cannot open log_file",)),
])
def test_bad_options_exit_2(objectfs_cli, s3, bucket, mountpoint, args, words):
    r, t = timed(lambda: objectfs_cli(*mount_args(s3, bucket, mountpoint, *args)))
    assert_clean_failure(r, t, mountpoint, 2, *words)


@pytest.mark.parametrize("text,words", [
    ("part_size: [1, 2\n", ("invalid yaml",)),
    ("bogus_key: 1\n", ("unknown option", "bogus_key")),
    ("- a list\n", ("mapping",)),
    ("retries: zero\n", ("bad value", "retries")),
])
def test_bad_config_file_exit_2(objectfs_cli, s3, bucket, mountpoint, workdir, text, words):
    cfg = workdir / "bad.yaml"
    cfg.write_text(text)
    r, t = timed(lambda: objectfs_cli(*mount_args(s3, bucket, mountpoint, "--config", str(cfg))))
    assert_clean_failure(r, t, mountpoint, 2, *words)


def test_bad_source_url(objectfs_cli, mountpoint):
    r, t = timed(lambda: objectfs_cli("mount", "s3://", str(mountpoint)))
    assert_clean_failure(r, t, mountpoint, 2, "bucket")


# -- credentials and authorisation against a server that checks them --------------------

def test_rejected_credentials(auth_s3, mountpoint):
    bucket = auth_s3.new_bucket()
    env = auth_s3.env()
    env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret"
    r, t = timed(lambda: run_cli(mount_args(auth_s3, bucket, mountpoint), env=env))
    assert_clean_failure(r, t, mountpoint, 1, "credentials were rejected")
    env["AWS_ACCESS_KEY_ID"] = "AKIANOSUCHKEY0000000"
    r, t = timed(lambda: run_cli(mount_args(auth_s3, bucket, mountpoint), env=env))
    assert_clean_failure(r, t, mountpoint, 1, "credentials were rejected")


def test_access_denied_maps_to_eacces(auth_s3, mount):
    bucket = auth_s3.new_bucket()
    client = auth_s3.client()
    client.put_object(Bucket=bucket, Key="secret/plans", Body=b"classified")
    client.put_object(Bucket=bucket, Key="open/notes", Body=b"public")
    client.put_object(Bucket=bucket, Key="readonly/", Body=b"")
    mp = mount(bucket, server=auth_s3).mountpoint
    with open(os.path.join(mp, "open", "notes"), "rb") as f:
        assert f.read() == b"public"
    with pytest.raises(PermissionError):
        with open(os.path.join(mp, "secret", "plans"), "rb") as f:
            f.read()
    # the upload at close is refused, and close() says so
    f = open(os.path.join(mp, "readonly", "locked.txt"), "wb")
    f.write(b"denied")
    with pytest.raises(PermissionError):
        f.close()
    # the mount survived all of it
    assert sorted(os.listdir(mp)) == ["open", "readonly", "secret"]
    with open(os.path.join(mp, "open", "notes"), "rb") as f:
        assert f.read() == b"public"


def test_refresh_shows_a_remote_change_before_the_ttl(objectfs_cli, s3, bucket, s3_client,
                                                      mountpoint):
    s3_client.put_object(Bucket=bucket, Key="d/f", Body=b"old")
    r = objectfs_cli(*mount_args(s3, bucket, mountpoint, "-o", "metadata_ttl=3600,negative_ttl=3600"))
    assert r.returncode == 0, r.stderr
    try:
        assert (mountpoint / "d" / "f").read_bytes() == b"old"
        assert not (mountpoint / "d" / "g").exists()
        s3_client.put_object(Bucket=bucket, Key="d/f", Body=b"new and longer")
        s3_client.put_object(Bucket=bucket, Key="d/g", Body=b"g")
        assert (mountpoint / "d" / "f").stat().st_size == 3  # cached for an hour
        r = objectfs_cli("refresh", str(mountpoint / "d"))
        assert r.returncode == 0, r.stderr
        assert "refreshed" in r.stdout
        assert (mountpoint / "d" / "f").read_bytes() == b"new and longer"
        assert sorted(os.listdir(mountpoint / "d")) == ["f", "g"]
        # a name the mount has as missing, refreshed by its own path
        assert not (mountpoint / "d" / "h").exists()
        s3_client.put_object(Bucket=bucket, Key="d/h", Body=b"h")
        assert not (mountpoint / "d" / "h").exists()  # cached for an hour
        r = objectfs_cli("refresh", str(mountpoint / "d" / "h"))
        assert r.returncode == 0, r.stderr
        assert (mountpoint / "d" / "h").read_bytes() == b"h"
        r = objectfs_cli("refresh", str(mountpoint / "d" / "f" / "x"))
        assert r.returncode == 1 and "Not a directory" in r.stderr, r.stderr
        r = objectfs_cli("refresh", "/tmp")
        assert r.returncode == 1 and "not on an ObjectFS mount" in r.stderr
    finally:
        objectfs_cli("umount", str(mountpoint))


def test_refresh_shows_a_type_another_client_changed_before_the_ttl(objectfs_cli, s3, bucket,
                                                                   s3_client, mountpoint):
    """The listing of PATH's directory vouched for PATH's type: a refreshed file
    another client made a directory of showed as missing (the HEAD of the
    file found nothing), a directory made a file stayed a directory, and a
    path under a file made a directory was "Not a directory"."""
    for key in ("a", "b", "d/y"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    r = objectfs_cli(*mount_args(s3, bucket, mountpoint, "-o", "metadata_ttl=3600,negative_ttl=3600"))
    assert r.returncode == 0, r.stderr
    try:
        assert sorted(os.listdir(mountpoint)) == ["a", "b", "d"]
        assert (mountpoint / "a").read_bytes() == b"a" and (mountpoint / "b").is_file()
        assert os.listdir(mountpoint / "d") == ["y"]
        for key in ("a", "b", "d/y"):
            s3_client.delete_object(Bucket=bucket, Key=key)
        for key in ("a/x", "b/x", "d"):
            s3_client.put_object(Bucket=bucket, Key=key, Body=b"new " + key.encode())
        r = objectfs_cli("refresh", str(mountpoint / "a"))
        assert r.returncode == 0, r.stderr
        assert (mountpoint / "a").is_dir()
        assert (mountpoint / "a" / "x").read_bytes() == b"new a/x"
        r = objectfs_cli("refresh", str(mountpoint / "b" / "x"))
        assert r.returncode == 0, r.stderr
        assert (mountpoint / "b" / "x").read_bytes() == b"new b/x"
        r = objectfs_cli("refresh", str(mountpoint / "d"))
        assert r.returncode == 0, r.stderr
        assert (mountpoint / "d").read_bytes() == b"new d"
        assert sorted(os.listdir(mountpoint)) == ["a", "b", "d"]
    finally:
        objectfs_cli("umount", str(mountpoint))


def test_refresh_of_a_prefix_mounts_root_shows_the_attributes_of_its_marker(
        objectfs_cli, s3, bucket, s3_client, mountpoint):
    """The root of a mount of a prefix shows the attributes of the prefix's
    marker, read at the mount and never asked again; `objectfs refresh` of
    the mountpoint asks for them.  Before, a chmod of the prefix by another
    client showed only after a remount."""
    s3_client.put_object(Bucket=bucket, Key="pfx/", Body=b"", ContentType="application/x-directory",
                         Metadata={"mode": str(0o40755)})
    r = objectfs_cli(*mount_args(s3, bucket + "/pfx", mountpoint, "-o", "metadata_ttl=3600"))
    assert r.returncode == 0, r.stderr
    try:
        assert os.stat(mountpoint).st_mode == 0o40755
        s3_client.put_object(Bucket=bucket, Key="pfx/", Body=b"",
                             ContentType="application/x-directory",
                             Metadata={"mode": str(0o40700), "uid": "77"})
        r = objectfs_cli("refresh", str(mountpoint))
        assert r.returncode == 0, r.stderr
        st = os.stat(mountpoint)
        assert (st.st_mode, st.st_uid) == (0o40700, 77)
    finally:
        objectfs_cli("umount", str(mountpoint))


def test_assume_role_profile_from_shared_config(auth_s3, mountpoint, workdir):
    """A profile that assumes a role (role_arn + source_profile): boto3 calls STS,
    and the mount works with the role's temporary credentials, which moto checks
    against the role's policy."""
    import json

    iam = boto3_client(auth_s3, "iam")
    role = f"objectfs-test-{uuid.uuid4().hex[:8]}"
    arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                               "Principal": {"AWS": "*"}}]}))["Role"]["Arn"]
    iam.put_role_policy(RoleName=role, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                                               "Resource": "*"}]}))
    bucket = auth_s3.new_bucket()
    auth_s3.client().put_object(Bucket=bucket, Key="k", Body=b"via the role")
    config = workdir / "config"
    config.write_text(f"[profile src]\naws_access_key_id = {auth_s3.access_key}\n"
                      f"aws_secret_access_key = {auth_s3.secret_key}\n\n"
                      f"[profile role]\nrole_arn = {arn}\nsource_profile = src\n"
                      f"role_session_name = objectfs-test\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(workdir / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1",
               AWS_ENDPOINT_URL_STS=auth_s3.endpoint, HOME=str(workdir))
    r = run_cli(mount_args(auth_s3, bucket, mountpoint, "--profile", "role"), env=env)
    assert r.returncode == 0, r.stderr
    try:
        assert (mountpoint / "k").read_bytes() == b"via the role"
    finally:
        assert run_cli(["umount", str(mountpoint)], env=env).returncode == 0
    # a source user that may not assume roles: STS refuses, and the one line says it
    # is about the profile's credentials, not "access to bucket denied"
    iam.create_user(UserName=role + "-nosts")
    key = iam.create_access_key(UserName=role + "-nosts")["AccessKey"]
    config.write_text(config.read_text()
                      .replace(auth_s3.access_key, key["AccessKeyId"])
                      .replace(auth_s3.secret_key, key["SecretAccessKey"]))
    r = run_cli(mount_args(auth_s3, bucket, mountpoint, "--profile", "role"), env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        "objectfs: could not get AWS credentials for the profile: AssumeRole failed: "
        "AccessDenied"], r.stderr
    assert key["SecretAccessKey"] not in r.stderr


def boto3_client(server, service: str):
    import boto3

    return boto3.client(service, endpoint_url=server.endpoint, region_name=server.region,
                        aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key)
