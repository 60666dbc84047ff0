"""Lookups in a directory too big to list for a lookup (more than
MAX_LOOKUP_LIST_PAGES pages) agree with S3 once metadata_ttl has passed,
whatever the order of the lookups: runs in key order (answered by window
listings, see namespace.SCAN_AFTER), names far apart, names that are not
there, and whatever another client changed before: files deleted, added,
rewritten, directories made.

The namespace's clock is replaced by one the test moves, so that "every
entry is stale" is exact and the examples take no real time.
"""

from __future__ import annotations

import contextlib

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from objectfs import filesystem as filesystem_module
from objectfs.config import build
from objectfs.errors import FsError
from objectfs.filesystem import Filesystem
from objectfs.namespace import namespace as namespace_module
from objectfs.namespace import tree as tree_module
from objectfs.store.memory import MemoryStore
from tests.unit.test_core_regressions import _huge_dir

N = namespace_module.MAX_LOOKUP_LIST_PAGES * 1000 + 10
TTL = 5.0
VARIANTS = ["", "+new", "d"]   # a base file, a file added beside it, a directory


def name(i: int, variant: str = "") -> str:
    return f"f{i:05d}{variant}"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def fake_clock():
    clock = FakeClock()
    modules = (tree_module, namespace_module, filesystem_module)
    saved = [m.clock for m in modules]
    for m in modules:
        m.clock = clock
    try:
        yield clock
    finally:
        for m, c in zip(modules, saved):
            m.clock = c


# changes and runs land among the first 2,000 names, so runs often meet changes
index = st.integers(0, 1999)
change = st.tuples(st.sampled_from(["delete", "add", "rewrite", "mkdir"]), index)
run = st.tuples(st.just("run"), index, st.integers(1, 300), st.integers(1, 4))
scattered = st.tuples(st.just("names"),
                      st.lists(st.tuples(st.integers(0, N + 3), st.sampled_from(VARIANTS)),
                               min_size=1, max_size=12))
rounds = st.lists(st.tuples(st.lists(change, max_size=25),
                            st.lists(st.one_of(run, scattered), min_size=1, max_size=4)),
                  min_size=1, max_size=4)


def apply(store: MemoryStore, what: str, i: int) -> None:
    if what == "delete":
        store.objects.pop(f"huge/{name(i)}", None)
    elif what == "add":
        store.put_sync(f"huge/{name(i, '+new')}", b"new!")
    elif what == "rewrite":
        store.put_sync(f"huge/{name(i)}", b"x" * (i % 7 + 2))
    else:
        # files named like it but for a suffix sort between name and name/
        store.put_sync(f"huge/{name(i, 'd')}/inside", b"")
        for k in range(i % 12):
            store.put_sync(f"huge/{name(i, 'd')}.{k}", b"")


def expected(store: MemoryStore, n: str) -> tuple[str, int] | None:
    """What S3 holds at huge/n: ("dir", 0), ("file", size) or None."""
    key = f"huge/{n}"
    if any(k.startswith(key + "/") for k in store.objects):
        return ("dir", 0)
    if key in store.objects:
        return ("file", len(store.objects[key].data))
    return None


def names_of(look) -> list[str]:
    if look[0] == "run":  # in key order, each name, then the directory beside it
        _, start, length, stride = look
        return [n for i in range(start, min(N, start + length * stride), stride)
                for n in (name(i), name(i, "d"))]
    return [name(i, v) for i, v in look[1]]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(rounds=rounds)
def test_lookups_in_a_huge_directory_agree_with_s3_once_stale(tmp_path, rounds):
    store = MemoryStore()
    assert _huge_dir(store) == [name(i) for i in range(N)]
    cfg = build("bucket", "", "/mnt", o_options=[
        f"staging_dir={tmp_path}", f"cache_dir={tmp_path}/cache", f"metadata_ttl={TTL:g}",
        f"negative_ttl={TTL:g}"])

    async def main(clock: FakeClock):
        async with trio.open_nursery() as nursery:
            fs = Filesystem(store, cfg)
            await fs.start(nursery)
            d = await fs.lookup(1, b"huge")
            # every name known, as after an ls (du's case)
            assert len(await fs.readdir((await fs.opendir(d.ino)).fh, 0)) == N
            for changes, looks in rounds:
                for what, i in changes:
                    apply(store, what, i)
                clock.now += TTL + 1  # every entry and every miss is stale
                for look in looks:
                    for n in names_of(look):
                        try:
                            node = await fs.lookup(d.ino, n.encode())
                            got = (("dir", 0) if node.is_dir else ("file", node.attr.size))
                        except FsError:
                            got = None
                        assert got == expected(store, n), (n, look)
                        clock.now += 0.001
            nursery.cancel_scope.cancel()
        fs.close()

    with fake_clock() as clock:
        trio.run(main, clock)
