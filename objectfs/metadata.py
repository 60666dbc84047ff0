"""POSIX attributes <-> S3 user metadata, in s3fs-fuse's format.

This module is pure: no I/O, no boto3, no FUSE.  Everything here follows
/work/shared/interop.md (section numbers below refer to it).

Principle (6): **write exactly what s3fs writes; read what s3fs, rclone,
geesefs, s3sync and GCS write.**

Every ``metadata`` argument is a boto3-style user-metadata dict: keys in lower
case without the ``x-amz-meta-`` prefix, values ``str``.  Times are integer
nanoseconds since the Unix epoch.

What we write (6.1), e.g. for a 0644 regular file::

    {"mode": "33188", "uid": "1000", "gid": "1000",
     "mtime": "1724312345.123456789", "ctime": "1724312345", "atime": "..."}

``mode`` is the *decimal* full ``st_mode`` including the type bits, times are
s3fs's ``str(timespec)``, and ``rdev`` (decimal, geesefs style) is added for
character and block devices.

Readers of this module never get an exception from a value some other tool
wrote: every parser returns ``None`` for what it cannot read, and
``parse_attrs`` falls back to the next source of the same attribute.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import mimetypes
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote, unquote, unquote_to_bytes

__all__ = [
    "PosixAttrs", "parse_attrs", "parse_mode", "parse_time_ns", "format_time",
    "format_attrs", "merge_metadata", "valid_mode",
    "DIRECTORY_CONTENT_TYPES", "is_directory_content_type", "file_type",
    "object_file_type", "default_content_type",
    "XATTR_KEY", "parse_xattrs", "format_xattrs", "valid_xattr_name",
    "METADATA_LIMIT", "metadata_size",
    "SYMLINK_TARGET_KEY", "format_symlink_target",
    "MD5_KEY", "DEFAULT_FILE_PERMS", "DEFAULT_DIR_PERMS",
]

_T = TypeVar("_T")

# --------------------------------------------------------------------------
# Keys

XATTR_KEY = "xattr"
# geesefs's symlink header (`--symlink-attr`, default name "--symlink-target";
# the header is "x-amz-meta---symlink-target").
SYMLINK_TARGET_KEY = "--symlink-target"
# rclone's base64(MD5) of the body; it overrides the ETag as the object's MD5
# in rclone, so it must not survive a content rewrite (interop.md 2, 6.1).
MD5_KEY = "md5chksum"

# s3fs's permissions for objects that carry no mode at all (`get_mode`, since
# s3fs commit e2d5641d, interop.md 1.1): files 0640, directories 0750.
DEFAULT_FILE_PERMS = 0o640
DEFAULT_DIR_PERMS = 0o750

_NS_PER_S = 1_000_000_000

# S_IFMT as a mask (the stdlib's stat.S_IFMT is a function).
_S_IFMT = 0o170000
# A real st_mode is 16 bits: 4 type bits and 12 permission bits.  Anything
# larger was not written as a mode (e.g. rclone's octal "100644" read as
# decimal), so it is rejected rather than truncated.
_MODE_MAX = 0o177777
_VALID_TYPES = frozenset({0, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFDIR, stat.S_IFBLK,
                          stat.S_IFREG, stat.S_IFLNK, stat.S_IFSOCK})
# uid_t/gid_t are 32-bit unsigned on Linux; dev_t is 64-bit.
_ID_MAX = 2**32 - 1
_RDEV_MAX = 2**64 - 1
# No number we read needs more than 40 characters (2**64 has 20 decimal
# digits; seconds since the epoch up to year 9999 have 12).  The cap also keeps
# int() clear of Python's 4300-digit conversion limit, which raises.
_MAX_DIGITS = 40


def valid_mode(mode: int) -> bool:
    """True if ``mode`` can be a st_mode: at most 0o177777, and its type bits
    are none (s3fs's ``mkdir`` writes modes without them) or a POSIX file type."""
    return 0 <= mode <= _MODE_MAX and (mode & _S_IFMT) in _VALID_TYPES


# --------------------------------------------------------------------------
# Low-level text parsers.  Each takes one string and returns None on anything
# it does not accept; none of them raises.

# strtoll(s, base=0), as s3fs reads mode/uid/gid: "0x" hex, a leading "0"
# octal, else decimal.  s3fs rejects trailing garbage (s3fs_strtoofft), so the
# whole (stripped) string must match.
_BASE0 = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))", re.ASCII)
_OCTAL = re.compile(r"[0-7]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+", re.ASCII)
_HEX = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)", re.ASCII)


