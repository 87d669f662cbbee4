"""One exclusive, non-blocking flock on a lock file: one process per directory.

Used by the node (its data directory) and by the LMDB store (its own directory). The kernel
drops the lock when the descriptor is closed or the process dies, even by SIGKILL, so a
crashed node never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path


def take_lock(path: str | os.PathLike[str], busy: Callable[[], Exception]) -> int:
    """Open (creating, mode 0600) and flock `path`; returns the descriptor to keep open.
    Raises `busy()` if another process holds it."""
    fd = os.open(Path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise busy() from None
    return fd


def release_lock(fd: int | None) -> None:
    """Close the descriptor (which drops the flock); None is a no-op."""
    if fd is not None:
        os.close(fd)
