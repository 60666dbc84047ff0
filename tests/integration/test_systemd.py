"""The systemd files in etc/ under the real systemd (Debian package systemd).

* ``systemd-analyze verify`` of an instance of the installed template unit.
* systemd's own fstab generator on ``etc/fstab.example``: the lines become the
  .mount and .automount units the README promises, and those verify.
* The template unit run by a real service manager: ``systemd --user`` (the
  same manager code as PID 1, without booting a machine) as a throw-away
  account, in a private mount namespace, with its own cgroup subtree
  delegated to it.  ``systemctl start`` returns once the daemon said READY=1
  (Type=notify), ``kill -9`` of the daemon is followed by Restart=on-failure
  and a clean remount, ``systemctl stop`` runs ExecStop (objectfs umount) and
  ends with Result=success.

A system manager (systemd as PID 1 in its own namespaces) is not booted here:
its sysinit.target runs systemd-tmpfiles --remove and systemd-sysctl, which act
on the machine's /tmp and kernel settings unless the whole root filesystem is
a private copy.  The system instance of the unit differs from the user one in
ordering only (network-online.target, remote-fs.target).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, fuse_usable
from tests.integration.test_mounting import VENV, make
from tests.integration.test_user_mounts import (  # noqa: F401  (fixtures)
    installed, kill_processes_of, namespace, user, user_dir, write_owned)

SYSTEMD = "/lib/systemd/systemd"
GENERATOR = "/lib/systemd/system-generators/systemd-fstab-generator"


def verify(*units: Path, cwd: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True,
                       text=True, timeout=60, cwd=cwd)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is missing (apt-get install systemd)")
def test_systemd_analyze_verifies_an_instance_of_the_unit(tmp_path):
    dirs = [f"PREFIX={tmp_path}/usr", f"SBINDIR={tmp_path}/sbin", f"VENV={VENV}"]
    r = make("install-files", *dirs)
    assert r.returncode == 0, r.stderr
    unitdir = tmp_path / "usr" / "lib" / "systemd" / "system"
    # an instance, so that %i and %f are expanded as for objectfs@mnt-photos
    instance = unitdir / "objectfs@mnt-photos.service"
    shutil.copy(unitdir / "objectfs@.service", instance)
    verify(instance, cwd=tmp_path)
    # (verify does check: a wrong Type= is reported)
    instance.write_text(instance.read_text().replace("Type=notify", "Type=notfy"))
    r = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert "Failed to parse service type" in r.stderr


@pytest.mark.skipif(not (os.access(GENERATOR, os.X_OK) and shutil.which("systemd-analyze")),
                    reason="systemd's fstab generator is missing (apt-get install systemd)")
def test_fstab_example_through_systemds_fstab_generator(tmp_path):
    out = [tmp_path / d for d in ("normal", "early", "late")]
    for d in out:
        d.mkdir()
    env = dict(os.environ, SYSTEMD_FSTAB=str(REPO / "etc" / "fstab.example"),
               SYSTEMD_LOG_LEVEL="warning")
    r = subprocess.run([GENERATOR, *map(str, out)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    gen = out[0]

    def unit(name: str) -> dict[str, str]:
        text = (gen / name).read_text()
        return dict(re.findall(r"^(\w+)=(.*)$", text, re.M))

    photos = unit("mnt-photos.mount")
    assert photos["What"] == "my-bucket:/photos" and photos["Type"] == "fuse.objectfs"
    assert "passwd_file=/etc/passwd-s3fs" in photos["Options"]
    backups = unit("mnt-backups.mount")
    assert backups["What"] == "s3://backups" and backups["Type"] == "objectfs"
    # _netdev: after the network, with the remote file systems
    assert (gen / "remote-fs.target.wants" / "mnt-photos.mount").exists()
    assert (gen / "remote-fs.target.wants" / "mnt-backups.mount").exists()
    # x-systemd.automount + noauto: only the automount unit is wanted at boot
    auto = unit("mnt-data.automount")
    assert auto["Where"] == "/mnt/data" and auto["TimeoutIdleSec"] == "10min"
    assert (gen / "remote-fs.target.wants" / "mnt-data.automount").exists()
    assert not (gen / "remote-fs.target.wants" / "mnt-data.mount").exists()
    assert unit("mnt-data.mount")["TimeoutSec"] == "1min 30s"  # x-systemd.mount-timeout=90
    verify(*(gen / n for n in ("mnt-photos.mount", "mnt-backups.mount", "mnt-data.mount",
                               "mnt-data.automount")), cwd=gen)


# -- the unit under a real service manager -------------------------------------------------

def cgroup_roots() -> list[tuple[Path, str]]:
    """Where this machine mounts the cgroup v2 hierarchy, and systemd's v1 one."""
    roots = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, where, fstype, opts = line.split()[:4]
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts):
                roots.append((Path(where), fstype))
    return roots