def _strtoll_base0(text: str) -> int | None:
    text = text.strip()
    if len(text) > _MAX_DIGITS:
        return None
    m = _BASE0.fullmatch(text)
    if m is None:
        return None
    sign, hex_digits, oct_digits, dec_digits = m.groups()
    if hex_digits is not None:
        value = int(hex_digits, 16)
    elif oct_digits is not None:
        value = int(oct_digits, 8)
    else:
        value = int(dec_digits, 10)
    return -value if sign == "-" else value


def _octal(text: str) -> int | None:
    """rclone's ``%o``: octal digits, no prefix, no sign."""
    text = text.strip()
    if len(text) > _MAX_DIGITS or _OCTAL.fullmatch(text) is None:
        return None
    return int(text, 8)


# "<int>[.<frac>]", optionally signed.  rclone (ncw/swift nsToFloatString)
# writes up to 9 decimals with trailing zeros removed, s3fs always 9 digits
# or none, geesefs an integer.  rclone also reads "1." and ".5", so we do too.
_NUMERIC_TIME = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?", re.ASCII)
# RFC 3339 as Go's time.RFC3339Nano writes it (rclone -M atime/btime):
# "2025-03-04T17:34:22.317069787Z", or with a "+hh:mm" offset.  Go's parser
# accepts any number of fraction digits; so do we (beyond 9 are truncated).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))", re.ASCII)
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


def _fraction_ns(digits: str) -> int:
    """Decimal fraction digits -> ns, padding on the right to 9 digits (so
    rclone's ".5" is half a second) and truncating beyond 9, as rclone's
    floatStringToNs does."""
    return int(digits[:9].ljust(9, "0"))


def _parse_numeric_ns(text: str) -> int | None:
    text = text.strip()
    m = _NUMERIC_TIME.fullmatch(text)
    if m is None:
        return None
    sign, whole, frac = m.groups()
    frac = frac or ""
    if not whole and not frac or len(whole) > _MAX_DIGITS:
        return None
    seconds = int(whole or "0")
    if seconds >= 1 << 63:
        return None  # past what a stat can carry (64-bit seconds): unusable
    nanos = _fraction_ns(frac)
    if sign != "-":
        return seconds * _NS_PER_S + nanos
    # Negative times mean different things to the two writers:
    # - s3fs writes a timespec, "%ld.%09ld" of (tv_sec, tv_nsec) with
    #   tv_sec = floor(t) and 0 <= tv_nsec < 1e9: "-2.500000000" is -1.5 s.
    # - rclone writes "-" + the magnitude: "-1.5" is -1.5 s.
    # s3fs always writes exactly 9 digits and a nonzero tv_sec when negative
    # ("-0.x" cannot be a normalised timespec), so only those strings are read
    # the s3fs way.  A 9-digit negative from rclone ("-1.123456789") is the
    # one case read differently from what rclone meant; pre-1970 times with
    # nanoseconds are rare enough to accept that.
    if len(frac) == 9 and seconds != 0:
        return -seconds * _NS_PER_S + nanos
    return -(seconds * _NS_PER_S + nanos)


def _parse_rfc3339_ns(text: str) -> int | None:
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    # Go's time.Parse rejects a leap second (60), and so do we.
    if hour > 23 or minute > 59 or second > 59:
        return None
    try:
        days = _dt.date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:          # month 13, February 30, year 0000...
        return None
    offset = 0
    if m.group(8) is not None:
        off_hours, off_minutes = int(m.group(9)), int(m.group(10))
        if off_hours > 23 or off_minutes > 59:
            return None
        offset = (off_hours * 3600 + off_minutes * 60) * (1 if m.group(8) == "+" else -1)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    return seconds * _NS_PER_S + _fraction_ns(m.group(7) or "")


def _is_rfc3339(text: str) -> bool:
    return _parse_rfc3339_ns(text) is not None


# geesefs escapes every metadata value on write ("%" -> "%25", non-printable
# runes -> "%XX") and reads it back with Go's url.PathUnescape, which refuses
# a "%" not followed by two hex digits.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _path_unescape(text: str) -> str | None:
    """Go's url.PathUnescape; bytes that are not UTF-8 become lone surrogates
    (``surrogateescape``) so that ``os.fsencode`` gives them back."""
    if _BAD_ESCAPE.search(text):
        return None
    return unquote(text, errors="surrogateescape")


