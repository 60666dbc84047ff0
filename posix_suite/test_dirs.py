"""mkdir(2) and rmdir(2), their errors, and directory link counts."""

import errno
import os
import stat

from posix_suite.fsutil import raises_errno, write_file


def test_mkdir_and_stat(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    st = os.stat(d)
    assert stat.S_ISDIR(st.st_mode), f"mkdir made mode {st.st_mode:o}"
    assert os.listdir(d) == [], "a new directory is empty"
    assert os.listdir(workdir) == ["d"], "a new (empty) directory appears in its parent"


def test_mkdir_mode(workdir):
    old = os.umask(0)
    try:
        os.mkdir(os.path.join(workdir, "d"), 0o711)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(os.path.join(workdir, "d")).st_mode)
    assert mode == 0o711, f"mkdir with mode 0711 and umask 0 gave {mode:o}"


def test_mkdir_umask_applied(workdir):
    old = os.umask(0o027)
    try:
        os.mkdir(os.path.join(workdir, "d"), 0o777)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(os.path.join(workdir, "d")).st_mode)
    assert mode == 0o750, f"mkdir 0777 with umask 027 gave {mode:o}"


def test_mkdir_existing_directory(workdir):
    os.mkdir(os.path.join(workdir, "d"))
    with raises_errno(errno.EEXIST, what="mkdir of an existing directory"):
        os.mkdir(os.path.join(workdir, "d"))


def test_mkdir_over_file(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    with raises_errno(errno.EEXIST, what="mkdir over an existing file"):
        os.mkdir(os.path.join(workdir, "f"))
    assert os.path.isfile(os.path.join(workdir, "f"))


def test_mkdir_over_symlink(workdir):
    os.symlink("nowhere", os.path.join(workdir, "l"))
    with raises_errno(errno.EEXIST, what="mkdir over a dangling symlink"):
        os.mkdir(os.path.join(workdir, "l"))


def test_mkdir_missing_parent(workdir):
    with raises_errno(errno.ENOENT, what="mkdir with a missing parent"):
        os.mkdir(os.path.join(workdir, "no", "d"))


def test_mkdir_parent_is_file(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    with raises_errno(errno.ENOTDIR, what="mkdir under a regular file"):
        os.mkdir(os.path.join(workdir, "f", "d"))


def test_rmdir_empty(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    os.rmdir(d)
    assert not os.path.lexists(d), "directory still exists after rmdir"
    assert os.listdir(workdir) == []


def test_rmdir_after_its_files_were_removed(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    for i in range(3):
        write_file(os.path.join(d, f"f{i}"), b"x")
    for i in range(3):
        os.unlink(os.path.join(d, f"f{i}"))
    os.rmdir(d)
    assert not os.path.lexists(d)


def test_rmdir_nonempty(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    write_file(os.path.join(d, "f"), b"x")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST, what="rmdir of a non-empty directory"):
        os.rmdir(d)
    assert os.listdir(d) == ["f"], "failed rmdir changed the directory"


def test_rmdir_with_only_subdirectory(workdir):
    d = os.path.join(workdir, "d")
    os.makedirs(os.path.join(d, "sub"))
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST, what="rmdir of a directory holding a subdir"):
        os.rmdir(d)


def test_rmdir_missing(workdir):
    with raises_errno(errno.ENOENT, what="rmdir of a missing directory"):
        os.rmdir(os.path.join(workdir, "missing"))


def test_rmdir_on_file(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    with raises_errno(errno.ENOTDIR, what="rmdir on a regular file"):
        os.rmdir(os.path.join(workdir, "f"))
    assert os.path.isfile(os.path.join(workdir, "f"))


def test_rmdir_dot(workdir):
    os.mkdir(os.path.join(workdir, "d"))
    with raises_errno(errno.EINVAL, what="rmdir of d/."):
        os.rmdir(os.path.join(workdir, "d", "."))


def test_deep_tree(workdir):
    path = workdir
    for i in range(12):
        path = os.path.join(path, f"level{i}")
    os.makedirs(path)
    write_file(os.path.join(path, "leaf"), b"deep")
    assert os.listdir(path) == ["leaf"]
    walked = sum(len(files) for _, _, files in os.walk(workdir))
    assert walked == 1, f"os.walk found {walked} files, expected 1"


def test_nlink_of_directory(workdir):
    d = os.path.join(workdir, "d")
    os.mkdir(d)
    assert os.stat(d).st_nlink == 2, "an empty directory has st_nlink 2 ('.' and its entry)"
    for i in range(3):
        os.mkdir(os.path.join(d, f"sub{i}"))
    write_file(os.path.join(d, "file"), b"x")
    assert os.stat(d).st_nlink == 5, "st_nlink is 2 + number of subdirectories (3 here)"
    os.rmdir(os.path.join(d, "sub0"))
    assert os.stat(d).st_nlink == 4, "st_nlink drops when a subdirectory is removed"


def test_nlink_after_rename_of_subdirectory(workdir):
    a, b = os.path.join(workdir, "a"), os.path.join(workdir, "b")
    os.makedirs(os.path.join(a, "sub"))
    os.mkdir(b)
    os.rename(os.path.join(a, "sub"), os.path.join(b, "sub"))
    assert os.stat(a).st_nlink == 2, "source parent loses the moved subdirectory's link"
    assert os.stat(b).st_nlink == 3, "destination parent gains it"


def test_chdir_and_relative_paths(workdir):
    os.mkdir(os.path.join(workdir, "d"))
    old = os.getcwd()
    os.chdir(os.path.join(workdir, "d"))
    try:
        write_file("rel", b"relative")
        assert os.path.realpath(os.getcwd()) == os.path.realpath(os.path.join(workdir, "d"))
        assert os.listdir("..") == ["d"]
    finally:
        os.chdir(old)
    assert os.path.isfile(os.path.join(workdir, "d", "rel")), "file made by a relative path"
