"""Where an accepted input waits while it is processed.

Every input that is not read in place waits in the spool under its file id (no user
text in the name); with ``after = "keep"`` on an inbox it is read where it was dropped.
Intake puts inputs here; the finisher takes them out (archive, delete, failed folder).
"""

from __future__ import annotations

from pathlib import Path

from watchd.ledger import FileRecord


def spool_path(spool_dir: Path, file_id: int) -> Path:
    """Where an accepted input waits while it is processed (named by id: no user text)."""
    return spool_dir / str(file_id)


def spool_mask_path(spool_dir: Path, file_id: int) -> Path:
    """Where the copy of an input's hand-edited mask waits (watchd/masks.py)."""
    return spool_dir / f"{file_id}.mask"


def original_path(spool_dir: Path, record: FileRecord) -> Path:
    """Where the input is while it waits: the spool, or the inbox with ``after = "keep"``."""
    if record.options.in_place:
        return record.source
    return spool_path(spool_dir, record.id)
