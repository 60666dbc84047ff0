"""The inode tree's bookkeeping: each directory's count of subdirectories
(its nlink is 2 + that count) follows every attach, detach and move."""

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

    @staticmethod
    def inside(d, node) -> bool:
        while d is not None:
            if d is node:
                return True
            d = d.parent
        return False

    @invariant()
    def subdirs_are_counted(self):
        for d in self.dirs():
            assert d.subdirs == sum(1 for c in d.children.values() if c.is_dir), d.name


TreeModel.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_subdirectory_counts = TreeModel.TestCase
