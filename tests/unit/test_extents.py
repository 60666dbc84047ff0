"""Extents against a model: a Python set of the byte offsets that are present.

Every operation is applied to both; after each one the ranges stored must be
exactly the runs of the model (which also proves the canonical form: sorted,
non-empty, neither overlapping nor touching), and every query must agree.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from objectfs.data.extents import Extents

LIMIT = 64  # offsets stay small so runs collide, touch and nest often

offsets = st.integers(min_value=0, max_value=LIMIT)
ranges = st.tuples(offsets, offsets)  # may be empty or reversed: both are no-ops
ops = st.one_of(
    st.tuples(st.just("add"), ranges),
    st.tuples(st.just("remove"), ranges),
    st.tuples(st.just("truncate"), offsets),
)


def runs(model: set[int]) -> list[tuple[int, int]]:
    """The maximal runs of consecutive offsets, as half-open ranges."""
    out: list[tuple[int, int]] = []
    for x in sorted(model):
        if out and out[-1][1] == x:
            out[-1] = (out[-1][0], x + 1)
        else:
            out.append((x, x + 1))
    return out


def apply(ext: Extents, model: set[int], op) -> None:
    kind, arg = op
    if kind == "add":
        s, e = arg
        ext.add(s, e)
        model.update(range(s, e))
    elif kind == "remove":
        s, e = arg
        ext.remove(s, e)
        model.difference_update(range(s, e))
    else:
        ext.truncate(arg)
        model.difference_update([x for x in model if x >= arg])


def check_canonical(ext: Extents) -> None:
    stored = list(ext)
    for s, e in stored:
        assert s < e, f"empty range stored: {stored}"
    for (_, e1), (s2, _) in zip(stored, stored[1:]):
        assert e1 < s2, f"overlapping or adjacent ranges stored: {stored}"
    assert len(ext) == len(stored)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=25))
def test_operations_agree_with_model(seq):
    ext, model = Extents(), set()
    for op in seq:
        apply(ext, model, op)
        check_canonical(ext)
        assert list(ext) == runs(model), op
        assert ext.total == len(model)


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=15), st.lists(ranges, min_size=1, max_size=10))
def test_queries_agree_with_model(seq, queries):
    ext, model = Extents(), set()
    for op in seq:
        apply(ext, model, op)
    for s, e in queries:
        span = set(range(s, e))
        assert ext.covers(s, e) == span.issubset(model), (list(ext), s, e)
        assert ext.overlaps(s, e) == bool(span & model), (list(ext), s, e)
        if s <= e:
            assert ext.gaps(s, e) == runs(span - model), (list(ext), s, e)
        else:
            assert ext.gaps(s, e) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(ranges, max_size=12))
def test_constructor_is_canonical_and_order_independent(rs):
    a = Extents(rs)
    b = Extents(list(reversed(rs)))
    model: set[int] = set()
    for s, e in rs:
        model.update(range(s, e))
    check_canonical(a)
    assert list(a) == runs(model)
    assert a == b
    # equality is by bytes present, not by how they were added
    c = Extents()
    for x in sorted(model):
        c.add(x, x + 1)
    assert a == c


def test_examples():
    e = Extents()
    e.add(0, 10)
    e.add(10, 20)          # touching: merged
    assert list(e) == [(0, 20)]
    e.add(30, 40)
    e.add(15, 35)          # bridges both
    assert list(e) == [(0, 40)]
    e.remove(5, 10)
    assert list(e) == [(0, 5), (10, 40)]
    assert e.gaps(0, 50) == [(5, 10), (40, 50)]
    assert e.covers(10, 40) and not e.covers(4, 11)
    assert e.covers(7, 7)  # empty ranges are always covered ...
    assert not e.overlaps(7, 7)  # ... and never overlap
    e.truncate(12)
    assert list(e) == [(0, 5), (10, 12)]
    e.truncate(0)
    assert list(e) == [] and e.total == 0
    assert Extents() != [(0, 1)]
