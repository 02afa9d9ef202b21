"""How the parts are put together: start-up, recovery, the main loop, signals, shutdown.

Read :meth:`Daemon.run` top to bottom; it is the runbook. One thread (this
one) owns the ledger and every file move; the watchdog observer threads and
the pool's futures only *wake* it through a queue. Signal handlers set a flag
and wake it, nothing more.
"""

from __future__ import annotations

import fcntl
import os
import queue
import random
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TextIO

import structlog

from watchd.config import Config
from watchd.dispatcher import Dispatcher
from watchd.errors import ModelError, WatchdError
from watchd.files import ensure_dir
from watchd.intake import Intake
from watchd.ledger import Ledger
from watchd.models import ModelStore
from watchd.pipeline import LocalPool
from watchd.watcher import InboxWatcher

log = structlog.get_logger()

#: How often the loop ticks while something is settling or running (seconds).
BUSY_TICK = 0.2
#: Finished futures wake the loop themselves; this is only a safety net (seconds).
SAFETY_TICK = 5.0
#: How long a worker may take to load a model at start-up (seconds).
MODEL_LOAD_TIMEOUT = 300.0


class Daemon:
    """The long-running process for one configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._wakeups: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop_signal: int | None = None
        self._stop_count = 0
        self._hup = False
        self._state_dir = config.daemon.state_dir
        self._spool_dir = self._state_dir / "spool"
        self._lock: TextIO | None = None

    # --- the runbook ------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain, stop. Returns the exit code."""
        config = self.config
        models = sorted({watch.model for watch in config.watches})
        store = ModelStore(config.daemon.models_dir)
        for model in models:
            store.verify(
                model
            )  # a missing or corrupt model is a start-up error, not a worker crash
        for path in (self._state_dir, self._spool_dir):
            ensure_dir(path)
        self._lock = hold_state_lock(self._state_dir)
        for watch in config.watches:
            for folder in (watch.inbox, watch.outbox, watch.archive, watch.failed):
                ensure_dir(folder)

        ledger = Ledger.open(self._state_dir / "ledger.sqlite3")
        log.info("ledger.opened", path=str(self._state_dir / "ledger.sqlite3"))
        pool = LocalPool(
            workers=config.pool.workers,
            threads_per_worker=config.pool.threads_per_worker,
            env=store.worker_env(),
            models=tuple(models),
            file_timeout=config.pool.file_timeout,
        )
        dispatcher = Dispatcher(
            ledger,
            pool,
            self._spool_dir,
            max_attempts=config.pool.max_attempts,
            wake=self._wake,
            clock=time.time,
            rng=random.Random(),
        )
        intake = Intake(ledger, self._spool_dir, fail=dispatcher.fail)
        watchers: list[InboxWatcher] = []
        try:
            self._install_signal_handlers()
            self._recover(ledger, intake, dispatcher)
            for model in models:
                log.info("model.loaded", model=model, provider=load_in_worker(pool, model))
            watchers = self._start_watchers()
            log.info(
                "daemon.ready",
                pid=os.getpid(),
                workers=config.pool.workers,
                watches=[
                    {"name": w.name, "inbox": str(w.inbox), "outbox": str(w.outbox)}
                    for w in config.watches
                ],
            )
            self._loop(watchers, intake, dispatcher, ledger)
        finally:
            self._shutdown(watchers, dispatcher, pool, ledger)
        return 0

    def _recover(self, ledger: Ledger, intake: Intake, dispatcher: Dispatcher) -> None:
        recovery = ledger.recover()
        dispatcher.finish_interrupted(recovery)
        intake.finish_pending(list(recovery.pending))
        log.info(
            "recovery.done",
            requeued=len(recovery.requeued),
            pending=len(recovery.pending),
            written=len(recovery.written),
            failing=len(recovery.failing),
            unfinished=ledger.unfinished(),
        )

    def _start_watchers(self) -> list[InboxWatcher]:
        watchers = []
        now = time.monotonic()
        for watch in self.config.watches:
            watcher = InboxWatcher(
                watch.name,
                watch.inbox,
                watch.settle_seconds,
                wake=self._wake,
                method=watch.method,
                poll_interval=watch.poll_interval,
            )
            watcher.start()  # events first, then the scan: nothing dropped in between is missed
            found = watcher.scan(now)
            log.info(
                "watch.started",
                watch=watch.name,
                inbox=str(watch.inbox),
                method=watch.method,
                entries=found,
            )
            watchers.append(watcher)
        return watchers

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(
        self,
        watchers: list[InboxWatcher],
        intake: Intake,
        dispatcher: Dispatcher,
        ledger: Ledger,
    ) -> None:
        rescan_interval = self.config.daemon.rescan_interval
        next_rescan = time.monotonic() + rescan_interval
        by_name = {watch.name: watch for watch in self.config.watches}
        while self._stop_signal is None:
            self._wait(self._timeout(watchers, dispatcher, ledger, next_rescan))
            now = time.monotonic()
            for watcher in watchers:
                for batch in watcher.poll(now):
                    intake.accept(batch, by_name[batch.watch])
            dispatcher.collect()
            dispatcher.fill()
            if self._hup:
                self._hup = False
                log.warning(
                    "daemon.reload_unsupported",
                    message="configuration reload is not implemented yet; restart to apply changes",
                )
            if now >= next_rescan:
                for watch, watcher in zip(self.config.watches, watchers, strict=True):
                    rescan(watcher, watch.name, now)
                self._finish_stuck(ledger, intake, dispatcher)
                next_rescan = now + rescan_interval

    def _timeout(
        self,
        watchers: list[InboxWatcher],
        dispatcher: Dispatcher,
        ledger: Ledger,
        next_rescan: float,
    ) -> float:
        """Sleep long when idle (events wake us), tick often while something is settling."""
        if any(w.pending() for w in watchers):
            return BUSY_TICK
        timeout = max(0.0, next_rescan - time.monotonic())
        retry_at = ledger.next_retry_at()
        if retry_at is not None:
            timeout = min(timeout, max(0.0, retry_at - time.time()))
        if dispatcher.in_flight:
            timeout = min(timeout, SAFETY_TICK)
        return timeout

    def _wait(self, timeout: float) -> None:
        try:
            self._wakeups.get(timeout=timeout)
        except queue.Empty:
            return
        while True:  # coalesce a burst of wake-ups into one pass of the loop
            try:
                self._wakeups.get_nowait()
            except queue.Empty:
                return

    def _finish_stuck(self, ledger: Ledger, intake: Intake, dispatcher: Dispatcher) -> None:
        """Retry side effects that failed with an I/O error earlier (files left written/failing)."""
        recovery = ledger.stuck()
        if recovery.pending or recovery.written or recovery.failing:
            dispatcher.finish_interrupted(recovery)
            intake.finish_pending(list(recovery.pending))

    # --- signals and shutdown ---------------------------------------------------------------------

    def _wake(self, reason: str = "wake") -> None:
        self._wakeups.put(reason)  # SimpleQueue.put is reentrant: safe from a signal handler

    def _install_signal_handlers(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_signal = signum
            self._stop_count += 1  # a second signal cuts the drain short
            self._wake("stop")

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self._hup = True  # never die on SIGHUP (its default action); see _loop
            self._wake("hup")

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def _shutdown(
        self,
        watchers: list[InboxWatcher],
        dispatcher: Dispatcher,
        pool: LocalPool,
        ledger: Ledger,
    ) -> None:
        signame = signal.Signals(self._stop_signal).name if self._stop_signal else None
        log.info("shutdown.begin", signal=signame, in_flight=len(dispatcher.in_flight))
        for watcher in watchers:
            watcher.stop()
        log.info("shutdown.intake_stopped")
        deadline = time.monotonic() + self.config.daemon.drain_seconds
        signals_seen = self._stop_count
        while (
            dispatcher.in_flight
            and time.monotonic() < deadline
            and self._stop_count == signals_seen
        ):
            self._wait(min(BUSY_TICK, max(0.0, deadline - time.monotonic())))
            dispatcher.collect()
        requeued = dispatcher.abandon_in_flight()
        log.info("shutdown.drained", requeued=requeued, queued=ledger.unfinished())
        pool.close(cancel=True)
        log.info("shutdown.pool_closed")
        ledger.close()
        log.info("shutdown.done")


def load_in_worker(pool: LocalPool, model: str) -> str:
    """Load ``model`` in a real worker before declaring the daemon ready."""
    try:
        return pool.check_model(model, MODEL_LOAD_TIMEOUT)
    except WatchdError:
        raise
    except Exception as exc:  # onnxruntime's own errors: report them, not a traceback
        raise ModelError(f"model {model!r} could not be loaded in a worker: {exc}") from None


def rescan(watcher: InboxWatcher, name: str, now: float) -> None:
    """The periodic safety scan; an inbox that vanished (unmounted share) is logged, not fatal."""
    try:
        watcher.scan(now)
    except OSError as exc:
        log.error("watch.unavailable", watch=name, error=str(exc))


def hold_state_lock(state_dir: Path) -> TextIO:
    """Refuse to start a second daemon on the same state folder (one owner of the ledger).

    The lock is an ``flock`` on a file in the state folder; the kernel drops it
    when the process dies, so a ``kill -9`` never leaves a stale lock behind.
    """
    handle = open(state_dir / "watchd.lock", "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise WatchdError(
            f"another watchd (pid {owner}) is already running with state_dir {state_dir}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def run_daemon(config: Config) -> int:
    """Entry point for ``watchd run``: a configuration error or missing model is exit 2."""
    try:
        return Daemon(config).run()
    except WatchdError as exc:
        log.error("daemon.failed", error=str(exc))
        return 2
