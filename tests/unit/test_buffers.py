"""Receive buffers for GET bodies (objectfs/store/buffers.py): a buffer is
handed out again only when nothing refers to it, within the byte limit, and
given back once idle."""

from hypothesis import given, settings
from hypothesis import strategies as st

from objectfs.store.buffers import ReceiveBuffers

MiB = 1 << 20


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_buffer_comes_back_only_when_nothing_refers_to_it():
    pool = ReceiveBuffers(8 * MiB)
    a = pool.take(2 * MiB)
    ident = id(a)
    b = pool.take(2 * MiB)
    assert b is not a  # ``a`` is held
    view = memoryview(a)[10:20]
    piece = view[2:4]  # a view of a view holds it too
    del a, view
    c = pool.take(2 * MiB)
    assert id(c) != ident
    del piece
    d = pool.take(2 * MiB)
    assert id(d) == ident and pool.reused == 1
    # a buffer of another size is never handed out for this one
    del b, c, d
    e = pool.take(3 * MiB)
    assert len(e) == 3 * MiB and pool.reused == 1


def test_small_bodies_are_not_kept():
    pool = ReceiveBuffers(8 * MiB)
    a = pool.take(MiB - 1)
    assert len(a) == MiB - 1 and pool.kept_bytes == 0
    del a
    pool.take(MiB - 1)
    assert pool.reused == 0


def test_the_limit_holds_and_free_buffers_make_room_oldest_first():
    clock = Clock()
    pool = ReceiveBuffers(4 * MiB, clock=clock)
    held = [pool.take(MiB) for _ in range(3)]
    assert pool.kept_bytes == 3 * MiB
    clock.now += 1
    extra = pool.take(2 * MiB)  # does not fit, nothing is free: not kept
    assert pool.kept_bytes == 3 * MiB
    del extra
    held[0] = None
    clock.now += 1
    held.append(pool.take(2 * MiB))  # the free 1 MiB buffer makes room
    assert pool.kept_bytes == 4 * MiB
    held[0] = pool.take(MiB)  # that buffer was given up: a new one
    assert pool.reused == 0 and pool.kept_bytes == 4 * MiB


def test_trim_gives_back_idle_free_buffers_only():
    clock = Clock()
    pool = ReceiveBuffers(16 * MiB, idle=2.0, clock=clock)
    busy = pool.take(MiB)
    free = pool.take(2 * MiB)
    del free
    clock.now += 1
    pool.trim()
    assert pool.kept_bytes == 3 * MiB  # not idle long enough
    clock.now += 1.5
    pool.trim()
    assert pool.kept_bytes == MiB  # the held one stays
    del busy
    pool.trim()
    assert pool.kept_bytes == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["take", "drop", "view", "trim", "tick"]),
                          st.integers(0, 7)), max_size=60))
def test_no_buffer_is_handed_out_twice_while_held(ops):
    """Random takes, releases, views and trims: a buffer handed out is never
    one still held (directly or through a view), every buffer handed out is
    the size asked for, and the bytes kept stay within the limit."""
    clock = Clock()
    pool = ReceiveBuffers(6 * MiB, idle=1.0, clock=clock)
    held: list = []
    for op, arg in ops:
        if op == "take":
            n = (1 + arg % 3) * MiB
            buf = pool.take(n)
            assert len(buf) == n
            assert all(buf is not h and getattr(h, "obj", None) is not buf for h in held)
            buf[:8] = arg.to_bytes(8, "little")  # the holder fills it
            held.append(buf)
        elif op == "view" and held:
            held.append(memoryview(held[arg % len(held)])[1:9])
        elif op == "drop" and held:
            held.pop(arg % len(held))
        elif op == "trim":
            pool.trim()
        elif op == "tick":
            clock.now += arg / 4
        assert pool.kept_bytes <= 6 * MiB
        assert pool.kept_bytes == sum(len(e[0]) for e in pool._kept)
