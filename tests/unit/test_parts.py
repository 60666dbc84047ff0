"""Multipart layout: every part within S3's limits, the layout exact, 5 TiB reachable."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objectfs.data.parts import GROUP, layout, max_file_size, mix_layout, part_size
from objectfs.store.base import (GiB, MAX_OBJECT_SIZE, MAX_PART_SIZE, MAX_PARTS, MiB,
                                 MIN_PART_SIZE, TiB)

bases = st.integers(min_value=MIN_PART_SIZE, max_value=MAX_PART_SIZE)
numbers = st.integers(min_value=1, max_value=MAX_PARTS)


def test_s3_limits_are_the_documented_ones():
    assert MIN_PART_SIZE == 5 * MiB
    assert MAX_PART_SIZE == 5 * GiB
    assert MAX_PARTS == 10_000
    assert MAX_OBJECT_SIZE == 5 * TiB


@settings(max_examples=500, deadline=None)
@given(bases, numbers)
def test_every_part_size_within_s3_limits(base, n):
    size = part_size(n, base)
    assert MIN_PART_SIZE <= size <= MAX_PART_SIZE


@settings(max_examples=200, deadline=None)
@given(bases, numbers)
def test_part_sizes_never_shrink(base, n):
    if n < MAX_PARTS:
        assert part_size(n + 1, base) >= part_size(n, base)


def test_part_numbers_start_at_one():
    with pytest.raises(ValueError):
        part_size(0, 8 * MiB)


@pytest.mark.parametrize("base", [MIN_PART_SIZE, 8 * MiB, 64 * MiB, MAX_PART_SIZE])
def test_first_group_has_the_configured_size(base):
    assert all(part_size(n, base) == base for n in (1, 2, GROUP))
    assert part_size(GROUP + 1, base) == min(MAX_PART_SIZE, 2 * base)


@settings(max_examples=300, deadline=None)
@given(bases)
def test_max_file_size_reaches_5_tib(base):
    assert max_file_size(base) >= MAX_OBJECT_SIZE


def test_max_file_size_is_the_sum_of_the_parts():
    base = 8 * MiB
    assert max_file_size(base) == sum(part_size(n, base) for n in range(1, MAX_PARTS + 1))
    # the documented "78 GiB for a fixed 8 MiB" is what growth avoids
    assert max_file_size(base) > MAX_PARTS * base


def check_layout(size: int, base: int) -> list[tuple[int, int, int]]:
    parts = layout(size, base)
    assert len(parts) <= MAX_PARTS
    pos = 0
    for i, (number, start, end) in enumerate(parts):
        assert number == i + 1
        assert start == pos, "parts must be contiguous"
        assert end > start
        length = end - start
        assert length <= MAX_PART_SIZE
        if i < len(parts) - 1:
            assert length >= MIN_PART_SIZE
            # sizes depend only on the part number (streaming and re-upload agree)
            assert length == part_size(number, base)
        else:
            assert length <= part_size(number, base)
        pos = end
    assert pos == size, "layout must cover [0, size) exactly"
    return parts


@settings(max_examples=200, deadline=None)
@given(bases, st.integers(min_value=0, max_value=200 * GiB))
def test_layout_covers_exactly_small_and_medium(base, size):
    check_layout(size, base)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([MIN_PART_SIZE, 8 * MiB, 16 * MiB, 100 * MiB, MAX_PART_SIZE]),
       st.integers(min_value=0, max_value=MAX_OBJECT_SIZE))
def test_layout_covers_exactly_up_to_5_tib(base, size):
    check_layout(size, base)


def test_layout_edges():
    base = 8 * MiB
    assert layout(0, base) == []
    assert layout(1, base) == [(1, 0, 1)]
    assert layout(base, base) == [(1, 0, base)]
    assert layout(base + 1, base) == [(1, 0, base), (2, base, base + 1)]
    # the largest object S3 accepts fits at the minimum part size
    parts = check_layout(MAX_OBJECT_SIZE, MIN_PART_SIZE)
    assert len(parts) <= MAX_PARTS
    # and a file under 7 GiB at 8 MiB never sees a part bigger than 8 MiB
    assert {e - s for _, s, e in layout(7 * GiB, base)} == {base}


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([MIN_PART_SIZE, 8 * MiB, 1 * GiB]), st.integers(1, 1000))
def test_layout_past_10000_parts_is_refused(base, extra):
    limit = max_file_size(base)
    assert len(check_layout(limit, base)) == MAX_PARTS
    with pytest.raises(ValueError):
        layout(limit + extra, base)


# -- mix_layout: a small file's unchanged start and end copied server-side ----------

M = MIN_PART_SIZE


@st.composite
def small_edits(draw):
    """(size, changed range, local range): a file up to 30 MiB, the bytes it
    changed, and the bytes at hand locally (a range, maybe empty)."""
    size = draw(st.integers(min_value=1, max_value=30 * MiB))
    if draw(st.booleans()):
        lo = hi = size  # nothing changed: a file cut shorter
    else:
        lo = draw(st.integers(min_value=0, max_value=size - 1))
        hi = draw(st.integers(min_value=lo + 1, max_value=size))
    a = draw(st.integers(min_value=0, max_value=size))
    b = draw(st.integers(min_value=a, max_value=size))
    return size, (lo, hi), (a, b)


@settings(max_examples=2000, deadline=None)
@given(small_edits())
def test_mix_layout_parts_are_valid_and_copy_only_unchanged_bytes(edit):
    size, (lo, hi), (a, b) = edit

    def here(s, e):
        return a <= s and e <= b

    parts = mix_layout(size, (lo, hi), here, M)
    if parts is None:
        return
    assert [n for n, _, _ in parts] == list(range(1, len(parts) + 1))
    assert parts[0][1] == 0 and parts[-1][2] == size
    assert all(parts[i][2] == parts[i + 1][1] for i in range(len(parts) - 1))
    assert all(e - s >= M for _, s, e in parts[:-1])  # S3's minimum but for the last
    assert 1 <= len(parts) <= 3
    # what is copied is unchanged and worth it: every part not holding a
    # changed byte is at least M (or the whole file) and not all local
    for _, s, e in parts:
        if e <= lo or s >= hi or lo == hi:
            assert e - s >= M or (s, e) == (0, size)
            assert not here(s, e)
    # at most one part is sent: the one holding the changed bytes
    sent = [(s, e) for _, s, e in parts if not (e <= lo or s >= hi or lo == hi)]
    assert len(sent) <= 1
    if sent:
        assert sent[0][0] <= lo and hi <= sent[0][1]


def test_mix_layout_cases():
    never = lambda s, e: False  # noqa: E731
    # append 1 MiB to 10 MiB: copy the 10, send the 1
    assert mix_layout(11 * MiB, (10 * MiB, 11 * MiB), never, M) == [
        (1, 0, 10 * MiB), (2, 10 * MiB, 11 * MiB)]
    # 4 KiB changed at 12 MiB of 24: copy 12, send 5 (reaching into the end), copy 7
    assert mix_layout(24 * MiB, (12 * MiB, 12 * MiB + 4096), never, M) == [
        (1, 0, 12 * MiB), (2, 12 * MiB, 17 * MiB), (3, 17 * MiB, 24 * MiB)]
    # ... of 20: the 3 MiB left after the sent part are sent too
    assert mix_layout(20 * MiB, (12 * MiB, 12 * MiB + 4096), never, M) == [
        (1, 0, 12 * MiB), (2, 12 * MiB, 20 * MiB)]
    # changed at the start of 20 MiB: send the first 5, copy 15
    assert mix_layout(20 * MiB, (0, 100), never, M) == [(1, 0, 5 * MiB), (2, 5 * MiB, 20 * MiB)]
    # a file cut to 8 MiB, nothing else changed: all copied
    assert mix_layout(8 * MiB, (8 * MiB, 8 * MiB), never, M) == [(1, 0, 8 * MiB)]
    # too little on either side, or the bytes are here: one PutObject
    assert mix_layout(9 * MiB, (4 * MiB, 5 * MiB), never, M) is None
    assert mix_layout(11 * MiB, (10 * MiB, 11 * MiB), lambda s, e: True, M) is None
    assert mix_layout(3 * MiB, (3 * MiB, 3 * MiB), never, M) is None
    with pytest.raises(ValueError):
        mix_layout(10, (5, 4), never, M)
