"""``objectfs cache stats|warm|pin|unpin|evict``: the client side.

Each command finds the mount holding its path (``control.mount_of``) and
talks to that daemon over its control socket.  ``warm`` (and ``pin``, which
warms what it pins) walks the tree here, through the mount, and asks the
daemon for one chunk of one file at a time: on a terminal a progress bar
is redrawn on stderr, otherwise one line per file is printed.  Ctrl-C stops
after the chunk in flight; every block already stored stays valid.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

from .. import control
from ..errors import UserError


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _files(path: str) -> list[tuple[str, int]]:
    """Regular files at or under ``path`` with their sizes (symlinks skipped)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return [(path, st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        return []
    out = []
    for top, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            p = os.path.join(top, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((p, st.st_size))
    return out


class Progress:
    """A one-line bar on a terminal; nothing until done otherwise."""

    def __init__(self, total: int, files: int, out=None):
        self.total, self.files = total, files
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.done = self.fetched = self.files_done = 0
        self._drawn = 0.0

    def update(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        self.out.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {human(self.done)} / "
                       f"{human(self.total)}  {self.files_done}/{self.files} files ")
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.update(force=True)
            self.out.write("\n")
            self.out.flush()


def warm(paths: list[str]) -> int:
    todo = []
    for p in paths:
        entry, _ = control.mount_of(p)
        for f, size in _files(p):
            _, rel = control.mount_of(f)
            todo.append((entry.mountpoint, f, rel, size))
    progress = Progress(sum(t[3] for t in todo), len(todo))
    failed = 0
    kept_total = 0
    try:
        for mountpoint, f, rel, size in todo:
            offset, fetched, kept = 0, 0, 0
            try:
                while True:
                    r = control.request(mountpoint, {"op": "cache_warm", "path": rel,
                                                     "offset": offset})
                    if r.get("skipped"):
                        raise UserError(r["skipped"])
                    fetched += r.get("fetched", 0)
                    # (a daemon older than this command does not say)
                    kept += r.get("cached", r["next"] - offset)
                    progress.done += r["next"] - offset
                    progress.update()
                    if r["next"] <= offset or r["next"] >= r["size"]:
                        break
                    offset = r["next"]
            except UserError as e:
                failed += 1
                progress.finish()
                print(f"objectfs: cannot warm {f}: {e}", file=sys.stderr)
                continue
            progress.fetched += fetched
            kept_total += kept
            if kept < r["size"]:
                failed += 1
                progress.finish()
                print(f"objectfs: {f}: only {human(kept)} of {human(r['size'])} fit in the "
                      "local tier (cache_size, beside pinned data)", file=sys.stderr)
            else:
                progress.files_done += 1
            if not progress.tty:
                print(f"warmed {f} ({human(size)}, {human(fetched)} fetched from S3, "
                      f"{human(kept)} kept)", flush=True)
            progress.update()
    except KeyboardInterrupt:
        progress.finish()
        print(f"objectfs: interrupted; {human(progress.done)} of {human(progress.total)} "
              "warmed (what is cached stays cached)", file=sys.stderr)
        return 130
    progress.finish()
    print(f"objectfs: {progress.files_done} of {len(todo)} file(s) wholly in the local tier, "
          f"{human(kept_total)} kept ({human(progress.fetched)} fetched from S3)")
    return 1 if failed else 0


def stats(mountpoint: str, as_json: bool) -> int:
    entry, _ = control.mount_of(mountpoint)
    s = control.request(entry.mountpoint, {"op": "cache_stats"}, timeout=control.QUICK)
    s.pop("ok", None)
    if as_json:
        print(json.dumps(s, indent=1, sort_keys=True))
        return 0
    limit = s["limit"] or 1
    print(f"local tier:   {s['dir']} (compression: {s['compress']})")
    print(f"used:         {human(s['used'])} of {human(s['limit'])} "
          f"({100 * s['used'] / limit:.1f}%)")
    print(f"entries:      {s['blocks']} blocks of {s['objects']} objects")
    print(f"pinned:       {human(s['pinned_bytes'])} ({s['pins']} pin rules)")
    print(f"this mount:   {s['hits']} hits ({human(s['hit_bytes'])}), {s['misses']} misses "
          f"({human(s['miss_bytes'])} fetched)")
    print(f"              {s['skipped']} blocks not cached (write-behind busy), "
          f"{s['corrupt']} corrupt blocks dropped, {s['refused']} refused (no room)")
    return 0


def simple(op: str, paths: list[str]) -> int:
    for p in paths:
        entry, rel = control.mount_of(p)
        r = control.request(entry.mountpoint, {"op": op, "path": rel})
        if op == "cache_pin":
            print(f"pinned {p} ({r['blocks']} cached blocks now pinned)")
        elif op == "cache_unpin":
            print(f"unpinned {p} ({r['pins']} pin rules removed)")
        else:
            kept = f", {r['pinned']} pinned blocks kept" if r["pinned"] else ""
            print(f"evicted {p}: {r['blocks']} blocks, {human(r['bytes'])}{kept}")
    return 0


def main(args) -> int:
    if args.cache_command == "stats":
        return stats(args.mountpoint, args.json)
    if args.cache_command == "warm":
        return warm(args.paths)
    if args.cache_command == "pin":
        simple("cache_pin", args.paths)
        return warm(args.paths)
    return simple("cache_" + args.cache_command, args.paths)
