"""Mounts by users other than root, from /etc/fstab, the way an administrator
sets them up: an fstab line with ``user`` or ``users``, and a normal account
running ``mount /mnt/point`` and ``umount /mnt/point``.

Nothing on the machine is changed.  Each test runs in a private mount
namespace (``unshare --mount --propagation private``, kept alive by a
``sleep`` and entered with ``nsenter``) in which these are bind-mounted over
the real ones: ``/etc/fstab`` and ``/etc/fuse.conf`` (files of the test),
``/run/mount`` (a tmpfs, so that mount(8)'s utab stays private).  The account
is a throw-away one (useradd), removed with everything it ran even when the
test fails; its credentials are its own ``~/.passwd-s3fs`` (mode 600) or
``~/.aws/credentials``, against a moto server that checks them.

Two things of the test machine, not of ObjectFS, are also adjusted inside the
namespace only, when needed:

* ``/dev/fuse`` must be readable and writable by all (mode 0666, as udev sets
  it on Debian); container runtimes often leave it 0600.  A node made with
  mknod on a namespace-private tmpfs is bind-mounted over it.
* The installed ``objectfs`` must be runnable by the account: a venv whose
  interpreter or code lies under a directory others cannot enter (pyenv under
  /root, a checkout in /root) gets that directory covered by a tmpfs in which
  only the needed subdirectory is bind-mounted back.

mount(8) runs helpers for a user mount with the user's ids, an environment
without HOME or PATH (mount.fuse3 then sets HOME=/root), and adds
``nosuid,nodev,noexec``; fusermount3 (set-uid root) does the FUSE mount.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, fuse_usable
from tests.integration.test_mounting import installed  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))

VENV = Path(sys.executable).parent.parent
TIMEOUT = 90  # seconds for any one command; a hung FUSE call fails the test


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path


def processes_of(uid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def kill_processes_of(uid: int) -> None:
    """SIGKILL every process of the throw-away account, until none is left."""
    deadline = time.monotonic() + 30
    while True:
        pids = processes_of(uid)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@pytest.fixture
def user(workdir):
    """A throw-away account with a home directory in the test's workdir."""
    os.chmod(workdir, 0o755)  # the account must reach its home and mountpoint
    name = "ofst" + uuid.uuid4().hex[:8]
    home = workdir / "home"
    r = subprocess.run(["useradd", "--create-home", "--home-dir", str(home), "--shell",
                        "/bin/sh", "--user-group", name], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    pw = pwd.getpwnam(name)
    # without $XDG_RUNTIME_DIR the account's mount state goes to /tmp/objectfs-UID
    runtime = Path(f"/tmp/objectfs-{pw.pw_uid}")
    existed = runtime.exists()
    try:
        yield User(name, pw.pw_uid, pw.pw_gid, home)
    finally:
        kill_processes_of(pw.pw_uid)
        if not existed:
            shutil.rmtree(runtime, ignore_errors=True)
        subprocess.run(["userdel", "--force", "--remove", name], capture_output=True,
                       timeout=60)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            raise AssertionError(f"could not remove the test account {name}")


def blocked_dirs(path: Path) -> list[tuple[Path, Path]]:
    """(directory others cannot enter, its child on the way to ``path``)."""
    out = []
    parts = path.parts
    for i in range(1, len(parts) - 1):
        d = Path(*parts[:i + 1])
        if not os.stat(d).st_mode & stat.S_IXOTH:
            out.append((d, Path(*parts[:i + 2])))
    return out


class Namespace:
    """A private mount namespace, entered with nsenter."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                        "sleep", "3600"], stdin=subprocess.DEVNULL)
        # unshare execs sleep once the namespace is there
        deadline = time.monotonic() + 30
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == os.readlink(
                "/proc/self/ns/mnt") or self._comm() != "sleep":
            assert time.monotonic() < deadline, "unshare did not start"
            assert self.holder.poll() is None, "unshare failed"
            time.sleep(0.02)

    def _comm(self) -> str:
        with open(f"/proc/{self.holder.pid}/comm") as f:
            return f.read().strip()

    def run(self, *argv: str, user: User | None = None, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        cmd = ["nsenter", "-t", str(self.holder.pid), "-m", "--"]
        if user is not None:
            # su without "-": the account's shell, HOME, USER; cwd is its home
            cmd += ["su", "-s", "/bin/sh", "-c", 'cd "$HOME" && exec "$@"', "--",
                    user.name, "sh"]
        r = subprocess.run(cmd + list(argv), capture_output=True, text=True, timeout=TIMEOUT,
                           env=env or clean_env(), cwd="/")
        if check:
            assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
        return r

    def bind(self, source: Path, target: str) -> None:
        self.run("mount", "--bind", str(source), target, check=True)

    def mountinfo(self) -> str:
        with open(f"/proc/{self.holder.pid}/mountinfo") as f:
            return f.read()

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


def clean_env() -> dict:
    """What a login shell would have: no AWS variables, no instance metadata."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def namespace(installed, workdir, user):  # noqa: F811
    ns = Namespace(workdir)
    try:
        ns.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run/mount", check=True)
        fstab = workdir / "fstab"
        fstab.write_text("")
        ns.bind(fstab, "/etc/fstab")
        fuse_conf = workdir / "fuse.conf"
        fuse_conf.write_text("# the test's /etc/fuse.conf\n")
        ns.bind(fuse_conf, "/etc/fuse.conf")
        if os.stat("/dev/fuse").st_mode & 0o666 != 0o666:
            dev = workdir / "dev"
            dev.mkdir()
            ns.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(dev), check=True)
            ns.run("mknod", "-m", "666", str(dev / "fuse"), "c", "10", "229", check=True)
            ns.bind(dev / "fuse", "/dev/fuse")
        needed = {Path(os.path.realpath(sys.executable)), VENV.resolve(), REPO.resolve()}
        covered: dict[Path, set[Path]] = {}
        for path in needed:
            for d, child in blocked_dirs(path):
                covered.setdefault(d, set()).add(child)
        if any(a != b and b.is_relative_to(a) for a in covered for b in covered):
            pytest.skip(f"the venv lies under nested private directories {sorted(covered)}")
        for n, (d, children) in enumerate(covered.items()):
            stash = workdir / f"stash{n}"
            for m, child in enumerate(sorted(children)):
                (stash / str(m)).mkdir(parents=True)
                ns.bind(child, str(stash / str(m)))
            ns.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(d), check=True)
            for m, child in enumerate(sorted(children)):
                ns.run("mkdir", "-p", str(child), check=True)
                ns.bind(stash / str(m), str(child))
        r = ns.run("/usr/local/bin/objectfs", "--version", user=user)
        assert r.returncode == 0, f"the account cannot run objectfs: {r.stderr}"
        ns.fstab = fstab
        ns.fuse_conf = fuse_conf
        yield ns
    finally:
        kill_processes_of(user.uid)  # daemons first: the namespace's mounts then go too
        ns.close()


