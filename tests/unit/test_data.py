"""The data path (FileData, uploads, prefetch) against the in-memory store.

MemoryStore enforces S3's 5 MiB minimum part size, so every multipart
upload here is one S3 would accept.  Each test builds a DataContext inside
a trio nursery, as the mount's lifecycle does; the nursery must drain (no
background task left running) and the memory budgets must be back to zero
at the end.
"""

from __future__ import annotations

import contextlib
import errno
import random

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from objectfs.data.context import DataContext, ObjectHeaders
from objectfs.data.file import FileData
from objectfs.data.prefetch import FIRST_WINDOW, Prefetcher
from objectfs.errors import FsError, Stale, store_error
from objectfs.store.base import KiB, MiB
from objectfs.store.memory import MemoryStore

PART = 5 * MiB
KEY = "dir/file.bin"
HEADERS = ObjectHeaders({"mode": "33188"}, "application/octet-stream", {})


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class CountingStore(MemoryStore):
    """MemoryStore that also counts the bytes moved and can be made to fail."""

    def __init__(self):
        super().__init__()
        self.bytes_up = 0
        self.bytes_down = 0
        self.gets: list[tuple[int, int | None]] = []
        self.fail_parts = 0     # fail this many upload_part calls
        self.fail_puts = 0      # fail this many put calls

    async def get(self, key, start=0, end=None, *, etag=None):
        data = await super().get(key, start, end, etag=etag)
        self.gets.append((start, end))
        self.bytes_down += len(data)
        return data

    async def upload_part(self, key, upload_id, number, body):
        if self.fail_parts:
            self.fail_parts -= 1
            await trio.lowlevel.checkpoint()
            raise store_error("InternalError", "injected", op="UploadPart", key=key)
        self.bytes_up += len(body)
        return await super().upload_part(key, upload_id, number, body)

    async def put(self, key, body, **kw):
        if self.fail_puts:
            self.fail_puts -= 1
            await trio.lowlevel.checkpoint()
            raise store_error("InternalError", "injected", op="PutObject", key=key)
        self.bytes_up += len(body)
        return await super().put(key, body, **kw)


def run_data(fn, store: MemoryStore, staging_dir, *, read_part_size=1 * MiB,
             prefetch_max=8 * MiB, write_buffer_memory=32 * MiB, upload_concurrency=4,
             part_size=PART):
    """Run ``await fn(ctx)`` with a DataContext whose nursery lives for the call."""
    async def main():
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                ctx = DataContext(store, nursery, part_size=part_size,
                                  upload_concurrency=upload_concurrency,
                                  write_buffer_memory=write_buffer_memory,
                                  read_part_size=read_part_size, prefetch_max=prefetch_max,
                                  read_memory=4 * prefetch_max, staging_dir=str(staging_dir))
                result = await fn(ctx)
            # the nursery has drained: nothing may still hold budget
            assert ctx.write_budget.used == 0, "write budget leaked"
            assert ctx.read_budget.used == 0, "read budget leaked"
            return result
    return trio.run(main)


def new_file(ctx, store, *, existing: bool) -> FileData:
    if existing and KEY in store.objects:
        o = store.objects[KEY]
        return FileData(ctx, lambda: KEY, lambda: HEADERS, base_etag=o.etag,
                        base_size=len(o.data))
    f = FileData(ctx, lambda: KEY, lambda: HEADERS, base_etag=None, base_size=0)
    f.mark_dirty()  # as Filesystem.create does: even an empty new file is uploaded
    return f


# -- random operation sequences against a bytearray model -----------------------------

def op_strategy(max_off: int, max_len: int):
    return st.one_of(
        st.tuples(st.just("write"), st.integers(0, max_off), st.integers(1, max_len),
                  st.integers(0, 2**16)),
        st.tuples(st.just("append"), st.integers(1, max_len), st.integers(0, 2**16)),
        st.tuples(st.just("truncate"), st.integers(0, max_off + max_len)),
        st.tuples(st.just("read"), st.integers(0, max_off + max_len), st.integers(1, max_len)),
        st.tuples(st.just("flush")),
    )


