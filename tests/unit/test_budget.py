"""ByteBudget: bounded, first come first served, deadlock-free, leak-free.

Driven with trio's MockClock (autojump), so holding bytes for "seconds"
takes no real time.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from objectfs.data.budget import ByteBudget


def run(fn, *args):
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


async def settle():
    await trio.testing.wait_all_tasks_blocked()


def test_limit_must_be_positive():
    for bad in (0, -1):
        with pytest.raises(ValueError):
            ByteBudget(bad)


requests = st.lists(
    st.tuples(st.integers(1, 100),                     # bytes
              st.floats(0, 5, allow_nan=False),        # start delay (virtual s)
              st.floats(0, 5, allow_nan=False)),       # hold time (virtual s)
    min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(requests)
def test_never_exceeds_limit_when_requests_fit(reqs):
    limit = 100

    async def main():
        b = ByteBudget(limit)
        held = 0

        async def one(n, delay, hold):
            nonlocal held
            await trio.sleep(delay)
            await b.acquire(n)
            held += n
            assert b.used <= limit
            assert held <= limit
            await trio.sleep(hold)
            held -= n
            b.release(n)

        with trio.fail_after(1000):  # virtual: a deadlock fails instead of hanging
            async with trio.open_nursery() as nursery:
                for r in reqs:
                    nursery.start_soon(one, *r)
        assert b.used == 0
        assert b.peak <= limit
        assert b.peak >= max(n for n, _, _ in reqs)

    run(main)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.floats(0, 5, allow_nan=False),
                          st.floats(0, 5, allow_nan=False)), min_size=1, max_size=15))
def test_oversized_requests_never_deadlock_and_run_alone(reqs):
    limit = 100

    async def main():
        b = ByteBudget(limit)
        holders: list[int] = []

        async def one(n, delay, hold):
            await trio.sleep(delay)
            await b.acquire(n)
            holders.append(n)
            # over the limit only by a request admitted while nothing else was held
            assert sum(holders) <= limit or len(holders) == 1
            await trio.sleep(hold)
            holders.remove(n)
            b.release(n)

        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                for r in reqs:
                    nursery.start_soon(one, *r)
        assert b.used == 0

    run(main)


def test_waiters_are_served_first_come_first_served():
    async def main():
        b = ByteBudget(100)
        await b.acquire(100)
        order: list[str] = []

        async def waiter(name, n):
            await b.acquire(n)
            order.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "big", 80)
            await settle()
            nursery.start_soon(waiter, "small", 30)
            await settle()
            # 30 bytes free: enough for "small" but it must not overtake "big"
            b.release(30)
            await settle()
            assert order == []
            assert b.used == 70
            assert not b.try_acquire(1), "try_acquire must not jump the queue either"
            b.release(70)  # all free: big is served; small no longer fits
            await settle()
            assert order == ["big"]
            assert b.used == 80
            b.release(80)
            await settle()
            assert order == ["big", "small"]
            assert b.used == 30
        b.release(30)
        assert b.used == 0

    run(main)


def test_fifo_order_with_many_waiters():
    async def main():
        b = ByteBudget(10)
        await b.acquire(10)
        order: list[int] = []

        async def waiter(i):
            await b.acquire(10)
            order.append(i)
            await trio.sleep(1)
            b.release(10)

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(waiter, i)
                await settle()  # fixes the arrival order
            b.release(10)
        assert order == list(range(8))
        assert b.used == 0

    run(main)


def test_oversized_request_is_admitted_when_nothing_is_held():
    async def main():
        b = ByteBudget(100)
        with trio.fail_after(1):
            await b.acquire(1000)  # alone: admitted at once
        assert b.used == 1000
        b.release(1000)
        await b.acquire(1)
        got = []

        async def big():
            await b.acquire(500)
            got.append(500)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(big)
            await settle()
            assert got == [], "an oversized request waits while anything is held"
            b.release(1)
            await settle()
            assert got == [500]
        b.release(500)
        assert b.used == 0

    run(main)


def test_zero_and_negative_requests_are_noops():
    async def main():
        b = ByteBudget(10)
        await b.acquire(0)
        b.release(0)
        b.release(-5)
        assert b.used == 0

    run(main)


def test_cancelled_waiter_does_not_leak_or_block_the_queue():
    async def main():
        b = ByteBudget(100)
        await b.acquire(100)
        got = []

        async def waiter(name, n, scope_box=None):
            with trio.CancelScope() as cs:
                if scope_box is not None:
                    scope_box.append(cs)
                await b.acquire(n)
                got.append(name)

        box: list[trio.CancelScope] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "cancelled", 60, box)
            await settle()
            nursery.start_soon(waiter, "next", 60)
            await settle()
            box[0].cancel()
            await settle()
            assert got == []
            assert b.used == 100
            b.release(100)
            await settle()
            # the cancelled request left the queue; the next one got its bytes
            assert got == ["next"]
            assert b.used == 60
        b.release(60)
        assert b.used == 0

    run(main)


def test_grant_racing_with_cancellation_is_given_back():
    """The bytes are granted after the cancellation was delivered but before
    the waiter ran again: acquire raises Cancelled and must return them."""
    async def main():
        b = ByteBudget(100)
        await b.acquire(100)
        got = []
        box: list[trio.CancelScope] = []

        async def victim():
            with trio.CancelScope() as cs:
                box.append(cs)
                await b.acquire(50)
                got.append("victim")  # must not happen: it was cancelled

        async def other():
            await b.acquire(50)
            got.append("other")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim)
            await settle()
            nursery.start_soon(other)
            await settle()
            box[0].cancel()       # victim is rescheduled with Cancelled ...
            b.release(100)        # ... and, before it runs, granted 50 (other too)
            await settle()
        assert "victim" not in got
        assert got == ["other"]
        assert b.used == 50, "the victim's granted bytes leaked"
        b.release(50)
        assert b.used == 0

    run(main)
