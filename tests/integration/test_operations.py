"""Every file and directory operation through a real mount, checked in S3 too."""

from __future__ import annotations

import errno
import os
import stat

import pytest

MiB = 1 << 20


def body(s3_client, bucket, key) -> bytes:
    return s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3_client, bucket, prefix="") -> list[str]:
    out = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def missing(s3_client, bucket, key) -> bool:
    try:
        s3_client.head_object(Bucket=bucket, Key=key)
    except s3_client.exceptions.ClientError as e:
        return e.response["Error"]["Code"] in ("404", "NoSuchKey")
    return False


@pytest.fixture
def mp(mount, bucket):
    return mount(bucket).mountpoint


def p(mp, *parts):
    return os.path.join(mp, *parts)


# -- open flags ------------------------------------------------------------------

def test_create_with_o_creat_rdonly_persists_empty_file(mp, bucket, s3_client):
    fd = os.open(p(mp, "empty"), os.O_CREAT | os.O_RDONLY, 0o640)
    os.close(fd)
    assert body(s3_client, bucket, "empty") == b""
    assert stat.S_IMODE(os.stat(p(mp, "empty")).st_mode) == 0o640


def test_o_excl_refuses_existing(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="there", Body=b"x")
    with pytest.raises(FileExistsError):
        os.open(p(mp, "there"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(p(mp, "new"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.close(fd)
    with pytest.raises(FileExistsError):
        os.open(p(mp, "new"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_o_trunc_empties_existing_object(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="t", Body=b"old content")
    fd = os.open(p(mp, "t"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
    assert body(s3_client, bucket, "t") == b"new"
    fd = os.open(p(mp, "t"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert body(s3_client, bucket, "t") == b""


def test_o_append_appends(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="log", Body=b"line1\n")
    with open(p(mp, "log"), "ab") as f:
        f.write(b"line2\n")
    with open(p(mp, "log"), "ab") as f:
        f.write(b"line3\n")
    assert body(s3_client, bucket, "log") == b"line1\nline2\nline3\n"



def test_append_to_a_file_of_a_few_mib_sends_only_the_new_bytes(mount, bucket, s3_client):
    """The 10 MiB that were there are copied server-side (UploadPartCopy), not
    downloaded and uploaded again; the object in S3 is the old bytes and the new."""
    data = os.urandom(10 * MiB + 5)
    s3_client.put_object(Bucket=bucket, Key="log.bin", Body=data)
    m = mount(bucket)
    tail = os.urandom(MiB + 1)
    with open(p(m.mountpoint, "log.bin"), "ab") as f:
        f.write(tail)
    assert body(s3_client, bucket, "log.bin") == data + tail
    assert m.metric("objectfs_s3_requests_total", op="UploadPartCopy") == 1
    assert m.metric("objectfs_s3_received_bytes_total") < MiB
    assert m.metric("objectfs_s3_sent_bytes_total") < 2 * MiB


def test_an_edit_in_the_middle_of_a_20_mib_file_moves_5_mib_not_20(mount, bucket, s3_client):
    """Its unchanged start and end are copied server-side; only the 5 MiB part
    holding the edit is sent (its unchanged bytes fetched), not the whole
    file fetched and sent back."""
    data = bytearray(os.urandom(20 * MiB))
    s3_client.put_object(Bucket=bucket, Key="disk.img", Body=bytes(data))
    m = mount(bucket)
    patch = os.urandom(4096)
    with open(p(m.mountpoint, "disk.img"), "r+b") as f:
        f.seek(8 * MiB)
        f.write(patch)
    data[8 * MiB:8 * MiB + 4096] = patch
    assert body(s3_client, bucket, "disk.img") == data
    assert m.metric("objectfs_s3_requests_total", op="UploadPartCopy") == 2
    assert m.metric("objectfs_s3_received_bytes_total") < 6 * MiB
    assert m.metric("objectfs_s3_sent_bytes_total") < 6 * MiB

# -- reading and writing -------------------------------------------------------------

def test_ranged_reads_of_large_object(mp, s3_client, bucket):
    data = os.urandom(9 * MiB + 123)
    s3_client.put_object(Bucket=bucket, Key="big", Body=data)
    fd = os.open(p(mp, "big"), os.O_RDONLY)
    try:
        for off, n in [(0, 10), (4 * MiB - 5, 100), (9 * MiB, 1000), (len(data) - 7, 100),
                       (len(data) + 10, 10), (1, 3 * MiB)]:
            assert os.pread(fd, n, off) == data[off:off + n], (off, n)
    finally:
        os.close(fd)
    with open(p(mp, "big"), "rb") as f:
        assert f.read() == data


def test_sequential_write_uses_multipart_and_reads_back(mount, bucket, s3_client):
    mp = mount(bucket, options=["part_size=5M"]).mountpoint
    data = os.urandom(17 * MiB + 5)
    with open(p(mp, "stream"), "wb") as f:
        for i in range(0, len(data), 128 * 1024):
            f.write(data[i:i + 128 * 1024])
    head = s3_client.head_object(Bucket=bucket, Key="stream")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-4"), "expected a 4-part multipart upload"
    assert body(s3_client, bucket, "stream") == data
    with open(p(mp, "stream"), "rb") as f:
        assert f.read() == data
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads") is None


def test_overwrite_middle_of_existing_object(mp, s3_client, bucket):
    data = bytearray(os.urandom(6 * MiB))
    s3_client.put_object(Bucket=bucket, Key="obj", Body=bytes(data))
    with open(p(mp, "obj"), "r+b") as f:
        f.seek(3 * MiB)
        f.write(b"PATCHED")
        f.seek(10)
        assert f.read(5) == bytes(data[10:15])
    data[3 * MiB:3 * MiB + 7] = b"PATCHED"
    assert body(s3_client, bucket, "obj") == bytes(data)


def test_random_writes_with_holes_and_read_back_before_close(mp, s3_client, bucket):
    fd = os.open(p(mp, "holes"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"end", 100000)
        os.pwrite(fd, b"start", 0)
        os.pwrite(fd, b"mid", 5000)
        assert os.fstat(fd).st_size == 100003
        assert os.pread(fd, 10, 4998) == b"\0\0mid\0\0\0\0\0"
    finally:
        os.close(fd)
    expect = bytearray(100003)
    expect[0:5] = b"start"
    expect[5000:5003] = b"mid"
    expect[100000:] = b"end"
    assert body(s3_client, bucket, "holes") == bytes(expect)


def test_read_back_while_streaming(mount, bucket, s3_client):
    mp = mount(bucket, options=["part_size=5M"]).mountpoint
    data = os.urandom(12 * MiB)
    with open(p(mp, "rw"), "w+b") as f:
        f.write(data)
        f.flush()
        f.seek(1 * MiB)
        assert f.read(1000) == data[MiB:MiB + 1000]
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    assert body(s3_client, bucket, "rw") == data + b"tail"


# -- truncate ----------------------------------------------------------------------

def test_truncate_and_ftruncate_up_and_down(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="tr", Body=b"0123456789")
    os.truncate(p(mp, "tr"), 4)
    assert body(s3_client, bucket, "tr") == b"0123"
    os.truncate(p(mp, "tr"), 8)
    assert body(s3_client, bucket, "tr") == b"0123\0\0\0\0"
    fd = os.open(p(mp, "tr"), os.O_RDWR)
    try:
        os.ftruncate(fd, 2)
        assert os.fstat(fd).st_size == 2
        assert os.stat(p(mp, "tr")).st_size == 2
        os.ftruncate(fd, 5)
        assert os.fstat(fd).st_size == 5
        assert os.pread(fd, 10, 0) == b"01\0\0\0"
    finally:
        os.close(fd)
    assert body(s3_client, bucket, "tr") == b"01\0\0\0"


# -- unlink --------------------------------------------------------------------------

def test_unlink_while_open_keeps_handle_working(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="victim", Body=b"still here")
    fd = os.open(p(mp, "victim"), os.O_RDWR)
    try:
        os.unlink(p(mp, "victim"))
        assert not os.path.exists(p(mp, "victim"))
        assert missing(s3_client, bucket, "victim")
        assert os.pread(fd, 100, 0) == b"still here"
        assert os.fstat(fd).st_nlink == 0
        os.pwrite(fd, b"STILL", 0)
        assert os.pread(fd, 100, 0) == b"STILL here"
    finally:
        os.close(fd)
    assert missing(s3_client, bucket, "victim"), "an unlinked file must not come back"
    assert "victim" not in os.listdir(mp)


def test_unlink_removes_object(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="gone", Body=b"x")
    os.unlink(p(mp, "gone"))
    assert missing(s3_client, bucket, "gone")
    with pytest.raises(FileNotFoundError):
        os.stat(p(mp, "gone"))


# -- directories -----------------------------------------------------------------------

def test_mkdir_writes_marker_and_empty_dir_persists(mount, bucket, s3_client):
    m = mount(bucket)
    os.mkdir(p(m.mountpoint, "empty"), 0o750)
    head = s3_client.head_object(Bucket=bucket, Key="empty/")
    assert head["ContentType"] == "application/x-directory"
    assert int(head["Metadata"]["mode"]) == stat.S_IFDIR | 0o750
    m.stop()
    m2 = mount(bucket)
    st = os.stat(p(m2.mountpoint, "empty"))
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert os.listdir(p(m2.mountpoint, "empty")) == []


def test_mkdir_existing_and_rmdir_errors(mp, s3_client, bucket):
    os.mkdir(p(mp, "d"))
    with pytest.raises(FileExistsError):
        os.mkdir(p(mp, "d"))
    with open(p(mp, "d", "f"), "w") as f:
        f.write("x")
    with pytest.raises(OSError) as e:
        os.rmdir(p(mp, "d"))
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        os.rmdir(p(mp, "d", "f"))
    with pytest.raises(FileNotFoundError):
        os.rmdir(p(mp, "nope"))
    os.unlink(p(mp, "d", "f"))
    os.rmdir(p(mp, "d"))
    assert keys(s3_client, bucket) == []


def test_rmdir_sees_remote_children(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="implicit/child", Body=b"x")
    with pytest.raises(OSError) as e:
        os.rmdir(p(mp, "implicit"))
    assert e.value.errno == errno.ENOTEMPTY


# -- rename --------------------------------------------------------------------------

def test_rename_file_keeps_inode_content_and_metadata(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="a.txt", Body=b"content", ContentType="text/x-a",
                         Metadata={"foo": "bar", "mode": str(stat.S_IFREG | 0o600)})
    ino = os.stat(p(mp, "a.txt")).st_ino
    os.rename(p(mp, "a.txt"), p(mp, "b.txt"))
    assert os.stat(p(mp, "b.txt")).st_ino == ino
    assert missing(s3_client, bucket, "a.txt")
    head = s3_client.head_object(Bucket=bucket, Key="b.txt")
    assert head["Metadata"]["foo"] == "bar"
    assert int(head["Metadata"]["mode"]) == stat.S_IFREG | 0o600
    assert body(s3_client, bucket, "b.txt") == b"content"


def test_rename_over_existing_file_replaces_it(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="src", Body=b"new")
    s3_client.put_object(Bucket=bucket, Key="dst", Body=b"old")
    os.rename(p(mp, "src"), p(mp, "dst"))
    assert keys(s3_client, bucket) == ["dst"]
    assert body(s3_client, bucket, "dst") == b"new"
    with open(p(mp, "dst"), "rb") as f:
        assert f.read() == b"new"


def test_rename_directory_tree(mp, s3_client, bucket):
    os.makedirs(p(mp, "top", "sub", "deeper"))
    for rel in ["top/f1", "top/sub/f2", "top/sub/deeper/f3"]:
        with open(p(mp, rel), "w") as f:
            f.write(rel)
    s3_client.put_object(Bucket=bucket, Key="top/remote-only", Body=b"r")
    ino = os.stat(p(mp, "top", "sub")).st_ino
    os.rename(p(mp, "top"), p(mp, "moved"))
    assert not os.path.exists(p(mp, "top"))
    assert os.stat(p(mp, "moved", "sub")).st_ino == ino
    assert keys(s3_client, bucket) == sorted([
        "moved/", "moved/f1", "moved/remote-only", "moved/sub/", "moved/sub/deeper/",
        "moved/sub/deeper/f3", "moved/sub/f2"])
    with open(p(mp, "moved", "sub", "deeper", "f3")) as f:
        assert f.read() == "top/sub/deeper/f3"


def test_rename_errors(mp):
    os.makedirs(p(mp, "d1", "inner"))
    os.mkdir(p(mp, "d2"))
    os.mkdir(p(mp, "full"))
    with open(p(mp, "full", "x"), "w"):
        pass
    with open(p(mp, "file"), "w"):
        pass
    with pytest.raises(OSError) as e:
        os.rename(p(mp, "d1"), p(mp, "d1", "inner", "x"))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.rename(p(mp, "d2"), p(mp, "full"))
    assert e.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    with pytest.raises(IsADirectoryError):
        os.rename(p(mp, "file"), p(mp, "d2"))
    with pytest.raises(NotADirectoryError):
        os.rename(p(mp, "d2"), p(mp, "file"))
    os.rename(p(mp, "d1"), p(mp, "d2"))  # over an empty directory
    assert os.listdir(p(mp, "d2")) == ["inner"]


def test_rename_open_dirty_file(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="orig", Body=b"0123456789")
    with open(p(mp, "orig"), "r+b") as f:
        f.seek(2)
        f.write(b"AB")
        os.rename(p(mp, "orig"), p(mp, "renamed"))
        f.seek(8)
        f.write(b"YZ")
    assert keys(s3_client, bucket) == ["renamed"]
    assert body(s3_client, bucket, "renamed") == b"01AB4567YZ"


# -- symlinks, attributes, misc --------------------------------------------------------

def test_symlink_in_s3fs_form(mp, s3_client, bucket):
    os.symlink("../some/target", p(mp, "lnk"))
    assert os.readlink(p(mp, "lnk")) == "../some/target"
    assert stat.S_ISLNK(os.lstat(p(mp, "lnk")).st_mode)
    head = s3_client.head_object(Bucket=bucket, Key="lnk")
    assert head["Metadata"]["mode"] == str(stat.S_IFLNK | 0o777)
    assert body(s3_client, bucket, "lnk") == b"../some/target"


def test_chmod_chown_utime_persist_and_keep_other_metadata(mp, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="m", Body=b"data", ContentType="text/x-custom",
                         Metadata={"foo": "bar"}, CacheControl="max-age=60")
    os.chmod(p(mp, "m"), 0o604)
    os.chown(p(mp, "m"), 1234, 5678)
    os.utime(p(mp, "m"), ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    head = s3_client.head_object(Bucket=bucket, Key="m")
    meta = head["Metadata"]
    assert meta["foo"] == "bar"
    assert head["ContentType"] == "text/x-custom"
    assert head.get("CacheControl") == "max-age=60"
    assert int(meta["mode"]) == stat.S_IFREG | 0o604
    assert (meta["uid"], meta["gid"]) == ("1234", "5678")
    assert meta["mtime"] == "1500000000.987654321"
    assert meta["atime"] == "1600000000.123456789"
    assert body(s3_client, bucket, "m") == b"data"
    st = os.stat(p(mp, "m"))
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1234, 5678, 1_500_000_000_987_654_321)


def test_statfs_reports_large_numbers(mp):
    st = os.statvfs(mp)
    assert st.f_bsize > 0 and st.f_blocks * st.f_frsize >= 1 << 40
    assert st.f_bavail > 0 and st.f_files > 0
    assert st.f_namemax == 255


def test_fsync_means_data_in_s3(mp, s3_client, bucket):
    fd = os.open(p(mp, "durable"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"first")
        os.fsync(fd)
        assert body(s3_client, bucket, "durable") == b"first"
        os.write(fd, b" second")
        os.fdatasync(fd)
        assert body(s3_client, bucket, "durable") == b"first second"
    finally:
        os.close(fd)


def test_hard_link_not_supported(mp):
    with open(p(mp, "f"), "w"):
        pass
    with pytest.raises(OSError) as e:
        os.link(p(mp, "f"), p(mp, "g"))
    assert e.value.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM)


def test_name_too_long(mp):
    with pytest.raises(OSError) as e:
        open(p(mp, "x" * 256), "w")
    assert e.value.errno == errno.ENAMETOOLONG
    with open(p(mp, "y" * 255), "w") as f:
        f.write("ok")
    assert "y" * 255 in os.listdir(mp)


def test_remount_shows_everything(mount, bucket):
    m = mount(bucket)
    os.makedirs(p(m.mountpoint, "x", "y"))
    with open(p(m.mountpoint, "x", "y", "f"), "wb") as f:
        f.write(b"persisted")
    os.symlink("y/f", p(m.mountpoint, "x", "l"))
    os.chmod(p(m.mountpoint, "x", "y", "f"), 0o600)
    m.stop()
    m2 = mount(bucket)
    with open(p(m2.mountpoint, "x", "l"), "rb") as f:
        assert f.read() == b"persisted"
    assert stat.S_IMODE(os.stat(p(m2.mountpoint, "x", "y", "f")).st_mode) == 0o600


def test_prefix_only_directory_survives_losing_its_last_entry(mount, bucket, s3_client):
    s3_client.put_object(Bucket=bucket, Key="implicit/only", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="implicit2/only", Body=b"y")
    m = mount(bucket)
    os.unlink(p(m.mountpoint, "implicit", "only"))
    os.rename(p(m.mountpoint, "implicit2", "only"), p(m.mountpoint, "moved"))
    assert "implicit/" in keys(s3_client, bucket) and "implicit2/" in keys(s3_client, bucket)
    m.stop()
    m2 = mount(bucket)
    assert sorted(os.listdir(m2.mountpoint)) == ["implicit", "implicit2", "moved"]
    assert os.listdir(p(m2.mountpoint, "implicit")) == []
