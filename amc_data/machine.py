"""What the code needs to know about the machine it runs on, in one place."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
import time
from typing import Any


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
        # The symbols already loaded into this process, the C library's among them (glibc or
        # musl), without searching for the library file.
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def _libc_function(name: str) -> Any:
    """A C library function, or None where there is no such function (musl has no
    `malloc_trim`; glibc before 2.28 has no `renameat2`)."""
    return getattr(_LIBC, name, None) if _LIBC is not None else None


_malloc_trim = _libc_function("malloc_trim")


def release_memory() -> None:
    """Hand memory freed by Python and numpy back to the system.

    glibc keeps freed heap memory for reuse; after a stage's temporaries that can be hundreds of
    MB nobody will use again. A no-op without glibc.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


# -- processes ---------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_prctl = _libc_function("prctl")


def die_with_parent(parent_pid: int) -> None:
    """Make this process (a worker) end when `parent_pid`, the process that started it, ends,
    however it ends (`kill -9` included).

    On Linux the kernel sends SIGKILL on the parent's death (`PR_SET_PDEATHSIG`). Elsewhere a
    daemon thread checks once a second whether the process has been re-parented, and exits.
    """
    if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
        if os.getppid() != parent_pid:  # the parent died before the request took effect
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


# -- files -------------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_EXCHANGE = 1 << 1
_renameat2 = _libc_function("renameat2")


def exchange_paths(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    """Swap two existing paths (files or folders) in one atomic step, so that no reader ever
    finds either name missing; True when done.

    False where the system cannot (not Linux, a C library without `renameat2`, a file system
    without `RENAME_EXCHANGE`): nothing was changed, and the caller falls back to renames.
    Other failures raise `OSError`.
    """
    if _renameat2 is None:
        return False
    status = _renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if status == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(first), None, os.fspath(second))


def available_memory() -> int | None:
    """Bytes of memory the system can give a process now without swapping (Linux's
    MemAvailable; elsewhere the free pages), or None where neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
