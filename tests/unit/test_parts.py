"""Multipart layout: every part within S3's limits, the layout exact, 5 TiB reachable."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objectfs.data.parts import GROUP, layout, max_file_size, part_size
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
