"""The content cache: never the same work twice (issue 18, docs/outputs.md "Duplicates").

An input is known by its **cache key**: the SHA-256 of its bytes, the model's name and
every option that changes its outputs. Those options are taken as the whole output-options
value of the job (:class:`watchd.config.OutputConfig`, every field), never a hand-kept
list, so an option added later is part of the key without anyone remembering to add it;
only routing and limit options (model, priority, ``duplicates``, folders, ``after``,
``max_file_bytes``) live outside that value. :data:`CACHE_VERSION` is part of the key too:
raise it when the same options start to give other pixels (a new encoder, a fixed bug).
An option whose value names a file holds only its path: ``background_image`` adds the
picture's SHA-256 to the key (:func:`cache_key`), and an option added later that names a
file must do the same.

What a watch does with an input whose key is known is its ``duplicates`` option:
``reprocess`` (the default: nothing changes, nothing is stored), ``reuse`` (the earlier
outputs are written again, without the model) or ``skip`` (the input goes to the failed
folder with a note naming the earlier job and file).

The copies live in ``<state_dir>/cache`` (the daemon's own folder, invariant 4), one file
per page named by key, written atomically; the ledger holds the index (invariant 5: only
the main thread calls this). Nothing is trusted blindly: a copy that is missing or whose
SHA-256 differs from the one recorded is forgotten and the input processed again. The
copies are bounded by ``[daemon] cache_max_bytes`` (least recently used go first), their
rows go with their files when the ledger is pruned, and :meth:`ContentCache.sweep` removes
copies whose row is gone (pruned, evicted, or a crash between the two steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from watchd.files import atomic_write
from watchd.ledger import CacheEntry, Ledger

log = structlog.get_logger()

#: Part of every key: raise it when the same input and options start to give other outputs.
CACHE_VERSION = 1


def options_value(output: Any) -> dict[str, Any]:
    """The output options as plain data: every field of a dataclass (the typed options of
    a job), or a mapping as it is (options recorded as a dict)."""
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return dataclasses.asdict(output)
    return dict(output)


def cache_key(data: bytes, model: str, output: Any, background: bytes | None = None) -> str:
    """The key of ``data`` processed with ``model`` and the output options ``output``.

    Hex SHA-256 over a canonical JSON of the input's SHA-256, the model, every output
    option, the SHA-256 of the ``background_image`` picture's bytes (the option holds only
    its path, and the picture may change under the same name) and :data:`CACHE_VERSION`:
    equal exactly when all of them are.
    """
    described = {
        "version": CACHE_VERSION,
        "input": hashlib.sha256(data).hexdigest(),
        "model": model,
        "output": options_value(output),
        "background": None if background is None else hashlib.sha256(background).hexdigest(),
    }
    text = json.dumps(described, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Hit:
    """A key found with every copy intact: the earlier file and its outputs' bytes."""

    entry: CacheEntry
    pages: tuple[bytes, ...]


class ContentCache:
    """The copies in ``folder`` and their index in the ledger; main thread only."""

    def __init__(self, ledger: Ledger, folder: Path, max_bytes: int) -> None:
        self._ledger = ledger
        self.folder = folder
        self.max_bytes = max_bytes

    def _copy_path(self, key: str, page: int) -> Path:
        return self.folder / key[:2] / f"{key}.{page}"

    def lookup(self, key: str, now: float) -> Hit | None:
        """The earlier outputs of ``key``, each checked against its recorded SHA-256.

        A copy that is missing, unreadable or changed makes the key unknown again (its row
        and remaining copies go; the caller processes the input as new).
        """
        entry = self._ledger.cache_entry(key)
        if entry is None:
            return None
        pages: list[bytes] = []
        for number, digest in enumerate(entry.digests, start=1):
            path = self._copy_path(key, number)
            try:
                data = path.read_bytes()
            except OSError as exc:
                self._stale(entry, f"copy of page {number} unreadable: {exc.strerror}")
                return None
            if hashlib.sha256(data).hexdigest() != digest:
                self._stale(entry, f"copy of page {number} changed (SHA-256 differs)")
                return None
            pages.append(data)
        self._ledger.cache_touch(key, now)
        return Hit(entry, tuple(pages))

    def _stale(self, entry: CacheEntry, why: str) -> None:
        log.warning("cache.stale", key=entry.key, file=entry.file_id, job=entry.job_id, why=why)
        self._ledger.cache_forget(entry.key)
        self._remove_copies(entry.key, entry.pages)

    def store(
        self, key: str, file_id: int, pages: tuple[bytes, ...], size: tuple[int, int], now: float
    ) -> None:
        """Keep copies of a file's outputs under ``key`` (copies first, then the row), then
        evict the least recently used entries beyond ``max_bytes``.

        An entry larger than the whole cache is not kept. A copy that cannot be written is
        logged and the entry left out: the cache is an optimisation, never a reason to fail.
        """
        total = sum(len(page) for page in pages)
        if total > self.max_bytes:
            return
        try:
            for number, data in enumerate(pages, start=1):
                atomic_write(self._copy_path(key, number), data, file_id, page=number, mode=0o600)
        except OSError as exc:
            log.warning("cache.store_failed", key=key, file=file_id, error=str(exc))
            self._remove_copies(key, len(pages))
            return
        digests = tuple(hashlib.sha256(data).hexdigest() for data in pages)
        self._ledger.cache_put(key, file_id, digests=digests, size=total, dimensions=size, now=now)
        for evicted in self._ledger.cache_evict(self.max_bytes):
            self._remove_copies(evicted)

    def _remove_copies(self, key: str, pages: int | None = None) -> None:
        folder = self.folder / key[:2]
        if pages is None:
            try:
                names = [n for n in os.listdir(folder) if n.startswith(key + ".")]
            except OSError:
                return
        else:
            names = [f"{key}.{number}" for number in range(1, pages + 1)]
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(folder / name)

    def sweep(self) -> int:
        """Remove copies whose row is gone (pruned with their file, evicted, or left by a
        crash between writing a copy and recording it); returns how many. Then evict down
        to ``max_bytes`` (it may have been lowered since)."""
        for evicted in self._ledger.cache_evict(self.max_bytes):
            self._remove_copies(evicted)
        keys = self._ledger.cache_keys()
        removed = 0
        try:
            folders = list(os.scandir(self.folder))
        except OSError:
            return 0
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(folder.path):
                if item.name.partition(".")[0] in keys:
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(item.path)
                    removed += 1
        return removed