def check_sequence(tmp_path, base_len: int, base_seed: int, ops) -> None:
    store = CountingStore()
    if base_len:
        store.put_sync(KEY, blob(base_len, base_seed), metadata=dict(HEADERS.metadata))
    model = bytearray(store.objects[KEY].data if base_len else b"")

    async def body(ctx):
        f = new_file(ctx, store, existing=bool(base_len))
        for op in ops:
            kind = op[0]
            if kind in ("write", "append"):
                if kind == "write":
                    _, off, n, seed = op
                else:
                    _, n, seed = op
                    off = len(model)
                data = blob(n, seed)
                assert await f.write(off, data) == n
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + n] = data
            elif kind == "truncate":
                size = op[1]
                await f.truncate(size)
                del model[size:]
                model.extend(bytes(size - len(model)))
            elif kind == "read":
                _, off, n = op
                got = await f.read(off, n)
                assert got == bytes(model[off:off + n]), f"read({off}, {n}) differs"
            else:
                await f.flush()
                assert store.objects[KEY].data == model, "object differs after flush"
                assert not store.uploads, "multipart upload left behind"
                assert not f.dirty
            assert f.size == len(model)
        await f.flush()
        o = store.objects[KEY]
        assert len(o.data) == len(model)
        assert o.data == model, "object differs from the model after the final flush"
        assert o.metadata == dict(HEADERS.metadata)
        assert not store.uploads, "multipart upload left behind"
        # everything reads back through the handle too
        assert await f.read(0, len(model) + 10) == bytes(model)
        await f.close()

    run_data(body, store, tmp_path)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([0, 0, 1, 100 * KiB]), st.integers(0, 100),
       st.lists(op_strategy(200 * KiB, 64 * KiB), max_size=12))
def test_small_files_read_back_and_store_like_the_model(tmp_path, base_len, seed, ops):
    check_sequence(tmp_path, base_len, seed, ops)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([0, 0, 7 * MiB, 11 * MiB]), st.integers(0, 100),
       st.lists(op_strategy(12 * MiB, 6 * MiB), min_size=1, max_size=6))
def test_large_files_across_parts_read_back_and_store_like_the_model(tmp_path, base_len, seed,
                                                                      ops):
    check_sequence(tmp_path, base_len, seed, ops)


@pytest.mark.parametrize("ops", [
    # stream two full parts, then go back: the started upload is completed and rebased
    [("append", 6 * MiB, 1), ("append", 5 * MiB, 2), ("write", 100, 10, 3), ("flush",)],
    # stream, truncate into the first shipped part, append again
    [("append", 11 * MiB, 1), ("truncate", 3 * MiB), ("append", 4 * MiB, 2), ("flush",)],
    # stream, read back bytes already sent
    [("append", 6 * MiB, 1), ("read", 0, 100), ("append", 1 * MiB, 2)],
    # stream, truncate to zero (aborts the upload), stream again
    [("append", 7 * MiB, 1), ("truncate", 0), ("append", 6 * MiB, 2)],
    # flush mid-stream, then keep appending
    [("append", 6 * MiB, 1), ("flush",), ("append", 6 * MiB, 2), ("read", 5 * MiB, 2 * MiB)],
    # grow with a hole past a part boundary, then fill part of it
    [("append", 1 * MiB, 1), ("truncate", 12 * MiB), ("write", 9 * MiB, 10, 2)],
    # edits in an existing multi-part object, then shrink and regrow
    [("write", 6 * MiB, 10, 1), ("truncate", 8 * MiB), ("truncate", 12 * MiB),
     ("read", 7 * MiB, 2 * MiB)],
], ids=["seek-back", "truncate-into-sent", "read-sent", "truncate-zero", "flush-mid",
        "hole", "edit-shrink-grow"])
def test_large_file_scenarios(tmp_path, ops):
    base = 11 * MiB if ops[0][0] == "write" else 0
    check_sequence(tmp_path, base, 7, ops)


# -- streaming ---------------------------------------------------------------------------