def _spellings(raw: str) -> Iterator[str]:
    """The raw value, then its geesefs-unescaped form if that differs.

    Numbers and timestamps are never changed by geesefs's escaping, so the raw
    value is tried first and "%XX" is decoded only when it fails to parse."""
    yield raw
    if "%" in raw:
        unescaped = _path_unescape(raw)
        if unescaped is not None and unescaped != raw:
            yield unescaped


def _get(metadata: Mapping[str, str], key: str) -> str | None:
    value = metadata.get(key)
    return value if isinstance(value, str) else None


def _first(metadata: Mapping[str, str],
           sources: tuple[tuple[str, Callable[[str], _T | None]], ...]) -> _T | None:
    """The first value that parses, trying ``sources`` (key, parser) in order.

    A key that is present but unparseable falls through to the next source.
    (s3fs would take the present key and read garbage as 0, i.e. root or mode
    0; a fallback that parses is more useful and cannot be worse.)"""
    for key, parser in sources:
        raw = _get(metadata, key)
        if raw is None:
            continue
        for text in _spellings(raw):
            value = parser(text)
            if value is not None:
                return value
    return None


# --------------------------------------------------------------------------
# Who wrote this object?  Needed to read `mode` and `rdev`, whose formats
# clash between s3fs/geesefs (decimal) and rclone -M (octal mode, hex rdev).

def _written_by_rclone(metadata: Mapping[str, str]) -> bool:
    """True if the object's POSIX keys look written by ``rclone -M``.

    rclone -M writes ``mode``, ``atime`` and ``btime`` together, the times as
    RFC 3339 (interop.md 2).  s3fs and ObjectFS write a numeric ``atime`` with
    every mode and keep a foreign ``btime``, so ``atime`` decides when it
    parses: an RFC 3339 ``btime`` next to a numeric ``atime`` means an s3fs-style
    writer rewrote the attributes after rclone.  Only without a readable
    ``atime`` does an RFC 3339 ``btime`` count."""
    atime = _get(metadata, "atime")
    if atime is not None:
        if _parse_numeric_ns(atime) is not None:
            return False
        if _is_rfc3339(atime):
            return True
    btime = _get(metadata, "btime")
    return btime is not None and _is_rfc3339(btime)


# --------------------------------------------------------------------------
# Public parsers

def _parse_mode(text: str, rclone: bool) -> int | None:
    decimal = _strtoll_base0(text)      # s3fs's reading (base 0)
    octal = _octal(text)                # rclone's "%o"
    if decimal is not None and valid_mode(decimal):
        # Both readings valid and different: 10,152 strings (interop.md
        # counts the 2,094 symlink-or-directory ones), e.g. "41777" is an s3fs
        # decimal symlink (0o121461) or an rclone octal sticky directory
        # (0o41777), and "755" is decimal 0o1363 or octal 0o755.  s3fs and
        # geesefs (and we) write decimal, so decimal wins unless the object
        # carries rclone's RFC 3339 context.  Even then the octal reading must
        # have type bits: rclone writes "%o" of a real st_mode, which always
        # has them, so a short string such as "755" is never rclone's.
        if (rclone and octal is not None and octal != decimal and valid_mode(octal)
                and octal & _S_IFMT):
            return octal
        return decimal
    # rclone's octal guard (interop.md 6.2.2): "100644" is 0o100644, not the
    # impossible decimal 100644.
    if octal is not None and valid_mode(octal):
        return octal
    return None


def parse_mode(value: str, context: Mapping[str, str] | None = None) -> int | None:
    """Read an ``x-amz-meta-mode`` value written by s3fs, geesefs or rclone.

    Returns the full st_mode (type bits included when stored), or None when
    the value is not a valid mode (see ``valid_mode``).  Reading, in order:

    - s3fs's base 0 (decimal; a leading ``0`` means octal, ``0x`` hex);
    - if that is not a valid mode and the string has only the digits 0-7,
      octal (rclone writes ``%o``: ``100644``, ``40755``);
    - if both readings are valid modes and differ, decimal, unless
      ``context`` (the object's whole user metadata) shows that rclone wrote
      it (see ``_written_by_rclone``) and the octal reading has type bits.

    For every REG, DIR or LNK mode without setuid/setgid/sticky, both
    ``str(mode)`` and ``format(mode, "o")`` read back as ``mode`` without
    context.  Never raises; the value is not percent-unescaped here
    (``parse_attrs`` does that)."""
    if not isinstance(value, str):
        return None
    rclone = context is not None and isinstance(context, Mapping) and _written_by_rclone(context)
    return _parse_mode(value, rclone)


