"""Key <-> name rules: what the kernel may pass, what S3 keys may be shown."""

from __future__ import annotations

import errno
import logging

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from objectfs.errors import InvalidArgument, NameTooLong
from objectfs.namespace import keys
from objectfs.namespace.keys import (NAME_MAX, check_key, dir_prefix, entry_from_listing,
                                     file_key, name_from_kernel, name_to_kernel,
                                     normalise_prefix, valid_component)
from objectfs.store.base import MAX_KEY_BYTES

# Any Unicode text that S3 could hold (hypothesis leaves out lone surrogates,
# which UTF-8 cannot carry).
names = st.text(min_size=1, max_size=80)
valid_names = names.filter(valid_component)
prefixes = st.lists(valid_names.filter(lambda n: len(n) < 20), max_size=4)


def utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


# -- valid_component ------------------------------------------------------------

@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a\0b", "\0", "x" * 256,
                                  "é" * 128])
def test_invalid_components(name):
    assert not valid_component(name)


@pytest.mark.parametrize("name", ["a", "...", ".hidden", "a b", "x" * 255, "é" * 127,
                                  "日本語", "tab\there", "back\\slash", "-", "a:b"])
def test_valid_components(name):
    assert valid_component(name)


@settings(max_examples=300)
@given(names)
def test_valid_component_rules(name):
    expected = (name not in ("", ".", "..") and "/" not in name and "\0" not in name
                and utf8_len(name) <= NAME_MAX)
    assert valid_component(name) == expected


# -- names from the kernel ------------------------------------------------------------

@settings(max_examples=300)
@given(valid_names)
def test_kernel_name_round_trip(name):
    raw = name_to_kernel(name)
    assert raw == name.encode("utf-8")
    assert name_from_kernel(raw) == name


def test_name_over_255_bytes_is_enametoolong():
    assert name_from_kernel(b"x" * 255) == "x" * 255
    with pytest.raises(NameTooLong) as ei:
        name_from_kernel(b"x" * 256)
    assert ei.value.errno == errno.ENAMETOOLONG
    # counted in bytes, not characters
    with pytest.raises(NameTooLong):
        name_from_kernel(("é" * 128).encode())


@pytest.mark.parametrize("raw", [b"\xff", b"abc\xc3", b"\xc3\x28", b"\xed\xa0\x80",
                                 b"caf\xe9"])
def test_name_not_utf8_is_einval(raw):
    with pytest.raises(InvalidArgument) as ei:
        name_from_kernel(raw)
    assert ei.value.errno == errno.EINVAL


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=300))
def test_kernel_names_decode_or_fail_cleanly(raw):
    try:
        name = name_from_kernel(raw)
    except NameTooLong:
        assert len(raw) > NAME_MAX
    except InvalidArgument:
        assert len(raw) <= NAME_MAX
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
    else:
        assert name_to_kernel(name) == raw


# -- keys -------------------------------------------------------------------------

def test_check_key_limit_is_1024_utf8_bytes():
    assert check_key("k" * MAX_KEY_BYTES) == "k" * MAX_KEY_BYTES
    assert check_key("é" * 512) == "é" * 512           # 1024 bytes
    for key in ("k" * (MAX_KEY_BYTES + 1), "é" * 513):  # 1025, 1026 bytes
        with pytest.raises(NameTooLong) as ei:
            check_key(key)
        assert ei.value.errno == errno.ENAMETOOLONG


@settings(max_examples=200)
@given(st.text(max_size=700))
def test_check_key_agrees_with_byte_length(key):
    if utf8_len(key) <= MAX_KEY_BYTES:
        assert check_key(key) == key
    else:
        with pytest.raises(NameTooLong):
            check_key(key)


@pytest.mark.parametrize("raw, expected", [
    ("", ""), ("/", ""), ("//", ""), ("a", "a/"), ("a/", "a/"), ("/a", "a/"),
    ("/a/b/", "a/b/"), ("a/b/c", "a/b/c/")])
def test_normalise_prefix_examples(raw, expected):
    assert normalise_prefix(raw) == expected


