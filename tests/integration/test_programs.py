"""Unmodified programs on a real mount: git, sqlite, tar, rsync, cp -a, vim.

Each test uses a program the way people do, then unmounts and checks the
result again through a fresh mount with an empty local tier, so what is
checked is what reached S3, not what one daemon remembers.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

# Every program gets this long; a hung filesystem call fails the test.
TIMEOUT = 120


def run(*argv: str, cwd: str | Path | None = None, env: dict | None = None) -> str:
    full_env = dict(os.environ, LC_ALL="C", GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd or "/"))
    full_env.update(env or {})
    r = subprocess.run(list(argv), cwd=cwd, env=full_env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, f"{argv} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def need(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")


def fresh_mount(mount, bucket, workdir: Path, name: str):
    """A second mount of ``bucket`` with its own, empty local tier."""
    return mount(bucket, options=[f"cache_dir={workdir / name}"])


def make_tree(root: Path) -> None:
    """A small source tree: nested directories, text and binary files, an
    empty file, an executable, a symlink, and modes and times to keep."""
    (root / "src" / "pkg" / "sub").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "empty-dir").mkdir()
    for i in range(30):
        (root / "src" / "pkg" / f"mod{i}.py").write_text(f"VALUE = {i}\n" * (i * 40 + 1))
    (root / "src" / "pkg" / "sub" / "blob.bin").write_bytes(os.urandom(3 << 20))
    (root / "docs" / "empty.txt").write_bytes(b"")
    (root / "docs" / "readme.md").write_text("# readme\n" + "words " * 2000)
    tool = root / "src" / "run.sh"
    tool.write_text("#!/bin/sh\necho ok\n")
    tool.chmod(0o755)
    (root / "docs" / "private.txt").write_text("secret\n")
    (root / "docs" / "private.txt").chmod(0o600)
    (root / "link-to-readme").symlink_to("docs/readme.md")
    os.utime(root / "docs" / "readme.md", (1_500_000_000, 1_500_000_000))


def tree_listing(root: Path) -> dict[str, tuple]:
    """path -> (kind, mode, size, mtime, content or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, st.st_size, int(st.st_mtime),
                            p.read_bytes())
    return out


@pytest.mark.parametrize("options", [[], ["writeback=1"]], ids=["default", "writeback"])
def test_git_init_commit_clone_and_fsck_after_remount(mount, bucket, workdir, options):
    need("git")
    m = mount(bucket, options=options)
    repo = Path(m.mountpoint) / "repo"
    repo.mkdir()
    ident = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
             "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    run("git", "init", "-q", "-b", "main", cwd=repo)
    make_tree(repo)
    run("git", "add", "-A", cwd=repo, env=ident)
    run("git", "commit", "-q", "-m", "first", cwd=repo, env=ident)
    (repo / "src" / "pkg" / "mod1.py").write_text("VALUE = 'changed'\n")
    (repo / "docs" / "readme.md").unlink()
    run("git", "commit", "-q", "-am", "second", cwd=repo, env=ident)
    run("git", "gc", "-q", cwd=repo, env=ident)  # packs: renames, fsyncs, deletes
    assert run("git", "status", "--porcelain", cwd=repo) == ""
    head = run("git", "rev-parse", "HEAD", cwd=repo).strip()
    # a clone from the mount to local disk and back onto the mount
    local = workdir / "clone"
    run("git", "clone", "-q", str(repo), str(local))
    run("git", "clone", "-q", str(local), str(Path(m.mountpoint) / "clone"))
    m.stop()

    m2 = fresh_mount(mount, bucket, workdir, "cache2")
    for r in (Path(m2.mountpoint) / "repo", Path(m2.mountpoint) / "clone"):
        run("git", "fsck", "--full", "--strict", cwd=r)
        assert run("git", "rev-parse", "HEAD", cwd=r).strip() == head
        assert run("git", "status", "--porcelain", cwd=r) == ""
        assert (r / "src" / "pkg" / "mod1.py").read_text() == "VALUE = 'changed'\n"
        assert os.access(r / "src" / "run.sh", os.X_OK)
    assert run("git", "log", "--format=%s", cwd=Path(m2.mountpoint) / "repo").split() == [
        "second", "first"]


@pytest.mark.parametrize("journal_mode,options", [("delete", []), ("wal", []),
                                                 ("delete", ["writeback=1"])],
                         ids=["delete", "wal", "delete-writeback"])
def test_sqlite_transactions_survive_remount(mount, bucket, workdir, journal_mode, options):
    m = mount(bucket, options=options)
    db = Path(m.mountpoint) / "data" / "app.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    assert con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB)")
    with con:
        con.executemany("INSERT INTO t (name, blob) VALUES (?, ?)",
                        [(f"row{i}", os.urandom(200)) for i in range(5000)])
    with con:  # updates and deletes in place: random writes into the file
        con.execute("UPDATE t SET name = name || '-x' WHERE id % 7 = 0")
        con.execute("DELETE FROM t WHERE id % 11 = 0")
    try:  # a rolled-back transaction leaves nothing behind
        with con:
            con.execute("DELETE FROM t")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    expected = con.execute("SELECT id, name, blob FROM t ORDER BY id").fetchall()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)") if journal_mode == "wal" else None
    con.close()
    m.stop()

    m2 = fresh_mount(mount, bucket, workdir, "cache2")
    con = sqlite3.connect(Path(m2.mountpoint) / "data" / "app.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT id, name, blob FROM t ORDER BY id").fetchall() == expected
        assert len(expected) == 5000 - 5000 // 11
    finally:
        con.close()


