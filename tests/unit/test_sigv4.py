"""Our SigV4 signer (objectfs/store/sigv4.py) against botocore's: the same
headers, Authorization included, for any request the lean path makes."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

import botocore.session
from botocore.awsrequest import AWSRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from objectfs.store import sigv4

_clients: dict = {}


def client(region: str, endpoint: str, token: str | None):
    k = (region, endpoint, token)
    if k not in _clients:
        _clients[k] = botocore.session.get_session().create_client(
            "s3", region_name=region, endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            aws_session_token=token)
    return _clients[k]


def botocore_signed(c, op: str, method: str, url: str, headers: dict) -> dict:
    request = AWSRequest(method=method, url=url, headers=dict(headers))
    c._request_signer.sign(op, request)
    return dict(request.headers)


endpoints = st.sampled_from(["http://127.0.0.1:9000", "https://s3.example.com",
                             "http://localhost", "https://Minio.Example.com:443",
                             "http://[::1]:8080", "https://s3.example.com:8443"])
keys = st.text(min_size=1, max_size=40)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
queries = st.lists(st.tuples(st.sampled_from(["prefix", "delimiter", "max-keys",
                                              "continuation-token", "list-type"]),
                             st.text(max_size=12)), max_size=4, unique_by=lambda p: p[0])


@settings(max_examples=300, deadline=None)
@given(op_method=st.sampled_from([("HeadObject", "HEAD"), ("GetObject", "GET"),
                                  ("DeleteObject", "DELETE"), ("ListObjectsV2", "GET")]),
       region=st.sampled_from(["us-east-1", "eu-west-3", "garage"]),
       endpoint=endpoints, key=keys, query=queries,
       range_=st.none() | header_values, if_match=st.none() | header_values,
       token=st.none() | st.sampled_from(["FQoGZXIvYXdzEJr//////////wEaDOT0ken", "t"]))
def test_our_signature_is_botocores(op_method, region, endpoint, key, query, range_,
                                    if_match, token):
    op, method = op_method
    c = client(region, endpoint, token)
    url = f"{endpoint}/bucket/" + quote(key, safe="/~")
    if op == "ListObjectsV2":
        url = f"{endpoint}/bucket?" + "&".join(
            f"{k}={quote(v, safe='-_.~')}" for k, v in sorted(query))
    headers = {}
    if range_ is not None:
        headers["Range"] = range_
    if if_match is not None:
        headers["If-Match"] = if_match
    theirs = botocore_signed(c, op, method, url, headers)
    signer = sigv4.Signer(c._request_signer._credentials, region, "s3")
    assert signer.sign(method, url, headers, theirs["X-Amz-Date"]) == theirs
    assert signer.matches(method, url, headers, theirs)


def test_a_signer_that_differs_does_not_match_and_keys_are_kept_for_the_day():
    c = client("us-east-1", "http://127.0.0.1:9000", None)
    url = "http://127.0.0.1:9000/bucket/k"
    theirs = botocore_signed(c, "HeadObject", "HEAD", url, {})
    creds = c._request_signer._credentials
    assert sigv4.Signer(creds, "us-east-1", "s3").matches("HEAD", url, {}, theirs)
    assert not sigv4.Signer(creds, "eu-west-1", "s3").matches("HEAD", url, {}, theirs)
    assert not sigv4.Signer(creds, "us-east-1", "s3").matches("GET", url, {}, theirs)
    assert not sigv4.Signer(creds, "us-east-1", "s3").matches("HEAD", url + "x", {}, theirs)
    s = sigv4.Signer(creds, "us-east-1", "s3")
    a = s.sign("GET", url, {}, "20261205T000000Z")["Authorization"]
    key = s._key
    assert s.sign("GET", url, {}, "20261205T235959Z")["Authorization"] != a
    assert s._key is key, "the signing key is derived once a day"
    s.sign("GET", url, {}, "20261206T000000Z")
    assert s._key is not key


def botocore_signed_body(c, op: str, method: str, url: str, headers: dict, body: bytes) -> dict:
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body or None)
    c._request_signer.sign(op, request)
    return dict(request.headers)


upload_ids = st.text(st.sampled_from("ABCDEFabcdef0123456789-_.=+/~"), min_size=1, max_size=60)
meta = st.dictionaries(st.text(st.sampled_from("abcdefxyz-_0123456789"), min_size=1, max_size=12),
                       header_values, max_size=3)


@settings(max_examples=200, deadline=None)
@given(op=st.sampled_from(["CreateMultipartUpload", "UploadPartCopy",
                           "CompleteMultipartUpload", "AbortMultipartUpload", "PutObject",
                           "CopyObject"]),
       region=st.sampled_from(["us-east-1", "eu-west-3", "garage"]), endpoint=endpoints,
       key=keys, upload_id=upload_ids, number=st.integers(1, 10_000), metadata=meta,
       if_match=st.none() | header_values, body=st.binary(min_size=1, max_size=300))
def test_our_signature_of_a_multipart_uploads_requests_is_botocores(
        op, region, endpoint, key, upload_id, number, metadata, if_match, body):
    """The requests lean.py makes for a multipart upload, a small PutObject
    and a CopyObject, as it makes them: a query without a value (``?uploads``), a
    percent-encoded upload id, x-amz-* headers, Content-MD5 and the
    conditions, and the bodies of CompleteMultipartUpload and PutObject,
    whose SHA-256 is signed (over HTTPS too)."""
    c = client(region, endpoint, None)
    url = f"{endpoint}/bucket/" + quote(key, safe="/~")
    upload = "uploadId=" + quote(upload_id, safe="-_.~")
    headers: dict[str, str] = {}
    if op == "CreateMultipartUpload":
        method, url = "POST", url + "?uploads"
        headers = {"x-amz-meta-" + k: v for k, v in metadata.items()}
        headers["Content-Type"] = "text/plain"
    elif op == "UploadPartCopy":
        method, url = "PUT", f"{url}?partNumber={number}&{upload}"
        headers = {"x-amz-copy-source": "bucket/" + quote(key, safe="-._~/"),
                   "x-amz-copy-source-range": "bytes=0-5242879"}
        if if_match is not None:
            headers["x-amz-copy-source-if-match"] = if_match
    elif op == "CopyObject":
        method = "PUT"
        headers = {"x-amz-meta-" + k: v for k, v in metadata.items()}
        headers["x-amz-copy-source"] = "bucket/" + quote(key, safe="-._~/")
        headers["x-amz-metadata-directive"] = "REPLACE" if metadata else "COPY"
        if if_match is not None:
            headers["x-amz-copy-source-if-match"] = if_match
    elif op == "PutObject":
        method = "PUT"
        headers = {"x-amz-meta-" + k: v for k, v in metadata.items()}
        headers["Content-Type"] = "text/plain"
        headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
        if if_match is not None:
            headers["If-Match"] = if_match
        else:
            headers["If-None-Match"] = "*"
    else:
        method = "POST" if op == "CompleteMultipartUpload" else "DELETE"
        url = f"{url}?{upload}"
    if op not in ("CompleteMultipartUpload", "PutObject"):
        body = b""
    theirs = botocore_signed_body(c, op, method, url, headers, body)
    payload = hashlib.sha256(body).hexdigest()
    signer = sigv4.Signer(c._request_signer._credentials, region, "s3")
    assert signer.sign(method, url, headers, theirs["X-Amz-Date"], payload) == theirs
    assert signer.matches(method, url, headers, theirs, payload)


def test_the_host_header_is_worked_out_once_per_server_not_per_url():
    from urllib.parse import urlsplit

    from objectfs.store import ahttp

    ahttp._host_header.cache_clear()
    for path in ("/bucket/k1", "/bucket/k2?uploads", "/bucket/dir/k3"):
        assert ahttp.host_header(urlsplit("http://[::1]:8080" + path)) == "[::1]:8080"
        assert ahttp.host_header(urlsplit("https://S3.Example.com:443" + path)) == "s3.example.com"
    assert ahttp._host_header.cache_info().misses == 2
