"""How S3 keys map to POSIX names, and back.

A directory at path ``a/b`` is the key prefix ``a/b/`` (plus, optionally, a
zero-byte marker object with exactly that key); a file is the key ``a/b``.
The mount root is the bucket (key prefix ``""``) or ``PREFIX/``.

S3 keys may hold components no POSIX directory can: empty ones (``a//b``),
``.`` and ``..``, names with NUL, and names longer than 255 bytes (the Linux
NAME_MAX that tools assume, although FUSE would pass up to 1024).  Such keys
are hidden, never crash a listing, and are logged once per key.  Names from
the kernel must be UTF-8 because S3 keys are: anything else is EINVAL.
"""

from __future__ import annotations

import logging

from ..errors import InvalidArgument, NameTooLong
from ..store.base import MAX_KEY_BYTES

log = logging.getLogger(__name__)

NAME_MAX = 255
# s3fs's legacy (pre-1.63) and other tools' directory placeholder suffix.
FOLDER_SUFFIX = "_$folder$"

# Keys already logged as hidden.  A bucket can hold millions of them: after
# this many, further ones are not logged at all (one line says so), so the
# log and this set stay bounded and nothing is logged at every listing.
_logged_skips: set[str] = set()
_MAX_LOGGED_SKIPS = 10_000


def valid_component(name: str) -> bool:
    """True if ``name`` can be a POSIX directory entry."""
    return (name not in ("", ".", "..") and "/" not in name and "\0" not in name
            and len(name.encode("utf-8", "surrogatepass")) <= NAME_MAX)


def skip(key: str, why: str) -> None:
    """Log (once per key, for the first _MAX_LOGGED_SKIPS keys) that a key
    cannot be shown."""
    if key in _logged_skips or len(_logged_skips) > _MAX_LOGGED_SKIPS:
        return
    _logged_skips.add(key)
    if len(_logged_skips) > _MAX_LOGGED_SKIPS:
        log.warning("more than %d keys hidden: further ones are not logged",
                    _MAX_LOGGED_SKIPS)
        return
    log.warning("hiding key %r: %s", key, why)


def name_from_kernel(raw: bytes) -> str:
    """Decode a name the kernel passed us (never contains '/' or NUL)."""
    if len(raw) > NAME_MAX:
        raise NameTooLong(f"name over {NAME_MAX} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("name is not valid UTF-8; S3 keys are UTF-8") from None


def name_to_kernel(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def file_key(dir_prefix: str, name: str) -> str:
    """Key of entry ``name`` in the directory whose key prefix is ``dir_prefix``."""
    return dir_prefix + name


def dir_prefix(key: str) -> str:
    """Key prefix of the directory stored at ``key`` (no trailing slash)."""
    return key + "/"


def check_key(key: str) -> str:
    """Refuse keys S3 would refuse (over 1024 UTF-8 bytes): ENAMETOOLONG."""
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise NameTooLong(f"key over {MAX_KEY_BYTES} bytes")
    return key


def normalise_prefix(prefix: str) -> str:
    """The mount PREFIX as a key prefix: no leading slash, one trailing slash.

    Raises InvalidArgument for prefixes with empty, ``.`` or ``..`` parts.
    """
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    parts = prefix.split("/")
    for p in parts:
        if not valid_component(p):
            raise InvalidArgument(f"invalid component {p!r} in prefix")
    return prefix + "/"


def key_before(key: str) -> str:
    """A ListObjectsV2 StartAfter that lists from ``key`` on: a string just
    before it, with no key between them but ones holding U+10FFFF (a
    noncharacter) or NUL, or, for a key within 4 bytes of the longest,
    longer keys that start like it.  S3 orders keys by their UTF-8 bytes,
    which is Python's order of the strings."""
    c = ord(key[-1])
    if c <= 1:
        return key[:-1]
    c -= 1
    if 0xD800 <= c <= 0xDFFF:
        c = 0xD7FF  # surrogates are not in UTF-8 keys
    before = key[:-1] + chr(c)
    top = "\U0010FFFF"
    if len(before.encode("utf-8")) + len(top.encode("utf-8")) <= MAX_KEY_BYTES:
        before += top
    return before


def entry_from_listing(dir_prefix_: str, key: str) -> tuple[str, bool] | None:
    """Map a listed key (or common prefix) to (name, is_dir_marker_or_prefix).

    Returns None for the directory's own marker and for keys that cannot be
    shown (logged).  ``key`` must start with ``dir_prefix_``.
    """
    rest = key[len(dir_prefix_):]
    if rest == "":
        return None  # the directory's own marker "dir/"
    is_dir = rest.endswith("/")
    name = rest[:-1] if is_dir else rest
    if not valid_component(name):
        skip(key, "not a valid POSIX name (empty, '.', '..', NUL or over 255 bytes)")
        return None
    return name, is_dir
