"""The lean HeadObject/GetObject path (objectfs/store/lean.py) against a real server.

Every answer it decodes must be exactly what the same call through boto3
gives: attributes, bytes, and errors (code, errno, status).  Calls it does
not understand go through boto3, and mounts it cannot serve never use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ssl

import pytest
import trio

from objectfs import metrics
from objectfs.errors import StoreError
from objectfs.namespace.keys import key_before
from objectfs.store import ahttp, lean
from objectfs.store.base import Part
from objectfs.store.s3 import S3Settings, S3Store
from objectfs.store.s3options import RequestOptions
from tests.support.wait import wait_for

KEY = "dir/odd name+%&=~ü.txt"
BODY = bytes(range(256)) * 40


def same_head(a, b) -> bool:
    """Two HEAD answers for one object, asked one after the other, agree: every
    field, and the server's time of each (``checked_ns``, from its Date header,
    to the second) at most a second apart, as the two may straddle a second."""
    return (dataclasses.replace(a, checked_ns=0) == dataclasses.replace(b, checked_ns=0)
            and abs(a.checked_ns - b.checked_ns) <= 1_000_000_000)


def stores(s3, bucket, **kw) -> tuple[S3Store, S3Store]:
    base = dict(bucket=bucket, endpoint_url=s3.endpoint, access_key=s3.access_key,
                secret_key=s3.secret_key, region="us-east-1", **kw)
    return S3Store(S3Settings(**base)), S3Store(S3Settings(**{**base, "lean_requests": False}))


def boto3_calls(store: S3Store) -> list[str]:
    """Operation names of the calls that went through boto3."""
    calls: list[str] = []
    store.client.meta.events.register(
        "before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def thread_counter():
    """(the names of the functions sent to worker threads, a stand-in for
    ``trio.to_thread.run_sync`` that records them, the real one)."""
    threads: list[str] = []
    real = trio.to_thread.run_sync

    async def counting(fn, *a, **kw):
        threads.append(getattr(fn, "__qualname__", repr(fn)))
        return await real(fn, *a, **kw)

    return threads, counting, real


async def outcome(fn):
    try:
        return "ok", await fn()
    except StoreError as e:
        return type(e).__name__, e.code, e.errno, e.status


def test_answers_are_those_of_boto3(s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=BODY, ContentType="text/x-odd",
                         CacheControl="max-age=60", ContentLanguage="de",
                         Metadata={"mode": "33188", "Mtime": "1700000000.5", "uid": "7"})
    s3_client.put_object(Bucket=bucket, Key="empty", Body=b"")
    fast, slow = stores(s3, bucket)
    assert fast.lean is not None and slow.lean is None
    used = boto3_calls(fast)

    async def main():
        await fast.check_bucket()
        used.clear()
        info = await fast.head(KEY)
        assert same_head(info, await slow.head(KEY))
        assert info.metadata == {"mode": "33188", "mtime": "1700000000.5", "uid": "7"}
        assert info.headers == {"CacheControl": "max-age=60", "ContentLanguage": "de"}
        assert info.size == len(BODY) and info.content_type == "text/x-odd"
        assert same_head(await fast.head("empty"), await slow.head("empty"))
        for rng in [(0, None), (0, 1), (5, 300), (len(BODY) - 3, len(BODY)),
                    (len(BODY) - 3, len(BODY) + 100), (len(BODY), len(BODY) + 10)]:
            assert await fast.get(KEY, *rng) == await slow.get(KEY, *rng) == \
                BODY[rng[0]:rng[1]]
        assert await fast.get(KEY, 10, 20, etag=info.etag) == BODY[10:20]
        assert await fast.get("empty") == b""
        # errors: missing keys by HEAD (no body) and GET (XML), a changed ETag
        for call in (lambda s: s.head("missing"), lambda s: s.get("missing"),
                     lambda s: s.get(KEY, 0, 10, etag='"0123456789abcdef"'),
                     lambda s: s.head("missing/")):
            assert await outcome(lambda: call(fast)) == await outcome(lambda: call(slow))
        assert (await outcome(lambda: fast.head("missing")))[2] == 2   # ENOENT

    trio.run(main)
    assert used == []   # none of it needed boto3


def test_a_header_it_does_not_decode_goes_through_boto3(s3, s3_client, bucket):
    expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    s3_client.put_object(Bucket=bucket, Key="exp", Body=b"x", Expires=expires)
    fast, slow = stores(s3, bucket)
    used = boto3_calls(fast)

    async def main():
        await fast.check_bucket()
        used.clear()
        info = await fast.head("exp")
        assert same_head(info, await slow.head("exp"))
        assert info.headers["Expires"] == expires
        assert await fast.get("exp") == b"x"

    trio.run(main)
    assert used == ["HeadObject", "GetObject"]


def test_mounts_it_cannot_serve_use_boto3(s3, bucket):
    sse_c = RequestOptions(sse_c_key=b"k" * 32)
    payer = RequestOptions(requester_pays=True)
    for kw in ({"request_options": sse_c}, {"request_options": payer},
               {"lean_requests": False}):
        fast, _ = stores(s3, bucket, **kw)
        assert fast.lean is None, kw
    assert lean.usable(S3Settings(bucket=bucket)) is None


def test_object_urls_follow_botocore_addressing(s3, bucket):
    """The bucket's URL is the one botocore sent the first listing to."""
    fast, _ = stores(s3, bucket)
    assert not fast.lean.ready   # nothing listed yet: boto3 serves HEAD and GET
    trio.run(fast.check_bucket)
    assert fast.lean.url("a b/c+d") == f"{s3.endpoint}/{bucket}/a%20b/c%2Bd"
    for kw, url in [({}, "https://my-bucket.s3.eu-west-1.amazonaws.com/k/%C3%A9"),
                    ({"addressing_style": "path"},
                     "https://s3.eu-west-1.amazonaws.com/my-bucket/k/%C3%A9")]:
        aws = S3Store(S3Settings(bucket="my-bucket", region="eu-west-1",
                                 access_key="AKIDEXAMPLE", secret_key="x", **kw))
        seen = []

        def stop(request, **_):
            seen.append(request.url)
            raise lean.Fallback("not sent")   # nothing leaves this machine

        aws.client.meta.events.register("before-send.s3.ListObjectsV2", stop)
        with pytest.raises(lean.Fallback):
            aws.client.list_objects_v2(Bucket="my-bucket", MaxKeys=1)
        assert seen and aws.lean.ready
        assert aws.lean.url("k/é") == url