@pytest.fixture
def delegated_cgroup(user):  # noqa: F811
    """A cgroup of our own, given to the account: systemd --user creates its
    scopes and slices under the cgroup it starts in."""
    name = f"objectfs-test-{uuid.uuid4().hex[:8]}"
    roots = cgroup_roots()
    if not any(fstype == "cgroup2" for _, fstype in roots):
        pytest.skip("no cgroup v2 hierarchy mounted")
    made = []
    try:
        for root, _ in roots:
            d = root / name
            d.mkdir()
            made.append(d)
            for p in [d, *d.iterdir()]:
                os.chown(p, user.uid, user.gid)
        yield made
    finally:
        kill_processes_of(user.uid)
        deadline = time.monotonic() + 30
        while any(d.exists() for d in made) and time.monotonic() < deadline:
            for d in made:  # deepest first; a cgroup empties a moment after its last kill
                for sub in sorted([p for p in d.rglob("*") if p.is_dir()] + [d],
                                  key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            time.sleep(0.1)
        left = [d for d in made if d.exists()]
        assert not left, f"cgroups left behind: {left}"


@pytest.mark.skipif(not os.access(SYSTEMD, os.X_OK), reason="systemd is not installed")
@pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))
def test_template_unit_under_a_real_service_manager(namespace, user, delegated_cgroup,  # noqa
                                                    s3, bucket, s3_client, workdir):
    ns = namespace
    s3_client.put_object(Bucket=bucket, Key="hello", Body=b"hi")
    # /etc/objectfs/MOUNTPOINT.env as the README has it, in a private copy of /etc
    for d in ("etc-up", "etc-work"):
        (workdir / d).mkdir()
    ns.run("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir=/etc,upperdir={workdir / 'etc-up'},workdir={workdir / 'etc-work'}",
           "/etc", check=True)
    # systemd --user runs only where systemd runs (/run/systemd/system)
    ns.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run", check=True)
    ns.run("mkdir", "-p", "/run/systemd/system", check=True)
    mp = user_dir(user, workdir / "mnt")
    instance = subprocess.run(["systemd-escape", "--path", str(mp)], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
    env_file = workdir / "instance.env"
    env_file.write_text(f"SOURCE=s3://{bucket}\nOPTIONS=-o passwd_file={user.home}/pw,"
                        f"log_file={user.home}/daemon.log,log_level=debug "
                        f"--endpoint-url {s3.endpoint}\n")
    # the mountpoint has "-" in it (systemd-escape makes them \x2d): the escaped
    # name would be read as a glob pattern and not found, the path form is
    assert "\\x2d" in instance
    target = Path("/etc/objectfs") / f"{str(mp).lstrip('/')}.env"
    ns.run("mkdir", "-p", str(target.parent), check=True)
    ns.run("cp", str(env_file), str(target), check=True)
    write_owned(user, user.home / "pw", f"{s3.access_key}:{s3.secret_key}\n")
    # the installed unit (make install-files), as a user unit of the account
    unit_dir = user.home / ".config" / "systemd" / "user"
    write_owned(user, unit_dir / "objectfs@.service",
                Path("/usr/local/lib/systemd/system/objectfs@.service").read_text(), 0o644)
    os.chown(unit_dir.parent, user.uid, user.gid)
    os.chown(unit_dir.parent.parent, user.uid, user.gid)
    xdg = user_dir(user, workdir / "xdg")
    os.chmod(xdg, 0o700)

    procs = " ".join(f"echo $$ > {d}/cgroup.procs;" for d in delegated_cgroup)
    manager = subprocess.Popen(
        ["nsenter", "-t", str(ns.holder.pid), "-m", "--", "sh", "-c",
         f"{procs} exec runuser -u {user.name} -- env -i HOME={user.home} USER={user.name} "
         f"XDG_RUNTIME_DIR={xdg} PATH=/usr/local/bin:/usr/bin:/bin "
         f"AWS_EC2_METADATA_DISABLED=true {SYSTEMD} --user"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def systemctl(*args: str) -> subprocess.CompletedProcess:
            return ns.run("env", f"XDG_RUNTIME_DIR={xdg}", "systemctl", "--user", *args,
                          user=user)

        deadline = time.monotonic() + 60
        while systemctl("is-system-running").stdout.strip() not in ("running", "degraded"):
            assert manager.poll() is None, "systemd --user exited"
            assert time.monotonic() < deadline, "systemd --user did not come up"
            time.sleep(0.2)
        service = f"objectfs@{instance}.service"

        def show(*props: str) -> dict[str, str]:
            out = systemctl("show", "-p", ",".join(props), service).stdout
            return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

        # start returns when the daemon said READY=1: the mount answers at once
        r = systemctl("start", service)
        assert r.returncode == 0, (r.stderr + systemctl("status", "--no-pager", service).stdout
                                   + log_text(user))
        assert show("ActiveState", "StatusText") == {"ActiveState": "active",
                                                     "StatusText": "mounted"}
        assert ns.run("cat", str(mp / "hello"), user=user, check=True).stdout == "hi"
        ns.run("sh", "-c", f"echo via-systemd > {mp / 'new'}", user=user, check=True)

        # a crash: Restart=on-failure mounts again, clearing the dead mount
        first = int(show("MainPID")["MainPID"])
        os.kill(first, 9)
        deadline = time.monotonic() + 60
        while not (show("NRestarts")["NRestarts"] == "1"
                   and show("ActiveState")["ActiveState"] == "active"):
            assert time.monotonic() < deadline, f"no restart: {show('ActiveState', 'Result')}"
            time.sleep(0.2)
        assert int(show("MainPID")["MainPID"]) != first
        assert ns.run("cat", str(mp / "new"), user=user, check=True).stdout == "via-systemd\n"
        assert ns.mountinfo().count(f" {mp} ") == 1

        # stop: ExecStop=objectfs umount, STOPPING=1, exit 0
        r = systemctl("stop", service)
        assert r.returncode == 0, r.stderr
        assert show("ActiveState", "Result", "ExecMainStatus") == {
            "ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        assert f" {mp} " not in ns.mountinfo()
    finally:
        manager.kill()
        manager.wait()
    assert s3_client.get_object(Bucket=bucket, Key="new")["Body"].read() == b"via-systemd\n"
    assert "Traceback" not in log_text(user)


def log_text(user) -> str:
    try:
        return (user.home / "daemon.log").read_text(errors="replace")
    except OSError:
        return ""


def test_unit_without_its_env_file_says_what_is_missing(tmp_path):
    """No /etc/objectfs/MOUNTPOINT.env: systemd runs "objectfs mount '' DIR -f"."""
    from tests.conftest import run_cli

    r = run_cli(["mount", "", str(tmp_path), "-f"], timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "objectfs: no bucket given: expected s3://BUCKET[/PREFIX] (for objectfs@.service: "
        "SOURCE= in /etc/objectfs/MOUNTPOINT.env)"]