def test_sequential_writes_stream_as_multipart(tmp_path):
    store = CountingStore()
    data = blob(12 * MiB, 1)
    seen_upload_during_writes = []

    async def body(ctx):
        f = new_file(ctx, store, existing=False)
        for off in range(0, len(data), 128 * KiB):
            await f.write(off, data[off:off + 128 * KiB])
            seen_upload_during_writes.append(store.calls["UploadPart"])
        assert f.staging is None, "sequential writes must not go to disk"
        info = await f.flush()
        assert info.size == len(data)
        await f.close()

    run_data(body, store, tmp_path)
    assert store.calls["CreateMultipartUpload"] == 1
    assert store.calls["UploadPart"] == 3  # 5 + 5 + 2 MiB
    assert store.calls["CompleteMultipartUpload"] == 1
    assert store.calls["PutObject"] == 0
    # parts went out while the writer was still writing
    assert seen_upload_during_writes[len(seen_upload_during_writes) // 2] >= 1
    assert store.objects[KEY].data == data
    assert store.objects[KEY].etag.endswith('-3"')
    assert store.bytes_up == len(data), "each byte uploaded once"
    assert not store.uploads


def test_small_sequential_file_is_one_put(tmp_path):
    store = CountingStore()
    data = blob(3 * MiB, 2)

    async def body(ctx):
        f = new_file(ctx, store, existing=False)
        await f.write(0, data[:MiB])
        await f.write(MiB, data[MiB:])
        await f.flush()
        await f.close()

    run_data(body, store, tmp_path)
    assert store.calls["PutObject"] == 1
    assert store.calls["CreateMultipartUpload"] == 0
    assert store.objects[KEY].data == data


def test_streaming_respects_the_write_budget(tmp_path):
    """Writers wait for the budget: buffered bytes never exceed it (plus the
    part being filled when a request is admitted alone)."""
    store = CountingStore()
    data = blob(26 * MiB, 3)
    peaks = []

    async def body(ctx):
        f = new_file(ctx, store, existing=False)
        for off in range(0, len(data), MiB):
            await f.write(off, data[off:off + MiB])
            peaks.append(ctx.write_budget.used)
        await f.flush()
        assert ctx.write_budget.peak <= ctx.write_budget.limit

    run_data(body, store, tmp_path, write_buffer_memory=10 * MiB, upload_concurrency=1)
    assert store.objects[KEY].data == data
    assert max(peaks) <= 10 * MiB


def test_writers_beyond_the_budget_move_to_staging_instead_of_deadlocking(tmp_path):
    """More sequential writers than the budget has parts, written in turn by
    one task (as ``split -n r/N`` does): each would hold part of a part and
    wait for the others.  A writer the budget cannot serve goes on on the
    staging disk instead; every file arrives whole."""
    store = CountingStore()
    n_files, size, chunk = 4, 12 * MiB, 256 * KiB
    datas = [blob(size, 10 + i) for i in range(n_files)]

    async def body(ctx):
        files = [FileData(ctx, (lambda k=f"f{i}": k), lambda: HEADERS, base_etag=None,
                          base_size=0) for i in range(n_files)]
        for off in range(0, size, chunk):
            for f, data in zip(files, datas):
                assert await f.write(off, data[off:off + chunk]) == chunk
                assert ctx.write_budget.used <= ctx.write_budget.limit
        assert any(f.staging is not None for f in files), "the budget was never spent"
        for f, data in zip(files, datas):
            assert await f.read(0, size) == data
            await f.flush()
            await f.close()

    # budget for two parts; four writers
    run_data(body, store, tmp_path, write_buffer_memory=2 * PART)
    for i, data in enumerate(datas):
        assert store.objects[f"f{i}"].data == data
    assert not store.uploads


def test_non_sequential_write_after_streaming_started_converts(tmp_path):
    store = CountingStore()
    first = blob(7 * MiB, 1)
    patch = b"PATCHED!" * 1000
    tail = blob(4 * MiB, 2)
    model = bytearray(first)

    async def body(ctx):
        f = new_file(ctx, store, existing=False)
        for off in range(0, len(first), 256 * KiB):
            await f.write(off, first[off:off + 256 * KiB])
        assert store.calls["UploadPart"] >= 1 and f.stream is not None and f.stream.started
        await f.write(1 * MiB, patch)            # not sequential: converts
        model[1 * MiB:1 * MiB + len(patch)] = patch
        assert f.stream is None and f.staging is not None
        assert await f.read(0, len(model)) == bytes(model)
        await f.write(len(model), tail)          # keeps going, staged now
        model.extend(tail)
        assert await f.read(MiB - 10, 100) == bytes(model[MiB - 10:MiB + 90])
        await f.flush()
        await f.close()

    run_data(body, store, tmp_path)
    assert store.objects[KEY].data == model
    assert not store.uploads


# -- re-upload of an edited object ----------------------------------------------------

def test_small_edit_of_a_large_object_copies_untouched_parts(tmp_path):
    store = CountingStore()
    original = blob(15 * MiB, 4)
    store.put_sync(KEY, original)
    model = bytearray(original)

    async def body(ctx):
        f = new_file(ctx, store, existing=True)
        await f.write(7 * MiB + 3, b"hello")
        model[7 * MiB + 3:7 * MiB + 8] = b"hello"
        await f.flush()
        await f.close()

    run_data(body, store, tmp_path)
    assert store.objects[KEY].data == model
    assert store.calls["UploadPartCopy"] >= 1
    assert store.calls["UploadPartCopy"] == 2      # parts 1 and 3 untouched
    assert store.bytes_up == 5 * MiB               # only the edited part
    assert store.bytes_up < len(original)
    assert store.bytes_down <= 5 * MiB             # only what the edited part needed
    assert not store.uploads


def test_edit_of_the_last_short_part_copies_the_others(tmp_path):
    store = CountingStore()
    original = blob(12 * MiB + 123, 5)
    store.put_sync(KEY, original)
    model = bytearray(original)

    async def body(ctx):
        f = new_file(ctx, store, existing=True)
        await f.write(len(model), b"appended")
        model.extend(b"appended")
        await f.flush()

    run_data(body, store, tmp_path)
    assert store.objects[KEY].data == model
    assert store.calls["UploadPartCopy"] == 2
    assert store.bytes_up == len(model) - 10 * MiB



@pytest.mark.parametrize("case", ["append", "read first", "under 5 MiB"])
def test_an_append_to_a_file_under_part_size_copies_its_start_server_side(tmp_path, case):
    """A file that fits one PutObject is sent whole, except when its first 5 MiB
    or more are the object's, unchanged and not fetched here: then they are
    copied server-side (part 1) and only the rest is sent (part 2)."""
    store = CountingStore()
    original = blob(3 * MiB if case == "under 5 MiB" else 10 * MiB + 7, 9)
    store.put_sync(KEY, original)
    tail = blob(MiB + 3, 10)

    async def body(ctx):
        f = new_file(ctx, store, existing=True)
        if case == "read first":
            assert await f.read(0, len(original)) == original
        await f.write(len(original), tail)
        await f.flush()
        await f.close()

    before = dict(store.calls)
    run_data(body, store, tmp_path, part_size=16 * MiB)
    calls = {k: v - before.get(k, 0) for k, v in store.calls.items()}
    assert store.objects[KEY].data == original + tail
    if case == "append":
        assert calls.get("UploadPartCopy") == 1 and calls.get("UploadPart") == 1
        assert not calls.get("PutObject") and store.bytes_down == 0
        assert store.bytes_up == len(tail)
    else:   # the bytes are here already, or too few for a part: one PUT
        assert not calls.get("UploadPartCopy") and calls.get("PutObject") == 1
        assert store.bytes_down == len(original)
        assert store.bytes_up == len(original) + len(tail)
    assert not store.uploads


@pytest.mark.parametrize("at", [0, 8 * MiB, 20 * MiB - 100])
def test_an_edit_to_a_file_under_part_size_copies_its_unchanged_ends(tmp_path, at):
    """4 KiB written into a 20 MiB file never read here: the unchanged start
    and end are copied server-side; only a 5 MiB part (S3's minimum) around
    the edit is sent, its unchanged bytes fetched from the object."""
    store = CountingStore()
    original = blob(20 * MiB, 17)
    store.put_sync(KEY, original)
    patch = blob(4096, 18)
    model = bytearray(original)
    model[at:at + len(patch)] = patch

    async def body(ctx):
        f = new_file(ctx, store, existing=True)
        await f.write(at, patch)
        await f.flush()
        await f.close()

    before = dict(store.calls)
    run_data(body, store, tmp_path, part_size=32 * MiB)
    calls = {k: v - before.get(k, 0) for k, v in store.calls.items()}
    assert store.objects[KEY].data == model
    assert not calls.get("PutObject")
    assert calls.get("UploadPart") == 1
    if at == 20 * MiB - 100:   # it reaches past the end: the start copied, the rest sent
        assert calls.get("UploadPartCopy") == 1 and store.bytes_up == len(patch)
        assert store.bytes_down == 0
    else:   # a 5 MiB part around the edit sent, what is before and after it copied
        assert calls.get("UploadPartCopy") == (1 if at == 0 else 2)
        assert store.bytes_up == 5 * MiB and store.bytes_down <= 5 * MiB
    assert not store.uploads


def test_a_server_without_upload_part_copy_gets_the_whole_file_instead(tmp_path, caplog):
    """The first refused copy is logged once; that file and every later one
    up to part_size go up in one PutObject, and nothing is left behind."""
    class NoCopy(CountingStore):
        async def upload_part_copy(self, *a, **kw):
            self.calls["UploadPartCopy"] += 1
            await trio.lowlevel.checkpoint()
            raise store_error("NotImplemented", "not here", op="UploadPartCopy", status=501)

    store = NoCopy()
    original = blob(6 * MiB, 11)
    store.put_sync(KEY, original)
    model = bytearray(original)

    async def body(ctx):
        for n in range(2):
            f = new_file(ctx, store, existing=True)
            await f.write(len(model), b"line %d" % n)
            model.extend(b"line %d" % n)
            await f.flush()
            await f.close()
        assert not ctx.small_copies

    run_data(body, store, tmp_path, part_size=16 * MiB)
    assert store.objects[KEY].data == model
    assert store.calls["UploadPartCopy"] == 1 and store.calls["PutObject"] >= 2
    assert not store.uploads
    assert sum("refused a server-side copy" in r.message for r in caplog.records) == 1

# -- failures -------------------------------------------------------------------------------
# An upload failure reaches close/fsync as an error with a meaningful errno:
# the store's own when it means something to the caller (EACCES, EDQUOT...),
# else EIO.  Nothing may be left half-done on the server.

def fails_with(exc_info, code: int) -> None:
    assert isinstance(exc_info.value, FsError)
    assert exc_info.value.errno == code, exc_info.value


def test_failed_part_upload_of_a_stream_raises_and_aborts(tmp_path):
    store = CountingStore()
    store.fail_parts = 1
    data = blob(12 * MiB, 6)
    raised = []

    async def body(ctx):
        f = new_file(ctx, store, existing=False)
        try:
            for off in range(0, len(data), MiB):
                await f.write(off, data[off:off + MiB])
            await f.flush()
        except FsError as e:
            raised.append(e)
        assert raised and raised[0].errno == errno.EIO, "the lost part must surface as EIO"
        # the data is gone: every later operation on the file fails loudly
        for op in (f.flush(), f.read(0, 10), f.write(len(data), b"x")):
            with pytest.raises(FsError) as ei:
                await op
            fails_with(ei, errno.EIO)
        await f.close()

    run_data(body, store, tmp_path)
    assert not store.uploads, "the failed multipart upload must be aborted"
    assert KEY not in store.objects


def test_failed_put_of_a_small_stream_raises_and_keeps_the_bytes(tmp_path):
    store = CountingStore()
    store.fail_puts = 1

    async def body(ctx):
        f = new_file(ctx, store, existing=False)
        await f.write(0, b"hello")
        with pytest.raises(FsError) as ei:
            await f.flush()
        fails_with(ei, errno.EIO)
        assert KEY not in store.objects
        assert f.dirty
        assert await f.read(0, 10) == b"hello"
        await f.write(5, b" world")
        await f.flush()  # retried: succeeds now
        await f.close()

    run_data(body, store, tmp_path)
    assert not store.uploads
    assert store.objects[KEY].data == b"hello world"


def test_upload_refused_by_the_store_keeps_its_errno(tmp_path):
    class Refusing(CountingStore):
        async def put(self, key, body, **kw):
            await trio.lowlevel.checkpoint()
            raise store_error("AccessDenied", op="PutObject", key=key)

    store = Refusing()

    async def body(ctx):
        f = new_file(ctx, store, existing=False)
        await f.write(0, b"secret")
        with pytest.raises(FsError) as ei:
            await f.flush()
        fails_with(ei, errno.EACCES)
        await f.close()

    run_data(body, store, tmp_path)


def test_failed_staged_multipart_upload_raises_aborts_and_can_be_retried(tmp_path):
    store = CountingStore()
    original = blob(15 * MiB, 7)
    store.put_sync(KEY, original)
    model = bytearray(original)

    async def body(ctx):
        f = new_file(ctx, store, existing=True)
        await f.write(6 * MiB, b"x" * 100)
        model[6 * MiB:6 * MiB + 100] = b"x" * 100
        store.fail_parts = 1
        with pytest.raises(FsError) as ei:
            await f.flush()
        fails_with(ei, errno.EIO)
        assert not store.uploads, "the failed multipart upload must be aborted"
        assert store.objects[KEY].data == original, "a failed upload changes nothing"
        assert f.dirty, "a staged file stays dirty after a failed upload"
        await f.flush()  # retried: succeeds now
        assert store.objects[KEY].data == model
        await f.close()

    run_data(body, store, tmp_path)
    assert not store.uploads


def test_failed_staged_put_raises_and_can_be_retried(tmp_path):
    store = CountingStore()
    store.put_sync(KEY, b"hello world")

    async def body(ctx):
        f = new_file(ctx, store, existing=True)
        await f.write(0, b"J")
        store.fail_puts = 1
        with pytest.raises(FsError) as ei:
            await f.flush()
        fails_with(ei, errno.EIO)
        assert store.objects[KEY].data == b"hello world"
        await f.flush()
        assert store.objects[KEY].data == b"Jello world"
        await f.close()

    run_data(body, store, tmp_path)


# -- prefetch --------------------------------------------------------------------------------

def make_object(store: MemoryStore, size: int, seed: int) -> tuple[bytes, str]:
    data = blob(size, seed)
    store.put_sync(KEY, data)
    return data, store.objects[KEY].etag


def test_sequential_reads_grow_the_window_and_fetch_each_byte_once(tmp_path):
    store = CountingStore()
    data, etag = make_object(store, 40 * MiB, 8)
    chunk = 128 * KiB  # the kernel's readahead unit

    async def body(ctx):
        pf = Prefetcher(ctx, lambda: KEY, etag, len(data))
        out = []
        for off in range(0, len(data), chunk):
            out.append(await pf.read(off, chunk))
        assert pf.window == ctx.prefetch_max, "the window grows to prefetch_max"
        assert b"".join(out) == data
        assert await pf.read(len(data), chunk) == b""
        pf.close()

    run_data(body, store, tmp_path, read_part_size=4 * MiB, prefetch_max=16 * MiB)
    sizes = [e - s for s, e in store.gets]
    assert store.gets[0] == (0, FIRST_WINDOW), "first GET is 1 MiB + 128 KiB"
    assert sizes[1] > sizes[0] and max(sizes) == 4 * MiB, "GETs grow to read_part_size"
    assert all(n <= 4 * MiB for n in sizes)
    # each byte fetched once: no overlapping or repeated GETs
    assert store.bytes_down == len(data)
    ranges = sorted(store.gets)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(ranges, ranges[1:]))