def parse_time_ns(value: str) -> int | None:
    """Read a timestamp written by s3fs, rclone, geesefs or rclone -M.

    Accepts ``<int>[.<frac>]`` (optionally signed): the fraction is padded on
    the right to 9 digits, so rclone's ``1700000000.5`` is 0.5 s past the
    second (s3fs itself would misread it as 5 ns), and digits beyond 9 are
    truncated.  A negative value with exactly 9 fraction digits and nonzero
    seconds is s3fs's timespec (``-2.500000000`` is -1.5 s); other negatives
    are rclone's sign-and-magnitude (``-1.5`` is -1.5 s).  Also accepts RFC
    3339 with ``Z`` or an offset (rclone -M atime/btime).  Returns ns since the
    epoch, or None for anything else.  Never raises."""
    if not isinstance(value, str):
        return None
    ns = _parse_numeric_ns(value)
    return ns if ns is not None else _parse_rfc3339_ns(value)


def _parse_id(text: str) -> int | None:
    value = _strtoll_base0(text)
    return value if value is not None and 0 <= value <= _ID_MAX else None


def _parse_permissions(text: str) -> int | None:
    """s3sync's ``permissions``: base 0, like s3fs reads it."""
    value = _strtoll_base0(text)
    return value if value is not None and valid_mode(value) else None


def _parse_goog_mode(text: str) -> int | None:
    """GCS's ``goog-reserved-posix-mode``: octal, as s3fs reads it."""
    value = _octal(text)
    return value if value is not None and valid_mode(value) else None


def _parse_rdev(text: str, rclone: bool) -> int | None:
    """geesefs writes decimal, rclone -M ``%x`` without a prefix.  ``0x`` is
    hex for everyone.  Without rclone context a bare string of digits is
    decimal; one with a letter a-f can only be rclone's hex, so it is read as
    hex too."""
    text = text.strip()
    if len(text) > _MAX_DIGITS:
        return None
    if text[:2] in ("0x", "0X") or rclone or _DECIMAL.fullmatch(text) is None:
        m = _HEX.fullmatch(text)
        value = int(m.group(1), 16) if m else None
    else:
        value = int(text, 10)
    return value if value is not None and value <= _RDEV_MAX else None


@dataclass(frozen=True, slots=True)
class PosixAttrs:
    """POSIX attributes found in an object's user metadata.

    Each field is None when no source for it was present or parseable; the
    caller applies defaults (``DEFAULT_FILE_PERMS``, the mounting user,
    Last-Modified...)."""

    mode: int | None        # full st_mode as stored (type bits only if stored)
    uid: int | None
    gid: int | None
    mtime_ns: int | None
    ctime_ns: int | None
    atime_ns: int | None
    rdev: int | None
    symlink_target: str | None   # geesefs "--symlink-target", percent-unescaped


def parse_attrs(metadata: Mapping[str, str]) -> PosixAttrs:
    """Read the POSIX attributes of an object from its user metadata.

    Sources, first parseable wins (interop.md 6.2):

    - mode: ``mode`` (``parse_mode``, with the object as context), else
      ``permissions`` (s3sync, base 0), else ``goog-reserved-posix-mode``
      (GCS, octal);
    - uid/gid: ``uid``/``gid`` (base 0), else ``owner``/``group``, else
      ``goog-reserved-posix-uid``/``-gid``; 0..2**32-1;
    - mtime: ``mtime``, else ``goog-reserved-file-mtime``; atime and ctime:
      ``atime``/``ctime``; all by ``parse_time_ns``;
    - rdev: ``rdev``, decimal, ``0x`` hex, or hex when rclone wrote it;
    - symlink_target: ``--symlink-target``, percent-unescaped (kept raw if it
      holds an invalid escape).

    Values that do not parse raw are retried after geesefs's percent
    unescaping.  Never raises on any input; what cannot be read is None."""
    if not isinstance(metadata, Mapping):
        metadata = {}
    rclone = _written_by_rclone(metadata)
    mode = _first(metadata, (("mode", lambda t: _parse_mode(t, rclone)),
                             ("permissions", _parse_permissions),
                             ("goog-reserved-posix-mode", _parse_goog_mode)))
    uid = _first(metadata, (("uid", _parse_id), ("owner", _parse_id),
                            ("goog-reserved-posix-uid", _parse_id)))
    gid = _first(metadata, (("gid", _parse_id), ("group", _parse_id),
                            ("goog-reserved-posix-gid", _parse_id)))
    mtime = _first(metadata, (("mtime", parse_time_ns),
                              ("goog-reserved-file-mtime", parse_time_ns)))
    ctime = _first(metadata, (("ctime", parse_time_ns),))
    atime = _first(metadata, (("atime", parse_time_ns),))
    rdev = _first(metadata, (("rdev", lambda t: _parse_rdev(t, rclone)),))
    target = _get(metadata, SYMLINK_TARGET_KEY)
    if target is not None:
        unescaped = _path_unescape(target)
        target = unescaped if unescaped is not None else target
    return PosixAttrs(mode=mode, uid=uid, gid=gid, mtime_ns=mtime, ctime_ns=ctime,
                      atime_ns=atime, rdev=rdev, symlink_target=target)


