"""Metrics registry, text exposition, histogram bucketing, the stats table,
the metrics HTTP answers, log redaction, and the per-request S3 options."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import os

import pytest
from hypothesis import given, strategies as st

from objectfs import logs, metrics, metrics_http, stats
from objectfs.config import build
from objectfs.errors import ConfigError, UserError
from objectfs.store.s3options import RequestOptions, read_sse_c_key


def fresh() -> metrics.Registry:
    return metrics.Registry()


# -- exposition ----------------------------------------------------------------------

def test_exposition_format_of_counters_gauges_and_histograms():
    r = fresh()
    r.family("t_requests_total", "counter", "Requests.\nSecond line").child(
        {"op": "Get", "code": 'a"b\\c'}).inc(3)
    r.family("t_requests_total", "counter").child({"op": "Put"}).inc()
    r.family("t_bytes", "gauge", "Bytes.").child({}).set(1.5)
    h = r.family("t_seconds", "histogram", "Latency.", (0.1, 1.0)).child({"op": "Get"})
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert metrics.render(r) == (
        "# HELP t_bytes Bytes.\n"
        "# TYPE t_bytes gauge\n"
        "t_bytes 1.5\n"
        "# HELP t_requests_total Requests.\\nSecond line\n"
        "# TYPE t_requests_total counter\n"
        't_requests_total{code="a_b_c",op="Get"} 3\n'  # label values are identifiers
        't_requests_total{op="Put"} 1\n'
        "# HELP t_seconds Latency.\n"
        "# TYPE t_seconds histogram\n"
        't_seconds_bucket{op="Get",le="0.1"} 2\n'
        't_seconds_bucket{op="Get",le="1.0"} 3\n'
        't_seconds_bucket{op="Get",le="+Inf"} 4\n'
        't_seconds_sum{op="Get"} 3.65\n'
        't_seconds_count{op="Get"} 4\n')


def test_label_values_are_bounded_identifiers():
    r = fresh()
    r.family("t_total", "counter").child({"code": "x" * 500 + "\n{}\" secret"}).inc()
    text = metrics.render(r)
    line = [ln for ln in text.splitlines() if ln.startswith("t_total{")][0]
    value = line.split('"')[1]
    assert len(value) == 64 and set(value) == {"x"}


def test_escaping_of_label_values_in_the_text_format():
    assert metrics._escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_special_float_values():
    assert metrics._fmt_value(math.inf) == "+Inf"
    assert metrics._fmt_value(-math.inf) == "-Inf"
    assert metrics._fmt_value(math.nan) == "NaN"
    assert metrics._fmt_value(True) == "1"
    assert metrics._fmt_value(7) == "7"


def test_counters_only_go_up_and_kinds_do_not_mix():
    r = fresh()
    c = r.family("t_total", "counter").child({})
    with pytest.raises(ValueError):
        c.inc(-1)
    with pytest.raises(ValueError):
        r.family("t_total", "gauge")


def test_gauge_fn_is_evaluated_at_scrape_time():
    r = fresh()
    state = {"n": 1}
    r.family("t_pending", "gauge").fn = lambda: state["n"]
    assert "t_pending 1\n" in metrics.render(r)
    state["n"] = 5
    assert "t_pending 5\n" in metrics.render(r)
    assert metrics.snapshot(r)["t_pending"]["samples"] == [{"labels": {}, "value": 5}]


def test_module_helpers_use_the_global_registry():
    metrics.counter("objectfs_test_helper_total", cache="data").inc(2)
    metrics.cache("test-cache", hit=True)
    metrics.cache("test-cache", hit=False)
    metrics.cache("test-cache", hit=False)
    snap = metrics.snapshot()
    assert {"labels": {"cache": "data"}, "value": 2} in \
        snap["objectfs_test_helper_total"]["samples"]
    assert {"labels": {"cache": "test-cache"}, "value": 2} in \
        snap["objectfs_cache_misses_total"]["samples"]
    assert snap["objectfs_cache_hits_total"]["help"] == metrics.HELP["objectfs_cache_hits_total"]


# -- histogram bucketing -------------------------------------------------------------------

@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=50))
def test_histogram_buckets_count_values_at_or_below_each_bound(values):
    h = metrics.Histogram()
    for v in values:
        h.observe(v)
    cum = h.cumulative()
    assert [b for b, _ in cum] == list(metrics.LATENCY_BUCKETS) + [math.inf]
    for bound, n in cum:
        assert n == sum(1 for v in values if v <= bound)
    assert h.count == len(values)
    assert h.sum == pytest.approx(sum(values))


def test_a_value_on_a_bound_falls_in_that_bucket():
    h = metrics.Histogram((1.0, 2.0))
    h.observe(1.0)
    h.observe(2.0000001)
    assert h.cumulative() == [(1.0, 1), (2.0, 1), (math.inf, 2)]


def test_quantile_interpolates_inside_the_bucket():
    buckets = [[0.1, 0], [0.2, 10], [0.4, 20], [None, 20]]
    assert metrics.quantile(0.5, buckets) == pytest.approx(0.2)
    assert metrics.quantile(0.75, buckets) == pytest.approx(0.3)
    assert metrics.quantile(0.25, buckets) == pytest.approx(0.15)
    assert metrics.quantile(0.5, [[0.1, 0], [None, 0]]) is None
    # all in +Inf: the largest finite bound is the best we can say
    assert metrics.quantile(0.99, [[0.1, 0], [1.0, 0], [None, 3]]) == 1.0


# -- the stats table and the HTTP answers ----------------------------------------------------

def test_stats_table():
    r = fresh()
    r.family("objectfs_s3_requests_total", "counter").child({"op": "GetObject"}).inc(4)
    r.family("objectfs_s3_errors_total", "counter").child(
        {"op": "GetObject", "code": "NoSuchKey"}).inc(1)
    h = r.family("objectfs_s3_request_seconds", "histogram").child({"op": "GetObject"})
    for v in (0.002, 0.002, 0.002, 0.002):
        h.observe(v)
    r.family("objectfs_s3_received_bytes_total", "counter").child({}).inc(3 * 1024 * 1024)
    r.family("objectfs_fuse_requests_total", "counter").child({"op": "read"}).inc(7)
    r.family("objectfs_fuse_requests_total", "counter").child({"op": "symlink"})
    r.family("objectfs_cache_hits_total", "counter").child({"cache": "lookup"}).inc(3)
    r.family("objectfs_cache_misses_total", "counter").child({"cache": "lookup"}).inc(1)
    r.family("objectfs_start_time_seconds", "gauge").child({}).set(1000.0)
    reply = {"pid": 42, "bucket": "b", "prefix": "p", "mountpoint": "/mnt",
             "metrics": metrics.snapshot(r)}
    out = stats.format_table(reply, now=1000.0 + 3725)
    assert out.splitlines()[0] == "ObjectFS s3://b/p on /mnt (pid 42, up 1h02m05s)"
    assert any(ln.split()[:4] == ["GetObject", "4", "1", "2.0"] for ln in out.splitlines())
    assert any(ln.split() == ["GetObject", "NoSuchKey", "1"] for ln in out.splitlines())
    assert "Data: 3.0 MiB received, 0 B sent" in out
    assert any(ln.split() == ["read", "7", "0"] for ln in out.splitlines())
    assert not any(ln.split()[:1] == ["symlink"] for ln in out.splitlines())
    assert any(ln.split() == ["lookup", "3", "1", "75%"] for ln in out.splitlines())
    assert "Pending uploads: 0 files, 0 B" in out


def test_metrics_http_answers():
    ok = metrics_http.answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    assert metrics_http.answer(b"HEAD /metrics HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")
    assert metrics_http.answer(b"GET /x HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert metrics_http.answer(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert metrics_http.answer(b"garbage").startswith(b"HTTP/1.1 400")


# -- redaction ---------------------------------------------------------------------------------

BOTOCORE_LINES = [
    "Sending http request: <AWSPreparedRequest stream_output=False, method=GET, "
    "url=http://127.0.0.1:9000/b/k, headers={'User-Agent': b'Boto3/1.0', "
    "'X-Amz-Date': b'20260101T000000Z', 'X-Amz-Security-Token': b'FwoGZXIvYXdzEJr//////////', "
    "'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/s3/"
    "aws4_request, SignedHeaders=host;x-amz-date, Signature=0123456789abcdef0123456789abcdef'}>",
    "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEX"
    "%2F20260101%2Fus-east-1&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&"
    "X-Amz-SignedHeaders=host&X-Amz-Security-Token=FwoGZXIvYXdz&X-Amz-Signature=0123456789abcdef",
    "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIAEX&Signature=abc%2Bdef%3D&Expires=1",
    "{'x-amz-server-side-encryption-customer-key': 'c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTI=', "
    "'SSECustomerKey': 'c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTI='}",
]


@pytest.mark.parametrize("line", BOTOCORE_LINES)
def test_redact_removes_signatures_credentials_tokens_and_keys(line):
    out = logs.redact(line)
    assert "[REDACTED]" in out
    for secret in ("FwoGZXIvYXdz", "AKIAEX", "0123456789abcdef", "abc%2Bdef",
                   "c2VjcmV0a2V5"):
        assert secret not in out, (secret, out)


def test_redact_keeps_ordinary_text():
    text = "S3 GetObject 'photos/2024/a.jpg' failed: NoSuchKey (HTTP 404)"
    assert logs.redact(text) == text


def test_registered_secrets_never_survive_a_record(tmp_path):
    logs.add_secret("s3cr3t-value-123456")
    logs.add_secret("short")  # too short to be a secret: not redacted
    handler = logging.FileHandler(tmp_path / "log")
    handler.addFilter(logs.Redactor())
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("objectfs.test.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("key is %s and %s", "s3cr3t-value-123456", "short")
        try:
            raise RuntimeError("boom s3cr3t-value-123456")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
        handler.close()
    text = (tmp_path / "log").read_text()
    assert "s3cr3t-value-123456" not in text
    assert "key is [REDACTED] and short" in text
    assert "RuntimeError: boom [REDACTED]" in text


# -- per-request S3 options ----------------------------------------------------------------------

def _params_for(opts: RequestOptions, op: str) -> dict:
    import boto3

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a",
                          aws_secret_access_key="b")
    opts.install(client)
    model = client.meta.service_model.operation_model(op)
    params: dict = {"Bucket": "b"}
    client.meta.events.emit(f"before-parameter-build.s3.{op}", params=params, model=model,
                            context={})
    ours = set(RequestOptions(sse="aws:kms", sse_kms_key_id="k", sse_c_key=b"k" * 32,
                              storage_class="X", requester_pays=True).params())
    return {k: v for k, v in params.items() if k in ours}


def test_sse_and_storage_class_go_only_on_object_writes():
    opts = RequestOptions(sse="aws:kms", sse_kms_key_id="alias/k", storage_class="STANDARD_IA",
                          requester_pays=True)
    for op in ("PutObject", "CopyObject", "CreateMultipartUpload"):
        p = _params_for(opts, op)
        assert p["ServerSideEncryption"] == "aws:kms" and p["SSEKMSKeyId"] == "alias/k", op
        assert p["StorageClass"] == "STANDARD_IA" and p["RequestPayer"] == "requester", op
    for op in ("GetObject", "HeadObject", "UploadPart", "ListObjectsV2", "DeleteObject",
               "DeleteObjects", "CompleteMultipartUpload", "AbortMultipartUpload",
               "UploadPartCopy", "ListMultipartUploads"):
        assert _params_for(opts, op) == {"RequestPayer": "requester"}, op


def test_sse_c_key_goes_on_every_request_that_reads_or_writes_an_object():
    key = os.urandom(32)
    opts = RequestOptions(sse_c_key=key)
    b64 = base64.b64encode(key).decode()
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    for op in ("GetObject", "HeadObject", "PutObject", "CreateMultipartUpload", "UploadPart",
               "CompleteMultipartUpload", "CopyObject", "UploadPartCopy"):
        p = _params_for(opts, op)
        assert (p["SSECustomerAlgorithm"], p["SSECustomerKey"], p["SSECustomerKeyMD5"]) == \
            ("AES256", b64, md5), op
    for op in ("CopyObject", "UploadPartCopy"):
        p = _params_for(opts, op)
        assert (p["CopySourceSSECustomerKey"], p["CopySourceSSECustomerKeyMD5"]) == (b64, md5)
    for op in ("ListObjectsV2", "DeleteObject", "AbortMultipartUpload"):
        assert _params_for(opts, op) == {}, op
    assert opts.secrets() == [b64]
    assert b64 not in repr(opts) and "sse_c_key" not in repr(opts)


def test_read_sse_c_key(tmp_path):
    key = os.urandom(32)
    raw = tmp_path / "raw"
    raw.write_bytes(key)
    raw.chmod(0o600)
    assert read_sse_c_key(str(raw)) == key
    b64 = tmp_path / "b64"
    b64.write_text(base64.b64encode(key).decode() + "\n")
    b64.chmod(0o400)
    assert read_sse_c_key(str(b64)) == key
    b64.chmod(0o640)
    with pytest.raises(UserError, match="group or others"):
        read_sse_c_key(str(b64))
    short = tmp_path / "short"
    short.write_text(base64.b64encode(os.urandom(16)).decode())
    short.chmod(0o600)
    with pytest.raises(UserError, match="32-byte key"):
        read_sse_c_key(str(short))
    with pytest.raises(UserError, match="cannot read"):
        read_sse_c_key(str(tmp_path / "missing"))
    (tmp_path / "a-dir").mkdir(mode=0o700)
    with pytest.raises(UserError, match="cannot read sse_c_key_file .*directory"):
        read_sse_c_key(str(tmp_path / "a-dir"))


def test_encryption_and_tls_options():
    cfg = build("b", "", "/m", o_options=["sse_kms_key_id=arn:aws:kms:k,no_verify_ssl"])
    assert cfg.sse == "aws:kms" and cfg.verify_ssl is False
    assert build("b", "", "/m", o_options=["sse=aes256"]).sse == "AES256"
    assert build("b", "", "/m", o_options=["storage_class=glacier_ir"]).storage_class == \
        "GLACIER_IR"
    assert build("b", "", "/m").verify_ssl is True
    assert build("b", "", "/m", o_options=["metrics_port=9100"]).metrics_port == 9100
    for bad in ("sse=des", "sse=AES256,sse_kms_key_id=k", "sse=AES256,sse_c_key_file=/k",
                "storage_class=a b", "metrics_port=70000"):
        with pytest.raises(ConfigError):
            build("b", "", "/m", o_options=[bad])


@contextlib.contextmanager
def own_root_logger():
    """Let a test call logs.setup: the root logger's level and handlers are
    put back afterwards (the handlers it added closed)."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        root.setLevel(saved[0])
        for h in saved[1]:
            root.addHandler(h)


