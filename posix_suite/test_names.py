"""File names: the 255-byte limit, ENAMETOOLONG, unicode and unusual characters."""

import errno
import os
import unicodedata

import pytest

from posix_suite.fsutil import raises_errno, read_file, write_file


def _roundtrip(workdir, name):
    p = os.path.join(workdir, name)
    write_file(p, b"content of " + os.fsencode(name))
    listed = os.listdir(os.fsencode(workdir))
    assert listed == [os.fsencode(name)], f"listing shows {listed!r} for {name!r}"
    assert read_file(p) == b"content of " + os.fsencode(name), f"read back {name!r}"
    renamed = "R" + name[1:]  # same length or shorter, so 255-byte names stay legal
    os.rename(p, os.path.join(workdir, renamed))
    assert os.listdir(os.fsencode(workdir)) == [os.fsencode(renamed)], "after rename"
    os.unlink(os.path.join(workdir, renamed))
    assert os.listdir(workdir) == []


def test_name_255_bytes(workdir):
    _roundtrip(workdir, "n" * 255)


def test_name_255_bytes_multibyte(workdir):
    name = "€" * 85  # 3 bytes each in UTF-8
    assert len(name.encode()) == 255
    _roundtrip(workdir, name)


def test_directory_name_255_bytes(workdir):
    d = os.path.join(workdir, "d" * 255)
    os.mkdir(d)
    write_file(os.path.join(d, "inner"), b"x")
    assert os.listdir(workdir) == ["d" * 255]
    assert os.listdir(d) == ["inner"]


def test_create_name_256_bytes(workdir):
    with raises_errno(errno.ENAMETOOLONG, what="create with a 256-byte name"):
        os.open(os.path.join(workdir, "n" * 256), os.O_CREAT | os.O_WRONLY, 0o644)
    assert os.listdir(workdir) == []


def test_mkdir_name_256_bytes(workdir):
    with raises_errno(errno.ENAMETOOLONG, what="mkdir with a 256-byte name"):
        os.mkdir(os.path.join(workdir, "d" * 256))


def test_lookup_name_256_bytes(workdir):
    with raises_errno(errno.ENAMETOOLONG, what="stat of a 256-byte name"):
        os.stat(os.path.join(workdir, "n" * 256))


def test_rename_to_name_256_bytes(workdir):
    write_file(os.path.join(workdir, "f"), b"x")
    with raises_errno(errno.ENAMETOOLONG, what="rename to a 256-byte name"):
        os.rename(os.path.join(workdir, "f"), os.path.join(workdir, "n" * 256))
    assert os.listdir(workdir) == ["f"]


def test_symlink_name_256_bytes(workdir):
    with raises_errno(errno.ENAMETOOLONG, what="symlink with a 256-byte name"):
        os.symlink("t", os.path.join(workdir, "l" * 256))


UNUSUAL = {
    "space": "with space",
    "edge-spaces": " leading and trailing ",
    "percent": "percent%20and%2Fslash",
    "url-chars": "plus+amp&eq=q?hash#",
    "backslash": "back\\slash",
    "shell-chars": "colon:star*pipe|lt<gt>quote\"",
    "quotes": "apostrophe'tick`tilde~",
    "unicode": "ünïcödé-日本語-emoji-😀",
    "newline-tab": "new\nline-and\ttab",
    "control": "ctl-\x01-\x7f",
    "trailing-dot": "dot.",
    "dots": "..dots..",
    "dash": "-dash",
    "tilde": "~",
}


@pytest.mark.parametrize("name", list(UNUSUAL.values()), ids=list(UNUSUAL))
def test_unusual_name(workdir, name):
    _roundtrip(workdir, name)


def test_nfc_and_nfd_names_are_distinct(workdir):
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    write_file(os.path.join(workdir, nfc), b"nfc")
    write_file(os.path.join(workdir, nfd), b"nfd")
    assert sorted(os.listdir(workdir)) == sorted([nfc, nfd]), \
        "NFC and NFD spellings must be two different names (names are bytes)"
    assert read_file(os.path.join(workdir, nfc)) == b"nfc"
    assert read_file(os.path.join(workdir, nfd)) == b"nfd"


def test_case_sensitive(workdir):
    write_file(os.path.join(workdir, "Name"), b"upper")
    write_file(os.path.join(workdir, "name"), b"lower")
    assert sorted(os.listdir(workdir)) == ["Name", "name"], "names are case-sensitive"
    assert read_file(os.path.join(workdir, "Name")) == b"upper"


def test_non_utf8_name(workdir):
    name = b"latin1-\xe9\xff"
    p = os.path.join(os.fsencode(workdir), name)
    write_file(p, b"bytes")
    assert os.listdir(os.fsencode(workdir)) == [name], "a non-UTF-8 name must round-trip as bytes"
    assert read_file(p) == b"bytes"


def test_path_longer_than_1024_bytes(workdir):
    path = workdir
    for i in range(6):
        path = os.path.join(path, f"{i}" + "p" * 199)
    os.makedirs(path)
    leaf = os.path.join(path, "leaf")
    write_file(leaf, b"long path")
    assert len(os.fsencode(leaf)) - len(os.fsencode(workdir)) > 1024
    assert read_file(leaf) == b"long path", "a file below a >1024-byte relative path"


def test_dot_names_resolve(workdir):
    os.mkdir(os.path.join(workdir, "d"))
    write_file(os.path.join(workdir, "d", "f"), b"x")
    assert read_file(os.path.join(workdir, "d", ".", "..", "d", "f")) == b"x"
    assert sorted(os.listdir(os.path.join(workdir, "d", "."))) == ["f"], "listing of d/."
