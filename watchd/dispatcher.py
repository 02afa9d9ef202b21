"""The dispatch loop's body: claim queued files, keep the pool busy, finish what comes back.

In-flight work is capped (``capacity``), so 100,000 queued files are 100,000
ledger rows, not 100,000 images in memory. Every outcome ends in exactly one
of three places: the output written and the original disposed of; the
original in the failed folder with its reason; or the file back in the queue
(a lost attempt below ``max_attempts``, or a transient write error, retried
with exponential backoff and jitter). A write error that no wait can cure (a name
too long or invalid for the file system, a folder where the output goes:
:data:`watchd.files.PERMANENT_ERRNOS`) fails the file with the reason instead.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import structlog

from watchd.content_cache import ContentCache, Hit, cache_key
from watchd.errors import InputRejected
from watchd.files import (
    atomic_write,
    is_permanent,
    move_file,
    page_paths,
    read_input,
    remove_file,
    remove_stray_temp,
    write_error_note,
)
from watchd.intake import mask_of, output_config, spool_mask_path, spool_path
from watchd.ledger import CANCELLED_REASON, CacheEntry, FileRecord, FinishedJob, Ledger, Recovery
from watchd.pipeline import AttemptFailed, Pool, Result, Task, outcome
from watchd.stats import Activity

log = structlog.get_logger()

#: Files one ``fill`` may finish without the pool (content-cache hits, inputs that fail to
#: read) before it returns, so that a re-dropped folder of thousands of known photos is
#: written in slices between the main loop's other work (status, intake, results).
FILL_BUDGET = 64

#: Backoff for transient write errors (full disk, unwritable outbox): seconds.
BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0


class Dispatcher:
    """Owns the in-flight set; runs in the daemon's main thread only."""

    def __init__(
        self,
        ledger: Ledger,
        pool: Pool,
        spool_dir: Path,
        *,
        max_attempts: int,
        wake: Callable[[], None],
        clock: Callable[[], float],
        rng: random.Random,
        activity: Activity,
        monotonic: Callable[[], float],
        cache: ContentCache | None = None,
    ) -> None:
        self._ledger = ledger
        self._cache = cache
        #: the cache key of each file being made under duplicates = reuse|skip (by file id)
        self._keys: dict[int, str] = {}
        self._pool = pool
        self._spool = spool_dir
        self._max_attempts = max_attempts
        self._wake = wake
        self._clock = clock
        self._rng = rng
        self._activity = activity
        self._monotonic = monotonic
        self.paused = False
        self.jobs_finished = 0
        self.last_error: dict[str, Any] | None = None
        self.in_flight: dict[Future[Result], FileRecord] = {}
        #: when each in-flight attempt was handed to the pool: (unix, monotonic) seconds
        self._handed: dict[Future[Result], tuple[float, float]] = {}
        self._write_failures = 0
        self._pool_breaks = 0
        #: Called in the main thread when a job's last file ends (manifest, hooks).
        self.on_job_finished: Callable[[FinishedJob], None] = lambda _job: None

    def use_pool(self, pool: Pool, max_attempts: int) -> None:
        """Send new work to ``pool`` (after a reload); running files finish where they are."""
        self._pool = pool
        self._max_attempts = max_attempts

    @property
    def capacity(self) -> int:
        """The in-flight cap, asked of the pool each time: a cluster grows, shrinks, goes away."""
        return self._pool.capacity

    # --- dispatching ------------------------------------------------------------------------------

    def fill(self) -> int:
        """Claim queued files up to the in-flight cap and hand them to the pool.

        Files finished here, without the pool, count against :data:`FILL_BUDGET`; when it
        is spent the loop is woken to come back after its other work.
        """
        started = 0
        claimed = 0
        while not self.paused and len(self.in_flight) < self.capacity:
            if claimed - started >= FILL_BUDGET:
                self._wake()
                break
            wanted = min(self.capacity - len(self.in_flight), FILL_BUDGET)
            records = self._ledger.claim(wanted)
            if not records:
                break
            # The only file queued, with nothing in flight: it has the pool to itself, and
            # may use every thread of it (the pool's ``alone_threads``; 0 = no difference).
            alone = not self.in_flight and len(records) == 1 and wanted > 1
            threads = self._pool.alone_threads if alone else 0
            claimed += len(records)
            for record in records:
                if self._start(record, threads):
                    started += 1
        return started

    def _start(self, record: FileRecord, threads: int = 0) -> bool:
        """Hand one claimed file to the pool; False when it was finished here instead."""
        try:
            limit = int(record.options["max_file_bytes"])
            data = read_input(self.original(record), limit)
        except InputRejected as exc:
            self.fail(record, str(exc))
            return False
        output = output_config(record.options)
        mask_name = mask_of(record)
        mask = None
        if mask_name is not None:  # a hand-edited mask (watchd/masks.py): no cache, no model
            try:
                mask = read_input(spool_mask_path(self._spool, record.id), limit)
            except InputRejected as exc:
                self.fail(record, f"the hand-edited mask {mask_name} could not be used: {exc}")
                return False
        elif self._is_duplicate(record, data, output):
            return False
        task = Task(
            file_id=record.id,
            data=data,
            model=str(record.options["model"]),
            output=output,
            threads=threads,
            mask=mask,
            mask_name=mask_name or "",
        )
        future = self._pool.submit(task)
        self.in_flight[future] = record
        self._handed[future] = (self._clock(), self._monotonic())
        future.add_done_callback(lambda _f: self._wake())
        return True

    def _is_duplicate(self, record: FileRecord, data: bytes, output: object) -> bool:
        """Under ``duplicates = "reuse"`` or ``"skip"``: whether the content cache knows this
        input (and then it is finished here, without the pool); else its key is kept so
        that its outputs are stored when they come (watchd/content_cache.py)."""
        policy = record.options.get("duplicates", "reprocess")
        if self._cache is None or policy == "reprocess":
            return False
        key = cache_key(data, str(record.options["model"]), output)
        hit = self._cache.lookup(key, self._clock())
        if hit is None:
            self._keys[record.id] = key
            return False
        if policy == "skip":
            self.fail(record, skip_reason(hit.entry))
        else:
            self._reuse(record, hit)
        return True

    def _reuse(self, record: FileRecord, hit: Hit) -> None:
        """Write the cached outputs of an earlier file as this file's outputs."""
        self._complete(
            record,
            Result(
                file_id=record.id,
                pages=hit.pages,
                width=hit.entry.width,
                height=hit.entry.height,
                threads=0,
            ),
            reused=hit.entry,
        )

    def original(self, record: FileRecord) -> Path:
        """Where the input is while it waits: the spool, or the inbox with ``after = "keep"``."""
        if record.options.get("in_place"):
            return record.source
        return spool_path(self._spool, record.id)

    # --- finishing --------------------------------------------------------------------------------

    def collect(self) -> int:
        """Finish every in-flight file whose future is done."""
        self._pool.check()
        done = [future for future in self.in_flight if future.done()]
        self._time_attempts(done)
        broke = [future for future in done if pool_broke(future)]
        if broke:
            self._pool_broke([self.in_flight.pop(future) for future in broke])
        for future in done:
            if future in self.in_flight:
                self._finish(self.in_flight.pop(future), outcome(future))
        return len(done)

    def _time_attempts(self, done: list[Future[Result]]) -> None:
        """Queue wait and worker time of each attempt that came back (the queue metrics)."""
        now = self._monotonic()
        for future in done:
            handed = self._handed.pop(future, None)
            record = self.in_flight.get(future)
            if handed is None or record is None or pool_broke(future):
                continue  # a broken pool's files never ran
            self._activity.record_attempt(
                record.watch, waited=handed[0] - record.created_at, ran=now - handed[1]
            )

    def _pool_broke(self, records: list[FileRecord]) -> None:
        """The pool failed these files without a worker dying *with* them.

        pebble declares the whole pool broken when a worker dies while no file is running
        (killed while idle or while loading the model, or its initializer failed) and fails
        every file waiting in it. That is not the files' fault: their attempt is given back,
        and they wait with backoff, in case every new worker dies too (a model file damaged
        under a running daemon), instead of all landing in the failed folder.
        """
        self._pool_breaks += 1
        reason = "the worker pool broke before this file ran (a worker died while idle or starting)"
        for record in records:
            delay = self._backoff(self._pool_breaks)
            self._activity.record_retry(record.watch, "pool_broke")
            self._note_error(record, f"{reason}; retrying in {delay:.0f} s")
            log.warning(
                "file.retry",
                file=record.id,
                job=record.job_id,
                attempt=record.attempts,
                error=reason,
                retry_in=round(delay, 1),
            )
            state = self._ledger.requeue(
                record.id, reason, retry_at=self._clock() + delay, refund=True
            )
            if state == "failing":  # its job was cancelled meanwhile
                self.dispose_failed(record, "cancelled")

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter, so that many files do not retry in lockstep."""
        delay: float = min(BACKOFF_MAX, BACKOFF_BASE * 2.0 ** min(failures, 16))
        return delay * (0.5 + self._rng.random())

    def _finish(self, record: FileRecord, result: Result | InputRejected | AttemptFailed) -> None:
        if isinstance(result, InputRejected):
            self.fail(record, str(result))
        elif isinstance(result, AttemptFailed):
            self._retry_or_fail(record, str(result))
        else:
            self._pool_breaks = 0  # a worker finished a file: the pool works again
            self._complete(record, result)

    def _retry_or_fail(self, record: FileRecord, reason: str) -> None:
        if record.attempts >= self._max_attempts:
            self.fail(record, f"{reason} (gave up after {record.attempts} attempts)")
            return
        self._activity.record_retry(record.watch, retry_reason(reason))
        log.warning(
            "file.retry", file=record.id, job=record.job_id, attempt=record.attempts, error=reason
        )
        if self._ledger.requeue(record.id, reason) == "failing":  # its job was cancelled
            self.dispose_failed(record, "cancelled")

    def _complete(
        self, record: FileRecord, result: Result, reused: CacheEntry | None = None
    ) -> None:
        key = self._keys.pop(record.id, None)
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
                return
            self._ledger.set_pages(record.id, pages)
        try:
            self._write_outputs(record, result, *self._output_access(record))
        except OSError as exc:
            if is_permanent(exc):
                self.fail(record, f"cannot write the output {record.output}: {exc.strerror or exc}")
                return
            self._write_failures += 1
            delay = self._backoff(self._write_failures)
            reason = f"cannot write the output {record.output}: {exc.strerror or exc}"
            self._note_error(record, f"{reason} (retrying in {delay:.0f} s)")
            self._activity.record_retry(record.watch, "write_error")
            log.error(
                "file.write_failed",
                file=record.id,
                job=record.job_id,
                error=reason,
                retry_in=round(delay, 1),
            )
            state = self._ledger.requeue(
                record.id, reason, retry_at=self._clock() + delay, refund=True
            )
            if state == "failing":
                self.dispose_failed(record, "cancelled")
            return
        self._write_failures = 0
        reused_from = reused.file_id if reused else None
        self._ledger.mark_written(record.id, result.output_bytes, pages, reused_from)
        if key is not None and self._cache is not None:
            self._cache.store(
                key, record.id, result.pages, (result.width, result.height), self._clock()
            )
        latency = self._clock() - record.created_at
        self._activity.record(record.watch, ok=True, latency=latency, now=self._monotonic())
        log.info(
            "file.done",
            file=record.id,
            job=record.job_id,
            watch=record.watch,
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

    def _output_access(self, record: FileRecord) -> tuple[int, tuple[int, int] | None]:
        """An output's permission bits and owner: its input's, so a private photo (0600)
        never gives a cutout everyone may read, and (where the daemon may chown: root) its
        owner can still read it; 0666 less the umask when the input cannot be asked."""
        try:
            info = os.stat(self.original(record))
        except OSError:
            return 0o666, None
        return stat.S_IMODE(info.st_mode) & 0o666, (info.st_uid, info.st_gid)

    @staticmethod
    def _write_outputs(
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

    def dispose_done(self, record: FileRecord) -> None:
        """written -> done: archive, delete or keep the original (idempotent)."""
        after = record.options["after"]
        original = self.original(record)
        try:
            if record.options.get("in_place"):
                pass  # after = "keep" on an inbox: the original stays where it was dropped
            elif after == "delete" or (after == "keep" and record.options.get("intake") == "copy"):
                remove_file(original)  # (a submitted copy: the original was never touched)
            elif os.path.lexists(original):
                move_file(original, record.archive, record.id)
            if mask_of(record) is not None:
                remove_file(spool_mask_path(self._spool, record.id))
        except OSError as exc:
            log.error("file.archive_failed", file=record.id, path=str(original), error=str(exc))
            return  # stays 'written'; the periodic finishing pass tries again
        self._job_finished(self._ledger.mark_done(record.id))

    def fail(self, record: FileRecord, reason: str) -> None:
        """Record the reason, then put the original and a readable note in the failed folder."""
        self._keys.pop(record.id, None)
        self._ledger.mark_failing(record.id, reason)
        if reason != CANCELLED_REASON:
            self._note_error(record, reason)
        log.error(
            "file.failed",
            file=record.id,
            job=record.job_id,
            watch=record.watch,
            source=str(record.source),
            error=reason,
        )
        self.dispose_failed(record, reason)

    def _note_error(self, record: FileRecord, message: str) -> None:
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
            keep = bool(record.options.get("in_place"))
            write_error_note(record.failed, reason, record.rel, record.id, left_in_inbox=keep)
            if os.path.lexists(original) and not keep:
                move_file(original, record.failed, record.id)
            if mask_of(record) is not None:
                remove_file(spool_mask_path(self._spool, record.id))
        except OSError as exc:
            log.error("file.quarantine_failed", file=record.id, error=str(exc))
            return  # stays 'failing'; the periodic finishing pass tries again
        latency = self._clock() - record.created_at
        self._activity.record(record.watch, ok=False, latency=latency, now=self._monotonic())
        self._job_finished(self._ledger.mark_failed(record.id))

    def _job_finished(self, job: FinishedJob | None) -> None:
        if job is not None:
            self.jobs_finished += 1
            log.info(
                "job.done",
                job=job.id,
                watch=job.watch,
                name=job.name,
                state=job.state,
                files=job.total,
                failed=job.failed,
                seconds=round(job.seconds, 3),
            )
            self.on_job_finished(job)

    # --- recovery and shutdown --------------------------------------------------------------------

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

    def abandon_in_flight(self) -> int:
        """Put files that were still running back in the queue (shutdown past the drain limit)."""
        count = 0
        for future, record in list(self.in_flight.items()):
            future.cancel()
            self._ledger.requeue(record.id, "interrupted by shutdown", refund=True)  # or failing
            count += 1
        self.in_flight.clear()
        return count


def skip_reason(earlier: CacheEntry) -> str:
    """Why a duplicate is in the failed folder under ``duplicates = "skip"``."""
    return (
        f"not processed: the same image, with the same options, was already processed as "
        f"{earlier.rel} of job {earlier.job_id} (file {earlier.file_id}, output "
        f'{earlier.output.name}); this watch has duplicates = "skip". To make it again, '
        'drop it in a folder whose watchd.toml says duplicates = "reprocess"'
    )


def pool_broke(future: Future[Result]) -> bool:
    """Whether the pool failed this file without running it to the end in a worker."""
    return not future.cancelled() and isinstance(future.exception(), BrokenProcessPool)


def retry_reason(message: str) -> str:
    """The ``reason`` label of a lost attempt (``watchd_file_retries_total``), from the
    message the pool gave it: past file_timeout, a worker (process or Dask worker) that
    died or was lost, or anything else that went wrong inside the attempt."""
    if "file_timeout" in message or "took longer" in message:
        return "timeout"
    if message.startswith("processing failed"):
        return "error"
    if "died" in message or "lost" in message or "broke" in message:
        return "worker_lost"
    return "error"
