"""Disk space for the stages that write large arrays (frames, features).

Their shards are written through memory maps. A memory-mapped page that cannot be backed by disk
kills the process with SIGBUS, without a message, so a stage checks the free space against its
expected output first, allocates each shard file for real before mapping it (a full disk is then an
ordinary OSError), and reports a full disk as the usual one-paragraph error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import MascotError


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _advice(folder: Path) -> str:
    return (
        f"Free space on the filesystem of {folder}, or move the data folder to a larger disk (a symbolic link from "
        "data/ works), and rerun the stage."
    )


def check_free(folder: Path, needed: int, what: str) -> None:
    """Raise MascotError when the filesystem of `folder` has less than `needed` bytes free."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise MascotError(f"{what} needs {_size(needed)} in {folder}, but only {_size(free)} is free there. {_advice(folder)}")


def allocated_memmap(path: Path, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A new .npy file mapped for writing, like np.lib.format.open_memmap, with its blocks allocated
    before anything is written through the map (an OSError here, never a SIGBUS later)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a filesystem without allocation: sparse as before
                    del array
                    raise
    return array


@contextlib.contextmanager
def disk_full_is_an_error(folder: Path, what: str) -> Iterator[None]:
    """Turn OSError(ENOSPC) raised in the block into a MascotError naming `folder`."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise MascotError(
            f"{what}: the disk of {folder} is full ({exc.strerror}); nothing half-written was kept. {_advice(folder)}"
        ) from None
