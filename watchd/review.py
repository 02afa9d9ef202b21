"""The review folder: outputs that tripped a ``review_if`` condition wait there for a person.

An output held back is written, complete, into the watch's ``review`` folder instead of the
outbox, with a side-by-side sheet (``NAME.sheet.png``, made in the worker:
watchd/imaging/review_sheet.py) and a note (``NAME.review.txt``) saying which figure tripped. The
file stays unfinished (state ``review``), so its job is not reported, its outbox name stays
reserved and its original stays in the spool. ``watchd approve`` moves the output on to the
outbox and finishes the file as usual; ``watchd reject`` fails it, which sends the original to
the failed folder with the reason.

Runs in the daemon's main thread (the ledger's owner). Every step is ordered so that a crash
at any instant is finished or redone: the review path is recorded before anything is written
there (a rerun overwrites the same files, docs/design.md invariant 2), the file becomes
``review`` only when its output, sheet and note are complete, an approved output is complete
in the outbox before the file becomes ``written``, and the review files go only after that
(``cleanup``, from the usual finishing steps, so recovery removes them too).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from watchd.errors import Conflict, InputRejected
from watchd.files import (
    NAME_MAX,
    atomic_write,
    fit_name,
    page_paths,
    read_input,
    remove_file,
    unique_path,
)
from watchd.ledger import FileRecord, Ledger
from watchd.quality import Figures

SHEET_SUFFIX = ".sheet.png"
NOTE_SUFFIX = ".review.txt"

#: An output in the review folder is read back whole on approval; it was written by watchd
#: from one result, which is at most pipeline.MAX_RESULT_BYTES.
_MAX_REVIEW_BYTES = 1 << 30


def _beside(path: Path, suffix: str) -> Path:
    stem = fit_name(path.stem, NAME_MAX - len(suffix))
    return path.with_name(stem + suffix)


def sheet_path(review: Path) -> Path:
    """``photo.png`` -> ``photo.sheet.png`` beside it."""
    return _beside(review, SHEET_SUFFIX)


def note_path(review: Path) -> Path:
    """``photo.png`` -> ``photo.review.txt`` beside it."""
    return _beside(review, NOTE_SUFFIX)


def review_files(review: Path, pages: int) -> list[Path]:
    """Everything a held output puts in the review folder: its pages, the sheet, the note."""
    return [*page_paths(review, pages), sheet_path(review), note_path(review)]


def note_text(
    record: FileRecord, review: Path, reasons: Sequence[str], pages: Sequence[Figures]
) -> str:
    """What the person reviewing reads: why it was held, the figures, what to do."""
    figures = "\n".join(
        f"  {'page ' + str(n) + ': ' if len(pages) > 1 else ''}coverage {f.coverage:.3f}, "
        f"uncertain {f.uncertain:.3f}, touches {', '.join(f.clipped) or 'no edge'}"
        for n, f in enumerate(pages, start=1)
    )
    return (
        f"watchd held back the cutout of {record.rel} for review "
        f"(job {record.job_id}, file {record.id}).\n\n"
        f"Why: {'; '.join(reasons)}\n\n"
        f"Figures (docs/outputs.md, Quality figures):\n{figures}\n\n"
        f"The output is next to this note as {review.name}; {sheet_path(review).name} shows the\n"
        "original, the cutout on a checkerboard and the mask side by side.\n\n"
        f"To send it on to the outbox:            watchd approve {record.job_id} {record.id}\n"
        f"To reject it (original to failed/):     watchd reject {record.job_id} {record.id}\n"
    )


class ReviewDesk:
    """Holds outputs in the review folder and hands them on when approved."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def _choose(self, folder: Path, record: FileRecord, pages: int) -> Path:
        def taken(candidate: Path) -> bool:
            return self._ledger.review_path_in_use(candidate) or any(
                os.path.lexists(p) for p in review_files(candidate, pages)
            )

        return unique_path(folder / record.output.name, taken)

    def hold(
        self,
        record: FileRecord,
        folder: Path,
        outputs: Sequence[bytes],
        *,
        sheet: bytes | None,
        reasons: Sequence[str],
        quality: Sequence[Figures],
        mode: int = 0o666,
        owner: tuple[int, int] | None = None,
    ) -> Path:
        """Write a running file's outputs, sheet and note into ``folder``; the file becomes
        ``review``. OSError leaves it running (the caller retries or fails it)."""
        review = record.review
        if review is None:  # a rerun after a crash keeps the path it had recorded
            review = self._choose(folder, record, len(outputs))
            self._ledger.set_review_path(record.id, review)
        paths = page_paths(review, len(outputs))
        for number, (path, data) in enumerate(zip(paths, outputs, strict=True), start=1):
            page = None if len(outputs) == 1 else number
            atomic_write(path, data, record.id, page=page, mode=mode, owner=owner)
        if sheet is not None:
            atomic_write(sheet_path(review), sheet, record.id, mode=mode, owner=owner)
        text = note_text(record, review, reasons, quality)
        atomic_write(note_path(review), text.encode("utf-8", "replace"), record.id, mode=mode)
        self._ledger.mark_review(
            record.id,
            sum(len(data) for data in outputs),
            len(outputs),
            [figures.as_dict() for figures in quality],
            "held for review: " + "; ".join(reasons),
        )
        return review

    def approve(
        self, record: FileRecord, *, mode: int = 0o666, owner: tuple[int, int] | None = None
    ) -> None:
        """review -> written: copy the held output(s) into the outbox, each atomically.

        The review files stay until the file is finished (:meth:`cleanup`), so a crash
        before ``written`` finds them for the next ``approve``. Conflict: they are gone.
        """
        if record.review is None:  # a file held before it had a path cannot exist; be clear
            raise Conflict(f"file {record.id} has no output in a review folder")
        sources = page_paths(record.review, record.pages)
        targets = page_paths(record.output, record.pages)
        for number, (source, target) in enumerate(zip(sources, targets, strict=True), start=1):
            try:
                data = read_input(source, _MAX_REVIEW_BYTES)
            except InputRejected as exc:  # gone, or replaced by a link, a folder, ...
                raise Conflict(
                    f"file {record.id}: its output in review ({source}) cannot be read ({exc}); "
                    f"reject it, or retry the job after rejecting"
                ) from None
            page = None if record.pages == 1 else number
            try:
                atomic_write(target, data, record.id, page=page, mode=mode, owner=owner)
            except OSError as exc:  # a full or unwritable outbox: still held, approve again
                raise Conflict(
                    f"file {record.id}: cannot write {target} ({exc.strerror or exc}); it stays "
                    "in review: fix the outbox and approve it again"
                ) from None
        self._ledger.approve(record.id)

    @staticmethod
    def cleanup(record: FileRecord) -> None:
        """Remove what a finished file left in the review folder (idempotent)."""
        if record.review is not None:
            for path in review_files(record.review, record.pages):
                remove_file(path)
