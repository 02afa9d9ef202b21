"""The dispatch loop's body: claim queued files, keep the pool busy, collect what comes back.

In-flight work is capped (the pool's ``capacity``), so 100,000 queued files are
100,000 ledger rows, not 100,000 images in memory. The dispatcher only claims, sends,
collects and retries; what happens to a file whose fate is known (outputs written,
original archived or failed) is the :class:`~watchd.finisher.Finisher`'s. Every
outcome ends in exactly one of three places: finished (done or failed, by the
finisher), or back in the queue: a lost attempt below ``max_attempts``, a file the pool
lost without running it, or a transient write error, the last two retried with
exponential backoff and jitter and without costing an attempt.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from concurrent.futures import Future

import structlog

from watchd.backoff import backoff_delay
from watchd.content_cache import ContentCache, Hit, cache_key
from watchd.errors import AttemptFailed, InputRejected
from watchd.files import read_input
from watchd.finisher import Finisher
from watchd.ledger import CacheEntry, FileRecord, Ledger
from watchd.pool.protocol import Pool, outcome, pool_broke
from watchd.pool.task import Result, Task
from watchd.product_input import BackgroundImages
from watchd.stats import Activity

log = structlog.get_logger()

#: The retries that are not the file's fault (its attempt is given back): what the log says.
_NOT_ITS_FAULT = {
    "pool_broke": ("file.retry", logging.WARNING),
    "write_error": ("file.write_failed", logging.ERROR),
}

#: Files one ``fill`` may finish without the pool (content-cache hits, inputs that fail to
#: read) before it returns, so that a re-dropped folder of thousands of known photos is
#: written in slices between the main loop's other work (status, intake, results).
FILL_BUDGET = 64


class Pause:
    """Whether dispatch is paused (``watchd pause``/``resume``): one owner of that state.

    Kept in the ledger too, so a restart stays paused. The dispatcher reads it on every
    claim; the control commands and the status read and set it here.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.paused = ledger.get_setting("paused") == "1"

    def set(self, paused: bool) -> None:
        self._ledger.set_setting("paused", "1" if paused else "0")
        self.paused = paused


