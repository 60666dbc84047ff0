"""Score several filesystems with the POSIX suite, side by side.

    .venv/bin/python posix_suite/score.py [--only tmpfs,s3fs] [-k EXPR] [--timeout 60]

Starts one moto S3 server on 127.0.0.1, then for each filesystem: mounts it
(a fresh bucket each; tmpfs is mounted with ``mount -t tmpfs``), runs
``pytest posix_suite --mountpoint MP`` in a subprocess, and stops the mount.
Prints passed / failed / skipped per area and filesystem, and each
filesystem's score: the share of the cases tmpfs passes that it passes too.
The table goes to posix_suite/results/latest.md as well; raw per-test
records and mount logs go to posix_suite/results/raw/.

A filesystem that cannot be mounted is reported as unavailable with the first
line of its error.  A hung filesystem cannot hang the scorer: each test has a
timeout, each run has a budget after which the FUSE connection is aborted
(every blocked call then fails with ENOTCONN), and the pytest process group is
killed if it still does not finish.  Every mount and the server are stopped in
``finally`` blocks.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The mount handles live in the project's test support; this script is the
# only part of posix_suite that uses them (the tests themselves only see a path).
sys.path.insert(0, str(REPO))

from tests.support.mounts import (ObjectFSMount, RcloneMount, S3fsMount,  # noqa: E402
                                  abort_connection, is_mounted, mount_entry)
from tests.support.s3server import MotoServer  # noqa: E402

RESULTS = HERE / "results"
RAW = RESULTS / "raw"

# Mount options: every mount lets uid 65534 in (allow_other) so that the
# permission tests run, and has the kernel enforce modes where the filesystem
# supports it.  Each filesystem also gets the documented options that add
# POSIX features it otherwise lacks (s3fs xattrs, rclone symlinks).
S3FS_OPTIONS = ["allow_other", "default_permissions", "use_xattr"]
RCLONE_OPTIONS = ["--allow-other", "--default-permissions", "--vfs-links"]
OBJECTFS_OPTIONS = ["allow_other"]
TMPFS_OPTIONS = "size=2g,mode=0755"

ORDER = ["tmpfs", "s3fs", "rclone-full", "rclone-off", "objectfs"]

# moto assembles a completed multipart upload in memory, several copies of
# it at once: a 5 GiB object took moto to 21 GB and the OOM killer.  So the
# suite's huge-object test is skipped (with this reason) on S3-backed mounts,
# and moto runs under an address-space limit so that nothing else can make
# it take the machine down either.
HUGE_OBJECT_REASON = ("the moto S3 server used for scoring assembles a multipart object "
                      "in memory (about 4x its size), so a 5 GiB object would exhaust "
                      "the machine's memory")
MOTO_ADDRESS_SPACE = 8 << 30


class TmpfsMount:
    """A kernel tmpfs, the reference: what it passes is what a POSIX filesystem should."""

    name = "tmpfs"

    def __init__(self, mountpoint: str):
        self.mountpoint = os.path.realpath(mountpoint)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", TMPFS_OPTIONS, "posix-score",
                            self.mountpoint], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"mount -t tmpfs failed: {r.stderr.strip() or r.stdout.strip()}")

    @contextlib.contextmanager
    def watchdog(self, seconds: float):
        yield  # a tmpfs call cannot hang on a server

    def log(self) -> str:
        return ""

    def stop(self) -> None:
        if is_mounted(self.mountpoint):
            subprocess.run(["umount", self.mountpoint], capture_output=True, timeout=30)
        if is_mounted(self.mountpoint):
            subprocess.run(["umount", "-l", self.mountpoint], capture_output=True, timeout=30)


def make_mount(name: str, server, mountpoint: str, base: str, attempt: int):
    """Mount filesystem ``name`` on ``mountpoint``; returns (handle, options text)."""
    log = str(RAW / f"{name}.{attempt}.mount.log")
    if name == "tmpfs":
        return TmpfsMount(mountpoint), f"-o {TMPFS_OPTIONS}"
    bucket = server.new_bucket(prefix=f"posix-{name}")
    if name == "s3fs":
        return (S3fsMount(server, bucket, mountpoint, options=S3FS_OPTIONS, log_path=log),
                "-o " + ",".join(S3FS_OPTIONS))
    if name.startswith("rclone-"):
        mode = name.split("-", 1)[1]
        return (RcloneMount(server, bucket, mountpoint, cache_mode=mode, options=RCLONE_OPTIONS,
                            log_path=log),
                f"--vfs-cache-mode {mode} " + " ".join(RCLONE_OPTIONS))
    if name == "objectfs":
        staging = os.path.join(base, "objectfs-staging")
        os.makedirs(staging, exist_ok=True)
        opts = OBJECTFS_OPTIONS + [f"staging_dir={staging}",
                                   f"cache_dir={os.path.join(base, 'objectfs-cache')}"]
        return (ObjectFSMount(server, bucket, mountpoint, options=opts, log_path=log),
                "-o " + ",".join(OBJECTFS_OPTIONS))
    raise ValueError(f"unknown filesystem {name!r}")


def pytest_argv(mountpoint: str, report: str, args, nodeids: list[str] | None,
                s3_backed: bool) -> list[str]:
    argv = [sys.executable, "-m", "pytest", "--mountpoint", mountpoint, "--posix-report", report,
            "--timeout", str(args.timeout), "-q", "-p", "no:cacheprovider",
            "--junitxml", report.replace(".jsonl", ".junit.xml")]
    if s3_backed:
        argv += ["--skip-huge-objects", HUGE_OBJECT_REASON]
    if nodeids:
        return argv + nodeids  # resuming: exactly the tests not run yet
    argv.append(str(HERE))
    if args.k:
        argv += ["-k", args.k]
    return argv


def collect(base: str, args) -> list[str]:
    """Node ids of every test in the suite (the denominator for runs cut short)."""
    argv = [sys.executable, "-m", "pytest", str(HERE), "--mountpoint", base, "--collect-only",
            "-q", "-p", "no:cacheprovider"]
    if args.k:
        argv += ["-k", args.k]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    ids = [ln.strip() for ln in r.stdout.splitlines() if "::" in ln]
    if r.returncode not in (0, 5) or not ids:
        raise RuntimeError(f"collecting the suite failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return ids


def run_pytest(handle, mountpoint: str, report: str, log: Path, args, budget: float,
               nodeids: list[str] | None, s3_backed: bool) -> dict:
    """One pytest run on a mounted filesystem, bounded by ``budget`` seconds."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(report)
    killed = False
    with open(log, "w") as out:
        proc = subprocess.Popen(pytest_argv(mountpoint, report, args, nodeids, s3_backed), cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            # After the budget the FUSE connection is aborted: every blocked call
            # returns ENOTCONN and the suite stops itself.  If even that does not
            # end it, the process group is killed a minute later.
            with handle.watchdog(budget):
                try:
                    proc.wait(timeout=budget + 60)
                except subprocess.TimeoutExpired:
                    killed = True
        finally:
            _kill(proc, mountpoint)
    fs_proc = getattr(handle, "proc", None)
    return {
        "exit": proc.returncode,
        "killed": killed,
        "aborted": bool(getattr(handle, "watchdog_fired", False)),
        "died": (fs_proc is not None and fs_proc.poll() is not None) or not is_mounted(mountpoint),
        "fs_exit": fs_proc.poll() if fs_proc is not None else None,
    }


def _kill(proc: subprocess.Popen, mountpoint: str) -> None:
    """End the pytest process group; never raises, never waits forever.

    A process blocked in a FUSE request can outlive SIGKILL while the daemon
    does not answer; aborting the connection releases it.
    """
    for step in range(3):
        if proc.poll() is not None:
            return
        if step == 1:
            abort_connection(mountpoint)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    if proc.poll() is None:
        print(f"WARNING: pytest (pid {proc.pid}) could not be killed", file=sys.stderr)


MAX_REMOUNTS = 3
# How a call fails once the FUSE daemon is gone or its connection was aborted.
GONE_MARKERS = ("[Errno 107]", "Transport endpoint is not connected", "[Errno 103]")


def _first_line(e: Exception) -> str:
    """First line of a mount error, plus the daemon's own last word if the
    handle appended its log (the first line alone is often just the exit code)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if len(lines) > 1:
        return f"{lines[0]}: {lines[-1][:300]}"
    return lines[0]


def _short(nodeid: str) -> str:
    return nodeid.split("::", 1)[-1]


def score_fs(name: str, server, base: str, ids: list[str], args) -> dict:
    """Mount ``name`` and run the suite; if the filesystem dies half-way, note
    the test it died in, mount it again (fresh bucket) and run the tests not
    run yet, up to MAX_REMOUNTS times within the budget.

    Returns {"results", "seconds", "notes", "options"}; raises RuntimeError
    when the first mount fails (the filesystem is unavailable).
    """
    for old in RAW.glob(f"{name}.*"):
        old.unlink()
    start = time.monotonic()
    deadline = start + args.budget
    results: dict[str, tuple[str, str]] = {}
    victims: set[str] = set()
    notes: list[str] = []
    options = ""
    mounts = 0
    for attempt in range(MAX_REMOUNTS + 1):
        remaining = [i for i in ids if i not in results]
        if not remaining:
            break
        left = deadline - time.monotonic()
        if left < 15:
            notes.append(f"time budget of {args.budget:.0f}s used up")
            break
        mp = os.path.join(base, f"{name}-{attempt}")
        os.mkdir(mp)
        os.chmod(mp, 0o755)
        handle = None
        try:
            try:
                handle, options = make_mount(name, server, mp, base, attempt)
            except Exception as e:
                if attempt == 0:
                    raise RuntimeError(_first_line(e)) from None
                notes.append(f"remount failed: {_first_line(e)}")
                break
            mounts += 1
            fstype = mount_entry(mp)["fstype"]
            print(f"{name}: {'running' if attempt == 0 else 'resuming'} on {mp} ({fstype}), "
                  f"{len(remaining)} tests", flush=True)
            report = str(RAW / f"{name}.{attempt}.jsonl")
            run = run_pytest(handle, mp, report, RAW / f"{name}.{attempt}.pytest.log", args, left,
                             None if attempt == 0 else remaining, s3_backed=name != "tmpfs")
        finally:
            if handle is not None:
                handle.stop()
            if is_mounted(mp):
                print(f"{name}: WARNING: {mp} is still mounted", file=sys.stderr)
            else:
                with contextlib.suppress(OSError):
                    os.rmdir(mp)
        got, order = read_report(report)
        pytest_died = run["exit"] is not None and run["exit"] < 0 and not run["killed"]
        if pytest_died:
            # The test process itself died (SIGBUS from a mapped page the
            # filesystem could not serve, say): blame the test it was in and
            # resume after it.
            sig = signal.Signals(-run["exit"]).name
            cur = order[-1] if order else None
            if cur is not None:
                got[cur] = ("failed", f"the test process was killed by {sig} in this test")
            notes.append(f"pytest killed by {sig} in `{_short(cur) if cur else '-'}`")
        if run["died"] and not (run["aborted"] or run["killed"]):
            # Tests that failed only because the daemon was already gone
            # (ENOTCONN) run again on the next mount; a test that meets a dead
            # filesystem a second time keeps its failure, so a test that kills
            # the filesystem cannot make the scorer loop.
            gone = [n for n in order if got.get(n, ("", ""))[0] == "failed"
                    and any(m in got[n][1] for m in GONE_MARKERS)]
            for n in gone:
                if n not in victims:
                    victims.add(n)
                    del got[n]
            ran = [n for n in order if n in got and n not in gone]
            how = (f"signal {-run['fs_exit']}" if (run["fs_exit"] or 0) < 0
                   else f"exit {run['fs_exit']}" if run["fs_exit"] is not None else "unmounted")
            # A daemon can die some time after the request that broke it, so
            # this only brackets the moment; the mount log has the details.
            last = f"`{_short(ran[-1])}`" if ran else "the start"
            where = (f"between {last} and `{_short(gone[0])}`" if gone
                     else f"during or after {last}")
            notes.append(f"filesystem died ({how}) {where}")
        results.update(got)
        if run["aborted"] or run["killed"]:
            notes.append(f"run exceeded the {args.budget:.0f}s budget: FUSE connection aborted"
                         + (", pytest killed" if run["killed"] else ""))
            break
        if not run["died"] and not pytest_died:
            if run["exit"] not in (0, 1):
                notes.append(f"pytest exited with {run['exit']} (see raw/{name}.{attempt}.pytest.log)")
            break
    if mounts > 1:
        notes.append(f"mounted {mounts} times: after each death the tests not yet run "
                     "went on on a fresh mount")
    return {"results": results, "seconds": time.monotonic() - start, "notes": notes,
            "options": options}


def read_report(path: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """(nodeid -> (outcome, message), node ids in the order they ran).

    A failure in any phase (setup, call, teardown) fails the test.
    """
    res: dict[str, tuple[str, str]] = {}
    order: list[str] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return res, order
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a kill
        nid, when, outcome = rec["nodeid"], rec["when"], rec["outcome"]
        if not order or order[-1] != nid:
            order.append(nid)
        prev = res.get(nid)
        if outcome == "failed":
            if prev is None or prev[0] != "failed":
                msg = rec.get("message", "")
                res[nid] = ("failed", msg if when == "call" else f"[{when}] {msg}")
        elif outcome == "skipped":
            if prev is None:
                res[nid] = ("skipped", rec.get("message", ""))
        elif when == "call" and prev is None:
            res[nid] = ("passed", "")
    return res, order


def area_of(nodeid: str) -> str:
    mod = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return mod.removeprefix("test_").removesuffix(".py")


def outcome_of(run: dict, nid: str) -> tuple[str, str]:
    return run["results"].get(nid, ("notrun", "not run (the run was cut short)"))


def render(ids: list[str], runs: dict, unavailable: dict, started: str) -> str:
    names = [n for n in ORDER if n in runs]
    areas = sorted({area_of(i) for i in ids})
    ref = runs.get("tmpfs")
    ref_pass = ({i for i in ids if outcome_of(ref, i)[0] == "passed"} if ref
                else set(ids))
    lines = [f"# POSIX suite scores ({started})", ""]
    lines.append(f"{len(ids)} test cases in {len(areas)} areas. Each cell: passed / failed / "
                 "skipped. A test not reached because a run was cut short counts as failed. "
                 "Skips are never counted as passes.")
    lines.append("")
    lines.append("| area | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    totals = {n: collections.Counter() for n in names}
    for area in areas:
        cells = []
        for n in names:
            c = collections.Counter()
            for i in ids:
                if area_of(i) == area:
                    o = outcome_of(runs[n], i)[0]
                    c["failed" if o == "notrun" else o] += 1
            totals[n].update(c)
            cells.append(f"{c['passed']} / {c['failed']} / {c['skipped']}")
        lines.append(f"| {area} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(
        f"**{totals[n]['passed']} / {totals[n]['failed']} / {totals[n]['skipped']}**"
        for n in names) + " |")
    scores = []
    for n in names:
        passed = {i for i in ids if outcome_of(runs[n], i)[0] == "passed"}
        pct = 100.0 * len(passed & ref_pass) / len(ref_pass) if ref_pass else 0.0
        scores.append(f"**{pct:.1f}%**")
    ref_label = "tmpfs passes" if ref else "the suite has (tmpfs did not run)"
    lines.append(f"| **score** (share of the {len(ref_pass)} cases {ref_label}) | "
                 + " | ".join(scores) + " |")
    lines.append("| run time | " + " | ".join(f"{runs[n]['seconds']:.0f} s" for n in names)
                 + " |")
    lines.append("")
    lines.append("Mount options:")
    lines.append("")
    for n in names:
        notes = "; ".join(runs[n]["notes"])
        lines.append(f"- {n}: `{runs[n]['options']}`" + (f" — **{notes}**" if notes else ""))
    for n, err in unavailable.items():
        lines.append(f"- {n}: **unavailable**: {err}")
    if ref:
        extra = {n: sorted({i for i in ids if outcome_of(runs[n], i)[0] == "passed"} - ref_pass)
                 for n in names if n != "tmpfs"}
        if any(extra.values()):
            lines += ["", "Cases passed by a filesystem but not by tmpfs (a test bug?):", ""]
            for n, nids in extra.items():
                lines += [f"- {n}: `{i}`" for i in nids]
        ref_fail = [i for i in ids if outcome_of(ref, i)[0] != "passed"]
        if ref_fail:
            lines += ["", "Cases tmpfs does not pass (left out of the scores):", ""]
            lines += [f"- `{i}`: {outcome_of(ref, i)[0]} {outcome_of(ref, i)[1]}" for i in ref_fail]
    for n in names:
        bad = [(i, outcome_of(runs[n], i)) for i in ids if outcome_of(runs[n], i)[0] != "passed"]
        if not bad:
            continue
        lines += ["", f"<details><summary>{n}: {len(bad)} not passed</summary>", ""]
        for i, (o, msg) in bad:
            msg = re.sub(r"/\S*?/posix-score-[^/]+/[^/]+/", "MP/", " ".join(msg.split()))
            msg = msg[:200].replace("|", "\\|")
            lines.append(f"- `{i.split('::', 1)[1]}` ({area_of(i)}) {o}: {msg}")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def start_moto() -> MotoServer:
    """MotoServer under a soft RLIMIT_AS (inherited by its process only)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = MOTO_ADDRESS_SPACE if hard == resource.RLIM_INFINITY else min(hard, MOTO_ADDRESS_SPACE)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        return MotoServer(log_path=str(RAW / "moto.log"))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(ORDER))
    ap.add_argument("-k", help="pytest -k expression (partial runs, for development)")
    ap.add_argument("--timeout", type=float, default=60, help="per-test timeout (s)")
    ap.add_argument("--budget", type=float, default=240,
                    help="per-filesystem run time before its FUSE connection is aborted (s)")
    ap.add_argument("--no-write", action="store_true", help="do not write results/latest.md")
    args = ap.parse_args(argv)
    names = ORDER if not args.only else [n.strip() for n in args.only.split(",")]
    for n in names:
        if n not in ORDER:
            ap.error(f"unknown filesystem {n!r}")
    if os.geteuid() != 0:
        print("score.py mounts filesystems and needs root", file=sys.stderr)
        return 2

    RAW.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    # Mountpoints live in a world-searchable directory, so uid 65534 can reach them.
    base = tempfile.mkdtemp(prefix="posix-score-")
    os.chmod(base, 0o755)
    runs: dict[str, dict] = {}
    unavailable: dict[str, str] = {}
    server = None
    try:
        ids = collect(base, args)
        print(f"{len(ids)} test cases", flush=True)
        server = start_moto()
        for name in names:
            try:
                runs[name] = score_fs(name, server, base, ids, args)
            except RuntimeError as e:
                unavailable[name] = str(e)
                print(f"{name}: unavailable: {e}", flush=True)
                continue
            c = collections.Counter(o for o, _ in runs[name]["results"].values())
            print(f"{name}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
                  f"in {runs[name]['seconds']:.0f}s " + "; ".join(runs[name]["notes"]), flush=True)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    finally:
        if server is not None:
            server.stop()
        leftover = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                    if f" {base}/" in line]
        if leftover:
            print(f"WARNING: still mounted under {base}: {leftover}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)

    md = render(ids, runs, unavailable, started)
    print()
    print(md.split("\n<details>")[0].rstrip())
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "latest.md").write_text(md)
        print(f"\nwritten to {RESULTS / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
