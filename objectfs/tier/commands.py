"""The daemon's side of ``objectfs cache ...``: control-socket handlers.

Paths arrive relative to the mount root.  A directory stands for every key
under it: pinning a directory pins files cached there later too.  ``warm``
works on one file and one chunk per request, so the CLI can show progress
and an interrupted warm stops after the chunk in flight (whatever was
stored stays stored and valid).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ..errors import InvalidArgument, IsADirectory, NotSupported

if TYPE_CHECKING:
    from ..filesystem import Filesystem

# Bytes warmed per request: big enough that requests cost nothing, small
# enough that progress moves and Ctrl-C is prompt.
WARM_CHUNK = 32 << 20


def handlers(fs: "Filesystem") -> dict:
    def tier():
        if fs.tier is None:
            why = ("cache_size=0" if not fs.cfg.cache_size
                   else "its directory could not be used at mount: see the daemon's log")
            raise NotSupported(f"the local tier is disabled on this mount ({why})")
        return fs.tier

    async def target(req: dict) -> tuple[str, bool]:
        """(key, is a prefix) of the request's path."""
        node = await fs.resolve(str(req.get("path", "")))
        return fs.table.key(node), node.is_dir

    async def stats(req: dict) -> dict:
        t = tier()
        s = await trio.to_thread.run_sync(t.stats)
        s["dir"] = t.store.root
        s["s3_requests"] = dict(getattr(fs.store, "stats", {}))
        return s

    async def warm(req: dict) -> dict:
        t = tier()
        node = await fs.resolve(str(req.get("path", "")))
        if node.is_dir:
            raise IsADirectory("warm files one by one")
        if not node.is_reg:
            raise InvalidArgument("not a regular file")
        remote = node.remote
        if node.local or remote is None or (node.data is not None and node.data.dirty):
            return {"size": node.attr.size, "next": node.attr.size, "fetched": 0,
                    "skipped": "not in S3 yet"}
        key = fs.table.key(node)
        ref = t.ref(key, remote.etag, remote.size)
        if ref is None:
            return {"size": remote.size, "next": remote.size, "fetched": 0}
        start = max(0, int(req.get("offset", 0)))
        end = min(ref.size, start + WARM_CHUNK)
        fetched = 0
        if start < end:
            async def get(s: int, e: int) -> bytes:
                return await fs.store.get(key, s, e, etag=ref.etag)
            fetched = await t.warm(ref, start, end, get)
        # what the tier holds of the chunk now (blocks refused for want of
        # room beside pinned data, or bigger than the tier, are not)
        cached = await trio.to_thread.run_sync(t.store.cached_bytes, ref, start, end)
        return {"size": ref.size, "next": end, "fetched": fetched, "cached": cached}

    async def pin(req: dict) -> dict:
        t = tier()
        key, prefix = await target(req)
        n = await trio.to_thread.run_sync(t.store.pin, t.ns, key, prefix)
        return {"blocks": n}

    async def unpin(req: dict) -> dict:
        t = tier()
        key, prefix = await target(req)
        return {"pins": await trio.to_thread.run_sync(t.store.unpin, t.ns, key, prefix)}

    async def evict(req: dict) -> dict:
        t = tier()
        key, prefix = await target(req)
        blocks, nbytes, kept = await trio.to_thread.run_sync(t.store.evict, t.ns, key, prefix)
        return {"blocks": blocks, "bytes": nbytes, "pinned": kept}

    return {"cache_stats": stats, "cache_warm": warm, "cache_pin": pin,
            "cache_unpin": unpin, "cache_evict": evict}
