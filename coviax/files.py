"""File helpers every part shares: a file's SHA-256 and making a file or folder durable (fsync)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: str | Path, *, fsync: bool = False) -> str:
    """The hex SHA-256 of the file at ``path``, read in 1 MiB blocks; ``fsync=True`` also fsyncs it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def fsync_path(path: str | Path) -> None:
    """fsync a file or a folder (a folder's fsync makes new names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
