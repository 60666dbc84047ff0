"""What the data path needs from the mount: the store, limits, and a nursery."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import trio

from ..errors import StoreError
from ..store.base import ObjectStore
from .budget import ByteBudget
from .coalesce import InFlight

if TYPE_CHECKING:
    from ..tier.tier import Tier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectHeaders:
    """Everything an upload writes besides the bytes."""

    metadata: Mapping[str, str]
    content_type: str
    headers: Mapping[str, Any]


class DataContext:
    """Shared by every open file of one mount.

    ``nursery`` runs background part uploads and prefetches; it belongs to
    the mount's lifecycle, so nothing outlives the mount unaccounted for.
    ``write_budget`` bounds write-buffer memory (a streaming writer moves
    to staging when it is spent, a staged upload waits for it: see
    ``acquire_for_upload``); ``read_budget`` bounds prefetch memory
    (prefetch shrinks when it is spent; a read never waits for it).
    ``upload_slots`` bounds parts in flight for the whole mount.
    """

    def __init__(self, store: ObjectStore, nursery: trio.Nursery, *, part_size: int,
                 upload_concurrency: int, write_buffer_memory: int, read_part_size: int,
                 prefetch_max: int, read_memory: int, staging_dir: str):
        self.store = store
        self.nursery = nursery
        self.part_size = part_size
        self.read_part_size = read_part_size
        self.prefetch_max = prefetch_max
        self.staging_dir = staging_dir
        self.write_budget = ByteBudget(write_buffer_memory)
        self.read_budget = ByteBudget(read_memory)
        self.upload_slots = trio.CapacityLimiter(upload_concurrency)
        # The whole staged object is uploaded in one PUT up to this size;
        # above it, as a multipart upload whose untouched parts are copied
        # server-side.
        self.single_put_max = part_size
        # False once the server refused an UploadPartCopy for a file up to
        # single_put_max (see upload_staged): those are sent whole then.
        self.small_copies = True
        # The PutObject conditions the server refused ("If-Match",
        # "If-None-Match"; see upload.put_conditional): each one alone, as
        # servers added them years apart
        self.refused_conditions: set[str] = set()
        # write-back (objectfs.writeback): files are staged whole at close,
        # never streamed into a multipart upload
        self.writeback = False
        # The local tier (None: disabled) and the size up to which a file is
        # fetched whole on its first read (see prefetch.py).
        self.tier: Tier | None = None
        self.whole_file_max = 0
        # ... and the size up to which a file read at random is fetched whole
        # into the tier in the background (see prefetch.py)
        self.fill_max = 0
        # ranged GETs under way, shared by readers of the same object version
        self.inflight = InFlight()
        # open files whose sequential writes stream from memory (FileData)
        self.streaming: weakref.WeakSet = weakref.WeakSet()
        # (key, upload id) of multipart uploads of failed writes whose abort
        # failed too: tried again later (abort_left), at the latest at unmount
        self.unaborted: set[tuple[str, str]] = set()

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort the multipart upload of a failed write.  Never raises a
        StoreError: if the server refuses, the upload is remembered and
        ``abort_left`` tries again."""
        try:
            await self.store.abort_multipart(key, upload_id)
        except StoreError as e:
            log.error("could not abort the multipart upload of %r (%s); trying again later",
                      key, e)
            self.unaborted.add((key, upload_id))

    async def abort_left(self, last: bool = False) -> None:
        """Try again the aborts that failed; ``last`` (unmount): say how to
        remove what the server still refuses to abort."""
        for key, upload_id in sorted(self.unaborted):
            try:
                await self.store.abort_multipart(key, upload_id)
            except StoreError as e:
                if last:
                    log.error("the multipart upload of %r is left on the server (%s); "
                              "`objectfs uploads s3://BUCKET --abort` removes it", key, e)
                continue
            self.unaborted.discard((key, upload_id))
            log.info("aborted the multipart upload of %r that had failed to abort", key)

    async def acquire_for_upload(self, n: int) -> None:
        """Write budget for ``n`` bytes of a staged file about to be sent.

        If the budget is spent, the part buffers of streams nobody is
        writing to right now are moved to the staging disk first: their
        writers may be waiting for this very upload (one program writing
        many files in turn, then closing them one by one), so waiting for
        them to free the budget could deadlock.  Active streams free it by
        themselves: they never wait for the budget while others do.
        """
        if self.write_budget.try_acquire(n):
            return
        spilled = [await f.spill() for f in list(self.streaming)]
        if not all(spilled):
            # a buffer that could not move (staging disk full) frees its
            # budget only when its writer goes on, which may be after this
            # very upload: go over the budget rather than wait for ever
            self.write_budget.take(n)
            return
        await self.write_budget.acquire(n)