@pytest.mark.parametrize("status", [301, 307])
def test_a_redirect_turns_the_lean_path_off(s3, bucket, status):
    """A bucket in another region answers with a redirect: boto3 handles it
    (and learns the region), and every later call goes through boto3."""
    fast, _ = stores(s3, bucket)

    class Redirect:
        status_code = status
        headers = {"location": "https://elsewhere.example/"}
        content = b""

    with pytest.raises(lean.Fallback):
        fast.lean._error("HeadObject", Redirect())
    assert not fast.lean.enabled
    used = boto3_calls(fast)

    async def main():
        assert (await outcome(lambda: fast.head("missing")))[1] == "404"

    trio.run(main)
    assert used == ["HeadObject"]


def test_the_mounts_store_is_lean_from_its_first_request(s3, bucket, monkeypatch):
    """The mount's bucket check lists the bucket; the store the mount then uses
    knows the bucket's URL before its first HEAD."""
    from objectfs import config, mount

    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    for opts, ready in ([], True), (["lean_requests=no"], None):
        cfg = config.build(bucket, "", "/mnt", o_options=[f"endpoint_url={s3.endpoint}", *opts])
        store = mount.check_bucket(cfg)
        assert (store.lean.ready if store.lean else None) is ready


def s3_requests(op: str) -> float:
    fam = metrics.snapshot().get("objectfs_s3_requests_total", {"samples": []})
    return sum(s["value"] for s in fam["samples"] if s["labels"].get("op") == op)


def test_head_by_get_answers_as_head_and_keeps_small_bodies(s3, s3_client, bucket):
    """head(body_max=N) asks with a GET of the first N bytes: the attributes
    must be exactly HEAD's (size from Content-Range, metadata, headers,
    errors); an object that fits is kept, and a read of that version needs
    no request, while another version is never served from it."""
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=BODY, ContentType="text/x-odd",
                         CacheControl="max-age=60", Metadata={"mode": "33188", "uid": "7"})
    s3_client.put_object(Bucket=bucket, Key="empty", Body=b"")
    fast, slow = stores(s3, bucket)

    async def main():
        await fast.check_bucket()
        big = await fast.head(KEY, body_max=len(BODY) - 1)   # does not fit
        assert same_head(big, await slow.head(KEY)) and big.size == len(BODY)
        assert same_head(await fast.head("empty", body_max=100), await slow.head("empty"))
        for missing in ("missing", "missing/"):
            asked = s3_requests("GetObject"), s3_requests("HeadObject")
            assert (await outcome(lambda: fast.head(missing, body_max=100))
                    == await outcome(lambda: slow.head(missing)))
            # one request says it is missing: the GET's NoSuchKey, not a HEAD after it
            assert (s3_requests("GetObject"), s3_requests("HeadObject")) \
                == (asked[0] + 1, asked[1] + 1)   # + slow's HEAD
        gets = s3_requests("GetObject")
        assert await fast.get(KEY, 0, 10, etag=big.etag) == BODY[:10]
        assert s3_requests("GetObject") == gets + 1   # not kept: it did not fit

        info = await fast.head(KEY, body_max=len(BODY))
        assert same_head(info, await slow.head(KEY))
        gets = s3_requests("GetObject")
        for rng in [(0, None), (5, 300), (len(BODY) - 3, len(BODY) + 100)]:
            assert await fast.get(KEY, *rng, etag=info.etag) == BODY[rng[0]:rng[1]]
        assert s3_requests("GetObject") == gets   # all from the kept body
        # another version: the kept bytes are not served for it
        s3_client.put_object(Bucket=bucket, Key=KEY, Body=BODY[::-1])
        new = await fast.head(KEY)
        assert await fast.get(KEY, 0, 50, etag=new.etag) == BODY[::-1][:50]
        assert (await outcome(lambda: fast.get(KEY, 0, 50, etag='"0123456789abcdef"'))
                == await outcome(lambda: slow.get(KEY, 0, 50, etag='"0123456789abcdef"')))

    trio.run(main)


def test_delete_answers_as_boto3(s3, s3_client, bucket):
    """DeleteObject by the lean path: the object goes, a missing key is no
    error (as through boto3), and nothing needs boto3."""
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=b"x")
    fast, slow = stores(s3, bucket)
    used = boto3_calls(fast)

    async def main():
        await fast.check_bucket()
        used.clear()
        assert await outcome(lambda: fast.delete(KEY)) == ("ok", None)
        assert await outcome(lambda: fast.delete("missing")) == \
            await outcome(lambda: slow.delete("missing")) == ("ok", None)

    trio.run(main)
    assert used == []
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_listings_are_those_of_boto3(s3, s3_client, bucket):
    """ListObjectsV2 by the lean path: the same objects (keys decoded as
    botocore decodes them, sizes, ETags, times), prefixes and continuation,
    page by page, for odd names too; errors as boto3's."""
    names = ["a", "a b", "a+b", "a%2Bb", "ü/x", "dir/one", "dir/two", "dir/sub/deep",
             "tab\tname", "amp&lt;", "q?x=1", "~tilde", "sp ace/x"]
    for n in names:
        s3_client.put_object(Bucket=bucket, Key=n, Body=n.encode())
    fast, slow = stores(s3, bucket)
    used = boto3_calls(fast)

    async def pages(store, prefix, delimiter, max_keys, start_after=None):
        out, token = [], None
        while True:
            page = await store.list_page(prefix, delimiter=delimiter, token=token,
                                         max_keys=max_keys,
                                         start_after=None if token else start_after)
            out.append(page)
            token = page.next_token
            if token is None:
                return out

    async def main():
        await fast.check_bucket()
        used.clear()
        for args in [("", "/", 1000), ("", None, 1000), ("", "/", 3), ("dir/", "/", 1),
                     ("a", None, 2), ("nothing/", "/", 10),
                     # StartAfter (windows of huge directories: SCAN_AFTER)
                     ("", "/", 1000, "a+"), ("", "/", 3, "a b"), ("", None, 2, "\u00fc"),
                     ("dir/", "/", 1, key_before("dir/sub/")),
                     ("dir/", "/", 5, key_before("dir/two"))]:
            got = await pages(fast, *args)
            assert got == await pages(slow, *args), args
        after = (await fast.list_page("dir/", start_after="dir/one"))
        assert ([o.key for o in after.objects], after.prefixes) == (["dir/two"], ["dir/sub/"])
        everything = await pages(fast, "", None, 1000)
        assert sorted(o.key for p in everything for o in p.objects) == sorted(names)
        # a missing bucket: the same error either way
        lost_fast, lost_slow = stores(s3, bucket + "-missing")
        lost_fast.lean._base = fast.lean._base.replace(bucket, bucket + "-missing")
        assert lost_fast.lean.ready
        assert (await outcome(lambda: lost_fast.list_page(""))
                == await outcome(lambda: lost_slow.list_page("")))
        assert (await outcome(lambda: lost_fast.list_page("")))[1] == "NoSuchBucket"

    trio.run(main)
    assert used == []


