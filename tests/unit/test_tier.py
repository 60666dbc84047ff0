"""The local tier's store: block format, byte bound, pins, integrity, persistence.

The state machine drives random puts, reads, pins, unpins, evictions,
corruptions and reopenings of a small store against a model of what was
stored, and checks after every step that the bytes on disk and in the index
never exceed the limit, that pinned blocks are never evicted, and that a
read returns exactly what was stored or a miss.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import struct
import tempfile

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from objectfs.errors import FsError, ObjectNotFound, StoreUnavailable
from objectfs.store.memory import MemoryStore
from objectfs.tier import blockfile
from objectfs.tier import tier as tier_module
from objectfs.tier.store import BLOCK_SIZE, DISK_UNIT, ObjectRef, TierStore
from objectfs.tier.tier import FILL_CONCURRENCY, FILL_STEP, PinPolicy, Tier

NS = "http://test|bucket"
MiB = 1 << 20


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def disk_usage(root: str) -> int:
    total = 0
    for top, _, names in os.walk(os.path.join(root, "data")):
        for n in names:
            st = os.stat(os.path.join(top, n))
            total += max(-(-st.st_size // DISK_UNIT) * DISK_UNIT, st.st_blocks * 512)
    return total


# -- block files ---------------------------------------------------------------------

@pytest.mark.parametrize("crc_flag", [blockfile.FLAG_CRC32C, 0], ids=["crc32c", "zlib-crc32"])
@pytest.mark.parametrize("compress", [False, True])
def test_block_round_trip_and_every_corruption_is_detected(compress, crc_flag, monkeypatch):
    import zstandard

    monkeypatch.setattr(blockfile, "WRITE_FLAGS", crc_flag)
    ident = bytes(24)
    data = b"hello world " * 500 if compress else payload(1, 5000)
    blob = b"".join(bytes(p) for p in blockfile.encode(
        ident, data, zstandard.ZstdCompressor() if compress else None))
    assert blockfile.decode(ident, blob) == data
    if compress:
        assert len(blob) < len(data)
    for pos in range(0, len(blob), max(1, len(blob) // 97)):
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises(blockfile.Corrupt):
            blockfile.decode(ident, bytes(bad))
    for cut in (0, 5, len(blob) - 1):
        with pytest.raises(blockfile.Corrupt):
            blockfile.decode(ident, blob[:cut])
    with pytest.raises(blockfile.Corrupt):
        blockfile.decode(ident, blob + b"x")
    with pytest.raises(blockfile.Corrupt):  # the file of another block
        blockfile.decode(bytes(23) + b"\1", blob)


def test_new_blocks_carry_a_crc32c_and_either_checksum_kind_is_checked():
    import crc32c

    # the test machines have the CPU instruction; CRC-32C of "123456789"
    # is the standard check value 0xE3069283 (Castagnoli, not zlib's)
    assert crc32c.hardware_based and crc32c.crc32c(b"123456789") == 0xE3069283
    assert blockfile.WRITE_FLAGS == blockfile.FLAG_CRC32C
    data = payload(4, 3000)
    header, stored = blockfile.encode(bytes(24), data)
    flags, raw_len, stored_len, crc = blockfile.header(header)
    assert flags == blockfile.FLAG_CRC32C and raw_len == stored_len == len(data)
    head = bytes(24) + struct.pack("<BII", flags, raw_len, stored_len)
    assert crc == crc32c.crc32c(data, crc32c.crc32c(head))
    blockfile.check_plain(bytes(24), header, data)
    # the same bytes claiming the other checksum kind are refused
    other = blockfile.HEADER.pack(blockfile.MAGIC, 0, raw_len, stored_len, crc)
    with pytest.raises(blockfile.Corrupt):
        blockfile.check_plain(bytes(24), other, data)
    with pytest.raises(blockfile.Corrupt):
        blockfile.decode(bytes(24), other + data)


def test_blocks_written_with_zlib_crc32_are_still_served(root, monkeypatch):
    # a cache directory filled before CRC-32C was used survives the upgrade
    monkeypatch.setattr(blockfile, "WRITE_FLAGS", 0)
    s = TierStore(root, 16 * MiB)
    ref = ObjectRef(NS, "old", '"e1"', BLOCK_SIZE + 10)
    data = payload(5, ref.size)
    assert s.put(ref, [(0, data[:BLOCK_SIZE]), (1, data[BLOCK_SIZE:])]) == 2
    s.close()
    with open(s.path(ref.oid, 0), "rb") as f:
        assert blockfile.header(f.read(blockfile.HEADER.size))[0] == 0
    monkeypatch.setattr(blockfile, "WRITE_FLAGS", blockfile.FLAG_CRC32C)
    s = TierStore(root, 16 * MiB)
    assert s.load(ref, 0) == data[:BLOCK_SIZE]
    buf = bytearray(10)
    assert s.load_into(ref, 1, memoryview(buf))
    assert bytes(buf) == data[BLOCK_SIZE:]
    s.close()


def test_incompressible_blocks_are_stored_plain():
    import zstandard

    data = payload(2, 4096)
    header, stored = blockfile.encode(bytes(24), data, zstandard.ZstdCompressor())
    assert bytes(stored) == data


# -- the store -------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "cache")


def test_a_corrupt_or_truncated_block_is_dropped_and_never_served(root):
    s = TierStore(root, 16 * MiB)
    ref = ObjectRef(NS, "k", '"e1"', BLOCK_SIZE + 10)
    data = payload(3, ref.size)
    assert s.put(ref, [(0, data[:BLOCK_SIZE]), (1, data[BLOCK_SIZE:])]) == 2
    assert s.load(ref, 0) == data[:BLOCK_SIZE]
    p = s.path(ref.oid, 0)
    with open(p, "r+b") as f:
        f.seek(1000)
        f.write(b"\0\1\2")
    assert s.load(ref, 0) is None
    assert not os.path.exists(p) and s.corrupt == 1
    os.truncate(s.path(ref.oid, 1), 5)
    assert s.load(ref, 1) is None
    assert s.usage() == 0
    assert s.put(ref, [(0, data[:BLOCK_SIZE])]) == 1  # the refetch is cached again
    assert s.load(ref, 0) == data[:BLOCK_SIZE]
    s.close()


def test_a_block_checked_once_is_read_in_part_without_a_second_check(root, monkeypatch):
    from objectfs.tier import store as store_mod

    checks = []
    check = store_mod.check_plain
    monkeypatch.setattr(store_mod, "check_plain", lambda *a: (checks.append(1), check(*a)))
    ref = ObjectRef(NS, "k", '"e1"', 2 * BLOCK_SIZE)
    data = payload(4, ref.size)
    s = TierStore(root, 16 * MiB)
    assert s.put(ref, [(0, data[:BLOCK_SIZE]), (1, data[BLOCK_SIZE:])]) == 2
    assert s.load_range(ref, 0, 10, 4106) == data[10:4106]
    assert checks == []  # written by this process: known good
    s.close()

    s = TierStore(root, 16 * MiB)  # a new process checks a block whole once
    assert s.load_range(ref, 0, 10, 20) == data[10:20]
    assert s.load_range(ref, 0, 5000, 9096) == data[5000:9096]
    assert s.load_range(ref, 0, BLOCK_SIZE - 1, BLOCK_SIZE) == data[BLOCK_SIZE - 1:BLOCK_SIZE]
    assert len(checks) == 1
    p = s.path(ref.oid, 1)
    with open(p, "r+b") as f:  # a block not checked yet is checked, corrupt or not
        f.seek(BLOCK_SIZE // 2)
        f.write(b"\xff\xfe")
    assert s.load_range(ref, 1, 0, 10) is None
    assert not os.path.exists(p) and s.corrupt == 1
    s.drop(ref.oid, 0)  # gone from disk: a miss, never stale bytes
    assert s.load_range(ref, 0, 10, 20) is None
    assert s.put(ref, [(0, data[:BLOCK_SIZE])]) == 1
    os.truncate(s.path(ref.oid, 0), 100)  # cut short behind our back: checked again
    assert s.load_range(ref, 0, 200, 300) is None
    assert s.usage() == 0
    s.close()


def evict_pages(path: str) -> None:
    """Take a file's bytes out of the page cache (written back first: dirty
    pages cannot be dropped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_checked_block_in_the_page_cache_is_read_at_once_and_nothing_else_is(
        root, monkeypatch):
    """read_now runs on the event loop: it answers only for a block this
    process has checked or written whose bytes the kernel holds in memory,
    and says None (never waits, never guesses) for anything else."""
    ref = ObjectRef(NS, "k", '"e1"', 2 * BLOCK_SIZE)
    data = payload(14, ref.size)
    s = TierStore(root, 16 * MiB)
    assert s.put(ref, [(0, data[:BLOCK_SIZE]), (1, data[BLOCK_SIZE:])]) == 2
    assert s.read_now(ref, 0, 10, 4106) == data[10:4106]  # written here: known good
    assert s.read_now(ref, 1, BLOCK_SIZE - 7, BLOCK_SIZE) == data[-7:]
    assert s.read_now(ref, 2, 0, 10) is None  # no such block
    s.close()

    s = TierStore(root, 16 * MiB)  # another process: nothing checked yet
    assert s.read_now(ref, 0, 10, 20) is None
    assert s.load_range(ref, 0, 10, 20) == data[10:20]  # checks block 0 whole
    assert s.read_now(ref, 0, 5000, 9096) == data[5000:9096]
    assert s.read_now(ref, 1, 0, 10) is None
    evict_pages(s.path(ref.oid, 0))  # on disk only: a read would wait for the disk
    assert s.read_now(ref, 0, 5000, 9096) is None
    assert s.load_range(ref, 0, 5000, 9096) == data[5000:9096]  # the thread's way
    assert s.read_now(ref, 0, 5000, 9096) == data[5000:9096]  # in the page cache again
    os.truncate(s.path(ref.oid, 0), 100)  # cut short behind our back
    assert s.read_now(ref, 0, 200, 300) is None
    assert s.load_range(ref, 0, 200, 300) is None  # short: checked whole, dropped
    assert s.read_now(ref, 0, 0, 10) is None

    assert s.load_range(ref, 1, 0, 10) == data[BLOCK_SIZE:BLOCK_SIZE + 10]
    s.drop(ref.oid, 1)
    assert s.read_now(ref, 1, 0, 10) is None  # gone: a miss, never stale bytes
    assert s.put(ref, [(1, data[BLOCK_SIZE:])]) == 1

    calls = []
    preadv = os.preadv

    def unsupported(fd, buffers, offset, flags=0):
        if not flags & os.RWF_NOWAIT:
            return preadv(fd, buffers, offset, flags)
        calls.append(offset)
        raise OSError(errno.EOPNOTSUPP, "not supported")

    # another daemon sharing the directory, with compression, evicts a block
    # this one has checked and stores it again: never read as if plain
    cref = ObjectRef(NS, "text", '"e2"', BLOCK_SIZE)
    text = bytes(random.Random(5).choices(b"abcdefghijklmnop", k=BLOCK_SIZE))  # halves
    assert s.put(cref, [(0, text)]) == 1
    assert s.read_now(cref, 0, 100, 200) == text[100:200]
    other = TierStore(root, 16 * MiB, compress=True)
    other.drop(cref.oid, 0)
    assert other.put(cref, [(0, text)]) == 1
    with open(s.path(cref.oid, 0), "rb") as f:
        assert blockfile.header(f.read(blockfile.HEADER.size))[0] & blockfile.FLAG_ZSTD
    assert s.read_now(cref, 0, 100, 200) is None
    assert s.load_range(cref, 0, 100, 200) == text[100:200]  # decoded whole
    assert s.read_now(cref, 0, 100, 200) is None
    other.close()

    monkeypatch.setattr(os, "preadv", unsupported)
    assert s.read_now(ref, 1, 0, 10) is None  # a file system without RWF_NOWAIT
    assert s.read_now(ref, 1, 0, 10) is None
    assert len(calls) == 1, "asked once, then never again"
    assert s.load_range(ref, 1, 0, 10) == data[BLOCK_SIZE:BLOCK_SIZE + 10]
    s.close()


