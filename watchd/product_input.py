"""The background pictures the config names (``background_image``), read by the daemon.

Workers never open paths (docs/design.md, invariant 5), so the daemon reads the picture and
hands its bytes to the worker with each file that uses it. It is read once and kept while
the file on disk is unchanged (same inode, size and modification time: an operator who
replaces it gets the new picture for the next file, no restart). It is read as carefully as
an input (watchd/files.py ``read_input``: a regular file, no symlink, no hard link) and is
decoded in the worker; a picture that is missing or not an image fails each file that
needs it, with a reason naming the key and the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from watchd.errors import InputRejected
from watchd.files import read_input

#: The largest background picture read (bytes): it travels to a worker with every file.
MAX_BACKGROUND_BYTES = 64 * 1024 * 1024
#: Pictures kept in memory at most (one per watch is usual).
MAX_PICTURES = 8


class BackgroundImages:
    """Background pictures by path, each read once while unchanged on disk."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int, int], bytes]] = {}

    def read(self, path: str | None) -> bytes | None:
        """The bytes of the picture at ``path`` (None: no picture). InputRejected names it."""
        if path is None:
            return None
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            raise InputRejected(
                f"background_image {path} cannot be read: {exc.strerror or exc}"
            ) from None
        signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        try:
            data = read_input(Path(path), MAX_BACKGROUND_BYTES)
        except InputRejected as exc:
            raise InputRejected(f"background_image {path} cannot be used: {exc}") from None
        if len(self._cache) >= MAX_PICTURES:  # bounded (invariant 6): the oldest goes
            del self._cache[next(iter(self._cache))]
        self._cache[path] = (signature, data)
        return data
