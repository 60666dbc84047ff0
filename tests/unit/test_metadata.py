"""Tests for objectfs.metadata: the s3fs/rclone/geesefs/GCS metadata formats
(/work/shared/interop.md sections 1.1, 1.3, 2, 3, 6)."""

from __future__ import annotations

import datetime as dt
import mimetypes
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from objectfs.metadata import (
    DEFAULT_DIR_PERMS,
    DEFAULT_FILE_PERMS,
    DIRECTORY_CONTENT_TYPES,
    METADATA_LIMIT,
    SYMLINK_TARGET_KEY,
    XATTR_KEY,
    PosixAttrs,
    default_content_type,
    renamed_content_type,
    file_type,
    format_attrs,
    format_symlink_target,
    format_time,
    format_xattrs,
    is_directory_content_type,
    merge_metadata,
    metadata_size,
    object_file_type,
    parse_attrs,
    parse_mode,
    parse_time_ns,
    parse_xattrs,
    valid_mode,
    valid_xattr_name,
)

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

NS = 1_000_000_000
ALL_TYPES = [stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
             stat.S_IFCHR, stat.S_IFBLK]
RFC_ATIME = "2025-03-04T17:34:22.317069787Z"     # rclone -M, interop.md 2
RCLONE = {"atime": RFC_ATIME, "btime": "2024-01-02T03:04:05Z"}

perms = st.integers(0, 0o7777)
ids = st.integers(0, 2**32 - 1)
times = st.integers(-(2**62), 2**62)


def utc_ns(*args: int) -> int:
    """ns since the epoch, computed by the stdlib (independent of the parser)."""
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()) * NS


# --------------------------------------------------------------------------
# Writing: the exact strings of interop.md

@pytest.mark.parametrize(("mode", "expected"), [
    (stat.S_IFREG | 0o644, "33188"),
    (stat.S_IFDIR | 0o755, "16877"),
    (stat.S_IFLNK | 0o777, "41471"),
    (stat.S_IFIFO | 0o644, "4516"),
    (stat.S_IFDIR | 0o750, "16872"),     # s3fs test_chmod_listed_directory_keeps_metadata
])
def test_format_attrs_mode_is_s3fs_decimal(mode, expected):
    out = format_attrs(mode=mode, uid=1000, gid=1000, mtime_ns=0, ctime_ns=0, atime_ns=0)
    assert out == {"mode": expected, "uid": "1000", "gid": "1000",
                   "mtime": "0", "ctime": "0", "atime": "0"}


def test_format_attrs_times_and_rdev():
    out = format_attrs(mode=stat.S_IFCHR | 0o600, uid=0, gid=5,
                       mtime_ns=1724312345 * NS + 123456789, ctime_ns=1724312345 * NS,
                       atime_ns=1724312345 * NS + 12345, rdev=259)
    assert out == {"mode": str(stat.S_IFCHR | 0o600), "uid": "0", "gid": "5",
                   "mtime": "1724312345.123456789", "ctime": "1724312345",
                   "atime": "1724312345.000012345", "rdev": "259"}


@pytest.mark.parametrize("mode", [stat.S_IFREG | 0o644, stat.S_IFIFO | 0o644, stat.S_IFSOCK | 0o755])
def test_format_attrs_rdev_only_for_devices(mode):
    assert "rdev" not in format_attrs(mode=mode, uid=0, gid=0, mtime_ns=0, ctime_ns=0,
                                      atime_ns=0, rdev=259)
    assert "rdev" not in format_attrs(mode=stat.S_IFBLK | 0o600, uid=0, gid=0, mtime_ns=0,
                                      ctime_ns=0, atime_ns=0, rdev=0)


@pytest.mark.parametrize("kwargs", [
    {"mode": 0o755},                    # FUSE mkdir mode without S_IFDIR
    {"mode": 0o030644},                 # not a file type
    {"mode": 0o1100644},                # more than 16 bits
    {"mode": -1},
    {"uid": -1}, {"uid": 2**32}, {"gid": 2**32},
    {"mode": stat.S_IFCHR | 0o600, "rdev": -1},
    {"mode": stat.S_IFCHR | 0o600, "rdev": 2**64},
])
def test_format_attrs_rejects_invalid(kwargs):
    args = {"mode": stat.S_IFREG | 0o644, "uid": 0, "gid": 0, "mtime_ns": 0, "ctime_ns": 0,
            "atime_ns": 0} | kwargs
    with pytest.raises(ValueError):
        format_attrs(**args)