def test_a_get_reads_its_body_in_one_call_and_not_through_urllib3(s3, s3_client, bucket,
                                                                  monkeypatch):
    """A lean GET reads the body in one call (a few large socket reads), not
    in chunks joined afterwards: a large body straight into a kept receive
    buffer (``readinto``, see store/buffers.py); a small one is read on the
    event loop (ahttp.py).  And lean requests go through ``http.client``, not
    botocore's urllib3 session."""
    import http.client

    import urllib3

    big = bytes(range(256)) * (4 * 4096 + 3)   # 4 MiB + 768 bytes
    s3_client.put_object(Bucket=bucket, Key="big", Body=big)
    fast, _ = stores(s3, bucket)
    reads: list[int | None] = []
    readintos: list[int] = []
    real_read, real_readinto = http.client.HTTPResponse.read, http.client.HTTPResponse.readinto

    def counting_read(self, amt=None):
        reads.append(amt)
        return real_read(self, amt)

    def counting_readinto(self, b):
        readintos.append(len(b))
        return real_readinto(self, b)

    monkeypatch.setattr(http.client.HTTPResponse, "read", counting_read)
    monkeypatch.setattr(http.client.HTTPResponse, "readinto", counting_readinto)
    pooled = []
    real_urlopen = urllib3.HTTPConnectionPool.urlopen
    monkeypatch.setattr(urllib3.HTTPConnectionPool, "urlopen",
                        lambda self, *a, **kw: pooled.append(a) or real_urlopen(self, *a, **kw))

    async def main():
        await fast.check_bucket()   # through boto3: the bucket's URL
        pooled.clear()
        for rng in [(0, None), (1000, 3 * 1024 * 1024)]:
            reads.clear()
            readintos.clear()
            got = await fast.get("big", *rng)
            assert got == big[rng[0]:rng[1]] and isinstance(got, bytearray)
            # the whole body at once, into a buffer of its size
            assert reads == [] and readintos == [len(got)], (reads, readintos)
        assert fast.receive_buffers.kept_bytes > 0
        assert (await outcome(lambda: fast.get("missing")))[1] == "NoSuchKey"
        reads.clear()
        got = await fast.get("big", 5, 10)
        # a small range is read on the event loop (ahttp), not by http.client
        assert got == big[5:10] and isinstance(got, bytes) and reads == []
        assert (await fast.head("big")).size == len(big)

    trio.run(main)
    assert pooled == [], "a lean request went through urllib3"


class _Session:
    """What Transport reads of botocore's HTTP session."""
    _timeout, _socket_options, _verify, _cert_file, _max_pool_connections = 0.5, [], True, None, 4

    class _proxy_config:
        @staticmethod
        def proxy_url_for(url):
            return "http://proxy:3128" if "via-proxy" in url else None