def test_random_reads_fetch_a_block_whole_at_its_third_read_and_counts_stay_bounded(tmp_path):
    from objectfs.data import prefetch as pm
    from objectfs.tier.store import ObjectRef

    size = 1 << 40

    async def body(ctx):
        pf = Prefetcher(ctx, lambda: KEY, '"e"', size)
        pf.tier_ref = ObjectRef("ns", KEY, '"e"', size)  # as with the local tier
        pf.last_end = 4096  # past the first read (at 0: a sequential start)
        touch = [pf._touch(off, off + 4096) for off in (5 * MiB, 9 * MiB, 5 * MiB + 8192,
                                                        5 * MiB + 65536, 5 * MiB + 4096)]
        assert touch == [pm.FIRST_TOUCH] * 3 + [pm.LATER_TOUCH] * 2
        # a read across two blocks is hot if either is
        assert pf._touch(6 * MiB - 100, 6 * MiB + 100) == pm.LATER_TOUCH
        for b in range(pm.TOUCHED_MAX + 10):
            pf._touch((b + 100) * MiB, (b + 100) * MiB + 4096)
            assert len(pf.touched) <= pm.TOUCHED_MAX
        pf.close()

    run_data(body, CountingStore(), tmp_path)


def test_a_read_within_one_segment_is_a_view_of_it_not_a_copy(tmp_path):
    store = CountingStore()
    data, etag = make_object(store, 12 * MiB, 10)

    async def body(ctx):
        pf = Prefetcher(ctx, lambda: KEY, etag, len(data))
        owners = []
        for off in range(0, len(data), MiB):
            got = await pf.read(off, MiB)
            assert got == data[off:off + MiB]
            if isinstance(got, memoryview):
                owners.append(id(got.obj))
        pf.close()
        return owners

    owners = run_data(body, store, tmp_path, read_part_size=4 * MiB, prefetch_max=8 * MiB)
    # 1 MiB reads of 4 MiB segments: all but the reads that straddle two
    # segments are views of a segment's bytes, never copies
    assert len(owners) >= 12 - len(store.gets), owners
    assert len(set(owners)) <= len(store.gets)


