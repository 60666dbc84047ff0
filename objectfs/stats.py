"""``objectfs stats``: the mount's metrics as a table, and the figures that
are computed when asked rather than counted as they happen.

The daemon answers the control request ``{"op": "stats"}`` with
``metrics.snapshot()`` (the same figures ``/metrics`` serves) plus who it
is; the CLI turns that into a table (``format_table``) or prints it as
JSON.
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import metrics


def install_gauges(fs) -> None:
    """Scrape-time gauges of ``fs``: pending uploads, write-buffer memory and
    the receive buffers kept for GET bodies.

    A file is pending while it has changes not yet in S3 (written and not
    yet closed, or whose upload failed and will be retried); its bytes are
    its current size, which is what its upload will store.
    """
    def pending() -> list:
        files, size = 0, 0
        for node in list(fs.table.inodes.values()):
            data = node.data
            if data is not None and data.dirty and not data.detached:
                files += 1
                size += data.size
        return [files, size]

    metrics.gauge_fn("objectfs_pending_uploads", lambda: pending()[0])
    metrics.gauge_fn("objectfs_pending_upload_bytes", lambda: pending()[1])
    metrics.gauge_fn("objectfs_write_buffer_bytes",
                     lambda: fs.ctx.write_budget.used if fs.ctx is not None else 0)
    metrics.gauge_fn("objectfs_write_buffer_limit_bytes",
                     lambda: fs.ctx.write_budget.limit if fs.ctx is not None else 0)
    metrics.gauge_fn("objectfs_receive_buffer_bytes", lambda: getattr(
        getattr(fs.store, "receive_buffers", None), "kept_bytes", 0))
    metrics.gauge_fn("objectfs_inodes", lambda: len(fs.table))
    metrics.gauge("objectfs_start_time_seconds").set(time.time())


def control_handler(cfg):
    async def stats(req: dict) -> dict:
        return {"pid": os.getpid(), "bucket": cfg.bucket, "prefix": cfg.prefix,
                "mountpoint": cfg.mountpoint, "metrics": metrics.snapshot()}
    return stats


# -- the table -------------------------------------------------------------------

def _samples(snap: dict, name: str) -> list[dict]:
    return snap.get(name, {}).get("samples", [])


def _by(snap: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in _samples(snap, name):
        k = s["labels"].get(label, "")
        out[k] = out.get(k, 0) + s["value"]
    return out


def _value(snap: dict, name: str) -> float:
    return sum(s["value"] for s in _samples(snap, name))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def _uptime(seconds: float) -> str:
    s = int(max(seconds, 0))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  " + "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(header)] + [fmt(r) for r in rows]


def format_table(reply: dict[str, Any], now: float | None = None) -> str:
    snap = reply["metrics"]
    now = time.time() if now is None else now
    where = f"s3://{reply['bucket']}" + (f"/{reply['prefix']}" if reply.get("prefix") else "")
    started = _value(snap, "objectfs_start_time_seconds")
    lines = [f"ObjectFS {where} on {reply['mountpoint']} (pid {reply['pid']}"
             + (f", up {_uptime(now - started)})" if started else ")")]

    requests = _by(snap, "objectfs_s3_requests_total", "op")
    errors = _by(snap, "objectfs_s3_errors_total", "op")
    latency = {s["labels"].get("op", ""): s for s in _samples(snap, "objectfs_s3_request_seconds")}
    lines += ["", "S3 requests"]
    if requests:
        rows = []
        for op in sorted(requests):
            h = latency.get(op)
            count = h["count"] if h else 0
            rows.append([op, f"{requests[op]:.0f}", f"{errors.get(op, 0):.0f}",
                         _ms(h["sum"] / count if h and count else None),
                         _ms(metrics.quantile(0.5, h["buckets"]) if h else None),
                         _ms(metrics.quantile(0.99, h["buckets"]) if h else None)])
        rows.append(["total", f"{sum(requests.values()):.0f}", f"{sum(errors.values()):.0f}",
                     "", "", ""])
        lines += _table(rows, ["operation", "requests", "errors", "avg ms", "p50 ms", "p99 ms"])
    else:
        lines.append("  none yet")
    codes = [(s["labels"].get("op", ""), s["labels"].get("code", ""), s["value"])
             for s in _samples(snap, "objectfs_s3_errors_total")]
    if codes:
        lines += ["", "S3 errors by code"]
        lines += _table([[op, code, f"{n:.0f}"] for op, code, n in sorted(codes)],
                        ["operation", "code", "count"])
    lines += ["", f"Data: {human_bytes(_value(snap, 'objectfs_s3_received_bytes_total'))} "
                  f"received, {human_bytes(_value(snap, 'objectfs_s3_sent_bytes_total'))} sent"]

    fuse = {op: n for op, n in _by(snap, "objectfs_fuse_requests_total", "op").items() if n}
    fuse_err = _by(snap, "objectfs_fuse_errors_total", "op")
    lines += ["", "FUSE requests"]
    if fuse:
        lines += _table([[op, f"{fuse[op]:.0f}", f"{fuse_err.get(op, 0):.0f}"]
                         for op in sorted(fuse)], ["operation", "requests", "errors"])
    else:
        lines.append("  none yet")

    hits = _by(snap, "objectfs_cache_hits_total", "cache")
    misses = _by(snap, "objectfs_cache_misses_total", "cache")
    names = sorted(set(hits) | set(misses))
    if names:
        lines += ["", "Caches"]
        rows = []
        for n in names:
            h, m = hits.get(n, 0), misses.get(n, 0)
            rows.append([n, f"{h:.0f}", f"{m:.0f}",
                         f"{100 * h / (h + m):.0f}%" if h + m else "-"])
        lines += _table(rows, ["cache", "hits", "misses", "hit ratio"])

    lines += ["", f"Pending uploads: {_value(snap, 'objectfs_pending_uploads'):.0f} files, "
                  f"{human_bytes(_value(snap, 'objectfs_pending_upload_bytes'))}",
              f"Write buffers: {human_bytes(_value(snap, 'objectfs_write_buffer_bytes'))} in use "
              f"of {human_bytes(_value(snap, 'objectfs_write_buffer_limit_bytes'))}"]
    return "\n".join(lines) + "\n"