# --------------------------------------------------------------------------
# Writing

def format_time(ns: int) -> str:
    """s3fs's ``str(timespec)``: ``"<sec>"`` when the nanoseconds are 0, else
    ``"<sec>.<nsec:09d>"``, with sec = floor(ns / 1e9) and 0 <= nsec < 1e9
    (a normalised timespec, so -1 ns is ``"-1.999999999"``).

    Always 9 digits, because s3fs reads the fraction as an integer number of
    nanoseconds; the integer form for whole seconds keeps geesefs
    ``--enable-mtime`` (which rejects fractions) working."""
    seconds, nanos = divmod(ns, _NS_PER_S)
    return f"{seconds}" if nanos == 0 else f"{seconds}.{nanos:09d}"


def format_attrs(*, mode: int, uid: int, gid: int, mtime_ns: int, ctime_ns: int,
                 atime_ns: int, rdev: int | None = None) -> dict[str, str]:
    """The user metadata we write for an object's POSIX attributes.

    Returns ``mode`` (decimal full st_mode, e.g. ``"33188"``), ``uid``, ``gid``
    (decimal), ``mtime``, ``ctime``, ``atime`` (``format_time``), plus ``rdev``
    (decimal, as geesefs writes it; s3fs ignores it) only for character and
    block devices with a nonzero rdev.  All values are ASCII.

    Raises ValueError if ``mode`` has no file type bits or is not a valid
    mode (FUSE's mkdir mode lacks S_IFDIR: the caller must add it, because
    s3fs types an object by these bits first), if uid/gid is outside
    0..2**32-1, or if rdev is negative or over 64 bits."""
    if not valid_mode(mode) or not mode & _S_IFMT:
        raise ValueError(f"not a st_mode with a file type: {mode:#o}")
    for name, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value <= _ID_MAX:
            raise ValueError(f"{name} out of range: {value}")
    out = {"mode": str(mode), "uid": str(uid), "gid": str(gid),
           "mtime": format_time(mtime_ns), "ctime": format_time(ctime_ns),
           "atime": format_time(atime_ns)}
    if rdev and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        if not 0 <= rdev <= _RDEV_MAX:
            raise ValueError(f"rdev out of range: {rdev}")
        out["rdev"] = str(rdev)
    return out


def format_symlink_target(target: str) -> str:
    """The value of geesefs's ``--symlink-target`` header for ``target`` (only
    written on opt-in, interop.md 6.1).

    Printable ASCII except ``%`` and space is kept; every other byte of the
    target's UTF-8 (``surrogateescape`` for non-UTF-8 names) becomes ``%XX``.
    That is geesefs's own escaping made stricter: boto3 refuses non-ASCII
    metadata, and HTTP trims leading and trailing spaces of header values.
    ``parse_attrs`` reads it back exactly."""
    raw = target.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in raw)


def _drop(metadata: dict[str, str], key: str) -> None:
    for k in [k for k in metadata if k.lower() == key]:
        del metadata[k]