def test_random_small_reads_do_not_fetch_megabytes(tmp_path):
    store = CountingStore()
    data, etag = make_object(store, 64 * MiB, 9)
    rng = random.Random(1)
    offsets = [rng.randrange(0, len(data) - 4096) for _ in range(100)]

    async def body(ctx):
        pf = Prefetcher(ctx, lambda: KEY, etag, len(data))
        for off in offsets:
            assert await pf.read(off, 4096) == data[off:off + 4096]
        pf.close()

    run_data(body, store, tmp_path)
    per_read = store.bytes_down / len(offsets)
    assert per_read <= 128 * KiB, f"{per_read / KiB:.0f} KiB fetched per 4 KiB random read"
    assert store.bytes_down < 16 * MiB


def test_a_random_read_of_cached_blocks_is_answered_at_once(tmp_path, monkeypatch):
    """With the local tier, a random read whose bytes are cached (and in the
    page cache) is served on the event loop: no GET, no task, no worker
    thread, whose round trip costs more than the read.  Bytes only on disk
    are read through a thread, as before."""
    import os

    from objectfs.tier.store import TierStore
    from objectfs.tier.tier import Tier

    store = CountingStore()
    data, etag = make_object(store, 8 * MiB, 12)
    rng = random.Random(4)
    offsets = [rng.randrange(MiB, len(data) - 4096) for _ in range(40)] + [3 * MiB - 100]
    real_run_sync = trio.to_thread.run_sync

    async def no_thread(*a, **kw):
        raise AssertionError("a cached random read went through a worker thread")

    async def body(ctx):
        ctx.tier = Tier(TierStore(str(tmp_path / "tier"), 64 * MiB), "ns")
        pf = Prefetcher(ctx, lambda: KEY, etag, len(data))
        ref = pf.tier_ref
        ctx.tier.store.put(ref, [(b, data[b * MiB:(b + 1) * MiB]) for b in range(8)])
        spawned = []
        start_soon = ctx.nursery.start_soon
        monkeypatch.setattr(ctx.nursery, "start_soon",
                            lambda *a, **kw: (spawned.append(a), start_soon(*a, **kw)))
        monkeypatch.setattr(trio.to_thread, "run_sync", no_thread)
        for off in offsets:  # the last one spans blocks 2 and 3
            assert await pf.read(off, 4096) == data[off:off + 4096]
        assert pf.gets == 0 and store.gets == [] and spawned == []
        assert ctx.tier.hits == len(offsets) + 1

        monkeypatch.setattr(trio.to_thread, "run_sync", real_run_sync)
        fd = os.open(ctx.tier.store.path(ref.oid, 5), os.O_RDONLY)
        try:  # block 5 on disk only: read through a thread, still no GET
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        off = 5 * MiB + 12345
        assert await pf.read(off, 4096) == data[off:off + 4096]
        assert pf.gets == 1 and store.gets == [] and len(spawned) == 1
        pf.close()
        ctx.tier.store.close()

    run_data(body, store, tmp_path)


