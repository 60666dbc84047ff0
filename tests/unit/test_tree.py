"""The inode tree's bookkeeping: each directory's count of subdirectories
(its nlink is 2 + that count) follows every attach, detach, move and prune,
and prune drops only what nothing holds, leaves before their directory."""

from __future__ import annotations

import stat

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from objectfs.namespace.tree import Attr, InodeTable

NAMES = ["a", "b", "c", "d"]


def attr(is_dir: bool) -> Attr:
    return Attr((stat.S_IFDIR | 0o755) if is_dir else (stat.S_IFREG | 0o644), 0, 0, 0, 0, 0, 0)


class TreeModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.table = InodeTable("", attr(True))

    def dirs(self):
        out, stack = [], [self.table.root]
        while stack:
            d = stack.pop()
            out.append(d)
            stack.extend(c for c in d.children.values() if c.children is not None)
        return out

    def nodes(self):
        return [c for d in self.dirs() for c in d.children.values()]

    @rule(data=st.data(), name=st.sampled_from(NAMES), is_dir=st.booleans())
    def new(self, data, name, is_dir):
        parent = data.draw(st.sampled_from(self.dirs()))
        self.table.new(parent, name, attr(is_dir))   # replaces a child of that name

    @rule(data=st.data())
    @precondition(lambda self: self.nodes())
    def detach(self, data):
        self.table.detach(data.draw(st.sampled_from(self.nodes())))

    @rule(data=st.data(), name=st.sampled_from(NAMES))
    @precondition(lambda self: self.nodes())
    def move(self, data, name):
        node = data.draw(st.sampled_from(self.nodes()))
        targets = [d for d in self.dirs() if d is not node and not self.inside(d, node)]
        self.table.move(node, data.draw(st.sampled_from(targets)), name)

    @rule(data=st.data())
    @precondition(lambda self: self.nodes())
    def kernel_looks_up(self, data):
        data.draw(st.sampled_from(self.nodes())).lookups += 1

    @rule(data=st.data())
    @precondition(lambda self: self.nodes())
    def kernel_forgets(self, data):
        node = data.draw(st.sampled_from(self.nodes()))
        self.table.forget(node.ino, node.lookups)

    @rule()
    def prune(self):
        held = {n.ino for n in self.nodes() if n.lookups}
        self.table.prune(float("inf"), lambda n: False)
        assert held <= set(self.table.inodes), "an inode the kernel holds was pruned"

    @staticmethod
    def inside(d, node) -> bool:
        while d is not None:
            if d is node:
                return True
            d = d.parent
        return False

    @invariant()
    def the_tree_is_in_the_table(self):
        for n in self.nodes():
            assert self.table.inodes.get(n.ino) is n, n

    @invariant()
    def subdirs_are_counted(self):
        for d in self.dirs():
            assert d.subdirs == sum(1 for c in d.children.values() if c.is_dir), d.name


TreeModel.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_subdirectory_counts = TreeModel.TestCase


def test_prune_drops_what_nothing_holds_leaves_before_their_directory():
    t = InodeTable("", attr(True))
    d = t.new(t.root, "d", attr(True))
    files = {n: t.new(d, n, attr(False)) for n in "abcdefg"}
    d.listed_at = 1.0
    files["a"].lookups = 1                     # the kernel holds it
    files["b"].open_count = 1                  # open
    files["c"].local = True                    # made here, not in S3 yet
    files["d"].pending = object()              # staged for write-back
    files["e"].lookups = 2
    t.forget(files["e"].ino, 2)                # forgotten: may go
    kept = files["f"]                          # keep() says no
    assert t.prune(float("-inf"), lambda n: False) == 0, "nothing is old enough"
    assert t.prune(float("inf"), lambda n: n is kept) == 2     # e and g
    assert sorted(d.children) == ["a", "b", "c", "d", "f"]
    assert files["e"].ino not in t.inodes and files["e"].parent is None
    assert d.listed_at is None, "its listing no longer holds every name"
    assert t.prunes == 2
    # the directory goes in a later round, once its children have
    t.forget(files["a"].ino, 1)
    for n in "bcdf":
        c = files[n]
        c.open_count = 0
        c.local, c.pending = False, None
    t.prune(float("inf"), lambda n: False)
    assert d.children == {} and d.ino in t.inodes
    t.prune(float("inf"), lambda n: False)
    assert d.ino not in t.inodes and t.root.children == {} and t.root.subdirs == 0
    assert len(t) == 1


def test_prune_in_rounds_of_a_limited_size_reaches_every_candidate():
    t = InodeTable("", attr(True))
    d = t.new(t.root, "d", attr(True))
    files = [t.new(d, f"f{i}", attr(False)) for i in range(7)]
    held = set(files[:3])                     # keep() says no to these
    pruned = t.prune(float("inf"), lambda n: n in held, limit=4)
    assert pruned == 0, "d (a parent) and three held files came first"
    assert list(t.idle)[:4] == [f.ino for f in files[3:]], "the unseen ones are next in line"
    pruned = t.prune(float("inf"), lambda n: n in held, limit=4)
    assert pruned == 4 and sorted(d.children) == ["f0", "f1", "f2"]
    held.clear()
    for _ in range(3):
        t.prune(float("inf"), lambda n: False, limit=4)
    assert len(t) == 1 and not t.idle
