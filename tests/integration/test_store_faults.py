"""S3Store under injected faults (no FUSE): retries, Retry-After, the AIMD
concurrency limit, body checks, checksummed uploads and requests whose
answer was lost.  The fault proxy sits between the store and moto."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from objectfs.errors import PreconditionFailed, StoreError
from objectfs.store.base import MiB
from objectfs.store.s3 import S3Settings, S3Store
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import SwiftServer, swift_available


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3, seed=11, retry_after=1.5, max_consecutive=2) as p:
        yield p


@pytest.fixture
def store_for(proxy, monkeypatch):
    for k, v in proxy.env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)

    def make(bucket, **kw):
        kw.setdefault("read_timeout", 10)
        return S3Store(S3Settings(bucket=bucket, endpoint_url=proxy.endpoint, **kw))
    return make


def test_ranged_gets_survive_resets_and_truncation(s3, bucket, proxy, store_for):
    body = os.urandom(3 * MiB)
    s3.client().put_object(Bucket=bucket, Key="obj", Body=body)
    store = store_for(bucket)
    etag = s3.client().head_object(Bucket=bucket, Key="obj")["ETag"]
    proxy.set_rates({"GetObject": {"reset_mid": 0.15, "truncate": 0.15, "reset": 0.1,
                                   "error": 0.05, "slowdown": 0.05}})
    proxy.retry_after = 0

    async def main():
        got = []
        for start in range(0, len(body), 256 * 1024):
            got.append(await store.get("obj", start, start + 256 * 1024, etag=etag))
        return b"".join(got)

    assert trio.run(main) == body
    assert proxy.injected("GetObject", "reset_mid") > 0
    assert proxy.injected("GetObject", "truncate") > 0
    assert store.retries == proxy.injected()


def test_large_bodies_reuse_buffers_and_never_overwrite_one_held(s3, bucket, proxy,
                                                                  store_for):
    """Bodies of 1 MiB or more are read into kept buffers (store/buffers.py)
    through the lean path: broken and truncated bodies are retried into a
    buffer again, and a body still held (here, and through a view) is never
    the buffer a later GET is read into."""
    body = os.urandom(12 * MiB)
    s3.client().put_object(Bucket=bucket, Key="obj", Body=body)
    store = store_for(bucket)
    etag = s3.client().head_object(Bucket=bucket, Key="obj")["ETag"]

    async def main():
        await store.check_bucket("")  # the lean path learns the bucket's URL
        proxy.set_rates({"GetObject": {"reset_mid": 0.15, "truncate": 0.15}})
        proxy.retry_after = 0
        first = await store.get("obj", 0, 2 * MiB, etag=etag)
        tail = memoryview(await store.get("obj", 2 * MiB, 4 * MiB, etag=etag))[MiB:]
        got = []
        for _ in range(3):
            for start in range(0, len(body), 2 * MiB):
                data = await store.get("obj", start, start + 2 * MiB, etag=etag)
                got.append(bytes(data))
                del data
        return bytes(first), bytes(tail), got

    first, tail, got = trio.run(main)
    assert first == body[:2 * MiB] and tail == body[3 * MiB:4 * MiB]
    assert got == [body[i:i + 2 * MiB] for i in range(0, len(body), 2 * MiB)] * 3
    assert store.receive_buffers.reused >= 10
    assert proxy.injected("GetObject", "truncate") > 0
    assert proxy.injected("GetObject", "reset_mid") > 0


def test_changed_object_is_stale_not_mixed(s3, bucket, proxy, store_for):
    c = s3.client()
    c.put_object(Bucket=bucket, Key="obj", Body=b"a" * 1000)
    etag = c.head_object(Bucket=bucket, Key="obj")["ETag"]
    store = store_for(bucket)
    assert trio.run(store.get, "obj", 0, 10) == b"a" * 10
    c.put_object(Bucket=bucket, Key="obj", Body=b"b" * 1000)
    with pytest.raises(PreconditionFailed) as e:
        trio.run(lambda: store.get("obj", 10, 20, etag=etag))
    assert e.value.errno == errno.ESTALE


def test_retry_after_is_honoured(bucket, proxy, store_for):
    store = store_for(bucket)
    proxy.fail_next("PutObject", "slowdown", count=1)
    trio.run(lambda: store.put("k", b"data", metadata={}, content_type="text/plain"))
    puts = [e for e in proxy.events if e.op == "PutObject"]
    assert [e.fault for e in puts] == ["slowdown", None]
    # the retry came no sooner than Retry-After (1.5 s) allowed
    assert puts[1].t - puts[0].t >= 1.5


def test_concurrency_halves_under_slowdown_and_recovers(bucket, proxy, store_for):
    store = store_for(bucket, max_connections=8)
    proxy.retry_after = 0
    proxy.fail_next("ListObjectsV2", "slowdown", count=2)

    async def main():
        await store.check_bucket()  # throttled twice in a burst, then succeeds
        lowered = store.limiter.total_tokens
        for _ in range(40):
            await store.check_bucket()
        return lowered

    lowered = trio.run(main)
    assert lowered == 4            # one burst: halved once
    assert store.congestion.cuts == 1
    assert store.limiter.total_tokens == 8  # restored after successes


def test_persistent_failure_is_eio_after_bounded_attempts(bucket, proxy, store_for):
    store = store_for(bucket, max_attempts=3)
    proxy.max_consecutive = None
    proxy.retry_after = 0
    proxy.set_rates({"PutObject": {"error": 1.0}})
    with pytest.raises(StoreError) as e:
        trio.run(lambda: store.put("k", b"x", metadata={}, content_type="text/plain"))
    assert e.value.errno == errno.EIO
    assert proxy.requests["PutObject"] == 3


@pytest.mark.parametrize("mode", ["md5", "auto"])
def test_corrupted_upload_is_rejected_and_resent(s3, bucket, proxy, store_for, mode):
    """With Content-MD5 (md5) or the signed SHA-256 (auto over HTTP) the
    server refuses a body damaged in transit; the store sends it again."""
    store = store_for(bucket, upload_checksum=mode)
    proxy.fail_next("PutObject", "corrupt_upload")
    proxy.fail_next("UploadPart", "corrupt_upload")
    part = os.urandom(5 * MiB)

    async def main():
        await store.put("small", b"hello world", metadata={}, content_type="text/plain")
        uid = await store.create_multipart("big", metadata={}, content_type="x/y")
        p1 = await store.upload_part("big", uid, 1, part)
        p2 = await store.upload_part("big", uid, 2, b"tail")
        await store.complete_multipart("big", uid, [p1, p2])

    trio.run(main)
    assert proxy.rejected == 2
    c = s3.client()
    assert c.get_object(Bucket=bucket, Key="small")["Body"].read() == b"hello world"
    assert c.get_object(Bucket=bucket, Key="big")["Body"].read() == part + b"tail"


def test_lost_answers_of_non_idempotent_requests(s3, bucket, proxy, store_for):
    """The request reached the server but its answer was lost (connection
    reset): the retry must neither fail nor leave an orphan upload."""
    store = store_for(bucket)
    proxy.fail_next("CreateMultipartUpload", "reset")
    proxy.fail_next("CompleteMultipartUpload", "reset")
    proxy.fail_next("PutObject", "reset")
    part = os.urandom(5 * MiB)

    async def main():
        uid = await store.create_multipart("big", metadata={}, content_type="x/y")
        assert await store.list_multipart_uploads("big") == [("big", uid)]
        p1 = await store.upload_part("big", uid, 1, part)
        p2 = await store.upload_part("big", uid, 2, b"end")
        info = await store.complete_multipart("big", uid, [p1, p2])
        await store.put("new", b"only once", metadata={}, content_type="text/plain",
                        if_none_match=True)
        return info

    info = trio.run(main)
    c = s3.client()
    assert info.etag == c.head_object(Bucket=bucket, Key="big")["ETag"]
    assert c.get_object(Bucket=bucket, Key="big")["Body"].read() == part + b"end"
    assert c.get_object(Bucket=bucket, Key="new")["Body"].read() == b"only once"
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert proxy.injected(fault="reset") == 3


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("OBJECTFS_SOAK") != "1" or not swift_available(),
                    reason="needs Swift and OBJECTFS_SOAK=1 (make soak)")
@pytest.mark.parametrize("mode", ["md5", "auto"])
def test_real_server_rejects_corrupted_upload(monkeypatch, mode):
    """Swift's s3api (a production S3 implementation) itself refuses a body
    that fails Content-MD5 or the signed SHA-256: the proxy only damages it."""
    with SwiftServer() as sw, FaultProxy(sw, check_digests=False) as proxy:
        bucket = sw.new_bucket()
        for k, v in sw.env().items():
            if k.startswith("AWS_"):
                monkeypatch.setenv(k, v)
        store = S3Store(S3Settings(bucket=bucket, endpoint_url=proxy.endpoint,
                                   upload_checksum=mode))
        body = os.urandom(100_000)
        proxy.fail_next("PutObject", "corrupt_upload")
        trio.run(lambda: store.put("k", body, metadata={}, content_type="x/y"))
        assert proxy.injected("PutObject", "corrupt_upload") == 1
        assert store.retries == 1  # refused by Swift, then sent again
        assert sw.client().get_object(Bucket=bucket, Key="k")["Body"].read() == body


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("OBJECTFS_SOAK") != "1" or not swift_available(),
                    reason="needs Swift and OBJECTFS_SOAK=1 (make soak)")
def test_appends_renames_and_chmods_of_multipart_files_on_swift(mount):
    """Swift's s3api refuses x-amz-copy-source-if-match on an object uploaded
    in parts whatever its ETag: appends (UploadPartCopy) and renames of such
    files work there, the ETag checked by a HEAD instead (S3Store._copy_if)."""
    with SwiftServer() as sw:
        bucket = sw.new_bucket()
        m = mount(bucket, server=sw, options=["part_size=5M"])
        mp = m.mountpoint
        data = os.urandom(12 << 20)
        with open(os.path.join(mp, "f"), "wb") as f:
            f.write(data)
        for step in ("append", "rename", "chmod", "append again"):
            if step == "rename":
                os.rename(os.path.join(mp, "f"), os.path.join(mp, "g"))
            elif step == "chmod":
                os.chmod(os.path.join(mp, "g"), 0o600)
            else:
                name = "f" if step == "append" else "g"
                with open(os.path.join(mp, name), "ab") as f:
                    f.write(step.encode())
                data += step.encode()
        got = sw.client().get_object(Bucket=bucket, Key="g")["Body"].read()
        assert got == data
        assert "checks their ETag with a HEAD" in m.log()
