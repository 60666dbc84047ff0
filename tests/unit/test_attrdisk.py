"""Attributes kept on disk across mounts (metadata_cache): the store itself,
and mounts (Filesystem on MemoryStore) that share a cache directory."""

from __future__ import annotations

import stat

import trio

from objectfs.config import build
from objectfs.filesystem import Filesystem
from objectfs.namespace.attrdisk import AttrDisk, same_version, trusted
from objectfs.store.base import ObjectInfo
from objectfs.store.memory import MemoryStore

S = 1_000_000_000
NS = "http://127.0.0.1:1|bucket"


def head(key, *, etag='"e1"', size=3, lm_s=1_000, checked_s=1_010, mode="33152"):
    return ObjectInfo(key=key, size=size, etag=etag, mtime_ns=lm_s * S,
                      metadata={"mode": mode, "uid": "7"}, content_type="text/plain",
                      headers={"CacheControl": "no-cache"}, checked_ns=checked_s * S)


def listed(key, *, etag='"e1"', size=3, lm_s=1_000):
    # a listing may show Last-Modified with milliseconds where a HEAD has none
    return ObjectInfo(key=key, size=size, etag=etag, mtime_ns=lm_s * S + 123_000_000)


# -- the store ----------------------------------------------------------------------------

def test_only_heads_answered_two_seconds_after_the_last_change_are_kept(tmp_path):
    assert trusted(head("a", lm_s=1_000, checked_s=1_002))
    assert not trusted(head("a", lm_s=1_000, checked_s=1_001))
    assert not trusted(head("a", checked_s=0))              # no Date in the answer
    assert not trusted(ObjectInfo(key="a", size=1, etag='"e"', mtime_ns=S))  # a listing
    disk = AttrDisk(str(tmp_path))
    disk.save(NS, [head("d/old", checked_s=1_005), head("d/new", checked_s=1_001)])
    got = disk.match(NS, "d/", {"d/old": listed("d/old"), "d/new": listed("d/new")})
    assert [i.key for i in got] == ["d/old"]


def test_a_kept_answer_comes_back_whole_while_the_listing_shows_the_same_version(tmp_path):
    disk = AttrDisk(str(tmp_path))
    disk.save(NS, [head("d/f")])
    disk.close()
    disk = AttrDisk(str(tmp_path))  # another mount
    [info] = disk.match(NS, "d/", {"d/f": listed("d/f")})
    assert info == head("d/f")
    # Last-Modified is compared in whole seconds (listings and HEADs differ below)
    assert same_version(info, listed("d/f"))
    assert disk.match(NS, "d/", {"d/f": listed("d/f")}) == [info]


def test_rows_a_listing_contradicts_are_deleted(tmp_path):
    disk = AttrDisk(str(tmp_path))
    disk.save(NS, [head("d/a"), head("d/b"), head("d/c"), head("d/gone"), head("d/sub/x")])
    now = {"d/a": listed("d/a", etag='"e2"'),        # new data
           "d/b": listed("d/b", lm_s=1_020),         # chmod: a copy onto itself
           "d/c": listed("d/c", size=4)}
    assert disk.match(NS, "d/", now) == []
    # even once the listing shows the old state again, the rows are gone
    assert disk.match(NS, "d/", {k: listed(k) for k in ("d/a", "d/b", "d/c", "d/gone")}) == []
    # another directory's rows were not touched
    assert [i.key for i in disk.match(NS, "d/sub/", {"d/sub/x": listed("d/sub/x")})] == ["d/sub/x"]


def test_buckets_are_apart_and_forget_takes_a_whole_subtree(tmp_path):
    disk = AttrDisk(str(tmp_path))
    other = "aws|bucket"
    disk.save(NS, [head("d/a"), head("d/e/b"), head("dx")])
    disk.save(other, [head("d/a")])
    assert disk.forget(NS, "d/") == 2
    assert disk.match(NS, "d/", {"d/a": listed("d/a")}) == []
    assert disk.match(NS, "d/e/", {"d/e/b": listed("d/e/b")}) == []
    assert [i.key for i in disk.match(NS, "", {"dx": listed("dx")})] == ["dx"]
    assert [i.key for i in disk.match(other, "d/", {"d/a": listed("d/a")})] == ["d/a"]
    # a file's own row; the bucket's root: everything of that bucket
    disk.save(NS, [head("d/a"), head("d/ab"), head("e/x")])
    assert disk.forget(NS, "d/a") == 1
    assert [i.key for i in disk.match(NS, "d/", {k: listed(k) for k in ("d/a", "d/ab")})] \
        == ["d/ab"]
    assert disk.forget(NS, "") == 3  # d/ab, dx, e/x
    assert [i.key for i in disk.match(other, "d/", {"d/a": listed("d/a")})] == ["d/a"]


