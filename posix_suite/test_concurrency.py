"""Concurrent use from several threads of one process."""

import errno
import os
import threading

from posix_suite.fsutil import data, diff_at, pwrite_all, read_file, run_threads

THREADS = 4
WAIT = 120  # seconds for all threads of one test; a hung filesystem fails the test


def _run_all(fn, args):
    return run_threads(fn, args, timeout=WAIT)


def test_writers_to_different_files(workdir):
    size = 1 << 20
    chunk = 32 * 1024 + 1

    def writer(i):
        content = data(size, seed=100 + i)
        fd = os.open(os.path.join(workdir, f"f{i}"), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for off in range(0, size, chunk):
                os.write(fd, content[off:off + chunk])
        finally:
            os.close(fd)
        return True

    assert all(_run_all(writer, range(THREADS)))
    for i in range(THREADS):
        got = read_file(os.path.join(workdir, f"f{i}"))
        want = data(size, seed=100 + i)
        assert got == want, f"file of writer {i}: {diff_at(got, want)}"


def test_writers_to_disjoint_regions_of_one_file(workdir):
    p = os.path.join(workdir, "shared")
    region = 256 * 1024
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        def writer(i):
            content = data(region, seed=200 + i)
            for off in range(0, region, 8192):
                pwrite_all(fd, content[off:off + 8192], i * region + off)
            return True

        assert all(_run_all(writer, range(THREADS)))
    finally:
        os.close(fd)
    got = read_file(p)
    want = b"".join(data(region, seed=200 + i) for i in range(THREADS))
    assert got == want, f"interleaved pwrites to disjoint regions: {diff_at(got, want)}"


def test_concurrent_appends_are_atomic(workdir):
    p = os.path.join(workdir, "log")
    records = 200

    def appender(i):
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for n in range(records):
                rec = f"writer {i} record {n:04d} ".ljust(63, ".") + "\n"
                assert os.write(fd, rec.encode()) == 64
        finally:
            os.close(fd)
        return True

    assert all(_run_all(appender, range(THREADS)))
    lines = read_file(p).split(b"\n")
    assert lines[-1] == b"", "file must end with a complete record"
    lines = lines[:-1]
    assert len(lines) == THREADS * records, f"{len(lines)} records, expected {THREADS * records}"
    assert all(len(line) == 63 for line in lines), "a record was torn or overwritten"
    for i in range(THREADS):
        mine = [line for line in lines if line.startswith(b"writer %d " % i)]
        nums = [int(line.split()[3].rstrip(b".")) for line in mine]
        assert nums == list(range(records)), f"records of writer {i} lost or out of order"


def test_exclusive_create_race(workdir):
    p = os.path.join(workdir, "once")
    barrier = threading.Barrier(THREADS)

    def creator(i):
        barrier.wait(timeout=30)
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return "exists"
        try:
            os.write(fd, b"winner %d" % i)
        finally:
            os.close(fd)
        return "created"

    results = _run_all(creator, range(THREADS))
    assert results.count("created") == 1, f"O_EXCL race: {results}"
    assert read_file(p).startswith(b"winner "), "the winner's content"


def test_mkdir_race(workdir):
    d = os.path.join(workdir, "d")
    barrier = threading.Barrier(THREADS)

    def maker(i):
        barrier.wait(timeout=30)
        try:
            os.mkdir(d)
            return "created"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    results = _run_all(maker, range(THREADS))
    assert sorted(results) == ["EEXIST"] * (THREADS - 1) + ["created"], f"mkdir race: {results}"


def test_parallel_creates_in_one_directory(workdir):
    per_thread = 40

    def creator(i):
        for n in range(per_thread):
            fd = os.open(os.path.join(workdir, f"t{i}-{n}"), os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                os.write(fd, b"%d-%d" % (i, n))
            finally:
                os.close(fd)
        return True

    assert all(_run_all(creator, range(THREADS)))
    listed = os.listdir(workdir)
    assert len(listed) == THREADS * per_thread == len(set(listed)), \
        f"{len(listed)} entries after {THREADS * per_thread} parallel creates"
    for i in range(THREADS):
        for n in range(per_thread):
            assert read_file(os.path.join(workdir, f"t{i}-{n}")) == b"%d-%d" % (i, n)


def test_reader_during_writer(workdir):
    p = os.path.join(workdir, "growing")
    total = 2 << 20
    content = data(total, seed=5)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    done = threading.Event()
    errors = []

    def reader(_):
        rfd = os.open(p, os.O_RDONLY)
        try:
            while not done.is_set():
                size = os.fstat(rfd).st_size
                if size:
                    chunk = os.pread(rfd, 4096, max(0, size - 4096))
                    start = max(0, size - 4096)
                    if chunk and chunk != content[start:start + len(chunk)]:
                        errors.append(f"read at {start} returned wrong data")
                        return False
        finally:
            os.close(rfd)
        return True

    try:
        def writer(_):
            try:
                for off in range(0, total, 65536):
                    os.write(fd, content[off:off + 65536])
            finally:
                done.set()
            return True

        ok = run_threads(lambda a: writer(a) if a == "w" else reader(a), ["w", "r"], timeout=WAIT)
        assert ok == [True, True], errors
    finally:
        os.close(fd)
    assert read_file(p) == content, "final content after concurrent reading"
