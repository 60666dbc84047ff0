"""HeadObject, GetObject, PutObject, CopyObject, DeleteObject, ListObjectsV2
and the requests of a multipart upload but UploadPart, without botocore's
per-call machinery.

A boto3 call spends most of its CPU on parameter validation,
serialisation, endpoint rules, event hooks and response parsing, for a
request whose answer is a few headers.  A cold ``ls -l`` makes one HEAD per
entry, a random read one GET per block and ``rm`` one DELETE per file, so on
two cores that CPU, not the server, sets the pace.  ``LeanRequests`` builds
those requests itself and signs them as the *client's own* signer does: each
operation's first request by that signer, the rest by sigv4.py once its
signature for that first request was the same.  So the credentials (and
their refresh) and the signing region and version are exactly the client's.

Small requests (a HEAD, a DELETE, a few keys' listing, a small GET or PUT,
a CopyObject, and CreateMultipartUpload, UploadPartCopy,
CompleteMultipartUpload and AbortMultipartUpload, which only ever go this
way) are sent from the event loop through ``ahttp.AsyncTransport`` (the
``a...`` methods);
the others go out through ``Transport``, from worker threads: kept
``http.client`` connections (a pool per server) with the client's timeouts,
socket options, CA bundle and verification.  botocore's HTTP session
(urllib3 under its own request and response wrappers) costs about 0.6 ms of
CPU more a request: a HEAD takes
0.45 ms this way, 1.05 ms through that session and 1.4 ms as a boto3 call
(measured against moto).  Endpoints reached through a proxy, and clients
with a client certificate, keep botocore's session.

Only the answers it fully understands are decoded here: a 200/206, a HEAD's
404, and errors with an S3 XML body (also in the body of a 200, as S3 sends
them for copies and CompleteMultipartUpload).  Anything else (redirects, a
region mismatch, a header we would decode differently from botocore such as
``Expires``) raises ``Fallback``, and the caller makes the same call through
boto3 (a CreateMultipartUpload with an ``Expires`` or metadata that is not
printable ASCII is left to boto3 from the start, see
``S3Store._create_headers``); a redirect also turns the lean path off for
the mount, since boto3 then knows the bucket's region and we don't.  Mounts with SSE-C keys or
requester-pays always use boto3 (``usable``).
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import functools
import hashlib
import http.client
import logging
import os
import re
import socket
import ssl
import threading
import xml.etree.ElementTree as ElementTree
from typing import Any, Mapping
from urllib.parse import quote, unquote_plus, urlsplit
from xml.sax.saxutils import escape as xml_escape, unescape as xml_unescape

from . import ahttp, sigv4
from .ahttp import AsyncTransport
from .buffers import ReceiveBuffers

log = logging.getLogger(__name__)

_META = "x-amz-meta-"
_XML_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
# Response headers -> the names botocore gives them (the ones we read).
_HEADERS = {"content-length": "ContentLength", "etag": "ETag", "content-type": "ContentType",
            "content-range": "ContentRange", "cache-control": "CacheControl",
            "content-disposition": "ContentDisposition",
            "content-encoding": "ContentEncoding", "content-language": "ContentLanguage",
            "x-amz-storage-class": "StorageClass"}


# The largest error answer read on the event loop (S3's XML errors are well
# under 1 KiB), and the largest listing (a page of a few keys, each up to
# 1,024 bytes of key and about 300 of XML).
ERROR_BODY_MAX = 64 * 1024
SMALL_LIST_BODY = 64 * 1024


class Fallback(Exception):
    """Make this call through boto3 instead."""


class LeanError(Exception):
    """An S3 error answer, in the shape ``translate`` gives botocore's."""

    def __init__(self, code: str, message: str, status: int, headers: Mapping[str, str]):
        super().__init__(code)
        self.code, self.message, self.status, self.headers = code, message, status, headers