def test_an_unreadable_row_is_dropped_not_raised(tmp_path):
    disk = AttrDisk(str(tmp_path))
    disk.save(NS, [head("d/a"), head("d/b")])
    disk.db.execute("UPDATE attrs SET info='{not json' WHERE name='a'")
    got = disk.match(NS, "d/", {"d/a": listed("d/a"), "d/b": listed("d/b")})
    assert [i.key for i in got] == ["d/b"]
    assert disk.db.execute("SELECT count(*) FROM attrs").fetchone()[0] == 1


# -- mounts sharing a cache directory ------------------------------------------------------

def mount(tmp_path, store, body, *opts):
    cfg = build("bucket", "", "/mnt", o_options=[f"staging_dir={tmp_path}",
                                                  f"cache_dir={tmp_path}/cache", *opts])
    out = []

    async def main():
        async with trio.open_nursery() as n:
            fs = Filesystem(store, cfg)
            await fs.start(n)
            out.append(await body(fs))
            n.cancel_scope.cancel()
        fs.close()

    trio.run(main)
    return out[0]


async def ls_l(fs, path=b"d"):
    """What ``ls -l d`` shows (mode and owner of each entry) and the
    requests it took once ``d`` was looked up."""
    d = await fs.lookup(1, path)
    before = dict(fs.store.calls)
    fh = (await fs.opendir(d.ino)).fh
    got = {name: (stat.S_IMODE(n.attr.mode), n.attr.uid) for name, n in await fs.readdir(fh, 0)}
    used = {k: n for k in fs.store.calls if (n := fs.store.calls[k] - before.get(k, 0))}
    return got, used


def old_bucket(n=5):
    store = MemoryStore()
    for i in range(n):
        store.put_sync(f"d/f{i}", b"data", {"mode": str(stat.S_IFREG | 0o600), "uid": "123"})
        store.objects[f"d/f{i}"].mtime_ns -= 60 * S  # written a minute ago
    return store


def test_a_second_mount_lists_unchanged_files_without_a_head(tmp_path):
    store = old_bucket()
    first, used = mount(tmp_path, store, ls_l)
    assert first == {f"f{i}": (0o600, 123) for i in range(5)}
    assert used.get("HeadObject") == 5, used
    second, used = mount(tmp_path, store, ls_l)
    assert second == first
    assert "HeadObject" not in used and "GetObject" not in used, used
    # and with metadata_cache=false every file is asked again
    third, used = mount(tmp_path, store, ls_l, "metadata_cache=false")
    assert third == first and used.get("HeadObject") == 5, used


def test_a_change_by_another_client_is_seen_by_the_next_mount(tmp_path):
    store = old_bucket()
    mount(tmp_path, store, ls_l)
    # another client's chmod: a copy onto itself, which moves Last-Modified
    o = store.objects["d/f1"]
    o.metadata["mode"] = str(stat.S_IFREG | 0o644)
    o.mtime_ns += 30 * S
    store.put_sync("d/f9", b"new")  # and a new file
    got, used = mount(tmp_path, store, ls_l)
    assert got["f1"] == (0o644, 123) and got["f0"] == (0o600, 123)
    assert used.get("HeadObject") == 2, used  # f1 and f9 only


def test_a_file_changed_just_before_its_head_is_asked_again_by_the_next_mount(tmp_path):
    store = old_bucket(2)
    store.put_sync("d/recent", b"x", {"mode": str(stat.S_IFREG | 0o640)})  # Last-Modified now
    mount(tmp_path, store, ls_l)
    got, used = mount(tmp_path, store, ls_l)
    assert got["recent"][0] == 0o640
    assert used.get("HeadObject") == 1, used