def test_tar_extract_and_create_round_trip(mount, bucket, workdir):
    need("tar")
    src = workdir / "src"
    src.mkdir()
    make_tree(src)
    archive = workdir / "tree.tar"
    run("tar", "-C", str(src), "-cf", str(archive), ".")
    m = mount(bucket)
    dest = Path(m.mountpoint) / "x"
    dest.mkdir()
    run("tar", "-C", str(dest), "-xpf", str(archive))
    m.stop()

    m2 = fresh_mount(mount, bucket, workdir, "cache2")
    dest = Path(m2.mountpoint) / "x"
    assert tree_listing(dest) == tree_listing(src)
    # and back out again: tar reads the mount and the tree is the same
    again = workdir / "again"
    again.mkdir()
    back = workdir / "back.tar"
    run("tar", "-C", str(dest), "-cf", str(back), ".")
    run("tar", "-C", str(again), "-xpf", str(back))
    assert tree_listing(again) == tree_listing(src)


def test_rsync_archive_then_nothing_left_to_transfer(mount, bucket, workdir):
    need("rsync")
    src = workdir / "src"
    src.mkdir()
    make_tree(src)
    m = mount(bucket)
    dest = Path(m.mountpoint) / "backup"
    run("rsync", "-a", f"{src}/", f"{dest}/")
    m.stop()

    m2 = fresh_mount(mount, bucket, workdir, "cache2")
    dest = Path(m2.mountpoint) / "backup"
    assert tree_listing(dest) == tree_listing(src)
    # a second run finds every file up to date, by time and size and by checksum
    assert run("rsync", "-ai", "--dry-run", f"{src}/", f"{dest}/").strip() == ""
    assert run("rsync", "-ai", "--checksum", "--dry-run", f"{src}/", f"{dest}/").strip() == ""
    # an incremental run sends only what changed and deletes what went away
    (src / "docs" / "readme.md").write_text("new text\n")
    (src / "src" / "pkg" / "mod3.py").unlink()
    run("rsync", "-a", "--delete", f"{src}/", f"{dest}/")
    assert tree_listing(dest) == tree_listing(src)


def test_cp_archive_keeps_modes_times_and_links(mount, bucket, workdir):
    src = workdir / "src"
    src.mkdir()
    make_tree(src)
    m = mount(bucket)
    run("cp", "-a", str(src), str(Path(m.mountpoint) / "copy"))
    m.stop()
    m2 = fresh_mount(mount, bucket, workdir, "cache2")
    assert tree_listing(Path(m2.mountpoint) / "copy") == tree_listing(src)


def test_vim_edits_a_file_in_place(mount, bucket, workdir):
    need("vim")
    m = mount(bucket)
    local = workdir / "local"
    local.mkdir()
    for d in (local, Path(m.mountpoint)):
        (d / "notes.txt").write_text("alpha\nbeta\ngamma\n")
        (d / "notes.txt").chmod(0o640)
        # swap file beside the file, backup, write, fsync; ends the way it
        # ends on local disk
        run("vim", "-u", "NONE", "-i", "NONE", "-N", "-es", "-c",
            "set backup writebackup swapfile backupcopy=no", "-c", "%s/beta/BETA/", "-c", "wq",
            str(d / "notes.txt"), cwd=workdir)
    assert (local / "notes.txt").read_text() == "alpha\nBETA\ngamma\n"
    m.stop()
    m2 = fresh_mount(mount, bucket, workdir, "cache2")

    def without_mtimes(listing):   # the two saves ran at different moments
        return {k: v[:3] + v[4:] if v[0] == "file" else v for k, v in listing.items()}
    assert without_mtimes(tree_listing(Path(m2.mountpoint))) == without_mtimes(
        tree_listing(local))


def test_atomic_save_by_rename_replaces_the_file(mount, bucket, workdir):
    """The editor / config-writer pattern: write a temporary file, fsync it,
    rename it over the old one, fsync the directory."""
    m = mount(bucket)
    target = Path(m.mountpoint) / "conf" / "settings.json"
    target.parent.mkdir()
    target.write_text('{"v": 1}\n')
    for v in range(2, 6):
        tmp = target.with_name(f".settings.json.{v}.tmp")
        with open(tmp, "w") as f:
            f.write(f'{{"v": {v}}}\n')
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        assert target.read_text() == f'{{"v": {v}}}\n'
    m.stop()
    m2 = fresh_mount(mount, bucket, workdir, "cache2")
    conf = Path(m2.mountpoint) / "conf"
    assert [p.name for p in conf.iterdir()] == ["settings.json"]
    assert (conf / "settings.json").read_text() == '{"v": 5}\n'