def test_a_miss_allocates_no_block_buffer(root):
    """A random read of a file being fetched misses the tier on most reads:
    each miss must cost a failed open, not a zeroed 1 MiB buffer."""
    import tracemalloc

    ref = ObjectRef(NS, "k", '"e1"', 4 * BLOCK_SIZE)
    s = TierStore(root, 16 * MiB)
    try:
        tracemalloc.start()
        try:
            for b in range(ref.nblocks):
                assert s.load(ref, b) is None
                assert s.load_range(ref, b, 0, 4096) is None
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < BLOCK_SIZE // 4
        data = payload(5, ref.size)
        assert s.put(ref, [(1, data[BLOCK_SIZE:2 * BLOCK_SIZE])]) == 1
        assert s.load(ref, 1) == data[BLOCK_SIZE:2 * BLOCK_SIZE]
    finally:
        s.close()


def test_the_set_of_checked_blocks_is_bounded(root):
    """Blocks evicted by another daemon sharing the tier never leave the set
    of checked blocks: it is emptied when full, and blocks are checked again."""
    ref = ObjectRef(NS, "k", '"e1"', 3 * BLOCK_SIZE)
    data = payload(5, ref.size)
    s = TierStore(root, 16 * MiB)
    s._verified_max = 2
    assert s.put(ref, [(b, data[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) for b in range(3)]) == 3
    assert len(s._verified) <= 2
    for b in range(3):
        assert s.load_range(ref, b, 7, 99) == data[b * BLOCK_SIZE + 7:b * BLOCK_SIZE + 99]
        assert len(s._verified) <= 2
    s.close()


def test_the_index_survives_reopening_and_a_new_version_replaces_the_old(root):
    s = TierStore(root, 16 * MiB)
    v1 = ObjectRef(NS, "k", '"e1"', 100)
    s.put(v1, [(0, b"a" * 100)])
    s.pin(NS, "k", False)
    s.close()
    s = TierStore(root, 16 * MiB)
    assert s.exclusive_at_start
    assert s.load(v1, 0) == b"a" * 100
    assert s.stats()["pinned_bytes"] == DISK_UNIT
    v2 = ObjectRef(NS, "k", '"e2"', 50)
    s.put(v2, [(0, b"b" * 50)])
    assert s.load(v1, 0) is None and s.load(v2, 0) == b"b" * 50
    assert s.stats()["pinned_bytes"] == DISK_UNIT  # pins follow the key
    s.close()


def test_pinned_data_beyond_the_limit_is_refused_without_evicting_anything(root):
    s = TierStore(root, 3 * DISK_UNIT)
    s.pin(NS, "p/", True)
    for i in range(2):
        assert s.put(ObjectRef(NS, f"p/{i}", "e", 10), [(0, b"x" * 10)]) == 1
    cold = ObjectRef(NS, "cold", "e", 10)
    assert s.put(cold, [(0, b"c" * 10)]) == 1
    assert s.put(ObjectRef(NS, "p/big", "e", 2 * DISK_UNIT), [(0, b"y" * 2 * DISK_UNIT)]) == 0
    assert s.load(cold, 0) == b"c" * 10 and s.refused == 1
    assert s.put(ObjectRef(NS, "p/2", "e", 10), [(0, b"z" * 10)]) == 1  # evicts cold
    assert s.load(cold, 0) is None
    s.close()


def test_recently_and_frequently_used_blocks_are_kept(root):
    now = [1000.0]
    s = TierStore(root, 3 * DISK_UNIT, clock=lambda: now[0])
    refs = [ObjectRef(NS, f"k{i}", "e", 10) for i in range(4)]
    for r in refs[:3]:
        s.put(r, [(0, b"x" * 10)])
        now[0] += 60
    for _ in range(3):  # k0 is the oldest but used often
        s.load(refs[0], 0)
        s.flush()
    now[0] += 60
    s.load(refs[2], 0)
    s.flush()
    s.put(refs[3], [(0, b"y" * 10)])
    assert s.load(refs[1], 0) is None  # used once, long ago: evicted
    assert all(s.load(r, 0) is not None for r in (refs[0], refs[2], refs[3]))
    s.close()


def test_two_stores_on_one_directory_share_the_bound(root):
    a = TierStore(root, 4 * DISK_UNIT)
    b = TierStore(root, 4 * DISK_UNIT)
    assert a.exclusive_at_start and not b.exclusive_at_start
    for i in range(6):
        (a if i % 2 else b).put(ObjectRef("x|b" + str(i % 2), f"k{i}", "e", 10),
                                [(0, b"x" * 10)])
        assert a.usage() <= 4 * DISK_UNIT and disk_usage(root) <= 4 * DISK_UNIT
    a.close()
    b.close()


def test_a_crash_between_index_and_file_leaves_nothing_unaccounted(root):
    s = TierStore(root, 16 * MiB)
    ref = ObjectRef(NS, "k", "e", 10)
    s.put(ref, [(0, b"x" * 10)])
    os.unlink(s.path(ref.oid, 0))          # row without file: a miss
    stray = s.path(ref.oid, 7) + ".tmp999-1"
    open(stray, "wb").write(b"junk")       # a half-written temporary file
    s.close()
    s = TierStore(root, 16 * MiB)          # alone: reconciles
    assert s.usage() == 0 and not os.path.exists(stray)
    assert s.load(ref, 0) is None
    s.close()


def test_evict_and_unpin_of_a_tree(root):
    s = TierStore(root, 16 * MiB)
    for k in ("d/a", "d/sub/b", "e/c"):
        s.put(ObjectRef(NS, k, "e", 10), [(0, b"x" * 10)])
    s.pin(NS, "d/sub/b", False)
    blocks, nbytes, kept = s.evict(NS, "d/", True)
    assert (blocks, nbytes, kept) == (1, DISK_UNIT, 1)
    assert s.unpin(NS, "d/", True) == 1
    assert s.evict(NS, "d/", True)[0] == 1
    assert s.stats()["blocks"] == 1
    s.close()


def test_a_new_cache_pin_policy_pins_what_is_already_cached(root):
    s = TierStore(root, 16 * MiB)
    for k in ("pre/a.db", "pre/b.txt"):
        s.put(ObjectRef(NS, k, "e", 10), [(0, b"x" * 10)])
    s.close()
    s = TierStore(root, 16 * MiB, extra_pinned=PinPolicy(NS, "pre/", ("*.db",)))
    assert s.apply_policy(NS) == 1
    assert s.stats()["pinned_bytes"] == DISK_UNIT
    s.close()
    s = TierStore(root, 16 * MiB)  # the glob removed: still pinned until unpinned
    assert s.stats()["pinned_bytes"] == DISK_UNIT
    s.unpin(NS, "pre/a.db", False)
    assert s.stats()["pinned_bytes"] == 0
    s.close()


def test_pin_policy_globs_are_relative_to_the_mount_root():
    p = PinPolicy(NS, "pre/", ("models/*", "*.db"))
    assert p(NS, "pre/models/a/b.bin") and p(NS, "pre/x/y.db")
    assert not p(NS, "models/a") and not p(NS, "pre/other") and not p("x|y", "pre/a.db")


# -- the read path over the store ------------------------------------------------------

def test_tier_read_fetches_only_missing_whole_blocks_and_caches_them(root):
    data = payload(4, 3 * BLOCK_SIZE + 100)
    calls = []

    async def fetch(s, e):
        calls.append((s, e))
        return data[s:e]

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", len(data))
        async with trio.open_nursery() as n:
            await n.start(tier.run)
            assert await tier.read(ref, 10, 20, fetch) == data[10:20]
            assert calls == [(0, BLOCK_SIZE)]
            await tier.warm(ref, 2 * BLOCK_SIZE, len(data), fetch)
            assert calls[1:] == [(2 * BLOCK_SIZE, len(data))]
            while tier._queued:
                await trio.sleep(0.01)
            calls.clear()
            got = await tier.read(ref, 5, len(data), fetch)
            assert got == data[5:]
            assert calls == [(BLOCK_SIZE, 2 * BLOCK_SIZE)]  # only the one never read
            n.cancel_scope.cancel()
        tier.store.close()

    trio.run(main)


def test_a_cached_range_is_read_into_one_buffer_and_answered_without_a_join(root, monkeypatch):
    data = payload(8, 3 * BLOCK_SIZE + 100)

    async def fetch(s, e):
        raise AssertionError("everything is cached")

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", len(data))
        view = memoryview(data)
        assert tier.store.put(ref, [(b, view[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE])
                                    for b in range(ref.nblocks)]) == 4
        loads = []
        monkeypatch.setattr(tier.store, "load", lambda *a: loads.append(a))
        got = await tier.read(ref, 0, len(data), fetch)
        # the buffer the blocks were read into, not a join of per-block copies
        assert got == data and isinstance(got, bytearray)
        got = await tier.read(ref, 5, 2 * BLOCK_SIZE, fetch)
        assert got == data[5:2 * BLOCK_SIZE] and isinstance(got, memoryview)
        assert loads == [] and tier.hits == 6
        tier.store.close()

    trio.run(main)


def test_tier_peek_serves_only_what_is_there_and_never_fetches_or_waits(root):
    data = payload(6, 3 * BLOCK_SIZE + 100)
    fetch = Gated(lambda s, e: data[s:e])

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", len(data))
        async with trio.open_nursery() as n:
            await n.start(tier.run)
            assert await tier.peek(ref, 10, 20) is None  # nothing cached
            assert tier.peek_now(ref, 10, 20) is None
            n.start_soon(tier.read, ref, 0, 10, fetch)   # block 0 being fetched
            await trio.sleep(0.05)
            with trio.fail_after(5):  # a GET under way is not waited for
                assert await tier.peek(ref, 10, 20) is None
            assert tier.peek_now(ref, 10, 20) is None
            fetch.gate.set()
            while tier._pending or tier._queued:
                await trio.sleep(0.01)
            assert await tier.peek(ref, 10, 20) == data[10:20]  # from disk
            assert tier.peek_now(ref, 10, 20) == data[10:20]
            assert await tier.peek(ref, BLOCK_SIZE - 5, BLOCK_SIZE + 5) is None  # 1 is missing
            assert tier.peek_now(ref, BLOCK_SIZE - 5, BLOCK_SIZE + 5) is None
            await tier.warm(ref, BLOCK_SIZE, len(data), fetch)
            assert await tier.peek(ref, BLOCK_SIZE - 5, len(data)) == data[BLOCK_SIZE - 5:]
            hits = tier.hits
            assert tier.peek_now(ref, BLOCK_SIZE - 5, len(data)) == data[BLOCK_SIZE - 5:]
            assert tier.hits == hits + 4  # blocks 0 to 3, from the page cache
            assert fetch.calls == [(0, BLOCK_SIZE), (BLOCK_SIZE, len(data))]
            n.cancel_scope.cancel()
        tier.store.close()

    trio.run(main)


def test_tier_join_copies_exactly_the_bytes_asked_for_from_whole_or_viewed_blocks():
    from objectfs.tier.tier import _join

    data = payload(7, 3 * BLOCK_SIZE + 100)
    blocks = [data[:BLOCK_SIZE], memoryview(data)[BLOCK_SIZE:2 * BLOCK_SIZE],
              data[2 * BLOCK_SIZE:3 * BLOCK_SIZE], memoryview(data)[3 * BLOCK_SIZE:]]
    for start, end in [(0, 10), (5, BLOCK_SIZE), (BLOCK_SIZE - 3, BLOCK_SIZE + 3),
                       (0, len(data)), (2 * BLOCK_SIZE + 7, len(data)),
                       (3 * BLOCK_SIZE, len(data)), (BLOCK_SIZE, 2 * BLOCK_SIZE)]:
        first, last = start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        got = _join(first, blocks[first:last + 1], start, end)
        assert type(got) is bytes and got == data[start:end], (start, end)
    assert _join(0, blocks[:1], 0, BLOCK_SIZE) is blocks[0]  # a whole block: no copy
    assert _join(0, [blocks[0], None], 0, 2 * BLOCK_SIZE) == data[:BLOCK_SIZE]  # up to a gap


def test_an_etag_seen_again_with_another_size_is_another_object(root):
    """Same key and ETag, other size (a server whose ETags are not content
    hashes): the old blocks go and the index counts exactly what is on disk
    (found by the model below: the usage went over the limit)."""
    store = TierStore(root, 2 * MiB + 8 * DISK_UNIT)
    for key, size in [("k2", BLOCK_SIZE - 3), ("k0", 1), ("k1", BLOCK_SIZE + 1),
                      ("k3", 4080), ("k2", BLOCK_SIZE + 1), ("k0", BLOCK_SIZE - 3)]:
        ref = ObjectRef(NS, key, '"v0"', size)
        data = payload(size % 97, size)
        store.put(ref, [(b, data[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE])
                        for b in range(ref.nblocks)])
        assert store.usage() <= store.limit and disk_usage(root) <= store.limit
        if store.has(ref, 0):
            assert store.load(ref, 0) == data[:BLOCK_SIZE]
    store.close()


# -- the property: bound, pins, exact reads --------------------------------------------

KEYS = [f"k{i}" for i in range(6)]
LIMIT = 2 * MiB + 8 * DISK_UNIT


class TierModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="objectfs-tier-")
        self.compress = False
        self.store = TierStore(self.dir, LIMIT)
        self.stored: dict[tuple[ObjectRef, int], bytes] = {}   # what a read may return
        self.pins: set[str] = set()
        self.version: dict[str, int] = {}

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def ref(self, key: str, size: int) -> ObjectRef:
        return ObjectRef(NS, key, f'"v{self.version.get(key, 0)}"', size)

    @rule(key=st.sampled_from(KEYS),
          size=st.one_of(st.integers(1, 3 * DISK_UNIT), st.integers(BLOCK_SIZE - 3,
                                                                    BLOCK_SIZE + 5000)),
          seed=st.integers(0, 1000), new_version=st.booleans())
    def put(self, key, size, seed, new_version):
        if new_version:
            self.version[key] = self.version.get(key, 0) + 1
            for k in [k for k in self.stored if k[0].key == key]:
                del self.stored[k]  # older versions are dropped with the new one
        ref = self.ref(key, size)
        data = payload(seed, size)
        blocks = [(b, data[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) for b in range(ref.nblocks)]
        # any other version of the key (another ETag, or the same one with
        # another size) is dropped by this put, whether it stores or not
        for k in [k for k in self.stored if k[0].key == key and k[0] != ref]:
            del self.stored[k]
        if self.store.put(ref, blocks):
            for b, piece in blocks:
                self.stored[(ref, b)] = piece

    def load(self, ref, b, into: bool):
        """The block through ``load`` or ``load_into`` (what a cached read
        of several blocks uses): both must see every corruption."""
        if not into:
            return self.store.load(ref, b)
        out = bytearray(ref.block_len(b) + 2)  # neighbours must stay untouched
        out[0] = out[-1] = 0xAB
        if not self.store.load_into(ref, b, memoryview(out)[1:-1]):
            return None
        assert out[0] == out[-1] == 0xAB
        return bytes(out[1:-1])

    @rule(data=st.data())
    @precondition(lambda self: self.stored)
    def read(self, data):
        ref, b = data.draw(st.sampled_from(sorted(self.stored, key=str)))
        got = self.load(ref, b, data.draw(st.booleans()))
        if got is None:
            assert ref.key not in self.pins, "a pinned block was evicted"
            del self.stored[(ref, b)]
        else:
            assert got == self.stored[(ref, b)]

    @rule(data=st.data())
    @precondition(lambda self: self.stored)
    def read_part(self, data):
        """A part of a block (what a random read of a cached block uses)."""
        ref, b = data.draw(st.sampled_from(sorted(self.stored, key=str)))
        n = ref.block_len(b)
        lo = data.draw(st.integers(0, n - 1))
        hi = data.draw(st.integers(lo + 1, n))
        now = self.store.read_now(ref, b, lo, hi)  # None is always allowed
        assert now is None or now == self.stored[(ref, b)][lo:hi]
        got = self.store.load_range(ref, b, lo, hi)
        if got is None:
            assert ref.key not in self.pins, "a pinned block was evicted"
            del self.stored[(ref, b)]
        else:
            assert got == self.stored[(ref, b)][lo:hi]
            if self.plain_on_disk(ref, b):
                # a plain block read (checked) here is in the page cache now
                assert self.store.read_now(ref, b, lo, hi) == got

    def plain_on_disk(self, ref, b) -> bool:
        with open(self.store.path(ref.oid, b), "rb") as f:
            return not blockfile.header(f.read(blockfile.HEADER.size))[0] & blockfile.FLAG_ZSTD

    @rule(key=st.sampled_from(KEYS))
    def pin(self, key):
        self.store.pin(NS, key, False)
        self.pins.add(key)
        # blocks already evicted are not coming back; the rest must stay
        for k in [k for k in self.stored if k[0].key == key and not self.store.has(*k)]:
            del self.stored[k]

    @rule(key=st.sampled_from(KEYS))
    def unpin(self, key):
        self.store.unpin(NS, key, False)
        self.pins.discard(key)

    @rule(key=st.sampled_from(KEYS))
    def evict(self, key):
        self.store.evict(NS, key, False)
        if key not in self.pins:
            for k in [k for k in self.stored if k[0].key == key]:
                del self.stored[k]

    @rule(data=st.data())
    @precondition(lambda self: self.stored)
    def corrupt(self, data):
        ref, b = data.draw(st.sampled_from(sorted(self.stored, key=str)))
        p = self.store.path(ref.oid, b)
        if not os.path.exists(p):
            return
        with open(p, "r+b") as f:
            f.seek(data.draw(st.integers(0, os.path.getsize(p) - 1)))
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert self.load(ref, b, data.draw(st.booleans())) is None
        del self.stored[(ref, b)]

    @rule()
    def flush(self):
        self.store.flush()

    @rule(compress=st.booleans())
    def reopen(self, compress):
        self.store.close()
        self.store = TierStore(self.dir, LIMIT, compress=compress)

    @invariant()
    def bounded(self):
        assert self.store.usage() <= LIMIT
        assert disk_usage(self.dir) <= LIMIT

    @invariant()
    def pinned_blocks_stay(self):
        for (ref, b), piece in self.stored.items():
            if ref.key in self.pins:
                assert self.store.has(ref, b), "a pinned block was evicted"


class Gated:
    """A fetch that records its calls and waits for ``gate`` before answering
    with ``answer(start, end)`` (which may raise instead)."""

    def __init__(self, answer):
        self.answer, self.calls, self.gate = answer, [], trio.Event()

    async def __call__(self, s: int, e: int):
        self.calls.append((s, e))
        await self.gate.wait()
        return self.answer(s, e)


def test_tier_readers_share_blocks_being_fetched_or_waiting_to_be_written(root):
    data = payload(5, 4 * BLOCK_SIZE)
    fetch = Gated(lambda s, e: data[s:e])
    calls, gate = fetch.calls, fetch.gate

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", len(data))
        got = {}

        async def read(name, s, e):
            got[name] = await tier.read(ref, s, e, fetch)

        async with trio.open_nursery() as n:
            await n.start(tier.run)
            async with trio.open_nursery() as readers:
                readers.start_soon(read, "a", 0, 2 * BLOCK_SIZE)
                await trio.sleep(0.05)
                readers.start_soon(read, "b", BLOCK_SIZE, 3 * BLOCK_SIZE)
                await trio.sleep(0.05)
                gate.set()
            assert got == {"a": data[:2 * BLOCK_SIZE], "b": data[BLOCK_SIZE:3 * BLOCK_SIZE]}
            # b took block 1 from a's GET and fetched only block 2
            assert calls == [(0, 2 * BLOCK_SIZE), (2 * BLOCK_SIZE, 3 * BLOCK_SIZE)]
            assert tier.shared == 1
            while tier._queued:
                await trio.sleep(0.01)
            assert not tier._pending  # written: served from disk from now on
            n.cancel_scope.cancel()
        tier.store.close()

    trio.run(main)


def test_a_failed_shared_fetch_fails_every_reader_and_is_not_remembered(root):
    data = payload(6, 2 * BLOCK_SIZE)

    def down(s, e):
        raise StoreUnavailable("Unreachable", "down", op="GetObject", key="k")

    failing = Gated(down)
    calls, gate = failing.calls, failing.gate

    async def fetch(s, e):
        calls.append((s, e))
        return data[s:e]

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", len(data))
        errors = []

        async def read():
            try:
                await tier.read(ref, 0, BLOCK_SIZE, failing)
            except FsError as e:
                errors.append(e)

        async with trio.open_nursery() as n:
            await n.start(tier.run)
            async with trio.open_nursery() as readers:
                readers.start_soon(read)
                await trio.sleep(0.05)
                readers.start_soon(read)
                await trio.sleep(0.05)
                gate.set()
            assert len(errors) == 2 and calls == [(0, BLOCK_SIZE)]
            assert not tier._pending
            assert await tier.read(ref, 0, BLOCK_SIZE, fetch) == data[:BLOCK_SIZE]
            n.cancel_scope.cancel()
        tier.store.close()

    trio.run(main)


def test_tier_model():
    run_state_machine_as_test(TierModel, settings=settings(
        max_examples=40, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


# -- the filesystem core while S3 is unreachable ----------------------------------------

class Unplugged(MemoryStore):
    """A MemoryStore whose every request fails as unreachable while ``down``."""

    down = False

    def _count(self, op: str) -> None:
        super()._count(op)
        if self.down:
            raise StoreUnavailable("Unreachable", "ConnectionRefused", op=op)


def test_offline_known_files_are_served_from_the_tier_with_one_failed_request(tmp_path):
    from objectfs.config import build
    from objectfs.filesystem import Filesystem

    store = Unplugged()
    hot, cold = payload(20, 2 * MiB + 1), payload(21, 5000)
    store.put_sync("d/hot", hot)
    store.put_sync("d/cold", cold)
    cfg = build("bucket", "", "/mnt", o_options=[
        f"staging_dir={tmp_path}", f"cache_dir={tmp_path}/cache", "metadata_ttl=0.2",
        "negative_ttl=0.2"])

    async def read_all(fs, node) -> bytes:
        h = await fs.open(node.ino, os.O_RDONLY)
        try:
            return await fs.read(h.fh, 0, node.attr.size + 1)
        finally:
            await fs.release(h.fh)

    async def main():
        async with trio.open_nursery() as n:
            fs = Filesystem(store, cfg)
            await fs.start(n)
            d = await fs.lookup(1, b"d")
            assert await read_all(fs, await fs.lookup(d.ino, b"hot")) == hot
            await fs.lookup(d.ino, b"cold")
            while fs.tier._queued:
                await trio.sleep(0.01)
            store.down = True
            await trio.sleep(0.3)  # every attribute is stale now
            before = sum(store.calls.values())
            d = await fs.lookup(1, b"d")
            node = await fs.lookup(d.ino, b"hot")
            await fs.getattr(node.ino)
            assert await read_all(fs, node) == hot
            assert sum(store.calls.values()) - before == 1  # then S3 is known to be down
            cold_node = await fs.lookup(d.ino, b"cold")
            with pytest.raises(FsError) as e:
                await read_all(fs, cold_node)
            assert e.value.errno == errno.EIO
            with pytest.raises(FsError) as e:
                await fs.lookup(d.ino, b"never-seen")
            assert e.value.errno == errno.EIO
            store.down = False
            await trio.sleep(0.3)
            assert await read_all(fs, cold_node) == cold  # back online
            n.cancel_scope.cancel()
        fs.close()

    trio.run(main)


def test_unlink_and_rename_through_the_mount_drop_the_old_keys_cached_data(tmp_path):
    from objectfs.config import build
    from objectfs.filesystem import Filesystem

    store = MemoryStore()
    for k in ("a", "b"):
        store.put_sync(k, payload(30, 3000))
    cfg = build("bucket", "", "/mnt", o_options=[
        f"staging_dir={tmp_path}", f"cache_dir={tmp_path}/cache"])

    async def main():
        async with trio.open_nursery() as n:
            fs = Filesystem(store, cfg)
            await fs.start(n)
            for name in (b"a", b"b"):
                node = await fs.lookup(1, name)
                h = await fs.open(node.ino, os.O_RDONLY)
                await fs.read(h.fh, 0, 4096)
                await fs.release(h.fh)
            while fs.tier._queued:
                await trio.sleep(0.01)
            assert fs.tier.store.stats()["objects"] == 2
            await fs.unlink(1, b"a")
            await fs.rename(1, b"b", 1, b"c", 0)
            with trio.fail_after(10):   # dropped by the write-behind task, in order
                while fs.tier.store.stats()["objects"]:
                    await trio.sleep(0.01)
            n.cancel_scope.cancel()
        fs.close()

    trio.run(main)


def test_forgets_in_a_row_go_to_the_disk_together_and_in_order_with_puts(root, monkeypatch):
    """Keys deleted one after the other (``rm`` of many files) are dropped
    from the index in one trip to a disk thread; a put queued behind them
    ends the wait and is written after them, so a new version cached right
    after its key was forgotten stays."""
    trips: list[list[str]] = []
    real = TierStore.forget_keys

    def counting(self, ns, keys):
        trips.append(list(keys))
        return real(self, ns, keys)

    monkeypatch.setattr(TierStore, "forget_keys", counting)
    data = payload(9, 3000)

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        async with trio.open_nursery() as n:
            await n.start(tier.run)
            for i in range(20):
                tier.offer(f"k{i}", "old", data)
            while tier._queued:
                await trio.sleep(0.01)
            assert tier.store.stats()["objects"] == 20
            for i in range(20):
                await tier.forget(f"k{i}")
            tier.offer("k0", "new", data[::-1])
            with trio.fail_after(10):
                while tier.store.stats()["objects"] != 1 or tier._queued:
                    await trio.sleep(0.01)
            assert trips == [[f"k{i}" for i in range(20)]]
            new = tier.ref("k0", "new", len(data))
            assert await tier.peek(new, 0, len(data)) == data[::-1]
            # a lone forget is dropped too, within FORGET_WAIT
            await tier.forget("k0")
            with trio.fail_after(10):
                while tier.store.stats()["objects"]:
                    await trio.sleep(0.01)
            assert trips[1:] == [["k0"]]
            n.cancel_scope.cancel()
        tier.store.close()

    trio.run(main)


def test_forgets_still_queued_at_unmount_are_done_by_close(root):
    """A key deleted just before the unmount: its forget may still wait in
    the queue, or in the write-behind task's gathering of forgets, when the
    task is cancelled.  ``close`` does it, so the deleted file's blocks do
    not stay on disk; the keys not deleted keep theirs."""
    data = payload(10, 3000)

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        async with trio.open_nursery() as n:
            await n.start(tier.run)
            for k in ("k1", "k2", "k3"):
                tier.offer(k, "v", data)
            while tier._queued:
                await trio.sleep(0.01)
            await tier.forget("k1")   # handed to the task, which gathers more
            n.cancel_scope.cancel()
            await tier.forget("k2")   # queued: the task stops before taking it
        assert tier._forgetting == ["k1"] and tier.store.stats()["objects"] == 3
        tier.close()

    trio.run(main)
    store = TierStore(root, 64 * MiB)
    try:
        assert store.stats()["objects"] == 1
        with store._lock:
            keys = [k for (k,) in store.db.execute("SELECT key FROM objects")]
        assert keys == ["k3"]
    finally:
        store.close()


# -- objectfs cache warm: progress and Ctrl-C ---------------------------------------------

class FakeTTY:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def fake_daemon(monkeypatch, tmp_path, interrupt_after=None):
    from types import SimpleNamespace

    from objectfs.tier import cli

    sent = []

    def mount_of(path):
        return SimpleNamespace(mountpoint=str(tmp_path)), os.path.relpath(path, tmp_path)

    def request(mountpoint, req, timeout=600):
        sent.append(req)
        if interrupt_after is not None and len(sent) > interrupt_after:
            raise KeyboardInterrupt
        size = os.path.getsize(os.path.join(mountpoint, req["path"]))
        nxt = min(size, req["offset"] + 32 * MiB)
        return {"ok": True, "size": size, "next": nxt, "fetched": nxt - req["offset"],
                "cached": nxt - req["offset"]}

    monkeypatch.setattr(cli.control, "mount_of", mount_of)
    monkeypatch.setattr(cli.control, "request", request)
    return cli, sent


def test_warm_walks_a_tree_chunk_by_chunk_with_a_progress_bar(monkeypatch, tmp_path, capsys):
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "big").write_bytes(b"")
    os.truncate(tmp_path / "t" / "big", 70 * MiB)
    (tmp_path / "t" / "sub" / "small").write_bytes(b"x" * 10)
    os.symlink("big", tmp_path / "t" / "link")
    cli, sent = fake_daemon(monkeypatch, tmp_path)
    tty = FakeTTY()
    monkeypatch.setattr(cli.sys, "stderr", tty)
    assert cli.warm([str(tmp_path / "t")]) == 0
    assert [(r["path"], r["offset"]) for r in sent] == [
        ("t/big", 0), ("t/big", 32 * MiB), ("t/big", 64 * MiB), ("t/sub/small", 0)]
    assert "100.0%" in tty.text and "2/2 files" in tty.text and "\r[" in tty.text
    assert "2 of 2 file(s) wholly in the local tier, 70.0 MiB kept" in capsys.readouterr().out


def test_warm_stops_at_ctrl_c_and_says_how_far_it_got(monkeypatch, tmp_path, capsys):
    (tmp_path / "f").write_bytes(b"")
    os.truncate(tmp_path / "f", 100 * MiB)
    cli, sent = fake_daemon(monkeypatch, tmp_path, interrupt_after=2)
    assert cli.warm([str(tmp_path / "f")]) == 130
    assert len(sent) == 3  # nothing is sent after the interrupt
    err = capsys.readouterr().err
    assert "interrupted; 64.0 MiB of 100.0 MiB warmed" in err


def test_a_failing_fill_stops_quietly_even_while_the_mount_is_cancelled(root):
    """The fill runs in the mount's nursery: its fetch errors (the object was
    deleted) must never reach that nursery, also when they coincide with the
    unmount's cancellation (that ended the mount loop with a traceback)."""
    size = (FILL_CONCURRENCY + 2) * FILL_STEP   # more steps than are fetched at a time

    def deleted(s, e):
        raise ObjectNotFound("NoSuchKey", "deleted", op="GetObject", key="k")

    async def main(cancel_too: bool):
        gone = Gated(deleted)
        calls = gone.calls
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", size)
        with trio.move_on_after(10) as guard:
            async with trio.open_nursery() as mount_nursery:
                await mount_nursery.start(tier.run)
                tier.fill(ref, gone, mount_nursery)
                while len(calls) < FILL_CONCURRENCY:   # every fetch under way waits
                    await trio.sleep(0.01)
                assert tier._filling
                gone.gate.set()
                if cancel_too:  # the unmount arrives as the fetches fail
                    mount_nursery.cancel_scope.cancel()
                else:
                    while tier._filling:
                        await trio.sleep(0.01)
                    assert len(calls) == FILL_CONCURRENCY   # the first failure stopped it
                    mount_nursery.cancel_scope.cancel()
        assert not guard.cancelled_caught and not tier._filling, (calls, tier._filling)
        tier.store.close()

    trio.run(main, False)
    trio.run(main, True)


def test_a_read_during_a_fill_waits_for_it_and_its_step_is_fetched_next(root, monkeypatch):
    """A random read of a file being filled makes no GET of its own: the step
    holding its bytes moves to the front of the fill, and the read gets its
    bytes from there.  Without a fill, the read is told None at once."""
    step = BLOCK_SIZE
    monkeypatch.setattr(tier_module, "FILL_STEP", step)
    steps = 2 * FILL_CONCURRENCY + 1
    data = payload(8, steps * step)
    fetch = Gated(lambda s, e: data[s:e])
    want = (steps - 1) * step + 12345   # in the last step: fetched last until asked for

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", len(data))
        assert await tier.from_fill(ref, want, want + 4096) is None   # no fill: no wait
        got = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(tier.run)
                tier.fill(ref, fetch, nursery)
                while len(fetch.calls) < FILL_CONCURRENCY:   # the first steps are under way
                    await trio.sleep(0.01)

                async def read():
                    got.append(bytes(await tier.from_fill(ref, want, want + 4096)))

                nursery.start_soon(read)
                await trio.sleep(0.05)
                assert not got   # it waits for the fill, whose next step is its own
                assert tier._filling[ref.oid].todo[0] == (steps - 1) * step
                fetch.gate.set()
                while tier._filling:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        assert got == [data[want:want + 4096]]
        assert sorted(fetch.calls) == [(s, s + step) for s in range(0, len(data), step)]
        tier.store.close()

    trio.run(main)


def test_a_read_waiting_for_a_fill_that_fails_is_told_none(root, monkeypatch):
    """The fill stops at its first failure; a read waiting for it wakes up and
    fetches its bytes itself (None here), it does not wait forever."""
    monkeypatch.setattr(tier_module, "FILL_STEP", BLOCK_SIZE)
    size = (FILL_CONCURRENCY + 2) * BLOCK_SIZE

    def deleted(s, e):
        raise ObjectNotFound("NoSuchKey", "deleted", op="GetObject", key="k")

    gone = Gated(deleted)

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", size)
        got = []
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(tier.run)
                tier.fill(ref, gone, nursery)
                while len(gone.calls) < FILL_CONCURRENCY:
                    await trio.sleep(0.01)

                async def read():
                    got.append(await tier.from_fill(ref, size - 4096, size))

                nursery.start_soon(read)
                await trio.sleep(0.05)
                assert not got
                gone.gate.set()
                while not got:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        assert got == [None] and not tier._filling
        tier.store.close()

    trio.run(main)


def test_a_fill_step_failing_beside_the_fills_own_cancellation_stays_quiet(root, monkeypatch):
    """One step fails and cancels the others, while another step's block,
    shared with a reader whose GET fails at the same moment, raises that
    error: the step ends with the error and a cancellation together.  The
    fill logs it and ends; nothing reaches the mount's nursery (that ended
    the mount loop with a traceback)."""
    monkeypatch.setattr(tier_module, "FILL_STEP", 2 * BLOCK_SIZE)
    size = 4 * BLOCK_SIZE   # two steps: blocks 0-1 and 2-3

    def changed(s, e):
        raise ObjectNotFound("NoSuchKey", "deleted", op="GetObject", key="k")

    async def main():
        gate, never = trio.Event(), trio.Event()

        async def fetch(s, e):
            if s == BLOCK_SIZE:          # the first step's own block: still waiting
                await never.wait()
            await gate.wait()
            return changed(s, e)

        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", size)
        with trio.fail_after(10):
            async with trio.open_nursery() as mount_nursery:
                await mount_nursery.start(tier.run)

                async def reader():
                    with contextlib.suppress(ObjectNotFound):
                        await tier.read(ref, 0, BLOCK_SIZE, fetch)

                mount_nursery.start_soon(reader)
                while (ref.oid, 0) not in tier._pending:
                    await trio.sleep(0.001)
                tier.fill(ref, fetch, mount_nursery)
                while len(tier._pending) < 4:   # every block asked for
                    await trio.sleep(0.001)
                gate.set()   # the reader's GET and the second step's fail together
                while tier._filling:
                    await trio.sleep(0.001)
                mount_nursery.cancel_scope.cancel()
        tier.store.close()

    for _ in range(20):   # the order within trio's batch varies from run to run
        trio.run(main)
        shutil.rmtree(root, ignore_errors=True)


def test_a_full_disk_under_the_tier_is_one_warning_line_and_reads_go_on(root, caplog,
                                                                         monkeypatch):
    """sqlite's "database or disk is full" when blocks are recorded: one
    warning line (no traceback), and the read is served from S3."""
    import logging
    import sqlite3

    data = payload(5, BLOCK_SIZE + 10)

    async def fetch(s, e):
        return data[s:e]

    def full(*args, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    async def main():
        store = TierStore(root, 64 * MiB)
        monkeypatch.setattr(store, "put", full)
        tier = Tier(store, NS)
        ref = tier.ref("k", "e", len(data))
        async with trio.open_nursery() as n:
            await n.start(tier.run)
            assert await tier.read(ref, 0, len(data), fetch) == data
            while tier._queued:
                await trio.sleep(0.01)
            n.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="objectfs.tier.tier"):
        trio.run(main)
    lines = [r for r in caplog.records if "could not store" in r.getMessage()]
    assert lines and all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)
    assert "database or disk is full" in lines[0].getMessage()


def test_a_full_disk_when_block_uses_are_recorded_is_one_warning_line(root, caplog,
                                                                      monkeypatch):
    """sqlite's "database or disk is full" when the write-behind task records
    block uses (every FLUSH_INTERVAL): one warning line, no traceback (the
    flush used to log one every 2 s for as long as the disk was full)."""
    import logging
    import sqlite3

    def full(*args, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(tier_module, "FLUSH_INTERVAL", 0.01)

    async def main():
        store = TierStore(root, 64 * MiB)
        monkeypatch.setattr(store, "flush", full)
        tier = Tier(store, NS)
        async with trio.open_nursery() as n:
            await n.start(tier.run)
            await trio.sleep(0.1)
            n.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="objectfs.tier.tier"):
        trio.run(main)
    lines = [r for r in caplog.records if "block use" in r.getMessage()]
    assert lines and all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)
    assert "database or disk is full" in lines[0].getMessage()


