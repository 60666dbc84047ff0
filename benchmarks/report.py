"""Turn benchmark samples into medians, ratios, a Markdown report and a PNG chart.

A sample is one (filesystem, workload, repetition) with wall times per
metric, the daemon's CPU seconds and peak RSS, and an error (None when it
passed).  Only samples that passed (including their data verification) count
towards medians: a fast but wrong filesystem gets "FAIL", not a good number.
"""

from __future__ import annotations

import statistics

# objectfs-wb: ObjectFS with -o writeback (close returns once staged on local
# disk, upload 5 s later), the counterpart of rclone's full cache mode.
FS_ORDER = ["objectfs", "objectfs-wb", "s3fs", "rclone-full", "rclone-off", "boto3"]
BASELINES = ["objectfs", "boto3"]

WORKLOADS = ["seq_write", "seq_read", "random_read", "small_files", "untar", "rename_dir",
             "append", "big_dir"]
# big_dir (ls -l, find, du of 10,000 files) takes longer than the rest: asked for by name
DEFAULT_WORKLOADS = [w for w in WORKLOADS if w != "big_dir"]

# (workload, metric, label); the label's {...} are filled from the run's sizes
METRICS = [
    ("seq_write", "close", "seq write {file}: close() returned"),
    ("seq_write", "durable", "seq write {file}: complete in S3"),
    ("seq_read", "cold", "seq read {file}: cold"),
    ("seq_read", "warm", "seq read {file}: warm (2nd read)"),
    ("random_read", "total", "{n_random} random 4 KiB preads"),
    ("random_read", "sparse", "{n_sparse} random 4 KiB preads (sparse)"),
    ("small_files", "create", "{n_small} x 4 KiB: create"),
    ("small_files", "create_durable", "{n_small} x 4 KiB: all visible in S3"),
    ("small_files", "ls", "{n_small} x 4 KiB: ls -l (cold)"),
    ("small_files", "read", "{n_small} x 4 KiB: read (cold)"),
    ("small_files", "ls_again", "{n_small} x 4 KiB: ls -l after a remount"),
    ("small_files", "delete", "{n_small} x 4 KiB: delete"),
    ("small_files", "delete_durable", "{n_small} x 4 KiB: all gone from S3"),
    ("untar", "tar", "untar {untar}: tar -x returned"),
    ("untar", "durable", "untar {untar}: all in S3"),
    ("rename_dir", "mv", "mv dir of {n_rename} files: returned"),
    ("rename_dir", "durable", "mv dir of {n_rename} files: done in S3"),
    ("append", "close", "append {append} to {append_base}: close()"),
    ("append", "durable", "append {append} to {append_base}: in S3"),
    ("big_dir", "ls", "dir of {n_big} x 4 KiB: ls -l (cold)"),
    ("big_dir", "find", "dir of {n_big} x 4 KiB: find (cold)"),
    ("big_dir", "du", "dir of {n_big} x 4 KiB: du (cold)"),
]

# metrics whose reads are meaningless on moto (it re-reads the whole object per ranged GET)
READ_METRICS = {("seq_read", "cold"), ("seq_read", "warm"), ("random_read", "total"),
                ("random_read", "sparse"),
                ("small_files", "read")}