def test_refresh_forgets_the_kept_attributes_under_its_path(tmp_path):
    store = old_bucket()
    store.put_sync("e/g", b"x", {"mode": str(stat.S_IFREG | 0o600)})
    store.objects["e/g"].mtime_ns -= 60 * S

    async def ls_both(fs):
        await ls_l(fs, b"e")
        return await ls_l(fs)

    mount(tmp_path, store, ls_both)

    async def refresh_d(fs):
        await fs.refresh("d")
        return None

    mount(tmp_path, store, refresh_d)
    _, used = mount(tmp_path, store, ls_l)
    assert used.get("HeadObject") == 5, used
    _, used = mount(tmp_path, store, lambda fs: ls_l(fs, b"e"))
    assert "HeadObject" not in used, used  # e/ was not refreshed


def test_a_directory_listed_again_in_the_same_mount_does_not_read_the_disk(tmp_path, monkeypatch):
    # a watcher listing a big directory every few seconds: its files are
    # known after the first listing, so the later ones skip meta.db
    store = old_bucket()
    calls = []
    real = AttrDisk.match
    monkeypatch.setattr(AttrDisk, "match", lambda self, *a: calls.append(a[1]) or real(self, *a))

    async def three_times(fs):
        for _ in range(3):
            got, _ = await ls_l(fs)
            await trio.sleep(0.02)  # past metadata_ttl: listed anew
        return got

    assert mount(tmp_path, store, three_times, "metadata_ttl=0.01") == \
        {f"f{i}": (0o600, 123) for i in range(5)}
    assert [c for c in calls if c == "d/"] == ["d/"]  # (the root: once too)

    async def with_a_new_name(fs):
        await ls_l(fs)                   # a new mount: every name unknown
        store.put_sync("d/new", b"x")
        for _ in range(2):               # the new name, then nothing unknown
            await trio.sleep(0.02)
            await ls_l(fs)

    calls.clear()
    mount(tmp_path, store, with_a_new_name, "metadata_ttl=0.01")
    assert [c for c in calls if c == "d/"] == ["d/", "d/"]


def rows(tmp_path):
    disk = AttrDisk(str(tmp_path / "cache"))
    try:
        return sorted(d + n for d, n in disk.db.execute("SELECT dir, name FROM attrs"))
    finally:
        disk.close()


def test_rows_of_files_deleted_or_moved_do_not_pile_up(tmp_path):
    store = old_bucket(3)
    for k in ("e/a", "e/b", "g/c"):
        store.put_sync(k, b"x", {"mode": str(stat.S_IFREG | 0o600)})
        store.objects[k].mtime_ns -= 60 * S

    async def list_all(fs):
        for p in (b"d", b"e", b"g"):
            await ls_l(fs, p)

    mount(tmp_path, store, list_all)
    assert rows(tmp_path) == ["d/f0", "d/f1", "d/f2", "e/a", "e/b", "g/c"]

    async def remove_and_move(fs):
        d = await fs.lookup(1, b"d")
        await fs.unlink(d.ino, b"f0")
        e = await fs.lookup(1, b"e")
        for n in (b"a", b"b"):
            await fs.unlink(e.ino, n)
        await fs.rmdir(1, b"e")                 # rmdir: its rows go at once
        await fs.rename(1, b"g", 1, b"h", 0)    # so do a renamed directory's
        return None

    mount(tmp_path, store, remove_and_move)
    assert rows(tmp_path) == ["d/f1", "d/f2"]   # an unlinked file's row goes too
    store.objects.pop("d/f1")                   # gone behind the mount's back
    mount(tmp_path, store, ls_l)                # the first listing of d/ in a mount
    assert rows(tmp_path) == ["d/f2"]
    store.objects.pop("d/f2")
    store.put_sync("d/", b"")                   # d/ stays, as a marker
    mount(tmp_path, store, ls_l)                # an empty listing clears it too
    assert rows(tmp_path) == []


def test_a_long_mount_removing_files_of_new_names_does_not_pile_up_rows(tmp_path):
    # a mount that runs for weeks, writing, reading and deleting files of
    # new names (temporaries, rotated logs): each file's row went to meta.db
    # and stayed until a later mount listed its directory again
    store = old_bucket(600)
    for k in ("g/c", "g/d"):
        store.put_sync(k, b"x", {"mode": str(stat.S_IFREG | 0o600)})
        store.objects[k].mtime_ns -= 60 * S

    def count(fs):
        return fs.ns.attr_disk.db.execute("SELECT count(*) FROM attrs").fetchone()[0]

    async def churn(fs):
        await ls_l(fs)                           # every file HEADed: 600 rows
        await ls_l(fs, b"g")
        assert count(fs) == 602
        d = await fs.lookup(1, b"d")
        for i in range(600):
            await fs.unlink(d.ino, f"f{i}".encode())
        g = await fs.lookup(1, b"g")
        await fs.rename(g.ino, b"c", g.ino, b"e", 0)
        # deleted in batches, not one transaction per unlink
        return count(fs)

    during = mount(tmp_path, store, churn)
    assert during <= 2 + 256, during
    assert rows(tmp_path) == ["g/d"]