def test_a_corrupt_block_whose_index_row_cannot_be_dropped_is_still_refetched(root,
                                                                            monkeypatch):
    """A corrupt block found while the index cannot be written (a full disk,
    a lock held past the busy timeout): the read is still answered from S3,
    not failed, and the corrupt file goes (a row without a file is a miss)."""
    import sqlite3

    data = payload(6, BLOCK_SIZE + 10)
    ref = ObjectRef(NS, "k", '"e1"', len(data))
    store = TierStore(root, 16 * MiB)
    assert store.put(ref, [(0, data[:BLOCK_SIZE]), (1, data[BLOCK_SIZE:])]) == 2
    store.close()
    p0 = None

    async def fetch(s, e):
        return data[s:e]

    def full():
        raise sqlite3.OperationalError("database or disk is full")

    async def main():
        nonlocal p0
        s = TierStore(root, 16 * MiB)
        p0 = s.path(ref.oid, 0)
        with open(p0, "r+b") as f:
            f.seek(1000)
            f.write(b"\0\1\2")
        monkeypatch.setattr(s, "_tx", full)
        tier = Tier(s, NS)
        assert await tier.read(ref, 0, len(data), fetch) == data
        assert await tier.peek(ref, 0, 4096) is None  # never the corrupt bytes
        assert s.corrupt == 1

    trio.run(main)
    assert not os.path.exists(p0)


