"""readdir: complete listings, entry types, and listing while entries change."""

import os

from posix_suite.fsutil import write_file

# Long names make a listing span several getdents() calls (glibc reads 32 KiB
# at a time, about 145 entries of this length) without thousands of files.
# FUSE pages its own readdir requests in 4 KiB, so those see many pages too.
PAD = "x" * 200


def _touch(path):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def test_empty_directory(workdir):
    assert os.listdir(workdir) == [], "a new directory lists nothing"
    with os.scandir(workdir) as it:
        names = [e.name for e in it]
    assert names == [], "scandir never returns . or .. and nothing else here"


def test_listing_complete_no_duplicates(workdir):
    expected = {f"{i:04d}-{PAD}" for i in range(200)}
    for name in expected:
        _touch(os.path.join(workdir, name))
    listed = os.listdir(workdir)
    assert len(listed) == len(set(listed)), "duplicate names in a listing"
    assert set(listed) == expected, \
        f"missing {len(expected - set(listed))}, unexpected {len(set(listed) - expected)}"


def test_entry_types(workdir):
    write_file(os.path.join(workdir, "file"), b"x")
    os.mkdir(os.path.join(workdir, "dir"))
    os.symlink("file", os.path.join(workdir, "link"))
    os.mkfifo(os.path.join(workdir, "fifo"))
    kinds = {}
    with os.scandir(workdir) as it:
        for e in it:
            kinds[e.name] = (e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False),
                             e.is_symlink())
    assert kinds == {
        "file": (True, False, False),
        "dir": (False, True, False),
        "link": (False, False, True),
        "fifo": (False, False, False),
    }, f"entry types (is_file, is_dir, is_symlink): {kinds}"


def test_open_file_listed_before_close(workdir):
    fd = os.open(os.path.join(workdir, "open"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"not yet closed")
        assert os.listdir(workdir) == ["open"], "a created file is listed before it is closed"
    finally:
        os.close(fd)


def test_listing_after_unlink_and_rename(workdir):
    for n in ("a", "b", "c"):
        write_file(os.path.join(workdir, n), b"x")
    os.unlink(os.path.join(workdir, "b"))
    os.rename(os.path.join(workdir, "c"), os.path.join(workdir, "d"))
    assert sorted(os.listdir(workdir)) == ["a", "d"], "listing reflects unlink and rename at once"


def test_readdir_while_entries_added_and_removed(workdir):
    keep = {f"keep-{i:03d}-{PAD}" for i in range(160)}
    doomed = [f"tmp-{i:03d}-{PAD}" for i in range(60)]
    for name in sorted(keep) + doomed:
        _touch(os.path.join(workdir, name))
    seen = []
    added = []
    with os.scandir(workdir) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i < len(doomed):
                os.unlink(os.path.join(workdir, doomed[i]))
                new = f"new-{i:03d}-{PAD}"
                _touch(os.path.join(workdir, new))
                added.append(new)
    dups = {n for n in seen if seen.count(n) > 1}
    assert not dups, f"{len(dups)} names returned twice while the directory changed"
    missing = keep - set(seen)
    assert not missing, f"{len(missing)} entries present throughout were not returned"
    allowed = keep | set(doomed) | set(added)
    strange = set(seen) - allowed
    assert not strange, f"names that never existed were returned: {sorted(strange)[:3]}"
    final = set(os.listdir(workdir))
    assert final == keep | set(added), "a listing after the changes is exact"


def test_readdir_while_same_name_recreated(workdir):
    names = [f"e-{i:03d}-{PAD}" for i in range(200)]
    for n in names:
        _touch(os.path.join(workdir, n))
    seen = []
    with os.scandir(workdir) as it:
        for entry in it:
            seen.append(entry.name)
            victim = os.path.join(workdir, names[len(seen) % len(names)])
            os.unlink(victim)
            _touch(victim)
    assert set(os.listdir(workdir)) == set(names), "recreated names all present afterwards"
    unknown = set(seen) - set(names)
    assert not unknown, f"unknown names returned: {sorted(unknown)[:3]}"


def test_two_listings_concurrently(workdir):
    names = {f"n-{i:03d}-{PAD}" for i in range(200)}
    for n in names:
        _touch(os.path.join(workdir, n))
    a_it = os.scandir(workdir)
    b_it = os.scandir(workdir)
    try:
        a, b = [], []
        for x, y in zip(a_it, b_it):
            a.append(x.name)
            b.append(y.name)
        a += [e.name for e in a_it]
        b += [e.name for e in b_it]
    finally:
        a_it.close()
        b_it.close()
    assert sorted(a) == sorted(names) and sorted(b) == sorted(names), \
        "two interleaved listings of one directory must each be complete"


def test_inode_in_listing_matches_lstat(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    os.mkdir(os.path.join(workdir, "d"))
    with os.scandir(workdir) as it:
        for e in it:
            st = os.lstat(e.path)
            assert e.inode() == st.st_ino, \
                f"d_ino {e.inode()} of {e.name} differs from st_ino {st.st_ino}"
