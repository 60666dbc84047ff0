"""Regressions of the filesystem core, each once a real bug, against MemoryStore."""

from __future__ import annotations

import errno
from dataclasses import replace
import os
import stat

import pytest
import trio
import trio.testing

from objectfs.config import build
from objectfs.errors import ConfigError, FsError, store_error
from objectfs.filesystem import Caller, Filesystem, SetAttr
from objectfs.store.base import TiB
from objectfs.store.memory import MemoryStore

MiB = 1 << 20
KiB = 1 << 10
CALLER = Caller(uid=os.getuid(), gid=os.getgid())
RW = os.O_RDWR | os.O_CREAT
F = stat.S_IFREG | 0o644


def run_fs(tmp_path, body, *opts, store=None):
    store = store or MemoryStore()
    cfg = build("bucket", "", "/mnt", o_options=[f"staging_dir={tmp_path}", "part_size=5M",
                                                  f"cache_dir={tmp_path}/cache", *opts])

    async def main():
        async with trio.open_nursery() as n:
            fs = Filesystem(store, cfg)
            await fs.start(n)
            await body(fs, store)
            n.cancel_scope.cancel()
        fs.close()

    trio.run(main)
    return store


def stored_mode(store, key):
    return int(store.objects[key].metadata["mode"])


# -- a multipart upload is bound to the key it started at -------------------------------

def test_rename_during_streaming_does_not_clobber_a_new_file_at_the_old_name(tmp_path):
    # logrotate's "create" mode: rename the open log, create a new one, go on writing
    old = os.urandom(6 * MiB)

    async def body(fs, store):
        h, _ = await fs.create(1, b"app.log", F, RW, CALLER)
        await fs.write(h.fh, 0, old[:5 * MiB + 100])  # a part is on its way
        await fs.rename(1, b"app.log", 1, b"app.log.1", 0)
        h2, _ = await fs.create(1, b"app.log", F, RW, CALLER)
        await fs.write(h2.fh, 0, b"new log\n")
        await fs.flush(h2.fh)
        await fs.release(h2.fh)
        await fs.write(h.fh, 5 * MiB + 100, old[5 * MiB + 100:])
        await fs.flush(h.fh)
        await fs.release(h.fh)

    store = run_fs(tmp_path, body)
    assert store.objects["app.log"].data == b"new log\n"
    assert store.objects["app.log.1"].data == old
    assert not store.uploads


@pytest.mark.parametrize("then", ["new-file-at-old-name", "read", "spill"])
def test_a_stream_renamed_before_its_first_part_uploads_to_the_new_name(tmp_path, then):
    # The rename comes while the whole file is still in the part buffer (no
    # multipart upload yet, so the rename has nothing to complete); the part
    # that fills after it must start the multipart upload at the new name,
    # not the old one: there it overwrote (and the close's move then
    # deleted) a file created at the old name, and a read that converted
    # the stream looked for its base at the new name: ESTALE, then EIO at
    # close, and the file never reached S3.
    data = os.urandom(6 * MiB)

    async def body(fs, store):
        h, _ = await fs.create(1, b"app.log", F, RW, CALLER)
        await fs.write(h.fh, 0, data[:MiB])               # buffered, nothing sent
        await fs.rename(1, b"app.log", 1, b"app.log.1", 0)
        await fs.write(h.fh, MiB, data[MiB:5 * MiB + 100])  # part 1 fills and ships
        if then == "new-file-at-old-name":
            h2, _ = await fs.create(1, b"app.log", F, RW, CALLER)
            await fs.write(h2.fh, 0, b"new log\n")
            await fs.flush(h2.fh)
            await fs.release(h2.fh)
        elif then == "read":
            assert await fs.read(h.fh, 0, 100) == data[:100]  # converts the stream
        else:
            assert await h.node.data.spill()   # as the write budget does
        await fs.write(h.fh, 5 * MiB + 100, data[5 * MiB + 100:])
        await fs.flush(h.fh)
        await fs.release(h.fh)

    store = run_fs(tmp_path, body)
    assert store.objects["app.log.1"].data == data
    if then == "new-file-at-old-name":
        assert sorted(store.objects) == ["app.log", "app.log.1"]
        assert store.objects["app.log"].data == b"new log\n"
    else:
        assert sorted(store.objects) == ["app.log.1"]
    assert not store.uploads


@pytest.mark.parametrize("case", ["unlink-open", "unlink-after-close", "chmod", "rename-after-truncate",
                                  "rename-then-read", "dir-rename-then-write"])
def test_a_converted_stream_is_known_to_the_namespace(tmp_path, case):
    data = os.urandom(6 * MiB)

    async def body(fs, store):
        parent = 1
        if case == "dir-rename-then-write":
            parent = (await fs.mkdir(1, b"d", 0o755, CALLER)).ino
        h, node = await fs.create(parent, b"f", F, RW, CALLER)
        await fs.write(h.fh, 0, data)  # a 5 MiB part was sent: a multipart upload exists
        if case == "unlink-open":
            await fs.unlink(1, b"f")
            assert await fs.read(h.fh, 0, 10) == data[:10]
            await fs.release(h.fh)
            assert "f" not in store.objects
        elif case == "unlink-after-close":
            await fs.read(h.fh, 0, 10)  # converts the stream
            await fs.flush(h.fh)
            await fs.release(h.fh)
            await fs.unlink(1, b"f")
            assert "f" not in store.objects
        elif case == "chmod":
            await fs.read(h.fh, 0, 10)
            await fs.setattr(node.ino, SetAttr(mode=0o600))
            await fs.flush(h.fh)
            await fs.release(h.fh)
            assert stored_mode(store, "f") == stat.S_IFREG | 0o600
        elif case == "rename-after-truncate":
            await fs.setattr(node.ino, SetAttr(size=MiB), h.fh)
            await fs.rename(1, b"f", 1, b"new", 0)
            await fs.flush(h.fh)
            await fs.release(h.fh)
            assert sorted(store.objects) == ["new"]
            assert store.objects["new"].data == data[:MiB]
        elif case == "rename-then-read":
            await fs.rename(1, b"f", 1, b"new", 0)
            assert await fs.read(h.fh, 0, 100) == data[:100]
            await fs.flush(h.fh)
            await fs.release(h.fh)
            assert sorted(store.objects) == ["new"]
            assert store.objects["new"].data == data
        else:
            await fs.rename(1, b"d", 1, b"e", 0)
            await fs.write(h.fh, 10, b"PATCH")
            await fs.flush(h.fh)
            await fs.release(h.fh)
            assert sorted(store.objects) == ["e/", "e/f"]
            assert store.objects["e/f"].data == data[:10] + b"PATCH" + data[15:]
        assert not store.uploads

    run_fs(tmp_path, body)


def test_attributes_set_before_the_multipart_upload_starts_are_stored(tmp_path):
    async def body(fs, store):
        h, node = await fs.create(1, b"f", stat.S_IFREG | 0o600, RW, CALLER)
        await fs.write(h.fh, 0, b"header")
        await fs.setattr(node.ino, SetAttr(mode=0o644))
        await fs.write(h.fh, 6, os.urandom(6 * MiB))
        await fs.flush(h.fh)
        await fs.release(h.fh)
        assert stored_mode(store, "f") == stat.S_IFREG | 0o644

    run_fs(tmp_path, body)


# -- the namespace -----------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["unlink", "rename"])
def test_a_listing_in_flight_does_not_undo_a_local_change(tmp_path, op):
    gate = trio.Event()
    started = trio.Event()

    class SlowListing(MemoryStore):
        async def list_page(self, prefix, **kw):
            page = await super().list_page(prefix, **kw)
            if prefix == "" and not started.is_set():  # hold back the first listing
                started.set()
                await gate.wait()
            return page

    store = SlowListing()
    store.put_sync("f", b"x")

    async def body(fs, store):
        h = await fs.opendir(1)
        async with trio.open_nursery() as n:
            n.start_soon(fs.readdir, h.fh, 0)
            await started.wait()
            if op == "unlink":
                await fs.unlink(1, b"f")
            else:
                await fs.rename(1, b"f", 1, b"g", 0)
            gate.set()
        names = sorted(fs.table.root.children)
        assert names == ([] if op == "unlink" else ["g"])
        if op == "rename":
            assert (await fs.lookup(1, b"g")).name == "g"

    run_fs(tmp_path, body, store=store)


@pytest.mark.parametrize("then", ["rename", "unlink"])
def test_replacing_an_object_with_a_file_not_yet_uploaded_removes_it(tmp_path, then):
    store = MemoryStore()
    store.put_sync("b", b"old contents")

    async def body(fs, store):
        h, _ = await fs.create(1, b"a", F, RW, CALLER)
        await fs.lookup(1, b"b")
        await fs.rename(1, b"a", 1, b"b", 0)
        if then == "rename":
            await fs.rename(1, b"b", 1, b"c", 0)
        else:
            await fs.unlink(1, b"b")
        await fs.flush(h.fh)
        await fs.release(h.fh)

    run_fs(tmp_path, body, store=store)
    assert sorted(store.objects) == (["c"] if then == "rename" else [])


# -- the data path -----------------------------------------------------------------------------

class Counting(MemoryStore):
    def __init__(self):
        super().__init__()
        self.gets = []
        self.uploaded = 0

    async def get(self, key, start=0, end=None, *, etag=None):
        self.gets.append((start, end))
        return await super().get(key, start, end, etag=etag)

    async def upload_part(self, key, upload_id, number, body):
        self.uploaded += len(body)
        return await super().upload_part(key, upload_id, number, body)


