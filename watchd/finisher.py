"""What happens to a file once its fate is known: outputs written, original archived or failed.

One object owns it, so that the parts that learn a file's fate (the dispatcher from a
worker's result, intake from a bad sidecar or a vanished input, the ``cancel`` command,
recovery after a crash) all end it the same way:

* :meth:`Finisher.complete`: the outputs written atomically (one per page, page names
  checked the first time they are known), the file ``written``, then its original
  archived, deleted or kept (:meth:`Finisher.dispose_done`);
* an output that tripped ``review_if``: held in the review folder (watchd/review.py)
  until :meth:`Finisher.approve` (then as :meth:`Finisher.complete`) or
  :meth:`Finisher.reject` (then as :meth:`Finisher.fail`);
* :meth:`Finisher.fail`: the reason recorded, the original and a readable note in the
  failed folder (:meth:`Finisher.dispose_failed`);
* when a file's end ends its job, the job is handed on (``job_ended``: the manifest and
  hooks, a waiting HTTP request).

Each step is idempotent and recorded before the next, so recovery after a crash or an
I/O error redoes what is missing (:meth:`Finisher.finish_interrupted`); a step that
fails with an I/O error leaves the file where it was and the periodic pass tries again
(docs/design.md, invariants 1 to 3).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from watchd.files import (
    atomic_write,
    is_permanent,
    move_file,
    page_paths,
    remove_file,
    remove_stray_temp,
    write_error_note,
)
from watchd.ledger import CANCELLED_REASON, CacheEntry, FileRecord, FinishedJob, Ledger, Recovery
from watchd.pool.task import Result
from watchd.review import ReviewDesk
from watchd.spool import original_path, spool_mask_path
from watchd.stats import Activity

log = structlog.get_logger()


def _file_log(record: FileRecord) -> Any:
    """The log, bound to how every event of a file's end names it (file, job, watch, as
    ``job.done`` names its job: job, watch), so an operator can follow one file or one job
    through the log."""
    return log.bind(file=record.id, job=record.job_id, watch=record.watch)


class Finisher:
    """Ends files: writes outputs, disposes of originals, hands ended jobs on (main thread)."""

    def __init__(
        self,
        ledger: Ledger,
        spool_dir: Path,
        *,
        activity: Activity,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        job_ended: Callable[[FinishedJob], None],
    ) -> None:
        """``job_ended``: called (main thread) when a file's end ends its job."""
        self._ledger = ledger
        self._spool = spool_dir
        self._activity = activity
        self._clock = clock
        self._monotonic = monotonic
        self._job_ended = job_ended
        self.jobs_finished = 0
        #: What ``status`` shows as the last error (see :meth:`note_error`).
        self.last_error: dict[str, Any] | None = None
        #: the quality gate's review folder (watchd/review.py)
        self.review = ReviewDesk(ledger)

    def mask_copy(self, record: FileRecord) -> Path:
        """Where the copy of the input's hand-edited mask waits (watchd/masks.py)."""
        return spool_mask_path(self._spool, record.id)

    def original(self, record: FileRecord) -> Path:
        """Where the input is while it waits: the spool, or the inbox with ``after = "keep"``."""
        return original_path(self._spool, record)

    # --- a result -------------------------------------------------------------------------------

    def complete(
        self,
        record: FileRecord,
        result: Result,
        reused: CacheEntry | None = None,
        written: Callable[[], None] | None = None,
    ) -> bool:
        """Write a file's outputs, mark it written, dispose of its original; True if written.

        ``reused``: the outputs are an earlier file's, from the content cache (recorded as
        the file's ``reused_from``, said in the log and the manifest). ``written``: called
        once the file is ``written``, before its original is disposed of and its job can
        end (the content cache keeps its copy there, so a job's end means it is kept).

        Fails the file (False) when its pages would overwrite files watchd did not make, or
        when the output cannot be written for a reason no wait cures
        (:data:`watchd.files.PERMANENT_ERRNOS`). Raises :class:`OSError` when a wait may
        cure it (a full disk, an unwritable outbox): the caller retries the file later.
        """
        pages = len(result.pages)
        if pages > 1 and record.pages != pages:  # the first time its page names are known
            taken = [p for p in page_paths(record.output, pages) if os.path.lexists(p)]
            if taken:
                more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
                self.fail(
                    record,
                    f"the {pages} pages of this document would be written over "
                    f"{taken[0].name}{more}, already in {taken[0].parent}, which watchd "
                    "did not make from it: move those files away and drop the document again",
                )
                return False
            self._ledger.set_pages(record.id, pages)
        quality = [figures.as_dict() for figures in result.quality]
        try:
            if result.review and record.options.review is not None:
                self._hold_for_review(record, result, Path(record.options.review), quality)
                return True
            write_outputs(record, result, *self._output_access(record))
        except OSError as exc:
            if not is_permanent(exc):
                raise
            self.fail(record, f"cannot write the output {record.output}: {exc.strerror or exc}")
            return False
        reused_from = reused.file_id if reused else None
        self._ledger.mark_written(
            record.id, result.output_bytes, pages, quality=quality, reused_from=reused_from
        )
        self._activity.record_quality(record.watch, quality, held=False)
        if written is not None:
            written()
        latency = self._clock() - record.created_at
        self._activity.record(record.watch, ok=True, latency=latency, now=self._monotonic())
        _file_log(record).info(
            "file.done",
            output=str(record.output),
            pages=pages,
            bytes=result.output_bytes,
            width=result.width,
            height=result.height,
            attempt=record.attempts,
            threads=result.threads or None,
            worker_pid=result.worker_pid or None,
            **({"reused_from": reused.file_id, "reused_job": reused.job_id} if reused else {}),
            **{f"{k}_s": round(v, 3) for k, v in result.timings.items()},
            latency_s=round(latency, 3),
        )
        self.dispose_done(record)
        return True

    # --- the review folder (watchd/review.py) -----------------------------------------------------

    def _hold_for_review(
        self, record: FileRecord, result: Result, folder: Path, quality: list[dict[str, Any]]
    ) -> None:
        """The output tripped ``review_if``: into the review folder, not the outbox."""
        mode, owner = self._output_access(record)
        where = self.review.hold(
            record,
            folder,
            result.pages,
            sheet=result.sheet,
            reasons=result.review,
            quality=result.quality,
            mode=mode,
            owner=owner,
        )
        self._activity.record_quality(record.watch, quality, held=True)
        _file_log(record).warning(
            "file.review",
            review=str(where),
            why="; ".join(result.review),
            quality=quality,
        )

    def approve(self, record: FileRecord) -> None:
        """An operator approved a held output: to the outbox, then finished as usual."""
        mode, owner = self._output_access(record)
        self.review.approve(record, mode=mode, owner=owner)
        log.info("file.approved", file=record.id, job=record.job_id, output=str(record.output))
        self.dispose_done(record)

    def reject(self, record: FileRecord, reason: str) -> None:
        """An operator rejected a held output: the file fails, its original to failed/."""
        self.fail(record, f"rejected in review: {reason}")

    def _output_access(self, record: FileRecord) -> tuple[int, tuple[int, int] | None]:
        """An output's permission bits and owner: its input's, so a private photo (0600)
        never gives a cutout everyone may read, and (where the daemon may chown: root) its
        owner can still read it; 0666 less the umask when the input cannot be asked."""
        try:
            info = os.stat(self.original(record))
        except OSError:
            return 0o666, None
        return stat.S_IMODE(info.st_mode) & 0o666, (info.st_uid, info.st_gid)

    def dispose_done(self, record: FileRecord) -> None:
        """written -> done: archive, delete or keep the original (idempotent)."""
        options = record.options
        original = self.original(record)
        try:
            if options.in_place:
                pass  # after = "keep" on an inbox: the original stays where it was dropped
            elif options.after == "delete" or (options.after == "keep" and options.copied):
                remove_file(original)  # (a submitted copy: the original was never touched)
            elif os.path.lexists(original):
                move_file(original, record.archive, record.id)
            self.review.cleanup(record)
            self._remove_mask_copy(record)
        except OSError as exc:
            log.error("file.archive_failed", file=record.id, path=str(original), error=str(exc))
            return  # stays 'written'; the periodic finishing pass tries again
        self._job_finished(self._ledger.mark_done(record.id))

    # --- a failure ------------------------------------------------------------------------------

    def fail(self, record: FileRecord, reason: str) -> None:
        """Record the reason, then put the original and a readable note in the failed folder."""
        self._ledger.mark_failing(record.id, reason)
        if reason != CANCELLED_REASON:
            self.note_error(record, reason)
        _file_log(record).error("file.failed", source=str(record.source), error=reason)
        self.dispose_failed(record, reason)

    def note_error(self, record: FileRecord, message: str) -> None:
        """What ``status`` shows as the last error: failures, and transient write errors too
        (while the outbox is full or unwritable, nothing else tells an operator why files wait).
        """
        self.last_error = {
            "at": self._clock(),
            "watch": record.watch,
            "job": record.job_id,
            "file": record.id,
            "message": f"{record.rel}: {message}",
        }

    def dispose_failed(self, record: FileRecord, reason: str) -> None:
        """failing -> failed (idempotent, for recovery too)."""
        original = self.original(record)
        try:
            keep = record.options.in_place
            write_error_note(record.failed, reason, record.rel, record.id, left_in_inbox=keep)
            if os.path.lexists(original) and not keep:
                move_file(original, record.failed, record.id)
            self.review.cleanup(record)
            self._remove_mask_copy(record)
        except OSError as exc:
            log.error("file.quarantine_failed", file=record.id, error=str(exc))
            return  # stays 'failing'; the periodic finishing pass tries again
        latency = self._clock() - record.created_at
        self._activity.record(record.watch, ok=False, latency=latency, now=self._monotonic())
        self._job_finished(self._ledger.mark_failed(record.id))

    def _remove_mask_copy(self, record: FileRecord) -> None:
        """The spool's copy of a hand-edited mask goes with its input (watchd/masks.py)."""
        if record.options.mask_for(record.rel) is not None:
            remove_file(spool_mask_path(self._spool, record.id))

    def _job_finished(self, job: FinishedJob | None) -> None:
        if job is None:
            return
        self.jobs_finished += 1
        log.bind(job=job.id, watch=job.watch).info(
            "job.done",
            name=job.name,
            state=job.state,
            files=job.total,
            failed=job.failed,
            seconds=round(job.seconds, 3),
        )
        self._job_ended(job)

    # --- recovery -------------------------------------------------------------------------------

    def finish_interrupted(self, recovery: Recovery) -> None:
        """Finish side effects a crash or an I/O error interrupted."""
        # Temp names are derived from the file id, so exactly these can be stray.
        for record in recovery.requeued:
            self._remove_temp(record, record.output.parent)
        for record in recovery.written:
            self._remove_temp(record, record.archive.parent)
            self.dispose_done(record)
        for record in recovery.failing:
            self._remove_temp(record, record.failed.parent)
            self.dispose_failed(record, record.error or "unknown error")
        for record in recovery.pending:
            self._remove_temp(record, self._spool)

    def _remove_temp(self, record: FileRecord, folder: Path) -> None:
        if remove_stray_temp(folder, record.id):
            log.info("recovery.temp_removed", file=record.id, folder=str(folder))


def write_outputs(
    record: FileRecord,
    result: Result,
    mode: int = 0o666,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write each output atomically: one, or one per page (:func:`page_paths`).

    Page paths depend only on the assigned output and the page count, so a rerun
    after a crash between two pages overwrites the same files; the file becomes
    ``written`` only when its last page is complete.
    """
    paths = page_paths(record.output, len(result.pages))
    if len(paths) == 1:
        atomic_write(paths[0], result.pages[0], record.id, mode=mode, owner=owner)
        return
    for number, (path, data) in enumerate(zip(paths, result.pages, strict=True), start=1):
        atomic_write(path, data, record.id, page=number, mode=mode, owner=owner)
