"""Running ObjectFS as administrators do: mount(8), fstab, make install, systemd's
notify protocol, s3fs passwd files, signals, and dead mounts after kill -9.

mount(8) finds helpers only in /sbin (and /sbin/fs.d, /sbin/fs), so the tests
that run the real ``mount`` command install ObjectFS there with ``make
install-files`` (the same files ``make install`` puts in place) for the length
of the module, under a lock, and ``make uninstall`` removes them afterwards.
They are skipped, never overwritten, when an ObjectFS is already installed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from objectfs import procmounts
from objectfs.mount import read_state
from tests.conftest import REPO, fuse_usable, run_cli
from tests.integration.test_cli import (alive, daemon_pid, mount_args,  # noqa: F401
                                        mountpoint, objectfs_processes)
from tests.support.mounts import (S3fsMount, force_unmount, is_mounted, mount_entry,
                                  wait_mounted)
from tests.support.s3server import MotoServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))

VENV = Path(sys.executable).parent.parent
INSTALLED = ("/sbin/mount.objectfs", "/usr/local/bin/objectfs",
             "/usr/local/lib/systemd/system/objectfs@.service")


def reap(proc: subprocess.Popen, *files) -> None:
    """Test clean-up: close our descriptors on the mount, kill the daemon if alive."""
    for f in files:
        with contextlib.suppress(OSError):
            f.close()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait_daemon_gone(pid: int | None) -> None:
    if pid:
        wait_for(lambda: not alive(pid), what=f"exit of daemon {pid}")


def log_of(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def no_traceback(path: Path) -> None:
    assert "Traceback" not in log_of(path), log_of(path)[-4000:]


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(REPO), *args], capture_output=True,
                          text=True, timeout=60)


# -- make install / uninstall ---------------------------------------------------------

def test_make_install_and_uninstall_put_the_files_where_mount_looks(tmp_path):
    dirs = [f"PREFIX={tmp_path}/usr", f"SBINDIR={tmp_path}/sbin", f"VENV={VENV}"]
    r = make("install-files", *dirs)
    assert r.returncode == 0, r.stderr
    helper = tmp_path / "sbin" / "mount.objectfs"
    wrapper = tmp_path / "usr" / "bin" / "objectfs"
    unit = tmp_path / "usr" / "lib" / "systemd" / "system" / "objectfs@.service"
    assert os.access(helper, os.X_OK)
    assert f"OBJECTFS={wrapper}\n" in helper.read_text()
    assert os.readlink(wrapper) == str(VENV / "bin" / "objectfs")
    r = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("objectfs ")
    assert f"ExecStart={wrapper} mount" in unit.read_text()
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = make("uninstall", *dirs)
    assert r.returncode == 0, r.stderr
    assert not helper.exists() and not wrapper.is_symlink() and not unit.exists()


def test_make_install_without_a_venv_says_so(tmp_path):
    r = make("install-files", f"PREFIX={tmp_path}", f"SBINDIR={tmp_path}",
             f"VENV={tmp_path}/no-venv")
    assert r.returncode != 0 and "make venv" in r.stderr
    assert list(tmp_path.iterdir()) == []


MARKER = "/run/lock/objectfs-test-installed"


@pytest.fixture(scope="module")
def installed():
    """ObjectFS installed into /sbin and /usr/local for mount(8), then removed.

    A marker file says the installed files are the tests' own, so files left
    by an interrupted run are replaced and removed, but a real installation
    is never touched."""
    with open("/run/lock/objectfs-test-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        present = [p for p in INSTALLED if os.path.lexists(p)]
        if present and not os.path.exists(MARKER):
            pytest.skip(f"ObjectFS is already installed ({present[0]}); not touching it")
        Path(MARKER).write_text("installed by tests/integration/test_mounting.py\n")
        try:
            r = make("install-files", f"VENV={VENV}")
            assert r.returncode == 0, r.stderr
            yield
        finally:
            make("uninstall")
            assert not any(os.path.lexists(p) for p in INSTALLED)
            os.unlink(MARKER)


def mount8_env(s3) -> dict:
    env = s3.env()
    env["PYTHONPATH"] = str(REPO)  # the installed objectfs runs this checkout's code
    return env


def mount_opts(s3, workdir) -> str:
    return (f"endpoint_url={s3.endpoint},log_level=debug,log_file={workdir / 'daemon.log'},"
            f"staging_dir={workdir / 'staging'}")


@contextlib.contextmanager
def mount8_cleanup(mp: Path):
    try:
        yield
    finally:
        pid = daemon_pid(mp)
        force_unmount(str(mp))
        for p in objectfs_processes(mp) + ([pid] if pid else []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


# -- mount(8) and fstab -----------------------------------------------------------------

FSTAB_EXTRAS = ("_netdev,nofail,auto,defaults,rw,nosuid,nodev,noexec,noatime,relatime,"
                "x-systemd.automount,x-systemd.requires=network-online.target,comment=test")


@pytest.mark.parametrize("fstype,source", [("fuse.objectfs", "{bucket}:/photos"),
                                           ("objectfs", "s3://{bucket}/photos")])
def test_fstab_line_mounts_and_umount_unmounts(installed, s3, bucket, s3_client, workdir,
                                               mountpoint, fstype, source):
    s3_client.put_object(Bucket=bucket, Key="photos/cat.jpg", Body=b"meow")
    s3_client.put_object(Bucket=bucket, Key="elsewhere", Body=b"not under the prefix")
    fstab = workdir / "fstab"
    fstab.write_text(f"# a private fstab\n{source.format(bucket=bucket)} {mountpoint} {fstype} "
                     f"allow_other,{FSTAB_EXTRAS},{mount_opts(s3, workdir)} 0 0\n")
    with mount8_cleanup(mountpoint):
        r = subprocess.run(["mount", "--fstab", str(fstab), str(mountpoint)],
                           env=mount8_env(s3), capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr
        ent = mount_entry(str(mountpoint))
        assert ent["fstype"] == "fuse.objectfs" and ent["source"] == f"s3://{bucket}/photos"
        for flag in ("nosuid", "nodev", "noexec", "allow_other"):
            assert flag in ent["options"].split(","), ent["options"]
        assert os.listdir(mountpoint) == ["cat.jpg"]
        (mountpoint / "dog.jpg").write_bytes(b"woof")
        pid = daemon_pid(mountpoint)
        assert pid and alive(pid)
        r = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(str(mountpoint))
        wait_daemon_gone(pid)
    assert s3_client.get_object(Bucket=bucket, Key="photos/dog.jpg")["Body"].read() == b"woof"
    assert "unknown option" not in log_of(workdir / "daemon.log")
    no_traceback(workdir / "daemon.log")


def test_mount_a_mounts_auto_lines_and_skips_noauto(installed, s3, bucket, s3_client,
                                                    workdir):
    """mount -a (what a boot without systemd does with fstab): noauto lines are left
    for later, a failing line is reported in one line and the others still mount
    (exit code 64, "some mounts succeeded"; nofail matters to systemd, see
    test_systemd.py)."""
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"x")
    mps = {name: workdir / f"mnt-{name}" for name in ("auto", "noauto", "broken")}
    for mp in mps.values():
        mp.mkdir()
    opts = mount_opts(s3, workdir)
    fstab = workdir / "fstab"
    fstab.write_text(
        f"{bucket} {mps['auto']} fuse.objectfs _netdev,{opts} 0 0\n"
        f"{bucket} {mps['noauto']} fuse.objectfs noauto,_netdev,{opts} 0 0\n"
        f"no-such-bucket-{bucket} {mps['broken']} objectfs nofail,_netdev,{opts} 0 0\n")
    with contextlib.ExitStack() as stack:
        for mp in mps.values():
            stack.enter_context(mount8_cleanup(mp))
        r = subprocess.run(["mount", "-a", "--fstab", str(fstab)], env=mount8_env(s3),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 64, (r.returncode, r.stderr)
        assert is_mounted(str(mps["auto"])) and os.listdir(mps["auto"]) == ["f"]
        assert not is_mounted(str(mps["noauto"])) and not is_mounted(str(mps["broken"]))
        # the broken line's reason is on stderr, one line
        assert r.stderr.strip().splitlines() == [
            f"objectfs: bucket 'no-such-bucket-{bucket}' does not exist at {s3.endpoint}"]
        pid = daemon_pid(mps["auto"])
        assert subprocess.run(["umount", str(mps["auto"])], timeout=60).returncode == 0
        wait_daemon_gone(pid)
    no_traceback(workdir / "daemon.log")


@pytest.mark.parametrize("fstype", ["fuse.objectfs", "objectfs"])
def test_mount_t_on_the_command_line(installed, s3, bucket, s3_client, workdir, mountpoint,
                                     fstype):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"data")
    with mount8_cleanup(mountpoint):
        r = subprocess.run(["mount", "-t", fstype, bucket, str(mountpoint), "-o",
                            f"ro,_netdev,allow_root,{mount_opts(s3, workdir)}"],
                           env=mount8_env(s3), capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr
        assert "ro" in mount_entry(str(mountpoint))["options"].split(",")
        assert (mountpoint / "f").read_bytes() == b"data"
        with pytest.raises(OSError) as ei:
            (mountpoint / "g").write_bytes(b"x")
        assert ei.value.errno == 30  # EROFS
        pid = daemon_pid(mountpoint)
        assert subprocess.run(["umount", str(mountpoint)], timeout=60).returncode == 0
        wait_daemon_gone(pid)
    no_traceback(workdir / "daemon.log")


def test_mount_n_mounts_in_another_mount_namespace(installed, s3, bucket, s3_client, workdir,
                                                  mountpoint):
    """mount -N PID (util-linux passes -N /proc/PID/fd/N to the helper): the mount
    is made in that namespace only, and umount -N removes it there."""
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"inside")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep",
                               "600"])
    in_ns = ["nsenter", f"--mount=/proc/{holder.pid}/ns/mnt"]

    def mounted_there() -> bool:
        with open(f"/proc/{holder.pid}/mountinfo") as f:
            return any(ln.split()[4] == str(mountpoint) for ln in f)

    try:
        wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/mnt")
                 != os.readlink("/proc/self/ns/mnt"), what="the new namespace")
        with mount8_cleanup(mountpoint):
            r = subprocess.run(["mount", "-N", str(holder.pid), "-t", "objectfs", bucket,
                                str(mountpoint), "-o", mount_opts(s3, workdir)],
                               env=mount8_env(s3), capture_output=True, text=True,
                               timeout=90)
            assert r.returncode == 0, r.stderr
            assert mounted_there()
            assert not is_mounted(str(mountpoint)), "not in the namespace mount(8) ran in"
            r = subprocess.run([*in_ns, "cat", str(mountpoint / "f")], capture_output=True,
                               timeout=60)
            assert r.stdout == b"inside", r.stderr
            pid = daemon_pid(mountpoint)
            r = subprocess.run(["umount", "-N", str(holder.pid), str(mountpoint)],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert not mounted_there()
            wait_daemon_gone(pid)
    finally:
        if holder.poll() is None:
            subprocess.run([*in_ns, "umount", "-l", str(mountpoint)], capture_output=True,
                           timeout=60)
        reap(holder)
    no_traceback(workdir / "daemon.log")


@pytest.mark.parametrize("fstype", ["fuse.objectfs", "objectfs"])
def test_mount8_with_a_bad_option_fails_with_one_clear_line(installed, s3, bucket, workdir,
                                                            mountpoint, fstype):
    with mount8_cleanup(mountpoint):
        r = subprocess.run(["mount", "-t", fstype, bucket, str(mountpoint), "-o",
                            f"_netdev,no_such_thing=1,{mount_opts(s3, workdir)}"],
                           env=mount8_env(s3), capture_output=True, text=True, timeout=90)
        assert r.returncode == 2, "mount(8) passes on the exit code"
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert lines == ["objectfs: unknown option 'no_such_thing' (-o); see "
                         "'objectfs mount --help'"], r.stderr
        assert "Traceback" not in r.stderr
        assert not is_mounted(str(mountpoint))


def test_help_version_and_exit_codes():
    r = run_cli(["--help"])
    assert r.returncode == 0
    for words in ("examples:", "mount -t fuse.objectfs", "/etc/fstab", "BUCKET:/PREFIX",
                  "exit codes: 0 ok, 1 the operation failed, 2 bad usage"):
        assert words in r.stdout, words
    r = run_cli(["--version"])
    assert r.returncode == 0 and re.fullmatch(r"objectfs \d+\.\d+\.\d+\n", r.stdout)
    r = run_cli([])
    assert r.returncode == 2 and "usage:" in r.stdout
    r = run_cli(["mount", "s3://b"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1


# -- systemd (Type=notify) -------------------------------------------------------------

@contextlib.contextmanager
def notify_socket(abstract: bool, workdir: Path):
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"objectfs-test-{os.getpid()}-{time.monotonic_ns()}"
        s.bind("\0" + name)
        address = "@" + name
    else:
        address = str(workdir / "notify.sock")
        s.bind(address)
    s.settimeout(90)
    try:
        yield s, address
    finally:
        s.close()


def receive(s: socket.socket) -> dict[str, str]:
    data = s.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


def unit_command(unit: str, key: str, values: dict[str, str]) -> list[str]:
    """The unit's ExecStart/ExecStop as systemd would run it (simple cases)."""
    line = re.search(rf"^{key}=(.*)$", unit, re.M).group(1)
    argv = []
    for word in line.split():
        if word.startswith("$") and not word.startswith("${"):
            argv += values[word[1:]].split()
            continue
        for k, v in values.items():
            word = word.replace("${" + k + "}", v)
        argv.append(word)
    assert argv[0] == "/usr/local/bin/objectfs"
    return [sys.executable, "-m", "objectfs", *argv[1:]]


