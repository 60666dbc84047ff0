"""Counters, gauges and histograms of one mount, in Prometheus' text format.

One process serves one mount, so the registry is module-global (``REGISTRY``)
and any layer can count without being handed an object:

    metrics.counter("objectfs_cache_hits_total", cache="data").inc()
    metrics.gauge("objectfs_cache_bytes").set(n)
    metrics.histogram("objectfs_s3_request_seconds", op="GetObject").observe(dt)

A family is created on first use (with the help text of ``HELP`` if it has
one) and its children are cached per label set, so calling these helpers
on a hot path costs a dict lookup.  Updates take one lock, so worker
threads may count too.  Label values are bounded, never free text from the
user (no keys, no paths): an operation name, an error code, a cache name.

``gauge_fn`` registers a function evaluated at scrape time, for figures
that are cheaper to compute on demand than to track (pending uploads).

``render()`` writes the text exposition format (version 0.0.4) that
Prometheus scrapes; ``snapshot()`` gives the same figures as plain data for
``objectfs stats``.  The format is small enough to write here, which keeps
prometheus_client (a process-wide default registry, its own HTTP thread)
out of the daemon.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from typing import Any, Callable, Iterable, Mapping

# Request latency buckets in seconds: loopback and LAN requests take a few
# milliseconds, S3 across a region tens to hundreds, and retried or
# throttled requests seconds (botocore's back-off caps at 20 s per attempt).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)

HELP: dict[str, str] = {
    "objectfs_s3_requests_total": "S3 requests by operation (a request retried by botocore "
                                  "counts once).",
    "objectfs_s3_errors_total": "S3 requests that failed after retries, by operation and "
                                "error code.",
    "objectfs_s3_request_seconds": "Duration of S3 requests, retries included, by operation.",
    "objectfs_s3_received_bytes_total": "Object data received from S3 (GetObject bodies).",
    "objectfs_s3_sent_bytes_total": "Object data sent to S3 (PutObject and UploadPart bodies).",
    "objectfs_fuse_requests_total": "FUSE requests by operation.",
    "objectfs_fuse_errors_total": "FUSE requests answered with an error, by operation and "
                                  "errno.",
    "objectfs_cache_hits_total": "Requests answered from a cache without asking S3, by cache.",
    "objectfs_cache_misses_total": "Requests a cache could not answer, by cache.",
    "objectfs_pending_uploads": "Files with changes not yet uploaded to S3.",
    "objectfs_pending_upload_bytes": "Size of the files with changes not yet uploaded.",
    "objectfs_write_buffer_bytes": "Write-buffer memory in use.",
    "objectfs_write_buffer_limit_bytes": "Write-buffer memory limit (write_buffer_memory).",
    "objectfs_receive_buffer_bytes": "Memory kept to read large GET bodies into (in use "
                                     "or free for the next one).",
    "objectfs_inodes": "Inodes the mount holds in memory (see SEMANTICS, Resource limits).",
    "objectfs_start_time_seconds": "When the mount started (Unix time).",
}

_LABEL_VALUE_MAX = 64
_SAFE = re.compile(r"[^A-Za-z0-9_.:+-]")

_lock = threading.Lock()


def _label_value(v: Any) -> str:
    """Label values are identifiers; anything else is cut down to one."""
    return _SAFE.sub("_", str(v))[:_LABEL_VALUE_MAX]


class Counter:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, n: float = 1) -> None:
        if n < 0:
            raise ValueError("counters only go up")
        with _lock:
            self.value += n


class Gauge:
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def set(self, v: float) -> None:
        self.value = v

    def inc(self, n: float = 1) -> None:
        with _lock:
            self.value += n

    def dec(self, n: float = 1) -> None:
        self.inc(-n)


class Histogram:
    """Cumulative-bucket histogram; ``counts[i]`` is observations <= bounds[i]
    that were above bounds[i-1] (made cumulative when rendered)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        i = bisect.bisect_left(self.bounds, v)  # first bound >= v: "le" semantics
        with _lock:
            self.counts[i] += 1
            self.sum += v
            self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        out, total = [], 0
        for bound, n in zip(list(self.bounds) + [math.inf], self.counts):
            total += n
            out.append((bound, total))
        return out


_KINDS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class Family:
    def __init__(self, name: str, kind: str, help: str, buckets: tuple[float, ...] | None):
        self.name = name
        self.kind = kind
        self.help = help
        self.buckets = buckets
        self.children: dict[tuple[tuple[str, str], ...], Any] = {}
        self.fn: Callable[[], float | Mapping[tuple[tuple[str, str], ...], float]] | None = None

    def child(self, labels: Mapping[str, Any]):
        key = tuple(sorted((k, _label_value(v)) for k, v in labels.items()))
        c = self.children.get(key)
        if c is None:
            with _lock:
                c = self.children.get(key)
                if c is None:
                    c = Histogram(self.buckets) if self.kind == "histogram" else \
                        _KINDS[self.kind]()
                    self.children[key] = c
        return c

    def samples(self) -> Iterable[tuple[tuple[tuple[str, str], ...], Any]]:
        if self.fn is not None:
            v = self.fn()
            if isinstance(v, Mapping):
                return sorted(v.items())
            return [((), v)]
        return sorted(self.children.items())