def merge_metadata(existing: Mapping[str, str], ours: Mapping[str, str | None], *,
                   content_changed: bool) -> dict[str, str]:
    """The user metadata to send when we rewrite an object's metadata or body.

    Starts from every key of ``existing`` (foreign ones included, as s3fs's
    chmod/chown/utimens and uploads do, interop.md 1.7) and overwrites them
    with ``ours``; a None value in ``ours`` removes that key (e.g. ``xattr``
    when the set became empty, as s3fs does).  Keys compare case-insensitively.
    Also:

    - ``content_changed`` drops ``md5chksum`` (rclone takes it as the MD5 over
      the ETag, so a stale one makes rclone report wrong hashes) and geesefs's
      ``--symlink-target`` (it describes the old body), unless ``ours`` sets it;
    - a ``mode`` in ``ours`` whose type is not S_IFLNK drops
      ``--symlink-target`` (geesefs would keep showing a symlink);
    - keys ``ours`` does not set keep the value they read as before: see
      ``_keep_readings``.

    Fallback keys for attributes we overwrite (``permissions``, ``owner``,
    ``group``, ``goog-reserved-posix-mode/uid/gid``,
    ``goog-reserved-file-mtime``) are **kept**.  s3fs reads ``mode`` before
    ``permissions`` before ``goog-reserved-posix-mode`` (and likewise
    uid/owner/goog uid, mtime/goog mtime; interop.md 1.1), and so does
    ``parse_attrs``; since we always write the primary key, a stale fallback is
    never read by s3fs or us, while s3sync and GCS still find their own keys.
    ``btime`` (rclone's birth time) is informational and kept."""
    replaced = {k.lower() for k in ours}
    merged = {k: v for k, v in existing.items() if k.lower() not in replaced}
    if content_changed:
        _drop(merged, MD5_KEY)
        _drop(merged, SYMLINK_TARGET_KEY)
    new_mode = ours.get("mode")
    if new_mode is not None:
        mode = _parse_mode(new_mode, False)
        if mode is not None and not stat.S_ISLNK(mode):
            _drop(merged, SYMLINK_TARGET_KEY)
    merged.update((k, v) for k, v in ours.items() if v is not None)
    _keep_readings(existing, ours, merged)
    return merged


def _keep_readings(existing: Mapping[str, str], ours: Mapping[str, str | None],
                   merged: dict[str, str]) -> None:
    """Make every attribute ``ours`` does not set read as it did in ``existing``.

    ``mode`` and ``rdev`` are read in the context of ``atime``/``btime``
    (``_written_by_rclone``), so a merge can change how an untouched value
    reads:

    - We write decimal ``mode``/``rdev``.  If ``ours`` has one of them but no
      ``atime`` and the object keeps rclone's RFC 3339 ``atime``, our decimal
      would be read as rclone's octal/hex.  So that ``atime`` is rewritten
      as the same instant in s3fs's numeric form (which s3fs can read; it
      reads RFC 3339 as 0).  Not fixable: an object with an RFC 3339 ``btime``
      and no ``atime`` at all (rclone always writes atime, so unlikely).
    - If the context still flips (e.g. ``ours`` writes a numeric ``atime`` on
      an rclone object), a ``mode``/``rdev`` we do not overwrite is re-encoded
      so that it reads the same value in the new context.
    """
    wrote_decimal = any(ours.get(k) is not None for k in ("mode", "rdev"))
    if wrote_decimal and "atime" not in ours and _written_by_rclone(merged):
        atime = _first(existing, (("atime", parse_time_ns),))
        if atime is not None:
            _drop(merged, "atime")
            merged["atime"] = format_time(atime)
    before, after = _written_by_rclone(existing), _written_by_rclone(merged)
    if before == after:
        return
    if "mode" not in ours:
        old = _first(existing, (("mode", lambda t: _parse_mode(t, before)),))
        new = _first(merged, (("mode", lambda t: _parse_mode(t, after)),))
        if old is not None and new != old:
            _drop(merged, "mode")
            # In rclone context an octal string with type bits reads as octal;
            # decimal reads as decimal everywhere else.
            merged["mode"] = format(old, "o") if after and old & _S_IFMT else str(old)
    if "rdev" not in ours:
        old = _first(existing, (("rdev", lambda t: _parse_rdev(t, before)),))
        new = _first(merged, (("rdev", lambda t: _parse_rdev(t, after)),))
        if old is not None and new != old:
            _drop(merged, "rdev")
            merged["rdev"] = f"0x{old:x}" if after else str(old)


# --------------------------------------------------------------------------
# File types and content types

# What s3fs recognises as a directory Content-Type (interop.md 1.1, 1.4).
DIRECTORY_CONTENT_TYPES = frozenset({"application/x-directory", "httpd/unix-directory"})


def is_directory_content_type(content_type: str | None) -> bool:
    """True for a directory Content-Type, ignoring ``;params``, case and
    surrounding blanks."""
    if not isinstance(content_type, str):
        return False
    return content_type.split(";", 1)[0].strip().lower() in DIRECTORY_CONTENT_TYPES


