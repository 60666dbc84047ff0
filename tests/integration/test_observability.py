"""Metrics endpoint, ``objectfs stats``, and what the log says (and never says),
through a real mount against moto."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.support.s3server import free_port

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def listening_addresses(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, p = local.split(":")
                if int(p, 16) == port and state == "0A":  # LISTEN
                    found.append(addr)
    return found


def test_metrics_count_requests_bytes_and_fuse_ops(mount, bucket, s3_client):
    port = free_port()
    m = mount(bucket, options=[f"metrics_port={port}", "metadata_ttl=60"])
    assert listening_addresses(port) == ["0100007F"], "metrics must listen on 127.0.0.1 only"
    s3_client.put_object(Bucket=bucket, Key="remote.bin", Body=os.urandom(300_000))
    before = scrape(port)

    body = os.urandom(123_456)
    with open(os.path.join(m.mountpoint, "local.bin"), "wb") as f:
        f.write(body)
    with open(os.path.join(m.mountpoint, "remote.bin"), "rb") as f:
        assert len(f.read()) == 300_000
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(m.mountpoint, "missing"))
    os.mkdir(os.path.join(m.mountpoint, "d"))
    open(os.path.join(m.mountpoint, "d", "f"), "wb").close()
    with pytest.raises(OSError):
        os.rmdir(os.path.join(m.mountpoint, "d"))
    after = scrape(port)

    # the new files went up with their bytes
    assert delta(before, after, "objectfs_s3_sent_bytes_total") == len(body)
    assert delta(before, after, "objectfs_s3_received_bytes_total") == 300_000
    puts = delta(before, after, "objectfs_s3_requests_total", op="PutObject")
    assert puts >= 3  # local.bin, d/, d/f
    assert delta(before, after, "objectfs_s3_request_seconds_count", op="PutObject") == puts
    assert delta(before, after, "objectfs_s3_request_seconds_sum", op="PutObject") > 0
    assert delta(before, after, "objectfs_s3_requests_total", op="GetObject") >= 1
    # FUSE requests by type, errors by errno; read with the cheaper wait
    # (fuseloop.py: on the pyfuse3 this suite installs, it must be in place)
    assert value(after, "objectfs_fuse_fast_wait") == 1
    assert delta(before, after, "objectfs_fuse_requests_total", op="create") == 2
    assert delta(before, after, "objectfs_fuse_requests_total", op="mkdir") == 1
    assert delta(before, after, "objectfs_fuse_requests_total", op="write") >= 1
    assert delta(before, after, "objectfs_fuse_requests_total", op="read") >= 1
    assert delta(before, after, "objectfs_fuse_requests_total", op="rmdir") == 1
    assert delta(before, after, "objectfs_fuse_errors_total", op="rmdir", errno="ENOTEMPTY") == 1
    lookups = (delta(before, after, "objectfs_cache_hits_total", cache="lookup")
               + delta(before, after, "objectfs_cache_misses_total", cache="lookup"))
    assert lookups >= 3
    # histogram buckets are cumulative and end in +Inf == count
    for op in ("PutObject", "GetObject", "HeadObject"):
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in after.items()
                         if k[0] == "objectfs_s3_request_seconds_bucket"
                         and dict(k[1])["op"] == op)
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and buckets[-1][0] == float("inf")
        assert counts[-1] == value(after, "objectfs_s3_request_seconds_count", op=op)

    # a cached stat answers from the inode cache: a hit, no request
    os.stat(os.path.join(m.mountpoint, "local.bin"))
    s1 = scrape(port)
    os.listdir(m.mountpoint)
    os.listdir(m.mountpoint)
    s2 = scrape(port)
    assert delta(s1, s2, "objectfs_cache_hits_total", cache="listing") >= 1


def test_receive_buffers_are_kept_while_reading_and_given_back_when_idle(mount, bucket, s3):
    """A large read fills kept receive buffers (store/buffers.py); the mount
    gives them back a couple of seconds after the last GET."""
    data = os.urandom(12 * 1024 * 1024)
    s3.client().put_object(Bucket=bucket, Key="big.bin", Body=data)
    port = free_port()
    m = mount(bucket, options=[f"metrics_port={port}", "cache_size=0"])
    with open(os.path.join(m.mountpoint, "big.bin"), "rb") as f:
        assert f.read() == data
    assert value(scrape(port), "objectfs_receive_buffer_bytes") > 0
    deadline = time.monotonic() + 30
    while value(scrape(port), "objectfs_receive_buffer_bytes") > 0:
        assert time.monotonic() < deadline, "receive buffers never given back"
        time.sleep(0.2)


def test_pending_upload_and_write_buffer_gauges(mount, bucket):
    port = free_port()
    m = mount(bucket, options=[f"metrics_port={port}"])
    f = open(os.path.join(m.mountpoint, "open.bin"), "wb", buffering=0)
    try:
        f.write(b"x" * 100_000)
        during = scrape(port)
        assert value(during, "objectfs_pending_uploads") == 1
        assert value(during, "objectfs_pending_upload_bytes") == 100_000
        assert value(during, "objectfs_write_buffer_bytes") == 100_000
        assert value(during, "objectfs_write_buffer_limit_bytes") == 256 * 1024 * 1024
    finally:
        f.close()
    after = scrape(port)
    assert value(after, "objectfs_pending_uploads") == 0
    assert value(after, "objectfs_pending_upload_bytes") == 0
    assert value(after, "objectfs_write_buffer_bytes") == 0
    # not an HTTP server for anything else
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert e.value.code == 404


def test_stats_command_shows_the_same_figures(mount, bucket, s3, s3_client):
    port = free_port()
    # bigger than small_file_prefetch: the stat is a HEAD, the read a GET
    s3_client.put_object(Bucket=bucket, Key="gone", Body=b"soon deleted" * 2000)
    m = mount(bucket, options=[f"metrics_port={port}", "metadata_ttl=60"])
    with open(os.path.join(m.mountpoint, "a.txt"), "wb") as f:
        f.write(b"hello")
    os.stat(os.path.join(m.mountpoint, "gone"))
    s3_client.delete_object(Bucket=bucket, Key="gone")
    with pytest.raises(OSError):  # GetObject: NoSuchKey
        open(os.path.join(m.mountpoint, "gone"), "rb").read()
    scraped = scrape(port)
    r = run_cli(["stats", m.mountpoint, "--json"], env=s3.env(), timeout=30)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["bucket"] == bucket and reply["mountpoint"] == m.mountpoint
    snap = reply["metrics"]
    for name in ("objectfs_s3_requests_total", "objectfs_s3_errors_total",
                 "objectfs_fuse_requests_total", "objectfs_s3_sent_bytes_total"):
        assert snap[name]["samples"], name
        for s in snap[name]["samples"]:
            assert s["value"] == value(scraped, name, **s["labels"]), (name, s)
    r = run_cli(["stats", m.mountpoint], env=s3.env(), timeout=30)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    puts = value(scraped, "objectfs_s3_requests_total", op="PutObject")
    assert re.search(rf"^\s+PutObject\s+{puts:.0f}\s+0\s", out, re.M), out
    assert re.search(r"^\s+GetObject\s+NoSuchKey\s+[1-9]\d*$", out, re.M), out  # errors by code
    assert re.search(r"^\s+create\s+1\s+0$", out, re.M), out
    assert not re.search(r"^\s+symlink\s", out, re.M), out  # unused operations are left out
    assert "Data: 0 B received, 5 B sent" in out
    assert "Pending uploads: 0 files" in out
    # not a mount: one line, exit 1
    r = run_cli(["stats", "/tmp"], env=s3.env(), timeout=30)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not on an ObjectFS" in r.stderr


def test_metrics_port_in_use_fails_the_mount(s3, bucket, workdir):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    mp = workdir / "mnt-busy"
    mp.mkdir()
    try:
        r = run_cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", s3.endpoint, "-f",
                     "-o", f"metrics_port={busy.getsockname()[1]}"], env=s3.env(), timeout=60)
    finally:
        busy.close()
    assert r.returncode == 1
    assert "cannot serve metrics on 127.0.0.1" in r.stderr and "Traceback" not in r.stderr


# -- the log ---------------------------------------------------------------------------

def test_failed_s3_call_is_one_log_line_with_op_key_and_code(auth_s3, mount):
    bucket = auth_s3.new_bucket()
    client = auth_s3.client()
    client.put_object(Bucket=bucket, Key="secret/plans", Body=b"classified")
    client.put_object(Bucket=bucket, Key="locked/", Body=b"")
    port = free_port()
    m = mount(bucket, server=auth_s3, options=["log_level=info", f"metrics_port={port}"])
    before = scrape(port)
    try:
        open(os.path.join(m.mountpoint, "secret", "plans"), "rb").close()
    except PermissionError:
        pass
    else:  # as with moto 5.2.6, which let the HEAD through (see pyproject.toml)
        pytest.fail("opening a file we may not read succeeded; the daemon's log:\n"
                    + m.log())
    with pytest.raises(PermissionError):
        with open(os.path.join(m.mountpoint, "locked", "f.txt"), "wb") as f:
            f.write(b"no")
    after = scrape(port)
    log = m.log()
    errors = {(dict(k[1])["op"], dict(k[1])["code"]): v - before.get(k, 0)
              for k, v in after.items() if k[0] == "objectfs_s3_errors_total"}
    # a missing key (404: the lookup's HEAD of a name that is a directory)
    # is an answer more than a failure: its line is at debug level, and this
    # mount logs info
    errors = {k: v for k, v in errors.items() if v and k[1] not in ("404", "NoSuchKey")}
    # every failed call (after retries) is exactly one line naming op, key and code
    logged = collections.Counter()
    keys = set()
    for line in log.splitlines():
        found = re.search(r"S3 (\w+) '([^']*)' failed: (\S+)", line)
        if found:
            logged[(found.group(1), found.group(3))] += 1
            keys.add((found.group(1), found.group(2), found.group(3)))
    assert logged == errors, (logged, errors, log)
    assert ("HeadObject", "secret/plans", "403") in keys, log
    assert ("PutObject", "locked/f.txt", "AccessDenied") in keys, log


def test_debug_log_never_shows_secrets(mount, bucket, s3, s3_client):
    marker = uuid.uuid4().hex
    secret = f"SECRET{marker}"
    token = f"TOKEN{marker}"
    env = {"AWS_ACCESS_KEY_ID": "AKIAOBJECTFSTEST", "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_SESSION_TOKEN": token}
    # bigger than small_file_prefetch: the stat is a HEAD, the read a GET
    s3_client.put_object(Bucket=bucket, Key="gone", Body=b"soon deleted" * 2000)
    m = mount(bucket, env=env, options=["log_level=debug", "metadata_ttl=60"])
    mp = m.mountpoint
    with open(os.path.join(mp, "a.txt"), "wb") as f:
        f.write(b"data" * 1000)
    assert open(os.path.join(mp, "a.txt"), "rb").read() == b"data" * 1000
    os.rename(os.path.join(mp, "a.txt"), os.path.join(mp, "b.txt"))
    os.mkdir(os.path.join(mp, "d"))
    assert not os.path.exists(os.path.join(mp, "missing"))
    os.stat(os.path.join(mp, "gone"))
    s3_client.delete_object(Bucket=bucket, Key="gone")
    with pytest.raises(OSError):  # the GET fails: NoSuchKey
        open(os.path.join(mp, "gone"), "rb").read()
    m.unmount()
    log = m.log()
    assert "S3 GetObject 'gone' failed: NoSuchKey" in log  # the debug log was written
    assert "DEBUG" in log
    for forbidden in (secret, token, "X-Amz-Signature=", "X-Amz-Credential=AKIA",
                      "X-Amz-Security-Token=" + token[:4], "AWS4-HMAC-SHA256 Credential"):
        assert forbidden not in log, forbidden


def test_botocore_debug_output_is_redacted(s3, bucket, tmp_path):
    """Even if botocore's DEBUG logging reaches our handler, the redactor
    removes signatures, credentials and tokens from it."""
    marker = uuid.uuid4().hex
    log_file = tmp_path / "debug.log"
    script = textwrap.dedent(f"""
        import logging
        from objectfs import logs
        from objectfs.config import build
        from objectfs.store.s3 import S3Settings, make_client
        cfg = build({bucket!r}, "", "/nonexistent", o_options=["log_level=debug",
                    "log_file={log_file}"])
        logs.setup(cfg, daemon=False)
        logging.getLogger("botocore").setLevel(logging.DEBUG)  # what we refuse by default
        client = make_client(S3Settings(bucket={bucket!r}, endpoint_url={s3.endpoint!r}))
        client.put_object(Bucket={bucket!r}, Key="k", Body=b"x")
        try:
            client.head_object(Bucket={bucket!r}, Key="missing")
        except Exception:
            pass
        url = client.generate_presigned_url("get_object", Params={{"Bucket": {bucket!r},
                                            "Key": "k"}})
        logging.getLogger("objectfs.test").debug("presigned: %s", url)
    """)
    env = s3.env()
    env.update(AWS_ACCESS_KEY_ID="AKIAOBJECTFSTEST", AWS_SECRET_ACCESS_KEY=f"SECRET{marker}",
               AWS_SESSION_TOKEN=f"TOKEN{marker}", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    log = log_file.read_text()
    assert "Sending http request" in log and "presigned:" in log  # botocore did log
    assert "[REDACTED]" in log
    for forbidden in (f"SECRET{marker}", f"TOKEN{marker}", "Signature=0", "Signature=1",
                      "X-Amz-Credential=AKIA", "Credential=AKIA"):
        assert forbidden not in log, forbidden
    assert not re.search(r"Signature=[0-9a-f]{16}", log)


def test_daemon_logs_to_syslog_dev_log(s3, bucket, workdir):
    """A daemon without log_file logs to /dev/log, as syslog and journald read it.

    This machine may have no /dev/log, and the real one must not be touched: in a
    private mount namespace /dev is a tmpfs holding the few devices needed (bind
    mounts of the real ones) and, as log, a datagram socket of the test's."""
    import socket

    from tests.conftest import fuse_usable
    from tests.integration.test_cli import objectfs_processes
    from tests.integration.test_user_mounts import Namespace

    if fuse_usable():
        pytest.skip(fuse_usable())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(workdir / "log.sock"))
    listener.settimeout(60)
    mp = workdir / "mnt"
    mp.mkdir()
    ns = Namespace(workdir)
    try:
        dev = workdir / "dev"
        dev.mkdir()
        ns.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(dev), check=True)
        for name in ("null", "zero", "full", "random", "urandom", "tty", "fuse"):
            ns.run("touch", str(dev / name), check=True)
            ns.bind(Path("/dev") / name, str(dev / name))
        ns.run("touch", str(dev / "log"), check=True)
        ns.bind(workdir / "log.sock", str(dev / "log"))
        ns.run("mount", "--rbind", str(dev), "/dev", check=True)
        env = s3.env()
        env["PYTHONPATH"] = str(REPO)
        r = ns.run(sys.executable, "-m", "objectfs", "mount", f"s3://{bucket}", str(mp),
                   "--endpoint-url", s3.endpoint, "-o",
                   f"log_level=info,cache_dir={workdir / 'cache'}", env=env)
        assert r.returncode == 0, r.stderr
        assert "no syslog" not in r.stderr, r.stderr
        lines = []
        while not any("mounted s3://" in ln for ln in lines):
            lines.append(listener.recv(65536).decode(errors="replace"))
        r = ns.run(sys.executable, "-m", "objectfs", "umount", str(mp), env=env)
        assert r.returncode == 0, r.stderr
        while not any("unmounted" in ln for ln in lines):
            lines.append(listener.recv(65536).decode(errors="replace"))
    finally:
        for pid in objectfs_processes(mp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        ns.close()
        listener.close()
    # <PRI>ident[pid]: text, facility daemon (3), INFO (6): 3 * 8 + 6 = 30
    mounted = next(ln for ln in lines if "mounted s3://" in ln)
    assert re.match(rf"<30>objectfs\[\d+\]: INFO objectfs: mounted s3://{bucket}/ on {mp}",
                    mounted), mounted
    assert all(ln.startswith("<") and "objectfs[" in ln for ln in lines), lines