def test_sequential_prefetch_fetches_whole_segments(tmp_path):
    store = Counting()
    data = os.urandom(40 * MiB)
    store.put_sync("big", data)

    async def body(fs, store):
        node = await fs.lookup(1, b"big")
        h = await fs.open(node.ino, os.O_RDONLY)
        out = [await fs.read(h.fh, off, 128 * KiB) for off in range(0, len(data), 128 * KiB)]
        assert b"".join(out) == data
        await fs.release(h.fh)

    run_fs(tmp_path, body, "read_part_size=4M", "prefetch_max=16M", store=store)
    # 40 MiB in 4 MiB segments, plus the small growing first GETs
    assert len(store.gets) <= 16, [(e - s) // KiB for s, e in store.gets]


def test_a_read_larger_than_the_first_window(tmp_path):
    store = MemoryStore()
    data = os.urandom(3 * MiB)
    store.put_sync("f", data)

    async def body(fs, store):
        node = await fs.lookup(1, b"f")
        h = await fs.open(node.ino, os.O_RDONLY)
        assert await fs.read(h.fh, 0, 2 * MiB) == data[:2 * MiB]
        await fs.release(h.fh)

    run_fs(tmp_path, body, store=store)


def test_reading_a_dirty_file_keeps_untouched_parts_server_side(tmp_path):
    store = Counting()
    data = os.urandom(15 * MiB)
    store.put_sync("f", data)

    async def body(fs, store):
        node = await fs.lookup(1, b"f")
        h = await fs.open(node.ino, os.O_RDWR)
        await fs.write(h.fh, 7 * MiB, b"x")
        assert await fs.read(h.fh, 12 * MiB, 4096) == data[12 * MiB:12 * MiB + 4096]
        await fs.flush(h.fh)
        await fs.release(h.fh)

    run_fs(tmp_path, body, store=store)
    assert store.calls["UploadPartCopy"] == 2
    assert store.uploaded == 5 * MiB
    assert store.objects["f"].data == data[:7 * MiB] + b"x" + data[7 * MiB + 1:]


def test_writes_past_five_tib_are_refused(tmp_path):
    async def body(fs, store):
        h, _ = await fs.create(1, b"f", F, RW, CALLER)
        with pytest.raises(FsError) as e:
            await fs.write(h.fh, 5 * TiB, b"x")
        assert e.value.errno == 27  # EFBIG
        await fs.release(h.fh)

    run_fs(tmp_path, body)


@pytest.mark.parametrize("opt", ["metadata_ttl=nan", "negative_ttl=nan", "read_timeout=nan",
                                 "connect_timeout=inf", "endpoint_url", "fsname", "log_file",
                                 "staging_dir", "profile", "log_file="])
def test_config_refuses_non_finite_durations_and_valueless_strings(opt):
    with pytest.raises(ConfigError):
        build("b", "", "/m", o_options=[opt])


def test_lookups_in_a_small_directory_cost_one_listing(tmp_path):
    store = MemoryStore()
    for i in range(20):
        store.put_sync(f"d/existing{i}", b"x", {"mode": str(stat.S_IFREG | 0o600)})

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        before = dict(store.calls)
        for i in range(50):  # cp into the directory: each new name is looked up first
            with pytest.raises(FsError):
                await fs.lookup(d.ino, f"new{i}".encode())
        node = await fs.lookup(d.ino, b"existing3")
        assert stat.S_IMODE(node.attr.mode) == 0o600  # stored attributes, not listing defaults
        used = {k: store.calls[k] - before.get(k, 0) for k in store.calls}
        assert used.get("ListObjectsV2", 0) == 1, used
        # the existing file's metadata, and the HEAD sent beside the listing
        # for the first name in case it was a file (it was not: 404)
        assert used.get("HeadObject", 0) == 2, used

    run_fs(tmp_path, body, store=store)


class HeadBeside(MemoryStore):
    """A store whose listings of ``d/`` wait until a HEAD of a key in d has
    answered: a lookup that sent them one after the other times out."""

    def __init__(self):
        super().__init__()
        self.headed = trio.Event()
        self.on_head = None  # called after a HEAD under d/ answers

    async def head(self, key, **kw):
        try:
            return await super().head(key, **kw)
        finally:
            if key.startswith("d/") and key != "d/":  # not d's own marker
                self.headed.set()
                if self.on_head is not None:
                    self.on_head(key)

    async def list_page(self, prefix, **kw):
        if prefix == "d/":
            with trio.fail_after(5):
                await self.headed.wait()
        return await super().list_page(prefix, **kw)


@pytest.mark.parametrize("what", ["file", "small file", "missing", "directory", "symlink"])
def test_a_lookup_in_a_directory_not_listed_sends_its_head_beside_the_listing(tmp_path, what):
    """The first lookup in a directory waits for one round trip, not a
    listing and then a HEAD: both go out together, and the HEAD's answer
    gives the file its stored attributes.  Whatever the name turns out to
    be, the answer is the one the listing and the HEAD say together.  A
    file the listing shows small (a symlink's object is one) is then fetched
    whole, as small_file_prefetch does after a listing: one request more."""
    store = HeadBeside()
    store.put_sync("d/other", b"y")
    if what == "file":
        store.put_sync("d/x", b"x" * (32 * KiB), {"mode": str(stat.S_IFREG | 0o600)})
    elif what == "small file":
        store.put_sync("d/x", b"x" * 100, {"mode": str(stat.S_IFREG | 0o600)})
    elif what == "directory":
        store.put_sync("d/x/", b"", {"mode": str(stat.S_IFDIR | 0o700)})
    elif what == "symlink":
        store.put_sync("d/x", b"target", {"mode": str(stat.S_IFLNK | 0o777)})

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        before = dict(store.calls)
        if what == "missing":
            with pytest.raises(FsError) as e:
                await fs.lookup(d.ino, b"x")
            assert e.value.errno == errno.ENOENT
        else:
            node = await fs.lookup(d.ino, b"x")
            want = {"file": stat.S_IFREG | 0o600, "small file": stat.S_IFREG | 0o600,
                    "directory": stat.S_IFDIR | 0o700, "symlink": stat.S_IFLNK | 0o777}[what]
            assert node.attr.mode == want
        used = _used(store, before)
        # a directory's marker is asked for once the listing shows it one,
        # a small file's body once the listing shows its size
        assert used == {"ListObjectsV2": 1,
                        "HeadObject": 1 if what in ("file", "missing") else 2}, used

    run_fs(tmp_path, body, store=store)


def test_a_head_beside_the_listing_of_an_object_replaced_meanwhile_is_asked_again(tmp_path):
    """The HEAD sent beside a listing answered for a version the listing no
    longer shows: the lookup asks again and shows the new version."""
    store = HeadBeside()
    old, new = b"o" * (20 * KiB), b"n" * (30 * KiB)   # not fetched whole (small_file_prefetch)
    store.put_sync("d/x", old, {"mode": str(stat.S_IFREG | 0o600)})

    def replace(key):
        if key == "d/x" and store.objects["d/x"].data == old:
            store.put_sync("d/x", new, {"mode": str(stat.S_IFREG | 0o640)})

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        store.on_head = replace
        before = dict(store.calls)
        node = await fs.lookup(d.ino, b"x")
        assert (node.attr.mode, node.attr.size) == (stat.S_IFREG | 0o640, len(new))
        assert _used(store, before) == {"ListObjectsV2": 1, "HeadObject": 2}

    run_fs(tmp_path, body, store=store)


def test_a_big_directory_is_listed_whole_once_names_keep_missing(tmp_path):
    from objectfs.namespace.namespace import LIST_AFTER_MISSES

    store = MemoryStore()
    for i in range(1001):  # more than one listing page
        store.put_sync(f"big/f{i:04d}", b"")

    async def body(fs, store):
        d = await fs.lookup(1, b"big")
        before = dict(store.calls)
        for i in range(LIST_AFTER_MISSES):
            with pytest.raises(FsError):
                await fs.lookup(d.ino, f"new{i}".encode())
        # one page to learn it is big, a HEAD + one-key LIST for each of the
        # first few names (or a window listing, see SCAN_AFTER), then one
        # whole listing (2 pages) answers them and the rest
        with pytest.raises(FsError):
            await fs.lookup(d.ino, f"new{LIST_AFTER_MISSES}".encode())
        used = _used(store, before)
        assert used["ListObjectsV2"] + used["HeadObject"] <= 1 + 2 * LIST_AFTER_MISSES + 2, used
        before = dict(store.calls)
        for i in range(LIST_AFTER_MISSES + 1, 50):
            with pytest.raises(FsError):
                await fs.lookup(d.ino, f"new{i}".encode())
        assert _used(store, before) == {}

    run_fs(tmp_path, body, store=store)


def _huge_dir(store):
    """A directory too big to list for a lookup (more than
    MAX_LOOKUP_LIST_PAGES pages), its files last modified a minute ago (so a
    listing vouches for an unchanged one, see _merge); their names."""
    from objectfs.namespace.namespace import MAX_LOOKUP_LIST_PAGES

    n = MAX_LOOKUP_LIST_PAGES * 1000 + 10
    for i in range(n):
        key = f"huge/f{i:05d}"
        store.put_sync(key, b"x", {"mode": str(stat.S_IFREG | 0o600)})
        store.objects[key].mtime_ns -= 60 * 10**9
    return [f"f{i:05d}" for i in range(n)]


def _used(store, before):
    return {k: v for k in store.calls if (v := store.calls[k] - before.get(k, 0))}


@pytest.mark.parametrize("order", ["sparse", "shuffled"])
def test_stale_files_of_a_huge_directory_cost_one_request_each(tmp_path, order):
    """Once the entries of a directory too big to list for a lookup are
    stale, a file looked up again (or its attributes asked for) costs one
    request, not a HEAD and a LIST, when the lookups are not a scan (names
    far apart, or in no order); a bounded listing is not thrown away again
    and again; a file deleted meanwhile is still found gone."""
    import random

    class Store(MemoryStore):
        whole_pages = 0  # first pages of the whole directory: "still too big?"
        windows = 0      # window listings (see SCAN_AFTER)

        async def list_page(self, prefix, **kw):
            self.whole_pages += not kw.get("start_after") and not kw.get("token") \
                and kw.get("max_keys", 1000) == 1000
            self.windows += bool(kw.get("start_after"))
            return await super().list_page(prefix, **kw)

    store = Store()
    all_names = _huge_dir(store)
    names = [name.encode() for name in all_names[::len(all_names) // 40]]
    if order == "shuffled":
        random.Random(7).shuffle(names)

    async def body(fs, store):
        d = await fs.lookup(1, b"huge")
        first = [await fs.lookup(d.ino, name) for name in names]
        await trio.sleep(2.1)  # metadata_ttl passes: every entry is stale
        before, pages = dict(store.calls), store.whole_pages
        half = len(names) // 2
        again = [await fs.lookup(d.ino, name) for name in names[:half]]
        again += [await fs.getattr(node.ino) for node in first[half:]]
        assert again == first
        assert all(stat.S_IMODE(node.attr.mode) == 0o600 for node in again)
        used = _used(store, before)
        # a page to learn it is still too big (one each metadata_ttl: more
        # than one if the machine is slow), then one request a file
        pages = store.whole_pages - pages
        assert set(used) <= {"ListObjectsV2", "HeadObject"} and pages >= 1, used
        assert used["ListObjectsV2"] - pages + used.get("HeadObject", 0) == len(names), used
        # a window that nobody else used makes the next one wait for twice as
        # many lookups in order: not one every few lookups
        assert store.windows <= 4, store.windows
        gone = first[3]
        gone.validated_at = float("-inf")
        del store.objects[f"huge/{gone.name}"]
        with pytest.raises(FsError):
            await fs.lookup(d.ino, gone.name.encode())

    run_fs(tmp_path, body, "metadata_ttl=2", store=store)


def test_a_scan_of_a_huge_directory_lists_windows_not_a_head_a_file(tmp_path):
    """du of a directory too big to list for a lookup, once its entries are
    stale: names looked up one by one in order are refreshed by a few
    growing window listings, not a request each; what changed in S3
    meanwhile inside the windows shows (a file gone, one added, one
    rewritten), and a file created here and not uploaded yet stays."""
    from objectfs.namespace.namespace import MAX_LOOKUP_LIST_PAGES, SCAN_AFTER

    store = MemoryStore()
    names = _huge_dir(store)[:5000]

    async def body(fs, store):
        d = await fs.lookup(1, b"huge")
        fh = (await fs.opendir(d.ino)).fh
        assert len(await fs.readdir(fh, 0)) > 16000
        await fs.lookup(d.ino, names[0].encode())  # learns it is too big to list
        h, local = await fs.create(d.ino, b"f01000~mine", F, RW, CALLER)
        await trio.sleep(5.1)  # metadata_ttl passes: every entry is stale
        del store.objects["huge/f02500"]
        store.put_sync("huge/f02500+new", b"new")
        store.put_sync("huge/f03000", b"rewritten", {"mode": str(stat.S_IFREG | 0o640)})
        before = dict(store.calls)
        seen = {}
        for i, name in enumerate(names):
            try:
                seen[name] = (await fs.getattr((await fs.lookup(d.ino, name.encode())).ino)
                              if i % 2 else await fs.lookup(d.ino, name.encode()))
            except FsError:
                seen[name] = None
        used = _used(store, before)
        assert used["HeadObject"] <= SCAN_AFTER + 1, used  # + f03000's new attributes
        # a page to learn it is still too big, a bounded listing (once a
        # minute, see HUGE_RELIST_DELAY), then windows of 8, 32, 128, 512, 1000...
        assert used["ListObjectsV2"] <= 1 + MAX_LOOKUP_LIST_PAGES + 10, used
        assert seen["f02500"] is None
        assert seen["f03000"].attr.size == 9 and stat.S_IMODE(seen["f03000"].attr.mode) == 0o640
        assert all(stat.S_IMODE(seen[n].attr.mode) == 0o600 for n in names
                   if n not in ("f02500", "f03000"))
        assert (await fs.lookup(d.ino, b"f02500+new")).attr.size == 3
        assert (await fs.lookup(d.ino, b"f01000~mine")) is local
        await fs.release(h.fh)

    run_fs(tmp_path, body, "metadata_ttl=5", store=store)


def test_names_of_a_huge_directory_looked_up_in_order_cost_one_request_each(tmp_path):
    """A program opening files of a directory too big to list, by name and
    in order (a manifest), on a fresh mount: window listings tell which
    exist, so each file costs its HEAD (here a GET: small files come whole)
    and not a HEAD and a LIST; a name that is not there is answered by the
    window that covers it."""
    from objectfs.namespace.namespace import MAX_LOOKUP_LIST_PAGES

    store = MemoryStore()
    names = _huge_dir(store)[:3000:3]
    del store.objects["huge/f00300"]

    async def body(fs, store):
        d = await fs.lookup(1, b"huge")
        before = dict(store.calls)
        found = 0
        for name in names:
            try:
                node = await fs.lookup(d.ino, name.encode())
            except FsError:
                assert name == "f00300"
                continue
            assert stat.S_IMODE(node.attr.mode) == 0o600
            found += 1
        assert found == len(names) - 1
        used = _used(store, before)
        per_file = used.get("HeadObject", 0) + used.get("GetObject", 0)
        assert per_file <= found + 3, used
        assert used["ListObjectsV2"] <= 1 + MAX_LOOKUP_LIST_PAGES + 10, used
        # new names in order among them (rsync into the directory): a window
        # answers them missing without a request, until metadata_ttl
        before = dict(store.calls)
        for i in range(2995, 3010):
            with pytest.raises(FsError):
                await fs.lookup(d.ino, f"f{i:05d}.new".encode())
            await fs.lookup(d.ino, f"f{i:05d}".encode())
        used = _used(store, before)
        assert used.get("ListObjectsV2", 0) <= 1, used
        assert used.get("HeadObject", 0) + used.get("GetObject", 0) <= 15, used

    run_fs(tmp_path, body, store=store)


def test_a_window_that_ends_before_a_directory_does_not_hide_it(tmp_path):
    """A directory d of a huge directory is listed at d/, after files such as
    d.0 ... d.9: a window that ends among them does not answer for d."""
    store = MemoryStore()
    names = _huge_dir(store)
    for k in range(10):
        store.put_sync(f"huge/{names[50]}d.{k}", b"")
    store.put_sync(f"huge/{names[50]}d/inside", b"")

    async def body(fs, store):
        d = await fs.lookup(1, b"huge")
        for n in names[47:49]:
            await fs.lookup(d.ino, n.encode())
        # the third lookup in order lists a window of 8 from it: d.0 ... d.7
        assert (await fs.lookup(d.ino, f"{names[50]}d".encode())).is_dir
        assert not (await fs.lookup(d.ino, f"{names[50]}d.9".encode())).is_dir

    run_fs(tmp_path, body, store=store)


def test_a_stale_entry_of_a_freshly_listed_directory_costs_one_head(tmp_path):
    store = MemoryStore()
    store.put_sync("d/f", b"x")

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        f = await fs.lookup(d.ino, b"f")
        f.validated_at = float("-inf")  # e.g. its Last-Modified is too recent to vouch for it
        before = dict(store.calls)
        assert (await fs.lookup(d.ino, b"f")) is f
        used = _used(store, before)
        assert used == {"HeadObject": 1}, used

    run_fs(tmp_path, body, store=store)


def test_trust_listing_shows_stored_attributes_from_a_files_first_stale_lookup(tmp_path):
    """With trust_listing a listing's entries show the listing's attributes
    (default mode) and lookups within metadata_ttl ask nothing.  The first
    lookup of an entry once it is stale HEADs it, even right after a
    relisting, and the stored mode shows from then on; later relistings
    vouch for it (ETag and Last-Modified unchanged) without HEADs."""
    store = MemoryStore()
    names = ["f0", "f1", "f2"]
    for n in names:
        store.put_sync(f"d/{n}", b"x", {"mode": str(stat.S_IFREG | 0o600)})
        store.objects[f"d/{n}"].mtime_ns -= 60 * 10**9

    async def body(fs, store):
        d = await fs.lookup(1, b"d")

        async def relist_then_look_up() -> tuple[dict, set[int]]:
            d.listed_at = float("-inf")  # metadata_ttl has passed
            for c in d.children.values():
                c.validated_at = float("-inf")
            before = dict(store.calls)
            fh = (await fs.opendir(d.ino)).fh
            assert [n for n, _ in await fs.readdir(fh, 0)] == names
            modes = {(await fs.lookup(d.ino, n.encode())).attr.mode for n in names}
            return _used(store, before), modes

        before = dict(store.calls)
        fh = (await fs.opendir(d.ino)).fh
        await fs.readdir(fh, 0)
        modes = {(await fs.lookup(d.ino, n.encode())).attr.mode for n in names}
        assert _used(store, before) == {"ListObjectsV2": 1}
        assert modes == {stat.S_IFREG | 0o644}, modes  # the listing's: default mode
        used, modes = await relist_then_look_up()
        assert used == {"ListObjectsV2": 1, "HeadObject": 3}, used
        assert modes == {stat.S_IFREG | 0o600}, modes
        used, modes = await relist_then_look_up()
        assert used == {"ListObjectsV2": 1}, used
        assert modes == {stat.S_IFREG | 0o600}, modes

    run_fs(tmp_path, body, "trust_listing=true", store=store)


def test_concurrent_reads_of_one_handle_all_get_their_bytes(tmp_path):
    # the kernel's readahead sends several reads of one file at once
    store = MemoryStore()
    data = os.urandom(24 * MiB)
    store.put_sync("f", data)

    async def body(fs, store):
        node = await fs.lookup(1, b"f")
        h = await fs.open(node.ino, os.O_RDONLY)
        results = {}

        async def read(off):
            results[off] = await fs.read(h.fh, off, 128 * KiB)

        offsets = [i * 128 * KiB for i in range(0, 192, 3)] + [20 * MiB, 0, 5 * MiB]
        async with trio.open_nursery() as n:
            for off in offsets:
                n.start_soon(read, off)
        for off in offsets:
            assert results[off] == data[off:off + 128 * KiB], off
        await fs.release(h.fh)

    run_fs(tmp_path, body, "read_part_size=1M", store=store)


# -- listing a big directory holds a bounded number of tasks ------------------------------

def test_listing_heads_entries_with_a_fixed_pool_of_tasks(tmp_path):
    """The HEADs that fill in a listing's attributes run in stat_concurrency
    workers, not one task per entry (100,000 entries meant 100,000 tasks,
    about 4 KiB each, alive at once)."""
    store = MemoryStore()
    for i in range(3000):
        store.put_sync(f"big/f{i:05d}", b"x", {"mode": str(stat.S_IFREG | 0o600)})

    class LiveTasks(trio.abc.Instrument):
        def __init__(self):
            self.live = self.peak = 0

        def task_spawned(self, task):
            self.live += 1
            self.peak = max(self.peak, self.live)

        def task_exited(self, task):
            self.live -= 1

    async def body(fs, store):
        d = await fs.lookup(1, b"big")
        counter = LiveTasks()
        trio.lowlevel.add_instrument(counter)
        try:
            fh = (await fs.opendir(d.ino)).fh
            entries = await fs.readdir(fh, 0)
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert len(entries) == 3000
        assert all(stat.S_IMODE(n.attr.mode) == 0o600 for _, n in entries)
        assert counter.peak <= 8 + 16, counter.peak

    run_fs(tmp_path, body, "stat_concurrency=8", store=store)


# -- a new name whose object could not be written is not left behind ---------------------

class RefusingPuts(MemoryStore):
    """Refuses PutObject while ``refuse`` is set (AccessDenied, as a bucket policy)."""

    refuse = True

    async def put(self, key, body, **kw):
        if self.refuse:
            raise store_error("AccessDenied", op="PutObject", key=key)
        return await super().put(key, body, **kw)


@pytest.mark.parametrize("kind", ["mkdir", "symlink", "mknod"])
def test_a_refused_put_leaves_no_entry_and_the_name_can_be_made_again(tmp_path, kind):
    async def make(fs):
        if kind == "mkdir":
            return await fs.mkdir(1, b"x", 0o755, CALLER)
        if kind == "symlink":
            return await fs.symlink(1, b"x", b"target", CALLER)
        return await fs.mknod(1, b"x", stat.S_IFIFO | 0o644, 0, CALLER)

    async def body(fs, store):
        with pytest.raises(FsError) as e:
            await make(fs)
        assert e.value.errno == errno.EACCES
        with pytest.raises(FsError) as e:
            await fs.lookup(1, b"x")
        assert e.value.errno == errno.ENOENT
        h = await fs.opendir(1)
        assert "x" not in dict(await fs.readdir(h.fh, 0))
        fs.releasedir(h.fh)
        store.refuse = False
        node = await make(fs)
        assert node.lookups == 1   # the kernel's reference to the new entry
        assert (await fs.lookup(1, b"x")) is node

    store = run_fs(tmp_path, body, store=RefusingPuts())
    assert set(store.objects) == ({"x/"} if kind == "mkdir" else {"x"})


# -- a handle that has read nothing moves to a version another client made -------------

RO = os.O_RDONLY


def _with_replace(tmp_path, body, old_size=3 * MiB, new_size=4 * MiB, *opts):
    """``f`` looked up at its first version; ``body(fs, node, old, new,
    replace)``, where ``replace()`` replaces it as another client would
    (straight into the store), unseen by the mount for ``metadata_ttl``."""
    old, new = os.urandom(old_size), os.urandom(new_size)
    store = MemoryStore()
    store.put_sync("f", old)

    async def run(fs, store):
        node = await fs.lookup(1, b"f")
        assert node.attr.size == len(old)
        await body(fs, node, old, new, lambda: store.put_sync("f", new))

    run_fs(tmp_path, run, "metadata_ttl=60", *opts, store=store)


@pytest.mark.parametrize("tier", ["tier", "no-tier"])
@pytest.mark.parametrize("sizes", [(3 * MiB, 4 * MiB), (3 * MiB, 2 * MiB)], ids=["longer", "shorter"])
def test_the_first_read_of_a_file_replaced_since_its_lookup_reads_the_new_version(
        tmp_path, tier, sizes):
    async def body(fs, node, old, new, replace):
        replace()
        h = await fs.open(node.ino, RO)
        got = bytearray()
        while chunk := bytes(await fs.read(h.fh, len(got), 128 * KiB)):
            got += chunk
        assert got == new
        assert node.attr.size == len(new)
        await fs.release(h.fh)

    _with_replace(tmp_path, body, *sizes, *(["cache_size=0"] if tier == "no-tier" else []))


def test_reads_of_a_moving_handle_under_way_together_all_read_the_new_version(tmp_path):
    async def body(fs, node, old, new, replace):
        replace()
        h = await fs.open(node.ino, RO)
        got = {}

        async def read(off):
            got[off] = bytes(await fs.read(h.fh, off, 128 * KiB))

        async with trio.open_nursery() as n:   # as the kernel's readahead sends them
            for off in range(0, 1 * MiB, 128 * KiB):
                n.start_soon(read, off)
        assert len(got) == 8
        for off, data in got.items():
            assert data == new[off:off + 128 * KiB]
        await fs.release(h.fh)

    _with_replace(tmp_path, body)


def test_a_short_read_answers_after_the_reads_at_lower_offsets_under_way(tmp_path):
    """The kernel cuts a file's size at the end of the first short answer
    it gets and ignores the ends the reads sent before it give: a short
    answer that overtakes a read at a lower offset leaves the kernel's size
    there, and the bytes between the real end and it read as zeros.  Here
    two programs read a file another client shortened (3 MiB to 100 KiB)
    since its lookup: the read at 1 MiB, with nothing to read, used to be
    answered before the read at 0 (whose GET is slow), and ``cat`` printed
    the new bytes padded with zeros to 1 MiB."""
    class SlowStart(MemoryStore):
        async def get(self, key, start=0, end=None, **kw):
            if start == 0:
                await trio.sleep(0.3)
            return await super().get(key, start, end, **kw)

    old, new = os.urandom(3 * MiB), os.urandom(100 * KiB)
    store = SlowStart()
    store.put_sync("f", old)

    async def body(fs, store):
        node = await fs.lookup(1, b"f")
        store.put_sync("f", new)
        a, b = await fs.open(node.ino, RO), await fs.open(node.ino, RO)
        answered = []

        async def read(h, off):
            data = bytes(await fs.read(h.fh, off, 1 * MiB))
            answered.append((off, data))

        async with trio.open_nursery() as n:
            n.start_soon(read, a, 0)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(read, b, 1 * MiB)
        assert answered == [(0, new), (1 * MiB, b"")]
        for h in (a, b):
            await fs.release(h.fh)

    run_fs(tmp_path, body, "metadata_ttl=60", "cache_size=0", store=store)


def test_handles_that_have_read_nothing_move_together(tmp_path):
    """Two programs open the file in the window: the data is shared, so both
    handles move, whichever reads first, and each reads the new version.
    The second open keeps the kernel's pages, but there are none: the first
    dropped them and nothing was read since."""
    async def body(fs, node, old, new, replace):
        replace()
        a, b = await fs.open(node.ino, RO), await fs.open(node.ino, RO)
        assert not fs.keep_cache(a) and fs.keep_cache(b)   # as the FUSE adapter asks
        got = {a.fh: bytearray(), b.fh: bytearray()}

        async def read_all(fh):
            while chunk := bytes(await fs.read(fh, len(got[fh]), 128 * KiB)):
                got[fh] += chunk

        async with trio.open_nursery() as n:
            n.start_soon(read_all, b.fh)
            n.start_soon(read_all, a.fh)
        assert got[a.fh] == new and got[b.fh] == new
        assert a.moves == b.moves == 1
        for h in (a, b):
            await fs.release(h.fh)

    _with_replace(tmp_path, body, 3 * MiB, 4 * MiB, "cache_size=0")


@pytest.mark.parametrize("case", ["read-before", "other-read-before", "other-writer",
                                  "kept-cache", "kept-written", "written"])
def test_a_handle_that_may_hold_old_bytes_gets_estale_not_the_new_version(tmp_path, case):
    async def body(fs, node, old, new, replace):
        if case == "kept-cache":
            # opened (and its pages cached) before: the kernel keeps them
            first = await fs.open(node.ino, RO)
            assert not fs.keep_cache(first)
            assert bytes(await fs.read(first.fh, 0, 4096)) == old[:4096]
            await fs.release(first.fh)
        if case == "kept-written":
            # written and closed before: the kernel keeps the written pages
            first = await fs.open(node.ino, os.O_RDWR)
            assert not fs.keep_cache(first)
            await fs.write(first.fh, 0, b"x")
            await fs.flush(first.fh)
            await fs.release(first.fh)
        h = await fs.open(node.ino, os.O_RDWR if case == "written" else RO)
        if case.startswith("kept"):
            assert fs.keep_cache(h)
        if case == "read-before":
            assert bytes(await fs.read(h.fh, 0, 4096)) == old[:4096]
        if case.startswith("other"):
            other = await fs.open(node.ino, os.O_WRONLY if case == "other-writer" else RO)
            if case == "other-read-before":
                assert bytes(await fs.read(other.fh, 0, 4096)) == old[:4096]
        if case == "written":
            await fs.write(h.fh, 0, b"x")  # a change on top of the old version
        replace()
        with pytest.raises(FsError) as e:
            await fs.read(h.fh, 2 * MiB, 4096)   # beyond what the first read fetched
        assert e.value.errno == errno.ESTALE
        if case.startswith("other"):
            await fs.release(other.fh)
        await fs.release(h.fh)

    _with_replace(tmp_path, body, 3 * MiB, 4 * MiB, "cache_size=0")


@pytest.mark.parametrize("case", ["one-put", "multipart"])
def test_an_append_on_a_version_replaced_since_its_lookup_fails_and_overwrites_nothing(
        tmp_path, case):
    """A writer does not move: its offsets (an append's, from the kernel's
    cached size) belong to the version it looked up.  Its upload finds the
    object changed and close() fails with ESTALE; the other client's version
    stays.  The changes are then dropped, not retried, and the file shows
    the other client's version.  (A small file's body kept from its HEAD,
    where no GET pinned to the old ETag is refused: test_read_path.py.)"""
    size = {"small": 10 * KiB, "multipart": 12 * MiB}.get(case, 100 * KiB)

    async def body(fs, node, old, new, replace):
        replace()
        h = await fs.open(node.ino, os.O_WRONLY)
        await fs.write(h.fh, len(old), b"appended")
        with pytest.raises(FsError) as e:
            await fs.flush(h.fh)
        assert e.value.errno == errno.ESTALE
        assert fs.store.objects["f"].data == new
        puts = fs.store.calls["PutObject"] + fs.store.calls["CreateMultipartUpload"]
        await fs.release(h.fh)
        assert fs.store.calls["PutObject"] + fs.store.calls["CreateMultipartUpload"] == puts
        assert fs.store.objects["f"].data == new
        assert await fs.flush_all() == []   # nothing left to upload at unmount
        node = await fs.lookup(1, b"f")
        assert node.attr.size == len(new)
        h = await fs.open(node.ino, RO)
        got = bytearray()
        while chunk := bytes(await fs.read(h.fh, len(got), 4 * MiB)):
            got += chunk
        assert got == new
        await fs.release(h.fh)

    _with_replace(tmp_path, body, size, size + 5, "cache_size=0")


def test_appends_work_on_a_server_without_conditional_puts(tmp_path):
    """Swift's s3api answers a PUT with If-Match 501 NotImplemented: the
    upload goes again without it, and later ones go without it at once."""
    from tests.unit.test_writeback_journal import NoConditionalPuts

    store = NoConditionalPuts()
    store.put_sync("f", b"base")

    async def body(fs, store):
        for _ in range(2):
            node = await fs.lookup(1, b"f")
            h = await fs.open(node.ino, os.O_WRONLY)
            await fs.write(h.fh, node.attr.size, b"+")
            await fs.flush(h.fh)
            await fs.release(h.fh)
        assert store.objects["f"].data == b"base++"
        assert store.calls["PutObject"] == 3   # one refused, then two plain

    run_fs(tmp_path, body, "cache_size=0", store=store)


# -- a readdir does not wait for HEADs that cannot change an entry's type -------------------

class GatedHeads(MemoryStore):
    """HEADs of keys holding "/big" wait for ``gate``; those in ``broken``
    fail as a bug would.  ``order``: the keys HEADed, in order."""

    def __init__(self):
        super().__init__()
        self.gate = trio.Event()
        self.broken: set[str] = set()
        self.order: list[str] = []

    async def head(self, key, *, body_max=0):
        self.order.append(key)
        if key in self.broken:
            raise RuntimeError("a bug in a HEAD")
        if "/big" in key:
            await self.gate.wait()
        return await super().head(key, body_max=body_max)


def test_a_readdir_answers_before_the_heads_that_cannot_change_a_type(tmp_path, caplog):
    """Files of 4 KiB or more are answered from the listing while their HEADs
    go on (the kernel told to keep nothing); a small object, which may be a
    symlink, is waited for.  A getattr waits for the HEAD and shows what S3
    stores; a HEAD that fails as a bug leaves the listing's attributes, logs,
    and the mount goes on."""
    store = GatedHeads()
    meta = {"mode": str(stat.S_IFREG | 0o640), "uid": "7", "gid": "8"}
    for i in range(4):
        store.put_sync(f"d/big{i}", b"x" * 4096, meta)
        store.put_sync(f"e/big{i}", b"x" * 4096, meta)
        store.put_sync(f"f/big{i}", b"x" * 4096, meta)
    store.put_sync("d/link", b"big0", {"mode": str(stat.S_IFLNK | 0o777)})
    store.broken.add("e/big0")   # with 2 workers, big2 and big3 are never sent
    store.broken.add("f/big3")

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        entries = dict(await fs.readdir((await fs.opendir(d.ino)).fh, 0))
        assert stat.S_ISLNK(entries["link"].attr.mode) and not fs.attr_pending(entries["link"])
        big = [entries[f"big{i}"] for i in range(4)]
        assert all(fs.attr_pending(n) and stat.S_ISREG(n.attr.mode) for n in big)
        got = []

        async def stat_one(node):
            got.append(await fs.getattr(node.ino))

        async with trio.open_nursery() as n:
            n.start_soon(stat_one, big[3])
            await trio.testing.wait_all_tasks_blocked()
            assert not got   # it waits for the HEAD
            store.gate.set()
        assert (got[0].attr.mode, got[0].attr.uid, got[0].attr.gid) == (stat.S_IFREG | 0o640, 7, 8)
        for node in big:
            assert (await fs.getattr(node.ino)).attr.uid == 7 and not fs.attr_pending(node)
        # a bug in one HEAD: the batch stops, its entries keep the listing's
        # attributes and nobody waits for ever
        e = await fs.lookup(1, b"e")
        entries = dict(await fs.readdir((await fs.opendir(e.ino)).fh, 0))
        await trio.testing.wait_all_tasks_blocked()   # the background batch first
        with trio.fail_after(5):
            for i in range(4):
                await fs.getattr(entries[f"big{i}"].ino)
        assert not fs.ns._filling
        assert (await fs.lookup(e.ino, b"big1")).attr.size == 4096
        # the same bug in a HEAD a stat sends itself (its turn not come)
        f = await fs.lookup(1, b"f")
        entries = dict(await fs.readdir((await fs.opendir(f.ino)).fh, 0))
        with trio.fail_after(5):
            got = await fs.getattr(entries["big3"].ino)
        assert got.attr.size == 4096 and not fs.attr_pending(got)
        with trio.fail_after(5):
            for i in range(3):
                assert (await fs.getattr(entries[f"big{i}"].ino)).attr.uid == 7
        assert not fs.ns._filling and not fs.ns._heading

    run_fs(tmp_path, body, "stat_concurrency=2", store=store)
    assert "filling in the attributes of 'e/' failed" in caplog.text
    assert "filling in the attributes of 'f/' failed" in caplog.text


def test_a_stat_of_an_entry_not_yet_reached_sends_its_head_at_once(tmp_path):
    """A stat of the last name of a big listing does not wait for the HEADs
    of every name before it: its HEAD goes next, and only once."""
    store = GatedHeads()
    meta = {"mode": str(stat.S_IFREG | 0o640), "uid": "7", "gid": "8"}
    for i in range(20):
        store.put_sync(f"d/big{i:02d}", b"x" * 4096, meta)

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        entries = dict(await fs.readdir((await fs.opendir(d.ino)).fh, 0))
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(store.order[-2:]) == ["d/big00", "d/big01"]   # 2 workers, held
        store.order.clear()
        got = []

        async def stat_last():
            got.append(await fs.getattr(entries["big19"].ino))

        async with trio.open_nursery() as n:
            n.start_soon(stat_last)
            await trio.testing.wait_all_tasks_blocked()
            assert not got
            store.gate.set()
        assert (got[0].attr.mode, got[0].attr.uid) == (stat.S_IFREG | 0o640, 7)
        # the next token of the limiter went to it: sent beside big02, not
        # after big18 (trio runs the two woken tasks in either order)
        assert "d/big19" in store.order[:2]
        with trio.fail_after(5):
            while fs.ns._filling:
                await trio.sleep(0.01)
        assert sorted(store.order) == [f"d/big{i:02d}" for i in range(2, 20)]   # each once
        assert not fs.ns._heading

    run_fs(tmp_path, body, "stat_concurrency=2", store=store)


class BodyAsks(MemoryStore):
    """Remembers the ``body_max`` each HEAD of a key asked for."""

    def __init__(self):
        super().__init__()
        self.asked: dict[str, int] = {}

    async def head(self, key, *, body_max=0):
        self.asked[key] = body_max
        return await super().head(key, body_max=body_max)


def test_a_listing_of_more_small_bodies_than_are_kept_sends_heads(tmp_path, monkeypatch):
    """The small files of a listing come whole with their attributes while
    their bodies fit in what the store keeps (BODY_CACHE_BYTES); a listing
    of more sends HEADs: most bodies would be dropped before a read."""
    from objectfs.namespace import namespace as namespace_module
    monkeypatch.setattr(namespace_module, "BODY_CACHE_BYTES", 64 << 10)
    store = BodyAsks()
    meta = {"mode": str(stat.S_IFREG | 0o600)}
    for i in range(10):
        store.put_sync(f"few/f{i}", b"x" * 1000, meta)        # 10 KB of bodies
    for i in range(100):
        store.put_sync(f"many/f{i:03d}", b"x" * 1000, meta)   # 100 KB
        store.put_sync(f"many/g{i:03d}", b"x" * 5000, meta)   # (after the readdir)

    async def body(fs, store):
        for name in (b"few", b"many"):
            d = await fs.lookup(1, name)
            entries = await fs.readdir((await fs.opendir(d.ino)).fh, 0)
            for _, node in entries:
                await fs.getattr(node.ino)
        assert [store.asked[f"few/f{i}"] for i in range(10)] == [16 << 10] * 10
        assert {store.asked[f"many/{c}{i:03d}"] for c in "fg" for i in range(100)} == {0}

    run_fs(tmp_path, body, store=store)


# -- attribute and size changes that race with an upload -----------------------------------

class Gated(MemoryStore):
    """Once ``armed``, calls of the methods named in ``gated`` wait for
    ``gate``; ``waiting`` is set when the first one does."""

    def __init__(self, *gated: str):
        super().__init__()
        self.gated = set(gated)
        self.armed = False
        self.gate = trio.Event()
        self.waiting = trio.Event()

    async def _hold(self, op: str) -> None:
        if self.armed and op in self.gated and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()

    async def head(self, key, **kw):
        await self._hold("head")
        return await super().head(key, **kw)

    async def get(self, key, start=0, end=None, **kw):
        await self._hold("get")
        return await super().get(key, start, end, **kw)

    async def put(self, key, body, **kw):
        await self._hold("put")
        return await super().put(key, body, **kw)

    async def complete_multipart(self, key, upload_id, parts):
        await self._hold("complete_multipart")
        return await super().complete_multipart(key, upload_id, parts)

    async def copy(self, src, dst, **kw):
        await self._hold("copy")
        return await super().copy(src, dst, **kw)

    async def delete(self, key):
        await self._hold("delete")
        return await super().delete(key)

    async def delete_many(self, keys):
        await self._hold("delete")
        return await super().delete_many(keys)


@pytest.mark.parametrize("how", ["one-put", "staged", "multipart", "writeback"])
def test_attributes_set_while_a_close_uploads_are_stored(tmp_path, how):
    """A chmod and a utime that return while the last close() is uploading
    (after the upload took its headers) reach S3, or the staged entry."""
    from objectfs.metadata import parse_attrs

    store = Gated("put", "complete_multipart")
    size = 6 * MiB if how == "multipart" else MiB
    data = os.urandom(size)
    mtime = 1_000_000_000 * 10**9

    async def body(fs, store):
        h, node = await fs.create(1, b"f", F, RW, CALLER)
        if how == "staged":  # out of order: staged on disk
            await fs.write(h.fh, 100, data[100:])
            await fs.write(h.fh, 0, data[:100])
        else:
            await fs.write(h.fh, 0, data)
        if how == "writeback":
            stage = fs.wb.stage

            async def gated_stage(*args):
                store.waiting.set()
                await store.gate.wait()
                return await stage(*args)
            fs.wb.stage = gated_stage
        store.armed = True

        async def close():
            await fs.flush(h.fh)
            await fs.release(h.fh)

        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(close)
                await store.waiting.wait()
                await fs.setattr(node.ino, SetAttr(mode=0o600, mtime_ns=mtime))
                store.gate.set()
        if how == "writeback":
            m = node.pending.manifest
            assert (m.mode, m.mtime_ns) == (stat.S_IFREG | 0o600, mtime)
            await fs.wb.sync(node.pending)

    run_fs(tmp_path, body, *(["writeback=600"] if how == "writeback" else []), store=store)
    assert store.objects["f"].data == data
    a = parse_attrs(store.objects["f"].metadata)
    assert (a.mode, a.mtime_ns) == (stat.S_IFREG | 0o600, mtime)


def test_attributes_set_while_a_write_back_upload_runs_are_stored(tmp_path):
    """With write-back, a chmod and a utime of a staged file while the
    journal uploads it (``cp -p``, ``tar x`` setting times after the
    close): they wait for that upload and then reach S3; the upload's
    answer does not put the old mtime back."""
    from objectfs.metadata import parse_attrs

    store = Gated("put")
    data = os.urandom(MiB)
    mtime = 1_000_000_000 * 10**9

    async def body(fs, store):
        h, node = await fs.create(1, b"f", F, RW, CALLER)
        await fs.write(h.fh, 0, data)
        await fs.flush(h.fh)
        await fs.release(h.fh)
        p = node.pending
        store.armed = True
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(fs.wb.sync, p)
                await store.waiting.wait()   # the upload has its headers
                n.start_soon(fs.setattr, node.ino, SetAttr(mode=0o600, mtime_ns=mtime))
                await trio.testing.wait_all_tasks_blocked(0.05)
                store.gate.set()
        assert (node.attr.mode, node.attr.mtime_ns) == (stat.S_IFREG | 0o600, mtime)
        assert node.pending is None

    run_fs(tmp_path, body, "writeback=600", store=store)
    assert store.objects["f"].data == data
    a = parse_attrs(store.objects["f"].metadata)
    assert (a.mode, a.mtime_ns) == (stat.S_IFREG | 0o600, mtime)


def test_a_truncate_that_a_last_close_overtakes_still_reaches_s3(tmp_path):
    """truncate(2) of a file whose last (read-only) descriptor closes while
    the truncate waits on S3: it returns 0, so S3 must get the new size."""
    store = Gated("head", "get")
    store.put_sync("f", os.urandom(100_000), {"mode": str(F)})

    async def body(fs, store):
        node = await fs.lookup(1, b"f")
        h = await fs.open(node.ino, os.O_RDONLY)
        store.armed = True
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(fs.setattr, node.ino, SetAttr(size=5000))
                await store.waiting.wait()
                await fs.release(h.fh)
                store.gate.set()
        assert (await fs.getattr(node.ino)).attr.size == 5000

    run_fs(tmp_path, body, "trust_listing", store=store)
    assert len(store.objects["f"].data) == 5000


@pytest.mark.parametrize("where", ["in-s3", "not-uploaded"])
def test_a_directory_rename_that_would_make_a_key_too_long_changes_nothing(tmp_path, where):
    """S3 refuses keys over 1,024 bytes: a directory rename that would give
    one of the keys under it (stored, or of a file not uploaded yet) more
    fails with ENAMETOOLONG before anything is copied, and the (empty)
    target directory it would have replaced stays."""
    deep = ["b" * 250, "c" * 250, "d" * 250]
    leaf = "e" * 200
    key = "/".join(["a", *deep, leaf])       # 955 bytes
    store = MemoryStore()
    store.put_sync(key, b"x", {"mode": str(F)})
    store.put_sync("z" * 100 + "/", b"", {"mode": str(stat.S_IFDIR | 0o750)})  # empty

    async def body(fs, store):
        if where == "not-uploaded":
            d = await fs.lookup(1, b"a")
            for name in deep:
                d = await fs.lookup(d.ino, name.encode())
            h, _ = await fs.create(d.ino, b"f" * 200, F, RW, CALLER)
            await fs.write(h.fh, 0, b"open")
        with pytest.raises(FsError) as e:
            await fs.rename(1, b"a", 1, b"z" * 100, 0)
        assert e.value.errno == errno.ENAMETOOLONG
        await fs.rename(1, b"a", 1, b"z" * 50, 0)  # 1,004 bytes: fits
        if where == "not-uploaded":
            await fs.flush(h.fh)
            await fs.release(h.fh)

    run_fs(tmp_path, body, store=store)
    assert store.objects["z" * 100 + "/"].metadata["mode"] == str(stat.S_IFDIR | 0o750)
    assert store.objects["z" * 50 + key[1:]].data == b"x"
    assert not [k for k in store.objects if k.startswith("a/")]


@pytest.mark.parametrize("first", ["rename", "close"])
@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_close_racing_a_rename_uploads_to_the_new_name(tmp_path, first, what):
    """One process rewrites a file and closes it while another renames it
    (or its directory): the close's upload goes to the new name, never to
    the old key after the rename copied it (then deleted with it)."""
    # the rename waits between its copy and its delete; or the close in its PUT
    store = Gated("delete" if first == "rename" else "put")
    store.put_sync("d/f", b"old content " * 1000, {"mode": str(F)})
    new = b"new content"

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        node = await fs.lookup(d.ino, b"f")
        h = await fs.open(node.ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(h.fh, 0, new)

        async def close():
            await fs.flush(h.fh)
            await fs.release(h.fh)

        async def rename():
            if what == "file":
                await fs.rename(d.ino, b"f", d.ino, b"g", 0)
            else:
                await fs.rename(1, b"d", 1, b"e", 0)

        store.armed = True
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(rename if first == "rename" else close)
                await store.waiting.wait()
                n.start_soon(close if first == "rename" else rename)
                await trio.testing.wait_all_tasks_blocked()
                store.gate.set()

    run_fs(tmp_path, body, store=store)
    target = "d/g" if what == "file" else "e/f"
    assert store.objects[target].data == new
    assert sorted(store.objects) == [target]


class GatedCopies(MemoryStore):
    """Copies to keys starting with ``prefix`` wait for ``gate``; ``waiting``
    is set when the first one does."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.gate = trio.Event()
        self.waiting = trio.Event()

    async def copy(self, src, dst, **kw):
        if dst.startswith(self.prefix) and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await super().copy(src, dst, **kw)


@pytest.mark.parametrize("wb", ["", "writeback=600"])
@pytest.mark.parametrize("what", ["dir-into", "file-into", "dir-out-of"])
def test_a_rename_of_a_directory_above_a_rename_under_way_waits_for_it(tmp_path, what, wb):
    """The kernel serializes renames between two directories, not a rename
    within one directory: ``mv t/p t/p2`` may come while another process
    moves something into (or out of) t/p.  It waits for that rename, then
    moves what it left.  It copied t/p's keys at once: the other rename's
    copies then landed under t/p/, a name nothing showed any more, while
    the mount showed the file under t/p2/ where S3 had nothing (an append
    then failed at close() with ESTALE, and the objects under t/p/ came
    back as a directory after a remount)."""
    # the first rename's copies wait; the file's path once both are done
    gated, path = {
        "dir-into": ("t/p/q/src2/", ["p2", "q", "src2", "f"]),
        "file-into": ("t/p/q/g", ["p2", "q", "g"]),
        "dir-out-of": ("t/o/src2/", ["o", "src2", "f"]),
    }[what]
    store = GatedCopies(gated)
    d = {"mode": str(stat.S_IFDIR | 0o755)}
    for k in ("t/", "t/src/", "t/p/", "t/p/q/", "t/o/"):
        store.put_sync(k, b"", d)
    if what == "dir-out-of":
        store.put_sync("t/p/q/src/", b"", d)
        store.put_sync("t/p/q/src/f", b"data", {"mode": str(F)})
    else:
        store.put_sync("t/src/f", b"data", {"mode": str(F)})

    async def walk(fs, names, ino=1):
        node = None
        for name in names:
            node = await fs.lookup(ino, name.encode())
            ino = node.ino
        return node

    async def body(fs, store):
        t = await walk(fs, ["t"])
        if what == "dir-into":
            old_parent, name, new_name = t, b"src", b"src2"
        elif what == "file-into":
            old_parent, name, new_name = await walk(fs, ["t", "src"]), b"f", b"g"
        else:
            old_parent, name, new_name = await walk(fs, ["t", "p", "q"]), b"src", b"src2"
        new_parent = await walk(fs, ["t", "p", "q"] if what != "dir-out-of" else ["t", "o"])
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(fs.rename, old_parent.ino, name, new_parent.ino, new_name, 0)
                await store.waiting.wait()   # it is copying
                n.start_soon(fs.rename, t.ino, b"p", t.ino, b"p2", 0)
                await trio.testing.wait_all_tasks_blocked(0.05)
                store.gate.set()
        # the file is where the mount shows it, and an append to it is saved
        node = await walk(fs, ["t", *path])
        h = await fs.open(node.ino, os.O_WRONLY | os.O_APPEND)
        await fs.write(h.fh, 4, b" more")
        await fs.flush(h.fh)
        await fs.fsync(h.fh, False)
        await fs.release(h.fh)

    run_fs(tmp_path, body, *([wb] if wb else []), store=store)
    key = "t/" + "/".join(path)
    assert store.objects[key].data == b"data more"
    assert not [k for k in store.objects if k.startswith(("t/p/", "t/src/f", "t/p/q/src"))]
    assert sorted(k for k in store.objects if not k.endswith("/")) == [key]


@pytest.mark.parametrize("change", ["chmod", "chown", "utime"])
def test_trust_listing_stores_a_change_to_an_entry_known_from_its_listing(tmp_path, change):
    """The entry's stored attributes are fetched before the change is made,
    not on top of it: the change reaches S3 (it was dropped, chmod -R went
    on returning 0 with every file unchanged)."""
    from objectfs.metadata import parse_attrs

    store = MemoryStore()
    store.put_sync("d/f", b"x", {"mode": str(stat.S_IFREG | 0o640), "uid": "1001",
                                 "gid": "1002", "mtime": "1000000000"})
    want = {"chmod": SetAttr(mode=0o600), "chown": SetAttr(uid=55, gid=66),
            "utime": SetAttr(mtime_ns=2 * 10**18 + 7)}[change]

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        await fs.readdir((await fs.opendir(d.ino)).fh, 0)
        node = await fs.lookup(d.ino, b"f")
        await fs.setattr(node.ino, want)

    run_fs(tmp_path, body, "trust_listing=true", store=store)
    a = parse_attrs(store.objects["d/f"].metadata)
    expected = {"chmod": (stat.S_IFREG | 0o600, 1001, 1002, 10**18),
                "chown": (stat.S_IFREG | 0o640, 55, 66, 10**18),
                "utime": (stat.S_IFREG | 0o640, 1001, 1002, 2 * 10**18 + 7)}[change]
    assert (a.mode, a.uid, a.gid, a.mtime_ns) == expected


@pytest.mark.parametrize("how", ["unlink", "rename-over"])
def test_attribute_changes_through_an_unlinked_open_file_succeed_and_touch_no_object(
        tmp_path, how):
    """fchmod, fchown, futimens and fsetxattr on an open file whose name was
    unlinked or taken by a rename apply to the open file (it has no object
    any more) and succeed; the file now at that name is left alone."""
    store = MemoryStore()
    store.put_sync("f", b"old", {"mode": str(F)})
    store.put_sync("g", b"other", {"mode": str(stat.S_IFREG | 0o640)})

    async def body(fs, store):
        node = await fs.lookup(1, b"f")
        h = await fs.open(node.ino, os.O_RDONLY)
        if how == "unlink":
            await fs.unlink(1, b"f")
        else:
            await fs.rename(1, b"g", 1, b"f", 0)
        await fs.setattr(node.ino, SetAttr(mode=0o600, uid=5, mtime_ns=10**18), h.fh)
        await fs.setxattr(node.ino, b"user.note", b"kept")
        assert stat.S_IMODE((await fs.getattr(node.ino)).attr.mode) == 0o600
        await fs.release(h.fh)

    run_fs(tmp_path, body, store=store)
    if how == "unlink":
        assert sorted(store.objects) == ["g"]
    else:
        assert sorted(store.objects) == ["f"]
        assert store.objects["f"].data == b"other"
        meta = store.objects["f"].metadata
        assert meta["mode"] == str(stat.S_IFREG | 0o640) and meta["uid"] != "5"
        assert "kept" not in str(meta)


def test_edges_of_names_flags_and_xattr_names(tmp_path):
    """A symlink, a device or a FIFO may take a key of exactly 1,024 bytes
    (only a directory's marker adds a "/"); rename flags other than
    RENAME_NOREPLACE (RENAME_WHITEOUT = 4) are EINVAL rather than ignored;
    the xattr name "user." alone is EINVAL, as on ext4."""
    deep = [b"a" * 250, b"b" * 250, b"c" * 250, b"d" * 250]   # 1,004 bytes with slashes
    last = b"e" * (1024 - 1004)

    async def body(fs, store):
        d = 1
        for name in deep:
            d = (await fs.mkdir(d, name, 0o755, CALLER)).ino
        await fs.symlink(d, last, b"target", CALLER)
        await fs.mknod(d, last[:-1] + b"f", stat.S_IFIFO | 0o644, 0, CALLER)
        with pytest.raises(FsError) as e:
            await fs.mkdir(d, last[:-1] + b"g", 0o755, CALLER)
        assert e.value.errno == errno.ENAMETOOLONG
        h, f = await fs.create(1, b"f", F, RW, CALLER)
        await fs.release(h.fh)
        with pytest.raises(FsError) as e:
            await fs.rename(1, b"f", 1, b"g", 4)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(FsError) as e:
            await fs.setxattr(f.ino, b"user.", b"v")
        assert e.value.errno == errno.EINVAL

    store = run_fs(tmp_path, body)
    key = "/".join(n.decode() for n in deep) + "/" + last.decode()
    assert len(key.encode()) == 1024 and key in store.objects
    assert "f" in store.objects and "g" not in store.objects


def test_odd_metadata_other_tools_wrote_is_shown_not_an_error(tmp_path):
    """A time too large for a stat (64-bit seconds) is ignored like any
    unreadable time (Last-Modified shows, as s3fs does), not EIO for the
    whole directory; an xattr name s3fs stored that is not UTF-8 is listed,
    read and removed with its bytes (listxattr failed with EIO)."""
    store = MemoryStore()
    store.put_sync("d/huge", b"x", {"mode": str(F), "mtime": "9" * 20, "atime": "-" + "9" * 20})
    store.put_sync("d/xattrs", b"x", {"mode": str(F), "xattr": (
        "%7B%22user.ok%22%3A%22MQ%3D%3D%22%2C%22user.%FF%FE%22%3A%22dg%3D%3D%22%7D")})
    last_modified = store.objects["d/huge"].mtime_ns

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        assert sorted(n for n, _ in await fs.readdir((await fs.opendir(d.ino)).fh, 0)) == [
            "huge", "xattrs"]
        node = await fs.lookup(d.ino, b"huge")
        assert (await fs.getattr(node.ino)).attr.mtime_ns == last_modified
        x = await fs.lookup(d.ino, b"xattrs")
        assert await fs.listxattr(x.ino) == [b"user.ok", b"user.\xff\xfe"]
        assert await fs.getxattr(x.ino, b"user.\xff\xfe") == b"v"
        await fs.removexattr(x.ino, b"user.\xff\xfe")
        assert await fs.listxattr(x.ino) == [b"user.ok"]

    run_fs(tmp_path, body, store=store)


class FailingCompletes(MemoryStore):
    async def complete_multipart(self, key, upload_id, parts):
        raise store_error("InternalError", op="CompleteMultipartUpload", key=key)


@pytest.mark.parametrize("file", ["new", "existing"])
def test_a_file_whose_streamed_upload_failed_shows_what_s3_holds_after_its_last_close(
        tmp_path, file):
    """Its close() said EIO and its bytes are gone (SEMANTICS, Faults): a new
    file leaves the mount (S3 never had it), an existing one shows the
    version S3 still holds, not a size that reads as nothing or as less."""
    store = FailingCompletes()
    if file == "existing":
        store.put_sync("stream.bin", b"old" * 1000, {"mode": str(F)})

    async def body(fs, store):
        if file == "new":
            h, node = await fs.create(1, b"stream.bin", F, RW, CALLER)
        else:
            node = await fs.lookup(1, b"stream.bin")
            h = await fs.open(node.ino, os.O_WRONLY | os.O_TRUNC)
        await fs.write(h.fh, 0, os.urandom(6 * MiB))   # a part is on its way
        with pytest.raises(FsError) as e:
            await fs.flush(h.fh)
        assert e.value.errno == errno.EIO
        await fs.release(h.fh)
        if file == "new":
            with pytest.raises(FsError) as e:
                await fs.lookup(1, b"stream.bin")
            assert e.value.errno == errno.ENOENT
        else:
            n = await fs.lookup(1, b"stream.bin")
            assert (await fs.getattr(n.ino)).attr.size == 3000
            h = await fs.open(n.ino, os.O_RDONLY)
            assert await fs.read(h.fh, 0, 10000) == b"old" * 1000

    run_fs(tmp_path, body, store=store)
    assert not store.uploads


def test_an_open_while_an_unlink_drops_the_staged_copy_is_estale_not_eio(tmp_path):
    """Write-back: an unlink drops a staged file's journal entry; an open of
    the same inode that comes in between (the entry gone, the inode not yet
    told) answered EIO with a traceback (the staged copy's file was missing).
    It is ESTALE now: the file is being removed."""
    import threading

    from objectfs.errors import Stale

    removed, go_on = threading.Event(), threading.Event()

    async def body(fs, store):
        h, node = await fs.create(1, b"f", F, RW, CALLER)
        await fs.write(h.fh, 0, b"staged")
        await fs.flush(h.fh)
        await fs.release(h.fh)
        assert node.pending is not None
        remove = fs.wb.journal.remove

        def slow_remove(*args):
            remove(*args)
            removed.set()
            go_on.wait(20)

        fs.wb.journal.remove = slow_remove
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(fs.unlink, 1, b"f")
                await trio.to_thread.run_sync(removed.wait, 20)

                async def open_it():
                    with pytest.raises(Stale):   # once the unlink is done
                        await fs.open(node.ino, os.O_RDONLY)

                n.start_soon(open_it)
                await trio.testing.wait_all_tasks_blocked()
                go_on.set()

    run_fs(tmp_path, body, "writeback=600")


def test_an_open_while_a_rename_replaces_a_staged_file_reads_its_bytes_not_nothing(tmp_path):
    """Write-back, the editor's save: a new version written, fsync'd (so it
    is in S3 and the rename copies its object) and renamed over the file,
    whose own version is still staged.  The rename dropped that staged copy
    before it moved the new file: an open of the old inode in between (a
    reader that had just looked the name up) found neither a staged copy nor
    an object, and read an empty file (st_size 0).  Such an open now waits
    for the rename and answers ESTALE (the kernel looks the name up again and
    opens the new file), as does one after it."""
    from objectfs.errors import Stale

    async def body(fs, store):
        h, old = await fs.create(1, b"target", F, RW, CALLER)
        await fs.write(h.fh, 0, b"old version\n" * 100)
        await fs.flush(h.fh)
        await fs.release(h.fh)
        assert old.pending is not None and old.local   # staged, not in S3
        h, new = await fs.create(1, b".target.tmp", F, RW, CALLER)
        await fs.write(h.fh, 0, b"new version\n" * 100)
        await fs.fsync(h.fh, False)   # in S3: the rename copies its object
        await fs.flush(h.fh)
        await fs.release(h.fh)
        copying, go_on = trio.Event(), trio.Event()
        copy = store.copy

        async def slow_copy(*args, **kw):
            copying.set()
            await go_on.wait()
            return await copy(*args, **kw)

        store.copy = slow_copy
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(fs.rename, 1, b".target.tmp", 1, b"target", 0)
                await copying.wait()

                async def open_old():
                    with pytest.raises(Stale):
                        await fs.open(old.ino, os.O_RDONLY)

                n.start_soon(open_old)
                await trio.testing.wait_all_tasks_blocked()
                assert fs.visible_attr(old).size == 1200
                go_on.set()
            with pytest.raises(Stale):
                await fs.open(old.ino, os.O_RDONLY)
            node = await fs.lookup(1, b"target")
            assert node is new
            r = await fs.open(node.ino, os.O_RDONLY)
            assert bytes(await fs.read(r.fh, 0, 4096)) == b"new version\n" * 100
            await fs.release(r.fh)
        assert store.objects["target"].data == b"new version\n" * 100
        assert ".target.tmp" not in store.objects

    run_fs(tmp_path, body, "writeback=600")


def test_an_open_while_an_unlink_deletes_a_file_with_a_staged_edit_reads_the_edit(tmp_path):
    """Write-back: a file in S3 (v1) edited and closed (v2 staged) is
    unlinked.  The unlink dropped the staged v2 before it sent the DELETE:
    an open in between read v1 from S3, a version this mount had already
    replaced.  Such an open now waits for the unlink and answers ESTALE (the
    kernel looks the name up again: ENOENT); the staged v2 stays until the
    DELETE is done."""
    from objectfs.errors import Stale

    async def body(fs, store):
        h, node = await fs.create(1, b"f", F, RW, CALLER)
        await fs.write(h.fh, 0, b"v1" * 100)
        await fs.fsync(h.fh, False)   # v1 in S3
        await fs.flush(h.fh)
        await fs.release(h.fh)
        h = await fs.open(node.ino, os.O_RDWR)
        await fs.write(h.fh, 0, b"v2" * 100)
        await fs.flush(h.fh)
        await fs.release(h.fh)
        assert node.pending is not None and not node.local   # v2 staged
        deleting, go_on = trio.Event(), trio.Event()
        delete = store.delete

        async def slow_delete(*args, **kw):
            deleting.set()
            await go_on.wait()
            return await delete(*args, **kw)

        store.delete = slow_delete
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(fs.unlink, 1, b"f")
                await deleting.wait()
                assert node.pending is not None and not node.pending.finished

                async def open_it():
                    with pytest.raises(Stale):
                        await fs.open(node.ino, os.O_RDONLY)

                n.start_soon(open_it)
                await trio.testing.wait_all_tasks_blocked()
                go_on.set()
            assert node.pending is None or node.pending.finished
        assert "f" not in store.objects

    run_fs(tmp_path, body, "writeback=600")


# -- a listing that shows another ETag than HEAD for the same version --------------------

class ListsByMd5(MemoryStore):
    """Swift's s3api: an object copied from a multipart one is listed with
    the MD5 of its bytes, while HEAD (and GET) give the "-N" ETag."""

    async def list_page(self, prefix, **kw):
        page = await super().list_page(prefix, **kw)
        page.objects[:] = [replace(o, etag=f'"md5-of-{o.etag.strip(chr(34))}"')
                           for o in page.objects]
        return page


def test_a_listing_etag_other_than_the_heads_is_not_taken_for_a_new_version(tmp_path):
    """Once a HEAD has shown which version a listing's ETag stands for,
    relisting the directory asks no HEAD and keeps the cached pages; a real
    change (a new listing ETag) is still seen at the next listing."""
    store = ListsByMd5()
    store.put_sync("d/f", b"a" * MiB)
    old = store.objects["d/f"].mtime_ns = store.objects["d/f"].mtime_ns - 60 * 10**9

    async def relist(fs, d, f):
        d.listed_at, d.validated_at = None, float("-inf")
        fh = (await fs.opendir(d.ino)).fh
        await fs.readdir(fh, 0)
        fs.releasedir(fh)
        await fs.getattr(f.ino)

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        f = await fs.lookup(d.ino, b"f")
        await relist(fs, d, f)    # the listing's ETag is new here: one HEAD pairs them
        h = await fs.open(f.ino, os.O_RDONLY)
        fs.keep_cache(h)         # as the FUSE adapter asks at each open
        assert await fs.read(h.fh, 0, 4) == b"aaaa"
        await fs.release(h.fh)
        for _ in range(3):
            before = dict(store.calls)
            await relist(fs, d, f)
            assert _used(store, before) == {"ListObjectsV2": 1}
            h = await fs.open(f.ino, os.O_RDONLY)
            assert fs.keep_cache(h)
            await fs.release(h.fh)
        store.put_sync("d/f", b"b" * MiB)     # same size, another version
        store.objects["d/f"].mtime_ns = old + 10**9
        before = dict(store.calls)
        await relist(fs, d, f)
        assert _used(store, before) == {"ListObjectsV2": 1, "HeadObject": 1}
        assert f.remote.etag == store.objects["d/f"].etag
        h = await fs.open(f.ino, os.O_RDONLY)
        assert not fs.keep_cache(h)
        assert await fs.read(h.fh, 0, 4) == b"bbbb"
        await fs.release(h.fh)

    async def remounted(fs, store):
        # the pair is kept with the attributes (metadata_cache): the next
        # mount's listing asks no HEAD either
        d = await fs.lookup(1, b"d")
        before = dict(store.calls)
        fh = (await fs.opendir(d.ino)).fh
        assert [n for n, _ in await fs.readdir(fh, 0)] == ["f"]
        fs.releasedir(fh)
        f = await fs.lookup(d.ino, b"f")
        assert _used(store, before) == {"ListObjectsV2": 1}
        assert f.remote.etag == store.objects["d/f"].etag and f.meta_known

    run_fs(tmp_path, body, store=store)
    run_fs(tmp_path, remounted, store=store)


def test_a_renamed_file_takes_its_new_names_content_type_unless_one_was_set_on_purpose(
        tmp_path):
    store = MemoryStore()
    store.put_sync("a.txt", b"<p>", content_type="text/plain")
    store.put_sync("b.txt", b"x", content_type="application/vnd.custom")

    async def body(fs, store):
        for old, new in ((b"a.txt", b"a.html"), (b"b.txt", b"b.html")):
            await fs.lookup(1, old)
            await fs.rename(1, old, 1, new, 0)
        assert store.objects["a.html"].content_type == "text/html"
        assert store.objects["b.html"].content_type == "application/vnd.custom"

    run_fs(tmp_path, body, store=store)


@pytest.mark.parametrize("stored", [True, False], ids=["in-s3", "new-not-uploaded"])
def test_an_open_with_o_trunc_of_an_empty_file_sets_and_stores_its_times(tmp_path, stored):
    """POSIX: open(O_TRUNC) of an existing file marks its mtime and ctime for
    update, even if it is already empty (ext4 and tmpfs do; ``: > stamp``
    is how scripts and make rules touch one).  An empty file kept its old
    times, in the mount and in S3."""
    from objectfs.metadata import parse_attrs

    old = 10**18

    async def body(fs, store):
        h, node = await fs.create(1, b"f", F, RW, CALLER)
        await fs.setattr(node.ino, SetAttr(atime_ns=old, mtime_ns=old), h.fh)
        if stored:   # else it is still open, and only in this mount
            await fs.flush(h.fh)
            await fs.release(h.fh)
        t = await fs.open(node.ino, os.O_WRONLY | os.O_TRUNC)
        a = (await fs.getattr(node.ino)).attr
        assert a.mtime_ns > old and a.ctime_ns > old
        await fs.flush(t.fh)
        await fs.release(t.fh)
        if not stored:
            await fs.release(h.fh)

    store = run_fs(tmp_path, body, store=MemoryStore())
    assert parse_attrs(store.objects["f"].metadata).mtime_ns > old


@pytest.mark.parametrize("how", ["truncate", "ftruncate"])
def test_a_truncate_to_the_current_size_stores_the_mtime_it_shows(tmp_path, how):
    """truncate(2) or ftruncate(2) to the size a file already has sets its
    mtime and ctime, as on ext4 and tmpfs; nothing was uploaded, so the
    mount showed the new mtime and S3 kept the old one, which came back
    after a remount."""
    from objectfs.metadata import parse_attrs

    store = MemoryStore()
    store.put_sync("f", b"abc", {"mode": str(F), "mtime": "1000000000"})

    async def body(fs, store):
        node = await fs.lookup(1, b"f")
        h = await fs.open(node.ino, os.O_RDWR) if how == "ftruncate" else None
        await fs.setattr(node.ino, SetAttr(size=3), h.fh if h else None)
        if h is not None:
            await fs.flush(h.fh)
            await fs.release(h.fh)
        shown = (await fs.getattr(node.ino)).attr.mtime_ns
        assert shown > 10**18
        assert parse_attrs(store.objects["f"].metadata).mtime_ns == shown

    store = run_fs(tmp_path, body, store=store)
    assert store.objects["f"].data == b"abc"


@pytest.mark.parametrize("target", ["staged", "in-s3", "in-s3-and-edited"])
def test_a_save_by_rename_over_a_file_survives_a_kill_at_any_moment_of_the_rename(
        tmp_path, target):
    """Write-back, an editor's save: the new version written to a temporary
    file and closed (staged), then renamed over the file.  A kill -9 at any
    moment of the rename must leave the file at its name, old or new, and the
    new version somewhere.  The rename dropped the target's staged version,
    or deleted its object, before the staged new version was re-targeted to
    the name in the journal: a kill in between left no file at the name
    (only the temporary file), in 4 rounds of 12 of a save loop.  Each moment
    is taken as the journal directory and the bucket just before and after
    every journal change and S3 request the rename makes, and recovered by
    a new mount."""
    import copy
    import shutil

    from objectfs.writeback.journal import Journal

    snaps: list[tuple[str, dict]] = []
    old, new = b"old version\n" * 100, b"new version\n" * 100

    async def body(fs, store):
        h, node = await fs.create(1, b"file", F, RW, CALLER)
        await fs.write(h.fh, 0, old)
        if target != "staged":
            await fs.fsync(h.fh, False)
        await fs.flush(h.fh)
        await fs.release(h.fh)
        if target == "in-s3-and-edited":
            h = await fs.open(node.ino, os.O_RDWR)
            await fs.write(h.fh, 0, b"OLD")
            await fs.flush(h.fh)
            await fs.release(h.fh)
        h, _ = await fs.create(1, b".file.tmp", F, RW, CALLER)
        await fs.write(h.fh, 0, new)
        await fs.flush(h.fh)
        await fs.release(h.fh)
        root = os.path.join(str(tmp_path), "cache", "writeback")

        def snap() -> None:
            where = os.path.join(str(tmp_path), f"snap{len(snaps)}")
            shutil.copytree(root, os.path.join(where, "cache", "writeback"),
                            ignore=shutil.ignore_patterns("lock"))
            snaps.append((where, copy.deepcopy(store.objects)))

        def watched(fn):
            def run(*args, **kw):
                snap()
                try:
                    return fn(*args, **kw)
                finally:
                    snap()
            return run

        journal = fs.wb.journal
        for name in ("rewrite", "remove"):
            setattr(journal, name, watched(getattr(Journal, name).__get__(journal)))
        for name in ("delete", "copy", "put"):
            async def call(*args, _fn=getattr(store, name), **kw):
                snap()
                try:
                    return await _fn(*args, **kw)
                finally:
                    snap()
            setattr(store, name, call)
        await fs.rename(1, b".file.tmp", 1, b"file", 0)
        snap()

    run_fs(tmp_path, body, "writeback=600")
    assert len(snaps) > 2
    edited = b"OLD" + old[3:]
    for i, (where, objects) in enumerate(snaps):
        store = MemoryStore()
        store.objects = objects

        async def drain(fs, store):
            assert await fs.drain_writeback() == []

        run_fs(where, drain, "writeback=0", store=store)
        names = {k: o.data for k, o in store.objects.items() if not k.endswith("/")}
        assert names.get("file") in (old, edited, new), (i, names)
        assert new in names.values(), (i, names)


# -- names removed from a directory never listed again are not kept forever ------------

def test_names_removed_in_a_directory_never_listed_are_trimmed(tmp_path):
    # A directory of more than 16,000 entries is never listed by lookups (a
    # HEAD alone), so nothing merged a listing into it: every file created
    # and deleted (or renamed away) in it left its name in ``removed`` (the
    # guard against an older listing bringing it back) for the rest of the
    # mount, about 130 bytes each (a spool directory, atomic saves with
    # temporary names: one per file, for weeks).  Only names an answer still
    # under way could bring back are kept.
    store = MemoryStore()
    for i in range(16_100):
        store.put_sync(f"big/e{i:05}", b"x")

    async def body(fs, store):
        d = await fs.lookup(1, b"big")

        async def churn(names):
            for name in names:
                h, node = await fs.create(d.ino, name, F, RW, CALLER)
                await fs.write(h.fh, 0, b"data")
                await fs.flush(h.fh)
                await fs.release(h.fh)
                await fs.rename(d.ino, name, d.ino, name + b".done", 0)
                await fs.unlink(d.ino, name + b".done")
                fs.forget([(node.ino, 1)])

        await churn([f"tmp{i}".encode() for i in range(300)])
        assert len(d.removed) == 600
        assert fs.ns.trim_removed() == 600 and d.removed == {}
        # a request sent before a removal (a listing under way) keeps the
        # name, so its answer cannot bring it back; then it goes too
        with fs.ns._asking():
            await trio.sleep(0.01)
            await churn([b"late"])
            assert fs.ns.trim_removed() == 0 and set(d.removed) == {"late", "late.done"}
        assert fs.ns.trim_removed() == 2 and d.removed == {}
        assert len(fs.table.removing) == 0
        with pytest.raises(FsError) as e:
            await fs.lookup(d.ino, b"tmp0")
        assert e.value.errno == errno.ENOENT

    run_fs(tmp_path, body, store=store)


@pytest.mark.parametrize("wb", ["", "writeback=600"])
@pytest.mark.parametrize("how", ["unlink", "rename-over"])
def test_an_open_that_comes_during_the_removal_of_its_file_answers_estale(tmp_path, how, wb):
    """The storm soak's ``write(): ESTALE``: a writer opened (O_TRUNC) a file
    a mutator was unlinking, after the unlink had looked for its open
    handles and while its DELETE was under way.  The open counted itself
    in, the file left the tree with nothing kept for that handle, and its
    first write failed.  Such an open now waits for the removal, then
    answers ESTALE (the kernel looks the name up again: ENOENT, or the
    file renamed over it), and a creating open makes a new file."""
    store = Gated("delete")
    store.put_sync("d/f", b"old content " * 100, {"mode": str(F)})
    store.put_sync("d/g", b"renamed over it", {"mode": str(F)})

    async def body(fs, store):
        d = await fs.lookup(1, b"d")
        f = await fs.lookup(d.ino, b"f")
        await fs.lookup(d.ino, b"g")
        opened: list[int] = []

        async def remove():
            if how == "unlink":
                await fs.unlink(d.ino, b"f")
            else:
                await fs.rename(d.ino, b"g", d.ino, b"f", 0)

        async def open_it():
            with pytest.raises(FsError) as e:
                opened.append((await fs.open(f.ino, os.O_WRONLY | os.O_TRUNC, CALLER)).fh)
            assert e.value.errno == errno.ESTALE

        store.armed = True
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(remove)
                await store.waiting.wait()   # the removal's DELETE is under way
                n.start_soon(open_it)
                await trio.testing.wait_all_tasks_blocked()
                store.gate.set()
        assert opened == []
        # what the kernel does next: the name again, then the file there
        if how == "unlink":
            with pytest.raises(FsError) as e:
                await fs.lookup(d.ino, b"f")
            assert e.value.errno == errno.ENOENT
            h, node = await fs.create(d.ino, b"f", F, os.O_WRONLY | os.O_TRUNC, CALLER)
        else:
            node = await fs.lookup(d.ino, b"f")
            assert node is not f
            h = await fs.open(node.ino, os.O_WRONLY | os.O_TRUNC, CALLER)
        await fs.write(h.fh, 0, b"written after")
        await fs.fsync(h.fh, False)
        await fs.flush(h.fh)
        await fs.release(h.fh)

    run_fs(tmp_path, body, *([wb] if wb else []), store=store)
    assert store.objects["d/f"].data == b"written after"
    assert ("d/g" in store.objects) == (how == "unlink")


class GatedAsks(MemoryStore):
    """Once ``armed``, a listing of ``prefix`` (``what`` "list") or a HEAD of
    a key under it ("head") waits for ``gate``; ``waiting`` is set then."""

    def __init__(self, what: str, prefix: str):
        super().__init__()
        self.what, self.prefix = what, prefix
        self.armed = False
        self.gate = trio.Event()
        self.waiting = trio.Event()

    async def _hold(self, what: str, key: str) -> None:
        if self.armed and what == self.what and key.startswith(self.prefix) \
                and not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()

    async def list_page(self, prefix, **kw):
        if kw.get("delimiter", "/") == "/":
            await self._hold("list", prefix)
        return await super().list_page(prefix, **kw)

    async def head(self, key, **kw):
        await self._hold("head", key)
        return await super().head(key, **kw)


@pytest.mark.parametrize("what", ["list", "head"])
def test_a_listing_or_head_answered_at_keys_a_rename_moved_away_loses_no_entry(tmp_path, what):
    """The storm test's files in S3 that the mount no longer showed: a
    listing of a directory (or the HEADs of its files) was sent at its keys
    just as a rename of a directory above it copied them away and deleted
    them.  The answer, empty (404s), took its entries out of the tree,
    though S3 held them at their new keys.  Such an answer is not applied
    now; the directory is listed again where it is."""
    store = GatedAsks(what, "a/d/")
    for name in ("f1", "f2"):
        store.put_sync(f"a/d/{name}", name.encode() * 10, {"mode": str(F)})

    async def body(fs, store):
        a = await fs.lookup(1, b"a")
        d = await fs.lookup(a.ino, b"d")
        h = await fs.opendir(d.ino)
        assert sorted(n for n, _ in await fs.readdir(h.fh, 0)) == ["f1", "f2"]
        fs.ns.forget_listing(d)   # as metadata_ttl passing does
        for child in d.children.values():
            child.validated_at = float("-inf")
        store.armed = True
        with trio.fail_after(20):
            async with trio.open_nursery() as n:
                n.start_soon(fs.readdir, h.fh, 0)
                await store.waiting.wait()   # its listing or HEADs sent at a/d/
                await fs.rename(1, b"a", 1, b"b", 0)
                store.gate.set()
        fs.releasedir(h.fh)
        for _ in range(3):
            await trio.testing.wait_all_tasks_blocked()
        assert sorted(d.children) == ["f1", "f2"]
        b = await fs.lookup(1, b"b")
        assert b is a and (await fs.lookup(b.ino, b"d")) is d
        h = await fs.opendir(d.ino)
        assert sorted(n for n, _ in await fs.readdir(h.fh, 0)) == ["f1", "f2"]
        f1 = await fs.lookup(d.ino, b"f1")
        r = await fs.open(f1.ino, os.O_RDONLY)
        assert bytes(await fs.read(r.fh, 0, 100)) == b"f1" * 10

    run_fs(tmp_path, body, "metadata_ttl=60", store=store)
    assert sorted(store.objects) == ["b/d/f1", "b/d/f2"]