def test_reads_pinned_to_an_etag_are_stale_after_replacement(tmp_path):
    store = CountingStore()
    data, etag = make_object(store, 20 * MiB, 10)

    async def body(ctx):
        pf = Prefetcher(ctx, lambda: KEY, etag, len(data))
        assert await pf.read(0, 128 * KiB) == data[:128 * KiB]
        store.put_sync(KEY, blob(20 * MiB, 11))  # another client replaces it
        with pytest.raises(Stale):
            for off in range(128 * KiB, len(data), 128 * KiB):
                got = await pf.read(off, 128 * KiB)
                # anything served before the error is the old version, never a mix
                assert got == data[off:off + 128 * KiB]
        # a fresh random read is refused too
        with pytest.raises(Stale):
            await pf.read(15 * MiB, 10)
        pf.close()

    run_data(body, store, tmp_path)


def test_object_shorter_than_opened_is_stale(tmp_path):
    store = CountingStore()
    data, _ = make_object(store, 2 * MiB, 12)

    async def body(ctx):
        pf = Prefetcher(ctx, lambda: KEY, None, 3 * MiB)  # believes it is longer
        with pytest.raises(Stale):
            await pf.read(2 * MiB - 10, 100)
        pf.close()

    run_data(body, store, tmp_path)


def test_filedata_fill_is_pinned_to_the_base_etag(tmp_path):
    store = CountingStore()
    data, _ = make_object(store, 3 * MiB, 13)

    async def body(ctx):
        f = new_file(ctx, store, existing=True)
        await f.write(0, b"x")
        store.put_sync(KEY, blob(3 * MiB, 14))
        with pytest.raises(Stale):
            await f.read(2 * MiB, 10)
        await f.close()

    run_data(body, store, tmp_path)