def test_a_block_that_cannot_be_written_or_unindexed_leaves_no_temporary_file(root,
                                                                           monkeypatch):
    """A full disk refuses a block file, then the index the removal of its
    row: the blocks of the same put written before it are still stored, and
    no temporary file is left behind (only a daemon starting alone sweeps
    them, so on a full disk they took the room blocks could have used)."""
    import sqlite3

    data = payload(7, 2 * BLOCK_SIZE)
    ref = ObjectRef(NS, "k", '"e1"', len(data))
    s = TierStore(root, 16 * MiB)
    write, tx = s._write, s._tx
    calls = []

    def failing_write(path, pieces):
        if f"{ref.oid}.1." in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, pieces)

    def failing_tx():
        calls.append(1)
        if len(calls) == 2:  # the removal of the row of the block not written
            raise sqlite3.OperationalError("database or disk is full")
        return tx()

    monkeypatch.setattr(s, "_write", failing_write)
    monkeypatch.setattr(s, "_tx", failing_tx)
    assert s.put(ref, [(0, data[:BLOCK_SIZE]), (1, data[BLOCK_SIZE:])]) == 1
    monkeypatch.undo()
    assert s.load(ref, 0) == data[:BLOCK_SIZE]
    assert s.load(ref, 1) is None  # a row without a file: a miss
    left = [f for _, _, fs in os.walk(os.path.join(root, "data")) for f in fs if ".tmp" in f]
    assert left == []
    s.close()


