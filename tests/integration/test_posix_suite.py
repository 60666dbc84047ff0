"""The POSIX suite against a real ObjectFS mount: only documented differences may fail.

Runs ``pytest posix_suite --mountpoint MP`` on a fresh mount (with allow_other, so
the permission tests run as another user) and compares the cases that did not
pass with the "Differences from POSIX" table of SEMANTICS.md: a failure not in
the table is a regression (or an undocumented difference), and a case in the
table that now passes means the document is stale.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# moto builds a completed multipart object in memory (about 4x its size)
HUGE = "the moto server used by the tests assembles multipart objects in memory"


def documented_differences() -> set[str]:
    text = (REPO / "SEMANTICS.md").read_text()
    section = text.split("## Differences from POSIX", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`(test_[^`]+)`", line.split("|")[1]))
    return names


def test_posix_suite_fails_only_where_semantics_says(mount, bucket, workdir):
    workdir.chmod(0o755)  # the permission tests run as uid 65534 and must reach the mount
    m = mount(bucket, options=["allow_other"])
    report = workdir / "posix.jsonl"
    with m.watchdog(600):
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "posix_suite", "--mountpoint", m.mountpoint,
             "--skip-huge-objects", HUGE, "--posix-report", str(report), "-q",
             "-p", "no:cacheprovider", "--timeout", "120"],
            cwd=REPO, capture_output=True, text=True, timeout=900)
    records = [json.loads(line) for line in report.read_text().splitlines()]
    not_passed = {rec["nodeid"].split("::", 1)[1]: rec.get("message", "")
                  for rec in records
                  if rec["outcome"] == "failed" or (rec["outcome"] == "skipped"
                                                    and "huge" not in rec.get("message", ""))}
    passed = {rec["nodeid"].split("::", 1)[1] for rec in records
              if rec["when"] == "call" and rec["outcome"] == "passed"}
    assert len(passed) > 250, f"the suite hardly ran:\n{r.stdout[-3000:]}{r.stderr[-2000:]}"
    documented = documented_differences()
    assert documented, "SEMANTICS.md lost its table of differences"

    def is_documented(case: str) -> bool:
        base = case.split("[", 1)[0]
        return case in documented or base in documented or any(
            case.startswith(d.rstrip("*")) for d in documented if d.endswith("*"))

    undocumented = {c: msg for c, msg in not_passed.items() if not is_documented(c)}
    assert not undocumented, "POSIX cases failing without an entry in SEMANTICS.md:\n" + \
        "\n".join(f"{c}: {msg}" for c, msg in sorted(undocumented.items()))
    stale = {d for d in documented if not d.endswith("*") and "[" not in d and d in passed}
    assert not stale, f"documented as different from POSIX but passing now: {sorted(stale)}"
