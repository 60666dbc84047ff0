"""The inode tree: an n-ary tree of inodes mirroring the bucket's key prefixes.

Inode numbers are handed out from a counter and never reused during a
mount, so an inode number names one file for the life of the mount (a
rename moves the inode, it keeps its number).  The kernel's lookup count is
kept per inode: every reply that creates a kernel reference (lookup, create,
mkdir, mknod, symlink, each readdirplus entry) adds one, ``forget`` removes
them, and an inode that left the tree (deleted, replaced, gone from S3) is
dropped from the table only when the kernel has forgotten it and no handle
has it open.  An inode still in the tree that the kernel has forgotten is
pruned from it after a while (``prune``), so the table holds what the kernel
holds plus what is open or unsaved, not every name the mount ever saw.

Attributes are cached on the inode with the monotonic time they were last
confirmed (``validated_at``); directories remember when they were last fully
listed (``listed_at``).  A child changed locally after a listing request was
sent is never overwritten by that listing's (older) answer: ``changed_at``
and the per-directory ``removed`` map guard both directions.
"""

from __future__ import annotations

import itertools
import stat
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from ..errors import NotFound

if TYPE_CHECKING:
    from ..data.file import FileData
    from ..store.base import ObjectInfo

ROOT_INODE = 1


def clock() -> float:
    """Monotonic seconds for every freshness and ordering decision of the
    namespace: trio's clock inside trio (virtual in tests), else the OS's."""
    import trio

    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


@dataclass(slots=True)
class Attr:
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    rdev: int = 0

    def copy(self) -> "Attr":
        return Attr(self.mode, self.uid, self.gid, self.size, self.mtime_ns, self.ctime_ns,
                    self.atime_ns, self.rdev)


class Inode:
    __slots__ = ("ino", "parent", "name", "attr", "lookups", "children", "listed_at",
                 "removed", "validated_at", "changed_at", "remote", "implicit", "legacy",
                 "local", "target", "xattrs", "data", "open_count", "shown_size", "meta_known",
                 "cache_etag", "head_wall_ns", "big_at", "big_listed_at", "misses",
                 "pending", "subdirs", "pages", "moved_at", "__weakref__")

    def __init__(self, ino: int, parent: "Inode | None", name: str, attr: Attr):
        self.ino = ino
        self.parent = parent
        self.name = name
        self.attr = attr
        self.lookups = 0
        # directories only: known children, time of the last full listing,
        # and names removed locally (name -> monotonic time) so that a listing
        # already in flight cannot bring them back.
        self.children: dict[str, Inode] | None = {} if stat.S_ISDIR(attr.mode) else None
        # how many of the children are directories (for nlink), kept by the
        # InodeTable as children come and go: a getattr of a directory of
        # 10,000 entries must not count them every time
        self.subdirs = 0
        self.listed_at: float | None = None
        self.removed: dict[str, float] = {}
        # when a lookup's listing of this directory last found it too big,
        # when a bigger listing was last tried, and names looked up one by
        # one since
        self.big_at = float("-inf")
        self.big_listed_at = float("-inf")
        self.misses = 0
        self.validated_at = clock()
        self.changed_at = 0.0
        # when a rename last moved it (inf while one is moving it): what S3
        # answered about its old keys, or those under it, is not to be
        # applied (Namespace.moved_since)
        self.moved_at = float("-inf")
        # the S3 object behind this inode: a file's object, a directory's
        # "dir/" marker (None when the directory is only a prefix: implicit)
        self.remote: ObjectInfo | None = None
        self.implicit = False
        # a legacy directory object without the trailing slash (s3fs < 1.63)
        # or a "name_$folder$" placeholder: its key, to delete on rmdir
        self.legacy: str | None = None
        # created locally, not yet uploaded
        self.local = False
        self.target: str | None = None          # symlinks
        self.xattrs: dict[str, bytes] | None = None
        self.data: FileData | None = None       # open-file state (data path)
        self.open_count = 0
        # the size last given to the kernel in an attribute reply (None: none)
        self.shown_size: int | None = None
        # True once mode/uid/gid/times came from a HEAD (or we wrote them);
        # entries made from a listing alone have default attributes
        self.meta_known = False
        # ETag of the content the kernel may hold in its page cache
        self.cache_etag: str | None = None
        # the kernel may hold some of its pages: read or written since the
        # last open that did not keep them (the kernel drops them there)
        self.pages = False
        # wall-clock time of the HEAD that gave our attributes (0: none)
        self.head_wall_ns = 0
        # write-back: the staged version not yet in S3 (writeback.Pending);
        # while set, this inode is the truth and S3 is not asked about it
        self.pending = None

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.attr.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.attr.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.attr.mode)

    @property
    def attached(self) -> bool:
        """Still reachable from the root."""
        node = self
        while node.ino != ROOT_INODE:
            if node.parent is None:
                return False
            node = node.parent
        return True

    def __repr__(self) -> str:
        return f"<Inode {self.ino} {self.name!r} {stat.filemode(self.attr.mode)}>"


