"""The fault-injecting proxy itself (tests/support/faultproxy.py), seen by a
plain boto3 client with retries off: every fault shows up as it should, and
without faults the proxy is transparent (SigV4 requests pass unchanged)."""

from __future__ import annotations

import base64
import hashlib

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.support.faultproxy import FaultProxy, operation


def _client(proxy):
    return boto3.client(
        "s3", endpoint_url=proxy.endpoint, aws_access_key_id=proxy.access_key,
        aws_secret_access_key=proxy.secret_key, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required", read_timeout=10))


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3, seed=7, retry_after=3) as p:
        yield p


def test_operations_recognised():
    cases = [
        ("GET", "/b?list-type=2&prefix=a", {}, "ListObjectsV2"),
        ("GET", "/b?uploads", {}, "ListMultipartUploads"),
        ("GET", "/b/k/x", {}, "GetObject"),
        ("HEAD", "/b/k", {}, "HeadObject"),
        ("PUT", "/b/k", {}, "PutObject"),
        ("PUT", "/b/k", {"x-amz-copy-source": "b/j"}, "CopyObject"),
        ("PUT", "/b/k?partNumber=2&uploadId=u", {}, "UploadPart"),
        ("PUT", "/b/k?partNumber=2&uploadId=u", {"x-amz-copy-source": "b/j"}, "UploadPartCopy"),
        ("POST", "/b/k?uploads", {}, "CreateMultipartUpload"),
        ("POST", "/b/k?uploadId=u", {}, "CompleteMultipartUpload"),
        ("POST", "/b?delete", {}, "DeleteObjects"),
        ("DELETE", "/b/k?uploadId=u", {}, "AbortMultipartUpload"),
        ("DELETE", "/b/k", {}, "DeleteObject"),
    ]
    for method, target, headers, op in cases:
        assert operation(method, target, headers) == op, (method, target)


def test_transparent_without_faults(s3, bucket, proxy):
    c = _client(proxy)
    body = bytes(range(256)) * 4096
    c.put_object(Bucket=bucket, Key="a/b", Body=body)
    assert c.get_object(Bucket=bucket, Key="a/b")["Body"].read() == body
    assert c.get_object(Bucket=bucket, Key="a/b", Range="bytes=10-19")["Body"].read() == body[10:20]
    assert c.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
    assert proxy.injected() == 0
    assert proxy.requests["PutObject"] == 1 and proxy.requests["GetObject"] == 2


def test_each_fault_is_visible(s3, bucket, proxy):
    c = _client(proxy)
    body = b"z" * 200_000
    s3.client().put_object(Bucket=bucket, Key="k", Body=body)

    proxy.fail_next("GetObject", "error")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.get_object(Bucket=bucket, Key="k")
    assert e.value.response["Error"]["Code"] == "InternalError"

    proxy.fail_next("HeadObject", "slowdown")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.head_object(Bucket=bucket, Key="k")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "3"

    proxy.fail_next("GetObject", "reset")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        c.get_object(Bucket=bucket, Key="k")

    for fault in ("reset_mid", "truncate"):
        proxy.fail_next("GetObject", fault)
        r = c.get_object(Bucket=bucket, Key="k")
        assert r["ContentLength"] == len(body)  # the headers promise the whole body
        with pytest.raises((botocore.exceptions.IncompleteReadError,
                            botocore.exceptions.ResponseStreamingError)):
            r["Body"].read()

    # a corrupted upload is refused when it carries a checksum
    proxy.fail_next("PutObject", "corrupt_upload")
    md5 = base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.put_object(Bucket=bucket, Key="p", Body=b"payload", ContentMD5=md5)
    assert e.value.response["Error"]["Code"] == "BadDigest"
    assert proxy.rejected == 1

    for op, fault in [("GetObject", "error"), ("HeadObject", "slowdown"), ("GetObject", "reset"),
                      ("GetObject", "reset_mid"), ("GetObject", "truncate"),
                      ("PutObject", "corrupt_upload")]:
        assert proxy.injected(op, fault) == 1, (op, fault)
    # nothing was injected after the scripted faults ran out
    assert c.get_object(Bucket=bucket, Key="k")["Body"].read() == body


def test_rates_are_seeded_and_bounded(s3, bucket):
    outcomes = []
    for _ in range(2):
        with FaultProxy(s3, seed=3, max_consecutive=2) as p:
            c = _client(p)
            p.set_rates({"HeadBucket": {"error": 0.9}})
            seen = []
            for _ in range(12):
                try:
                    c.head_bucket(Bucket=bucket)
                    seen.append("ok")
                except botocore.exceptions.ClientError:
                    seen.append("err")
            outcomes.append(seen)
            assert p.injected() == seen.count("err") > 0
            # never more than max_consecutive faults in a row for one request
            assert "err,err,err" not in ",".join(seen)
    assert outcomes[0] == outcomes[1]