def test_single_lookups_are_written_in_batches_and_at_unmount(tmp_path, monkeypatch):
    # stat of many single files must not cost a sqlite transaction each
    store = old_bucket(300)
    saves = []
    real = AttrDisk.save
    monkeypatch.setattr(AttrDisk, "save",
                        lambda self, ns, infos: saves.append(len(infos)) or real(self, ns, infos))

    async def stat_each(fs):
        d = await fs.lookup(1, b"d")
        for i in range(300):  # the first lists d/; each then HEADs its file
            await fs.lookup(d.ino, f"f{i}".encode())
        return fs.store.calls["HeadObject"]

    # and d's own; the HEADs sent beside the listings, of a file d in the
    # root (404) and of f0 (small: then fetched whole, a HEAD of the store)
    assert mount(tmp_path, store, stat_each) == 303
    assert saves[0] == 256 and sum(saves) == 300 and len(saves) == 2, saves
    assert len(rows(tmp_path)) == 300


def test_a_damaged_cache_file_is_replaced_and_the_mount_works(tmp_path):
    store = old_bucket(2)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "meta.db").write_bytes(b"this is not a database" * 100)
    got, used = mount(tmp_path, store, ls_l)
    assert got == {"f0": (0o600, 123), "f1": (0o600, 123)}
    assert used.get("HeadObject") == 2, used
    again, used = mount(tmp_path, store, ls_l)  # the new file works
    assert again == got and "HeadObject" not in used, used


def test_an_unusable_cache_directory_leaves_the_mount_working(tmp_path):
    store = old_bucket(2)
    (tmp_path / "cache").write_bytes(b"a file where the directory should be")
    got, used = mount(tmp_path, store, ls_l, "cache_size=0", "metadata_cache")
    assert got == {"f0": (0o600, 123), "f1": (0o600, 123)}
    assert used.get("HeadObject") == 2, used


def test_it_is_off_without_the_tier_unless_asked_for(tmp_path):
    store = old_bucket(2)
    for _ in range(2):
        mount(tmp_path, store, ls_l, "cache_size=0")
    assert not (tmp_path / "cache" / "meta.db").exists()
    for _ in range(2):
        _, used = mount(tmp_path, store, ls_l, "cache_size=0", "metadata_cache=true")
    assert "HeadObject" not in used, used


def test_a_symlink_kept_on_disk_is_still_a_symlink(tmp_path):
    store = MemoryStore()
    store.put_sync("d/l", b"target", {"mode": str(stat.S_IFLNK | 0o777)})
    store.objects["d/l"].mtime_ns -= 60 * S
    mount(tmp_path, store, ls_l)

    async def body(fs):
        got, used = await ls_l(fs)
        node = await fs.lookup((await fs.lookup(1, b"d")).ino, b"l")
        return stat.S_ISLNK(node.attr.mode), await fs.readlink(node.ino), used

    is_link, target, used = mount(tmp_path, store, body)
    assert is_link and target == b"target"
    assert "HeadObject" not in used, used


def test_checked_ns_is_the_date_of_the_servers_answer():
    # what the disk cache trusts is the server's clock, never the mount's
    from objectfs.store import lean
    from objectfs.store.s3 import S3Store
    r = lean._decode({"Date": "Sat, 05 Dec 2026 00:12:05 GMT", "ETag": '"e"',
                      "Last-Modified": "Sat, 05 Dec 2026 00:12:06 GMT", "Content-Length": "1"})
    info = S3Store._info_from_head("k", r)
    assert info.checked_ns == 1_796_429_525 * S
    assert info.mtime_ns == 1_796_429_526 * S
    assert S3Store._info_from_head("k", {"ContentLength": 1}).checked_ns == 0
    assert S3Store._info_from_head(
        "k", {"ResponseMetadata": {"HTTPHeaders": {"date": "garbage"}}}).checked_ns == 0