def usable(settings) -> str | None:
    """Why the lean path cannot serve this mount, or None if it can."""
    if not settings.lean_requests:
        return "lean_requests=off"
    opts = settings.request_options
    if opts.sse_c_key is not None or opts.requester_pays:
        return "SSE-C or requester-pays headers"
    return None


class _Response:
    """An answer read through ``Transport``, shaped as botocore's (the parts
    the lean path uses).  Its connection goes back to the pool once the body
    is read whole (``content``, or ``raw.read()`` then ``done``)."""

    __slots__ = ("url", "raw", "status_code", "headers", "_conn", "_pool", "_content")

    def __init__(self, url: str, raw: http.client.HTTPResponse,
                 conn: http.client.HTTPConnection, pool: "_Pool"):
        self.url, self.raw, self._conn, self._pool = url, raw, conn, pool
        self.status_code = raw.status
        self.headers = raw.headers
        self._content: bytes | None = None

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self.raw.read()
            self.done()
        return self._content

    def done(self) -> None:
        """The body was read whole: the connection may serve another request."""
        if self.raw.isclosed() and self._conn is not None:
            self._pool.release(self._conn)
            self._conn = None

    def discard(self) -> None:
        """A body left unread or broken off: the connection cannot be reused."""
        self.raw.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Pool:
    """Idle keep-alive connections to one server, most recently used first."""

    def __init__(self, make, keep: int):
        self._make, self._keep = make, keep
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def acquire(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection, and True if it is new."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), False
        return self._make(), True

    def release(self, conn: http.client.HTTPConnection) -> None:
        if conn.sock is not None:   # not closed by the server's "Connection: close"
            with self._lock:
                if len(self._idle) < self._keep:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        """Close the idle connections (one in use is closed when released)."""
        with self._lock:
            idle, self._idle, self._keep = self._idle, [], 0
        for conn in idle:
            conn.close()


class _HTTPConnection(http.client.HTTPConnection):
    """The connect timeout for connecting, the read timeout afterwards, and
    the client's socket options (TCP_NODELAY, keepalive)."""

    connect_timeout: float | None = None
    socket_options: list = []

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.connect_timeout,
                                        self.source_address)
        try:
            for opt in self.socket_options:
                sock.setsockopt(*opt)
            sock.settimeout(self.timeout)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _HTTPSConnection(http.client.HTTPSConnection, _HTTPConnection):
    pass


class Transport:
    """Keep-alive HTTP/1.1 through ``http.client``, with a pool of idle
    connections per server (as many as the client's ``max_pool_connections``).
    Errors come out as botocore's, so they are translated and retried
    exactly as boto3's are."""

    def __init__(self, session):
        timeout = session._timeout
        if isinstance(timeout, (int, float)):
            self.connect_timeout = self.read_timeout = float(timeout)
        else:
            self.connect_timeout = timeout.connect_timeout
            self.read_timeout = timeout.read_timeout
        self.socket_options = list(session._socket_options or [])
        self.keep = session._max_pool_connections
        self._verify = session._verify
        self._context: ssl.SSLContext | None = None
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._lock = threading.Lock()

    @staticmethod
    def usable(session, url: str) -> bool:
        """False for a client whose requests to ``url`` need what only
        botocore's session does (a proxy, a client certificate)."""
        return (session._proxy_config.proxy_url_for(url) is None
                and session._cert_file is None)

    def ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            if self._verify is False:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                from botocore.httpsession import get_cert_path

                path = get_cert_path(self._verify)
                if path and os.path.isdir(path):
                    ctx = ssl.create_default_context(capath=path)
                else:
                    ctx = ssl.create_default_context(cafile=path)
            self._context = ctx
        return self._context

    def _pool(self, scheme: str, netloc: str) -> _Pool:
        pool = self._pools.get((scheme, netloc))
        if pool is None:
            def make() -> http.client.HTTPConnection:
                if scheme == "https":
                    conn: http.client.HTTPConnection = _HTTPSConnection(
                        netloc, timeout=self.read_timeout, context=self.ssl_context())
                else:
                    conn = _HTTPConnection(netloc, timeout=self.read_timeout)
                conn.connect_timeout = self.connect_timeout
                conn.socket_options = self.socket_options
                return conn

            with self._lock:
                pool = self._pools.setdefault((scheme, netloc), _Pool(make, self.keep))
        return pool

    def close(self) -> None:
        """Close every kept connection: the client is done."""
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()

    def send(self, method: str, url: str, headers: Mapping[str, str], stream: bool) -> _Response:
        """Send an idempotent request without a body (HEAD, GET, DELETE).  A
        kept connection the server has closed meanwhile is opened again and
        the request sent once more; every other failure is raised."""
        import botocore.exceptions as be

        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        pool = self._pool(parts.scheme, parts.netloc)
        while True:
            conn, new = pool.acquire()
            try:
                conn.request(method, target, headers=dict(headers))
                response = _Response(url, conn.getresponse(), conn, pool)
                if not stream:
                    response.content  # noqa: B018 - read it now: the connection is free again
                return response
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError) as e:
                conn.close()
                if new:
                    raise be.ConnectionClosedError(endpoint_url=url, error=e) from None
                # a kept connection the server closed: try a new one
            except BaseException as e:
                connected = conn.sock is not None
                conn.close()
                raise _http_error(e, url, connected) from None