def test_systemd_unit_notifies_ready_only_when_the_mount_answers(s3, bucket, s3_client,
                                                                  workdir, mountpoint):
    s3_client.put_object(Bucket=bucket, Key="hello", Body=b"hi")
    unit = (REPO / "etc" / "objectfs@.service").read_text()
    assert re.search(r"^Type=notify$", unit, re.M)
    values = {"SOURCE": f"s3://{bucket}", "%f": str(mountpoint),
              "OPTIONS": f"--endpoint-url {s3.endpoint} -o {mount_opts(s3, workdir)}"}
    start = [w.replace("%f", str(mountpoint)) for w in unit_command(unit, "ExecStart", values)]
    stop = [w.replace("%f", str(mountpoint)) for w in unit_command(unit, "ExecStop", values)]
    env = mount8_env(s3)
    with notify_socket(False, workdir) as (sock, address), mount8_cleanup(mountpoint):
        env["NOTIFY_SOCKET"] = address
        proc = subprocess.Popen(start, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            msg = receive(sock)
            assert msg.get("READY") == "1", msg
            # when READY arrives the mount already answers
            assert is_mounted(str(mountpoint))
            assert os.listdir(mountpoint) == ["hello"]
            r = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            assert receive(sock).get("STOPPING") == "1"
            assert proc.wait(timeout=60) == 0
            assert not is_mounted(str(mountpoint))
        finally:
            reap(proc)
        assert "Traceback" not in proc.stderr.read()
    no_traceback(workdir / "daemon.log")


def test_notify_on_abstract_socket_and_sigterm(s3, bucket, workdir, mountpoint):
    env = mount8_env(s3)
    with notify_socket(True, workdir) as (sock, address), mount8_cleanup(mountpoint):
        env["NOTIFY_SOCKET"] = address
        proc = subprocess.Popen([sys.executable, "-m", "objectfs",
                                 *mount_args(s3, bucket, mountpoint, "-f", "-o",
                                             mount_opts(s3, workdir))],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            assert receive(sock).get("READY") == "1"
            assert os.listdir(mountpoint) == []
            proc.send_signal(signal.SIGTERM)
            assert receive(sock).get("STOPPING") == "1"
            assert proc.wait(timeout=60) == 0
            assert not is_mounted(str(mountpoint))
        finally:
            reap(proc)
    no_traceback(workdir / "daemon.log")


# -- s3fs passwd files against a server that checks credentials ---------------------------

def env_without_aws(workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AWSACCESS",
                                                                      "AWSSECRET"))}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(workdir / "none"),
               AWS_CONFIG_FILE=str(workdir / "none"), AWS_EC2_METADATA_DISABLED="true",
               AWS_DEFAULT_REGION="us-east-1", HOME=str(workdir / "home"))
    (workdir / "home").mkdir(exist_ok=True)
    return env


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_passwd_file_option(auth_s3, workdir, mountpoint):
    bucket = auth_s3.new_bucket()
    auth_s3.client().put_object(Bucket=bucket, Key="k", Body=b"v")
    env = env_without_aws(workdir)
    good = write_secret(workdir / "pw", f"# s3fs format\nWRONGKEY:wrongsecret\n"
                        f"{bucket}:{auth_s3.access_key}:{auth_s3.secret_key}\n")
    args = mount_args(auth_s3, bucket, mountpoint, "-o", f"passwd_file={good}")
    r = run_cli(args, env=env)
    assert r.returncode == 0, r.stderr
    try:
        assert (mountpoint / "k").read_bytes() == b"v"
    finally:
        assert run_cli(["umount", str(mountpoint)], env=env).returncode == 0
    # the same file readable by the group: refused before anything happens
    os.chmod(good, 0o640)
    r = run_cli(args, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "group or others" in r.stderr and auth_s3.secret_key not in r.stderr
    # a wrong pair: rejected by the server, one line
    bad = write_secret(workdir / "bad", f"{auth_s3.access_key}:not-the-secret\n")
    r = run_cli(mount_args(auth_s3, bucket, mountpoint, "-o", f"passwd_file={bad}"), env=env)
    assert r.returncode == 1 and "credentials were rejected" in r.stderr, r.stderr
    assert "not-the-secret" not in r.stderr
    assert not is_mounted(str(mountpoint))


def test_home_passwd_s3fs_when_boto3_has_no_credentials(auth_s3, workdir, mountpoint):
    bucket = auth_s3.new_bucket()
    env = env_without_aws(workdir)
    write_secret(workdir / "home" / ".passwd-s3fs",
                 f"{auth_s3.access_key}:{auth_s3.secret_key}\n")
    r = run_cli(mount_args(auth_s3, bucket, mountpoint), env=env)
    assert r.returncode == 0, r.stderr
    assert run_cli(["umount", str(mountpoint)], env=env).returncode == 0
    # boto3's own configuration wins over the old s3fs file
    env.update(AWS_ACCESS_KEY_ID="AKIAFROMENVIRONMENT0", AWS_SECRET_ACCESS_KEY="wrong")
    r = run_cli(mount_args(auth_s3, bucket, mountpoint), env=env)
    assert r.returncode == 1 and "credentials were rejected" in r.stderr, r.stderr


def test_uploads_command_takes_credentials_from_passwd_files_as_the_mount_does(auth_s3,
                                                                               workdir):
    bucket = auth_s3.new_bucket()
    auth_s3.client().create_multipart_upload(Bucket=bucket, Key="left/behind")
    env = env_without_aws(workdir)
    args = ["uploads", f"s3://{bucket}", "--endpoint-url", auth_s3.endpoint]
    r = run_cli(args, env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    pw = write_secret(workdir / "pw", f"{bucket}:{auth_s3.access_key}:{auth_s3.secret_key}\n")
    r = run_cli([*args, "--passwd-file", str(pw)], env=env)
    assert r.returncode == 0 and r.stdout.startswith("left/behind\t"), (r.stdout, r.stderr)
    os.chmod(pw, 0o644)
    r = run_cli([*args, "--passwd-file", str(pw)], env=env)
    assert r.returncode == 2 and "group or others" in r.stderr, r.stderr
    write_secret(workdir / "home" / ".passwd-s3fs",
                 f"{auth_s3.access_key}:{auth_s3.secret_key}\n")
    r = run_cli(args, env=env)
    assert r.returncode == 0 and r.stdout.startswith("left/behind\t"), (r.stdout, r.stderr)


# -- signals and dead mounts ---------------------------------------------------------------

def start_foreground(server, bucket, mp, workdir, *opts) -> subprocess.Popen:
    env = mount8_env(server)
    proc = subprocess.Popen([sys.executable, "-m", "objectfs",
                             *mount_args(server, bucket, mp, "-f", "-o",
                                         ",".join([mount_opts(server, workdir), *opts]))],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_mounted(str(mp), proc, 60)
    wait_for(lambda: read_state(str(mp)) is not None, what="mount state")  # mount answers
    return proc


def test_sigint_uploads_every_open_file_with_a_log_line_each(s3, bucket, s3_client, workdir,
                                                             mountpoint):
    with mount8_cleanup(mountpoint):
        proc = start_foreground(s3, bucket, mountpoint, workdir)
        files = []
        try:
            for name in ("a", "b"):
                f = open(mountpoint / name, "wb")
                f.write(name.encode() * 10)
                f.flush()
                files.append(f)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 0
            assert not is_mounted(str(mountpoint))
        finally:
            reap(proc, *files)
    for name in ("a", "b"):
        assert s3_client.get_object(Bucket=bucket, Key=name)["Body"].read() == name.encode() * 10
        assert f"shutdown: uploading /{name} (10 bytes)" in log_of(workdir / "daemon.log")
    no_traceback(workdir / "daemon.log")


def test_shutdown_timeout_0_with_nothing_to_upload_exits_0(s3, bucket, s3_client, workdir,
                                                          mountpoint):
    """shutdown_timeout=0 stops at once what is left to upload, but with
    everything in S3 there is nothing to stop: the exit is clean (0)."""
    with mount8_cleanup(mountpoint):
        proc = start_foreground(s3, bucket, mountpoint, workdir, "shutdown_timeout=0")
        try:
            (mountpoint / "done").write_bytes(b"in S3 at close")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
            assert not is_mounted(str(mountpoint))
        finally:
            reap(proc)
    assert s3_client.get_object(Bucket=bucket, Key="done")["Body"].read() == b"in S3 at close"
    assert "stopped by" not in log_of(workdir / "daemon.log")


def test_upload_refused_at_shutdown_is_logged_and_exit_code_1(auth_s3, workdir, mountpoint):
    bucket = auth_s3.new_bucket()
    with mount8_cleanup(mountpoint):
        proc = start_foreground(auth_s3, bucket, mountpoint, workdir)
        f = open(mountpoint / "denied.txt", "wb")
        try:
            f.write(b"S3 refuses this")
            f.flush()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 1
            assert not is_mounted(str(mountpoint))
        finally:
            reap(proc, f)
    log = log_of(workdir / "daemon.log")
    assert "could not upload /denied.txt at shutdown" in log
    assert "1 file(s) could not be uploaded before exit" in log


@pytest.fixture(scope="module")
def stoppable_s3(tmp_path_factory):
    """A server of our own, which a test may freeze with SIGSTOP."""
    server = MotoServer(log_path=str(tmp_path_factory.mktemp("moto-stop") / "log"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_s3(stoppable_s3):
    try:
        yield stoppable_s3
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stoppable_s3.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("how", ["second SIGINT", "shutdown_timeout"])
def test_stuck_upload_second_sigint_or_timeout_stops_at_once(private_s3, workdir,
                                                              mountpoint, how):
    bucket = private_s3.new_bucket()
    opts = ["shutdown_timeout=1"] if how == "shutdown_timeout" else []
    with mount8_cleanup(mountpoint):
        proc = start_foreground(private_s3, bucket, mountpoint, workdir, *opts)
        f = open(mountpoint / "stuck", "wb")
        try:
            f.write(b"never uploaded")
            f.flush()
            os.killpg(private_s3.proc.pid, signal.SIGSTOP)  # S3 stops answering
            proc.send_signal(signal.SIGINT)
            wait_for(lambda: "shutdown: uploading /stuck" in log_of(workdir / "daemon.log"),
                     what="upload at shutdown")
            if how == "second SIGINT":
                proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 1
            assert not is_mounted(str(mountpoint))
        finally:
            reap(proc, f)
    reason = "a second signal" if how == "second SIGINT" else "shutdown_timeout (1 s)"
    assert f"not uploaded, stopped by {reason}: /stuck" in log_of(workdir / "daemon.log")
    # left for objectfs umount to report
    assert read_state(str(mountpoint))["not_uploaded"] == ["/stuck"]


def kill9(mp: Path) -> None:
    pid = daemon_pid(mp)
    assert pid and alive(pid)
    os.kill(pid, signal.SIGKILL)
    wait_daemon_gone(pid)
    assert is_mounted(str(mp)), "a killed daemon leaves its mount behind"
    with pytest.raises(OSError) as ei:
        os.listdir(mp)
    # ENOTCONN (Transport endpoint is not connected), or ECONNABORTED when the
    # kernel marked the connection aborted
    assert ei.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)


def test_mount_left_by_kill_9_is_cleared(objectfs_cli, s3, bucket, s3_client, mountpoint):
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"x")
    with mount8_cleanup(mountpoint):
        # objectfs umount clears it
        assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
        kill9(mountpoint)
        r = objectfs_cli("umount", str(mountpoint))
        assert r.returncode == 0, r.stderr
        assert not is_mounted(str(mountpoint)) and read_state(str(mountpoint)) is None
        # so does fusermount3 -u
        assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
        kill9(mountpoint)
        assert subprocess.run(["fusermount3", "-u", str(mountpoint)],
                              timeout=30).returncode == 0
        assert not is_mounted(str(mountpoint))
        # and the next mount clears it itself, saying what it found
        assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
        kill9(mountpoint)
        r = objectfs_cli(*mount_args(s3, bucket, mountpoint))
        assert r.returncode == 0, r.stderr
        lines = r.stderr.strip().splitlines()
        # (a daemon with nowhere to log adds a warning line after it)
        assert lines[0] == (f"objectfs: cleared a dead ObjectFS mount of s3://{bucket} "
                            f"on {mountpoint} (its daemon had exited)"), r.stderr
        assert all(ln.startswith("objectfs: warning: ") for ln in lines[1:]), r.stderr
        assert os.listdir(mountpoint) == ["f"]
        assert objectfs_cli("umount", str(mountpoint)).returncode == 0


def test_dead_mount_of_another_filesystem_is_reported(objectfs_cli, s3, bucket, mountpoint):
    """A dead FUSE mount that is not ObjectFS's is left alone, and named."""
    if shutil.which("s3fs") is None:
        pytest.skip("s3fs is not installed (apt-get install s3fs)")
    other = S3fsMount(s3, bucket, str(mountpoint))
    try:
        other.proc.kill()
        other.proc.wait(timeout=30)
        assert is_mounted(str(mountpoint))
        r = objectfs_cli(*mount_args(s3, bucket, mountpoint))
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"{mountpoint} is a dead fuse.s3fs mount" in r.stderr
        assert f"fusermount3 -u {mountpoint}" in r.stderr
        assert mount_entry(str(mountpoint))["fstype"] == "fuse.s3fs", "left alone"
    finally:
        other.stop()


def test_mount_on_a_hung_mount_says_so(objectfs_cli, s3, bucket, mountpoint):
    """A daemon that is alive but does not answer is not mistaken for a dead one."""
    with mount8_cleanup(mountpoint):
        assert objectfs_cli(*mount_args(s3, bucket, mountpoint)).returncode == 0
        pid = daemon_pid(mountpoint)
        os.kill(pid, signal.SIGSTOP)
        try:
            r = objectfs_cli(*mount_args(s3, bucket, mountpoint))
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert "already mounted" in r.stderr and "does not answer" in r.stderr
            # (procmounts.find: is_mounted would stat the hung mountpoint)
            assert procmounts.find(str(mountpoint)) is not None, "left to the administrator"
        finally:
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)
