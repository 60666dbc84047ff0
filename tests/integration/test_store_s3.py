"""The S3 client layer against a real server: what goes on the wire.

These tests drive ``S3Store`` directly (no FUSE) against the session's moto
server and watch the requests botocore actually sends through its
``before-send`` event, so they check headers, not our intentions.
"""

from __future__ import annotations

import hashlib

import pytest
import trio

from objectfs.store.s3 import S3Settings, S3Store


def _store(s3, bucket, monkeypatch, **kw) -> tuple[S3Store, list]:
    for k, v in s3.env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    store = S3Store(S3Settings(bucket=bucket, endpoint_url=s3.endpoint, **kw))
    sent: list = []
    store.client.meta.events.register(
        "before-send.s3", lambda request, **_: sent.append(request))
    return store, sent


def _payload(body) -> bytes:
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    pos = body.tell()
    body.seek(0)
    data = body.read()
    body.seek(pos)
    return data


def _bodies_sent(sent, method="PUT"):
    return [r for r in sent if r.method == method]


@pytest.mark.parametrize("mode,expect_md5", [("auto", False), ("md5", True), ("none", False)])
def test_upload_integrity_headers(s3, bucket, monkeypatch, mode, expect_md5):
    store, sent = _store(s3, bucket, monkeypatch, upload_checksum=mode)
    body = bytearray(b"x" * 100_000)
    part_body = memoryview(bytes(range(256)) * 24_000)  # ~6 MB, a valid non-last part size

    async def main():
        await store.put("small", body, metadata={}, content_type="application/octet-stream")
        uid = await store.create_multipart("big", metadata={}, content_type="application/x")
        p1 = await store.upload_part("big", uid, 1, part_body)
        p2 = await store.upload_part("big", uid, 2, b"tail")
        await store.complete_multipart("big", uid, [p1, p2])

    trio.run(main)
    puts = _bodies_sent(sent)
    assert len(puts) == 3
    for r in puts:
        has_md5 = "Content-MD5" in r.headers
        assert has_md5 is expect_md5, (mode, dict(r.headers))
        # Over plain HTTP SigV4 signs the payload hash: the server verifies
        # the body even without Content-MD5.
        sha = r.headers["x-amz-content-sha256"]
        sha = sha.decode() if isinstance(sha, bytes) else sha
        body_bytes = _payload(r.body)
        assert sha == hashlib.sha256(body_bytes).hexdigest()
    got = s3.client().get_object(Bucket=bucket, Key="big")["Body"].read()
    assert got == bytes(part_body) + b"tail"
    assert s3.client().get_object(Bucket=bucket, Key="small")["Body"].read() == bytes(body)


def test_auto_sends_md5_over_https(monkeypatch):
    """No request is made: over HTTPS botocore sends UNSIGNED-PAYLOAD, so auto adds MD5."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert S3Store(S3Settings(bucket="b", endpoint_url="https://127.0.0.1:1")).content_md5
    assert S3Store(S3Settings(bucket="b", region="us-east-1")).content_md5
    assert not S3Store(S3Settings(bucket="b", endpoint_url="http://127.0.0.1:1")).content_md5
    assert S3Store(S3Settings(bucket="b", endpoint_url="http://127.0.0.1:1",
                              upload_checksum="md5")).content_md5


def test_delete_objects_carries_content_md5(s3, bucket, monkeypatch):
    store, sent = _store(s3, bucket, monkeypatch)
    c = s3.client()
    for i in range(3):
        c.put_object(Bucket=bucket, Key=f"k{i}", Body=b"v")
    trio.run(store.delete_many, ["k0", "k1", "k2"])
    posts = _bodies_sent(sent, "POST")
    assert posts and all("Content-MD5" in r.headers for r in posts)
    assert c.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