async def async_send(transport: AsyncTransport, method: str, url: str,
                     headers: Mapping[str, str], limit: int, body: bytes = b"",
                     idempotent: bool = True) -> ahttp.Response:
    """``transport.send`` with its failures as botocore's (as ``Transport``
    gives them) and a body over ``limit`` as Fallback (for a request that
    must not be made twice, as a failure: boto3 would make it again)."""
    try:
        return await transport.send(method, url, headers, limit, body, idempotent)
    except ahttp.TooLarge as e:
        if not idempotent:
            raise _http_error(http.client.HTTPException(f"an answer of {e.args[0]} bytes"),
                              url, connected=True) from None
        raise Fallback("a larger answer than asked for") from None
    except ahttp.ConnectFailed as e:
        raise _http_error(e.error, url, connected=False) from None
    except Exception as e:
        raise _http_error(e, url, connected=True) from None


def _http_error(e: BaseException, url: str, connected: bool) -> BaseException:
    """A failure of ``http.client`` as the botocore exception boto3 would
    raise (anything else, a cancellation say, as it is)."""
    import botocore.exceptions as be

    if isinstance(e, ssl.SSLError):
        return be.SSLError(endpoint_url=url, error=e)
    if isinstance(e, TimeoutError):
        if connected:
            return be.ReadTimeoutError(endpoint_url=url, error=e)
        return be.ConnectTimeoutError(endpoint_url=url, error=e)
    if isinstance(e, (ConnectionRefusedError, socket.gaierror)) and not connected:
        return be.EndpointConnectionError(endpoint_url=url, error=e)
    if isinstance(e, (OSError, http.client.HTTPException)):
        return be.ConnectionClosedError(endpoint_url=url, error=e)
    return e


def _read_into(raw: http.client.HTTPResponse, buf: bytearray) -> bytearray:
    """The whole body (of ``len(buf)`` bytes, its Content-Length) read into
    ``buf``; IncompleteRead, as ``raw.read()`` raises, if it ends short."""
    view = memoryview(buf)
    try:
        got = 0
        while got < len(buf):
            n = raw.readinto(view[got:])
            if not n:
                raise http.client.IncompleteRead(b"", len(buf) - got)
            got += n
    finally:
        view.release()
    return buf


