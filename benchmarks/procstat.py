"""CPU time and peak RSS of a daemon and its descendants, from /proc.

CPU is utime+stime+cutime+cstime summed over the process and its live
descendants, so a delta between two snapshots counts threads, live children
and children that exited (and were reaped) in between.  Peak RSS is VmHWM,
which ``reset_peak`` sets back to the current RSS (``clear_refs`` value 5),
so a peak read after a workload belongs to that workload.
"""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses
    return s[s.rindex(")") + 2:].split()


def _snapshot() -> dict[int, list[str]]:
    """The stat fields of every process, from one pass over /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f is not None:
                out[int(name)] = f
    return out


def tree(pid: int, snapshot: dict[int, list[str]] | None = None) -> list[int]:
    """``pid`` and all its descendants that are alive now (or in ``snapshot``)."""
    snap = _snapshot() if snapshot is None else snapshot
    children: dict[int, list[int]] = {}
    for p, f in snap.items():
        children.setdefault(int(f[1]), []).append(p)  # field 1: ppid
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    return cpu_seconds_all([pid])


def cpu_seconds_all(pids: list[int]) -> float:
    """``cpu_seconds`` summed over several process trees (a server made of
    several daemons), from one pass over /proc: a reading is taken between
    an operation and the poll that times its durability, so it must be
    cheap."""
    if not pids:
        return 0.0
    snap = _snapshot()
    seen: set[int] = set()
    for pid in pids:
        seen.update(tree(pid, snap))
    # fields after ")": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
    total = sum(int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
                for f in (snap.get(p) for p in seen) if f is not None)
    return total / _TICK


def reset_peak(pid: int) -> None:
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_rss_kb(pid: int) -> int:
    """Sum of VmHWM over the tree (an upper bound of the tree's combined peak)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total