@FAST
@given(kind=st.sampled_from(ALL_TYPES), perm=perms, uid=ids, gid=ids, mtime=times,
       ctime=times, atime=times, rdev=st.integers(0, 2**64 - 1))
def test_format_then_parse_round_trips(kind, perm, uid, gid, mtime, ctime, atime, rdev):
    mode = kind | perm
    written = format_attrs(mode=mode, uid=uid, gid=gid, mtime_ns=mtime, ctime_ns=ctime,
                           atime_ns=atime, rdev=rdev)
    assert all(v.isascii() for v in written.values())
    expected_rdev = rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) and rdev else None
    assert parse_attrs(written) == PosixAttrs(mode=mode, uid=uid, gid=gid, mtime_ns=mtime,
                                              ctime_ns=ctime, atime_ns=atime,
                                              rdev=expected_rdev, symlink_target=None)
    # The same object stays readable when it also carries rclone's btime (kept
    # by merge_metadata): our numeric atime says s3fs-style writer.
    assert parse_attrs(written | {"btime": RCLONE["btime"]}).mode == mode


# --------------------------------------------------------------------------
# Times

@pytest.mark.parametrize(("ns", "text"), [
    (0, "0"),
    (1724312345 * NS, "1724312345"),
    (1724312345 * NS + 12345, "1724312345.000012345"),
    (1724312345 * NS + 123456789, "1724312345.123456789"),
    (-1, "-1.999999999"),                   # normalised timespec: floor seconds
    (-NS, "-1"),
    (-3 * NS // 2, "-2.500000000"),
])
def test_format_time_is_s3fs_timespec(ns, text):
    assert format_time(ns) == text
    assert parse_time_ns(text) == ns


@pytest.mark.parametrize(("text", "ns"), [
    ("1700000000.5", 1_700_000_000_500_000_000),          # rclone trims zeros: 0.5 s
    ("1700000000", 1_700_000_000 * NS),
    ("1724312345.000012345", 1724312345 * NS + 12345),
    ("1700000000.123456789999", 1_700_000_000_123_456_789),  # truncated like rclone
    ("1.", NS), (".5", NS // 2), ("+7", 7 * NS), (" 12 ", 12 * NS),
    ("-1.5", -3 * NS // 2),                               # rclone: sign and magnitude
    ("-0.500000000", -NS // 2),                           # cannot be a timespec
    ("-0.25", -NS // 4),
    (RFC_ATIME, utc_ns(2025, 3, 4, 17, 34, 22) + 317069787),
    ("2025-03-04T17:34:22Z", utc_ns(2025, 3, 4, 17, 34, 22)),
    ("2025-03-04t17:34:22.5z", utc_ns(2025, 3, 4, 17, 34, 22) + NS // 2),
    ("2025-03-04T19:34:22.1+02:00", utc_ns(2025, 3, 4, 17, 34, 22) + NS // 10),
    ("2025-03-04T12:04:22-05:30", utc_ns(2025, 3, 4, 17, 34, 22)),
    ("1969-12-31T23:59:59.999999999Z", -1),
])
def test_parse_time_ns(text, ns):
    assert parse_time_ns(text) == ns


@pytest.mark.parametrize("text", [
    "", " ", ".", "-", "+", "abc", "1e9", "0x10", "1.2.3", "1,5", "1 2", "--1", "nan", "inf",
    "1_000", "١٢٣", "1" * 41, "2025-13-01T00:00:00Z", "2025-02-30T00:00:00Z",
    "2025-03-04T24:00:00Z", "2025-03-04T17:34:60Z", "2025-03-04T17:34:22", "2025-03-04",
    "2025-03-04 17:34:22Z", "0000-01-01T00:00:00Z", "2025-03-04T17:34:22+2:00",
])
def test_parse_time_ns_rejects_garbage(text):
    assert parse_time_ns(text) is None


@FAST
@given(st.integers(-(2**63 - 1) * NS, (2**63 - 1) * NS))
def test_time_round_trip_any_int(ns):
    assert parse_time_ns(format_time(ns)) == ns


@FAST
@given(st.integers(2**63, 2**100), st.sampled_from(["", "-"]))
def test_times_beyond_64_bit_seconds_are_unusable(seconds, sign):
    """A stat carries 64-bit seconds: a larger stored time is ignored (as an
    unreadable one is), not an error for the whole directory."""
    assert parse_time_ns(f"{sign}{seconds}") is None


@FAST
@given(when=st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
       nanos=st.integers(0, NS - 1), offset_minutes=st.integers(-23 * 60 - 59, 23 * 60 + 59))
def test_rfc3339_matches_the_stdlib(when, nanos, offset_minutes):
    when = when.replace(microsecond=0)
    zone = dt.timezone(dt.timedelta(minutes=offset_minutes))
    text = when.isoformat() + (f".{nanos:09d}".rstrip("0").rstrip(".")) + \
        when.replace(tzinfo=zone).isoformat()[19:]
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    expected = (when.replace(tzinfo=zone) - epoch) // dt.timedelta(seconds=1) * NS + nanos
    assert parse_time_ns(text) == expected


# --------------------------------------------------------------------------
# Mode: s3fs base 0, rclone's octal guard, the tie-break

@pytest.mark.parametrize(("text", "mode"), [
    ("33188", 0o100644), ("16877", 0o40755), ("41471", 0o120777), ("4516", 0o10644),
    ("100644", 0o100644), ("40755", 0o40755), ("100664", 0o100664),   # rclone %o
    ("120777", 0o120777), ("140755", 0o140755),
    ("493", 0o755),                   # s3fs mkdir: no type bits, decimal
    ("0100644", 0o100644), ("0755", 0o755), ("0x81a4", 0o100644), ("0X41ED", 0o40755),
    ("0", 0), (" 33188 ", 0o100644), ("+33188", 0o100644),
])
def test_parse_mode(text, mode):
    assert parse_mode(text) == mode


@pytest.mark.parametrize("text", [
    "", "-1", "-33188", "abc", "33188x", "0x", "08", "0o644", "1e3", "70000", "200000",
    "12288",          # decimal 0o30000: not a file type, and has an 8
    "377777",         # octal 0o377777 over 16 bits; decimal too large
    "1" * 41, "٣٣١٨٨",
])
def test_parse_mode_rejects(text):
    assert parse_mode(text) is None


def test_tie_break_uses_rclone_rfc3339_context():
    # "41777": s3fs decimal symlink 0o121461, or rclone octal sticky dir 0o41777.
    assert parse_mode("41777") == 41777 == 0o121461
    assert parse_mode("41777", {}) == 0o121461
    assert parse_mode("41777", {"atime": "1700000000"}) == 0o121461
    assert parse_mode("41777", RCLONE) == 0o41777
    assert parse_mode("41777", {"atime": RFC_ATIME}) == 0o41777
    assert parse_mode("41777", {"btime": RFC_ATIME}) == 0o41777
    # rclone's btime next to a numeric atime: an s3fs-style writer (s3fs, us)
    # rewrote the attributes after rclone, so the mode is decimal.
    assert parse_mode("41777", {"atime": "1700000000.5", "btime": RFC_ATIME}) == 0o121461
    # What s3fs writes for every symlink reads as a symlink without rclone context.
    assert parse_mode("41471", {"atime": "1724312345", "mtime": "1724312345"}) == 0o120777
    # Octal readings without type bits are never rclone's (it writes %o of a
    # real st_mode): "755" stays decimal even in rclone context.
    assert parse_mode("755", RCLONE) == 755
    # Unambiguous strings do not depend on the context.
    assert parse_mode("33188", RCLONE) == 0o100644
    assert parse_mode("100644", {"atime": "1"}) == 0o100644
    assert parse_attrs({"mode": "41777"} | RCLONE).mode == 0o41777
    assert parse_attrs({"mode": "41777", "atime": "5"}).mode == 0o121461


@FAST
@given(kind=st.sampled_from([stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK]), perm=st.integers(0, 0o777))
def test_plain_modes_read_back_in_both_spellings(kind, perm):
    mode = kind | perm
    assert parse_mode(str(mode)) == mode
    assert parse_mode(format(mode, "o")) == mode
    assert parse_mode(format(mode, "o"), RCLONE) == mode


@FAST
@given(kind=st.sampled_from(ALL_TYPES), perm=perms)
def test_rclone_octal_reads_back_in_rclone_context(kind, perm):
    assert parse_mode(format(kind | perm, "o"), RCLONE) == kind | perm


@FAST
@given(st.integers(0, 2**20))
def test_parse_mode_result_is_always_valid(n):
    for text in (str(n), format(n, "o"), hex(n)):
        mode = parse_mode(text)
        assert mode is None or valid_mode(mode)


# --------------------------------------------------------------------------
# Fallbacks (interop.md 6.2.2-6.2.5)

@pytest.mark.parametrize(("metadata", "mode"), [
    ({"permissions": "33188"}, 0o100644),                  # s3sync, base 0
    ({"permissions": "0644"}, 0o644),
    ({"permissions": "0x1ed"}, 0o755),
    ({"goog-reserved-posix-mode": "644"}, 0o644),          # GCS, octal
    ({"goog-reserved-posix-mode": "100755"}, 0o100755),
    ({"goog-reserved-posix-mode": "493"}, None),           # not octal
    ({"mode": "33188", "permissions": "0600", "goog-reserved-posix-mode": "700"}, 0o100644),
    ({"permissions": "0600", "goog-reserved-posix-mode": "700"}, 0o600),
    ({"mode": "garbage", "permissions": "0600"}, 0o600),    # unparseable falls through
    ({"mode": "", "goog-reserved-posix-mode": "750"}, 0o750),
    ({}, None),
])
def test_mode_fallbacks(metadata, mode):
    assert parse_attrs(metadata).mode == mode


@pytest.mark.parametrize(("metadata", "uid", "gid"), [
    ({"uid": "1000", "gid": "100"}, 1000, 100),
    ({"uid": "0x3e8", "gid": "0144"}, 1000, 100),            # strtoll base 0
    ({"owner": "501", "group": "20"}, 501, 20),             # s3sync
    ({"goog-reserved-posix-uid": "7", "goog-reserved-posix-gid": "8"}, 7, 8),
    ({"uid": "1", "owner": "2", "goog-reserved-posix-uid": "3",
      "gid": "4", "group": "5", "goog-reserved-posix-gid": "6"}, 1, 4),
    ({"owner": "alice", "goog-reserved-posix-uid": "3"}, 3, None),   # names are not ids
    ({"uid": "-1", "gid": str(2**32)}, None, None),
    ({"uid": str(2**32 - 1), "gid": "0"}, 2**32 - 1, 0),
])
def test_uid_gid_fallbacks(metadata, uid, gid):
    attrs = parse_attrs(metadata)
    assert (attrs.uid, attrs.gid) == (uid, gid)


def test_time_fallbacks_and_formats():
    attrs = parse_attrs({"goog-reserved-file-mtime": "1600000000", "ctime": "1700000000.5",
                         "atime": RFC_ATIME})
    assert attrs.mtime_ns == 1_600_000_000 * NS
    assert attrs.ctime_ns == 1_700_000_000 * NS + NS // 2
    assert attrs.atime_ns == utc_ns(2025, 3, 4, 17, 34, 22) + 317069787
    assert parse_attrs({"mtime": "1", "goog-reserved-file-mtime": "2"}).mtime_ns == NS
    assert parse_attrs({"mtime": "x", "goog-reserved-file-mtime": "2"}).mtime_ns == 2 * NS
    assert parse_attrs({"mtime": "2025-03-04T17:34:22Z"}).mtime_ns == utc_ns(2025, 3, 4, 17, 34, 22)
    assert parse_attrs({}) == PosixAttrs(None, None, None, None, None, None, None, None)


@pytest.mark.parametrize(("metadata", "rdev"), [
    ({"rdev": "259"}, 259),                               # geesefs / ours: decimal
    ({"rdev": "0x103"}, 0x103),
    ({"rdev": "0X103", "atime": "5"}, 0x103),
    ({"rdev": "103"} | RCLONE, 0x103),                   # rclone -M: %x
    ({"rdev": "103", "btime": RFC_ATIME}, 0x103),
    ({"rdev": "103", "atime": "1", "btime": RFC_ATIME}, 103),
    ({"rdev": "10a"}, 0x10A),                             # a letter: only rclone's hex
    ({"rdev": "zz"}, None), ({"rdev": "-1"}, None), ({"rdev": ""}, None),
    ({"rdev": str(2**64)}, None), ({"rdev": str(2**64 - 1)}, 2**64 - 1),
])
def test_rdev(metadata, rdev):
    assert parse_attrs(metadata).rdev == rdev


def test_geesefs_percent_escaped_values():
    # Unescaped only where the raw value fails to parse.
    attrs = parse_attrs({"mode": "%33%33%31%38%38", "uid": "%31%30", "mtime": "%31%2E%35",
                         SYMLINK_TARGET_KEY: "dir/a%25b%0Ac%FF"})
    assert attrs.mode == 0o100644
    assert attrs.uid == 10
    assert attrs.mtime_ns == NS + NS // 2
    assert attrs.symlink_target == "dir/a%b\nc\udcff"
    assert os.fsencode(attrs.symlink_target) == b"dir/a%b\nc\xff"
    # An invalid escape (Go's PathUnescape refuses it) leaves the target raw.
    assert parse_attrs({SYMLINK_TARGET_KEY: "50%off"}).symlink_target == "50%off"
    assert parse_attrs({SYMLINK_TARGET_KEY: "../x"}).symlink_target == "../x"


@FAST
@given(st.text())
def test_symlink_target_header_round_trips(target):
    value = format_symlink_target(target)
    assert value.isascii() and value.isprintable() and " " not in value
    assert parse_attrs({SYMLINK_TARGET_KEY: value}).symlink_target == target


@FAST
@given(st.binary(max_size=64))
def test_symlink_target_header_round_trips_bytes(raw):
    target = os.fsdecode(raw)
    got = parse_attrs({SYMLINK_TARGET_KEY: format_symlink_target(target)}).symlink_target
    assert os.fsencode(got) == raw


KEYS = ["mode", "uid", "gid", "mtime", "ctime", "atime", "btime", "rdev", "permissions",
        "owner", "group", "goog-reserved-posix-mode", "goog-reserved-posix-uid",
        "goog-reserved-posix-gid", "goog-reserved-file-mtime", SYMLINK_TARGET_KEY, XATTR_KEY]
numberish = st.from_regex(r"\A[-+ 0-9a-fA-FxX.:TZ%]{0,30}\Z")


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10),
                       numberish | st.text() | st.sampled_from([RFC_ATIME, "1e999", "0x"]),
                       max_size=12))
def test_parse_attrs_never_raises(metadata):
    attrs = parse_attrs(metadata)
    assert attrs.mode is None or valid_mode(attrs.mode)
    assert attrs.uid is None or 0 <= attrs.uid < 2**32
    assert attrs.rdev is None or 0 <= attrs.rdev < 2**64
    parse_xattrs(metadata.get(XATTR_KEY, ""))


def test_parse_attrs_tolerates_wrong_types():
    assert parse_attrs({"mode": None, "uid": 5, "mtime": b"1"}).mode is None  # type: ignore[dict-item]
    assert parse_attrs(None) == parse_attrs({})                               # type: ignore[arg-type]
    assert parse_mode(None) is None and parse_time_ns(None) is None           # type: ignore[arg-type]


# --------------------------------------------------------------------------
# merge_metadata

def test_merge_keeps_foreign_keys_and_overwrites_ours():
    existing = {"mode": "33188", "uid": "1", "mtime": "1", "color": "blue",
                "md5chksum": "abc=", "permissions": "0600", "owner": "7",
                "goog-reserved-posix-mode": "600", "goog-reserved-file-mtime": "5",
                "btime": RFC_ATIME}
    ours = format_attrs(mode=stat.S_IFREG | 0o600, uid=2, gid=3, mtime_ns=9 * NS,
                        ctime_ns=9 * NS, atime_ns=9 * NS)
    merged = merge_metadata(existing, ours, content_changed=False)
    assert merged == existing | ours          # md5chksum kept: content did not change
    rewritten = merge_metadata(existing, ours, content_changed=True)
    assert rewritten == {k: v for k, v in (existing | ours).items() if k != "md5chksum"}
    # Fallbacks are kept, and do not shadow what we wrote.
    assert parse_attrs(rewritten).mode == stat.S_IFREG | 0o600
    assert parse_attrs(rewritten).uid == 2
    assert parse_attrs(rewritten).mtime_ns == 9 * NS


def test_merge_none_removes_key_and_inputs_are_not_modified():
    existing = {"xattr": format_xattrs({"user.a": b"1"}), "Color": "blue", "md5chksum": "x"}
    snapshot = dict(existing)
    merged = merge_metadata(existing, {"xattr": None, "color": "red"}, content_changed=False)
    assert merged == {"color": "red", "md5chksum": "x"}
    assert existing == snapshot


def test_merge_symlink_target_header():
    geesefs_link = {SYMLINK_TARGET_KEY: "t", "uid": "1"}
    # chmod/chown of the symlink: kept.
    assert SYMLINK_TARGET_KEY in merge_metadata(
        geesefs_link, {"mode": str(stat.S_IFLNK | 0o777)}, content_changed=False)
    assert SYMLINK_TARGET_KEY in merge_metadata(geesefs_link, {"uid": "5"}, content_changed=False)
    # A regular-file mode or a new body: dropped (geesefs would show a stale link).
    assert SYMLINK_TARGET_KEY not in merge_metadata(
        geesefs_link, {"mode": "33188"}, content_changed=False)
    assert SYMLINK_TARGET_KEY not in merge_metadata(geesefs_link, {}, content_changed=True)
    assert merge_metadata(geesefs_link, {SYMLINK_TARGET_KEY: "u"},
                          content_changed=True)[SYMLINK_TARGET_KEY] == "u"


def test_merge_keeps_rclone_values_reading_the_same():
    rclone_dir = {"mode": "41777", "rdev": "10", "mtime": "1700000000.5"} | RCLONE
    assert parse_attrs(rclone_dir).mode == 0o41777 and parse_attrs(rclone_dir).rdev == 16
    # utimens writes a numeric atime: rclone's "41777"/"10" would now read as
    # decimal, so they are re-encoded.
    merged = merge_metadata(rclone_dir, {"atime": "5", "mtime": "5"}, content_changed=False)
    assert merged["mode"] == str(0o41777) and merged["rdev"] == "16"
    assert parse_attrs(merged).mode == 0o41777 and parse_attrs(merged).rdev == 16
    # chmod writing only mode and ctime: our decimal must not be read as octal,
    # so rclone's RFC 3339 atime becomes the same instant in s3fs's form.
    merged = merge_metadata(rclone_dir, {"mode": "41471", "ctime": "5"}, content_changed=False)
    assert merged["atime"] == format_time(utc_ns(2025, 3, 4, 17, 34, 22) + 317069787)
    attrs = parse_attrs(merged)
    assert attrs.mode == 0o120777 and attrs.rdev == 16
    assert attrs.atime_ns == parse_attrs(rclone_dir).atime_ns
    assert merged["btime"] == RCLONE["btime"]
    # Nothing to re-encode when the reading does not change.
    merged = merge_metadata({"mode": "100644"} | RCLONE, {"atime": "5"}, content_changed=False)
    assert merged["mode"] == "100644"


def rclone_style(mode: int, rdev: int, atime: dt.datetime) -> dict[str, str]:
    return {"mode": format(mode, "o"), "rdev": format(rdev, "x"),
            "atime": atime.isoformat().replace("+00:00", "Z"),
            "btime": "2020-01-01T00:00:00Z", "mtime": "1600000000.25"}


existing_objects = st.one_of(
    st.builds(rclone_style, st.builds(lambda k, p: k | p, st.sampled_from(ALL_TYPES), perms),
              st.integers(1, 2**32),
              st.datetimes(timezones=st.just(dt.timezone.utc))),
    st.builds(lambda m, r, a: {"mode": str(m), "rdev": str(r), "atime": str(a)},
              st.integers(0, 0o177777).filter(valid_mode), st.integers(0, 2**32),
              st.integers(0, 2**40)),
    st.dictionaries(st.sampled_from(KEYS), numberish, max_size=8),
)


@FAST
@given(existing=existing_objects, keys=st.sets(st.sampled_from(
           ["mode", "uid", "gid", "mtime", "ctime", "atime", "rdev"])),
       mode=st.sampled_from(ALL_TYPES), perm=perms, t=times, content_changed=st.booleans())
def test_merge_changes_only_what_ours_sets(existing, keys, mode, perm, t, content_changed):
    full = format_attrs(mode=mode | perm, uid=4, gid=5, mtime_ns=t, ctime_ns=t + 1,
                        atime_ns=t + 2, rdev=77)
    ours = {k: v for k, v in full.items() if k in keys}
    merged = merge_metadata(existing, ours, content_changed=content_changed)
    before, after, written = parse_attrs(existing), parse_attrs(merged), parse_attrs(full)
    # The documented exception: rclone context from btime alone (no readable
    # atime to rewrite), and we write a decimal mode/rdev without an atime.
    if {"mode", "rdev"} & ours.keys() and "atime" not in ours and before.atime_ns is None:
        return
    for field, key in [("mode", "mode"), ("uid", "uid"), ("gid", "gid"), ("mtime_ns", "mtime"),
                       ("ctime_ns", "ctime"), ("atime_ns", "atime"), ("rdev", "rdev")]:
        source = written if key in ours else before
        assert getattr(after, field) == getattr(source, field), field
    assert ("md5chksum" in merged) == ("md5chksum" in existing and not content_changed)


# --------------------------------------------------------------------------
# File types and content types

@pytest.mark.parametrize(("key", "content_type", "mode", "kind"), [
    ("dir/", None, None, stat.S_IFDIR),
    ("dir/", "text/plain", stat.S_IFREG | 0o644, stat.S_IFDIR),       # slash wins
    ("link", "application/octet-stream", 0o120777, stat.S_IFLNK),
    ("fifo", None, stat.S_IFIFO | 0o644, stat.S_IFIFO),
    ("dev", None, stat.S_IFBLK | 0o600, stat.S_IFBLK),
    ("legacy", "application/x-directory", None, stat.S_IFDIR),        # s3fs < 1.63
    ("legacy", "httpd/unix-directory; charset=x", 0o755, stat.S_IFDIR),
    ("legacy", "Application/X-Directory", 493, stat.S_IFDIR),
    ("file", "application/x-directory", stat.S_IFREG | 0o644, stat.S_IFREG),
    ("file", None, 0o644, stat.S_IFREG),
    ("file", "", None, stat.S_IFREG),
])
def test_file_type(key, content_type, mode, kind):
    assert file_type(key, content_type, mode) == kind


def test_object_file_type_knows_geesefs_symlinks():
    link = parse_attrs({SYMLINK_TARGET_KEY: "target"})
    assert object_file_type("l", None, link) == stat.S_IFLNK
    assert object_file_type("l/", None, link) == stat.S_IFDIR
    retyped = parse_attrs({SYMLINK_TARGET_KEY: "target", "mode": "33188"})
    assert object_file_type("l", None, retyped) == stat.S_IFREG
    assert object_file_type("f", None, parse_attrs({})) == stat.S_IFREG


def test_is_directory_content_type():
    assert DIRECTORY_CONTENT_TYPES == {"application/x-directory", "httpd/unix-directory"}
    assert is_directory_content_type(" application/x-directory ; charset=utf-8")
    assert not is_directory_content_type("application/octet-stream")
    assert not is_directory_content_type(None)
    assert not is_directory_content_type("")


@pytest.mark.parametrize(("name", "content_type"), [
    ("a.txt", "text/plain"), ("dir/b.JSON", "application/json"), ("p.jpg", "image/jpeg"),
    ("x.tar.gz", "application/gzip"), ("x.tgz", "application/gzip"), ("x.tar", "application/x-tar"),
    ("notes.txt.orig", "text/plain"),            # s3fs: the second-to-last extension
    (".txt", "text/plain"), ("a.b.c.txt", "text/plain"), ("a.rtf", "application/rtf"),
    ("README", "application/octet-stream"), ("a.", "application/octet-stream"),
    ("a.unknownext", "application/octet-stream"), ("data:image/png,x", "application/octet-stream"),
    ("dir.txt/file", "application/octet-stream"), ("dir/", "application/x-directory"),
])
def test_default_content_type(name, content_type):
    assert default_content_type(name) == content_type


@pytest.mark.parametrize(("stored", "old", "new", "content_type"), [
    ("text/plain", "a.txt", "a.html", "text/html"),          # s3fs: the new name's type
    ("text/plain", "a.txt.tmp", "a.json", "application/json"),
    (None, "a.txt", "b", "application/octet-stream"),
    ("application/octet-stream", "x", "x.png", "image/png"),
    ("application/vnd.custom", "a.txt", "a.html", "application/vnd.custom"),  # set on purpose
    ("text/csv", "report.txt", "report.dat", "text/csv"),
])
def test_renamed_content_type(stored, old, new, content_type):
    assert renamed_content_type(stored, old, new) == content_type


def test_default_content_type_ignores_global_mimetypes_state():
    mimetypes.add_type("text/x-objectfs-test", ".objectfs-test-ext")
    assert default_content_type("a.objectfs-test-ext") == "application/octet-stream"


def test_s3fs_defaults():
    assert (DEFAULT_FILE_PERMS, DEFAULT_DIR_PERMS) == (0o640, 0o750)


# --------------------------------------------------------------------------
# xattrs (interop.md 1.3)

def test_xattr_example_from_interop():
    value = "%7B%22user.foo%22%3A%22YmFy%22%2C%22user.k%22%3A%22AP8%3D%22%7D"
    assert format_xattrs({"user.k": b"\x00\xff", "user.foo": b"bar"}) == value
    assert parse_xattrs(value) == {"user.foo": b"bar", "user.k": b"\x00\xff"}


def test_format_xattrs_encoding_details():
    assert format_xattrs({}) is None
    # Kept: A-Za-z0-9 . - _ ~ /; everything else %XX upper case, UTF-8 bytes.
    assert format_xattrs({"user.a-b_c~d/é": b""}) == "%7B%22user.a-b_c~d/%C3%A9%22%3A%22%22%7D"
    assert format_xattrs({"user.p": b"\xfb\xff"}) == "%7B%22user.p%22%3A%22%2B/8%3D%22%7D"
    with pytest.raises(ValueError):
        format_xattrs({"user.a,b": b"x"})


@pytest.mark.parametrize(("value", "expected"), [
    ('{"user.a":"YQ=="}', {"user.a": b"a"}),                        # not URL-encoded
    ('{ "user.a" : "YQ==" , "user.b":"Yg=="}', {"user.a": b"a", "user.b": b"b"}),
    ('{user.a:YQ==}', {"user.a": b"a"}),                            # quotes optional
    ('{"user.a":"YQ==","bad","user.c":"Y","user.b":"Yg=="}', {"user.a": b"a", "user.b": b"b"}),
    ('{"user.a":"YQ","user.b":"!Y!g!=!=!"}', {"user.a": b"a", "user.b": b"b"}),   # lenient base64
    ('{"user.a":"Y"Q=="}', {}), ('{"":"YQ=="}', {}),
    ("", {}), ("{}", {}), ("}{", {}), ("garbage", {}), ("%7B", {}), ("%zz%", {}), ("{:}", {}),
    ("\udcff{\udcfe}", {}),
])
def test_parse_xattrs_is_tolerant(value, expected):
    assert parse_xattrs(value) == expected


@FAST
@given(st.dictionaries(st.text(min_size=1, max_size=20).filter(valid_xattr_name),
                       st.binary(max_size=40), max_size=6))
def test_xattrs_round_trip(xattrs):
    value = format_xattrs(xattrs)
    if not xattrs:
        assert value is None
        return
    assert value.isascii()
    assert parse_xattrs(value) == xattrs
    # Names in the order of their UTF-8 bytes, as in s3fs's std::map.
    assert list(parse_xattrs(value)) == sorted(xattrs, key=str.encode)


@FAST
@given(st.text())
def test_parse_xattrs_never_raises(value):
    assert isinstance(parse_xattrs(value), dict)


@pytest.mark.parametrize(("name", "ok"), [
    ("user.foo", True), ("user.é €", True), ("security.selinux", True),
    ("", False), ("user.a,b", False), ("user:a", False), ('user."a"', False), ("a\0", False),
])
def test_valid_xattr_name(name, ok):
    assert valid_xattr_name(name) is ok


# --------------------------------------------------------------------------
# Size limit

def test_metadata_size():
    assert METADATA_LIMIT == 2048
    assert metadata_size({}) == 0
    assert metadata_size({"mode": "33188", "uid": "0"}) == 4 + 5 + 3 + 1
    assert metadata_size({"é": "€"}) == 2 + 3
    full = format_attrs(mode=stat.S_IFCHR | 0o7777, uid=2**32 - 1, gid=2**32 - 1,
                        mtime_ns=-(2**62), ctime_ns=-(2**62), atime_ns=-(2**62), rdev=2**64 - 1)
    assert metadata_size(full) < 200       # leaves the rest of 2 KB for xattrs