def test_a_full_disk_is_a_warning_line_a_minute_not_one_a_block(root, caplog, monkeypatch):
    """Every block the tier tries to write on a full disk is refused: one
    warning line, then none for a minute, then one saying how many were left
    out (a read of a big file used to log a line per block)."""
    import logging

    from objectfs import logs

    clock = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    store = TierStore(root, 64 * MiB)

    def full(path, pieces):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write", full)
    ref = ObjectRef(NS, "k", '"e"', 8 * BLOCK_SIZE)
    with caplog.at_level(logging.WARNING, logger="objectfs.tier.store"):
        for b in range(8):
            store.put(ref, [(b, memoryview(payload(b, BLOCK_SIZE)))])
        clock[0] += 61
        store.put(ref, [(0, memoryview(payload(0, BLOCK_SIZE)))])
    lines = [r.getMessage() for r in caplog.records if "cannot write cached block" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "No space left" in lines[0] and "more like it" not in lines[0]
    assert lines[1].endswith("(and 7 more like it in the last 60 s)")
    assert store._total() == 0   # each refused block's row is gone


def test_the_write_behind_task_holds_no_block_once_it_is_written(root):
    # A fetched block is a view of the receive buffer its GET was read into;
    # the buffer goes back to the system (or is used again) only once nothing
    # refers to it.  The write-behind task kept the last blocks it wrote in
    # a local variable until the next ones came: an idle mount held that
    # buffer (1 MiB, or a whole segment) for good, though "an idle mount
    # keeps none" (SEMANTICS: Receive buffers).
    import gc
    import sys

    data = payload(5, 2 * BLOCK_SIZE)
    bodies = []

    async def fetch(s, e):
        body = bytearray(data[s:e])   # as a receive buffer: the caller's to view
        bodies.append(body)
        return body

    async def main():
        tier = Tier(TierStore(root, 64 * MiB), NS)
        ref = tier.ref("k", "e", len(data))
        async with trio.open_nursery() as n:
            await n.start(tier.run)
            assert await tier.read(ref, 10, 20, fetch) == data[10:20]
            while tier._queued:
                await trio.sleep(0.01)
            await trio.sleep(0.05)          # idle: nothing else comes
            gc.collect()
            [body] = bodies
            assert tier.store.stats()["blocks"] == 1
            # only ``bodies`` and getrefcount's argument
            assert sys.getrefcount(body) == 3
            n.cancel_scope.cancel()
        tier.store.close()

    trio.run(main)
