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


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        f = _stat_fields(p)
        if f is None:
            continue
        # fields after ")": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / _TICK


def cpu_seconds_all(pids: list[int]) -> float:
    """``cpu_seconds`` summed over several process trees (a server made of
    several daemons)."""
    return sum(cpu_seconds(p) for p in pids)


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