@contextlib.contextmanager
def _keepalive_server(tls: ssl.SSLContext | None = None):
    import http.server
    import socket
    import threading

    conns: list[socket.socket] = []
    ended: list[socket.socket] = []   # connections the client closed (or the server)
    posts: list[bytes] = []           # the bodies of the POSTs it answered

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            conns.append(self.connection)

        def finish(self):
            super().finish()
            ended.append(self.connection)

        def _answer(self, body: bool):
            status, data = (404, b"<Error><Code>NoSuchKey</Code></Error>") \
                if self.path.endswith("missing") else (200, b"0123456789")
            if "list-type=2" in self.path:   # an empty bucket's listing
                data = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
                        b'<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>'
                        b'</ListBucketResult>')
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self):
            self._answer(True)

        def do_HEAD(self):
            self._answer(False)

        def do_POST(self):   # answers with the body it was sent
            data = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(data)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def get_request(self):
            conn, addr = super().get_request()
            if tls is not None:   # the handshake in the handler's thread, not here
                conn = tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            return conn, addr

        def handle_error(self, request, client_address):
            pass   # a client that refused our certificate

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close_all():
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    srv.url = f"{'https' if tls else 'http'}://127.0.0.1:{srv.server_address[1]}"
    srv.close_all = close_all
    srv.conns = conns
    srv.ended = ended
    srv.posts = posts
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def keepalive():
    """A plain HTTP/1.1 server that keeps connections open; ``conns`` are its
    ends of them, ``close_all()`` closes them as an idle timeout would."""
    with _keepalive_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """PEM files: a CA (``ca``), a certificate it signed for 127.0.0.1 only
    (``cert``, ``key``), and an unrelated CA (``other``)."""
    import ipaddress
    import types

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(cn: str, issuer=None, ca: bool = False):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        signer_cert, signer_key = issuer or (None, key)
        b = (x509.CertificateBuilder().subject_name(subject)
             .issuer_name(signer_cert.subject if signer_cert else subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 signer_key.public_key()), critical=False))
        if ca:
            b = b.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        else:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage(
                [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        return b.sign(signer_key, hashes.SHA256()), key

    def pem(name: str, cert) -> str:
        (d / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(d / name)

    ca_cert, ca_key = issue("objectfs test CA", ca=True)
    other_cert, _ = issue("another CA", ca=True)
    cert, key = issue("127.0.0.1", issuer=(ca_cert, ca_key))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return types.SimpleNamespace(ca=pem("ca.pem", ca_cert), other=pem("other.pem", other_cert),
                                 cert=pem("cert.pem", cert), key=str(d / "key.pem"))


@pytest.fixture
def tls_keepalive(certs):
    """``keepalive`` over TLS, with the certificate of ``certs``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert, certs.key)
    with _keepalive_server(ctx) as srv:
        yield srv


def test_transport_keeps_connections_and_reopens_one_the_server_closed(keepalive):
    t = lean.Transport(_Session())
    for path in ["/b/k", "/b/k", "/b/missing", "/b/k"]:
        r = t.send("GET", keepalive.url + path, {}, stream=False)
        assert r.content == (b"0123456789" if path.endswith("k") else
                             b"<Error><Code>NoSuchKey</Code></Error>")
    r = t.send("GET", keepalive.url + "/b/k", {}, stream=True)
    assert r.raw.read() == b"0123456789"
    r.done()
    assert t.send("HEAD", keepalive.url + "/b/k", {}, stream=False).status_code == 200
    assert len(keepalive.conns) == 1, "every request reused the one connection"
    keepalive.close_all()   # an idle timeout on the server
    assert t.send("GET", keepalive.url + "/b/k", {}, stream=False).content == b"0123456789"
    assert len(keepalive.conns) == 2
    r = t.send("GET", keepalive.url + "/b/k", {}, stream=True)
    r.discard()   # a body left unread: that connection is not reused
    assert t.send("GET", keepalive.url + "/b/k", {}, stream=False).content == b"0123456789"
    assert len(keepalive.conns) == 3


def wait_all_ended(srv) -> None:
    """Until the server has seen every connection end (at most 5 s)."""
    wait_for(lambda: len(srv.ended) == len(srv.conns), timeout=5,
             what="end of every connection", interval=0.01)


def test_closing_the_transports_closes_their_kept_connections(keepalive):
    """At the end of a mount the kept connections are closed, not left for
    the process's exit: the server sees each one end."""
    t = lean.Transport(_Session())
    t.send("GET", keepalive.url + "/b/k", {}, stream=False)
    at = ahttp.AsyncTransport(t)
    asend(at, "GET", keepalive.url + "/b/k")
    assert len(keepalive.conns) == 2 and not keepalive.ended, "both kept open"
    trio.run(at.aclose)
    t.close()
    wait_all_ended(keepalive)
    # a closed pool keeps nothing, not even a connection released later
    pool = t._pool("http", keepalive.url.split("//")[1])
    conn, _ = pool.acquire()
    pool.release(conn)
    assert not pool._idle


def test_a_closed_store_keeps_no_connection(keepalive):
    """S3Store.aclose (the mount's last step) closes boto3's kept connection
    and both lean paths'."""
    store = S3Store(S3Settings(bucket="b", endpoint_url=keepalive.url, access_key="a",
                               secret_key="s", region="us-east-1"))

    async def main():
        await store.list_page("")                             # boto3's pool
        await store.head("k")                                 # the event loop's
        await trio.to_thread.run_sync(store.lean.head, "k")   # a worker thread's
        assert len(keepalive.conns) == 3 and not keepalive.ended, "all three kept open"
        await store.aclose()

    trio.run(main)
    wait_all_ended(keepalive)


def test_transport_failures_are_botocores(keepalive):
    """Refused, timed out and TLS failures of the lean transport come out as
    the botocore exceptions boto3 raises, so they are translated and retried
    alike; endpoints behind a proxy keep botocore's session."""
    import socket

    import botocore.exceptions as be

    from tests.support.s3server import free_port

    t = lean.Transport(_Session())
    assert lean.Transport.usable(_Session, "http://direct/") is True
    assert lean.Transport.usable(_Session, "http://via-proxy/") is False
    port = free_port()
    with pytest.raises(be.EndpointConnectionError):
        t.send("HEAD", f"http://127.0.0.1:{port}/b/k", {}, stream=False)
    with socket.socket() as quiet:   # accepts, never answers
        quiet.bind(("127.0.0.1", 0))
        quiet.listen()
        url = f"http://127.0.0.1:{quiet.getsockname()[1]}/b/k"
        with pytest.raises(be.ReadTimeoutError):
            t.send("HEAD", url, {}, stream=False)
    with pytest.raises(be.SSLError):   # TLS to a plain HTTP server
        t.send("HEAD", keepalive.url.replace("http:", "https:") + "/b/k", {}, stream=False)


# -- the event loop's transport (ahttp.py) ----------------------------------

def asend(t, method: str, url: str, limit: int = 1 << 20):
    return trio.run(lean.async_send, t, method, url, {}, limit)


def test_async_transport_keeps_connections_and_reopens_one_the_server_closed(keepalive):
    t = ahttp.AsyncTransport(lean.Transport(_Session()))

    async def main():
        for path in ["/b/k", "/b/k", "/b/missing", "/b/k"]:
            r = await lean.async_send(t, "GET", keepalive.url + path, {}, 1 << 20)
            assert r.content == (b"0123456789" if path.endswith("k") else
                                 b"<Error><Code>NoSuchKey</Code></Error>")
            assert r.status_code == (200 if path.endswith("k") else 404)
        r = await lean.async_send(t, "HEAD", keepalive.url + "/b/k", {}, 1 << 20)
        assert (r.status_code, r.content, r.headers.get("CONTENT-LENGTH")) == (200, b"", "10")
        assert len(keepalive.conns) == 1, "every request reused the one connection"
        keepalive.close_all()   # an idle timeout on the server
        r = await lean.async_send(t, "GET", keepalive.url + "/b/k", {}, 1 << 20)
        assert r.content == b"0123456789"
        assert len(keepalive.conns) == 2
        # an answer larger than the caller's limit: asked another way, and
        # that connection (its body unread) is not used again
        with pytest.raises(lean.Fallback):
            await lean.async_send(t, "GET", keepalive.url + "/b/k", {}, 5)
        r = await lean.async_send(t, "GET", keepalive.url + "/b/k", {}, 1 << 20)
        assert r.content == b"0123456789"
        assert len(keepalive.conns) == 3
        await t.aclose()

    trio.run(main)


def test_async_transport_sends_a_body_and_a_post_at_most_once(keepalive):
    """A request with a body (CompleteMultipartUpload's) arrives whole.  On a
    kept connection the server closed meanwhile, a request that must not be
    made twice (CreateMultipartUpload) is not sent again: the caller gets
    the connection error, and its retry knows the server may have acted."""
    import botocore.exceptions as be

    t = ahttp.AsyncTransport(lean.Transport(_Session()))
    url = keepalive.url + "/b/k?uploads"

    async def post(body: bytes, idempotent: bool):
        return await lean.async_send(t, "POST", url, {"Content-Length": str(len(body))},
                                     1 << 20, body, idempotent)

    async def main():
        assert (await post(b"<Part>1</Part>", True)).content == b"<Part>1</Part>"
        keepalive.close_all()
        with pytest.raises(be.ConnectionClosedError):
            await post(b"once", False)
        assert (await post(b"twice is fine", True)).content == b"twice is fine"
        keepalive.close_all()
        assert (await post(b"again", True)).content == b"again"
        assert keepalive.posts == [b"<Part>1</Part>", b"twice is fine", b"again"]
        await t.aclose()

    trio.run(main)


def test_async_transport_failures_are_botocores(keepalive):
    """As ``test_transport_failures_are_botocores``, for the transport used
    from the event loop."""
    import socket

    import botocore.exceptions as be

    from tests.support.s3server import free_port

    t = ahttp.AsyncTransport(lean.Transport(_Session()))
    with pytest.raises(be.EndpointConnectionError):
        asend(t, "HEAD", f"http://127.0.0.1:{free_port()}/b/k")
    with socket.socket() as quiet:   # accepts, never answers
        quiet.bind(("127.0.0.1", 0))
        quiet.listen()
        with pytest.raises(be.ReadTimeoutError):
            asend(t, "HEAD", f"http://127.0.0.1:{quiet.getsockname()[1]}/b/k")
    with pytest.raises(be.SSLError):   # TLS to a plain HTTP server
        asend(t, "HEAD", keepalive.url.replace("http:", "https:") + "/b/k")



@pytest.mark.parametrize("path", ["thread", "event loop"])
def test_tls_certificates_are_verified_on_both_paths(tls_keepalive, certs, path):
    """Both transports check the server's certificate against the CA bundle
    botocore would use (``AWS_CA_BUNDLE``, ``verify=``), and its name
    against the endpoint's host; ``no_verify_ssl`` (verify False) skips both."""
    import botocore.exceptions as be

    def get(verify, url=tls_keepalive.url + "/b/k"):
        session = _Session()
        session._verify = verify
        t = lean.Transport(session)
        if path == "thread":
            return t.send("GET", url, {}, stream=False).content
        return asend(ahttp.AsyncTransport(t), "GET", url).content

    assert get(certs.ca) == b"0123456789"   # signed by the CA it was given
    assert get(False) == b"0123456789"      # verification off
    with pytest.raises(be.SSLError):
        get(certs.other)                    # another CA
    with pytest.raises(be.SSLError):
        get(True)                           # the default bundle does not know the test CA
    with pytest.raises(be.SSLError):        # the certificate names 127.0.0.1, not localhost
        get(certs.ca, tls_keepalive.url.replace("127.0.0.1", "localhost") + "/b/k")

@pytest.fixture
def scripted():
    """A server that answers each request with the next of ``answers``
    (raw bytes); an answer ending in ``CLOSE`` is followed by closing the
    connection.  ``accepted`` counts connections, ``requests`` keeps the
    request heads it read."""
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    state = {"answers": [], "accepted": 0, "requests": []}

    def serve(conn):
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                state["requests"].append(head)
                answer = state["answers"].pop(0)
                close = answer.endswith(b"CLOSE")
                conn.sendall(answer[:-5] if close else answer)
                if close:
                    return

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            state["accepted"] += 1
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{srv.getsockname()[1]}"
    try:
        yield state
    finally:
        srv.close()


def test_async_transport_reads_every_framing_s3_servers_use(scripted):
    """Content-Length, chunked bodies (with extensions and trailers), a body
    ended by the connection, folded and repeated headers, an interim 100
    answer, ``Connection: close``, and the request it sends."""
    scripted["answers"] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Amz-Meta-A: 1\r\n"
        b"x-amz-meta-a: 2\r\nX-Folded: one\r\n  two\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokCLOSE",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the endCLOSE",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
    ]
    t = ahttp.AsyncTransport(lean.Transport(_Session()))
    url = scripted["url"] + "/b/k%20y?list-type=2&prefix=a"

    async def main():
        r = await lean.async_send(t, "GET", url, {"Range": "bytes=0-4"}, 100)
        assert (r.status_code, r.content) == (200, b"hello")
        assert r.headers.get("x-amz-meta-a") == "1" and "X-AMZ-META-A" in r.headers
        assert r.headers.items()[1:3] == [("X-Amz-Meta-A", "1"), ("x-amz-meta-a", "2")]
        assert r.headers["x-folded"] == "one two"
        assert lean._decode(r.headers)["Metadata"] == {"a": "2"}  # as http.client's last
        r = await lean.async_send(t, "GET", url, {}, 100)
        assert r.content == b"abcdefg"
        r = await lean.async_send(t, "DELETE", url, {}, 100)
        assert (r.status_code, r.content) == (204, b"")
        r = await lean.async_send(t, "GET", url, {}, 100)
        assert r.content == b"ok"
        assert scripted["accepted"] == 1, "kept until the server said close"
        r = await lean.async_send(t, "GET", url, {}, 100)
        assert r.content == b"until the end"
        assert scripted["accepted"] == 2
        with pytest.raises(lean.Fallback):   # a chunked body over the limit
            await lean.async_send(t, "GET", url, {}, 8)

    trio.run(main)
    head = scripted["requests"][0].decode("latin-1").split("\r\n")
    port = scripted["url"].rsplit(":", 1)[1]
    assert head[0] == "GET /b/k%20y?list-type=2&prefix=a HTTP/1.1"
    assert head[1:] == [f"Host: 127.0.0.1:{port}", "Accept-Encoding: identity",
                        "Range: bytes=0-4"]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshortCLOSE",     # body cut short
    b"HTTP/1.1 200 OK\r\nContent-LengCLOSE",                         # head cut short
    b"SMTP ready\r\n\r\n",                                           # not HTTP
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",                  # bad length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",   # bad chunk
])
def test_async_transport_broken_answers_are_connection_errors(scripted, answer):
    """A broken answer is the ConnectionClosedError boto3 gives for one
    (retried), never a hang or an exception of another kind."""
    import botocore.exceptions as be

    scripted["answers"] = [answer]
    t = ahttp.AsyncTransport(lean.Transport(_Session()))
    with pytest.raises(be.ConnectionClosedError):
        asend(t, "GET", scripted["url"] + "/b/k")


