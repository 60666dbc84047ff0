"""Reading the kernel's mount table without touching the mounts themselves.

A stat() of a hung or dead FUSE mountpoint can block or fail, so whether a
path is mounted is decided from /proc/self/mountinfo alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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


def canonical(path: str) -> str:
    """``path`` made absolute with its parent's symlinks resolved, without
    looking at ``path`` itself: a stat() of a mountpoint is answered by its
    daemon, which may be hung, dead, or the very process asking."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def find(mountpoint: str) -> MountEntry | None:
    """The (topmost) mount on ``mountpoint``, or None."""
    mp = canonical(mountpoint)
    found = None
    for e in entries():
        if e.mountpoint == mp:
            found = e
    return found