class Registry:
    def __init__(self):
        self.families: dict[str, Family] = {}

    def family(self, name: str, kind: str, help: str | None = None,
               buckets: tuple[float, ...] | None = None) -> Family:
        f = self.families.get(name)
        if f is None:
            with _lock:
                f = self.families.get(name)
                if f is None:
                    f = Family(name, kind, help or HELP.get(name, name),
                               buckets or (LATENCY_BUCKETS if kind == "histogram" else None))
                    self.families[name] = f
        if f.kind != kind:
            raise ValueError(f"metric {name} is a {f.kind}, not a {kind}")
        return f


REGISTRY = Registry()


# (kind, name, label items in call order) -> child: a hot path's call costs
# one tuple and one dict lookup instead of sorting and cleaning its labels.
_children: dict[tuple, Any] = {}


def _child(kind: str, name: str, help: str | None, buckets, labels: dict[str, Any]):
    key = (kind, name, *labels.items())
    c = _children.get(key)
    if c is None:
        c = REGISTRY.family(name, kind, help, buckets).child(labels)
        _children[key] = c
    return c


def counter(name: str, help: str | None = None, **labels: Any) -> Counter:
    return _child("counter", name, help, None, labels)


def gauge(name: str, help: str | None = None, **labels: Any) -> Gauge:
    return _child("gauge", name, help, None, labels)


def histogram(name: str, help: str | None = None, buckets: tuple[float, ...] | None = None,
              **labels: Any) -> Histogram:
    return _child("histogram", name, help, buckets, labels)


def gauge_fn(name: str, fn: Callable[[], float], help: str | None = None) -> None:
    """A gauge whose value is ``fn()`` at scrape time (replaces an earlier one)."""
    REGISTRY.family(name, "gauge", help).fn = fn


# -- the instrumented layers' helpers ----------------------------------------

def s3_request(op: str, seconds: float, error: str | None = None) -> None:
    """One S3 call finished (after botocore's retries); ``error`` is its code."""
    counter("objectfs_s3_requests_total", op=op).inc()
    histogram("objectfs_s3_request_seconds", op=op).observe(seconds)
    if error is not None:
        counter("objectfs_s3_errors_total", op=op, code=error).inc()


def cache(name: str, hit: bool) -> None:
    """A cache named ``name`` answered (hit) or had to ask S3 (miss)."""
    counter("objectfs_cache_hits_total" if hit else "objectfs_cache_misses_total",
            cache=name).inc()


# -- output ----------------------------------------------------------------------

def _fmt_value(v: float) -> str:
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


def render(registry: Registry = REGISTRY) -> str:
    """The registry in Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for name in sorted(registry.families):
        f = registry.families[name]
        help_text = f.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {f.kind}")
        for key, c in f.samples():
            if f.kind == "histogram":
                for bound, n in c.cumulative():
                    le = "+Inf" if math.isinf(bound) else _fmt_value(bound)
                    lines.append(f"{name}_bucket{_labels(key + (('le', le),))} {n}")
                lines.append(f"{name}_sum{_labels(key)} {_fmt_value(c.sum)}")
                lines.append(f"{name}_count{_labels(key)} {c.count}")
            else:
                value = c if isinstance(c, (int, float)) else c.value
                lines.append(f"{name}{_labels(key)} {_fmt_value(value)}")
    return "\n".join(lines) + "\n"


def snapshot(registry: Registry = REGISTRY) -> dict[str, Any]:
    """The same figures as JSON-ready data: {name: {type, help, samples}}."""
    out: dict[str, Any] = {}
    for name in sorted(registry.families):
        f = registry.families[name]
        samples = []
        for key, c in f.samples():
            s: dict[str, Any] = {"labels": dict(key)}
            if f.kind == "histogram":
                s["buckets"] = [[None if math.isinf(b) else b, n] for b, n in c.cumulative()]
                s["sum"] = c.sum
                s["count"] = c.count
            else:
                s["value"] = c if isinstance(c, (int, float)) else c.value
            samples.append(s)
        out[name] = {"type": f.kind, "help": f.help, "samples": samples}
    return out


def quantile(q: float, buckets: list[list]) -> float | None:
    """Estimate the ``q`` quantile from cumulative buckets [[le, count], ...]
    (le None = +Inf) by linear interpolation inside the bucket, as
    Prometheus' histogram_quantile does.  None when there are no samples;
    an estimate in the +Inf bucket is the largest finite bound."""
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if bound is None:
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = (bound if bound is not None else prev_bound), count
    return prev_bound
