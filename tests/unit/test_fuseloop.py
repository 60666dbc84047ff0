"""fuseloop: the cheaper wait for FUSE requests, on a pipe standing in for /dev/fuse."""

from __future__ import annotations

import logging
import os
import types

import pytest
import trio

from objectfs import fuseloop


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_a_worker_that_read_before_gets_the_turn_before_a_fresh_one(pipe):
    """One waiter at a time on the descriptor (trio refuses two).  Workers
    that have read a request take turns last in, first out, ahead of the
    ones that never have (whose buffers are not allocated yet)."""
    r, w = pipe
    order = []

    async def main():
        wait = fuseloop.make_wait(r)

        async def worker(name):
            while await wait():
                order.append(name)
                os.read(r, 1)   # what pyfuse3 does next: read the request

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for name in "abc":
                    nursery.start_soon(worker, name)
                    await trio.sleep(0.01)   # a waits on the fd; b, then c, for the turn
                for _ in range(4):
                    os.write(w, b"x")
                    await trio.sleep(0.01)
                trio.lowlevel.notify_closing(r)

    trio.run(main)
    assert order == ["a", "b", "a", "b"]   # c, never needed, never read


def test_a_worker_coming_back_while_enough_wait_ends(pipe, monkeypatch):
    """After a burst served by three workers at once, the one that comes
    back while IDLE_KEEP others wait is told False (pyfuse3 ends it and
    frees its buffer)."""
    monkeypatch.setattr(fuseloop, "IDLE_KEEP", 1)
    r, w = pipe
    ended = []

    async def main():
        wait = fuseloop.make_wait(r)
        release = trio.Event()

        async def worker(name):
            while await wait():
                os.read(r, 1)
                await release.wait()   # busy with its request
            ended.append(name)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for name in "abc":
                    nursery.start_soon(worker, name)
                    await trio.sleep(0.01)
                os.write(w, b"xyz")   # a, b and c each take one
                await trio.sleep(0.01)
                release.set()   # one waits on the fd, one for the turn, one ends
                await trio.sleep(0.01)
                assert len(ended) == 1   # which one: trio's order of wake-ups varies
                trio.lowlevel.notify_closing(r)

    trio.run(main)
    assert sorted(ended) == ["a", "b", "c"]


def test_when_pyfuse3_terminates_every_waiter_is_told_false(pipe):
    r, _ = pipe
    answers = []

    async def main():
        wait = fuseloop.make_wait(r)

        async def worker():
            answers.append(await wait())

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(worker)
                await trio.sleep(0.01)
                trio.lowlevel.notify_closing(r)   # as pyfuse3.terminate() does
            answers.append(await wait())   # a worker that comes later

    trio.run(main)
    assert answers == [False] * 4


def test_a_waiter_cancelled_while_waiting_for_its_turn_does_not_lose_the_turn(pipe):
    r, w = pipe
    got = []

    async def main():
        wait = fuseloop.make_wait(r)

        async def worker(name):
            if await wait():
                got.append(name)
                os.read(r, 1)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker, "first")    # waits on the descriptor
                await trio.sleep(0.01)
                async with trio.open_nursery() as inner:
                    inner.start_soon(worker, "cancelled")  # waits for the turn ...
                    await trio.sleep(0.01)
                    inner.cancel_scope.cancel()            # ... and gives up
                nursery.start_soon(worker, "last")
                await trio.sleep(0.01)
                os.write(w, b"ab")

    trio.run(main)
    assert got == ["first", "last"]


def test_a_flood_of_requests_still_lets_other_tasks_run(pipe):
    """With a request always queued, the fast path skips the scheduler at
    most FAST_MAX times in a row."""
    r, w = pipe
    os.write(w, b"x")   # never read: the descriptor stays readable
    ticks = []

    async def main():
        wait = fuseloop.make_wait(r)

        async def other():
            while True:
                ticks.append(1)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.sleep(0.01)
            ticks.clear()
            streak = 0
            for _ in range(10 * (fuseloop.FAST_MAX + 1)):
                before = len(ticks)
                assert await wait()
                streak = streak + 1 if len(ticks) == before else 0
                longest.append(streak)
            nursery.cancel_scope.cancel()

    longest = []
    trio.run(main)
    # calls in a row with no other task run: FAST_MAX, then a pass through the
    # scheduler (where trio may run us first again in its next batch)
    assert fuseloop.FAST_MAX <= max(longest) <= 2 * fuseloop.FAST_MAX + 1


def test_installed_only_on_checked_pyfuse3_versions(monkeypatch):
    fd = os.open("/dev/fuse", os.O_RDWR) if os.path.exists("/dev/fuse") else None
    if fd is None:
        pytest.skip("no /dev/fuse")
    try:
        def stock():
            return "stock"

        for version, expected in (("3.5.0", True), ("3.6.0", False), ("", False)):
            mod = types.SimpleNamespace(__version__=version, _wait_fuse_readable=stock)
            assert fuseloop.install(mod) is expected, version
            assert (mod._wait_fuse_readable is stock) is not expected
        monkeypatch.setenv("OBJECTFS_FUSE_WAIT", "pyfuse3")   # the way back
        mod = types.SimpleNamespace(__version__="3.5.0", _wait_fuse_readable=stock)
        assert not fuseloop.install(mod) and mod._wait_fuse_readable is stock
        # pyfuse3's line for each worker it starts (99 of them now) is left out
        pylog = logging.getLogger("pyfuse3")

        def record(msg):
            return logging.LogRecord("pyfuse3", logging.DEBUG, "", 0, msg, ("w", 5), None)

        assert not pylog.filter(record("%s: No tasks waiting, starting another worker "
                                       "(now %d total)."))
        assert pylog.filter(record("FUSE fd about to be closed."))
    finally:
        os.close(fd)