def test_a_get_failing_as_the_mount_stops_goes_to_its_reader_not_the_mount(tmp_path):
    """At unmount the mount's nursery is cancelled.  A read-ahead GET that
    fails at that moment (its request split over tasks: one fails, another
    is cancelled) ends with its error and the cancellation in one group.
    The error is the segment's, for its reader; the cancellation goes on and
    the mount's nursery ends quietly (an error there ended the mount loop
    with a traceback)."""
    class SplitStore(CountingStore):
        async def get(self, key, start=0, end=None, *, etag=None):
            async with trio.open_nursery() as nursery:
                async def fail():
                    self.started.set()
                    await self.go.wait()
                    raise store_error("InternalError", "injected", op="GetObject", key=key)

                nursery.start_soon(fail)
                nursery.start_soon(trio.sleep_forever)

    store = SplitStore()
    data, etag = make_object(store, 4 * MiB, 16)
    segments = []

    async def body(ctx):
        store.started, store.go = trio.Event(), trio.Event()
        pf = Prefetcher(ctx, lambda: KEY, etag, len(data))

        async def reader():
            with contextlib.suppress(FsError):
                await pf.read(0, 128 * KiB)

        ctx.nursery.start_soon(reader)
        await store.started.wait()
        segments.extend(pf.segments)
        store.go.set()                    # the GET fails ...
        ctx.nursery.cancel_scope.cancel()  # ... as the mount stops
        pf.close()

    run_data(body, store, tmp_path)
    assert segments and all(seg.done.is_set() for seg in segments)
    assert getattr(segments[0].error, "code", None) == "InternalError"