def _fmt_s(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_ratio(r: float) -> str:
    if r >= 10:
        return f"{r:.0f}x"
    return f"{r:.2f}x"


class Summary:
    """Medians per (fs, workload, metric) and per (fs, workload) for CPU/RSS."""

    def __init__(self, meta: dict, samples: list[dict]):
        self.meta = meta
        self.samples = samples
        self.fs = [f for f in FS_ORDER if f in meta["fs"]]
        self.workloads = [w for w in WORKLOADS if w in meta["workloads"]]
        self.metrics = [m for m in METRICS if m[0] in self.workloads]
        self.unavailable = meta.get("unavailable", {})

    def _samples(self, fs: str, wl: str) -> tuple[list[dict], int]:
        all_ = [s for s in self.samples if s["fs"] == fs and s["workload"] == wl]
        return [s for s in all_ if not s.get("error")], len(all_)

    def time(self, fs: str, wl: str, metric: str) -> tuple[float | None, int, int]:
        ok, n = self._samples(fs, wl)
        vals = [s["times"][metric] for s in ok if s["times"].get(metric) is not None]
        return (statistics.median(vals) if vals else None), len(vals), n

    def cpu(self, fs: str, wl: str):
        ok, n = self._samples(fs, wl)
        vals = [s["cpu"] for s in ok if s.get("cpu") is not None]
        return (statistics.median(vals) if vals else None), len(vals), n

    def server_cpu(self, fs: str, wl: str):
        ok, n = self._samples(fs, wl)
        vals = [s["server_cpu"] for s in ok if s.get("server_cpu") is not None]
        return (statistics.median(vals) if vals else None), len(vals), n

    def rss_mib(self, fs: str, wl: str):
        ok, n = self._samples(fs, wl)
        vals = [s["rss_kb"] / 1024 for s in ok if s.get("rss_kb")]
        return (statistics.median(vals) if vals else None), len(vals), n

    def label(self, wl: str, metric: str) -> str:
        for w, m, lab in METRICS:
            if (w, m) == (wl, metric):
                return lab.format(**self.meta["size_labels"])
        return f"{wl} {metric}"

    def ratio(self, fs: str, base: str, wl: str, metric: str) -> float | None:
        v, _, _ = self.time(fs, wl, metric)
        b, _, _ = self.time(base, wl, metric)
        if v is None or b is None or b <= 0:
            return None
        return v / b

    def to_json(self) -> dict:
        out: dict = {"time_s": {}, "ratio": {}, "cpu_s": {}, "server_cpu_s": {}, "rss_mib": {}}
        for wl, metric, _ in self.metrics:
            row = out["time_s"][f"{wl}.{metric}"] = {}
            for fs in self.fs:
                v, k, n = self.time(fs, wl, metric)
                row[fs] = {"median": v, "ok": k, "runs": n}
            for base in BASELINES:
                if base in self.fs:
                    out["ratio"].setdefault(f"to_{base}", {})[f"{wl}.{metric}"] = {
                        fs: self.ratio(fs, base, wl, metric) for fs in self.fs}
        for wl in self.workloads:
            out["cpu_s"][wl] = {fs: self.cpu(fs, wl)[0] for fs in self.fs}
            out["server_cpu_s"][wl] = {fs: self.server_cpu(fs, wl)[0] for fs in self.fs}
            out["rss_mib"][wl] = {fs: self.rss_mib(fs, wl)[0] for fs in self.fs}
        return out


def _cell(fs: str, summary: Summary, v, k: int, n: int, fmt) -> str:
    if fs in summary.unavailable:
        return "n/a"
    if n == 0:
        return "—"
    if v is None:
        return "FAIL"
    s = fmt(v)
    return s if k == n else f"{s} ({k}/{n})"


def markdown(summary: Summary, png_name: str | None) -> str:
    m = summary.meta
    fs = summary.fs
    L: list[str] = []
    L.append(f"# ObjectFS benchmarks: {m['server']} server, scale {m['scale']}")
    L.append("")
    L.append(f"Run {m['started']} to {m['finished']} ({m['elapsed_min']:.1f} min), "
             f"{m['repeat']} repetition(s), medians of the runs that passed. "
             "All filesystems ran interleaved in this one run against the same endpoint; "
             "compare ratios, not absolute times, across runs.")
    if m.get("interrupted"):
        L.append("")
        L.append(f"**Incomplete run**: {m['interrupted']}")
    L.append("")
    L.append(f"- endpoint: {m['server']} ({m['endpoint']}); machine: {m['env'].get('machine', '?')}")
    L.append("- versions: " + ", ".join(f"{k} {v}" for k, v in m["env"].get("versions", {}).items()))
    L.append(f"- boto3 baseline: {m['boto3_config']}")
    L.append(f"- untar tree: {m['untar_desc']}")
    for note in m.get("notes", []):
        L.append(f"- **note**: {note}")
    if summary.unavailable:
        L.append("")
        L.append("Unavailable filesystems (could not be mounted):")
        L.append("")
        for f, why in summary.unavailable.items():
            L.append(f"- **{f}**: `{why}`")
    if m["server"] == "moto" and any((w, x) in READ_METRICS for w, x, _ in summary.metrics):
        L.append("")
        L.append("> **moto re-reads the whole object for every ranged GET: the read figures "
                 "below (seq read, random reads, small-file reads) are not meaningful. Quote "
                 "read results from a Swift run.**")

    def table(title: str, intro: str, value_fn, fmt, cols=fs):
        L.append("")
        L.append(f"## {title}")
        L.append("")
        L.append(intro)
        L.append("")
        L.append("| workload | " + " | ".join(cols) + " |")
        L.append("|---|" + "---:|" * len(cols))
        for wl, metric, _ in summary.metrics:
            cells = [_cell(f, summary, *value_fn(f, wl, metric), fmt) for f in cols]
            L.append(f"| {summary.label(wl, metric)} | " + " | ".join(cells) + " |")

    table("Wall time (median seconds, lower is better)",
          "Durable times (\"in S3\", \"gone\") count from the start of the operation, "
          "polled with HEAD/LIST from a separate client. `(k/n)`: only k of n runs passed; "
          "FAIL: none passed (see Failures); n/a: not mountable.",
          summary.time, _fmt_s)
    for base in BASELINES:
        if base not in fs:
            continue
        L.append("")
        L.append(f"## Ratio to {base} (each median / {base}'s median; >1 = slower than {base})")
        L.append("")
        if base in summary.unavailable:
            L.append(f"{base} was unavailable in this run, so there are no ratios to it.")
            continue
        cols = [f for f in fs if f != base]
        L.append("| workload | " + " | ".join(cols) + " |")
        L.append("|---|" + "---:|" * len(cols))
        for wl, metric, _ in summary.metrics:
            cells = []
            for f in cols:
                r = summary.ratio(f, base, wl, metric)
                if f in summary.unavailable:
                    cells.append("n/a")
                else:
                    cells.append(_fmt_ratio(r) if r is not None else "—")
            L.append(f"| {summary.label(wl, metric)} | " + " | ".join(cells) + " |")

    def wl_table(title: str, intro: str, fn, fmt):
        L.append("")
        L.append(f"## {title}")
        L.append("")
        L.append(intro)
        L.append("")
        L.append("| workload | " + " | ".join(fs) + " |")
        L.append("|---|" + "---:|" * len(fs))
        for wl in summary.workloads:
            cells = [_cell(f, summary, *fn(f, wl), fmt) for f in fs]
            L.append(f"| {wl} | " + " | ".join(cells) + " |")

    wl_table("Daemon CPU seconds (median, user+system, incl. children)",
             "Across the measured phases of each workload, durable waits included. "
             "For boto3 this is the client process itself.",
             summary.cpu, lambda v: f"{v:.2f}")
    if any(s.get("server_cpu") is not None for s in summary.samples):
        wl_table("S3 server CPU seconds (median, user+system, all its processes)",
                 "The server's CPU over the same phases (Swift: every daemon its start script "
                 "launched; moto: its process). The server shares the machine's "
                 "cores with the filesystem, so a client whose requests cost the server more "
                 "CPU is slowed by it when the cores are busy.",
                 summary.server_cpu, lambda v: f"{v:.2f}")
    wl_table("Daemon peak RSS (median of per-workload VmHWM, MiB)",
             "Peak resident memory of the filesystem process (reset at the start of each "
             "workload phase). For boto3: the client process, interpreter and boto3 included.",
             summary.rss_mib, lambda v: f"{v:.0f}")

    fails: dict[tuple[str, str], dict[str, int]] = {}
    for s in summary.samples:
        if s.get("error"):
            fails.setdefault((s["fs"], s["workload"]), {}).setdefault(s["error"], 0)
            fails[(s["fs"], s["workload"])][s["error"]] += 1
    L.append("")
    L.append("## Failures")
    L.append("")
    if not fails:
        L.append("None: every run of every workload passed its checks.")
    else:
        L.append("| filesystem | workload | runs | error (first line) |")
        L.append("|---|---|---:|---|")
        for (f, wl), errs in fails.items():
            for err, k in errs.items():
                L.append(f"| {f} | {wl} | {k} | {err.replace('|', '/')} |")
    rejected: dict[tuple[str, str], list] = {}
    for s in summary.samples:
        errs = (s.get("extra") or {}).get("rejected_versions")
        if errs:
            rejected.setdefault((s["fs"], s["workload"]), []).append(errs)
    if rejected:
        L.append("")
        L.append("## Objects that were complete in S3 but wrong at first")
        L.append("")
        L.append("The first full-size version failed verification (typically the filesystem "
                 "deleted and re-uploaded it); the durable time is that of the first version "
                 "that passed.")
        L.append("")
        L.append("| filesystem | workload | runs | wrong versions | first error |")
        L.append("|---|---|---:|---:|---|")
        for (f, wl), runs in rejected.items():
            L.append(f"| {f} | {wl} | {len(runs)} | {sum(len(r) for r in runs)} | "
                     f"{runs[0][0].replace('|', '/')} |")
    if png_name:
        L.append("")
        L.append(f"![chart]({png_name})")
    L.append("")
    L.append(f"Raw samples: `{m.get('json_name', '')}`. Command: `{m['command']}`")
    L.append("")
    return "\n".join(L)


def chart(summary: Summary, path: str) -> str | None:
    """Write the PNG chart; returns None on success or why it was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    fs = [f for f in summary.fs if f not in summary.unavailable]
    if not fs:
        return "no filesystem produced results: no chart"
    base = "boto3" if "boto3" in fs else None
    metrics = summary.metrics
    fig, axes = plt.subplots(3, 1, figsize=(14, 15),
                             gridspec_kw={"height_ratios": [2.2, 1, 1]})
    colors = {"objectfs": "#d62728", "objectfs-wb": "#ff9896", "s3fs": "#1f77b4", "rclone-full": "#2ca02c",
              "rclone-off": "#98df8a", "boto3": "#7f7f7f"}
    width = 0.8 / len(fs)

    ax = axes[0]
    bars = [f for f in fs if f != base]  # the baseline itself would be all 1.0
    width0 = 0.8 / max(1, len(bars))
    for j, f in enumerate(bars):
        xs, ys = [], []
        for i, (wl, metric, _) in enumerate(metrics):
            v = summary.ratio(f, base, wl, metric) if base else summary.time(f, wl, metric)[0]
            if v is not None and v > 0:
                xs.append(i + (j - (len(bars) - 1) / 2) * width0)
                ys.append(v)
        ax.bar(xs, ys, width0, label=f, color=colors.get(f))
    ax.set_yscale("log")
    if base:
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel("median time / boto3 median (log; lower is better)")
    else:
        ax.set_ylabel("median seconds (log; lower is better)")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([summary.label(w, m) for w, m, _ in metrics], rotation=35, ha="right",
                       fontsize=8)
    ax.legend(ncol=max(1, len(bars)), fontsize=9)
    ax.set_title(f"ObjectFS benchmarks: {summary.meta['server']}, scale {summary.meta['scale']}, "
                 f"{summary.meta['repeat']} runs, {summary.meta['started'][:10]}"
                 + (" (read figures meaningless on moto)" if summary.meta["server"] == "moto"
                    else ""))
    ax.grid(axis="y", which="both", alpha=0.3)

    for ax, fn, ylabel in ((axes[1], summary.cpu, "daemon CPU s (median)"),
                           (axes[2], summary.rss_mib, "daemon peak RSS MiB (median)")):
        for j, f in enumerate(fs):
            xs, ys = [], []
            for i, wl in enumerate(summary.workloads):
                v = fn(f, wl)[0]
                if v is not None:
                    xs.append(i + (j - (len(fs) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=f, color=colors.get(f))
        ax.set_xticks(range(len(summary.workloads)))
        ax.set_xticklabels(summary.workloads, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.legend(ncol=len(fs), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> int:
    """Re-render the Markdown and PNG of a run from its JSON:
    python benchmarks/report.py benchmarks/results/swift-small-....json"""
    import json
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    path = Path(args[0])
    d = json.loads(path.read_text())
    summary = Summary(d["meta"], d["samples"])
    png = path.with_suffix(".png")
    why = chart(summary, str(png))
    path.with_suffix(".md").write_text(markdown(summary, None if why else png.name))
    print(f"wrote {path.with_suffix('.md')}" + ("" if why else f" and {png}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
