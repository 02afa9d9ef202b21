"""A hand-edited mask dropped *after* its original (docs/outputs.md, "A mask corrected by hand").

A photographer sees a cutout that went wrong, corrects its mask and drops
``NAME.mask.png`` alone, long after ``NAME.jpg`` was processed and archived. Intake
(watchd/intake.py) finds no original beside the mask (:func:`watchd.masks.pair_masks`)
and asks :func:`earlier_original` for the most recently finished file of the same watch
named ``NAME.*`` whose original is still in the archive (the ledger recorded where it
went). :func:`late_mask_job` makes that a job of its own: the archived original, copied
into the spool (it stays in the archive, untouched), processed with that earlier file's
options and the mask instead of the model (no inference), its output written to the
earlier output's path, so the corrected cutout replaces the bad one in the outbox: a
complete file renamed over the old one (docs/design.md, invariant 3), never a partial.

A file whose output was the mask itself (``format = "mask"``) is passed over: there is
no cutout to correct, and the mask it made is what the person just edited. A mask with
no such original is failed with :data:`watchd.masks.LONE_MASK`; nothing is lost.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from watchd.files import is_regular, unique_path
from watchd.ledger import FileRecord, NewFile, NewJob
from watchd.masks import mask_stem, wants_mask

if TYPE_CHECKING:
    from watchd.config import WatchConfig
    from watchd.ledger import Ledger
    from watchd.watcher import Candidate


def rel_stem(rel: str) -> str:
    """``"a/b.jpg"`` → ``"a/b"``: what a hand-edited mask's stem is matched with."""
    path = PurePosixPath(rel)
    return str(path.with_name(path.stem))


def earlier_original(ledger: Ledger, watch: str, stem: str) -> FileRecord | None:
    """The most recently finished file of ``watch`` named ``stem.*`` (its path inside its
    job: ``photo`` matches ``photo.jpg`` and ``photo.tif``, not ``photo.v2.jpg``) whose
    output was a cutout, not a mask, and whose original is still a plain file in the
    archive; None when there is none."""
    for record in ledger.done_files_named(watch, stem):
        if rel_stem(record.rel) != stem or mask_stem(record.rel) is not None:
            continue
        if wants_mask(record.options.output) or (record.pages or 1) > 1:
            continue
        if is_regular(record.archive):
            return record
    return None


def late_mask_job(
    mask: Candidate,
    earlier: FileRecord,
    watch: WatchConfig,
    *,
    taken: Callable[[Path], bool],
    claim: Callable[[Path], Path],
    busy: Callable[[Path], bool],
    manifest: Path | None,
) -> NewJob:
    """The job that remakes ``earlier``'s output from ``mask`` (see the module's text).

    ``taken``/``claim``: intake's name checks; ``busy``: whether an unfinished file has a
    path as its target (then the corrected output gets a name of its own instead);
    ``manifest``: where the job's manifest goes, if the watch writes one.
    Its original is a copy (``intake = "copy"``, ``after = "keep"``: the spool's copy is
    removed when done, the archived original stays); on failure that copy goes to the
    failed folder with the reason.
    """
    info = os.stat(earlier.archive)
    output = earlier.output
    if busy(output):
        output = unique_path(output, taken)
    name = PurePosixPath(earlier.rel).name
    options = dataclasses.replace(
        earlier.options,
        intake="copy",
        after="keep",
        in_place=False,
        duplicates="reprocess",
        masks={earlier.rel: mask.rel},
        mask_dir=str(mask.path.parent),
    )
    return NewJob(
        watch=watch.name,
        name=PurePosixPath(mask.rel).name,
        kind="loose",
        options=options,
        files=[
            NewFile(
                rel=earlier.rel,
                source=earlier.archive,
                output=claim(output),
                archive=earlier.archive,
                failed=claim(unique_path(watch.failed / name, taken)),
                size=info.st_size,
                mtime_ns=info.st_mtime_ns,
            )
        ],
        priority=watch.priority,
        manifest=manifest,
    )