def test_prefetch_closed_early_releases_its_budget(tmp_path):
    store = CountingStore()
    data, etag = make_object(store, 32 * MiB, 15)

    async def body(ctx):
        pf = Prefetcher(ctx, lambda: KEY, etag, len(data))
        for off in range(0, 4 * MiB, 128 * KiB):
            await pf.read(off, 128 * KiB)
        assert ctx.read_budget.used > 0, "read-ahead should be in flight or held"
        pf.close()  # segments still in flight release when they land

    run_data(body, store, tmp_path)


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk.on = True``: every write to a staging file fails as on a
    full disk (ENOSPC), leaving the file as it was."""
    from objectfs.data.staging import Staging
    from objectfs.errors import NoSpace

    class Switch:
        on = False

    write = Staging.write

    def failing(self, *a, **kw):
        if Switch.on:
            raise NoSpace("staging disk full while writing")
        return write(self, *a, **kw)

    monkeypatch.setattr(Staging, "write", failing)
    return Switch


@pytest.mark.parametrize("disk", ["room", "full"])
def test_closing_a_staged_file_while_idle_streams_hold_the_budget(tmp_path, full_disk, disk):
    """One task writes two files in turn (streams holding most of the
    budget) and then closes a staged file: the streams' buffers move to
    disk instead of the close waiting for them forever.  With the staging
    disk full they cannot move, and the close takes its budget over the
    limit rather than wait for ever (their writer is the one closing)."""
    store = CountingStore()
    datas = [blob(PART - 100 * KiB, 1), blob(PART - 100 * KiB, 2)]
    staged = blob(PART + MiB, 3)

    async def body(ctx):
        f = FileData(ctx, lambda: "staged", lambda: HEADERS, base_etag=None, base_size=0)
        await f.write(1, staged[1:])  # not from offset 0: staged
        await f.write(0, b"\0")
        assert f.staging is not None
        streams = [FileData(ctx, (lambda k=f"s{i}": k), lambda: HEADERS, base_etag=None,
                            base_size=0) for i in range(2)]
        for s, data in zip(streams, datas):
            await s.write(0, data)
        full_disk.on = disk == "full"
        with trio.fail_after(20):
            await f.flush()
        if disk == "full":
            assert all(s.stream is not None for s in streams)   # still in memory
        else:
            assert all(s.staging is not None for s in streams)
        await f.close()
        for s in streams:
            await s.flush()
            await s.close()

    run_data(body, store, tmp_path, write_buffer_memory=2 * PART)
    assert store.objects["staged"].data == b"\0" + staged[1:]
    assert [store.objects[f"s{i}"].data for i in range(2)] == datas


def test_closing_a_staged_file_while_an_idle_multipart_stream_holds_the_budget(tmp_path):
    """The idle stream has sent a part and holds the rest of the budget; the
    staged file's parts take every upload slot waiting for budget.  Moving
    the stream to disk completes its multipart upload, which needs a slot:
    the parts wait for budget holding none, so the close does not hang."""
    store = CountingStore()
    streamed = blob(PART + 4 * MiB, 1)
    staged = blob(4 * PART, 2)

    async def body(ctx):
        s = FileData(ctx, lambda: "streamed", lambda: HEADERS, base_etag=None, base_size=0)
        await s.write(0, streamed[:PART])
        while ctx.write_budget.used:  # the stream's first part is sent
            await trio.sleep(0.01)
        await s.write(PART, streamed[PART:])
        assert s.stream is not None and s.stream.started
        f = FileData(ctx, lambda: "staged", lambda: HEADERS, base_etag=None, base_size=0)
        await f.write(1, staged[1:])  # not from offset 0: staged
        await f.write(0, staged[:1])
        with trio.fail_after(20):
            await f.flush()
        await f.close()
        await s.flush()
        await s.close()

    run_data(body, store, tmp_path, write_buffer_memory=PART + 2 * MiB, upload_concurrency=4)
    assert store.objects["staged"].data == staged
    assert store.objects["streamed"].data == streamed


@pytest.mark.parametrize("after", ["close", "space-freed-then-write"])
def test_a_stream_that_cannot_move_to_a_full_staging_disk_keeps_its_bytes(
        tmp_path, full_disk, after):
    """A write that is not sequential moves a file written from offset 0 out
    of memory to the staging disk.  When that disk is full the write fails
    with ENOSPC and changes nothing: the bytes written before stay, in
    memory, and close stores them (or them with a later write, once there
    is room), never an empty object or zeros."""
    store = CountingStore()
    data = blob(512 * KiB, 7)

    async def body(ctx):
        f = new_file(ctx, store, existing=False)
        await f.write(0, data)
        full_disk.on = True
        with pytest.raises(FsError) as e:
            await f.write(0, b"HDR!")
        assert e.value.errno == errno.ENOSPC
        assert f.size == len(data)
        if after == "space-freed-then-write":
            full_disk.on = False
            await f.write(0, b"HDR!")
        await f.flush()
        await f.close()

    run_data(body, store, tmp_path)
    want = data if after == "close" else b"HDR!" + data[4:]
    assert store.objects[KEY].data == want


def test_readers_beyond_the_read_budget_fetch_only_what_they_read(tmp_path):
    """Many sequential readers at once: what the read budget cannot cover is
    fetched read by read, never whole segments outside the budget."""
    store = CountingStore()
    data, etag = make_object(store, 24 * MiB, 9)
    chunk = 128 * KiB

    async def body(ctx):
        pfs = [Prefetcher(ctx, lambda: KEY, etag, len(data)) for _ in range(8)]
        outs = [[] for _ in pfs]
        for off in range(0, len(data), chunk):
            for pf, out in zip(pfs, outs):
                out.append(await pf.read(off, chunk))
                unaccounted = sum(s.end - s.start for p in pfs for s in p.segments
                                  if not s.held and not s.dropped)
                assert unaccounted <= len(pfs) * FIRST_WINDOW
        assert all(b"".join(out) == data for out in outs)
        for pf in pfs:
            pf.close()

    # read memory 4 x prefetch_max = 16 MiB for 8 readers of 4 MiB segments
    run_data(body, store, tmp_path, read_part_size=4 * MiB, prefetch_max=4 * MiB)
    assert max(e - s for s, e in store.gets) <= 4 * MiB