class InodeTable:
    """All inodes the mount knows, by number, and the tree rooted at ROOT_INODE."""

    def __init__(self, root_prefix: str, root_attr: Attr):
        self.root_prefix = root_prefix
        self._next = ROOT_INODE + 1
        self.inodes: dict[int, Inode] = {}
        self.root = Inode(ROOT_INODE, None, "", root_attr)
        self.root.lookups = 1 << 62  # never forgotten
        self.root.meta_known = True
        self.inodes[ROOT_INODE] = self.root
        # inodes that may hold no kernel reference, and since when: made
        # (a listing makes inodes the kernel never hears of) or forgotten
        self.idle: dict[int, float] = {}
        # directories whose ``removed`` holds names (Namespace.trim_removed)
        self.removing: weakref.WeakSet[Inode] = weakref.WeakSet()
        self.prunes = 0   # how many inodes prune took out of the tree

    def __len__(self) -> int:
        return len(self.inodes)

    def get(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise NotFound(f"no inode {ino}") from None

    def new(self, parent: Inode, name: str, attr: Attr) -> Inode:
        """A new inode attached as ``parent``'s child ``name``.

        Any previous child of that name is detached first (see ``detach``).
        """
        assert parent.children is not None, "parent is not a directory"
        old = parent.children.get(name)
        if old is not None:
            self.detach(old)
        ino = self._next
        self._next += 1
        node = Inode(ino, parent, name, attr)
        self.inodes[ino] = node
        self.idle[ino] = clock()
        parent.children[name] = node
        parent.subdirs += node.children is not None
        parent.removed.pop(name, None)
        return node

    def key(self, node: Inode) -> str:
        """The S3 key of a file, or the key prefix (with '/') of a directory."""
        parts: list[str] = []
        n = node
        while n.ino != ROOT_INODE:
            if n.parent is None:
                raise NotFound("inode is no longer in the tree")
            parts.append(n.name)
            n = n.parent
        key = self.root_prefix + "/".join(reversed(parts))
        if node.is_dir and node.ino != ROOT_INODE:
            key += "/"
        return key

    def path(self, node: Inode) -> str:
        """The path relative to the mount root, for log lines."""
        try:
            return "/" + self.key(node)[len(self.root_prefix):]
        except NotFound:
            return f"<detached {node.name}>"

    def detach(self, node: Inode, *, remember: bool = True) -> None:
        """Take ``node`` (and its subtree) out of the tree.

        The inode stays in the table while the kernel or an open handle still
        refers to it; ``maybe_drop`` removes it once neither does.
        """
        parent = node.parent
        if parent is not None and parent.children is not None \
                and parent.children.get(node.name) is node:
            del parent.children[node.name]
            parent.subdirs -= node.children is not None
            if remember:
                parent.removed[node.name] = clock()
                self.removing.add(parent)
        node.parent = None
        self._drop_subtree(node)

    def _drop_subtree(self, node: Inode) -> None:
        if node.children:
            for child in list(node.children.values()):
                child.parent = None
                self._drop_subtree(child)
            node.children.clear()
            node.subdirs = 0
        self.maybe_drop(node)

    def move(self, node: Inode, new_parent: Inode, new_name: str) -> None:
        """Rename within the tree; replaces whatever held ``new_name``."""
        assert new_parent.children is not None
        old_parent = node.parent
        if old_parent is not None and old_parent.children is not None \
                and old_parent.children.get(node.name) is node:
            del old_parent.children[node.name]
            old_parent.subdirs -= node.children is not None
            old_parent.removed[node.name] = clock()
            self.removing.add(old_parent)
        target = new_parent.children.get(new_name)
        if target is not None and target is not node:
            self.detach(target, remember=False)
        node.parent = new_parent
        node.name = new_name
        new_parent.children[new_name] = node
        new_parent.subdirs += node.children is not None
        new_parent.removed.pop(new_name, None)
        node.changed_at = clock()

    def forget(self, ino: int, n: int) -> None:
        node = self.inodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - n)
        if node.lookups == 0 and node.parent is not None:
            self.idle[ino] = clock()
        self.maybe_drop(node)

    def prune(self, older_than: float, keep, limit: int | None = None) -> int:
        """Take out of the tree, and out of the table, inodes the kernel
        has not held since before ``older_than`` (a ``clock()`` time; made
        then and never handed to it, or forgotten) and nothing else holds:
        not open, no changes short of S3, no children left, and
        ``keep(node)`` false.  Their parent's listing no longer vouches for
        its names (one of them is missing now), so it is listed again when
        next needed; a name asked for again gets a new inode.  A directory
        is pruned once its children are, in a later round.

        Callers must not prune while code holds, across an await, a node it
        found by name that the kernel does not count yet (Filesystem waits
        for such operations).  ``limit``: look at that many candidates at
        most, those kept going to the back of the line, so a round over
        millions of names can be spread out.  Returns how many inodes were
        pruned."""
        pruned = 0
        todo = list(self.idle.items()) if limit is None else \
            list(itertools.islice(self.idle.items(), limit))
        for ino, since in todo:
            node = self.inodes.get(ino)
            if node is None or node.lookups or node.parent is None:
                del self.idle[ino]   # gone, or referenced again (forget puts it back)
                continue
            if since > older_than or node.children or node.open_count \
                    or node.data is not None or node.pending is not None or node.local \
                    or keep(node):
                del self.idle[ino]   # to the back of the line, for a later round
                self.idle[ino] = since
                continue
            parent = node.parent
            del self.idle[ino]
            del self.inodes[ino]
            if parent.children is not None and parent.children.get(node.name) is node:
                del parent.children[node.name]
                parent.subdirs -= node.children is not None
            node.parent = None
            parent.listed_at = None
            pruned += 1
        self.prunes += pruned
        return pruned

    def maybe_drop(self, node: Inode) -> None:
        """Forget ``node`` entirely if it is detached and unreferenced."""
        if (node.parent is None and node.ino != ROOT_INODE and node.lookups == 0
                and node.open_count == 0 and node.data is None):
            self.inodes.pop(node.ino, None)

    def walk(self, node: Inode | None = None) -> Iterator[Inode]:
        stack = [node or self.root]
        while stack:
            n = stack.pop()
            yield n
            if n.children:
                stack.extend(n.children.values())
