"""The object-store interface the filesystem core is written against.

Two implementations: ``s3.S3Store`` (boto3, the only module that imports it
or uses threads) and ``memory.MemoryStore`` (a faithful in-process model for
unit tests).  All methods are trio coroutines.  Errors are ``StoreError``
subclasses from ``objectfs.errors``; a missing key is ``ObjectNotFound``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# S3 limits (AWS documentation "Amazon S3 multipart upload limits").
MIN_PART_SIZE = 5 * MiB          # every part but the last
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB
MAX_SINGLE_COPY = 5 * GiB        # CopyObject limit; above it use UploadPartCopy
MAX_KEY_BYTES = 1024
MAX_DELETE_BATCH = 1000          # DeleteObjects limit
# Bodies of small objects fetched by ``head(body_max=...)`` that a store
# keeps for the read that usually follows (``ls -l`` then reading the files)
BODY_CACHE_BYTES = 16 * MiB

# Last-Modified has one-second resolution (rounded either way by servers):
# allow as much again, so an object's state seen this long after its
# Last-Modified is one no later change can share.
LAST_MODIFIED_SLACK_NS = 2_000_000_000

# System headers a metadata-replacing copy would otherwise drop (S3 CopyObject
# with MetadataDirective=REPLACE resets them), as boto3 parameter names.
PRESERVED_HEADERS = ("CacheControl", "ContentDisposition", "ContentEncoding",
                     "ContentLanguage", "Expires", "StorageClass")


def bare_etag(etag: str) -> str:
    """An ETag without W/ and quotes: listings and headers of some servers
    differ in quoting."""
    return etag.removeprefix("W/").strip('"')


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the store told us about one object.

    ``metadata`` is None when it is unknown (listings carry none), else the
    user metadata with lower-case keys and no ``x-amz-meta-`` prefix.
    ``headers`` holds the PRESERVED_HEADERS that were present.
    ``checked_ns`` is the server's time of a HEAD's answer (its ``Date``),
    0 when unknown (listings, writes).  ``listed_etag``: the ETag listings
    show for this version, when a HEAD's ETag is another (Swift lists an
    object copied from a multipart one by the MD5 of its bytes; see
    Namespace.apply_info).
    """

    key: str
    size: int
    etag: str | None
    mtime_ns: int
    metadata: Mapping[str, str] | None = None
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    checked_ns: int = 0
    listed_etag: str | None = None


@dataclass(slots=True)
class ListPage:
    objects: list[ObjectInfo]
    prefixes: list[str]
    next_token: str | None


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    etag: str


class ObjectStore(Protocol):
    bucket: str

    async def head(self, key: str, *, body_max: int = 0) -> ObjectInfo:
        """Metadata of ``key``; ObjectNotFound if missing.  ``body_max``: an
        object up to this size may be fetched whole with the same request
        and kept for ``get`` of that version (a hint; stores may ignore it)."""

    async def list_page(self, prefix: str, *, delimiter: str | None = "/",
                        token: str | None = None, max_keys: int = 1000,
                        start_after: str | None = None) -> ListPage:
        """One ListObjectsV2 page under ``prefix``; ``start_after``: only keys
        (and common prefixes) after this one, in S3's (UTF-8 byte) order."""

    async def get(self, key: str, start: int = 0, end: int | None = None, *,
                  etag: str | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (to the end if ``end`` is None).

        With ``etag``, the read is pinned to that version: PreconditionFailed
        (ESTALE) if the object changed.  Returns exactly the bytes that exist
        in the range (fewer at the end of the object), never a truncated body:
        a short body is retried and then reported as IOFailure.  A large body
        may come as a bytearray that is read into again once nothing refers
        to it (see buffers.py): callers never change it.
        """

    async def put(self, key: str, body: bytes | memoryview, *, metadata: Mapping[str, str],
                  content_type: str, headers: Mapping[str, str] | None = None,
                  if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """Create or replace ``key`` with ``body``; returns the new object's info.

        ``if_none_match``: only if ``key`` does not exist; ``if_match``: only
        if its ETag is this one.  Otherwise PreconditionFailed (on servers
        that support conditional writes)."""

    async def copy(self, src: str, dst: str, *, size: int,
                   metadata: Mapping[str, str] | None = None,
                   content_type: str | None = None,
                   headers: Mapping[str, str] | None = None,
                   src_etag: str | None = None) -> ObjectInfo:
        """Server-side copy.  ``metadata`` None keeps the source's metadata;
        otherwise it replaces it (with ``content_type`` and ``headers``).
        Objects over 5 GiB are copied part by part.  Returns the new info."""

    async def delete(self, key: str) -> None:
        """Delete ``key``.  Deleting a missing key succeeds."""

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete keys in batches of at most 1000.  Missing keys succeed;
        any other failure raises after the whole batch was attempted."""

    async def create_multipart(self, key: str, *, metadata: Mapping[str, str],
                               content_type: str,
                               headers: Mapping[str, str] | None = None) -> str:
        """Start a multipart upload; returns its upload id."""

    async def upload_part(self, key: str, upload_id: str, number: int,
                          body: bytes | memoryview) -> Part:
        ...

    async def upload_part_copy(self, key: str, upload_id: str, number: int, src: str,
                               start: int, end: int, *, src_etag: str | None = None) -> Part:
        """Copy bytes ``[start, end)`` of ``src`` as part ``number``."""

    async def complete_multipart(self, key: str, upload_id: str,
                                 parts: Sequence[Part]) -> ObjectInfo:
        ...

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort an upload.  Aborting an unknown upload succeeds."""

    async def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """(key, upload id) of the uploads in progress under ``prefix``."""

    def release_idle(self) -> None:
        """Give back memory kept for requests to come that has not been used
        for a while (called about once a second by a mount)."""

    async def aclose(self) -> None:
        """Close kept connections: the mount is ending (after its last
        request; the store is not used again)."""


def etag_of_parts(md5s: Sequence[bytes]) -> str:
    """The (quoted) ETag S3 gives an object completed from parts whose MD5
    digests are ``md5s``: the MD5 of the digests, then ``-`` and their count."""
    return f'"{hashlib.md5(b"".join(md5s)).hexdigest()}-{len(md5s)}"'