def test_small_requests_of_a_store_need_no_worker_thread(s3, s3_client, bucket, monkeypatch):
    """HEAD, DELETE, a lookup's listing and a small GET are sent from the
    event loop (ahttp.py); a large GET still reads into a kept buffer in a
    worker thread.  Their answers are those of the thread path."""
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=BODY, Metadata={"mode": "33188"})
    s3_client.put_object(Bucket=bucket, Key="big", Body=BODY * 300)   # 3 MiB
    fast, slow = stores(s3, bucket)
    threads, counting, real = thread_counter()

    async def main():
        await fast.check_bucket()   # through boto3: the bucket's URL
        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        got = [await fast.head(KEY), await fast.get(KEY, 10, 5000),
               await fast.list_page("dir/", max_keys=1), await fast.head(KEY, body_max=16384),
               await outcome(lambda: fast.head("missing"))]
        await fast.delete("gone-already")
        assert threads == [], threads
        monkeypatch.setattr(trio.to_thread, "run_sync", real)
        want = [await slow.head(KEY), await slow.get(KEY, 10, 5000),
                await slow.list_page("dir/", max_keys=1), await slow.head(KEY, body_max=16384),
                await outcome(lambda: slow.head("missing"))]
        for a, b in zip(got, want):
            if hasattr(a, "checked_ns"):   # the server's clock at each answer
                a, b = dataclasses.replace(a, checked_ns=0), dataclasses.replace(b, checked_ns=0)
            assert a == b
        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        assert await fast.get("big", 0, 3 << 20) == (BODY * 300)[:3 << 20]
        assert threads, "a large GET went through the event loop"

    trio.run(main)


def test_botocore_signs_an_operations_first_request_and_ours_the_rest(s3, s3_client, bucket,
                                                                       monkeypatch):
    """Each operation's first lean request is signed by botocore and checked
    against our signer (sigv4.py); later ones are signed by ours, and the
    server accepts them.  Where the two disagree, botocore's keeps signing."""
    from objectfs.store import sigv4

    s3_client.put_object(Bucket=bucket, Key=KEY, Body=BODY)
    fast, _ = stores(s3, bucket)
    signer = fast.client._request_signer
    calls: list[str] = []
    real_sign = type(signer).sign
    def counting_sign(self, op, *a, **kw):
        calls.append(op)
        return real_sign(self, op, *a, **kw)

    monkeypatch.setattr(type(signer), "sign", counting_sign)

    async def main():
        await fast.check_bucket()
        calls.clear()
        for _ in range(3):
            assert (await fast.head(KEY)).size == len(BODY)
            assert await fast.get(KEY, 1, 100) == BODY[1:100]
        assert calls == ["HeadObject", "GetObject"]
        assert isinstance(fast.lean._signers["HeadObject"], sigv4.Signer)
        # a signer that disagrees with botocore's is not used
        monkeypatch.setattr(sigv4.Signer, "matches", lambda *a: False)
        await fast.delete("nothing-here")
        await fast.delete("nothing-here")
        assert calls[2:] == ["DeleteObject", "DeleteObject"]
        assert fast.lean._signers["DeleteObject"] is None

    trio.run(main)


