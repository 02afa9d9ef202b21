"""Files that never settle: reported, never waited for silently (issue 17).

A name in an inbox is taken only once its size and mtime stay unchanged for
``settle_seconds`` (docs/design.md, invariant 3). A scanner that died mid-page keeps no
file growing, but a copy that loops, a log-like file that keeps being appended to, or a
folder that a sync tool keeps touching never settles, and before this module nobody was
told. Once a top-level name has kept changing for ``stuck_after`` seconds it is reported:
an ``intake.stuck`` warning, a line in ``watchd status``, ``stuck`` in the stats file and
``watchd_files_stuck`` in the metrics. Once it has kept changing for
``stuck_note_after`` seconds, a note ``<name>.watchd-stuck.txt`` appears beside it for
the people on the share (who cannot read the log), saying why it is not taken. The note
is removed (``intake.unstuck``) when the name settles and is taken, or disappears.

The note is the one file watchd writes into an inbox; its name is in the built-in
ignore list, so intake never takes it. Runs in the main thread.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from watchd.files import NAME_MAX, fit_name, remove_file, write_via_temp

log = structlog.get_logger()

NOTE_SUFFIX = ".watchd-stuck.txt"
#: Entries the stats file lists at most (the count is always complete).
MAX_LISTED = 20


@dataclass
class _Stuck:
    watch: str
    path: Path
    since_mono: float
    since_wall: float
    note: Path | None = None


def note_path(path: Path) -> Path:
    """``scan.pdf`` -> ``scan.pdf.watchd-stuck.txt`` (shortened to fit a name)."""
    return path.with_name(fit_name(path.name + NOTE_SUFFIX, NAME_MAX))


def _note_text(path: Path, since_wall: float, settle_seconds: float) -> bytes:
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since_wall))
    return (
        f"watchd has not taken {path.name!r} yet: it has kept changing since {since}.\n"
        f"watchd takes a file (or a folder) once its size and modification time have not\n"
        f"changed for {settle_seconds:g} seconds, so that it never processes half a file.\n"
        "If a scanner or a copy stopped halfway, delete it and send it again.\n"
        "This note disappears when the file is taken or removed.\n"
    ).encode()


class StuckFiles:
    """What is stuck in every watch's inbox, and the notes written for it."""

    def __init__(self) -> None:
        self._stuck: dict[tuple[str, str], _Stuck] = {}

    def update(
        self,
        watch: str,
        inbox: Path,
        unsettled: Mapping[str, float],
        *,
        now_mono: float,
        now_wall: float,
        note_after: float,
        settle_seconds: float,
    ) -> None:
        """``unsettled``: the watch's names changing for longer than ``stuck_after``, with
        the monotonic time each was first seen (``InboxWatcher.unsettled_since``)."""
        for name, since in unsettled.items():
            key = (watch, name)
            entry = self._stuck.get(key)
            if entry is None:
                entry = _Stuck(watch, inbox / name, since, now_wall - (now_mono - since))
                self._stuck[key] = entry
                log.warning(
                    "intake.stuck",
                    watch=watch,
                    path=str(entry.path),
                    changing_seconds=round(now_mono - since, 1),
                    message="it keeps changing, so it is not taken; if a scanner or copy "
                    "stopped halfway, remove it and send it again",
                )
            if note_after > 0 and entry.note is None and now_mono - since >= note_after:
                self._write_note(entry, settle_seconds)
        for key in [k for k in self._stuck if k[0] == watch and k[1] not in unsettled]:
            self._resolve(self._stuck.pop(key))

    def forget_watch(self, watch: str) -> None:
        """A watch that a reload removed or restarted: its entries are found again."""
        for key in [k for k in self._stuck if k[0] == watch]:
            self._resolve(self._stuck.pop(key))

    def _write_note(self, entry: _Stuck, settle_seconds: float) -> None:
        note = note_path(entry.path)
        digest = hashlib.sha1(os.fsencode(note), usedforsecurity=False).hexdigest()[:16]
        try:
            write_via_temp(
                note,
                _note_text(entry.path, entry.since_wall, settle_seconds),
                f".watchd-{digest}.tmp",
            )
        except OSError as exc:
            log.warning("intake.stuck_note_failed", path=str(note), error=exc.strerror or str(exc))
            return
        entry.note = note
        log.info("intake.stuck_note", watch=entry.watch, path=str(entry.path), note=str(note))

    def _resolve(self, entry: _Stuck) -> None:
        log.info("intake.unstuck", watch=entry.watch, path=str(entry.path))
        if entry.note is not None:
            try:
                remove_file(entry.note)
            except OSError as exc:
                log.warning("intake.stuck_note_failed", path=str(entry.note), error=str(exc))

    def count(self, watch: str) -> int:
        return sum(1 for k in self._stuck if k[0] == watch)

    def listing(self, now_mono: float) -> list[dict[str, Any]]:
        """The oldest :data:`MAX_LISTED` stuck names, for ``watchd status`` and stats."""
        oldest = sorted(self._stuck.values(), key=lambda e: e.since_mono)[:MAX_LISTED]
        return [
            {
                "watch": e.watch,
                "path": str(e.path),
                "changing_seconds": round(max(0.0, now_mono - e.since_mono), 1),
                "note": e.note is not None,
            }
            for e in oldest
        ]
