"""Special files: FIFOs, character and block devices, unix sockets."""

import os
import socket
import stat

import pytest


def test_mkfifo_type(workdir):
    p = os.path.join(workdir, "fifo")
    os.mkfifo(p, 0o644)
    st = os.lstat(p)
    assert stat.S_ISFIFO(st.st_mode), f"mkfifo made mode {st.st_mode:o}"
    assert stat.S_IMODE(st.st_mode) == 0o644, f"FIFO permissions {stat.S_IMODE(st.st_mode):o}"
    assert os.listdir(workdir) == ["fifo"]


def test_fifo_passes_data(workdir):
    p = os.path.join(workdir, "fifo")
    os.mkfifo(p)
    # O_RDWR on a FIFO never blocks on Linux; O_NONBLOCK keeps a broken one from hanging.
    fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)
    try:
        assert os.write(fd, b"through the pipe") == 16
        assert os.read(fd, 100) == b"through the pipe", "data written to a FIFO must be readable"
    finally:
        os.close(fd)
    assert os.stat(p).st_size == 0, "a FIFO has no stored content"


def test_mknod_fifo(workdir):
    p = os.path.join(workdir, "fifo")
    os.mknod(p, stat.S_IFIFO | 0o600)
    assert stat.S_ISFIFO(os.lstat(p).st_mode), "mknod S_IFIFO type"


def test_mknod_regular(workdir):
    p = os.path.join(workdir, "reg")
    os.mknod(p, stat.S_IFREG | 0o600)
    st = os.lstat(p)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0, f"mknod S_IFREG gave mode {st.st_mode:o}"


@pytest.mark.needs_root
def test_mknod_char_device_type(workdir):
    p = os.path.join(workdir, "chr")
    os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    st = os.lstat(p)
    assert stat.S_ISCHR(st.st_mode), f"mknod S_IFCHR made mode {st.st_mode:o}"


@pytest.mark.needs_root
def test_mknod_char_device_rdev(workdir):
    p = os.path.join(workdir, "chr")
    os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    st = os.lstat(p)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3), \
        f"device number of a char device: {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


@pytest.mark.needs_root
def test_mknod_block_device_type(workdir):
    p = os.path.join(workdir, "blk")
    os.mknod(p, stat.S_IFBLK | 0o600, os.makedev(7, 42))
    st = os.lstat(p)
    assert stat.S_ISBLK(st.st_mode), f"mknod S_IFBLK made mode {st.st_mode:o}"


@pytest.mark.needs_root
def test_mknod_block_device_rdev(workdir):
    p = os.path.join(workdir, "blk")
    os.mknod(p, stat.S_IFBLK | 0o600, os.makedev(7, 42))
    st = os.lstat(p)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 42), \
        f"device number of a block device: {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _bind_path(workdir: str, name: str) -> tuple[str, int]:
    """A socket path short enough for sun_path, reaching into workdir via /proc/self/fd."""
    dfd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{dfd}/{name}", dfd


def test_unix_socket_type(workdir):
    path, dfd = _bind_path(workdir, "sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
        st = os.lstat(os.path.join(workdir, "sock"))
        assert stat.S_ISSOCK(st.st_mode), f"bound unix socket has mode {st.st_mode:o}"
    finally:
        s.close()
        os.close(dfd)


def test_unix_socket_connects(workdir):
    path, dfd = _bind_path(workdir, "sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(path)
        srv.listen(1)
        srv.settimeout(10)
        cli.settimeout(10)
        cli.connect(path)
        conn, _ = srv.accept()
        with conn:
            cli.sendall(b"ping")
            assert conn.recv(10) == b"ping", "data through a socket bound in the mount"
    finally:
        cli.close()
        srv.close()
        os.close(dfd)


def test_special_files_listed_with_types(workdir):
    os.mkfifo(os.path.join(workdir, "fifo"))
    path, dfd = _bind_path(workdir, "sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
    finally:
        s.close()
        os.close(dfd)
    types = {}
    with os.scandir(workdir) as it:
        for e in it:
            types[e.name] = stat.S_IFMT(e.stat(follow_symlinks=False).st_mode)
    assert types == {"fifo": stat.S_IFIFO, "sock": stat.S_IFSOCK}, \
        f"listing of special files gave types {types}"


def test_unlink_special_files(workdir):
    os.mkfifo(os.path.join(workdir, "fifo"))
    os.unlink(os.path.join(workdir, "fifo"))
    assert os.listdir(workdir) == [], "a FIFO can be unlinked"
