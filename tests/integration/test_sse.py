"""Encryption, storage class, requester-pays and TLS verification, through a
real mount.

moto stores SSE-S3/SSE-KMS and storage-class headers (head_object shows
them) but does not implement SSE-C: it accepts the headers and ignores
them.  So SSE-C and requester-pays are checked on the wire, through a
recording proxy between the mount and moto: every request the mount sends
that touches an object's bytes or headers must carry them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import os
import subprocess
import sys
import threading
import warnings

import pytest

from tests.conftest import run_cli
from tests.support.s3server import LOOPBACK, MotoServer, free_port, wait_for_port

MiB = 1024 * 1024


class RecordingProxy:
    """An HTTP proxy on loopback that records each request's method, URL and
    headers and forwards it to the S3 server (moto's own recorder garbles
    concurrent requests with large bodies)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.requests: list[dict] = []
        self.recording = False
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                if proxy.recording:
                    proxy.requests.append({"method": self.command, "url": self.path,
                                           "headers": dict(self.headers)})
                conn = http.client.HTTPConnection(LOOPBACK, proxy.upstream.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() in ("transfer-encoding", "connection") or \
                            (k.lower() == "content-length" and self.command != "HEAD"):
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # what the mount fixture needs of a server
    def env(self):
        return self.upstream.env()

    def start(self) -> None:
        self.requests.clear()
        self.recording = True

    def stop_recording(self) -> list[dict]:
        self.recording = False
        return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def proxy(s3):
    p = RecordingProxy(s3)
    try:
        yield p
    finally:
        p.stop()


def _headers(req: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in req["headers"].items()}


def _path(req: dict) -> str:
    return req["url"].split("://", 1)[-1].split("/", 1)[-1]


def _is_object_request(req: dict, bucket: str) -> bool:
    """A request on an object (not a bucket listing or a DELETE)."""
    path, _, query = _path(req).partition("?")
    return (path.startswith(bucket + "/") and len(path) > len(bucket) + 1
            and req["method"] != "DELETE" and "delete" not in query)


def _write_tree(mp: str) -> bytes:
    """Objects by PutObject, multipart upload and CopyObject (rename)."""
    big = os.urandom(11 * MiB)
    with open(os.path.join(mp, "small.txt"), "wb") as f:
        f.write(b"small file")
    with open(os.path.join(mp, "big.bin"), "wb") as f:
        f.write(big)
    os.mkdir(os.path.join(mp, "dir"))
    os.rename(os.path.join(mp, "small.txt"), os.path.join(mp, "dir", "moved.txt"))
    os.chmod(os.path.join(mp, "big.bin"), 0o600)  # a metadata-only CopyObject
    return big


def test_sse_s3_storage_class_and_requester_pays_on_every_write(proxy, s3, bucket, mount):
    m = mount(bucket, server=proxy, options=["sse=AES256", "storage_class=standard_ia",
                                             "requester_pays", "part_size=5M"])
    proxy.start()
    big = _write_tree(m.mountpoint)
    with open(os.path.join(m.mountpoint, "big.bin"), "rb") as f:
        assert f.read() == big
    requests = proxy.stop_recording()
    m.unmount()
    assert requests
    ops = set()
    for req in requests:
        h = _headers(req)
        assert h.get("x-amz-request-payer") == "requester", req["url"]
        query = req["url"].partition("?")[2]
        if req["method"] in ("PUT", "POST") and "uploadId=" not in query and \
                "delete" not in query:
            # PutObject, CopyObject, CreateMultipartUpload: the object's settings
            ops.add("copy" if "x-amz-copy-source" in h else req["method"])
            assert h.get("x-amz-server-side-encryption") == "AES256", req["url"]
            assert h.get("x-amz-storage-class") == "STANDARD_IA", req["url"]
    assert {"PUT", "POST", "copy"} <= ops  # put, multipart, copy were all exercised
    client = s3.client()
    for key in ("dir/moved.txt", "big.bin", "dir/"):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256", key
        assert head["StorageClass"] == "STANDARD_IA", key
    assert client.head_object(Bucket=bucket, Key="big.bin")["ContentLength"] == len(big)


def test_sse_kms_key_id(s3, bucket, mount):
    m = mount(bucket, server=s3, options=["sse_kms_key_id=alias/objectfs-test"])
    with open(os.path.join(m.mountpoint, "f"), "wb") as f:
        f.write(b"kms")
    os.rename(os.path.join(m.mountpoint, "f"), os.path.join(m.mountpoint, "g"))
    head = s3.client().head_object(Bucket=bucket, Key="g")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/objectfs-test")


def test_sse_c_key_on_every_object_request(proxy, bucket, mount, workdir):
    key = os.urandom(32)
    key_file = workdir / "sse-c.key"
    key_file.write_text(base64.b64encode(key).decode() + "\n")
    key_file.chmod(0o600)
    opts = [f"sse_c_key_file={key_file}", "part_size=5M"]
    m = mount(bucket, server=proxy, options=opts)
    proxy.start()
    big = _write_tree(m.mountpoint)
    m.unmount()
    # a fresh mount reads everything back (GET and HEAD with the key)
    m2 = mount(bucket, server=proxy, options=opts)
    with open(os.path.join(m2.mountpoint, "big.bin"), "rb") as f:
        assert f.read() == big
    with open(os.path.join(m2.mountpoint, "dir", "moved.txt"), "rb") as f:
        assert f.read() == b"small file"
    requests = proxy.stop_recording()
    m2.unmount()
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    methods = set()
    for req in requests:
        if not _is_object_request(req, bucket):
            continue
        h = _headers(req)
        methods.add(req["method"])
        assert h.get("x-amz-server-side-encryption-customer-algorithm") == "AES256", req["url"]
        assert h.get("x-amz-server-side-encryption-customer-key-md5") == md5, req["url"]
        assert h.get("x-amz-server-side-encryption-customer-key") == \
            base64.b64encode(key).decode()
        if "x-amz-copy-source" in h:
            methods.add("copy")
            assert h.get("x-amz-copy-source-server-side-encryption-customer-key-md5") == md5
    # PutObject/UploadPart/CopyObject, CreateMultipartUpload/Complete, GetObject, HeadObject
    assert {"PUT", "POST", "GET", "HEAD", "copy"} <= methods, methods


@pytest.mark.parametrize("mode, content, words", [
    (0o644, None, "accessible by group or others"),
    (0o600, b"too short", "must hold a 32-byte key"),
    (None, None, "cannot read sse_c_key_file"),    # missing
])
def test_sse_c_key_file_refused(s3, bucket, workdir, mode, content, words):
    """A key file that cannot serve is a configuration error: exit 2, one line."""
    key_file = workdir / "bad.key"
    if mode is not None:
        key_file.write_bytes(content or os.urandom(32))
        key_file.chmod(mode)
    mp = workdir / "mnt-sse-c"
    mp.mkdir()
    r = run_cli(["mount", f"s3://{bucket}", str(mp), "--endpoint-url", s3.endpoint, "-f",
                 "-o", f"sse_c_key_file={key_file}"], env=s3.env(), timeout=60)
    assert r.returncode == 2
    assert words in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_sse_option_conflicts_exit_2(s3, bucket, workdir):
    r = run_cli(["mount", f"s3://{bucket}", str(workdir), "-o",
                 "sse=AES256,sse_kms_key_id=k"], env=s3.env(), timeout=60)
    assert r.returncode == 2 and "sse_kms_key_id needs sse=aws:kms" in r.stderr


# -- TLS -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory):
    """moto over HTTPS with a self-signed certificate."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto-tls") / "log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p",
                             str(port), "--ssl"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    server = MotoServer.__new__(MotoServer)
    server.port, server.proc, server._log = port, proc, log
    server.endpoint = f"https://{LOOPBACK}:{port}"
    try:
        wait_for_port(port, 30, proc)
        import boto3
        import urllib3

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            boto3.client("s3", endpoint_url=server.endpoint, verify=False,
                         region_name="us-east-1", aws_access_key_id="testing",
                         aws_secret_access_key="testing").create_bucket(Bucket="tls")
        yield server
    finally:
        server.stop()


def test_tls_is_verified_unless_no_verify_ssl(tls_s3, mount, workdir):
    mp = workdir / "mnt-tls"
    mp.mkdir()
    r = run_cli(["mount", "s3://tls", str(mp), "--endpoint-url", tls_s3.endpoint],
                env=tls_s3.env(), timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("objectfs: TLS connection to https://"), r.stderr
    assert "no_verify_ssl" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    m = mount("tls", server=tls_s3, options=["no_verify_ssl", "log_level=info"])
    with open(os.path.join(m.mountpoint, "f"), "wb") as f:
        f.write(b"over https")
    with open(os.path.join(m.mountpoint, "f"), "rb") as f:
        assert f.read() == b"over https"
    m.unmount()
    log = m.log()
    assert log.count("TLS certificate verification is off") == 1, log
    assert "InsecureRequestWarning" not in log, log