# -- the multipart upload's requests ----------------------------------------

_UNCOMPARED = {"authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token",
               "user-agent", "content-length", "expect", "amz-sdk-invocation-id",
               "amz-sdk-request"}


def _sent(headers) -> dict[str, str]:
    """A request's headers that say what is stored or asked for (not how the
    request is signed or framed), lower-cased."""
    return {k.lower(): (v.decode() if isinstance(v, bytes) else v)
            for k, v in headers.items() if k.lower() not in _UNCOMPARED}


def requests_of(op: str, fast: S3Store, slow: S3Store) -> tuple[list[dict], list]:
    """The headers of each ``op`` request ``fast`` sends on the lean path
    (before signing), and the requests boto3 sends for ``slow`` (signed)."""
    lean_sent: list[dict] = []
    boto_sent: list = []
    real_asend = fast.lean._asend

    async def asend(name, method, key, headers, **kw):
        if name == op:
            lean_sent.append(dict(headers))
        return await real_asend(name, method, key, headers, **kw)

    fast.lean._asend = asend
    slow.client.meta.events.register(f"before-send.s3.{op}",
                                     lambda request, **_: boto_sent.append(request))
    return lean_sent, boto_sent


async def _multipart(store: S3Store, key: str, src_etag: str | None, **create) -> list:
    """CreateMultipartUpload, a part copied from KEY's first 5 MiB, a part
    uploaded, CompleteMultipartUpload: each step's outcome."""
    steps = [await outcome(lambda: store.create_multipart(key, **create))]
    upload_id = steps[0][1]
    steps.append(await outcome(lambda: store.upload_part_copy(
        key, upload_id, 1, "src", 0, 5 << 20, src_etag=src_etag)))
    steps.append(await outcome(lambda: store.upload_part(key, upload_id, 2, b"tail")))
    if all(s[0] == "ok" for s in steps):
        steps.append(await outcome(lambda: store.complete_multipart(
            key, upload_id, [steps[1][1], steps[2][1]])))
        if steps[-1][0] == "ok":
            steps[-1] = ("ok", steps[-1][1].etag)
    else:
        await store.abort_multipart(key, upload_id)
    return steps[1:]   # upload ids differ


def test_multipart_requests_but_upload_part_go_lean_and_make_what_boto3_makes(
        s3, s3_client, bucket):
    """Create, UploadPartCopy, Complete and Abort are sent from the event
    loop, and the object they make is the one boto3's calls make: bytes,
    metadata (ours and another tool's), Content-Type, the preserved headers
    and the mount's SSE setting."""
    src = bytes(range(256)) * (24 << 10)   # 6 MiB
    s3_client.put_object(Bucket=bucket, Key="src", Body=src)
    etag = s3_client.head_object(Bucket=bucket, Key="src")["ETag"]
    opts = RequestOptions(sse="AES256")
    fast, slow = stores(s3, bucket, request_options=opts)
    sent: list[dict] = []
    real_asend = fast.lean._asend

    async def asend(op, method, key, headers, **kw):
        sent.append(headers)
        return await real_asend(op, method, key, headers, **kw)

    fast.lean._asend = asend
    create = dict(metadata={"mode": "33188", "x-tool": "kept value"},
                  content_type="text/x-odd; charset=utf-8",
                  headers={"CacheControl": "max-age=60", "ContentDisposition": "inline",
                           "ContentLanguage": "de"})

    async def main():
        await fast.check_bucket()
        used = boto3_calls(fast)
        got = await _multipart(fast, "lean " + KEY, etag, **create)
        want = await _multipart(slow, "boto3 " + KEY, etag, **create)
        assert got == want and all(s[0] == "ok" for s in got), (got, want)
        # the copy asks for the source's version (moto does not check it)
        assert sent[1]["x-amz-copy-source-if-match"] == etag
        a, b = await fast.head("lean " + KEY), await slow.head("boto3 " + KEY)
        assert dataclasses.replace(a, key="", checked_ns=0, mtime_ns=0) == \
            dataclasses.replace(b, key="", checked_ns=0, mtime_ns=0)
        assert a.metadata == create["metadata"] and a.content_type == create["content_type"]
        for key in ("lean " + KEY, "boto3 " + KEY):
            r = s3_client.get_object(Bucket=bucket, Key=key)
            assert r["Body"].read() == src[:5 << 20] + b"tail"
            assert r.get("ServerSideEncryption") == "AES256"
        upload_id = await fast.create_multipart("aborted", metadata={}, content_type="x/y")
        await fast.abort_multipart("aborted", upload_id)
        await fast.abort_multipart("aborted", upload_id)   # gone already: not an error
        assert await fast.list_multipart_uploads("aborted") == []
        assert used == ["UploadPart", "ListMultipartUploads"]

    trio.run(main)


def test_a_lean_create_sends_the_kms_key_and_storage_class_as_boto3_does(
        s3, s3_client, bucket):
    """The mount's SSE-KMS key and storage class reach a lean
    CreateMultipartUpload as the headers botocore sends for them (moto does
    not show either on the object, so the requests are compared)."""
    opts = RequestOptions(sse="aws:kms", sse_kms_key_id="arn:aws:kms:us-east-1:1:key/k-1",
                          storage_class="STANDARD_IA")
    fast, slow = stores(s3, bucket, request_options=opts)
    lean_sent, boto_sent = requests_of("CreateMultipartUpload", fast, slow)

    async def main():
        await fast.check_bucket()
        used = boto3_calls(fast)
        for s in (fast, slow):
            upload_id = await s.create_multipart("k", metadata={"mode": "33188"},
                                                 content_type="x/y")
            await s.abort_multipart("k", upload_id)
        assert "CreateMultipartUpload" not in used      # sent lean
        assert len(lean_sent) == 1 and len(boto_sent) == 1
        want = _sent(boto_sent[0].headers)
        assert want["x-amz-server-side-encryption"] == "aws:kms"
        assert want["x-amz-server-side-encryption-aws-kms-key-id"] == opts.sse_kms_key_id
        assert want["x-amz-storage-class"] == "STANDARD_IA"
        assert _sent(lean_sent[0]) == want

    trio.run(main)