@pytest.mark.parametrize("raw", ["a//b", "a/./b", "a/../b", ".", "..", "./a", "a/..",
                                 "a/\0/b", "x" * 256])
def test_normalise_prefix_refuses_bad_components(raw):
    with pytest.raises(InvalidArgument) as ei:
        normalise_prefix(raw)
    assert ei.value.errno == errno.EINVAL


@settings(max_examples=200)
@given(prefixes, st.booleans(), st.booleans())
def test_normalise_prefix_round_trip(parts, lead, trail):
    text = ("/" if lead else "") + "/".join(parts) + ("/" if trail else "")
    norm = normalise_prefix(text)
    assert norm == ("/".join(parts) + "/" if parts else "")
    assert normalise_prefix(norm) == norm  # idempotent
    assert not norm.startswith("/")


# -- listings -----------------------------------------------------------------------

@settings(max_examples=300)
@given(prefixes, valid_names)
def test_listing_round_trip(parts, name):
    prefix = normalise_prefix("/".join(parts))
    key = file_key(prefix, name)
    assert entry_from_listing(prefix, key) == (name, False)
    assert entry_from_listing(prefix, dir_prefix(key)) == (name, True)
    assert dir_prefix(key) == key + "/"


def test_directory_own_marker_is_not_an_entry():
    assert entry_from_listing("d/", "d/") is None
    assert entry_from_listing("", "") is None


@pytest.mark.parametrize("rest", ["", ".", "..", "a\0b", "x" * 256, "é" * 128])
def test_listing_hides_names_posix_cannot_hold(rest, caplog):
    caplog.set_level(logging.WARNING, logger="objectfs.namespace.keys")
    for key in ("d/" + rest, "d/" + rest + "/"):
        if key == "d/":
            continue  # the marker, covered above
        assert entry_from_listing("d/", key) is None
    if rest:
        assert any("hiding key" in r.getMessage() for r in caplog.records)


@settings(max_examples=300)
@given(names)
def test_listing_never_shows_an_invalid_name(rest):
    assume("/" not in rest)
    for key in ("p/" + rest, "p/" + rest + "/"):
        ent = entry_from_listing("p/", key)
        if valid_component(rest):
            assert ent == (rest, key.endswith("/"))
        else:
            assert ent is None


def test_hidden_key_is_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger="objectfs.namespace.keys")
    key = "once/" + "y" * 300
    keys._logged_skips.discard(key)
    assert entry_from_listing("once/", key) is None
    assert entry_from_listing("once/", key) is None
    assert sum(key in r.getMessage() for r in caplog.records) == 1


def test_hidden_keys_beyond_the_cap_are_not_logged_at_all(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="objectfs.namespace.keys")
    monkeypatch.setattr(keys, "_logged_skips", set())
    monkeypatch.setattr(keys, "_MAX_LOGGED_SKIPS", 3)
    for _ in range(3):  # three listings of the same five hidden keys
        for i in range(5):
            assert entry_from_listing("cap/", f"cap/{i}" + "z" * 300) is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("hiding key" in m for m in messages) == 3
    assert sum("further ones are not logged" in m for m in messages) == 1


# Keys as S3 holds them: no NUL, no surrogates (not in UTF-8) and, for
# key_before's promise, no U+10FFFF.
key_text = st.text(st.characters(blacklist_categories=("Cs",),
                                 blacklist_characters="\x00\U0010ffff"),
                   min_size=1, max_size=40)


@given(key_text, key_text)
def test_key_before_lists_from_the_key_on(a, b):
    """key_before(b) is a StartAfter that lists b and every key after it,
    and no key before it, in S3's order (UTF-8 bytes)."""
    before = keys.key_before(b)
    assert before.encode() < b.encode()
    if a.encode() < b.encode():
        assert a.encode() <= before.encode()


def test_key_before_stays_within_the_longest_key():
    key = "k" * (MAX_KEY_BYTES - 1) + "b"
    assert keys.key_before(key) == "k" * (MAX_KEY_BYTES - 1) + "a"
    assert keys.key_before("x/\ue000") == "x/\ud7ff\U0010ffff"
