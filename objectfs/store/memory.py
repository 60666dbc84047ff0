"""An in-memory object store with S3's semantics, for unit tests of the core.

It enforces what the real service enforces and the core must respect: the
5 MiB minimum for every multipart part but the last, part numbers 1..10000,
If-Match / If-None-Match preconditions, ListObjectsV2 delimiter grouping and
paging, and ETags that change whenever the content does.  ``calls`` counts
requests by operation so tests can assert, for instance, that a cached read
made no GET.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import trio

from ..errors import StoreError, store_error
from .base import MAX_PARTS, MIN_PART_SIZE, ListPage, ObjectInfo, Part, etag_of_parts


@dataclass
class _Obj:
    data: bytes
    metadata: dict[str, str]
    content_type: str
    headers: dict[str, str]
    etag: str
    mtime_ns: int


@dataclass
class _Upload:
    key: str
    metadata: dict[str, str]
    content_type: str
    headers: dict[str, str]
    parts: dict[int, tuple[str, bytes]] = field(default_factory=dict)


class MemoryStore:
    def __init__(self, bucket: str = "bucket", min_part_size: int = MIN_PART_SIZE):
        self.bucket = bucket
        self.objects: dict[str, _Obj] = {}
        self.uploads: dict[str, _Upload] = {}
        self.calls: Counter[str] = Counter()
        self.min_part_size = min_part_size
        self._n = 0

    def _count(self, op: str) -> None:
        self.calls[op] += 1

    def _etag(self, data: bytes) -> str:
        return '"' + hashlib.md5(data).hexdigest() + '"'

    def _info(self, key: str, o: _Obj, with_meta: bool = True,
              head: bool = False) -> ObjectInfo:
        return ObjectInfo(key=key, size=len(o.data), etag=o.etag, mtime_ns=o.mtime_ns,
                          metadata=dict(o.metadata) if with_meta else None,
                          content_type=o.content_type if with_meta else None,
                          headers=dict(o.headers) if with_meta else {},
                          checked_ns=time.time_ns() if head else 0)

    def _get(self, op: str, key: str) -> _Obj:
        try:
            return self.objects[key]
        except KeyError:
            raise store_error("NoSuchKey", op=op, key=key) from None

    def _store(self, key: str, data: bytes, metadata, content_type, headers) -> _Obj:
        o = _Obj(data, dict(metadata), content_type, dict(headers or {}), self._etag(data),
                 time.time_ns())
        self.objects[key] = o
        return o

    # test helpers -----------------------------------------------------------

    def put_sync(self, key: str, data: bytes = b"", metadata: Mapping[str, str] | None = None,
                 content_type: str = "binary/octet-stream") -> None:
        """Create an object as another S3 client would (no request counted)."""
        self._store(key, data, metadata or {}, content_type, None)

    # ObjectStore --------------------------------------------------------------

    async def head(self, key: str, *, body_max: int = 0) -> ObjectInfo:
        self._count("HeadObject")
        await trio.lowlevel.checkpoint()
        return self._info(key, self._get("HeadObject", key), head=True)

    async def list_page(self, prefix: str, *, delimiter: str | None = "/",
                        token: str | None = None, max_keys: int = 1000,
                        start_after: str | None = None) -> ListPage:
        self._count("ListObjectsV2")
        await trio.lowlevel.checkpoint()
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        after = token or start_after
        # entries (keys and common prefixes) after ``after``, one more than
        # a page to know whether there are more; only those are built
        entries: list[tuple[str, ObjectInfo | None]] = []
        i = bisect.bisect_right(keys, after) if after else 0
        while i < len(keys) and len(entries) <= max_keys:
            key = keys[i]
            i += 1
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                p = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                if (not after or p > after) and (not entries or entries[-1][0] != p):
                    entries.append((p, None))
                continue
            entries.append((key, self._info(key, self.objects[key], with_meta=False)))
        page = entries[:max_keys]
        more = len(entries) > max_keys
        return ListPage([o for _, o in page if o is not None],
                        [k for k, o in page if o is None],
                        page[-1][0] if more and page else None)

    async def get(self, key: str, start: int = 0, end: int | None = None, *,
                  etag: str | None = None) -> bytes:
        self._count("GetObject")
        await trio.lowlevel.checkpoint()
        o = self._get("GetObject", key)
        if etag is not None and etag != o.etag:
            raise store_error("PreconditionFailed", op="GetObject", key=key)
        if end is not None and end <= start:
            return b""
        return o.data[start:end]

    async def put(self, key: str, body, *, metadata, content_type, headers=None,
                  if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        self._count("PutObject")
        await trio.lowlevel.checkpoint()
        if if_none_match and key in self.objects:
            raise store_error("PreconditionFailed", op="PutObject", key=key)
        if if_match is not None:
            if key not in self.objects:
                raise store_error("NoSuchKey", op="PutObject", key=key)
            if self._info(key, self.objects[key]).etag != if_match:
                raise store_error("PreconditionFailed", op="PutObject", key=key)
        o = self._store(key, bytes(body), metadata, content_type, headers)
        return self._info(key, o)

    async def copy(self, src: str, dst: str, *, size: int, metadata=None, content_type=None,
                   headers=None, src_etag: str | None = None) -> ObjectInfo:
        self._count("CopyObject")
        await trio.lowlevel.checkpoint()
        s = self._get("CopyObject", src)
        if src_etag is not None and src_etag != s.etag:
            raise store_error("PreconditionFailed", op="CopyObject", key=src)
        if metadata is None:
            if src == dst:
                raise StoreError("InvalidRequest", "copy onto itself without changes",
                                 op="CopyObject", key=dst)
            o = self._store(dst, s.data, s.metadata, s.content_type, s.headers)
        else:
            o = self._store(dst, s.data, metadata, content_type or "binary/octet-stream",
                            headers)
        return self._info(dst, o)

    async def delete(self, key: str) -> None:
        self._count("DeleteObject")
        await trio.lowlevel.checkpoint()
        self.objects.pop(key, None)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self._count("DeleteObjects")
        await trio.lowlevel.checkpoint()
        for k in keys:
            self.objects.pop(k, None)

    async def create_multipart(self, key: str, *, metadata, content_type, headers=None) -> str:
        self._count("CreateMultipartUpload")
        await trio.lowlevel.checkpoint()
        self._n += 1
        uid = f"upload-{self._n}"
        self.uploads[uid] = _Upload(key, dict(metadata), content_type, dict(headers or {}))
        return uid

    def _upload(self, op: str, key: str, upload_id: str) -> _Upload:
        u = self.uploads.get(upload_id)
        if u is None or u.key != key:
            raise StoreError("NoSuchUpload", op=op, key=key)
        return u

    async def upload_part(self, key: str, upload_id: str, number: int, body) -> Part:
        self._count("UploadPart")
        await trio.lowlevel.checkpoint()
        u = self._upload("UploadPart", key, upload_id)
        if not 1 <= number <= MAX_PARTS:
            raise StoreError("InvalidArgument", "part number", op="UploadPart", key=key)
        data = bytes(body)
        etag = self._etag(data)
        u.parts[number] = (etag, data)
        return Part(number, etag)

    async def upload_part_copy(self, key: str, upload_id: str, number: int, src: str,
                               start: int, end: int, *, src_etag=None) -> Part:
        self._count("UploadPartCopy")
        await trio.lowlevel.checkpoint()
        u = self._upload("UploadPartCopy", key, upload_id)
        s = self._get("UploadPartCopy", src)
        if src_etag is not None and src_etag != s.etag:
            raise store_error("PreconditionFailed", op="UploadPartCopy", key=src)
        if start < 0 or end > len(s.data) or end <= start:
            raise store_error("InvalidRange", op="UploadPartCopy", key=src)
        data = s.data[start:end]
        etag = self._etag(data)
        u.parts[number] = (etag, data)
        return Part(number, etag)

    async def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Part]) -> ObjectInfo:
        self._count("CompleteMultipartUpload")
        await trio.lowlevel.checkpoint()
        u = self._upload("CompleteMultipartUpload", key, upload_id)
        numbers = [p.number for p in parts]
        if not parts or numbers != sorted(set(numbers)):
            raise StoreError("InvalidPartOrder", op="CompleteMultipartUpload", key=key)
        chunks = []
        for i, p in enumerate(parts):
            etag, data = u.parts.get(p.number, (None, b""))
            if etag != p.etag:
                raise StoreError("InvalidPart", op="CompleteMultipartUpload", key=key)
            if i < len(parts) - 1 and len(data) < self.min_part_size:
                raise StoreError("EntityTooSmall", op="CompleteMultipartUpload", key=key)
            chunks.append(data)
        del self.uploads[upload_id]
        data = b"".join(chunks)
        o = self._store(key, data, u.metadata, u.content_type, u.headers)
        o.etag = etag_of_parts([bytes.fromhex(p.etag.strip('"')) for p in parts])
        return self._info(key, o)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._count("AbortMultipartUpload")
        await trio.lowlevel.checkpoint()
        self.uploads.pop(upload_id, None)

    async def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        self._count("ListMultipartUploads")
        await trio.lowlevel.checkpoint()
        return [(u.key, uid) for uid, u in self.uploads.items() if u.key.startswith(prefix)]

    def release_idle(self) -> None:
        pass  # nothing kept

    async def aclose(self) -> None:
        pass  # no connections