class Dispatcher:
    """Owns the in-flight set; runs in the daemon's main thread only."""

    def __init__(
        self,
        ledger: Ledger,
        pool: Pool,
        finisher: Finisher,
        pause: Pause,
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
        #: the cache key of each attempt whose outputs the content cache is to keep
        self._keys: dict[Future[Result], str] = {}
        self._pool = pool
        self._finisher = finisher
        self._pause = pause
        self._max_attempts = max_attempts
        self._wake = wake
        self._clock = clock
        self._rng = rng
        self._activity = activity
        self._monotonic = monotonic
        self.in_flight: dict[Future[Result], FileRecord] = {}
        #: when each in-flight attempt was handed to the pool: (unix, monotonic) seconds
        self._handed: dict[Future[Result], tuple[float, float]] = {}
        self._write_failures = 0
        self._pool_breaks = 0
        #: background pictures (``background_image``) read once while unchanged
        self._backgrounds = BackgroundImages()

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
        while not self._pause.paused and len(self.in_flight) < self.capacity:
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
        options = record.options
        try:
            data = read_input(self._finisher.original(record), options.max_file_bytes)
            background = self._backgrounds.read(options.output.background_image)
        except InputRejected as exc:
            self._finisher.fail(record, str(exc))
            return False
        mask_name = options.mask_for(record.rel)
        mask = None
        key: str | None = None
        if mask_name is not None:  # a hand-edited mask (watchd/masks.py): no cache, no model
            try:
                mask = read_input(self._finisher.mask_copy(record), options.max_file_bytes)
            except InputRejected as exc:
                reason = f"the hand-edited mask {mask_name} could not be used: {exc}"
                self._finisher.fail(record, reason)
                return False
        else:
            finished, key = self._known(record, data, background)
            if finished:
                return False
        task = Task(
            file_id=record.id,
            data=data,
            model=options.model,
            output=options.output,
            threads=threads,
            background_image=background,
            review_if=options.review_if,
            mask=mask,
            mask_name=mask_name or "",
        )
        future = self._pool.submit(task)
        if key is not None:
            self._keys[future] = key
        self.in_flight[future] = record
        self._handed[future] = (self._clock(), self._monotonic())
        future.add_done_callback(lambda _f: self._wake())
        return True

    def _known(
        self, record: FileRecord, data: bytes, background: bytes | None
    ) -> tuple[bool, str | None]:
        """Under ``duplicates = "reuse"`` or ``"skip"``: (True, key) when the content cache
        knows this input, which is then finished here, without the pool; (False, key) when
        it does not, and its outputs are to be kept under that key (content_cache.py)."""
        options = record.options
        if self._cache is None or options.duplicates == "reprocess":
            return False, None
        key = cache_key(data, options.model, options.output, background)
        hit = self._cache.lookup(key, self._clock())
        if hit is None:
            return False, key
        if options.duplicates == "skip":
            self._finisher.fail(record, skip_reason(hit.entry))
        else:
            self._reuse(record, hit)
        return True, key

    def _reuse(self, record: FileRecord, hit: Hit) -> None:
        """Write the cached outputs of an earlier file as this file's outputs."""
        result = Result(
            file_id=record.id,
            pages=hit.pages,
            width=hit.entry.width,
            height=hit.entry.height,
            threads=0,
        )
        self._complete(record, result, reused=hit.entry)

    # --- collecting -------------------------------------------------------------------------------

    def collect(self) -> int:
        """Finish every in-flight file whose future is done."""
        self._pool.check()
        done = [future for future in self.in_flight if future.done()]
        self._time_attempts(done)
        broke = [future for future in done if pool_broke(future)]
        if broke:
            self._pool_broke([self.in_flight.pop(future) for future in broke])
        for future in done:
            key = self._keys.pop(future, None)
            if future in self.in_flight:
                self._finish(self.in_flight.pop(future), outcome(future), key)
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

    def _finish(
        self,
        record: FileRecord,
        result: Result | InputRejected | AttemptFailed,
        key: str | None = None,
    ) -> None:
        if isinstance(result, InputRejected):
            self._finisher.fail(record, str(result))
        elif isinstance(result, AttemptFailed):
            self._retry_or_fail(record, str(result))
        else:
            self._pool_breaks = 0  # a worker finished a file: the pool works again
            self._complete(record, result, key=key)

    def _complete(
        self,
        record: FileRecord,
        result: Result,
        *,
        reused: CacheEntry | None = None,
        key: str | None = None,
    ) -> None:
        """The finisher writes the outputs; then, under duplicates = reuse|skip, the cache
        keeps a copy of outputs the model made (``key``)."""
        cache = self._cache
        keep = None
        if key is not None and reused is None and cache is not None:

            def keep() -> None:
                made = (result.width, result.height)
                cache.store(key, record.id, result.pages, made, self._clock())

        try:
            written = self._finisher.complete(record, result, reused, keep)
        except OSError as exc:  # a wait may cure it: the file waits, with backoff
            self._write_failed(
                record, f"cannot write the output {record.output}: {exc.strerror or exc}"
            )
            return
        if written:
            self._write_failures = 0

    # --- retrying ---------------------------------------------------------------------------------

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
            self._retry_later(record, reason, self._pool_breaks, "pool_broke")

    def _write_failed(self, record: FileRecord, reason: str) -> None:
        """The output could not be written for a reason a wait may cure (full disk, an
        unwritable outbox): the file waits with backoff, without costing an attempt."""
        self._write_failures += 1
        self._retry_later(record, reason, self._write_failures, "write_error")

    def _retry_later(self, record: FileRecord, reason: str, failures: int, why: str) -> None:
        """Back in the queue after a backoff that grows with ``failures`` in a row, with its
        attempt given back: what failed was not the file's fault (a broken pool, a full
        disk). ``why``: the retry counter it adds to (a key of :data:`_NOT_ITS_FAULT`)."""
        delay = backoff_delay(failures + 1, self._rng)
        self._activity.record_retry(record.watch, why)
        self._finisher.note_error(record, f"{reason} (retrying in {delay:.0f} s)")
        event, level = _NOT_ITS_FAULT[why]
        log.log(
            level,
            event,
            file=record.id,
            job=record.job_id,
            attempt=record.attempts,
            error=reason,
            retry_in=round(delay, 1),
        )
        self._requeue(record, reason, retry_at=self._clock() + delay, refund=True)

    def _retry_or_fail(self, record: FileRecord, reason: str) -> None:
        if record.attempts >= self._max_attempts:
            self._finisher.fail(record, f"{reason} (gave up after {record.attempts} attempts)")
            return
        self._activity.record_retry(record.watch, retry_reason(reason))
        log.warning(
            "file.retry", file=record.id, job=record.job_id, attempt=record.attempts, error=reason
        )
        self._requeue(record, reason)

    def _requeue(
        self,
        record: FileRecord,
        reason: str,
        *,
        retry_at: float | None = None,
        refund: bool = False,
    ) -> None:
        """Back in the queue; a file whose job was cancelled meanwhile goes to failed."""
        state = self._ledger.requeue(record.id, reason, retry_at=retry_at, refund=refund)
        if state == "failing":
            self._finisher.dispose_failed(record, "cancelled")

    # --- shutdown ---------------------------------------------------------------------------------

    def abandon_in_flight(self) -> int:
        """Put files that were still running back in the queue (shutdown past the drain limit)."""
        count = 0
        for future, record in list(self.in_flight.items()):
            future.cancel()
            self._ledger.requeue(record.id, "interrupted by shutdown", refund=True)  # or failing
            count += 1
        self.in_flight.clear()
        self._keys.clear()
        return count


def skip_reason(earlier: CacheEntry) -> str:
    """Why a duplicate is in the failed folder under ``duplicates = "skip"``."""
    return (
        f"not processed: the same image, with the same options, was already processed as "
        f"{earlier.rel} of job {earlier.job_id} (file {earlier.file_id}, output "
        f'{earlier.output.name}); this watch has duplicates = "skip". To make it again, '
        'drop it in a folder whose watchd.toml says duplicates = "reprocess"'
    )


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