def file_type(key: str, content_type: str | None, mode: int | None) -> int:
    """The S_IFMT type of an object (interop.md 6.2.1).

    A key ending in ``/`` is a directory whatever its size, Content-Type or
    mode; else the type bits of ``mode`` (as returned by ``parse_attrs``) if
    nonzero; else a directory Content-Type makes a directory (the legacy
    no-slash "dir" object of s3fs < 1.63); else a regular file."""
    if key.endswith("/"):
        return stat.S_IFDIR
    if mode is not None and mode & _S_IFMT:
        return mode & _S_IFMT
    if is_directory_content_type(content_type):
        return stat.S_IFDIR
    return stat.S_IFREG


def object_file_type(key: str, content_type: str | None, attrs: PosixAttrs) -> int:
    """``file_type`` plus geesefs symlinks: an object whose mode has no type
    bits but which carries ``--symlink-target`` is a symlink (geesefs stores no
    mode unless ``--enable-perms``).  The mode's type bits still win: s3fs
    rewriting a geesefs symlink writes a regular-file mode and keeps the
    header, and s3fs is our reference."""
    kind = file_type(key, content_type, attrs.mode)
    if (attrs.symlink_target is not None and not key.endswith("/")
            and (attrs.mode is None or not attrs.mode & _S_IFMT)):
        return stat.S_IFLNK
    return kind


# Compressed formats: Python's table lists ".gz" etc. as *encodings* (so
# guess_type("a.tar.gz") says application/x-tar), but S3 serves the stored
# bytes as they are and we set no Content-Encoding, so the type must describe
# the compressed file, as /etc/mime.types does for s3fs (application/gzip,
# RFC 6713; application/zstd, RFC 8878).
_COMPRESSED_TYPES = {
    ".gz": "application/gzip", ".tgz": "application/gzip",
    ".bz2": "application/x-bzip2", ".xz": "application/x-xz",
    ".z": "application/x-compress", ".zst": "application/zstd",
}


@functools.cache
def _mime_table() -> dict[str, str]:
    """Extension (lower case, with the dot) -> type, built once, on first use.

    ``mimetypes.MimeTypes()`` fills its own maps from Python's built-in table
    only, so the result depends on the Python version and not on the host's
    /etc/mime.types (which is what s3fs reads; mounts on different hosts must
    not write different Content-Types).  Its constructor does run the
    module-level ``mimetypes.init()`` once, which reads those files into the
    *global* maps; we never use them.  The non-strict table (e.g. .rtf, .mid)
    is included because s3fs's mime.types knows those too; strict entries win
    (.jpg is image/jpeg)."""
    mime = mimetypes.MimeTypes()
    table = dict(mime.types_map[False])     # [False] is non-strict, [True] strict
    table.update(mime.types_map[True])
    table.update(_COMPRESSED_TYPES)
    return table


def default_content_type(name: str) -> str:
    """The Content-Type to store for a new object named ``name`` (a key or a
    file name).

    Like s3fs's ``LookupMimeType``: ``application/x-directory`` for a name
    ending in ``/``; else the type of the last extension of the last path
    component, else of the one before it (``notes.txt.orig`` is text/plain),
    else ``application/octet-stream``.  Extensions compare case-insensitively
    against Python's built-in table (see ``_mime_table``).  Unlike
    ``mimetypes.guess_type`` it never parses the name as a URL (a file named
    ``data:image/png,x`` is not a data URL) and types ``a.tar.gz`` by its last
    extension (application/gzip)."""
    if name.endswith("/"):
        return "application/x-directory"
    extensions = name.rsplit("/", 1)[-1].split(".")[1:]
    table = _mime_table()
    for ext in extensions[::-1][:2]:
        content_type = table.get("." + ext.lower())
        if content_type is not None:
            return content_type
    return "application/octet-stream"


def renamed_content_type(content_type: str | None, old_name: str, new_name: str) -> str | None:
    """The Content-Type of a file renamed from ``old_name`` to ``new_name``:
    the new name's, as s3fs stores, when the old one was its name's default
    (``notes.txt`` renamed ``notes.html`` becomes text/html); a type another
    tool set on purpose (not its name's default) is kept."""
    if content_type is None or content_type == default_content_type(old_name):
        return default_content_type(new_name)
    return content_type


# --------------------------------------------------------------------------
# Extended attributes: s3fs's x-amz-meta-xattr (interop.md 1.3)

