"""POSIX conformance suite that runs against any mountpoint.

Run it with ``pytest posix_suite --mountpoint DIR``; score several filesystems
side by side with ``python posix_suite/score.py``.  Nothing here imports
ObjectFS: the suite only makes plain ``os``-level calls (plus ``ctypes`` for
the few libc calls Python does not expose).
"""