class LeanRequests:
    def __init__(self, client, buffers: ReceiveBuffers | None = None,
                 bucket: str | None = None):
        self.buffers = buffers  # to read large GET bodies into (see buffers.py)
        self.bucket = bucket    # for UploadPartCopy's source
        self._signer = client._request_signer
        self._http = client._endpoint.http_session
        self._transport: Transport | None = None
        self._atransport: AsyncTransport | None = None
        # per operation: our signer, or None where botocore's signs otherwise
        self._signers: dict[str, sigv4.Signer | None] = {}
        # Object URLs are the bucket's URL plus the key.  The bucket's URL is
        # the one botocore's endpoint rules give (addressing style, region,
        # endpoint, dualstack...): taken from the first listing sent, which
        # the mount's bucket check makes before anything else.
        self._base: str | None = None
        client.meta.events.register("before-send.s3.ListObjectsV2", self._learn_base)
        self.enabled = True

    def _learn_base(self, request, **_) -> None:
        if self._base is None:
            parts = urlsplit(request.url)
            self._base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/"
            if Transport.usable(self._http, self._base):
                self._use_transport()

    def adopt(self, other: "LeanRequests") -> None:
        """Take the bucket URL another client with the same settings learnt."""
        if self._base is None:
            self._base = other._base
            if other._transport is not None:
                self._use_transport()

    def _use_transport(self) -> None:
        self._transport = Transport(self._http)
        self._atransport = AsyncTransport(self._transport)

    async def aclose(self) -> None:
        """Close the kept connections of both transports (the mount ends)."""
        if self._atransport is not None:
            await self._atransport.aclose()
        if self._transport is not None:
            self._transport.close()

    @property
    def ready(self) -> bool:
        return self.enabled and self._base is not None

    @property
    def async_ready(self) -> bool:
        """The ``a...`` calls can be made (from the event loop)."""
        return self.ready and self._atransport is not None

    def url(self, key: str) -> str:
        assert self._base is not None
        return self._base + quote(key, safe="/~")

    def _signed(self, op: str, method: str, key: str, headers: dict[str, str],
                url: str | None, body: bytes = b"") -> tuple[str, Mapping[str, str]]:
        """The request's URL and signed headers: by our signer once it has
        given an operation's first request botocore's signature, else by
        botocore's (see sigv4.py)."""
        from botocore.awsrequest import AWSRequest

        url = url or self.url(key)
        payload = hashlib.sha256(body).hexdigest() if body else sigv4.EMPTY_SHA256
        fast = self._signers.get(op)
        if fast is not None:
            return url, fast.sign(method, url, headers, payload_hash=payload)
        request = AWSRequest(method=method, url=url, headers=dict(headers), data=body or None)
        self._signer.sign(op, request)
        if op not in self._signers:
            creds = self._signer._credentials
            mine = None
            if creds is not None and self._signer.region_name:
                mine = sigv4.Signer(creds, self._signer.region_name, self._signer._signing_name)
                if not mine.matches(method, url, headers, request.headers, payload):
                    log.info("lean %s: botocore signs it otherwise; using botocore's signer", op)
                    mine = None
            self._signers[op] = mine
        return request.url, request.headers

    def _send(self, op: str, method: str, key: str, headers: dict[str, str],
              url: str | None = None, stream: bool = False):
        if self._transport is not None:
            url, signed = self._signed(op, method, key, headers, url)
            return self._transport.send(method, url, signed, stream)
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=url or self.url(key), headers=headers)
        self._signer.sign(op, request)   # botocore's session: botocore's signer, as ever
        prepared = request.prepare()
        prepared.stream_output = stream
        return self._http.send(prepared)

    async def _asend(self, op: str, method: str, key: str, headers: dict[str, str],
                     url: str | None = None, limit: int = ERROR_BODY_MAX, body: bytes = b"",
                     idempotent: bool = True) -> ahttp.Response:
        """The whole answer, through the event loop's connections; a body
        over ``limit`` bytes (an error's may have ERROR_BODY_MAX) makes the
        caller ask through a worker thread instead (Fallback).  A POST or
        PUT says its Content-Length (not signed, as botocore's)."""
        assert self._atransport is not None
        url, signed = self._signed(op, method, key, headers, url, body)
        if method in ("POST", "PUT"):
            signed = {**signed, "Content-Length": str(len(body))}
        return await async_send(self._atransport, method, url, signed,
                                max(limit, ERROR_BODY_MAX), body, idempotent)

    def _error(self, op: str, response) -> LeanError:
        status = response.status_code
        headers = response.headers
        if status in (301, 302, 307, 308) or (status == 400 and b"Region" in response.content):
            # the bucket lives elsewhere: boto3 follows the redirect and
            # remembers the region; from now on it makes every call
            self.enabled = False
            log.info("S3 answered %s to a lean %s: using boto3 for all requests", status, op)
            raise Fallback(str(status))
        body = response.content or b""
        err = _xml_error(body, status, headers)
        if err is not None:
            return err
        if op == "HeadObject" or not body:
            # botocore's answer to an error without a body
            return LeanError(str(status), http.client.responses.get(status, ""), status,
                             headers)
        raise Fallback(f"{status} with an unrecognised body")

    def head(self, key: str) -> dict[str, Any]:
        """HeadObject's answer, shaped as boto3's (the fields we use)."""
        return self._head_answer(self._send("HeadObject", "HEAD", key, {}))

    async def ahead(self, key: str) -> dict[str, Any]:
        return self._head_answer(await self._asend("HeadObject", "HEAD", key, {}))

    def _head_answer(self, response) -> dict[str, Any]:
        if response.status_code != 200:
            raise self._error("HeadObject", response)
        return _decode(response.headers)

    @staticmethod
    def _get_headers(range_header: str | None, if_match: str | None) -> dict[str, str]:
        headers = {}
        if range_header:
            headers["Range"] = range_header
        if if_match:
            headers["If-Match"] = if_match
        return headers

    async def aget(self, key: str, range_header: str | None, if_match: str | None,
                   limit: int):
        """``get`` of an answer of at most ``limit`` bytes (else Fallback)."""
        response = await self._asend("GetObject", "GET", key,
                                     self._get_headers(range_header, if_match), limit=limit)
        if response.status_code not in (200, 206):
            raise self._error("GetObject", response)
        return _decode(response.headers), response.content

    def get(self, key: str, range_header: str | None, if_match: str | None):
        """GetObject's answer as (boto3-shaped fields, body): a bytearray from
        ``buffers`` for a large body, which the caller must not change."""
        response = self._send("GetObject", "GET", key, self._get_headers(range_header, if_match),
                              stream=True)
        with _body_errors(response):
            if response.status_code not in (200, 206):
                response.content  # noqa: B018 - read the (small) error body
                raise self._error("GetObject", response)
            fields = _decode(response.headers)
            length = response.raw.length if isinstance(response, _Response) else None
            if self.buffers is not None and length and length >= self.buffers.min_size:
                body = _read_into(response.raw, self.buffers.take(length))
            else:
                body = response.raw.read()
            if isinstance(response, _Response):
                response.done()
            return fields, body

    def delete(self, key: str) -> None:
        """DeleteObject (its answer has nothing we read)."""
        self._delete_answer(self._send("DeleteObject", "DELETE", key, {}))

    async def adelete(self, key: str) -> None:
        self._delete_answer(await self._asend("DeleteObject", "DELETE", key, {}))

    def _delete_answer(self, response) -> None:
        if response.status_code not in (200, 204):
            raise self._error("DeleteObject", response)

    async def aput(self, key: str, headers: dict[str, str], body: bytes | bytearray,
                   idempotent: bool) -> dict[str, Any]:
        """PutObject of a small ``body`` with ``headers`` (those boto3 sends:
        see ``S3Store._lean_put``); its answer shaped as boto3's (the ETag).
        Not ``idempotent`` (a conditional PUT): a kept connection found closed
        is an error for the caller's retry, not a silent second request."""
        op = "PutObject"
        response = await self._asend(op, "PUT", key, headers, body=body, idempotent=idempotent)
        if response.status_code != 200:
            raise self._error(op, response)
        # the ETag alone: a header _decode leaves to botocore (Expires) must
        # not make boto3 send the PUT again
        return {"ETag": response.headers.get("etag")}

    async def acopy(self, key: str, source: str, headers: dict[str, str]) -> dict[str, Any]:
        """CopyObject of ``source`` (a key of this bucket) onto ``key`` with
        ``headers`` (those boto3 sends: see ``S3Store.copy``); its answer
        shaped as boto3's (ETag, LastModified).  Sent again unseen after a
        lost answer it makes the same object again."""
        op = "CopyObject"
        body = self._result(op, await self._asend(
            op, "PUT", key, {"x-amz-copy-source": self._copy_source(source), **headers}))
        return {"CopyObjectResult": {"ETag": _xml_text(body, "ETag", op),
                                     "LastModified": _timestamp(
                                         _xml_text(body, "LastModified", op))}}

    # -- multipart uploads (from the event loop only) -------------------------
    #
    # A multipart upload waits for each of these in turn (an append: Create,
    # then UploadPartCopy beside UploadPart, then Complete); through boto3
    # each costs about twice the CPU (3.0-3.7 ms against 1.6-1.8 ms), in a
    # worker thread.  UploadPart, whose body is a part, stays with boto3.

    def _upload_url(self, key: str, upload_id: str, number: int | None = None) -> str:
        query = f"uploadId={quote(upload_id, safe='-_.~')}"
        if number is not None:
            query = f"partNumber={number}&{query}"
        return f"{self.url(key)}?{query}"

    async def acreate_multipart(self, key: str, headers: dict[str, str]) -> dict[str, Any]:
        """CreateMultipartUpload with ``headers`` (metadata, Content-Type,
        the mount's SSE and storage class, as boto3 would send them); its
        answer shaped as boto3's (the upload id)."""
        op = "CreateMultipartUpload"
        response = await self._asend(op, "POST", key, headers, url=self.url(key) + "?uploads",
                                     idempotent=False)
        return {"UploadId": _xml_text(self._result(op, response), "UploadId", op)}

    async def aupload_part_copy(self, key: str, upload_id: str, number: int, source: str,
                                range_header: str, if_match: str | None) -> dict[str, Any]:
        """UploadPartCopy of ``range_header`` of ``source`` (a key of this
        bucket); its answer shaped as boto3's (the part's ETag)."""
        op = "UploadPartCopy"
        headers = {"x-amz-copy-source": self._copy_source(source),
                   "x-amz-copy-source-range": range_header}
        if if_match:
            headers["x-amz-copy-source-if-match"] = if_match
        response = await self._asend(op, "PUT", key, headers,
                                     url=self._upload_url(key, upload_id, number))
        return {"CopyPartResult": {"ETag": _xml_text(self._result(op, response), "ETag", op)}}

    async def acomplete_multipart(self, key: str, upload_id: str,
                                  parts: list[tuple[int, str]]) -> dict[str, Any]:
        """CompleteMultipartUpload of ``parts`` (number, ETag); its answer
        shaped as boto3's (the object's ETag)."""
        op = "CompleteMultipartUpload"
        body = ('<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                + "".join(f"<Part><PartNumber>{n}</PartNumber>"
                          f"<ETag>{xml_escape(e)}</ETag></Part>" for n, e in parts)
                + "</CompleteMultipartUpload>").encode()
        response = await self._asend(op, "POST", key, {}, url=self._upload_url(key, upload_id),
                                     body=body)
        return {"ETag": _xml_text(self._result(op, response), "ETag", op)}

    async def aabort_multipart(self, key: str, upload_id: str) -> None:
        op = "AbortMultipartUpload"
        response = await self._asend(op, "DELETE", key, {}, url=self._upload_url(key, upload_id))
        if response.status_code not in (200, 204):
            raise self._error(op, response)

    def _copy_source(self, key: str) -> str:
        """x-amz-copy-source for ``key`` of this bucket, quoted as botocore
        quotes a {"Bucket", "Key"} source."""
        if self.bucket is None:
            raise Fallback("the bucket's name is not known here")
        return quote(self.bucket, safe="-._~") + "/" + quote(key, safe="-._~/")

    def _result(self, op: str, response) -> bytes:
        """The XML body of a 200 answer.  S3 may answer a copy or a
        CompleteMultipartUpload 200 and then send an error in the body, once
        the work failed: botocore takes that for a 500 of that error (it is
        retried), and so do we."""
        if response.status_code != 200:
            raise self._error(op, response)
        body = response.content or b""
        err = _xml_error(body, 500, response.headers) if b"<Error>" in body else None
        if err is not None:
            raise err
        return body

    def list(self, prefix: str, delimiter: str | None, token: str | None,
             max_keys: int, start_after: str | None = None) -> dict[str, Any]:
        """ListObjectsV2's answer, shaped as boto3's (the fields we use).

        botocore parses the XML into a generic shape and every LastModified
        with dateutil, about 60 us an entry: a 1,000-key page costs tens of
        milliseconds of CPU, the bulk of an ``ls`` of a big directory."""
        return self._list_answer(self._send("ListObjectsV2", "GET", prefix, {},
                                            url=self._list_url(prefix, delimiter, token, max_keys,
                                                               start_after)))

    async def alist(self, prefix: str, delimiter: str | None, token: str | None,
                    max_keys: int, start_after: str | None = None) -> dict[str, Any]:
        """``list`` of a few keys (the answer is parsed on the event loop)."""
        url = self._list_url(prefix, delimiter, token, max_keys, start_after)
        return self._list_answer(await self._asend("ListObjectsV2", "GET", prefix, {}, url=url,
                                                   limit=SMALL_LIST_BODY))

    def _list_answer(self, response) -> dict[str, Any]:
        if response.status_code != 200:
            raise self._error("ListObjectsV2", response)
        return _decode_listing(response.content)

    def _list_url(self, prefix: str, delimiter: str | None, token: str | None,
                  max_keys: int, start_after: str | None = None) -> str:
        assert self._base is not None
        params = [("list-type", "2"), ("encoding-type", "url"), ("prefix", prefix),
                  ("max-keys", str(max_keys))]
        if delimiter:
            params.append(("delimiter", delimiter))
        if token:
            params.append(("continuation-token", token))
        if start_after:
            params.append(("start-after", start_after))
        query = "&".join(f"{k}={quote(v, safe='-_.~')}" for k, v in sorted(params))
        root = self._base if urlsplit(self._base).path == "/" else self._base[:-1]
        return f"{root}?{query}"