# s3fs's parser splits the JSON-like value on "," and on ":" and strips '"',
# so names holding any of them cannot be read back.  NUL cannot come from the
# kernel (names are C strings), and is refused in case a caller passes one.
_XATTR_NAME_FORBIDDEN = frozenset(',:"\0')


def valid_xattr_name(name: str) -> bool:
    """True if s3fs's xattr format can store ``name``: non-empty, without
    ``,`` ``:`` ``"`` or NUL."""
    return isinstance(name, str) and bool(name) and not _XATTR_NAME_FORBIDDEN.intersection(name)


def xattr_name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def format_xattrs(xattrs: Mapping[str, bytes]) -> str | None:
    """The ``xattr`` metadata value for ``xattrs``, byte for byte as s3fs
    writes it; None for an empty set (s3fs then removes the header).

    ``{"<name>":"<base64(value)>",...}`` with names sorted by their UTF-8
    bytes (s3fs's std::map), standard base64 with padding, then the whole
    string URL-encoded like s3fs's ``urlEncodePath``: ``A-Za-z0-9 . - _ ~ /``
    kept, every other byte ``%XX`` in upper-case hex.  Names that are not
    UTF-8 travel as ``surrogateescape`` strings.  Raises ValueError for a name
    ``valid_xattr_name`` refuses.  The caller checks the result against
    ``METADATA_LIMIT``."""
    if not xattrs:
        return None
    parts = []
    for name in sorted(xattrs, key=xattr_name_bytes):
        if not valid_xattr_name(name):
            raise ValueError(f"xattr name not storable in s3fs format: {name!r}")
        value = base64.b64encode(bytes(xattrs[name])).decode("ascii")
        parts.append(f'"{name}":"{value}"')
    text = "{" + ",".join(parts) + "}"
    # quote() keeps A-Za-z0-9 and "_.-~" always, plus `safe`; upper-case hex.
    return quote(text.encode("utf-8", "surrogateescape"), safe="/")


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")


def _takeout_dquotes(text: str) -> str | None:
    """s3fs's ``takeout_str_dquart``: the text between the first and the last
    ``"``, which must hold no other ``"``; text without quotes as it is."""
    first = text.find('"')
    if first < 0:
        return text
    rest = text[first + 1:]
    last = rest.rfind('"')
    if last < 0 or '"' in rest[:last]:
        return None
    return rest[:last]


def parse_xattrs(value: str) -> dict[str, bytes]:
    """Read an ``xattr`` metadata value written by s3fs (or ``format_xattrs``).

    URL-decodes it, takes the text between the first ``{`` and the last
    ``}``, splits it on ``,``, each pair on its last ``:``, strips the quotes
    and base64-decodes the value.  Like s3fs, a malformed pair is skipped and
    the others kept; a value that is not of this form gives ``{}``.  Names come
    back as ``surrogateescape`` strings.  Never raises."""
    if not isinstance(value, str):
        return {}
    raw = unquote_to_bytes(value.encode("utf-8", "surrogatepass"))
    text = raw.decode("utf-8", "surrogateescape")
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return {}
    result: dict[str, bytes] = {}
    for pair in text[start + 1:end].split(","):
        sep = pair.rfind(":")
        if sep < 0:
            continue
        name, encoded = _takeout_dquotes(pair[:sep]), _takeout_dquotes(pair[sep + 1:])
        if name is None or encoded is None or not valid_xattr_name(name):
            continue
        # Lenient like s3fs's decoder: characters outside the alphabet are
        # ignored and missing "=" padding is supplied.
        encoded = _NOT_BASE64.sub("", encoded)
        try:
            result[name] = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):    # e.g. a single leftover character
            continue
    return result


# --------------------------------------------------------------------------
# Size limit

# AWS: "Within the PUT request header, the user-defined metadata is limited to
# 2 KB in size.  The size of user-defined metadata is measured by taking the
# sum of the number of bytes in the UTF-8 encoding of each key and value."
# It bounds x-amz-meta-xattr (refuse with E2BIG/ENOSPC beyond it, 6.1).
METADATA_LIMIT = 2048


def metadata_size(metadata: Mapping[str, str]) -> int:
    """Bytes of user metadata as S3 counts them against ``METADATA_LIMIT``.

    The sum of the UTF-8 lengths of every key and value.  Assumption (not
    verified against AWS): the key is counted as boto3 gives it, *without*
    the ``x-amz-meta-`` prefix.  Lone surrogates count as 3 bytes each
    (never raises); boto3 refuses to send non-ASCII anyway."""
    return sum(len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
               for k, v in metadata.items())
