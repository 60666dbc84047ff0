"""The S3 implementation of the object store: boto3 calls run in worker threads.

This is the only module that imports boto3 or starts threads.  Every call
goes through ``_call``, which runs it under a ``trio.CapacityLimiter`` sized
to the connection pool, and turns botocore's exceptions into ``StoreError``
with the S3 error code, so callers see one error vocabulary.  Transient
failures (5xx, throttling, dropped connections, short or damaged bodies)
are retried by ``_call`` itself, following ``retry.py`` (bounded
exponential back-off with jitter, Retry-After honoured, concurrency halved
while the server throttles); botocore's own retries are off.  A request
that still fails raises its StoreError, which callers turn into EIO.

GET bodies are checked before they are returned: the length against
Content-Length, the Content-Range against the range asked for, and the
ETag against the pinned one, so a reader never gets bytes that are short,
misplaced or from another version of the object.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

import cachetools
import trio

from .. import logs, metrics
from ..errors import (PreconditionFailed, StoreError, StoreUnavailable, UserError,
                      store_error)
from ..tasks import open_nursery
from . import lean as _lean
from .base import (BODY_CACHE_BYTES, MAX_DELETE_BATCH, MAX_PARTS, MAX_SINGLE_COPY, MiB,
                   ListPage, ObjectInfo, Part, PRESERVED_HEADERS, etag_of_parts)
from .base import bare_etag as _bare_etag
from .buffers import ReceiveBuffers
from .retry import Congestion, backoff, is_retryable, is_throttle, parse_retry_after
from .s3options import RequestOptions

log = logging.getLogger(__name__)

# Part size for server-side multipart copies of objects over 5 GiB: large
# parts mean few requests; the size grows for objects over 5 TiB / 10,000.
COPY_PART_SIZE = 512 * MiB
# Large GET bodies are read into buffers kept for the next body of the same
# size (see buffers.py): at most this much, each given back after its
# RECEIVE_IDLE seconds unused (``release_idle``).
RECEIVE_BUFFERS_MAX = 128 * MiB
RECEIVE_IDLE = 2.0
# Requests sent from the event loop when the lean path can (see ahttp.py):
# GETs of at most this many bytes (random reads fetch 64 KiB; whole blocks
# and read-ahead segments go through worker threads into kept buffers), and
# listings of at most this many keys (lookups ask for one or two).
ASYNC_GET_MAX = 256 * 1024
ASYNC_LIST_KEYS = 10
# PutObject bodies up to this size are sent from the event loop too (a
# small file's close; a bigger body is signed and sent in a worker thread).
ASYNC_PUT_MAX = 256 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_connections: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 5
    # "when_required" keeps botocore from sending CRC32 trailers / aws-chunked
    # bodies that several S3-compatible servers reject.
    checksums: str = "when_required"
    # Integrity of uploaded bodies.  Over plain HTTP botocore signs the
    # SHA-256 of every payload (x-amz-content-sha256), which the server
    # checks; over HTTPS it sends UNSIGNED-PAYLOAD, so "auto" adds Content-MD5
    # there.  MD5 costs about 1.5 s of CPU per GiB, so it is not doubled up.
    upload_checksum: str = "auto"
    verify_ssl: bool = True
    addressing_style: str | None = None
    # HeadObject/GetObject without botocore's per-call work (see lean.py)
    lean_requests: bool = True
    # SSE, storage class, requester-pays: added to every call that takes them
    request_options: RequestOptions = field(default_factory=RequestOptions)


    # Explicit keys (s3fs passwd file); None: boto3's credential chain.
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    credential_source: str = ""  # where access_key came from, for the log


# boto3's parameters of CreateMultipartUpload that the lean path sends, as
# the headers botocore makes of them (Metadata aside: x-amz-meta-*).
_CREATE_HEADERS = {"ContentType": "Content-Type", "CacheControl": "Cache-Control",
                   "ContentDisposition": "Content-Disposition",
                   "ContentEncoding": "Content-Encoding", "ContentLanguage": "Content-Language",
                   "StorageClass": "x-amz-storage-class",
                   "ServerSideEncryption": "x-amz-server-side-encryption",
                   "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}
# PutObject's own parameters (not CreateMultipartUpload's) -> their headers;
# Bucket, Key and Body are the request itself.
_PUT_OWN = {"Bucket": None, "Key": None, "Body": None, "ContentMD5": "Content-MD5",
            "IfNoneMatch": "If-None-Match", "IfMatch": "If-Match"}
# CopyObject's own parameters -> their headers (x-amz-copy-source is made
# by the lean path from the source's key).
_COPY_OWN = {"Bucket": None, "Key": None, "CopySource": None,
             "MetadataDirective": "x-amz-metadata-directive",
             "CopySourceIfMatch": "x-amz-copy-source-if-match"}
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
# Characters XML 1.0 cannot carry, even as references: a DeleteObjects body
# naming such a key is malformed (S3: MalformedXML), so it goes alone in a URL.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _ms(dt) -> int:
    return int(dt.timestamp() * 1_000_000_000) if dt is not None else 0


def _http_date_ns(value: str | None) -> int:
    """An HTTP date header in ns since the epoch; 0 if absent or unreadable."""
    if not value:
        return 0
    try:
        return int(_lean.http_date(value).timestamp()) * 1_000_000_000
    except (TypeError, ValueError, OverflowError):
        return 0


def _blob(body: bytes | bytearray | memoryview) -> bytes | bytearray:
    """A body botocore accepts, without copying bytes or bytearrays."""
    return body if isinstance(body, (bytes, bytearray)) else bytes(body)


def _md5_b64(body: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def make_client(settings: S3Settings, *, connect_timeout: float | None = None,
                read_timeout: float | None = None):
    """A boto3 S3 client for ``settings`` (credentials from boto3's chain)."""
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    try:
        session = boto3.session.Session(profile_name=settings.profile,
                                        region_name=settings.region,
                                        aws_access_key_id=settings.access_key,
                                        aws_secret_access_key=settings.secret_key)
    except botocore.exceptions.ProfileNotFound as e:
        # the profile may come from AWS_PROFILE, not settings.profile: e names it
        raise UserError(f"AWS profile not found ({e})") from None
    except botocore.exceptions.BotoCoreError as e:
        # a ~/.aws/config that does not parse, ...
        raise UserError(f"AWS configuration: {e}") from None
    style = settings.addressing_style or ("path" if settings.endpoint_url else "auto")
    cfg = Config(
        s3={"addressing_style": style},
        max_pool_connections=settings.max_connections,
        connect_timeout=connect_timeout or settings.connect_timeout,
        read_timeout=read_timeout or settings.read_timeout,
        # S3Store._call retries (see retry.py); botocore makes one attempt
        retries={"mode": "standard", "total_max_attempts": 1},
        request_checksum_calculation=settings.checksums,
        response_checksum_validation=settings.checksums,
        tcp_keepalive=True,
    )
    region = settings.region or session.region_name or "us-east-1"
    try:
        client = session.client("s3", endpoint_url=settings.endpoint_url, region_name=region,
                                config=cfg, verify=settings.verify_ssl)
    except botocore.exceptions.BotoCoreError as e:
        # credentials are resolved here: AWS_ACCESS_KEY_ID without
        # AWS_SECRET_ACCESS_KEY, a shared config file that does not parse...
        raise UserError(f"AWS credentials: {e}") from None
    # DeleteObjects must carry an integrity header.  New botocore sends a
    # CRC32 checksum, which Swift's s3api and older MinIO/Ceph reject with
    # "Missing required header: Content-MD5".  Content-MD5 is accepted by
    # every implementation, AWS included, so always add it.
    client.meta.events.register("before-sign.s3.DeleteObjects", _add_content_md5)
    settings.request_options.install(client)
    _never_log_credentials(session, settings)
    return client


def _never_log_credentials(session, settings: S3Settings) -> None:
    for value in settings.request_options.secrets():
        logs.add_secret(value)
    try:
        creds = session.get_credentials()
        frozen = creds.get_frozen_credentials() if creds is not None else None
    except Exception:  # resolving credentials fails later, with a clear message
        return
    if frozen is not None:
        logs.add_secret(frozen.secret_key)
        logs.add_secret(frozen.token)


def chain_has_credentials(settings: S3Settings) -> bool:
    """Whether boto3's own chain finds credentials (may ask instance metadata)."""
    import boto3
    import botocore.exceptions

    try:
        return boto3.session.Session(profile_name=settings.profile).get_credentials() \
            is not None
    except botocore.exceptions.BotoCoreError:
        return False


def _add_content_md5(request, **_):
    body = request.body
    if isinstance(body, str):
        body = body.encode()
    if body is not None and "Content-MD5" not in request.headers:
        data = body if isinstance(body, (bytes, bytearray)) else body.read()
        if not isinstance(body, (bytes, bytearray)):
            body.seek(0)
        request.headers["Content-MD5"] = _md5_b64(bytes(data))


# Requests botocore makes itself to get credentials (assume-role profiles, web
# identity, SSO): their failure is about credentials, not about the bucket.
CREDENTIAL_OPS = frozenset({"AssumeRole", "AssumeRoleWithWebIdentity",
                            "AssumeRoleWithSAML", "GetRoleCredentials"})


def credential_error(detail: str, op: str, key: str) -> StoreError:
    e = StoreError("CredentialError", detail, op=op, key=key)
    e.detail = detail
    return e


def _answer(code: str, message: str, status: int | None, headers: Mapping[str, str],
            op: str, key: str) -> StoreError:
    """The StoreError for an S3 error answer, with its Retry-After."""
    e = store_error(code, message[:200], op=op, key=key, status=status)
    e.retry_after = parse_retry_after(headers.get("retry-after"))
    return e


def translate(exc: BaseException, op: str, key: str) -> StoreError:
    """botocore exception -> StoreError (no credentials or URLs in the text)."""
    import botocore.exceptions as be

    if isinstance(exc, _lean.LeanError):
        return _answer(exc.code, exc.message, exc.status, exc.headers, op, key)
    if isinstance(exc, (be.CredentialRetrievalError, be.TokenRetrievalError, be.SSOError,
                        be.PartialCredentialsError)):
        return credential_error(type(exc).__name__, op, key)
    if isinstance(exc, be.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        code = str(err.get("Code") or status or "Unknown")
        if getattr(exc, "operation_name", None) in CREDENTIAL_OPS:
            return credential_error(f"{exc.operation_name} failed: {code}", op, key)
        return _answer(code, str(err.get("Message", "")), status,
                       meta.get("HTTPHeaders") or {}, op, key)
    if isinstance(exc, be.SSLError):
        return StoreError("TLSError", "TLS handshake or certificate verification failed",
                          op=op, key=key)
    if isinstance(exc, (be.ConnectionError, be.HTTPClientError)):
        # refused, reset, timed out, or the body stream broke off
        return StoreUnavailable("Unreachable", type(exc).__name__, op=op, key=key)
    if isinstance(exc, be.IncompleteReadError):
        return StoreError("IncompleteBody", str(exc)[:200], op=op, key=key)
    if isinstance(exc, be.NoCredentialsError):
        return StoreError("AccessDenied", "no AWS credentials found", op=op, key=key)
    if isinstance(exc, be.ParamValidationError):
        return StoreError("InvalidArgument", "invalid request parameter", op=op, key=key)
    if isinstance(exc, be.BotoCoreError):
        return StoreError("ClientError", type(exc).__name__, op=op, key=key)
    if isinstance(exc, OSError):
        return StoreUnavailable("Unreachable", type(exc).__name__, op=op, key=key)
    raise exc


def _missing(e: "_lean.LeanError") -> None:
    """For a GET asked in place of a HEAD (see ``S3Store._head_by_get``):
    if ``e`` says the key does not exist (404 NoSuchKey), raise the error a
    HEAD gets for that (no body: "404"); else return None, and the HEAD is
    asked."""
    if e.status == 404 and e.code == "NoSuchKey":
        raise _lean.LeanError("404", "Not Found", 404, e.headers)
    return None


def _checked_body(r: Mapping[str, Any], data: bytes, key: str, start: int,
                  end: int | None, etag: str | None) -> bytes:
    """``data`` if it is exactly the bytes asked for, else a StoreError:
    PreconditionFailed (ESTALE) for another version of the object,
    IncompleteBody or WrongRange (both retried) for a damaged answer."""
    if etag and r.get("ETag") and _bare_etag(r["ETag"]) != _bare_etag(etag):
        # a server that ignored If-Match
        raise PreconditionFailed("PreconditionFailed", "the ETag changed", op="GetObject",
                                 key=key)
    expected = r.get("ContentLength")
    if expected is not None and len(data) != int(expected):
        raise StoreError("IncompleteBody", f"{len(data)} of {expected} bytes",
                         op="GetObject", key=key)
    content_range = r.get("ContentRange")
    if content_range:
        m = _CONTENT_RANGE.fullmatch(content_range.strip())
        if m is None:
            raise StoreError("WrongRange", content_range[:100], op="GetObject", key=key)
        first, last, total = int(m[1]), int(m[2]), m[3]
        want_end = end if end is not None else last + 1
        if total != "*":
            want_end = min(want_end, int(total))
        if first != start or last + 1 != want_end or len(data) != last + 1 - first:
            raise StoreError("WrongRange", f"asked {start}-{end}, got {content_range}"[:100],
                             op="GetObject", key=key)
        return data
    if start or end is not None:
        return data[start:end]  # a 200 with the whole object: Range was ignored
    return data


def multipart_etag(parts: Sequence[Part]) -> str | None:
    """The ETag S3 gives the object completed from ``parts`` (None if the
    part ETags are not MD5s, as with SSE-KMS)."""
    try:
        return etag_of_parts([bytes.fromhex(p.etag.strip('"')) for p in parts])
    except ValueError:
        return None


class S3Store:
    """ObjectStore over one bucket through boto3."""

    def __init__(self, settings: S3Settings, client=None):
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client or make_client(settings)
        https = not settings.endpoint_url or settings.endpoint_url.lower().startswith("https:")
        self.content_md5 = settings.upload_checksum == "md5" or (
            settings.upload_checksum == "auto" and https)
        self.limiter = trio.CapacityLimiter(settings.max_connections)
        self.receive_buffers = ReceiveBuffers(RECEIVE_BUFFERS_MAX, idle=RECEIVE_IDLE)
        self.lean = self._make_lean()
        # (key, ETag) -> the whole object, from head(body_max=...): a body is
        # only ever served for the version it came with
        self._bodies: cachetools.LRUCache = cachetools.LRUCache(BODY_CACHE_BYTES, getsizeof=len)
        self.congestion = Congestion(self.limiter, settings.max_connections)
        self.retries = 0            # attempts repeated after a transient failure
        # False once the server refused x-amz-copy-source-if-match on an
        # object uploaded in parts whose ETag matched (see _copy_if)
        self.copy_if_match_multipart = True
        # (key, upload id) of the multipart uploads created and not yet
        # completed or aborted (see abort_open_uploads_now)
        self.open_uploads: set[tuple[str, str]] = set()

    # -- plumbing ---------------------------------------------------------

    def _make_lean(self) -> _lean.LeanRequests | None:
        why = _lean.usable(self.settings)
        if why is None:
            try:
                return _lean.LeanRequests(self.client, self.receive_buffers, self.settings.bucket)
            except Exception as e:  # a client without the botocore internals it uses
                why = f"{type(e).__name__}: {e}"
        log.debug("every request goes through boto3 (%s)", why)
        return None

    def release_idle(self) -> None:
        """Give back the receive buffers left unused for a while."""
        self.receive_buffers.trim()

    async def aclose(self) -> None:
        """Close the kept connections: the lean path's, then boto3's."""
        if self.lean is not None:
            await self.lean.aclose()
        await trio.to_thread.run_sync(self.client.close)

    def _lean_or_none(self) -> _lean.LeanRequests | None:
        lean = self.lean
        return lean if lean is not None and lean.ready else None

    def _lean_async(self, call: Callable[[_lean.LeanRequests], Awaitable[Any]]
                    ) -> Callable[[], Awaitable[Any]] | None:
        """``call`` for ``_call(afn=)``, when the lean path can send it from
        the event loop (see ahttp.py); else None."""
        lean = self._lean_or_none()
        if lean is None or not lean.async_ready:
            return None

        async def run():
            if not lean.async_ready:  # turned off meanwhile (a redirect)
                raise _lean.Fallback("lean requests are off")
            return await call(lean)

        return run

    def _lean_pick(self, lean_call: Callable[[_lean.LeanRequests], Any],
                   alean_call: Callable[[_lean.LeanRequests], Awaitable[Any]] | None,
                   boto3_call: Callable[[], Any]
                   ) -> tuple[Callable[[], Any], Callable[[], Awaitable[Any]] | None]:
        """``fn`` and ``afn`` for ``_call``: ``alean_call`` from the event
        loop where it can be made there, with boto3 in a worker thread when
        it falls back; else the lean path, then boto3, in a worker thread."""
        afn = self._lean_async(alean_call) if alean_call is not None else None
        return (boto3_call if afn else self._lean_first(lean_call, boto3_call)), afn

    def _lean_first(self, lean_call: Callable[[_lean.LeanRequests], Any],
                    boto3_call: Callable[[], Any]) -> Callable[[], Any]:
        """A request (for a worker thread) made by the lean path when it is
        ready and understands the answer, else through boto3."""
        def fetch():
            lean = self._lean_or_none()
            if lean is not None:
                try:
                    return lean_call(lean)
                except _lean.Fallback:
                    pass
            return boto3_call()

        return fetch

    async def _call(self, op: str, key: str, fn: Callable[[], Any], *, sent: int = 0,
                    retried: list[StoreError] | None = None,
                    afn: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """Run ``fn`` in a worker thread, retrying transient failures.

        ``fn`` may raise StoreError itself (a body that failed its checks).
        ``afn``: the same request made from the event loop (``_lean_async``),
        tried first in each attempt; when it raises ``Fallback`` that attempt
        runs ``fn`` instead.  ``sent``: object bytes in the request body, for
        the metrics.  The errors that were retried are appended to
        ``retried``: a request whose answer was lost may have taken effect on
        the server.  A failure after the last attempt is logged once, counted
        and raised.
        """
        attempts = max(1, self.settings.max_attempts)
        took = [0.0]

        def timed():  # in the worker thread: time the request, not the queue
            t0 = time.monotonic()
            try:
                return fn()
            finally:
                took[0] = time.monotonic() - t0

        async def run():
            if afn is not None:
                async with self.limiter:
                    t0 = time.monotonic()
                    try:
                        return await afn()
                    except _lean.Fallback:
                        pass
                    finally:
                        took[0] = time.monotonic() - t0
            return await trio.to_thread.run_sync(timed, limiter=self.limiter)

        for attempt in range(attempts):
            try:
                result = await run()
            except StoreError as e:
                err = e
            except Exception as exc:  # translated below; anything unknown re-raises
                err = translate(exc, op, key)
            else:
                self.congestion.succeeded()
                metrics.s3_request(op, took[0])
                if sent:
                    metrics.counter("objectfs_s3_sent_bytes_total").inc(sent)
                return result
            metrics.s3_request(op, took[0], error=err.code)
            if not is_retryable(err) or attempt + 1 >= attempts:
                break
            if is_throttle(err):
                self.congestion.throttled()
            delay = backoff(attempt, err.retry_after)
            log.info("S3 %s %r: %s, retrying in %.2fs", op, key, err.code, delay)
            if retried is not None:
                retried.append(err)
            self.retries += 1
            await trio.sleep(delay)
        log.log(err.log_level, "S3 %s %r failed: %s%s", op, key, err.code,
                f" (HTTP {err.status})" if err.status and str(err.status) != err.code else "")
        raise err

    def _common(self, metadata: Mapping[str, str], content_type: str,
                headers: Mapping[str, Any] | None) -> dict[str, Any]:
        kw: dict[str, Any] = {"Metadata": dict(metadata), "ContentType": content_type}
        for name in PRESERVED_HEADERS:
            if headers and headers.get(name):
                kw[name] = headers[name]
        return kw

    @staticmethod
    def _info_from_head(key: str, r: Mapping[str, Any]) -> ObjectInfo:
        headers = {n: r[n] for n in PRESERVED_HEADERS if r.get(n)}
        return ObjectInfo(
            key=key, size=int(r.get("ContentLength", 0)), etag=r.get("ETag"),
            mtime_ns=_ms(r.get("LastModified")),
            metadata={k.lower(): v for k, v in (r.get("Metadata") or {}).items()},
            content_type=r.get("ContentType"), headers=headers,
            checked_ns=_http_date_ns(r.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                                     .get("date")))

    # -- reads ------------------------------------------------------------

    async def check_bucket(self, prefix: str = "") -> None:
        """Raise StoreError unless the bucket exists and can be listed."""
        await self._call("ListObjectsV2", prefix, functools.partial(
            self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix, MaxKeys=1))

    async def head(self, key: str, *, body_max: int = 0) -> ObjectInfo:
        """``body_max``: ask with a GET of the first ``body_max`` bytes
        instead (the same headers, one request); an object that fits is
        kept for ``get`` of this version (see ``_bodies``)."""
        if body_max > 0 and self._lean_or_none() is not None:
            got = await self._head_by_get(key, body_max)
            if got is not None:
                return got

        fetch, afn = self._lean_pick(
            lambda lean: lean.head(key), lambda lean: lean.ahead(key),
            functools.partial(self.client.head_object, Bucket=self.bucket, Key=key))
        return self._info_from_head(key, await self._call("HeadObject", key, fetch, afn=afn))

    async def _head_by_get(self, key: str, body_max: int) -> ObjectInfo | None:
        """HeadObject's answer from a ranged GET; None to ask with a HEAD
        instead: any error answer (so errors are exactly HEAD's, and an
        object emptied since the listing has no satisfiable range) or one
        the lean path does not decode.  NoSuchKey is the exception: the HEAD
        would answer 404, the NotFound raised here."""
        lean = self._lean_or_none()
        range_header = f"bytes=0-{body_max - 1}"

        def fetch():
            if lean is None:
                return None
            try:
                return lean.get(key, range_header, None)
            except _lean.LeanError as e:
                return _missing(e)
            except _lean.Fallback:
                return None

        async def aget(lean: _lean.LeanRequests):
            try:
                return await lean.aget(key, range_header, None, body_max)
            except _lean.LeanError as e:
                return _missing(e)
            except _lean.Fallback:
                return None

        got = await self._call("GetObject", key, fetch, afn=self._lean_async(aget))
        if got is None:
            return None
        r, data = got
        total = len(data)
        content_range = r.get("ContentRange")
        if content_range:
            m = _CONTENT_RANGE.fullmatch(content_range.strip())
            if m is None or m[3] == "*" or int(m[1]) != 0:
                return None
            total = int(m[3])
        elif r.get("ContentLength") is not None and int(r["ContentLength"]) != len(data):
            return None  # a short body: ask again with a HEAD
        metrics.counter("objectfs_s3_received_bytes_total").inc(len(data))
        if total == len(data) and r.get("ETag"):
            self._bodies[(key, _bare_etag(r["ETag"]))] = data
        return self._info_from_head(key, {**r, "ContentLength": total})

    async def list_page(self, prefix: str, *, delimiter: str | None = "/",
                        token: str | None = None, max_keys: int = 1000,
                        start_after: str | None = None) -> ListPage:
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            kw["Delimiter"] = delimiter
        if token:
            kw["ContinuationToken"] = token
        if start_after:
            kw["StartAfter"] = start_after
        fetch, afn = self._lean_pick(
            lambda lean: lean.list(prefix, delimiter, token, max_keys, start_after),
            (lambda lean: lean.alist(prefix, delimiter, token, max_keys, start_after))
            if max_keys <= ASYNC_LIST_KEYS else None,
            functools.partial(self.client.list_objects_v2, **kw))
        r = await self._call("ListObjectsV2", prefix, fetch, afn=afn)
        objects = [ObjectInfo(key=o["Key"], size=int(o.get("Size", 0)), etag=o.get("ETag"),
                              mtime_ns=_ms(o.get("LastModified")))
                   for o in r.get("Contents", ())]
        prefixes = [p["Prefix"] for p in r.get("CommonPrefixes", ())]
        token = r.get("NextContinuationToken") if r.get("IsTruncated") else None
        return ListPage(objects, prefixes, token)

    async def get(self, key: str, start: int = 0, end: int | None = None, *,
                  etag: str | None = None) -> bytes:
        if end is not None and end <= start:
            return b""
        if etag and self._bodies:
            body = self._bodies.get((key, _bare_etag(etag)))
            metrics.cache("body", hit=body is not None)
            if body is not None:
                return body[start:end]
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            kw["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        if etag:
            kw["IfMatch"] = etag

        def through_boto3():
            r = self.client.get_object(**kw)
            body = r["Body"]
            try:
                return r, body.read()  # IncompleteReadError if short of Content-Length
            finally:
                body.close()

        async def aget(lean: _lean.LeanRequests) -> bytes:
            assert end is not None
            answer = await lean.aget(key, kw.get("Range"), etag, end - start)
            return _checked_body(*answer, key, start, end, etag)

        small = end is not None and end - start <= ASYNC_GET_MAX
        fetch, afn = self._lean_pick(lambda lean: lean.get(key, kw.get("Range"), etag),
                                     aget if small else None, through_boto3)
        try:
            data = await self._call("GetObject", key, lambda: _checked_body(
                *fetch(), key, start, end, etag), afn=afn)
        except StoreError as e:
            if e.code in ("InvalidRange", "416"):
                return b""  # range starts at or past the end of the object
            raise
        metrics.counter("objectfs_s3_received_bytes_total").inc(len(data))
        return data

    # -- writes -----------------------------------------------------------

    async def put(self, key: str, body: bytes | memoryview, *, metadata: Mapping[str, str],
                  content_type: str, headers: Mapping[str, Any] | None = None,
                  if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        body = _blob(body)
        kw = self._common(metadata, content_type, headers)
        kw.update(Bucket=self.bucket, Key=key, Body=body)
        if self.content_md5:
            kw["ContentMD5"] = _md5_b64(body)
        if if_none_match:
            kw["IfNoneMatch"] = "*"
        if if_match:
            kw["IfMatch"] = if_match
        retried: list[StoreError] = []
        try:
            r = await self._call("PutObject", key,
                                 functools.partial(self.client.put_object, **kw),
                                 sent=len(body), retried=retried, afn=self._lean_put(key, kw))
        except PreconditionFailed:
            # an earlier attempt whose answer was lost may have made the
            # object: it is ours if it holds exactly this body
            mine = f'"{hashlib.md5(body).hexdigest()}"'
            if not retried or (await self._etag_or_none(key)) != mine:
                raise
            r = {"ETag": mine}
        log.debug("S3 put %r: %d bytes, ETag %s", key, len(body), r.get("ETag"))
        # mtime_ns 0: Last-Modified is the server's to say; we did not ask
        return ObjectInfo(key=key, size=len(body), etag=r.get("ETag"), mtime_ns=0,
                          metadata=dict(metadata), content_type=content_type,
                          headers=dict(headers or {}))

    def _lean_put(self, key: str, kw: Mapping[str, Any]) -> Callable[[], Awaitable[Any]] | None:
        """PutObject(**kw) from the event loop, for a small body whose
        headers the lean path sends as boto3 does (``_create_headers``,
        then the body's Content-MD5 and the conditions); else None, as with
        ``checksums=when_supported``."""
        body = kw["Body"]
        if len(body) > ASYNC_PUT_MAX or self.settings.checksums != "when_required":
            return None   # (botocore adds a CRC of the body where it is asked to)
        headers = self._lean_headers(kw, _PUT_OWN)
        if headers is None:
            return None
        # A condition answered once must not be sent again unseen: the
        # retry of _call knows it was (``retried``), a silent resend would not.
        conditional = "IfNoneMatch" in kw or "IfMatch" in kw
        return self._lean_async(lambda lean: lean.aput(key, headers, body,
                                                       idempotent=not conditional))

    async def copy(self, src: str, dst: str, *, size: int,
                   metadata: Mapping[str, str] | None = None,
                   content_type: str | None = None,
                   headers: Mapping[str, Any] | None = None,
                   src_etag: str | None = None) -> ObjectInfo:
        if size > MAX_SINGLE_COPY:
            return await self._multipart_copy(src, dst, size=size, metadata=metadata,
                                              content_type=content_type, headers=headers,
                                              src_etag=src_etag)
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": dst,
                              "CopySource": {"Bucket": self.bucket, "Key": src}}
        if metadata is None:
            kw["MetadataDirective"] = "COPY"
        else:
            kw.update(self._common(metadata, content_type or "application/octet-stream", headers))
            kw["MetadataDirective"] = "REPLACE"

        async def copy(etag: str | None) -> dict:
            args = dict(kw, CopySourceIfMatch=etag) if etag else kw
            sent = self._lean_headers(args, _COPY_OWN)
            afn = None if sent is None else self._lean_async(
                lambda lean: lean.acopy(dst, src, sent))
            return await self._call("CopyObject", dst,
                                    functools.partial(self.client.copy_object, **args), afn=afn)

        r = await self._copy_if("CopyObject", src, src_etag, copy)
        res = r.get("CopyObjectResult", {})
        log.debug("S3 copy %r to %r: ETag %s", src, dst, res.get("ETag"))
        return ObjectInfo(key=dst, size=size, etag=res.get("ETag"),
                          mtime_ns=_ms(res.get("LastModified")),
                          metadata=dict(metadata) if metadata is not None else None,
                          content_type=content_type, headers=dict(headers or {}))

    async def _multipart_copy(self, src: str, dst: str, *, size: int, metadata, content_type,
                              headers, src_etag) -> ObjectInfo:
        if metadata is None:
            info = await self.head(src)
            metadata, content_type, headers = info.metadata, info.content_type, info.headers
        part_size = max(COPY_PART_SIZE, -(-size // MAX_PARTS))
        upload_id = await self.create_multipart(
            dst, metadata=metadata or {}, content_type=content_type or "application/octet-stream",
            headers=headers)
        parts: list[Part] = []
        try:
            async def one(n: int, start: int):
                parts.append(await self.upload_part_copy(
                    dst, upload_id, n, src, start, min(start + part_size, size),
                    src_etag=src_etag))

            async with open_nursery() as nursery:
                for n, start in enumerate(range(0, size, part_size), 1):
                    nursery.start_soon(one, n, start)
            done = await self.complete_multipart(dst, upload_id, sorted(parts, key=lambda p: p.number))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abort_multipart(dst, upload_id)
            raise
        return ObjectInfo(key=dst, size=size, etag=done.etag, mtime_ns=0,
                          metadata=dict(metadata or {}), content_type=content_type,
                          headers=dict(headers or {}))

    async def delete(self, key: str) -> None:
        fetch, afn = self._lean_pick(
            lambda lean: lean.delete(key), lambda lean: lean.adelete(key),
            functools.partial(self.client.delete_object, Bucket=self.bucket, Key=key))
        try:
            await self._call("DeleteObject", key, fetch, afn=afn)
        except StoreError as e:
            if e.errno != errno.ENOENT:  # deleting a missing key succeeds
                raise
        log.debug("S3 delete %r", key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        first_error: StoreError | None = None
        plain: list[str] = []
        for key in keys:
            if not _NOT_XML.search(key):
                plain.append(key)
                continue
            try:
                await self.delete(key)
            except StoreError as e:
                first_error = first_error or e
        keys = plain
        for i in range(0, len(keys), MAX_DELETE_BATCH):
            batch = keys[i:i + MAX_DELETE_BATCH]
            log.debug("S3 delete %d keys: %r", len(batch), batch)
            r = await self._call("DeleteObjects", batch[0], functools.partial(
                self.client.delete_objects, Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}))
            for err in r.get("Errors", ()):
                if err.get("Code") in ("NoSuchKey", "NotFound"):
                    continue
                e = store_error(err.get("Code", "Unknown"), err.get("Message", ""),
                                op="DeleteObjects", key=err.get("Key", ""))
                log.warning("S3 DeleteObjects %r failed: %s", e.key, e.code)
                metrics.counter("objectfs_s3_errors_total", op="DeleteObjects",
                                code=e.code).inc()  # a key the batch could not delete
                first_error = first_error or e
        if first_error is not None:
            raise first_error

    async def create_multipart(self, key: str, *, metadata: Mapping[str, str],
                               content_type: str,
                               headers: Mapping[str, Any] | None = None) -> str:
        kw = self._common(metadata, content_type, headers)
        retried: list[StoreError] = []
        sent = self._create_headers(kw)
        afn = None if sent is None else self._lean_async(
            lambda lean: lean.acreate_multipart(key, sent))
        r = await self._call("CreateMultipartUpload", key, functools.partial(
            self.client.create_multipart_upload, Bucket=self.bucket, Key=key, **kw),
            retried=retried, afn=afn)
        upload_id = r["UploadId"]
        self.open_uploads.add((key, upload_id))
        if retried:
            await self._abort_orphans(key, upload_id)
        return upload_id

    def _lean_headers(self, kw: Mapping[str, Any],
                      own: Mapping[str, str | None]) -> dict[str, str] | None:
        """The headers boto3 sends for a call with parameters ``kw``: ``own``
        maps the call's own parameters to their headers (None: part of the
        request line or body), the rest are ``_create_headers``'s; None where
        the lean path would not be sure to send the same."""
        headers = self._create_headers({k: v for k, v in kw.items() if k not in own})
        if headers is not None:
            headers.update((h, kw[n]) for n, h in own.items() if h and n in kw)
        return headers

    def _create_headers(self, kw: Mapping[str, Any]) -> dict[str, str] | None:
        """The headers boto3 sends for CreateMultipartUpload(**kw), the
        mount's request options added (they win, as RequestOptions.install
        makes them), for the lean path to send; None where it would not be
        sure to send the same (an Expires, a value that is not printable
        ASCII): boto3 sends that one."""
        out: dict[str, str] = {}
        for name, value in {**kw, **self.settings.request_options.params()}.items():
            if name == "Metadata":
                out.update(("x-amz-meta-" + k, v) for k, v in value.items())
            elif name in _CREATE_HEADERS:
                out[_CREATE_HEADERS[name]] = value
            else:
                return None
        if all(isinstance(v, str) and _PRINTABLE.fullmatch(v) and _PRINTABLE.fullmatch(k)
               for k, v in out.items()):
            return out
        return None

    async def _abort_orphans(self, key: str, keep: str) -> None:
        """Abort the uploads of ``key`` other than ``keep``: an attempt of
        CreateMultipartUpload whose answer was lost started one, and nobody
        else knows its id.  (Servers do not report reliably when an upload
        began, so another client's upload of the same key that is under way
        at this moment is aborted too; its writer gets an error, not wrong
        data.)"""
        try:
            for other_key, upload_id in await self.list_multipart_uploads(key):
                if other_key == key and upload_id != keep:
                    log.info("aborting multipart upload of %r left by a lost answer", key)
                    await self.abort_multipart(key, upload_id)
        except StoreError as e:
            log.warning("could not clean up multipart uploads of %r: %s", key, e)

    async def _etag_or_none(self, key: str) -> str | None:
        try:
            return (await self.head(key)).etag
        except StoreError:
            return None

    async def upload_part(self, key: str, upload_id: str, number: int,
                          body: bytes | memoryview) -> Part:
        kw: dict[str, Any] = dict(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                  PartNumber=number, Body=_blob(body))
        if self.content_md5:
            kw["ContentMD5"] = _md5_b64(body)
        r = await self._call("UploadPart", key, functools.partial(self.client.upload_part, **kw),
                             sent=len(kw["Body"]))
        return Part(number, r["ETag"])

    async def upload_part_copy(self, key: str, upload_id: str, number: int, src: str,
                               start: int, end: int, *, src_etag: str | None = None) -> Part:
        kw: dict[str, Any] = dict(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                  PartNumber=number,
                                  CopySource={"Bucket": self.bucket, "Key": src},
                                  CopySourceRange=f"bytes={start}-{end - 1}")

        async def copy(etag: str | None) -> dict:
            args = dict(kw, CopySourceIfMatch=etag) if etag else kw
            return await self._call("UploadPartCopy", key,
                                    functools.partial(self.client.upload_part_copy, **args),
                                    afn=self._lean_async(lambda lean: lean.aupload_part_copy(
                                        key, upload_id, number, src, kw["CopySourceRange"],
                                        etag)))

        r = await self._copy_if("UploadPartCopy", src, src_etag, copy)
        return Part(number, r["CopyPartResult"]["ETag"])

    async def _copy_if(self, op: str, src: str, src_etag: str | None, copy) -> dict:
        """``copy(etag)`` (a CopyObject or UploadPartCopy of ``src``) under
        x-amz-copy-source-if-match ``src_etag``.  Swift's s3api refuses that
        condition on an object uploaded in parts even when its ETag matches;
        once a refusal is contradicted by the source's HEAD, such a condition
        is checked by a HEAD before the copy instead, for the rest of the
        mount (a window of one request for another client to slip in)."""
        multipart = bool(src_etag) and "-" in src_etag
        if multipart and not self.copy_if_match_multipart:
            await self._check_source(op, src, src_etag)
            return await copy(None)
        try:
            return await copy(src_etag)
        except PreconditionFailed:
            if not multipart:
                raise
            await self._check_source(op, src, src_etag)
        if self.copy_if_match_multipart:
            self.copy_if_match_multipart = False
            log.warning("this server refuses x-amz-copy-source-if-match on objects "
                        "uploaded in parts though the ETag matches; ObjectFS checks "
                        "their ETag with a HEAD before copying instead")
        return await copy(None)

    async def _check_source(self, op: str, src: str, etag: str) -> None:
        """PreconditionFailed unless ``src``'s HEAD shows ETag ``etag``."""
        now = await self.head(src)
        if _bare_etag(now.etag or "") != _bare_etag(etag):
            raise store_error("PreconditionFailed", "the source object changed", op=op, key=src)

    async def complete_multipart(self, key: str, upload_id: str,
                                 parts: Sequence[Part]) -> ObjectInfo:
        listed = [(p.number, p.etag) for p in parts]
        try:
            r = await self._call("CompleteMultipartUpload", key, functools.partial(
                self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in listed]}),
                afn=self._lean_async(lambda lean: lean.acomplete_multipart(key, upload_id,
                                                                           listed)))
        except StoreError as e:
            # An attempt whose answer was lost may have completed the upload;
            # then the object's ETag is the one these parts make.
            expected = multipart_etag(parts)
            if (e.code != "NoSuchUpload" or expected is None
                    or (await self._etag_or_none(key)) != expected):
                raise
            r = {"ETag": expected}
        self.open_uploads.discard((key, upload_id))
        log.debug("S3 complete %r: ETag %s", key, r.get("ETag"))
        return ObjectInfo(key=key, size=-1, etag=r.get("ETag"), mtime_ns=0)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._call("AbortMultipartUpload", key, functools.partial(
                self.client.abort_multipart_upload, Bucket=self.bucket, Key=key,
                UploadId=upload_id),
                afn=self._lean_async(lambda lean: lean.aabort_multipart(key, upload_id)))
        except StoreError as e:
            if e.code not in ("NoSuchUpload", "404"):
                raise
        self.open_uploads.discard((key, upload_id))

    def abort_open_uploads_now(self, timeout: float) -> list[str]:
        """At a hard stop (the process is about to exit, its uploads cut
        short): abort every multipart upload still open, from threads,
        waiting at most ``timeout`` seconds.  Returns the keys of those
        not aborted (the server refused, or did not answer in time)."""
        from concurrent.futures import ThreadPoolExecutor, wait

        todo = sorted(self.open_uploads)
        if not todo:
            return []
        pool = ThreadPoolExecutor(max_workers=min(8, len(todo)))
        futures = {pool.submit(self.client.abort_multipart_upload, Bucket=self.bucket,
                               Key=key, UploadId=upload_id): key for key, upload_id in todo}
        done, _ = wait(futures, timeout=timeout)
        pool.shutdown(wait=False, cancel_futures=True)
        return sorted(key for f, key in futures.items()
                      if f not in done or f.exception() is not None)

    async def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        r = await self._call("ListMultipartUploads", prefix, functools.partial(
            self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=prefix))
        return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", ())]


    async def pending_uploads(self, prefix: str = "") -> list[tuple[str, str, Any]]:
        """(key, upload id, initiated datetime or None) of every unfinished
        multipart upload under ``prefix``, all pages."""
        out: list[tuple[str, str, Any]] = []
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            r = await self._call("ListMultipartUploads", prefix, functools.partial(
                self.client.list_multipart_uploads, **kw))
            out += [(u["Key"], u["UploadId"], u.get("Initiated")) for u in r.get("Uploads", ())]
            if not r.get("IsTruncated"):
                return out
            kw.update(KeyMarker=r.get("NextKeyMarker", ""),
                      UploadIdMarker=r.get("NextUploadIdMarker", ""))