def test_multipart_errors_are_boto3s(s3, s3_client, bucket):
    """A copy whose source is missing, a part ETag the server does not know,
    an upload that does not exist: the same error as through boto3, each
    through the lean path."""
    s3_client.put_object(Bucket=bucket, Key="src", Body=b"s" * (6 << 20))
    fast, slow = stores(s3, bucket)

    async def both(call):
        return await outcome(lambda: call(fast)), await outcome(lambda: call(slow))

    async def main():
        await fast.check_bucket()
        used = boto3_calls(fast)
        ids = {s: await s.create_multipart("k", metadata={}, content_type="x/y")
               for s in (fast, slow)}
        a, b = await both(lambda s: s.upload_part_copy("k", ids[s], 1, "missing", 0, 10))
        assert a == b and a[0] == "ObjectNotFound", (a, b)
        a, b = await both(lambda s: s.complete_multipart(
            "k", ids[s], [Part(1, '"00000000000000000000000000000000"')]))
        assert a == b and a[1] == "InvalidPart", (a, b)
        assert used == [], used   # each answered on the lean path
        for s in (fast, slow):
            await s.abort_multipart("k", ids[s])
        # (moto answers this one 500 without an S3 error body: the lean path
        # leaves it to boto3)
        a, b = await both(lambda s: s.complete_multipart("k", "no-such-upload",
                                                         [Part(1, '"00"')]))
        assert a == b, (a, b)

    trio.run(main)


@pytest.mark.parametrize("create", [
    dict(metadata={"note": "naïve"}, content_type="x/y"),
    dict(metadata={}, content_type="x/y",
         headers={"Expires": datetime.datetime(2037, 1, 1, tzinfo=datetime.timezone.utc)}),
])
def test_a_create_the_lean_path_might_send_otherwise_goes_through_boto3(
        s3, s3_client, bucket, create):
    """Metadata that is not printable ASCII and an Expires header (botocore
    refuses or formats them its way) are left to boto3: the outcome is its."""
    fast, slow = stores(s3, bucket)

    async def main():
        await fast.check_bucket()
        got = await outcome(lambda: fast.create_multipart("k", **create))
        assert "CreateMultipartUpload" not in fast.lean._signers   # never sent lean
        want = await outcome(lambda: slow.create_multipart("k", **create))
        assert got[0] == want[0], (got, want)
        if got[0] != "ok":   # upload ids differ; errors must not
            assert got == want
        for s, answer in ((fast, got), (slow, want)):
            if answer[0] == "ok":
                await s.abort_multipart("k", answer[1])

    trio.run(main)


def test_an_error_in_the_body_of_a_200_is_a_500_of_that_error(s3, bucket):
    """S3 may answer UploadPartCopy or CompleteMultipartUpload 200 and send an
    error in the body once the work failed: as botocore does, that is the
    error with status 500 (retried), and an answer without the field asked
    for is an InternalError, never taken for success."""
    fast, _ = stores(s3, bucket)
    answer = ahttp.Response("u", 200, ahttp.Headers([]), b'<?xml version="1.0"?>\n\n<Error>'
                            b"<Code>SlowDown</Code><Message>Reduce</Message></Error>")
    with pytest.raises(lean.LeanError) as e:
        fast.lean._result("CompleteMultipartUpload", answer)
    assert (e.value.code, e.value.message, e.value.status) == ("SlowDown", "Reduce", 500)
    with pytest.raises(lean.LeanError) as e:
        lean._xml_text(b"<CompleteMultipartUploadResult/>", "ETag", "CompleteMultipartUpload")
    assert (e.value.code, e.value.status) == ("InternalError", 500)
    assert lean._xml_text(b"<r><ETag>&quot;ab&amp;c&quot;</ETag></r>", "ETag", "op") == '"ab&c"'


# -- PutObject and CopyObject -------------------------------------------------


def test_a_small_put_goes_lean_and_makes_what_boto3_makes(s3, s3_client, bucket, monkeypatch):
    """A PutObject of a small body is sent from the event loop with the
    headers botocore sends for the same call (request against request:
    metadata, Content-Type, the preserved headers, Content-MD5, the mount's
    SSE-KMS key and storage class), and makes boto3's object and answer; a
    body over ASYNC_PUT_MAX, or any with ``checksums=when_supported``, still
    goes through boto3."""
    from objectfs.store import s3 as s3mod

    opts = RequestOptions(sse="aws:kms", sse_kms_key_id="arn:aws:kms:us-east-1:1:key/k-1",
                          storage_class="STANDARD_IA")
    fast, slow = stores(s3, bucket, request_options=opts, upload_checksum="md5")
    lean_sent, boto_sent = requests_of("PutObject", fast, slow)
    put = dict(metadata={"mode": "33188", "x-tool": "kept value"},
               content_type="text/x-odd; charset=utf-8",
               headers={"CacheControl": "max-age=60", "ContentDisposition": "inline",
                        "ContentLanguage": "de"})
    threads, counting, real = thread_counter()

    async def main():
        await fast.check_bucket()
        used = boto3_calls(fast)
        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        got = await fast.put("lean " + KEY, BODY, **put)
        assert threads == [] and used == [], (threads, used)
        monkeypatch.setattr(trio.to_thread, "run_sync", real)
        want = await slow.put("boto3 " + KEY, BODY, **put)
        assert got == dataclasses.replace(want, key=got.key) and got.etag
        assert len(lean_sent) == 1 and len(boto_sent) == 1
        assert _sent(lean_sent[0]) == _sent(boto_sent[0].headers)
        assert "content-md5" in _sent(lean_sent[0])
        a, b = await fast.head("lean " + KEY), await slow.head("boto3 " + KEY)
        assert dataclasses.replace(a, key="", checked_ns=0, mtime_ns=0) == \
            dataclasses.replace(b, key="", checked_ns=0, mtime_ns=0)
        assert a.etag == got.etag and a.metadata == put["metadata"]
        assert await fast.get("lean " + KEY) == BODY
        # an empty body, and one just over the limit (through boto3)
        assert (await fast.put("empty", b"", metadata={}, content_type="x/y")).size == 0
        assert await slow.get("empty") == b"" and used == []
        big = bytes(s3mod.ASYNC_PUT_MAX + 1)
        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        await fast.put("big", big, metadata={}, content_type="x/y")
        monkeypatch.setattr(trio.to_thread, "run_sync", real)
        assert used == ["PutObject"] and threads
        assert await slow.get("big") == big

    trio.run(main)
    # where botocore is asked to add a CRC of the body, boto3 sends the PUT
    crc, _ = stores(s3, bucket, checksums="when_supported")
    used = boto3_calls(crc)

    async def with_crc():
        await crc.check_bucket()
        used.clear()
        await crc.put("crc", BODY, metadata={}, content_type="x/y")

    trio.run(with_crc)
    assert used == ["PutObject"]
    assert s3_client.get_object(Bucket=bucket, Key="crc")["Body"].read() == BODY


