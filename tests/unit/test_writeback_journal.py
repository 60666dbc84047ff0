"""The write-back journal and uploader logic, without FUSE.

The journal is driven through random sequences of stage / rewrite / remove,
then "crashes" (its lock is dropped without cleaning up, as a kill -9 would)
and a new journal adopts what is left: exactly the newest entry of every key
must come back, with its bytes, and nothing else.  The uploader is run
against the in-memory store for the conflict rules.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from dataclasses import replace

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from objectfs.config import ConfigError, WRITEBACK_DEFAULT_DELAY, build
from objectfs.data.context import DataContext
from objectfs.errors import FsError, store_error
from objectfs.store.memory import MemoryStore
from objectfs.writeback.journal import Journal, Manifest
from objectfs.writeback.uploader import CONFLICT_INFIX, WriteBack, conflict_key


def manifest(key: str, bucket: str = "b", base: str | None = None) -> Manifest:
    return Manifest(bucket=bucket, endpoint="", key=key, size=0, md5="", base_etag=base,
                    metadata={"mode": "33188"}, content_type="text/plain")


def crash(j: Journal) -> None:
    """What kill -9 leaves: files as they are, the lock released by the kernel."""
    for fd in j._locks.values():
        os.close(fd)
    j._locks.clear()


def left_by_a_dead_mount(root: str, m, body: bytes) -> None:
    """A journal under ``root`` holding one staged entry, its mount killed."""
    dead = Journal(os.path.join(root, "wb"))
    dead.open()
    dead.stage(m, [body])
    crash(dead)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


ops = st.lists(st.one_of(
    st.tuples(st.just("stage"), st.sampled_from("abc"), st.binary(max_size=300)),
    st.tuples(st.just("rename"), st.sampled_from("abc"), st.sampled_from("abc")),
    st.tuples(st.just("remove"), st.sampled_from("abc"), st.just(b"")),
), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_recovery_returns_the_newest_entry_of_each_key(seq):
    with tempfile.TemporaryDirectory() as root:
        j = Journal(root)
        j.open()
        live: dict[str, object] = {}     # key -> newest entry (what the uploader keeps)
        model: dict[str, bytes] = {}
        for op, key, arg in seq:
            if op == "stage":
                e = j.stage(manifest(key), [arg[:100], arg[100:]])
                old = live.get(key)
                if old is not None:
                    j.remove(old)
                live[key], model[key] = e, arg
            elif op == "rename" and key in live and key != arg:
                e = live.pop(key)
                if arg in live:
                    j.remove(live.pop(arg))
                j.rewrite(e, replace(e.manifest, key=arg))
                live[arg] = e
                model[arg] = model.pop(key)
            elif op == "remove" and key in live:
                j.remove(live.pop(key))
                del model[key]
        crash(j)
        j2 = Journal(root)
        j2.open()
        got = {e.manifest.key: read(e.data_path)[:e.manifest.size]
               for e in j2.adopt(lambda m: True)}
        assert got == model
        for e in j2.adopt(lambda m: True):
            raise AssertionError(f"adopted twice: {e}")
        j2.close()


def test_interrupted_staging_is_dropped_and_damage_is_detected():
    with tempfile.TemporaryDirectory() as root:
        j = Journal(root)
        j.open()
        good = j.stage(manifest("good"), [b"good bytes"])
        bad = j.stage(manifest("bad"), [b"bad bytes"])
        with open(bad.data_path, "r+b") as f:
            f.write(b"BAD")                       # bit rot
        torn = j.stage(manifest("torn"), [b"torn write"])
        with open(torn.data_path, "r+b") as f:
            f.truncate(os.path.getsize(torn.data_path) - 3)   # trailer never written
        renamed = j.stage(manifest("before"), [b"renamed"])
        j.rewrite(renamed, replace(renamed.manifest, key="after"))
        # a manifest change interrupted, and a removal interrupted after the entry
        with open(os.path.join(j.directory, "998.json.tmp"), "wb") as f:
            f.write(b"{")
        with open(os.path.join(j.directory, "997.json"), "wb") as f:
            f.write(b"{}")
        crash(j)
        j2 = Journal(root)
        j2.open()
        adopted = j2.adopt(lambda m: True)
        assert [(e.manifest.key, read(e.data_path)[:e.manifest.size]) for e in adopted] == [
            ("good", b"good bytes"), ("after", b"renamed")]
        left = sorted(os.listdir(j.directory))
        assert left == sorted(["lock", os.path.basename(bad.data_path) + ".corrupt"])
        # the adopted entries moved into the new mount's directory, the
        # renamed one with its changed manifest
        assert sorted(os.listdir(j2.directory)) == sorted(
            ["lock"] + [e.id + ".entry" for e in adopted] + [adopted[1].id + ".json"])
        assert good.manifest.md5 == adopted[0].manifest.md5


def test_other_buckets_and_live_mounts_are_left_alone():
    with tempfile.TemporaryDirectory() as root:
        dead = Journal(root)
        dead.open()
        mine = dead.stage(manifest("k", bucket="mine"), [b"1"])
        theirs = dead.stage(manifest("k", bucket="theirs"), [b"2"])
        crash(dead)
        alive = Journal(root)
        alive.open()
        alive.stage(manifest("k", bucket="mine"), [b"live"])
        j = Journal(root)
        j.open()
        got = j.adopt(lambda m: m.bucket == "mine")
        assert [read(e.data_path)[:1] for e in got] == [b"1"]
        assert got[0].directory == j.directory        # moved into its own directory
        assert not os.path.exists(mine.data_path)
        assert os.path.exists(theirs.data_path)
        # the dead directory is free again: the other bucket's mount recovers
        # its entry while this one runs
        other = Journal(root)
        other.open()
        assert [read(e.data_path)[:1] for e in other.adopt(lambda m: m.bucket == "theirs")] \
            == [b"2"]
        assert not os.path.exists(dead.directory)
        other.close()
        j.close()
        # the live mount's entry (and its spares) are untouched
        assert len([n for n in os.listdir(alive.directory) if n.endswith(".entry")
                    and os.path.getsize(os.path.join(alive.directory, n))]) == 1
        assert alive.spares == len([n for n in os.listdir(alive.directory)
                                    if n.endswith(".entry")]) - 1


def test_clean_close_removes_an_empty_directory():
    with tempfile.TemporaryDirectory() as root:
        j = Journal(root)
        j.open()
        j.remove(j.stage(manifest("k"), [b"x"]))
        j.close()
        assert os.listdir(root) == []


@given(st.text(min_size=1, max_size=300).filter(lambda n: "/" not in n and n not in (".", "..")
                                                  and "\0" not in n),
       st.sampled_from(["", "d/", "a/" * 380]), st.integers(1, 12))
def test_a_conflict_copy_name_fits_in_255_bytes_and_its_key_in_1024(name, head, n):
    """Names near the limits (the copy of a 250-byte name would be invisible
    in the mount, a key near 1,024 bytes refused by S3): the name is cut
    short, at a character boundary, and the copy still says when it was made."""
    from objectfs.namespace.keys import valid_component

    key = head + name
    got = conflict_key(key, 1_700_000_000 * 10**9, n)
    suffix = CONFLICT_INFIX + "20231114T221320Z" + (f"-{n}" if n > 1 else "")
    assert got.startswith(head) and got.endswith(suffix)
    copy_name = got[len(head):]
    assert valid_component(copy_name)
    assert len(got.encode()) <= 1024
    assert name.startswith(copy_name[:-len(suffix)])
    if len(name.encode()) + len(suffix) <= 255 and len(key.encode()) + len(suffix) <= 1024:
        assert got == key + suffix   # nothing cut when it fits


def test_conflict_key_is_beside_the_original_and_names_utc_time():
    assert conflict_key("a/b.txt", 1_700_000_000 * 10**9) == \
        "a/b.txt" + CONFLICT_INFIX + "20231114T221320Z"


@pytest.mark.parametrize("given_, expected", [
    (True, WRITEBACK_DEFAULT_DELAY), ("2.5", 2.5), ("0", 0.0), ("off", None)])
def test_writeback_option(given_, expected):
    o = "writeback" if given_ is True else f"writeback={given_}"
    assert build("b", "", "/mnt", o_options=[o]).writeback == expected
    with pytest.raises(ConfigError):
        build("b", "", "/mnt", o_options=["writeback=-1"])


# -- the uploader's conflict rules against the in-memory store -----------------

def writeback(store: MemoryStore, root: str, nursery, done: list) -> WriteBack:
    """An uploader with no delay over ``root/wb``; (key, conflict) of each
    finished upload is appended to ``done``."""
    ctx = DataContext(store, nursery, part_size=8 << 20, upload_concurrency=2,
                      write_buffer_memory=16 << 20, read_part_size=1 << 20,
                      prefetch_max=1 << 20, read_memory=1 << 20, staging_dir=root)
    return WriteBack(ctx, Journal(os.path.join(root, "wb")), delay=0, accept=lambda m: True,
                     on_done=lambda p, info, conflict: done.append((info.key, conflict)))


async def run_writeback(store: MemoryStore, root: str, staged: list[Manifest],
                        bodies: list[bytes]) -> list[tuple[str, bool]]:
    done: list[tuple[str, bool]] = []
    async with trio.open_nursery() as nursery:
        wb = writeback(store, root, nursery, done)
        await wb.start(nursery)
        for m, b in zip(staged, bodies):
            p = await wb.stage(m, [b])
            await wb.sync(p)
        assert await wb.drain(10) == []
        wb.close()
        nursery.cancel_scope.cancel()
    return done


def test_uploader_conflict_rules():
    store = MemoryStore()
    store.put_sync("same", b"base")
    store.put_sync("changed", b"base")
    store.put_sync("appeared", b"someone else's")
    base = store.objects["same"].etag
    staged = [manifest("same", base=base), manifest("changed", base=base),
              manifest("appeared"), manifest("new")]
    store.put_sync("changed", b"changed in S3")
    with tempfile.TemporaryDirectory() as root:
        done = trio.run(run_writeback, store, root, staged, [b"1", b"2", b"3", b"4"])
    assert [c for _, c in done] == [False, True, True, False]
    assert store.objects["same"].data == b"1"
    assert store.objects["changed"].data == b"changed in S3"
    assert store.objects["appeared"].data == b"someone else's"
    assert store.objects["new"].data == b"4"
    conflicts = sorted(k for k in store.objects if CONFLICT_INFIX in k)
    assert [store.objects[k].data for k in conflicts] == [b"3", b"2"]


def staged_two_then_crashed(store: MemoryStore, root: str, base: str | None,
                            v1: bytes, v2: bytes) -> None:
    """A mount staged v1 then v2 of "k" (both on ``base``) under ``root``/wb
    and was killed after v1 reached S3 (put there by another uploader with
    the same part layout)."""
    dead = Journal(os.path.join(root, "wb"))
    dead.open()
    dead.stage(manifest("k", base=base), [v1])
    dead.stage(manifest("k", base=base), [v2])
    crash(dead)
    assert trio.run(run_writeback, store, os.path.join(root, "other"),
                    [manifest("k", base=base)], [v1]) == [("k", False)]


@pytest.mark.parametrize("size", [4, 17 << 20], ids=["one-put", "multipart"])
def test_uploader_recognises_its_own_upload_after_a_crash(size):
    """An entry uploaded just before a crash (not yet removed) is not a
    conflict, whether it went up in one PutObject (ETag: the MD5) or in
    parts (ETag: the MD5 of the parts' MD5s); other bytes of the same size
    are one."""
    ours = os.urandom(size)
    theirs = bytes(size)
    store = MemoryStore()
    store.put_sync("k", b"old")
    old = store.objects["k"].etag
    with tempfile.TemporaryDirectory() as root:
        # the upload that happened before the crash, by the same uploader
        assert trio.run(run_writeback, store, root, [manifest("k", base=old)], [ours]) \
            == [("k", False)]
        assert ("-" in store.objects["k"].etag) == (size > 8 << 20)
        # the entry the crash left behind is uploaded again
        done = trio.run(run_writeback, store, root, [manifest("k", base=old)], [ours])
        assert done == [("k", False)]
        assert [k for k in store.objects] == ["k"]
        assert store.objects["k"].data == ours
        store.put_sync("k", theirs)
        done = trio.run(run_writeback, store, root, [manifest("k", base=old)], [ours])
    [(copy, conflict)] = done
    assert conflict
    assert copy.startswith("k" + CONFLICT_INFIX)
    assert store.objects["k"].data == theirs
    assert store.objects[copy].data == ours


@pytest.mark.parametrize("size", [4, 17 << 20], ids=["one-put", "multipart"])
def test_a_version_staged_while_the_previous_one_uploaded_wins_after_a_crash(size):
    """kill -9 after v1's upload reached S3 but before v2 (staged meanwhile,
    on the same base) learnt that v1 is its base: at recovery v1's entry is
    dropped as older, and S3 holding v1 is our own upload, not another
    client's change: v2 goes to the key, no conflict copy.  Bytes of another
    client in its place still are a conflict."""
    v1, v2 = os.urandom(size), os.urandom(size)
    store = MemoryStore()
    store.put_sync("k", b"old")
    old = store.objects["k"].etag
    with tempfile.TemporaryDirectory() as root:
        for theirs in (False, True):
            # v1 reached S3 before the crash (by the same uploader, so with
            # the same part layout)
            staged_two_then_crashed(store, root, old, v1, v2)
            if theirs:
                store.put_sync("k", v1[:-1] + b"!")
            done = trio.run(run_writeback, store, root, [], [])
            if not theirs:
                assert done == [("k", False)]
                assert [k for k in store.objects] == ["k"]
                assert store.objects["k"].data == v2
            else:
                [(copy, conflict)] = done
                assert conflict and store.objects[copy].data == v2
                assert store.objects["k"].data == v1[:-1] + b"!"
            store.put_sync("k", b"old")
            old = store.objects["k"].etag


def test_a_version_staged_while_the_previous_one_uploaded_wins_after_two_crashes():
    """As above, and the mount that recovered v2 (and dropped v1's entry as
    the older one) is killed too before v2's upload: the next mount still
    knows that v1 in S3 is our own upload.  That knowledge lived only in
    memory: the third mount took v1 for another client's change, left it at
    the key and put v2, the version whose close() returned last, beside it
    as a conflict copy."""
    v1, v2 = b"version one", b"version two"
    store = MemoryStore()
    store.put_sync("k", b"old")
    old = store.objects["k"].etag
    with tempfile.TemporaryDirectory() as root:
        staged_two_then_crashed(store, root, old, v1, v2)
        second = Journal(os.path.join(root, "wb"))
        second.open()
        [got] = second.adopt(lambda m: True)   # v1's entry dropped as the older one
        assert read(got.data_path)[:len(v2)] == v2
        crash(second)                          # killed before v2's upload
        done = trio.run(run_writeback, store, root, [], [])
    assert done == [("k", False)]
    assert [k for k in store.objects] == ["k"]
    assert store.objects["k"].data == v2


def test_a_version_staged_as_the_previous_one_finished_uploading_wins_after_a_crash():
    """v2 is being written to the journal (on v1's base) while v1's upload
    finishes: v1's entry went at once, and v2's manifest learnt its new base
    (v1's object) only once written.  A kill -9 in between left v2 alone,
    expecting the object v1 replaced: the next mount took v1 for another
    client's change and put v2, the newest version, beside it as a conflict
    copy.  v1's entry now stays until v2's manifest is corrected."""
    import copy
    import shutil
    import threading

    v1, v2 = b"version one", b"version two"
    store = MemoryStore()
    store.put_sync("k", b"old")
    old = store.objects["k"].etag
    snaps: list[tuple[str, dict]] = []
    finished = threading.Event()

    async def main(root: str) -> None:
        uploaded: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            ctx = DataContext(store, nursery, part_size=8 << 20, upload_concurrency=2,
                              write_buffer_memory=16 << 20, read_part_size=1 << 20,
                              prefetch_max=1 << 20, read_memory=1 << 20, staging_dir=root)
            wb = WriteBack(ctx, Journal(os.path.join(root, "wb")), delay=0,
                           accept=lambda m: True,
                           on_done=lambda p, info, conflict: (uploaded.update(k=info.etag),
                                                              finished.set()))
            await wb.start(nursery)
            journal = wb.journal
            first = await wb.stage(manifest("k", base=old), [v1])

            def stage(m, chunks):
                # v2's bytes reach the disk while v1's upload ends (and, before,
                # its entry went: given a second)
                entry = Journal.stage(journal, m, chunks)
                assert finished.wait(10)
                deadline = time.monotonic() + 1
                while os.path.exists(first.entry.data_path) and time.monotonic() < deadline:
                    time.sleep(0.01)
                return entry

            def snap(*args) -> None:
                where = os.path.join(root, f"snap{len(snaps)}")
                shutil.copytree(journal.root, os.path.join(where, "wb"),
                                ignore=shutil.ignore_patterns("lock"))
                snaps.append((where, copy.deepcopy(store.objects)))

            def rewrite(*args):
                snap()   # a kill -9 here
                return Journal.rewrite(journal, *args)

            journal.stage, journal.rewrite = stage, rewrite
            second = await wb.stage(
                manifest("k", base=old), [v2],
                base_fn=lambda: uploaded.get("k", old) if first.finished else old)
            await wb.sync(second)
            snap()
            wb.close()
            nursery.cancel_scope.cancel()

    with tempfile.TemporaryDirectory() as root:
        trio.run(main, root)
        assert store.objects["k"].data == v2
        assert len(snaps) >= 2
        for where, objects in snaps:
            s = MemoryStore()
            s.objects = objects
            trio.run(run_writeback, s, where, [], [])
            assert sorted(s.objects) == ["k"] and s.objects["k"].data == v2


def test_a_recovered_entry_is_never_silently_replaced():
    """A version left by a dead mount goes up first; a version written in the
    new mount from the old object is not based on it, so it goes beside."""
    store = MemoryStore()
    store.put_sync("k", b"old")
    old = store.objects["k"].etag
    done: list[tuple[str, bool]] = []

    async def main(root: str) -> None:
        left_by_a_dead_mount(root, manifest("k", base=old), b"recovered")
        async with trio.open_nursery() as nursery:
            wb = writeback(store, root, nursery, done)
            assert len(await wb.start(nursery)) == 1
            await wb.sync(await wb.stage(manifest("k", base=old), [b"newer"]))
            assert await wb.drain(10) == []
            wb.close()
            nursery.cancel_scope.cancel()

    with tempfile.TemporaryDirectory() as root:
        trio.run(main, root)
    assert store.objects["k"].data == b"recovered"
    conflicts = [k for k in store.objects if CONFLICT_INFIX in k]
    assert [store.objects[k].data for k in conflicts] == [b"newer"]
    assert [c for _, c in done] == [False, True]


def test_conflict_copies_never_replace_each_other():
    store = MemoryStore()
    store.put_sync("k", b"old")
    old = store.objects["k"].etag
    store.put_sync("k", b"theirs")
    with tempfile.TemporaryDirectory() as root:
        done = trio.run(run_writeback, store, root,
                        [manifest("k", base=old), manifest("k", base=old)], [b"a", b"b"])
    assert [c for _, c in done] == [True, True]
    assert store.objects["k"].data == b"theirs"
    copies = sorted(store.objects[k].data for k in store.objects if CONFLICT_INFIX in k)
    assert copies == [b"a", b"b"]


def test_an_upload_failing_as_the_mount_stops_leaves_its_file_staged():
    """At unmount the mount's nursery is cancelled.  An upload that fails at
    that moment (its request split over tasks: one fails, another is
    cancelled) ends with its error and the cancellation in one group; the
    nursery must end quietly (an error reaching it ended the mount loop with
    a traceback) and the entry stay staged for the next mount."""
    class SplitStore(MemoryStore):
        async def put(self, key, body, **kw):
            async with trio.open_nursery() as nursery:
                async def fail():
                    started.set()
                    await go.wait()
                    raise store_error("InternalError", "injected", op="PutObject", key=key)

                nursery.start_soon(fail)
                nursery.start_soon(trio.sleep_forever)

    started, go = trio.Event(), trio.Event()
    store = SplitStore()

    async def main(root: str) -> None:
        async with trio.open_nursery() as nursery:
            wb = writeback(store, root, nursery, [])
            await wb.start(nursery)
            await wb.stage(manifest("k"), [b"kept"])
            await started.wait()
            go.set()                          # the PUT fails ...
            nursery.cancel_scope.cancel()     # ... as the mount stops
        wb.close()

    with tempfile.TemporaryDirectory() as root:
        trio.run(main, root)
        again = Journal(os.path.join(root, "wb"))
        again.open()
        [entry] = again.adopt(lambda m: True)
        assert entry.manifest.key == "k" and read(entry.data_path).startswith(b"kept")
        again.close()
    assert "k" not in store.objects


def test_an_unexpected_upload_error_is_eio_for_fsync_and_the_uploader_goes_on(caplog):
    """A staged file cut short behind our back makes its upload fail with an
    OSError, not an FsError: logged with its traceback, EIO for the program
    waiting in fsync, retried later; other files still go up."""
    store = MemoryStore()

    async def main(root: str) -> None:
        async with trio.open_nursery() as nursery:
            wb = writeback(store, root, nursery, [])
            await wb.start(nursery)
            bad = await wb.stage(manifest("bad"), [b"0123456789"])
            with open(bad.entry.data_path, "r+b") as f:
                f.truncate(4)
            with pytest.raises(FsError) as e:
                await wb.sync(bad)
            assert e.value.errno == errno.EIO
            await wb.sync(await wb.stage(manifest("good"), [b"fine"]))
            assert bad.attempts >= 1 and not bad.finished
            wb.close()
            nursery.cancel_scope.cancel()

    with tempfile.TemporaryDirectory() as root:
        trio.run(main, root)
    assert store.objects["good"].data == b"fine" and "bad" not in store.objects
    assert any("unexpected error" in r.getMessage() and r.exc_info for r in caplog.records)


class NoConditionalPuts(MemoryStore):
    """A server without conditional writes (Swift's s3api: 501 NotImplemented)."""

    async def put(self, key, body, *, if_none_match=False, if_match=None, **kw):
        if if_none_match or if_match is not None:
            self._count("PutObject")
            raise store_error("NotImplemented", "Conditional object PUTs are not supported.",
                              op="PutObject", key=key, status=501)
        return await super().put(key, body, **kw)


def test_uploads_fall_back_to_head_checks_without_conditional_puts():
    store = NoConditionalPuts()
    store.put_sync("changed", b"base")
    base = store.objects["changed"].etag
    staged = [manifest("new"), manifest("changed", base=base), manifest("changed2")]
    store.put_sync("changed2", b"appeared meanwhile")
    with tempfile.TemporaryDirectory() as root:
        done = trio.run(run_writeback, store, root, staged, [b"1", b"2", b"3"])
    assert [c for _, c in done] == [False, False, True]
    assert store.objects["new"].data == b"1" and store.objects["changed"].data == b"2"
    assert store.objects["changed2"].data == b"appeared meanwhile"
    # each condition refused once (If-None-Match, If-Match), then plain PUTs
    # (the HEAD checks still find conflicts)
    assert store.calls["PutObject"] == 5


class NoIfMatchPuts(MemoryStore):
    """A server that takes If-None-Match on PutObject but not If-Match (AWS
    S3 between August and November 2024), where keys in ``appear`` are
    created by another client right after this mount's HEAD of them."""

    def __init__(self):
        super().__init__()
        self.appear: dict[str, bytes] = {}

    async def head(self, key, **kw):
        try:
            return await super().head(key, **kw)
        finally:
            if key in self.appear:
                self.put_sync(key, self.appear.pop(key))

    async def put(self, key, body, *, if_match=None, **kw):
        if if_match is not None:
            self._count("PutObject")
            raise store_error("NotImplemented", "If-Match is not supported.",
                              op="PutObject", key=key, status=501)
        return await super().put(key, body, **kw)


def test_a_refused_if_match_leaves_if_none_match_on():
    """Refusing one condition turns off that one only: a new file's PUT still
    carries If-None-Match, and an object another client made between the
    HEAD check and the PUT is kept, the upload becoming a conflict copy."""
    store = NoIfMatchPuts()
    store.put_sync("changed", b"base")
    staged = [manifest("changed", base=store.objects["changed"].etag), manifest("appeared")]
    store.appear["appeared"] = b"someone else's"
    with tempfile.TemporaryDirectory() as root:
        done = trio.run(run_writeback, store, root, staged, [b"1", b"2"])
    assert [c for _, c in done] == [False, True]
    assert store.objects["changed"].data == b"1"
    assert store.objects["appeared"].data == b"someone else's"
    assert [store.objects[k].data for k in store.objects if CONFLICT_INFIX in k] == [b"2"]


def test_a_shown_recovered_entry_is_replaced_like_one_staged_here():
    """A recovered entry the mount shows (``show`` clears ``recovered``) is
    what a new version of its file was based on: the new version replaces it
    (no conflict copy), as for a file staged in this mount."""
    store = MemoryStore()
    store.put_sync("k", b"old")
    old = store.objects["k"].etag
    done: list[tuple[str, bool]] = []

    def show(p) -> None:
        p.recovered = False

    async def main(root: str) -> None:
        left_by_a_dead_mount(root, manifest("k", base=old), b"recovered")
        async with trio.open_nursery() as nursery:
            wb = writeback(store, root, nursery, done)
            [p] = await wb.start(nursery, show=show)
            assert not p.recovered
            # what S3 should hold (as the filesystem says it): the recovered
            # entry's base while it waits, what its upload stored once done
            def base():
                return old if not p.finished else store.objects["k"].etag

            await wb.sync(await wb.stage(manifest("k", base=base()), [b"recovered + newer"],
                                         base_fn=base))
            assert await wb.drain(10) == []
            wb.close()
            nursery.cancel_scope.cancel()

    with tempfile.TemporaryDirectory() as root:
        trio.run(main, root)
    assert store.objects["k"].data == b"recovered + newer"
    assert not [k for k in store.objects if CONFLICT_INFIX in k]
    assert all(not c for _, c in done)


# -- spare entry files (one fdatasync per close) ---------------------------------

def test_spares_and_torn_entries_at_recovery(caplog):
    """Staging fills a spare made ahead of time; at recovery, unused spares are
    removed silently and a spare whose filling was torn (no complete
    trailer: its close never returned) is discarded, never uploaded."""
    with tempfile.TemporaryDirectory() as root:
        j = Journal(root)
        j.open()
        j.make_spares(4)
        assert j.spares == 4
        spare_names = sorted(n for n in os.listdir(j.directory) if n.endswith(".entry"))
        assert len(spare_names) == 4
        assert all(os.path.getsize(os.path.join(j.directory, n)) == 0 for n in spare_names)
        good = j.stage(manifest("good"), [b"good ", b"bytes"])
        assert os.path.basename(good.data_path) == spare_names[0]   # filled in place
        assert j.spares == 3
        # two stagings torn by a power cut: bytes without the manifest, and a
        # trailer cut short
        full = j.stage(manifest("torn-trailer"), [b"x" * 5000])
        raw = read(full.data_path)
        with open(full.data_path, "r+b") as f:
            f.truncate(len(raw) - 5)
        half = j._take_spare()
        with open(os.path.join(j.directory, half + ".entry"), "r+b") as f:
            f.write(b"data only, no manifest")
        crash(j)
        j2 = Journal(root)
        j2.open()
        with caplog.at_level("INFO", logger="objectfs.writeback.journal"):
            adopted = j2.adopt(lambda m: True)
        assert [(e.manifest.key, read(e.data_path)[:e.manifest.size]) for e in adopted] == [
            ("good", b"good bytes")]
        assert not os.path.exists(j.directory)    # all moved or removed, then released
        assert os.path.exists(adopted[0].data_path)
        discarded = [r for r in caplog.records if "incomplete staging" in r.getMessage()]
        assert len(discarded) == 2          # the torn ones; spares say nothing
        j2.stage(manifest("more"), [b"x"])        # makes spares in j2's own directory
        assert j2.spares > 0
        j2.close()
        # its spares are removed at close; the staged and adopted entries stay
        assert len([n for n in os.listdir(j2.directory) if n.endswith(".entry")]) == 2


def test_staging_from_many_threads_uses_each_spare_once():
    import threading

    with tempfile.TemporaryDirectory() as root:
        j = Journal(root)
        j.open()
        j.make_spares(3)
        out: list = []

        def worker(i: int) -> None:
            for n in range(10):
                out.append(j.stage(manifest(f"k{i}-{n}"), [b"%d-%d" % (i, n)]))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({e.data_path for e in out}) == 60
        crash(j)
        j2 = Journal(root)
        j2.open()
        got = {e.manifest.key: read(e.data_path)[:e.manifest.size]
               for e in j2.adopt(lambda m: True)}
        assert got == {f"k{i}-{n}": b"%d-%d" % (i, n) for i in range(6) for n in range(10)}


def test_a_lazily_removed_older_entry_that_comes_back_is_dropped():
    """A version replaced by a newer one of its key is unlinked without an
    fsync; if a power cut brings it back, the newer entry still wins."""
    with tempfile.TemporaryDirectory() as root:
        j = Journal(root)
        j.open()
        old = j.stage(manifest("k"), [b"old"])
        saved = read(old.data_path)
        new = j.stage(manifest("k"), [b"new"])
        j.remove(old, lazy=True)
        with open(old.data_path, "wb") as f:    # the unlink did not reach the disk
            f.write(saved)
        crash(j)
        j2 = Journal(root)
        j2.open()
        adopted = j2.adopt(lambda m: True)
        assert [(e.manifest.seq, read(e.data_path)[:e.manifest.size]) for e in adopted] == [
            (new.manifest.seq, b"new")]
        assert [n for n in os.listdir(j2.directory) if n.endswith(".entry")] \
            == [adopted[0].id + ".entry"]   # the old one is gone
        assert not os.path.exists(j.directory)


def test_removals_after_uploads_share_one_directory_fsync():
    """Uploads finishing while the journal's directory is being fsync'd wait
    for the next fsync, which serves them all (group commit); every entry is
    still removed before its upload counts as done."""
    import threading

    gate = threading.Event()
    syncs: list[int] = []

    class GatedJournal(Journal):
        def sync(self) -> None:
            syncs.append(1)
            gate.wait(30)
            super().sync()

    store = MemoryStore()

    async def main(root: str) -> None:
        async with trio.open_nursery() as nursery:
            ctx = DataContext(store, nursery, part_size=8 << 20, upload_concurrency=2,
                              write_buffer_memory=16 << 20, read_part_size=1 << 20,
                              prefetch_max=1 << 20, read_memory=1 << 20, staging_dir=root)
            journal = GatedJournal(os.path.join(root, "wb"))
            wb = WriteBack(ctx, journal, delay=600, accept=lambda m: True,
                           on_done=lambda p, info, conflict: None)
            await wb.start(nursery)
            for i in range(16):
                await wb.stage(manifest(f"k{i}"), [b"%d" % i])
            left: list = []
            drained = trio.Event()

            async def drain() -> None:
                left.extend(await wb.drain(60))
                drained.set()

            nursery.start_soon(drain)
            # FILE_CONCURRENCY uploads finish; one fsync holds the others back
            with trio.fail_after(30):
                while wb._sync_wanted < 8:
                    await trio.sleep(0.01)
            assert len(syncs) == 1
            gate.set()
            with trio.fail_after(30):
                await drained.wait()
            assert left == []
            nursery.cancel_scope.cancel()   # the last removals finish (shielded)
        wb.close()

    with tempfile.TemporaryDirectory() as root:
        trio.run(main, root)
        assert sorted(store.objects) == sorted(f"k{i}" for i in range(16))
        assert len(syncs) <= 10      # one per upload before: 16
        assert not any(n.endswith(".entry") and os.path.getsize(os.path.join(d, n))
                       for d, _, names in os.walk(os.path.join(root, "wb")) for n in names)


def test_staged_files_counts_this_buckets_keys_and_touches_nothing(tmp_path):
    """What a mount without write-back reports of a journal it does not
    upload: each key of its bucket once (staged twice: one file), spares and
    interrupted stagings not at all, and every file left as it was."""
    from objectfs.writeback.journal import staged_files

    root = str(tmp_path)
    left_by_a_dead_mount(root, manifest("a"), b"first")
    left_by_a_dead_mount(root, manifest("a"), b"again")
    left_by_a_dead_mount(root, manifest("b"), b"")
    left_by_a_dead_mount(root, manifest("c", bucket="other"), b"elsewhere")
    j = Journal(os.path.join(root, "wb"))
    j.open()
    j.make_spares(3)    # empty entry files
    with open(os.path.join(j.directory, "9" * 24 + ".entry"), "wb") as f:
        f.write(b"a staging cut short")   # no trailer
    before = sorted((p, os.path.getsize(p)) for p in tmp_path.rglob("*") if p.is_file())
    wb = os.path.join(root, "wb")
    assert staged_files(wb, lambda m: m.bucket == "b") == 2
    assert staged_files(wb, lambda m: m.bucket == "other") == 1
    assert staged_files(os.path.join(root, "none"), lambda m: True) == 0
    assert sorted((p, os.path.getsize(p)) for p in tmp_path.rglob("*") if p.is_file()) == before
    j.close()


def _open_and_recover_repeatedly(root: str, rounds: int, out) -> None:
    """One mount's start, ``rounds`` times: open, recover, check the lock, close."""
    bad = 0
    for i in range(rounds):
        j = Journal(root)
        try:
            j.open()
            j.adopt(lambda m: False)
            # the directory is there, and its lock file is the one we hold
            fd = os.open(os.path.join(j.directory, "lock"), os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
            j.close()
        except BaseException:
            bad += 1
    out.put(bad)


def test_mounts_starting_together_never_take_each_others_directory(tmp_path):
    """Several write-back mounts sharing a cache_dir start at once (fstab at
    boot): a directory one of them just made is empty and unlocked to
    another's recovery, which may remove it.  Each still ends up with a
    directory of its own, and holds the lock of the lock file in it."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_open_and_recover_repeatedly,
                         args=(str(tmp_path / "wb"), 1000, out)) for _ in range(4)]
    for p in procs:
        p.start()
    failures = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert failures == [0, 0, 0, 0]


def test_an_adopted_entry_keeps_its_changed_manifest_through_another_crash(tmp_path):
    """A dead mount's entry renamed while staged (a sidecar manifest) is
    moved into the adopting mount's directory with that manifest; if that
    mount dies too, the next one still finds it under the new name."""
    root = str(tmp_path)
    dead = Journal(root)
    dead.open()
    e = dead.stage(manifest("old"), [b"body"])
    dead.rewrite(e, replace(e.manifest, key="new"))
    crash(dead)
    second = Journal(root)
    second.open()
    [got] = second.adopt(lambda m: True)
    assert got.manifest.key == "new" and got.directory == second.directory
    assert sorted(os.listdir(second.directory)) == sorted(
        ["lock", got.id + ".entry", got.id + ".json"])
    assert not os.path.exists(dead.directory)
    crash(second)
    third = Journal(root)
    third.open()
    [again] = third.adopt(lambda m: True)
    assert again.manifest.key == "new" and read(again.data_path)[:4] == b"body"
    third.close()
    assert os.listdir(root) == [os.path.basename(third.directory)]   # the entry stays staged
