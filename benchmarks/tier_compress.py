"""The local tier's zstd trade-off: disk space saved against CPU per MiB.

Stores the same data in a fresh TierStore with and without compression and
reads every block back (with its CRC check), on two inputs:

* text: the .py/.json/.txt files under a source tree (default: this
  interpreter's standard library), concatenated and cut into 1 MiB blocks;
* random: incompressible bytes of the same size.

Prints MiB, bytes on disk and the ratio, and CPU seconds per GiB to store
and to load.  A quick run, not a test:

    PYTHONPATH=. .venv/bin/python benchmarks/tier_compress.py [--tree DIR] [--mib 128]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sysconfig
import tempfile
import time

from objectfs.tier.store import BLOCK_SIZE, ObjectRef, TierStore

TEXT_SUFFIXES = (".py", ".json", ".txt", ".md", ".rst", ".c", ".h", ".html", ".xml", ".cfg")


def text_corpus(tree: str, limit: int) -> bytes:
    out, n = [], 0
    for top, dirs, names in os.walk(tree):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(TEXT_SUFFIXES):
                try:
                    with open(os.path.join(top, name), "rb") as f:
                        b = f.read()
                except OSError:
                    continue
                out.append(b)
                n += len(b)
                if n >= limit:
                    return b"".join(out)[:limit]
    return b"".join(out)


def run(data: bytes, compress: bool) -> dict:
    root = tempfile.mkdtemp(prefix="objectfs-tierbench-")
    try:
        store = TierStore(root, 1 << 40, compress=compress)
        ref = ObjectRef("bench|b", "k", "e", len(data))
        blocks = [(b, data[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]) for b in range(ref.nblocks)]
        t0 = time.process_time()
        for i in range(0, len(blocks), 8):  # the write-behind stores a segment at a time
            store.put(ref, blocks[i:i + 8])
        put_cpu = time.process_time() - t0
        t0 = time.process_time()
        for b, piece in blocks:
            assert store.load(ref, b) == piece
        load_cpu = time.process_time() - t0
        used = store.usage()
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    gib = len(data) / (1 << 30)
    return {"disk": used, "put_s_per_gib": put_cpu / gib, "load_s_per_gib": load_cpu / gib}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", default=sysconfig.get_paths()["stdlib"])
    p.add_argument("--mib", type=int, default=128)
    args = p.parse_args()
    text = text_corpus(args.tree, args.mib << 20)
    inputs = {"text": text, "random": os.urandom(len(text))}
    print(f"{'input':8} {'mode':5} {'MiB':>6} {'on disk MiB':>12} {'ratio':>6} "
          f"{'store CPU s/GiB':>16} {'load CPU s/GiB':>15}")
    for name, data in inputs.items():
        for compress in (False, True):
            r = run(data, compress)
            print(f"{name:8} {'zstd' if compress else 'none':5} {len(data) / 2**20:6.0f} "
                  f"{r['disk'] / 2**20:12.1f} {len(data) / r['disk']:6.2f} "
                  f"{r['put_s_per_gib']:16.2f} {r['load_s_per_gib']:15.2f}")


if __name__ == "__main__":
    main()