def test_conditional_puts_answer_as_boto3s_and_are_never_resent_unseen(s3, s3_client, bucket):
    """If-None-Match and If-Match go out on the lean path with the answers
    boto3's calls get (a 412 is PreconditionFailed); a conditional PUT is
    not idempotent for the transport (a kept connection found closed is an
    error for _call's retry, which knows the request may have acted), an
    unconditional one is."""
    s3_client.put_object(Bucket=bucket, Key="there", Body=b"old")
    etag = s3_client.head_object(Bucket=bucket, Key="there")["ETag"]
    fast, slow = stores(s3, bucket)
    flags: list[bool] = []
    real_aput = fast.lean.aput

    async def aput(key, headers, body, idempotent):
        flags.append(idempotent)
        return await real_aput(key, headers, body, idempotent)

    fast.lean.aput = aput

    async def main():
        await fast.check_bucket()
        used = boto3_calls(fast)
        calls = [lambda s: s.put("there", b"x", metadata={}, content_type="x/y",
                                 if_none_match=True),
                 lambda s: s.put("there", b"x", metadata={}, content_type="x/y",
                                 if_match='"0123456789abcdef0123456789abcdef"')]
        for call in calls:
            a, b = await outcome(lambda: call(fast)), await outcome(lambda: call(slow))
            assert a == b and a[0] == "PreconditionFailed", (a, b)
        info = await fast.put("there", b"new", metadata={}, content_type="x/y", if_match=etag)
        assert info.etag == s3_client.head_object(Bucket=bucket, Key="there")["ETag"]
        await fast.put("fresh", b"1", metadata={}, content_type="x/y", if_none_match=True)
        await fast.put("fresh", b"2", metadata={}, content_type="x/y")
        assert flags == [False, False, False, False, True]
        assert used == []

    trio.run(main)
    assert s3_client.get_object(Bucket=bucket, Key="there")["Body"].read() == b"new"
    assert s3_client.get_object(Bucket=bucket, Key="fresh")["Body"].read() == b"2"


def test_a_copy_goes_lean_and_makes_what_boto3_makes(s3, s3_client, bucket):
    """CopyObject keeping the source's metadata (COPY) or replacing it
    (REPLACE, the preserved headers too) is sent from the event loop with the
    headers botocore sends (request against request, the mount's SSE-KMS key
    and storage class and the source's ETag included), makes boto3's object
    and answers as boto3's: the copy's ETag and time.  A missing source is
    the error boto3's call gets."""
    s3_client.put_object(Bucket=bucket, Key=KEY, Body=BODY, ContentType="text/x-odd",
                         Metadata={"mode": "33188"}, CacheControl="max-age=60")
    etag = s3_client.head_object(Bucket=bucket, Key=KEY)["ETag"]
    opts = RequestOptions(sse="aws:kms", sse_kms_key_id="arn:aws:kms:us-east-1:1:key/k-1",
                          storage_class="STANDARD_IA")
    fast, slow = stores(s3, bucket, request_options=opts)
    lean_sent, boto_sent = requests_of("CopyObject", fast, slow)
    replace = dict(metadata={"mode": "33261", "x-tool": "kept value"},
                   content_type="text/x-new", headers={"ContentLanguage": "de"})

    async def main():
        await fast.check_bucket()
        used = boto3_calls(fast)
        for n, kw in enumerate([dict(src_etag=etag), replace]):
            got = await fast.copy(KEY, f"lean{n}", size=len(BODY), **kw)
            want = await slow.copy(KEY, f"boto3{n}", size=len(BODY), **kw)
            assert got.etag == want.etag and got.etag
            assert abs(got.mtime_ns - want.mtime_ns) <= 2_000_000_000 and got.mtime_ns
            assert dataclasses.replace(got, key="", mtime_ns=0) == \
                dataclasses.replace(want, key="", mtime_ns=0)
            assert _sent(lean_sent[-1]) == _sent(boto_sent[-1].headers)
            a, b = await fast.head(f"lean{n}"), await slow.head(f"boto3{n}")
            assert dataclasses.replace(a, key="", checked_ns=0, mtime_ns=0) == \
                dataclasses.replace(b, key="", checked_ns=0, mtime_ns=0)
            assert await fast.get(f"lean{n}") == BODY
        assert _sent(lean_sent[0])["x-amz-copy-source-if-match"] == etag
        assert _sent(lean_sent[1])["x-amz-metadata-directive"] == "REPLACE"
        assert a.metadata == replace["metadata"] and a.content_type == "text/x-new"
        # (moto does not check the source's ETag: the header is compared above)
        call = lambda s: s.copy("missing", "x", size=1)   # noqa: E731
        a, b = await outcome(lambda: call(fast)), await outcome(lambda: call(slow))
        assert a == b and a[0] == "ObjectNotFound", (a, b)
        assert used == [], used

    trio.run(main)


def test_with_crc_checksums_the_lean_requests_are_still_boto3s(s3, s3_client, bucket):
    """With ``checksums=when_supported`` botocore adds a CRC to the requests
    that carry data (PutObject, UploadPart: those go through boto3 then),
    and to none of the requests the lean path still sends: Create, Complete,
    UploadPartCopy and CopyObject go out with the headers boto3 sends in
    that mode, request against request."""
    src = bytes(range(256)) * (24 << 10)   # 6 MiB
    s3_client.put_object(Bucket=bucket, Key="src", Body=src)
    etag = s3_client.head_object(Bucket=bucket, Key="src")["ETag"]
    fast, slow = stores(s3, bucket, checksums="when_supported")
    ops = ("CreateMultipartUpload", "UploadPartCopy", "UploadPart",
           "CompleteMultipartUpload", "CopyObject")
    sent = {op: requests_of(op, fast, slow) for op in ops}

    async def main():
        await fast.check_bucket()
        used = boto3_calls(fast)
        create = dict(metadata={"mode": "33188"}, content_type="x/y")
        got = await _multipart(fast, "lean", etag, **create)
        want = await _multipart(slow, "boto3", etag, **create)
        assert got == want and all(s[0] == "ok" for s in got), (got, want)
        for s, name in ((fast, "lean"), (slow, "boto3")):
            await s.copy("src", name + " copy", size=len(src), src_etag=etag)
        assert used == ["UploadPart"], used
        # botocore's CRC went on the part boto3 sent ...
        assert "x-amz-checksum-crc32" in _sent(sent["UploadPart"][1][-1].headers)
        # ... and on none of the others, which the lean path sent as boto3 did
        for op in ops:
            if op != "UploadPart":
                lean_sent, boto_sent = sent[op]
                assert len(lean_sent) == len(boto_sent) == 1, op
                assert _sent(lean_sent[0]) == _sent(boto_sent[0].headers), op

    trio.run(main)