def test_daemon_logs_to_syslog_with_its_name_and_the_daemon_facility(tmp_path, monkeypatch):
    import socket

    path = str(tmp_path / "log.sock")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(10)
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", path)
    try:
        with own_root_logger():
            logs.setup(build("b", "", "/m", o_options=["log_level=info"]), daemon=True)
            logging.getLogger("objectfs.test").warning("hello Signature=%s", "0123456789abcdef")
            message = sink.recv(4096).decode()
    finally:
        sink.close()
    # <priority> = facility daemon (3) * 8 + warning (4)
    assert message.startswith(f"<28>objectfs[{os.getpid()}]: WARNING objectfs.test: hello ")
    assert "0123456789abcdef" not in message
    assert logs.no_log_warning(build("b", "", "/m")) is None  # the socket exists now


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_reply_to_a_request_the_kernel_dropped_is_no_error(tmp_path, level):
    """pyfuse3's ERROR for a reply that found its request gone (ENOENT) is
    logged at DEBUG (so not at all at INFO); its other reply errors stay."""
    log_file = tmp_path / "log"
    with own_root_logger():
        logs.setup(build("b", "", "/m", o_options=[f"log_level={level}", f"log_file={log_file}"]),
                   daemon=True)
        fuse_log = logging.getLogger("pyfuse3")
        fuse_log.error("fuse_release(): fuse_reply_* failed with %s", "No such file or directory")
        fuse_log.error("fuse_read(): fuse_reply_* failed with %s", "Invalid argument")
    lines = log_file.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == (
        ["DEBUG pyfuse3: fuse_release(): fuse_reply_* failed with No such file or directory"]
        if level == "debug" else []) + [
        "ERROR pyfuse3: fuse_read(): fuse_reply_* failed with Invalid argument"]


def test_no_syslog_is_said_to_the_user(monkeypatch, tmp_path):
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(tmp_path / "missing"))
    assert "log_file" in logs.no_log_warning(build("b", "", "/m"))
    assert logs.no_log_warning(build("b", "", "/m", o_options=["log_file=/tmp/x"])) is None


def test_helpers_return_the_same_child_and_refuse_another_kind():
    a = metrics.counter("objectfs_test_kind_total", op="x")
    assert metrics.counter("objectfs_test_kind_total", op="x") is a
    with pytest.raises(ValueError):
        metrics.gauge("objectfs_test_kind_total", op="x")
