"""Reading the kernel's mount table without touching the mounts themselves.

A stat() of a hung or dead FUSE mountpoint can block or fail, so whether a
path is mounted is decided from /proc/self/mountinfo alone.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    dev: str          # "major:minor"; for FUSE the minor names /sys/fs/fuse/connections/N
    fstype: str       # e.g. "fuse.objectfs"
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def entries() -> list[MountEntry]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            out.append(MountEntry(mountpoint=_unescape(parts[4]), dev=parts[2],
                                  fstype=parts[sep + 1], source=_unescape(parts[sep + 2]),
                                  options=parts[5] + "," + parts[sep + 3]))
    return out


MAX_SYMLINKS = 40


def canonical(path: str, mounts: list[MountEntry] | None = None) -> str:
    """``path`` made absolute with its symlinks resolved, without a stat()
    of anything on a FUSE mount or of a mountpoint: such a stat is answered
    by the mount's daemon, which may be hung, dead, or the very process
    asking.  From a FUSE mountpoint on, names are taken as they are.
    ``mounts``: the entries already read, if the caller has them."""
    fuse = {e.mountpoint for e in (entries() if mounts is None else mounts)
            if e.fstype.startswith("fuse")}
    todo = [n for n in os.path.abspath(path).split("/") if n]
    todo.reverse()
    out, inside, links = "/", False, 0
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            out = os.path.dirname(out)
            continue
        candidate = os.path.join(out, name)
        if inside or candidate in fuse or not os.path.islink(candidate):
            inside = inside or candidate in fuse
            out = candidate
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise UserError(f"{path}: {os.strerror(errno.ELOOP)}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            out = "/"
        todo.extend(reversed([n for n in target.split("/") if n]))
    return out


def find(mountpoint: str) -> MountEntry | None:
    """The (topmost) mount on ``mountpoint``, or None."""
    mounts = entries()
    mp = canonical(mountpoint, mounts)
    found = None
    for e in mounts:
        if e.mountpoint == mp:
            found = e
    return found