def user_dir(user: User, path: Path) -> Path:
    path.mkdir()
    os.chown(path, user.uid, user.gid)
    return path


def write_owned(user: User, path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chown(path.parent, user.uid, user.gid)
    path.write_text(text)
    os.chown(path, user.uid, user.gid)
    os.chmod(path, mode)
    return path


def daemons(user: User) -> list[int]:
    out = []
    for pid in processes_of(user.uid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().split(")")[-1].split()[0] == "Z"
        except OSError:
            continue
        if b"objectfs" in argv and not zombie:
            out.append(pid)
    return out


def wait_no_daemon(user: User) -> None:
    deadline = time.monotonic() + 60
    while daemons(user):
        assert time.monotonic() < deadline, "the daemon did not exit after umount"
        time.sleep(0.05)


def mounted(ns: Namespace, mp: Path) -> list[str]:
    """The namespace's mountinfo line for ``mp`` (split), or []."""
    for line in ns.mountinfo().splitlines():
        fields = line.split()
        if fields[4] == str(mp):
            return fields
    return []


@pytest.mark.parametrize("fstype,source,creds", [
    ("fuse.objectfs", "{bucket}:/data", "passwd-s3fs"),
    ("objectfs", "s3://{bucket}/data", "aws-credentials"),
])
def test_user_mounts_and_unmounts_an_fstab_line(namespace, user, auth_s3, workdir, fstype,
                                                source, creds):
    ns = namespace
    bucket = auth_s3.new_bucket()
    client = auth_s3.client()
    client.put_object(Bucket=bucket, Key="data/hello", Body=b"hi")
    if creds == "passwd-s3fs":
        write_owned(user, user.home / ".passwd-s3fs",
                    f"{bucket}:{auth_s3.access_key}:{auth_s3.secret_key}\n")
    else:
        write_owned(user, user.home / ".aws" / "credentials",
                    f"[default]\naws_access_key_id = {auth_s3.access_key}\n"
                    f"aws_secret_access_key = {auth_s3.secret_key}\n")
    mp = user_dir(user, workdir / "mnt")
    log = user.home / "daemon.log"
    ns.fstab.write_text(f"{source.format(bucket=bucket)} {mp} {fstype} "
                        f"user,noauto,_netdev,endpoint_url={auth_s3.endpoint},"
                        f"log_level=debug,log_file={log} 0 0\n")

    r = ns.run("mount", str(mp), user=user)
    assert r.returncode == 0, r.stdout + r.stderr
    info = mounted(ns, mp)
    assert info, "not mounted"
    assert info[info.index("-") + 1] == "fuse.objectfs"
    for flag in ("nosuid", "nodev", "noexec"):  # what mount(8) imposes on user mounts
        assert flag in info[5].split(","), info
    assert f"user_id={user.uid}" in info[-1], info  # the account's FUSE mount
    pids = daemons(user)
    assert len(pids) == 1, "one daemon, running as the account"

    assert ns.run("cat", str(mp / "hello"), user=user, check=True).stdout == "hi"
    ns.run("sh", "-c", f"echo from-{user.name} > {mp / 'new'}", user=user, check=True)
    listing = ns.run("ls", "-ln", str(mp), user=user, check=True).stdout
    for line in listing.splitlines()[1:]:  # the account owns what it sees
        assert line.split()[2:4] == [str(user.uid), str(user.gid)], listing
    # without allow_other even root is kept out of a user's FUSE mount
    r = ns.run("ls", str(mp))
    assert r.returncode != 0 and "Permission denied" in r.stderr, r.stderr

    r = ns.run("umount", str(mp), user=user)
    assert r.returncode == 0, r.stderr
    assert not mounted(ns, mp)
    wait_no_daemon(user)
    body = client.get_object(Bucket=bucket, Key="data/new")["Body"].read()
    assert body == f"from-{user.name}\n".encode()
    text = log.read_text()
    assert "Traceback" not in text and "unknown option" not in text
    assert "local tier disabled" not in text, "the account's own ~/.cache is used"
    assert (user.home / ".cache" / "objectfs").is_dir()


def test_users_line_with_allow_other_needs_user_allow_other(namespace, user, auth_s3,
                                                            workdir):
    ns = namespace
    bucket = auth_s3.new_bucket()
    auth_s3.client().put_object(Bucket=bucket, Key="shared", Body=b"for everyone")
    pw = write_owned(user, user.home / "s3.passwd",
                     f"{auth_s3.access_key}:{auth_s3.secret_key}\n")
    mp = user_dir(user, workdir / "mnt")
    ns.fstab.write_text(f"{bucket} {mp} fuse.objectfs users,noauto,allow_other,"
                        f"passwd_file={pw},endpoint_url={auth_s3.endpoint} 0 0\n")

    # /etc/fuse.conf without user_allow_other: fusermount3 refuses, and says why
    r = ns.run("mount", str(mp), user=user)
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "user_allow_other" in lines[0] and "/etc/fuse.conf" in lines[0], \
        r.stderr
    assert not mounted(ns, mp) and not daemons(user)

    # a passwd file others can read is refused before anything happens
    os.chmod(pw, 0o644)
    r = ns.run("mount", str(mp), user=user)
    assert r.returncode == 2 and "chmod 600" in r.stderr, r.stderr
    assert auth_s3.secret_key not in r.stderr
    os.chmod(pw, 0o600)

    ns.fuse_conf.write_text("user_allow_other\n")
    r = ns.run("mount", str(mp), user=user)
    assert r.returncode == 0, r.stderr
    assert "allow_other" in mounted(ns, mp)[-1]
    # root (any other user) reads the account's mount now
    assert ns.run("cat", str(mp / "shared"), check=True).stdout == "for everyone"
    # "users": anyone may unmount
    r = ns.run("umount", str(mp))
    assert r.returncode == 0, r.stderr
    assert not mounted(ns, mp)
    wait_no_daemon(user)


def test_unusable_staging_dir_fails_the_mount_with_one_line(objectfs_cli, s3, bucket,
                                                            workdir):
    """An account without a home (nobody) has no ~/.cache for staging: the mount
    says so at once instead of failing writes later with EIO."""
    mp = workdir / "mnt"
    mp.mkdir()
    blocker = workdir / "file"
    blocker.write_text("not a directory")
    r = objectfs_cli("mount", f"s3://{bucket}", str(mp), "--endpoint-url", s3.endpoint,
                     "-o", f"staging_dir={blocker}/staging,cache_dir={workdir}/cache")
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == (f"objectfs: cannot create the staging directory "
                                f"{blocker}/staging: Not a directory (set -o staging_dir=DIR)")
    with open("/proc/self/mountinfo") as f:
        assert f" {mp} " not in f.read()
    # read-only mounts never stage
    r = objectfs_cli("mount", f"s3://{bucket}", str(mp), "--endpoint-url", s3.endpoint,
                     "-o", f"ro,staging_dir={blocker}/staging,cache_dir={workdir}/cache")
    assert r.returncode == 0, r.stderr
    try:
        assert os.listdir(mp) == []
    finally:
        assert objectfs_cli("umount", str(mp)).returncode == 0


def test_user_line_with_allow_root_lets_root_in_and_nobody_else(namespace, user, s3, bucket,
                                                                s3_client, workdir):
    ns = namespace
    s3_client.put_object(Bucket=bucket, Key="f", Body=b"root may read")
    pw = write_owned(user, user.home / "s3.passwd", f"{s3.access_key}:{s3.secret_key}\n")
    mp = user_dir(user, workdir / "mnt")
    line = (f"{bucket} {mp} fuse.objectfs user,noauto,passwd_file={pw},"
            f"endpoint_url={s3.endpoint},cache_dir={user.home}/cache,{{}} 0 0\n")
    ns.fuse_conf.write_text("user_allow_other\n")  # fusermount3 wants it for allow_root too
    # both: refused before anything happens (libfuse would keep allow_root alone)
    ns.fstab.write_text(line.format("allow_other,allow_root"))
    r = ns.run("mount", str(mp), user=user)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("objectfs: allow_other and allow_root cannot be used together: "
                                "allow_other already lets root in")
    assert not mounted(ns, mp)

    ns.fstab.write_text(line.format("allow_root"))
    r = ns.run("mount", str(mp), user=user)
    assert r.returncode == 0, r.stderr
    try:
        assert ns.run("cat", str(mp / "f"), check=True).stdout == "root may read"
        other = ns.run("su", "-s", "/bin/sh", "-c", f"cat {mp / 'f'}", "nobody")
        assert other.returncode != 0 and "Permission denied" in other.stderr, other
    finally:
        r = ns.run("umount", str(mp), user=user)
    assert r.returncode == 0, r.stderr
    wait_no_daemon(user)


def test_runtime_dir_made_by_someone_else_is_not_used(namespace, user, s3, bucket, workdir):
    """/tmp/objectfs-UID (no $XDG_RUNTIME_DIR) could be made by anyone first: a
    directory the account does not own privately gets no state or control socket."""
    ns = namespace
    runtime = Path(f"/tmp/objectfs-{user.uid}")
    if runtime.exists():
        pytest.skip(f"{runtime} exists already")
    runtime.mkdir(mode=0o777)  # made by root, open to all
    os.chmod(runtime, 0o777)
    pw = write_owned(user, user.home / "s3.passwd", f"{s3.access_key}:{s3.secret_key}\n")
    mp = user_dir(user, workdir / "mnt")
    log = user.home / "daemon.log"
    ns.fstab.write_text(f"{bucket} {mp} fuse.objectfs user,noauto,passwd_file={pw},"
                        f"endpoint_url={s3.endpoint},log_file={log} 0 0\n")
    r = ns.run("mount", str(mp), user=user)
    assert r.returncode == 0, r.stderr
    r = ns.run("umount", str(mp), user=user)
    assert r.returncode == 0, r.stderr
    wait_no_daemon(user)
    assert list(runtime.iterdir()) == [], "nothing written into it"
    text = log.read_text()
    assert f"{runtime} is not a private directory of uid {user.uid}" in text, text
    assert "Traceback" not in text
