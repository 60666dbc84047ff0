"""InFlight (request coalescing): overlapping fetches of one object version
share GETs; errors and cancellations reach the readers that waited."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from objectfs.data.coalesce import InFlight

DATA = bytes(range(256)) * 64  # 16 KiB


class Source:
    """A fake S3 whose GETs take ``delay`` seconds and are recorded."""

    def __init__(self, data: bytes = DATA, delay: float = 1.0):
        self.data, self.delay = data, delay
        self.calls: list[tuple[int, int]] = []
        self.fail: Exception | None = None

    async def fetch(self, s: int, e: int) -> bytes:
        self.calls.append((s, e))
        await trio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return self.data[s:e]


async def _both(inflight, src, a, b, etag_a="e1", etag_b="e1"):
    out = {}

    async def one(name, etag, s, e):
        out[name] = await inflight.get("k", etag, s, e, src.fetch)

    async with trio.open_nursery() as n:
        n.start_soon(one, "a", etag_a, *a)
        await trio.sleep(0.1)
        n.start_soon(one, "b", etag_b, *b)
    return out


def test_the_same_range_is_fetched_once():
    async def main():
        src, inflight = Source(), InFlight()
        out = await _both(inflight, src, (0, 4096), (0, 4096))
        assert out == {"a": DATA[:4096], "b": DATA[:4096]}
        assert src.calls == [(0, 4096)]
        assert inflight.shared_bytes == 4096 and len(inflight) == 0
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_overlapping_range_fetches_only_the_gaps():
    async def main():
        src, inflight = Source(), InFlight()
        out = await _both(inflight, src, (1000, 5000), (0, 8000))
        assert out == {"a": DATA[1000:5000], "b": DATA[:8000]}
        assert sorted(src.calls) == [(0, 1000), (1000, 5000), (5000, 8000)]
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_other_versions_and_finished_gets_are_not_shared():
    async def main():
        src, inflight = Source(), InFlight()
        await _both(inflight, src, (0, 100), (0, 100), etag_b="e2")
        assert len(src.calls) == 2
        await inflight.get("k", "e1", 0, 100, src.fetch)  # nothing under way any more
        assert len(src.calls) == 3
        await inflight.get("k", None, 0, 100, src.fetch)  # no version: never shared
        assert len(src.calls) == 4
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_error_reaches_every_reader_of_the_shared_get():
    async def main():
        src, inflight = Source(), InFlight()
        src.fail = OSError("boom")
        errors = []

        async def one(s, e):
            try:
                await inflight.get("k", "e1", s, e, src.fetch)
            except OSError as err:
                errors.append(err)

        async with trio.open_nursery() as n:
            n.start_soon(one, 0, 100)
            await trio.sleep(0.1)
            n.start_soon(one, 0, 100)
        assert len(errors) == 2 and len(src.calls) == 1 and len(inflight) == 0
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_cancelled_owner_leaves_the_bytes_to_the_waiting_reader():
    async def main():
        src, inflight = Source(), InFlight()
        got = {}

        async def waiter():
            got["b"] = await inflight.get("k", "e1", 0, 100, src.fetch)

        async with trio.open_nursery() as n:
            with trio.move_on_after(0.5):
                async with trio.open_nursery() as inner:
                    inner.start_soon(inflight.get, "k", "e1", 0, 100, src.fetch)
                    await trio.sleep(0.1)
                    n.start_soon(waiter)
                    await trio.sleep(10)
        assert got["b"] == DATA[:100]
        assert len(src.calls) == 2 and len(inflight) == 0
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_short_piece_ends_the_result():
    async def main():
        src, inflight = Source(data=DATA[:3000]), InFlight()
        out = await _both(inflight, src, (1000, 2000), (0, 5000))
        assert out["a"] == DATA[1000:2000]
        assert out["b"] == DATA[:3000]  # contiguous bytes only, never misplaced
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("n", [5])
def test_many_readers_one_get(n):
    async def main():
        src, inflight = Source(), InFlight()
        out = []

        async def one():
            out.append(await inflight.get("k", "e1", 0, 16384, src.fetch))

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
        assert out == [DATA] * n and src.calls == [(0, 16384)]
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
