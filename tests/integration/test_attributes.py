"""POSIX attributes in S3 user metadata, through a real FUSE mount of ObjectFS.

What ObjectFS writes must be byte for byte what s3fs-fuse writes
(interop.md 1.1, 6.1); what it reads must include every variant of
interop.md 6.2 (s3fs, rclone -M, s3sync, GCS, geesefs).  Objects are
created and inspected with boto3 directly, as another S3 client would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

NS = 1_000_000_000
TIME_RE = re.compile(r"^\d+(\.\d{9})?$")          # s3fs str(timespec)


# -- helpers ------------------------------------------------------------------------

def put(s3_client, bucket: str, key: str, body: bytes = b"", **kw) -> None:
    s3_client.put_object(Bucket=bucket, Key=key, Body=body, **kw)


def head(s3_client, bucket: str, key: str) -> dict:
    return s3_client.head_object(Bucket=bucket, Key=key)


def meta(s3_client, bucket: str, key: str) -> dict:
    return head(s3_client, bucket, key)["Metadata"]


def body(s3_client, bucket: str, key: str) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def last_modified_s(s3_client, bucket: str, key: str) -> int:
    return int(head(s3_client, bucket, key)["LastModified"].timestamp())


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def check_times(md: dict, lo: float, hi: float) -> None:
    for k in ("mtime", "ctime", "atime"):
        assert k in md, f"{k} missing from {md}"
        assert TIME_RE.match(md[k]), f"{k}={md[k]!r} is not s3fs's %d or %d.%09d"
        assert lo - 2 <= float(md[k]) <= hi + 2, (k, md[k], lo, hi)


def check_ids(md: dict, uid: int = 0, gid: int = 0) -> None:
    assert md.get("uid") == str(uid), md
    assert md.get("gid") == str(gid), md


def rfc3339_ns(text: str) -> int:
    base, frac = text.rstrip("Z").split(".")
    d = dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp()) * NS + int(frac.ljust(9, "0")[:9])


# -- what ObjectFS writes --------------------------------------------------------------------

def test_objectfs_writes_s3fs_format(mount, bucket, s3_client):
    m = mount(bucket)
    mp = m.mountpoint
    t0 = time.time()
    with umask(0o022):
        Path(mp, "hello.txt").write_bytes(b"hello")
        Path(mp, "blob").write_bytes(b"\0\1")
        os.mkdir(os.path.join(mp, "d"), 0o755)
        os.mkdir(os.path.join(mp, "private"), 0o700)
        os.symlink("../target with space", os.path.join(mp, "ln"))
    t1 = time.time()

    f = head(s3_client, bucket, "hello.txt")
    assert f["Metadata"]["mode"] == "33188"                # S_IFREG | 0644
    assert str(stat.S_IFREG | 0o644) == "33188"
    check_ids(f["Metadata"])
    check_times(f["Metadata"], t0, t1)
    assert f["ContentType"] == "text/plain"
    assert head(s3_client, bucket, "blob")["ContentType"] == "application/octet-stream"

    d = head(s3_client, bucket, "d/")
    assert d["ContentLength"] == 0
    assert d["ContentType"] == "application/x-directory"
    assert d["Metadata"]["mode"] == "16877"                 # S_IFDIR | 0755
    check_ids(d["Metadata"])
    check_times(d["Metadata"], t0, t1)
    assert meta(s3_client, bucket, "private/")["mode"] == str(stat.S_IFDIR | 0o700)

    ln = head(s3_client, bucket, "ln")
    assert ln["Metadata"]["mode"] == "41471"                # S_IFLNK | 0777
    assert body(s3_client, bucket, "ln") == b"../target with space"
    check_ids(ln["Metadata"])
    check_times(ln["Metadata"], t0, t1)
    # nothing else was written (no directory object for "ln", no "d" without slash)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"hello.txt", "blob", "d/", "private/", "ln"}


def test_utime_chmod_chown_stored_exactly(mount, bucket, s3_client):
    m = mount(bucket)
    mp = m.mountpoint
    p = os.path.join(mp, "f")
    d = os.path.join(mp, "dir")
    with umask(0o022):
        Path(p).write_bytes(b"x")
        os.mkdir(d, 0o755)
    os.utime(p, ns=(1_700_000_000 * NS, 1_700_000_000 * NS + 123_456_789))
    md = meta(s3_client, bucket, "f")
    assert md["mtime"] == "1700000000.123456789"
    assert md["atime"] == "1700000000"
    st = os.stat(p)
    assert st.st_mtime_ns == 1_700_000_000 * NS + 123_456_789
    assert st.st_atime_ns == 1_700_000_000 * NS

    before = time.time()
    os.chmod(p, 0o600)
    md = meta(s3_client, bucket, "f")
    assert md["mode"] == "33152"                           # S_IFREG | 0600
    assert float(md["ctime"]) >= before - 2
    assert md["mtime"] == "1700000000.123456789"           # chmod leaves mtime alone
    os.chown(p, 1000, 1001)
    md = meta(s3_client, bucket, "f")
    assert (md["uid"], md["gid"]) == ("1000", "1001")
    assert md["mode"] == "33152"

    os.chmod(d, 0o750)
    assert meta(s3_client, bucket, "dir/")["mode"] == "16872"   # s3fs's own test value
    os.chown(d, 7, 8)
    os.utime(d, ns=(1_600_000_000 * NS, 1_600_000_000 * NS))
    md = meta(s3_client, bucket, "dir/")
    assert (md["uid"], md["gid"], md["mtime"]) == ("7", "8", "1600000000")
    assert head(s3_client, bucket, "dir/")["ContentType"] == "application/x-directory"

    # a fresh mount reads back what was stored
    m.stop()
    m2 = mount(bucket)
    st = os.stat(os.path.join(m2.mountpoint, "f"))
    assert st.st_mode == stat.S_IFREG | 0o600
    assert (st.st_uid, st.st_gid) == (1000, 1001)
    assert st.st_mtime_ns == 1_700_000_000 * NS + 123_456_789
    st = os.stat(os.path.join(m2.mountpoint, "dir"))
    assert st.st_mode == stat.S_IFDIR | 0o750
    assert (st.st_uid, st.st_gid) == (7, 8)
    assert st.st_mtime_ns == 1_600_000_000 * NS


# -- what ObjectFS reads ---------------------------------------------------------------------

RCLONE_ATIME = "2025-03-04T17:34:22.317069787Z"

# key -> (put kwargs, expected: mode, uid, gid, mtime_ns or None)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "rclone_file": ({"Metadata": {"mode": "100644", "mtime": "1700000000.5"}},
                    {"mode": stat.S_IFREG | 0o644, "mtime_ns": 1_700_000_000 * NS + NS // 2}),
    "rclone_file600": ({"Metadata": {"mode": "100600", "mtime": "1700000000.25"}},
                       {"mode": stat.S_IFREG | 0o600, "mtime_ns": 1_700_000_000_250_000_000}),
    "rclone_dir/": ({"Metadata": {"mode": "40755", "mtime": "1700000001"}},
                    {"mode": stat.S_IFDIR | 0o755, "mtime_ns": 1_700_000_001 * NS}),
    "rclone_dir700/": ({"Metadata": {"mode": "40700"}}, {"mode": stat.S_IFDIR | 0o700}),
    "rclone_m": ({"Metadata": {"mode": "100664", "uid": "1000", "gid": "1000",
                               "mtime": "1700000000.123456789", "atime": RCLONE_ATIME,
                               "btime": RCLONE_ATIME}},
                 {"mode": stat.S_IFREG | 0o664, "uid": 1000, "gid": 1000,
                  "mtime_ns": 1_700_000_000_123_456_789, "atime_ns": rfc3339_ns(RCLONE_ATIME)}),
    "s3fs_file": ({"Metadata": {"mode": "33184", "uid": "1000", "gid": "1001",
                                "mtime": "1700000000.000012345", "ctime": "1700000001",
                                "atime": "1700000002.500000000"}},
                  {"mode": stat.S_IFREG | 0o640, "uid": 1000, "gid": 1001,
                   "mtime_ns": 1_700_000_000 * NS + 12_345, "ctime_ns": 1_700_000_001 * NS,
                   "atime_ns": 1_700_000_002 * NS + NS // 2}),
    "s3fs_dir/": ({"ContentType": "application/x-directory",
                   "Metadata": {"mode": "16872", "uid": "5", "gid": "6", "mtime": "1500000000"}},
                  {"mode": stat.S_IFDIR | 0o750, "uid": 5, "gid": 6, "mtime_ns": 1_500_000_000 * NS}),
    # s3fs's mkdir mode has no type bits (interop 1.1): typed by the slash
    "s3fs_mkdir/": ({"ContentType": "application/x-directory", "Metadata": {"mode": "488"}},
                    {"mode": stat.S_IFDIR | 0o750}),
    "s3sync_dec": ({"Metadata": {"permissions": "33216"}}, {"mode": stat.S_IFREG | 0o700}),
    "s3sync_oct": ({"Metadata": {"permissions": "0600"}}, {"mode": stat.S_IFREG | 0o600}),
    "gcs": ({"Metadata": {"goog-reserved-posix-mode": "640", "goog-reserved-posix-uid": "1234",
                          "goog-reserved-posix-gid": "5678",
                          "goog-reserved-file-mtime": "1600000000"}},
            {"mode": stat.S_IFREG | 0o640, "uid": 1234, "gid": 5678,
             "mtime_ns": 1_600_000_000 * NS}),
    "gcs_dir/": ({"Metadata": {"goog-reserved-posix-mode": "700"}}, {"mode": stat.S_IFDIR | 0o700}),
    "ownergroup": ({"Metadata": {"owner": "2001", "group": "2002"}},
                   {"mode": stat.S_IFREG | 0o644, "uid": 2001, "gid": 2002}),
    # mode wins over permissions wins over goog-reserved-posix-mode
    "priority": ({"Metadata": {"mode": "33261", "permissions": "33152",
                               "goog-reserved-posix-mode": "600", "uid": "11", "owner": "12",
                               "goog-reserved-posix-uid": "13", "mtime": "1400000000",
                               "goog-reserved-file-mtime": "1300000000"}},
                 {"mode": stat.S_IFREG | 0o755, "uid": 11, "mtime_ns": 1_400_000_000 * NS}),
    # base 0 like s3fs: leading 0 is octal, 0x is hex
    "base0": ({"Metadata": {"mode": "0100600", "uid": "0x3e8", "gid": "010"}},
              {"mode": stat.S_IFREG | 0o600, "uid": 1000, "gid": 8}),
    # RFC 3339 mtime, read defensively
    "rfc_mtime": ({"Metadata": {"mtime": "2023-11-14T22:13:20Z"}},
                  {"mode": stat.S_IFREG | 0o644, "mtime_ns": 1_700_000_000 * NS}),
    # unreadable values fall back to the defaults, never crash
    "garbage": ({"Metadata": {"mode": "rwxr-xr-x", "uid": "-1", "gid": "root",
                              "mtime": "yesterday", "atime": "", "ctime": "1e9"}},
                {"mode": stat.S_IFREG | 0o644, "uid": 0, "gid": 0, "mtime": "last-modified"}),
    "nometa": ({}, {"mode": stat.S_IFREG | 0o644, "uid": 0, "gid": 0, "mtime": "last-modified"}),
    "nometa_dir/": ({}, {"mode": stat.S_IFDIR | 0o755, "uid": 0, "gid": 0}),
    "implicit/child": ({}, {}),
}


def _name(key: str) -> str:
    return key.rstrip("/")


@pytest.mark.parametrize("first", ["lookup", "listing"])
def test_reads_every_metadata_variant(mount, bucket, s3_client, first):
    for key, (kw, _) in VARIANTS.items():
        put(s3_client, bucket, key, **kw)
    put(s3_client, bucket, "s3fs_link", b"target/of/link", Metadata={"mode": "41471"})
    m = mount(bucket)
    mp = m.mountpoint
    if first == "listing":
        assert sorted(os.listdir(mp)) == sorted(
            {_name(k).split("/")[0] for k in VARIANTS} | {"s3fs_link"})
    for key, (_, want) in VARIANTS.items():
        if not want:
            continue
        st = os.lstat(os.path.join(mp, _name(key)))
        assert st.st_mode == want["mode"], (key, oct(st.st_mode), oct(want["mode"]))
        assert st.st_uid == want.get("uid", 0), key
        assert st.st_gid == want.get("gid", 0), key
        if want.get("mtime") == "last-modified":
            lm = last_modified_s(s3_client, bucket, key)
            assert int(st.st_mtime) == lm, key
            assert int(st.st_ctime) == lm and int(st.st_atime) == lm, key
        elif "mtime_ns" in want:
            assert st.st_mtime_ns == want["mtime_ns"], key
        for t in ("ctime_ns", "atime_ns"):
            if t in want:
                assert getattr(st, "st_" + t) == want[t], (key, t)
    st = os.lstat(os.path.join(mp, "implicit"))
    assert st.st_mode == stat.S_IFDIR | 0o755
    assert (st.st_uid, st.st_gid) == (0, 0)
    st = os.lstat(os.path.join(mp, "s3fs_link"))
    assert stat.S_ISLNK(st.st_mode)
    assert os.readlink(os.path.join(mp, "s3fs_link")) == "target/of/link"
    # what was read is not rewritten: the objects are unchanged
    for key, (kw, _) in VARIANTS.items():
        assert meta(s3_client, bucket, key) == kw.get("Metadata", {}), key


def test_geesefs_symlink_header(mount, bucket, s3_client):
    # geesefs: empty body, target in x-amz-meta---symlink-target (6.2.6)
    put(s3_client, bucket, "g_link_mode", Metadata={"mode": "41471",
                                                    "--symlink-target": "dir/target%20x"})
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "g_link_mode")
    assert stat.S_ISLNK(os.lstat(p).st_mode)
    assert os.readlink(p) == "dir/target x"


# -- mount options -----------------------------------------------------------------------------

def _populate_for_overrides(s3_client, bucket):
    put(s3_client, bucket, "stored", b"s", Metadata={"mode": "33184", "uid": "1000",
                                                     "gid": "1000"})
    put(s3_client, bucket, "plain", b"p")
    put(s3_client, bucket, "marker/", ContentType="application/x-directory")
    put(s3_client, bucket, "storeddir/", ContentType="application/x-directory",
        Metadata={"mode": "16832", "uid": "1000", "gid": "1000"})
    put(s3_client, bucket, "implicit/x", b"x")
    put(s3_client, bucket, "link", b"stored", Metadata={"mode": "41471"})
    return {k: meta(s3_client, bucket, k) for k in
            ("stored", "plain", "marker/", "storeddir/", "implicit/x", "link")}


def test_uid_gid_umask_override(mount, bucket, s3_client):
    before = _populate_for_overrides(s3_client, bucket)
    m = mount(bucket, options=["uid=1234", "gid=4321", "umask=027"])
    mp = m.mountpoint
    entries = ["", "stored", "plain", "marker", "storeddir", "implicit", "implicit/x", "link"]
    for e in entries:
        st = os.lstat(os.path.join(mp, e))
        assert (st.st_uid, st.st_gid) == (1234, 4321), e
        if not stat.S_ISLNK(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o750, (e, oct(st.st_mode))
    assert stat.S_ISREG(os.lstat(os.path.join(mp, "stored")).st_mode)
    assert stat.S_ISDIR(os.lstat(os.path.join(mp, "storeddir")).st_mode)
    assert stat.S_ISLNK(os.lstat(os.path.join(mp, "link")).st_mode)
    # overrides are views only: nothing changed in S3
    after = {k: meta(s3_client, bucket, k) for k in before}
    assert after == before


def test_file_mode_dir_mode_defaults(mount, bucket, s3_client):
    before = _populate_for_overrides(s3_client, bucket)
    m = mount(bucket, options=["file_mode=0600", "dir_mode=0700"])
    mp = m.mountpoint
    want = {"": stat.S_IFDIR | 0o700, "plain": stat.S_IFREG | 0o600,
            "marker": stat.S_IFDIR | 0o700, "implicit": stat.S_IFDIR | 0o700,
            "implicit/x": stat.S_IFREG | 0o600,
            # stored modes win over the defaults
            "stored": stat.S_IFREG | 0o640, "storeddir": stat.S_IFDIR | 0o700}
    for e, mode in want.items():
        st = os.lstat(os.path.join(mp, e))
        assert st.st_mode == mode, (e, oct(st.st_mode))
    assert (os.lstat(os.path.join(mp, "stored")).st_uid,
            os.lstat(os.path.join(mp, "plain")).st_uid) == (1000, 0)
    assert os.listdir(os.path.join(mp, "implicit")) == ["x"]
    assert {k: meta(s3_client, bucket, k) for k in before} == before


# -- metadata changes keep what other tools stored ------------------------------------------------

def test_chmod_chown_utime_keep_foreign_metadata(mount, bucket, s3_client):
    put(s3_client, bucket, "f.dat", b"payload", ContentType="text/x-custom",
        Metadata={"foo": "bar", "mode": "33188"}, CacheControl="max-age=60",
        ContentLanguage="fr", ContentDisposition='attachment; filename="x.dat"')
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "f.dat")

    def check():
        h = head(s3_client, bucket, "f.dat")
        assert h["Metadata"]["foo"] == "bar"
        assert h["ContentType"] == "text/x-custom"
        assert h.get("CacheControl") == "max-age=60"
        assert h.get("ContentLanguage") == "fr"
        assert h.get("ContentDisposition") == 'attachment; filename="x.dat"'
        assert body(s3_client, bucket, "f.dat") == b"payload"
        return h["Metadata"]

    os.chmod(p, 0o600)
    md = check()
    assert md["mode"] == "33152"
    os.chown(p, 1000, 1000)
    md = check()
    assert (md["uid"], md["gid"], md["mode"]) == ("1000", "1000", "33152")
    os.utime(p, (1_700_000_000, 1_700_000_000))
    md = check()
    assert md["mtime"] == "1700000000" and md["mode"] == "33152"
    st = os.stat(p)
    assert st.st_mode == stat.S_IFREG | 0o600 and st.st_uid == 1000


@pytest.mark.parametrize("call", ["fchmod", "fchown", "futimens"])
def test_a_change_through_a_descriptor_past_metadata_ttl_keeps_another_clients(
        mount, bucket, s3_client, call):
    """An fchmod, fchown or futimens reaches the daemon with no lookup before
    it: past metadata_ttl the attributes it stores beside the change are
    asked of S3 first, not the ones this mount saw at the open (which put
    back what another client changed meanwhile: its mode, owner, xattrs)."""
    put(s3_client, bucket, "f", b"payload", Metadata={"mode": "33188"})
    m = mount(bucket, options=["metadata_ttl=1"])
    fd = os.open(os.path.join(m.mountpoint, "f"), os.O_RDONLY)
    try:
        assert os.fstat(fd).st_mode == stat.S_IFREG | 0o644
        # another client: chmod 0700, chown 77, an xattr (a copy onto itself)
        s3_client.copy_object(Bucket=bucket, Key="f", CopySource={"Bucket": bucket, "Key": "f"},
                              MetadataDirective="REPLACE",
                              Metadata={"mode": "33216", "uid": "77", "gid": "77",
                                        "xattr": '{"user.k":"dmFs"}'})
        time.sleep(2.5)
        if call == "fchmod":
            os.fchmod(fd, 0o750)
        elif call == "fchown":
            os.fchown(fd, -1, 1000)
        else:
            os.utime(fd, ns=(1_600_000_000 * NS, 1_600_000_000 * NS))
    finally:
        os.close(fd)
    md = meta(s3_client, bucket, "f")
    assert md.get("xattr") == "%7B%22user.k%22%3A%22dmFs%22%7D", md
    assert md["uid"] == "77"
    assert md["gid"] == ("1000" if call == "fchown" else "77")
    assert md["mode"] == str(stat.S_IFREG | (0o750 if call == "fchmod" else 0o700))
    assert body(s3_client, bucket, "f") == b"payload"


def test_xattrs_another_client_sets_show_through_a_descriptor_past_metadata_ttl(
        mount, bucket, s3_client):
    """flistxattr reaches the daemon with no lookup or getattr before it: past
    metadata_ttl it asks S3, as a stat does (before, a descriptor held open
    listed the xattrs of its open for as long as nothing else looked)."""
    put(s3_client, bucket, "f", b"payload")
    m = mount(bucket, options=["metadata_ttl=1"])
    fd = os.open(os.path.join(m.mountpoint, "f"), os.O_RDONLY)
    try:
        assert os.listxattr(fd) == []
        s3_client.copy_object(Bucket=bucket, Key="f", CopySource={"Bucket": bucket, "Key": "f"},
                              MetadataDirective="REPLACE",
                              Metadata={"xattr": '{"user.k":"dmFs"}'})
        time.sleep(2.5)
        assert os.listxattr(fd) == ["user.k"]
        assert os.getxattr(fd, "user.k") == b"val"
    finally:
        os.close(fd)


def test_only_user_xattrs_show_and_others_stay_stored(mount, bucket, s3_client):
    """Only user.* extended attributes are ours: names of other namespaces
    answer EOPNOTSUPP, as on a Linux filesystem without them, so ``ls -l``
    stops asking after the first file (with ENODATA it asked twice a file).
    Such names s3fs stored stay in the object, unseen, across a change."""
    import errno

    from objectfs import metadata as md

    stored = md.format_xattrs({"user.note": b"mine", "security.selinux": b"label"})
    put(s3_client, bucket, "d/f.dat", b"x", Metadata={"mode": "33188", "xattr": stored})
    for i in range(30):
        put(s3_client, bucket, f"d/g{i:02d}", b"y")
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "d", "f.dat")

    assert os.listxattr(p) == ["user.note"]
    assert os.getxattr(p, "user.note") == b"mine"
    for name in ("security.selinux", "trusted.x", "system.posix_acl_access"):
        with pytest.raises(OSError) as e:
            os.getxattr(p, name)
        assert e.value.errno == errno.EOPNOTSUPP, (name, e.value)
    with pytest.raises(OSError) as e:
        os.removexattr(p, "security.selinux")
    assert e.value.errno == errno.EOPNOTSUPP
    os.setxattr(p, "user.more", b"2")
    kept = md.parse_xattrs(meta(s3_client, bucket, "d/f.dat")["xattr"])
    assert kept == {"user.note": b"mine", "user.more": b"2", "security.selinux": b"label"}

    before = m.metric("objectfs_fuse_requests_total", op="getxattr")
    out = subprocess.run(["ls", "-l", os.path.join(m.mountpoint, "d")], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.count("\n") == 32, out
    asked = m.metric("objectfs_fuse_requests_total", op="getxattr") - before
    assert asked <= 4, f"ls -l of 31 files asked for {asked:.0f} xattrs"


def test_chmod_directory_marker_keeps_foreign_metadata(mount, bucket, s3_client):
    put(s3_client, bucket, "d/", ContentType="application/x-directory",
        Metadata={"foo": "bar"})
    put(s3_client, bucket, "d/child", b"c")
    m = mount(bucket)
    os.chmod(os.path.join(m.mountpoint, "d"), 0o700)
    h = head(s3_client, bucket, "d/")
    assert h["Metadata"]["foo"] == "bar"
    assert h["Metadata"]["mode"] == "16832"
    assert h["ContentType"] == "application/x-directory"
    assert body(s3_client, bucket, "d/child") == b"c"


def test_chmod_implicit_directory_creates_marker(mount, bucket, s3_client):
    put(s3_client, bucket, "imp/child", b"c")
    m = mount(bucket)
    d = os.path.join(m.mountpoint, "imp")
    os.chmod(d, 0o711)
    h = head(s3_client, bucket, "imp/")
    assert h["Metadata"]["mode"] == str(stat.S_IFDIR | 0o711)
    assert h["ContentType"] == "application/x-directory"
    assert h["ContentLength"] == 0
    assert os.stat(d).st_mode == stat.S_IFDIR | 0o711
    assert os.listdir(d) == ["child"]


def test_chmod_legacy_directory_object_becomes_slash_marker(mount, bucket, s3_client):
    # s3fs (NEED_REPLACEDIR_OBJ): chmod replaces "old" by "old/"
    put(s3_client, bucket, "old", ContentType="application/x-directory",
        Metadata={"foo": "bar"})
    put(s3_client, bucket, "old/child", b"c")
    m = mount(bucket)
    d = os.path.join(m.mountpoint, "old")
    os.chmod(d, 0o700)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"old/", "old/child"}
    h = head(s3_client, bucket, "old/")
    assert h["Metadata"]["mode"] == "16832"
    assert h["Metadata"].get("foo") == "bar"
    assert os.stat(d).st_mode == stat.S_IFDIR | 0o700
    assert os.listdir(d) == ["child"]
    assert os.listdir(m.mountpoint) == ["old"]


def test_chmod_rclone_object_stores_decimal_and_reads_back(mount, bucket, s3_client):
    put(s3_client, bucket, "r", b"r", Metadata={"mode": "100644", "atime": RCLONE_ATIME,
                                                "btime": RCLONE_ATIME, "mtime": "1700000000.5",
                                                "md5chksum": "kKxiXpJm7kHgg6vuCW1ajA=="})
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "r")
    assert os.stat(p).st_mode == stat.S_IFREG | 0o644
    os.chmod(p, 0o600)
    md = meta(s3_client, bucket, "r")
    assert md["mode"] == "33152"
    assert md["btime"] == RCLONE_ATIME
    assert md["md5chksum"] == "kKxiXpJm7kHgg6vuCW1ajA=="    # body unchanged: still right
    assert md["mtime"] == "1700000000.5" or md["mtime"] == "1700000000.500000000"
    m.stop()
    m2 = mount(bucket)
    st = os.stat(os.path.join(m2.mountpoint, "r"))
    assert st.st_mode == stat.S_IFREG | 0o600
    assert st.st_mtime_ns == 1_700_000_000 * NS + NS // 2
    assert st.st_atime_ns == rfc3339_ns(RCLONE_ATIME)


def test_content_rewrite_drops_stale_md5_and_keeps_foreign_keys(mount, bucket, s3_client):
    put(s3_client, bucket, "w.bin", b"old body", ContentType="application/x-thing",
        Metadata={"md5chksum": "AAAAAAAAAAAAAAAAAAAAAA==", "foo": "bar", "mode": "33216"})
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "w.bin")
    with open(p, "r+b") as f:
        f.write(b"NEW")
    assert body(s3_client, bucket, "w.bin") == b"NEW body"
    h = head(s3_client, bucket, "w.bin")
    import base64
    import hashlib
    assert h["Metadata"].get("md5chksum") in (
        None, base64.b64encode(hashlib.md5(b"NEW body").digest()).decode())
    assert h["Metadata"]["foo"] == "bar"
    assert h["Metadata"]["mode"] == "33216"
    assert h["ContentType"] == "application/x-thing"


# -- special files -----------------------------------------------------------------------------

def test_special_files_store_full_mode_and_rdev(mount, bucket, s3_client):
    m = mount(bucket)
    mp = m.mountpoint
    chr_dev = os.makedev(1, 3)
    blk_dev = os.makedev(8, 17)
    with umask(0o022):
        os.mkfifo(os.path.join(mp, "fifo"), 0o640)
        os.mknod(os.path.join(mp, "chr"), stat.S_IFCHR | 0o600, chr_dev)
        os.mknod(os.path.join(mp, "blk"), stat.S_IFBLK | 0o644, blk_dev)
        os.mknod(os.path.join(mp, "sock"), stat.S_IFSOCK | 0o755)
    want = {"fifo": (stat.S_IFIFO | 0o640, 0), "chr": (stat.S_IFCHR | 0o600, chr_dev),
            "blk": (stat.S_IFBLK | 0o644, blk_dev), "sock": (stat.S_IFSOCK | 0o755, 0)}
    for name, (mode, rdev) in want.items():
        h = head(s3_client, bucket, name)
        assert h["ContentLength"] == 0, name
        assert h["Metadata"]["mode"] == str(mode), (name, h["Metadata"])
        if rdev:
            assert h["Metadata"]["rdev"] == str(rdev), name
        else:
            assert "rdev" not in h["Metadata"], name
        check_ids(h["Metadata"])
        st = os.lstat(os.path.join(mp, name))
        assert st.st_mode == mode and st.st_rdev == rdev, name
    assert meta(s3_client, bucket, "fifo")["mode"] == "4512"
    assert meta(s3_client, bucket, "chr")["mode"] == "8576"
    m.stop()
    m2 = mount(bucket)
    for name, (mode, rdev) in want.items():
        st = os.lstat(os.path.join(m2.mountpoint, name))
        assert st.st_mode == mode, (name, oct(st.st_mode))
        assert st.st_rdev == rdev, name
    types = {e.name: e.is_file() for e in os.scandir(m2.mountpoint)}
    assert types == {n: False for n in want}


# -- attributes set while a file is open, and across renames and remounts ------------------------

def test_cp_p_pattern_attributes_set_on_open_file_survive_close(mount, bucket, s3_client):
    # cp -p / tar x: write, then fchmod/futimens/fchown on the open fd, then close
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "copied")
    with umask(0o022):
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"data" * 1000)
        os.fchmod(fd, 0o640)
        os.fchown(fd, 1000, 1000)
        os.utime(fd, ns=(1_600_000_000 * NS, 1_600_000_000 * NS + 1))
    finally:
        os.close(fd)
    md = meta(s3_client, bucket, "copied")
    assert md["mode"] == str(stat.S_IFREG | 0o640)
    assert (md["uid"], md["gid"]) == ("1000", "1000")
    assert md["mtime"] == "1600000000.000000001"
    st = os.stat(p)
    assert st.st_mtime_ns == 1_600_000_000 * NS + 1
    assert st.st_mode == stat.S_IFREG | 0o640


def test_rsync_pattern_utime_after_close_then_rename(mount, bucket, s3_client):
    m = mount(bucket)
    tmp = os.path.join(m.mountpoint, ".target.XXXXXX")
    final = os.path.join(m.mountpoint, "target.txt")
    Path(tmp).write_bytes(b"synced")
    os.utime(tmp, ns=(1_500_000_000 * NS, 1_500_000_000 * NS))
    os.chmod(tmp, 0o604)
    os.rename(tmp, final)
    st = os.stat(final)
    assert st.st_mtime_ns == 1_500_000_000 * NS
    assert st.st_mode == stat.S_IFREG | 0o604
    md = meta(s3_client, bucket, "target.txt")
    assert md["mtime"] == "1500000000"
    assert md["mode"] == str(stat.S_IFREG | 0o604)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"target.txt"}


def test_rename_keeps_foreign_metadata_and_times(mount, bucket, s3_client):
    put(s3_client, bucket, "a.bin", b"A", ContentType="application/x-custom",
        Metadata={"foo": "bar", "mode": "33184", "mtime": "1400000000"})
    m = mount(bucket)
    os.rename(os.path.join(m.mountpoint, "a.bin"), os.path.join(m.mountpoint, "b.bin"))
    h = head(s3_client, bucket, "b.bin")
    assert h["Metadata"]["foo"] == "bar"
    assert h["Metadata"]["mode"] == "33184"
    assert h["Metadata"]["mtime"] == "1400000000"
    assert body(s3_client, bucket, "b.bin") == b"A"
    st = os.stat(os.path.join(m.mountpoint, "b.bin"))
    assert st.st_mtime_ns == 1_400_000_000 * NS and st.st_mode == stat.S_IFREG | 0o640


def test_new_file_times_identical_after_remount(mount, bucket, s3_client):
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "n")
    Path(p).write_bytes(b"n" * 10)
    os.mkdir(os.path.join(m.mountpoint, "nd"))
    os.symlink("n", os.path.join(m.mountpoint, "nl"))
    before = {n: os.lstat(os.path.join(m.mountpoint, n)) for n in ("n", "nd", "nl")}
    m.stop()
    m2 = mount(bucket)
    for n, st in before.items():
        st2 = os.lstat(os.path.join(m2.mountpoint, n))
        assert st2.st_mtime_ns == st.st_mtime_ns, n
        assert st2.st_mode == st.st_mode, n
        assert (st2.st_uid, st2.st_gid) == (st.st_uid, st.st_gid), n
        if not stat.S_ISDIR(st.st_mode):
            assert st2.st_size == st.st_size, n


def test_chown_one_id_and_touch_now(mount, bucket, s3_client):
    put(s3_client, bucket, "o", b"o", Metadata={"uid": "10", "gid": "20", "mode": "33188",
                                                "mtime": "1000000000"})
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "o")
    os.chown(p, -1, 30)
    md = meta(s3_client, bucket, "o")
    assert (md["uid"], md["gid"]) == ("10", "30")
    os.chown(p, 40, -1)
    md = meta(s3_client, bucket, "o")
    assert (md["uid"], md["gid"]) == ("40", "30")
    t0 = time.time()
    os.utime(p)                      # UTIME_NOW
    md = meta(s3_client, bucket, "o")
    assert abs(float(md["mtime"]) - t0) < 5
    assert TIME_RE.match(md["mtime"])


def test_special_bits_negative_times_and_large_ids_round_trip(mount, bucket, s3_client):
    m = mount(bucket)
    mp = m.mountpoint
    p = os.path.join(mp, "f")
    d = os.path.join(mp, "sticky")
    Path(p).write_bytes(b"x")
    os.mkdir(d)
    os.utime(p, ns=(-1_500_000_000, -1_500_000_000))          # 1969-12-31T23:59:58.5
    assert meta(s3_client, bucket, "f")["mtime"] == "-2.500000000"   # s3fs timespec form
    os.chown(p, 4294967294, 4294967294)   # before chmod: chown clears setuid
    os.chmod(p, 0o4755)
    os.chmod(d, 0o1777)
    md = meta(s3_client, bucket, "f")
    assert md["mode"] == str(stat.S_IFREG | 0o4755)
    assert (md["uid"], md["gid"]) == ("4294967294", "4294967294")
    assert meta(s3_client, bucket, "sticky/")["mode"] == str(stat.S_IFDIR | 0o1777)
    m.stop()
    m2 = mount(bucket)
    st = os.stat(os.path.join(m2.mountpoint, "f"))
    assert st.st_mtime_ns == -1_500_000_000
    assert st.st_mode == stat.S_IFREG | 0o4755
    assert (st.st_uid, st.st_gid) == (4294967294, 4294967294)
    assert os.stat(os.path.join(m2.mountpoint, "sticky")).st_mode == stat.S_IFDIR | 0o1777


def test_new_big_file_attrs_set_before_close_reach_s3(mount, bucket, s3_client):
    # cp -p / tar x: write > part_size to a new file, then fchmod + futimens
    # on the open fd, then close: the multipart upload started with the old
    # attributes, and the new ones must still reach S3.
    m = mount(bucket)
    p = os.path.join(m.mountpoint, "big.bin")
    chunk = os.urandom(1 << 20)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        for _ in range(20):                 # 20 MiB > part_size (8M): streaming starts
            os.write(fd, chunk)
        os.fchmod(fd, 0o600)
        os.utime(fd, ns=(1_600_000_000 * NS, 1_600_000_000 * NS))
    finally:
        os.close(fd)
    st = os.stat(p)
    assert st.st_mode == stat.S_IFREG | 0o600 and st.st_mtime_ns == 1_600_000_000 * NS
    md = s3_client.head_object(Bucket=bucket, Key="big.bin")["Metadata"]
    assert md["mode"] == "33152", md
    assert md["mtime"] == "1600000000", md


def test_a_truncate_at_open_by_a_non_root_user_clears_setuid_and_setgid(mount, bucket,
                                                                       s3_client):
    """open(O_TRUNC) (``: > file``) by a user without CAP_FSETID clears
    set-user-ID, and set-group-ID where group execute is set, as on ext4
    (the kernel leaves an atomic O_TRUNC to the filesystem); root keeps
    them.  The mode stored in S3 follows."""
    from posix_suite.fsutil import NOBODY_UID, run_as

    m = mount(bucket, options=["allow_other"])
    os.chmod(os.path.dirname(m.mountpoint), 0o711)   # the test's own dir: nobody passes
    d = os.path.join(m.mountpoint, "d")
    os.mkdir(d)
    os.chmod(d, 0o777)
    cases = {"a": (0o4666, None, 0o666), "b": (0o2676, None, 0o676),
             "c": (0o4766, NOBODY_UID, 0o766), "d": (0o2666, None, 0o2666),
             "root": (0o6777, "root", 0o6777)}
    for name, (mode, owner, _) in cases.items():
        p = os.path.join(d, name)
        Path(p).write_bytes(b"hello\n")
        if owner == NOBODY_UID:
            os.chown(p, NOBODY_UID, NOBODY_UID)
        os.chmod(p, mode)
    for name, (_, owner, _) in cases.items():
        p = os.path.join(d, name)
        if owner == "root":
            os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
        else:
            run_as(lambda p=p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))) \
                .expect_ok(f"truncate {name} as nobody")
    for name, (_, _, want) in cases.items():
        st = os.stat(os.path.join(d, name))
        assert (stat.S_IMODE(st.st_mode), st.st_size) == (want, 0), name
        assert int(meta(s3_client, bucket, f"d/{name}")["mode"]) == stat.S_IFREG | want, name
