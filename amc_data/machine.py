"""What the code needs to know about the machine it runs on, in one place."""

from __future__ import annotations

import ctypes
import os
import sys


def cpu_count() -> int:
    """Cores this process may use (respects affinity masks and containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


if hasattr(os, "pread"):
    pread = os.pread  # read at an offset without moving a shared file position
else:  # Windows: each process reads through a descriptor of its own, so seeking is safe

    def pread(fd: int, size: int, offset: int) -> bytes:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 -- musl has no malloc_trim
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def release_memory() -> None:
    """Hand memory freed by Python and numpy back to the system.

    glibc keeps freed heap memory for reuse; after a stage's temporaries that can be hundreds of
    MB nobody will use again. A no-op without glibc.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
