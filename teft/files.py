"""Crash-safe file writes, shared by every module that persists something (no torch import: key tools use it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def content_hash(data: bytes | bytearray | memoryview) -> str:
    """The one content hash (sha256 hex): states, checkpoints and payloads are named and fetched by it."""
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes, mode: int | None = None, exclusive: bool = False) -> None:
    """Write via a temp file, fsync and rename, so a crash never leaves a half-written file.

    mode sets the file's permissions (keys: 0o600); exclusive=True links instead of renaming and raises
    FileExistsError if the path appeared meanwhile (two processes creating one key file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
