"""statfs(2) / statvfs(3): sane block sizes and counts, 255-byte names."""

import os


def test_block_sizes(workdir):
    st = os.statvfs(workdir)
    assert st.f_bsize > 0, f"f_bsize is {st.f_bsize}"
    assert st.f_frsize > 0, f"f_frsize is {st.f_frsize}"
    assert st.f_bsize & (st.f_bsize - 1) == 0, f"f_bsize {st.f_bsize} is not a power of two"


def test_namemax(workdir):
    assert os.statvfs(workdir).f_namemax == 255, "f_namemax must be 255 (NAME_MAX)"


def test_block_counts_consistent(workdir):
    st = os.statvfs(workdir)
    assert st.f_blocks > 0, "f_blocks must be nonzero (df shows a size)"
    assert st.f_blocks >= st.f_bfree >= st.f_bavail >= 0, \
        f"need f_blocks >= f_bfree >= f_bavail: {st.f_blocks}, {st.f_bfree}, {st.f_bavail}"
    assert st.f_files >= st.f_ffree >= 0, f"f_files {st.f_files}, f_ffree {st.f_ffree}"


def test_room_for_a_small_file(workdir):
    st = os.statvfs(workdir)
    assert st.f_bavail * st.f_frsize >= 1 << 20, \
        f"only {st.f_bavail * st.f_frsize} bytes reported available"


def test_fstatvfs_matches_statvfs(workdir):
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        a = os.fstatvfs(fd)
    finally:
        os.close(fd)
    b = os.statvfs(workdir)
    assert (a.f_bsize, a.f_frsize, a.f_namemax, a.f_blocks) == \
        (b.f_bsize, b.f_frsize, b.f_namemax, b.f_blocks), "fstatvfs and statvfs disagree"


def test_same_answer_for_subdirectory(workdir, mountpoint):
    os.mkdir(os.path.join(workdir, "d"))
    a = os.statvfs(os.path.join(workdir, "d"))
    b = os.statvfs(mountpoint)
    assert (a.f_bsize, a.f_namemax, a.f_blocks, a.f_fsid) == \
        (b.f_bsize, b.f_namemax, b.f_blocks, b.f_fsid), "statvfs differs inside one filesystem"