@contextlib.contextmanager
def _body_errors(response):
    """Read a streamed body as botocore's ``send`` does with an unstreamed
    one: the same exceptions, the connection closed on any failure.

    ``raw.read()`` (http.client; under urllib3 in botocore's session) reads
    a body of known length straight into one bytes object with a few large
    socket reads, where botocore's ``content`` joins 64 KiB chunks that each
    take a trip through urllib3: for a 16 MiB GET that is 256 trips and one
    more copy of the whole body (a fifth of the daemon's CPU in a cold
    sequential read on Swift, measured with py-spy).
    """
    import botocore.exceptions as be
    from urllib3.exceptions import ProtocolError, ReadTimeoutError, SSLError

    def drop() -> None:
        # a body left unread or broken off: the connection cannot be
        # reused; it goes back to the pool closed (the pool reconnects)
        if isinstance(response, _Response):
            response.discard()
            return
        raw = response.raw
        if not raw.isclosed():
            raw.close()
        raw.release_conn()

    try:
        yield
    except (Fallback, LeanError):
        drop()
        raise
    except (OSError, http.client.HTTPException) as e:  # read through Transport
        drop()
        raise _http_error(e, response.url, connected=True) from None
    except SSLError as e:
        drop()
        raise be.SSLError(endpoint_url=response.url, error=e) from None
    except ReadTimeoutError as e:
        drop()
        raise be.ReadTimeoutError(endpoint_url=response.url, error=e) from None
    except ProtocolError as e:
        drop()
        raise be.ConnectionClosedError(error=e, endpoint_url=response.url) from None
    except Exception as e:
        drop()
        raise be.HTTPClientError(error=e) from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _decode_listing(body: bytes) -> dict[str, Any]:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise Fallback("a listing that is not XML") from None
    if _local(root.tag) != "ListBucketResult":
        raise Fallback(f"a listing answered with <{_local(root.tag)}>")
    out: dict[str, Any] = {}
    contents: list[dict[str, Any]] = []
    prefixes: list[dict[str, str]] = []
    encoded = False
    for el in root:
        name = _local(el.tag)
        if name == "Contents":
            o: dict[str, Any] = {}
            for f in el:
                fname, text = _local(f.tag), f.text or ""
                if fname == "Key":
                    o["Key"] = text
                elif fname == "Size":
                    o["Size"] = int(text)
                elif fname == "ETag":
                    o["ETag"] = text
                elif fname == "LastModified":
                    o["LastModified"] = _timestamp(text)
            if "Key" not in o:
                raise Fallback("a listed object without a key")
            contents.append(o)
        elif name == "CommonPrefixes":
            for f in el:
                if _local(f.tag) == "Prefix":
                    prefixes.append({"Prefix": f.text or ""})
        elif name == "IsTruncated":
            out["IsTruncated"] = (el.text or "").strip() == "true"
        elif name == "NextContinuationToken":
            out["NextContinuationToken"] = el.text or ""
        elif name == "EncodingType":
            encoded = (el.text or "").strip() == "url"
    if encoded:  # as botocore decodes what it asked to be encoded
        for o in contents:
            o["Key"] = unquote_plus(o["Key"])
        for p in prefixes:
            p["Prefix"] = unquote_plus(p["Prefix"])
    if contents:
        out["Contents"] = contents
    if prefixes:
        out["CommonPrefixes"] = prefixes
    return out


