"""Thumbnails for the page (docs/page.md): made on demand, bounded, cached on disk.

The page shows each file of a job before and after, side by side. Sending the full
originals and cutouts would cost the browser (and a phone's data) megabytes per row, so
the daemon makes a small WebP (transparency kept) of at most :data:`SIZE` pixels on the
longer side, the first time one is asked for.

What is read is decided by the ledger, never by the request: the route asks the main
thread where that file of that job is (its output, or its original in the archive, the
failed folder or the spool) and opens only those paths, each checked to lie inside its
own folder and to be a regular file reached without a link
(:func:`watchd.http.views.open_inside`). This module is handed the open descriptor.

The cache lives in ``<state_dir>/cache/thumbs``, one file per (job, file, side, size,
source mtime and size): a source that changes gets a new entry, and the old one ages
out. It is bounded by count and bytes; the least recently used entries go first.
Writes are atomic (temp file, rename), so a crash leaves no partial thumbnail that a
later request could serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import threading
import warnings
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Final

from PIL import Image, ImageOps

from watchd.errors import ThumbnailError

#: The longer side of a thumbnail, in pixels.
SIZE: Final = 320
#: The cache holds at most this many thumbnails and bytes; beyond, the oldest used go.
MAX_ENTRIES: Final = 2000
MAX_BYTES: Final = 64 * 1024 * 1024
#: An original larger than this (pixels) is not decoded for a thumbnail.
MAX_PIXELS: Final = 100_000_000


@dataclass(eq=False)
class Thumbnails:
    """A bounded on-disk cache of thumbnails, made on demand."""

    root: Path
    _: KW_ONLY
    size: int = SIZE  # the longer side, pixels
    max_entries: int = MAX_ENTRIES
    max_bytes: int = MAX_BYTES
    _prune_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def get(self, fd: int, key: str) -> tuple[bytes, bool]:
        """The thumbnail of the open regular file ``fd`` (closed here) and whether it came
        from the cache. ``key`` names what it is (job, file, side); the source's mtime and
        size are added, so a changed source is never answered with an old picture."""
        try:
            info = os.fstat(fd)
            stamp = f"{key}\0{info.st_mtime_ns}\0{info.st_size}\0{self.size}"
            path = self.root / (hashlib.sha256(stamp.encode()).hexdigest() + ".webp")
            with contextlib.suppress(FileNotFoundError):
                data = path.read_bytes()
                os.utime(path)  # recently used: the last to be pruned
                return data, True
            data = render(fd, self.size)
        finally:
            os.close(fd)
        self._store(path, data)
        return data, False

    def _store(self, path: Path, data: bytes) -> None:
        handle, temp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".webp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self.prune()

    def prune(self) -> int:
        """Remove the least recently used entries until the cache is within its bounds
        (to 90 % of them, so that not every new thumbnail prunes); returns how many went."""
        with self._prune_lock:
            entries: list[tuple[float, int, str]] = []
            for entry in os.scandir(self.root):
                if entry.is_file(follow_symlinks=False) and not entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        info = entry.stat(follow_symlinks=False)
                        entries.append((info.st_mtime, info.st_size, entry.path))
            total = sum(size for _, size, _ in entries)
            if len(entries) <= self.max_entries and total <= self.max_bytes:
                return 0
            entries.sort()
            keep_entries, keep_bytes = self.max_entries * 9 // 10, self.max_bytes * 9 // 10
            removed = 0
            for _, size, name in entries:
                if len(entries) - removed <= keep_entries and total <= keep_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
                total -= size
                removed += 1
            return removed


def render(fd: int, size: int) -> bytes:
    """A WebP of at most ``size`` px on the longer side; alpha kept, EXIF rotation applied."""
    handle = os.fdopen(os.dup(fd), "rb")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ThumbnailError(f"{image.width}x{image.height} is too large to preview")
                image.draft(None, (size, size))  # JPEG: decode at a fraction of the size
                picture = ImageOps.exif_transpose(image)
                picture.thumbnail((size, size))
                if picture.mode not in ("RGB", "RGBA"):
                    has_alpha = "A" in picture.getbands() or "transparency" in picture.info
                    picture = picture.convert("RGBA" if has_alpha else "RGB")
                out = io.BytesIO()
                picture.save(out, "WEBP", quality=80, method=4)
                return out.getvalue()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ThumbnailError(f"cannot make a thumbnail: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise ThumbnailError(f"cannot make a thumbnail: {exc}") from None
    finally:
        handle.close()