def _timestamp(text: str) -> datetime.datetime:
    try:
        t = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise Fallback(f"LastModified {text[:40]!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


_XML_UNESCAPE = {"&quot;": '"', "&apos;": "'"}


def _xml_error(body: bytes, status: int, headers: Mapping[str, str]) -> LeanError | None:
    """The S3 error an XML body holds (its Code and Message), as ``status``."""
    m = _XML_CODE.search(body)
    if m is None:
        return None
    msg = _XML_MESSAGE.search(body)
    return LeanError(m[1].decode(errors="replace"),
                     msg[1].decode(errors="replace") if msg else "", status, headers)


def _xml_text(body: bytes, tag: str, op: str) -> str:
    """The text of the first ``<tag>`` of an S3 answer.  An answer without
    one is the server's failure (a 500 of ours, retried), never a Fallback:
    boto3 would make the request again."""
    m = re.search(rb"<%s>([^<]*)</%s>" % (tag.encode(), tag.encode()), body)
    if m is None:
        raise LeanError("InternalError", f"{op} answered without {tag}", 500, {})
    return xml_unescape(m[1].decode(), _XML_UNESCAPE)


def _decode(headers: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith(_META):
            metadata[lname[len(_META):]] = value
        elif lname in _HEADERS:
            out[_HEADERS[lname]] = value
        elif lname == "last-modified":
            try:
                out["LastModified"] = http_date(value)
            except (TypeError, ValueError):
                raise Fallback("Last-Modified") from None
        elif lname == "date":  # where botocore's answer has it
            out["ResponseMetadata"] = {"HTTPHeaders": {"date": value}}
        elif lname == "expires":
            raise Fallback("Expires")   # botocore's own date rules decide this one
    if "ContentLength" in out:
        try:
            out["ContentLength"] = int(out["ContentLength"])
        except ValueError:
            raise Fallback("Content-Length") from None
    out["Metadata"] = metadata
    return out


@functools.lru_cache(maxsize=1024)
def http_date(value: str) -> datetime.datetime:
    """An HTTP date as a datetime, remembered: the server's Date changes once
    a second, objects written in the same second share their Last-Modified,
    and email.utils's parser costs about 8 us a call.  Also s3.py's."""
    return email.utils.parsedate_to_datetime(value)
