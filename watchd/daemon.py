"""How the parts are put together: start-up, recovery, the main loop, signals, shutdown.

Read :meth:`Daemon.run` top to bottom; it is the runbook. One thread (this
one) owns the ledger and every file move; the watchdog observer threads and
the pool's futures only *wake* it through a queue. Signal handlers set a flag
and wake it, nothing more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import queue
import random
import signal
import socket
import sqlite3
import time
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

from watchd import __version__, preflight
from watchd.commands import Commands
from watchd.completion import Completion
from watchd.config import Config, HooksConfig, WatchConfig, load_config
from watchd.content_cache import ContentCache
from watchd.control import ControlServer, Request
from watchd.dispatcher import Dispatcher, Pause
from watchd.errors import ConfigError, LedgerError, ModelError, ProtocolError, WatchdError
from watchd.files import ensure_dir, prune_taken_folder
from watchd.finisher import Finisher
from watchd.fsinfo import filesystem_type, is_network
from watchd.hooks import Hooks
from watchd.intake import Intake, is_litter
from watchd.ledger import Ledger
from watchd.models import ModelStore
from watchd.notify import Notifier
from watchd.pool.factory import models_of, new_pool
from watchd.pool.protocol import ModelCheck, Pool
from watchd.stats import (
    Activity,
    DaemonInfo,
    build_snapshot,
    render_metrics,
    write_metrics_file,
    write_stats_file,
)
from watchd.stuck import StuckFiles
from watchd.watcher import DEFAULT_IGNORE, InboxWatcher

if TYPE_CHECKING:
    from watchd.http.server import HttpServer
    from watchd.ledger import FinishedJob

log = structlog.get_logger()

#: How often the loop ticks while something is settling or running (seconds).
BUSY_TICK = 0.2
#: Finished futures wake the loop themselves; this is only a safety net (seconds).
SAFETY_TICK = 5.0
#: How often retention (keep_days) runs, and how many jobs one pass may delete.
PRUNE_INTERVAL = 3600.0
PRUNE_BATCH = 1000
#: How long a worker may take to load a model at start-up (seconds).
MODEL_LOAD_TIMEOUT = 300.0
#: At shutdown, how long running hooks may go on (within what is left of drain_seconds).
HOOK_GRACE = 5.0


class LiveConfig:
    """The configuration in force now, replaced whole by a reload.

    The one owner of "the current config": parts that must follow a reload (the hooks of
    a job that ends after it) are handed this object, never a copy of what it held.
    """

    def __init__(self, config: Config) -> None:
        self.config = config

    def hooks_of(self, watch: str) -> tuple[Path, HooksConfig] | None:
        """A watch's outbox and hooks as configured *now* (a reload applies to jobs ending
        after it); None for a watch a reload removed."""
        try:
            config = self.config.watch(watch)
        except KeyError:
            return None
        return config.outbox, config.hooks


class Daemon:
    """The long-running process for one configuration."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.live = LiveConfig(config)
        self.notifier = notifier or Notifier()
        self._wakeups: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._requests: queue.SimpleQueue[tuple[Request, Future[dict[str, Any]]]] = (
            queue.SimpleQueue()
        )
        self._stop_signal: int | None = None
        self._stop_count = 0
        self._hup = False
        self._state_dir = config.daemon.state_dir
        self._spool_dir = self._state_dir / "spool"
        self._lock: TextIO | None = None
        self._started_at = time.time()
        self._providers: dict[str, str] = {}
        self._activity = Activity()
        self._watchers: list[InboxWatcher] = []
        self.stuck = StuckFiles()
        self._control: ControlServer | None = None
        self._http: HttpServer | None = None
        self._retired_pools: list[Pool] = []

    @property
    def config(self) -> Config:
        """The configuration in force now (:class:`LiveConfig`)."""
        return self.live.config

    @config.setter
    def config(self, config: Config) -> None:
        self.live.config = config

    @property
    def paused(self) -> bool:
        return self.pause.paused

    # --- the runbook ------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain, stop. Returns the exit code."""
        config = self.config
        models = models_of(config)
        store = ModelStore(config.daemon.models_dir)
        # Folders, permissions, models, a local state disk: refuse to start, saying why.
        missing: preflight.Missing = "create" if config.source is None else "error"
        refuse_problems(preflight.check(config, missing=missing))
        for path in (self._state_dir, self._spool_dir):
            ensure_dir(path)
        self._lock = hold_state_lock(self._state_dir)

        self.ledger = Ledger.open(
            self._state_dir / "ledger.sqlite3", priority_aging=config.daemon.priority_aging
        )
        log.info("ledger.opened", path=str(self._state_dir / "ledger.sqlite3"))
        self.pool = new_pool(config, store, wake=self._wake)
        self.pause = Pause(self.ledger)
        self.cache = ContentCache(
            self.ledger, self._state_dir / "cache", config.daemon.cache_max_bytes
        )
        # Manifest, then hooks, then "reported": see watchd/completion.py for the order.
        self.hooks = Hooks(os.environ)  # the commands' base environment, read once here
        self.completion = Completion(self.ledger, self.hooks, self.live, self._wake)
        self.finisher = Finisher(
            self.ledger,
            self._spool_dir,
            activity=self._activity,
            clock=time.time,
            monotonic=time.monotonic,
            job_ended=self._job_finished,
        )
        self.dispatcher = Dispatcher(
            self.ledger,
            self.pool,
            self.finisher,
            self.pause,
            max_attempts=config.pool.max_attempts,
            wake=self._wake,
            clock=time.time,
            rng=random.Random(),
            activity=self._activity,
            monotonic=time.monotonic,
            cache=self.cache,
        )
        self.intake = Intake(
            self.ledger, self._spool_dir, self.finisher, check_model=self._check_model
        )
        self.commands = Commands(self)
        try:
            self._install_signal_handlers()
            self.hooks.start()
            self._recover()
            for model in models:
                check = load_in_worker(self.pool, model)
                self._providers[model] = check.provider
                self._check_provider(model, check)
            self._start_watchers()
            self._start_control()
            self._start_http()
            self._write_stats()
            pool = self.pool.status()
            log.info(
                "daemon.ready",
                pid=os.getpid(),
                backend=pool.backend,
                workers=pool.workers,  # local: processes; dask: workers connected right now
                scheduler=pool.scheduler,
                cluster=pool.state,
                paused=self.paused,
                socket=str(config.daemon.socket),
                watches=[
                    {"name": w.name, "inbox": str(w.inbox), "outbox": str(w.outbox)}
                    for w in config.watches
                ],
            )
            self.notifier.ready(self._status_line())
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _recover(self) -> None:
        recovery = self.ledger.recover()
        self.finisher.finish_interrupted(recovery)
        self.intake.finish_pending(list(recovery.pending))
        self._remove_emptied_folders()
        reported = self.completion.report_unreported()  # jobs that ended just before a crash
        self.sweep_cache()  # also applies a cache_max_bytes lowered since the last run
        log.info(
            "recovery.done",
            requeued=len(recovery.requeued),
            pending=len(recovery.pending),
            written=len(recovery.written),
            failing=len(recovery.failing),
            unfinished=self.ledger.unfinished(),
            reported=reported,
        )

    def _remove_emptied_folders(self) -> None:
        """Folders a crash left in an inbox after their files were taken (the last step of
        taking a folder is removing it). Only unfinished folder jobs' own top-level folders
        in their watch's inbox are looked at, and only empty folders and system litter are
        removed: a file dropped there since keeps the folder, and is taken as new work."""
        inboxes = {w.name: w.inbox for w in self.config.watches}
        for watch, root in self.ledger.unfinished_folder_roots():
            if watch not in inboxes or root.parent != inboxes[watch] or root.is_symlink():
                continue
            if root.is_dir() and prune_taken_folder(root, is_litter):
                log.info("recovery.folder_removed", watch=watch, folder=str(root))

    def _check_model(self, model: str) -> None:
        """A model a sidecar names must be one the pool can load (the pool decides what it
        can check: installed and intact here, or a valid name for workers elsewhere)."""
        self.pool.verify_model(model)

    def _check_provider(self, model: str, check: ModelCheck) -> None:
        """Say which provider runs; loudly if not the one asked for (rembg's top complaint)."""
        wanted = self.config.pool.providers[0]
        active = check.provider
        if active == wanted:
            log.info("model.loaded", model=model, provider=active)
            return
        if check.deferred:  # no worker to ask yet; the pool asks each as it joins
            if self.config.pool.require_accelerator:
                raise ModelError(
                    f"model {model!r} cannot be checked ({active}); refusing to start "
                    "because require_accelerator = true"
                )
            log.info("model.check_deferred", model=model, provider=active)
            return
        message = (
            f"{wanted} was asked for but model {model!r} runs on {active}: onnxruntime could "
            "not load it (is onnxruntime-gpu installed, with the CUDA/cuDNN libraries it needs?)"
        )
        if self.config.pool.require_accelerator:
            raise ModelError(message + "; refusing to start because require_accelerator = true")
        log.warning(
            "model.provider_fallback", model=model, provider=active, wanted=wanted, message=message
        )

    def _start_watchers(self) -> None:
        now = time.monotonic()
        for watch in self.config.watches:
            method, fstype = watch_method(watch)
            watcher = InboxWatcher(
                watch.name,
                watch.inbox,
                watch.settle_seconds,
                wake=self._wake,
                ignore=DEFAULT_IGNORE + watch.ignore,
                method=method,
                poll_interval=watch.poll_interval,
            )
            watcher.start()  # events first, then the scan: nothing dropped in between is missed
            found = watcher.scan(now)
            log.info(
                "watch.started",
                watch=watch.name,
                inbox=str(watch.inbox),
                method=method,
                configured=watch.method,
                filesystem=fstype,
                poll_interval=watch.poll_interval if method == "poll" else None,
                entries=found,
            )
            self._watchers.append(watcher)

    def _start_control(self) -> None:
        daemon = self.config.daemon
        self._control = ControlServer(
            daemon.socket, self._handle_request, mode=daemon.socket_mode, group=daemon.socket_group
        )
        self._control.start()  # logs control.listening

    def _start_http(self) -> None:
        """The HTTP door ([http], docs/http.md), after recovery: its staged uploads are clear."""
        if self.config.http is None:
            return
        from watchd.http.server import HttpServer  # FastAPI and uvicorn only when configured

        self._http = HttpServer(
            self.config.http, self._handle_request, self._spool_dir, self.watches
        )
        self._http.start()  # logs http.listening

    def _job_finished(self, job: FinishedJob) -> None:
        self.completion.job_finished(job.id)
        if self._http is not None:
            self._http.job_ended(job.id)  # a waiting /api/remove answers at once

    def readiness(self) -> dict[str, bool]:
        """GET /ready: answered here, in the main loop, so the ledger is open and recovered."""
        return {
            "ledger_open": True,
            "recovery_done": True,
            "model_loaded": bool(self._providers),  # checked, or deferred to the workers
            "watches_live": len(self._watchers) == len(self.config.watches)
            and all(w.alive for w in self._watchers),
        }

    def metrics_text(self) -> str:
        """GET /metrics: the metrics textfile's families, rendered now."""
        return render_metrics(self.snapshot(), self._activity).decode("utf-8")

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        now = time.monotonic()
        next_rescan = now + self.config.daemon.rescan_interval
        next_stats = now + self.config.daemon.stats_interval
        next_prune = now
        next_ping = now
        ping_interval = self.notifier.watchdog_interval
        jobs_seen = self.finisher.jobs_finished
        while self._stop_signal is None:
            timers = [next_rescan, next_stats, next_prune]
            if ping_interval is not None:
                timers.append(next_ping)
            self._wait(self._timeout(min(timers)))
            now = time.monotonic()
            if ping_interval is not None and now >= next_ping:
                self.notifier.watchdog()  # from the loop itself: a hung loop gets restarted
                next_ping = now + ping_interval
            self._take_batches(now)
            self._check_stuck(now)
            self.dispatcher.collect()
            self.completion.collect()
            self.completion.step()  # a page of a big job's manifest, then the loop goes on
            self._serve_requests()
            if self._hup:
                self._hup = False
                with contextlib.suppress(ConfigError):  # logged; the old config stays
                    self.reload()
            self.dispatcher.fill()
            if now >= next_rescan:
                for watch, watcher in zip(self.config.watches, self._watchers, strict=True):
                    rescan(watcher, watch.name, now)
                self._finish_stuck()
                next_rescan = now + self.config.daemon.rescan_interval
            if now >= next_prune:
                self._prune()
                next_prune = now + PRUNE_INTERVAL
            if now >= next_stats or self.finisher.jobs_finished != jobs_seen:
                jobs_seen = self.finisher.jobs_finished
                self._write_stats()
                next_stats = now + self.config.daemon.stats_interval

    def _take_batches(self, now: float) -> None:
        """Record what settled in each inbox; move aside what is never taken (links, ...)."""
        for watch, watcher in zip(self.config.watches, self._watchers, strict=True):
            for batch in watcher.poll(now):
                self.intake.take(batch, watch)  # costs that batch at most, never the loop
            for path, kind in watcher.take_skipped():
                try:
                    if self.intake.set_aside(path, kind, watch):
                        watcher.forget_skipped(path)
                except Exception as exc:  # the entry stays where it is: nothing is lost
                    if is_damaged_ledger(exc):
                        raise
                    log.exception("intake.set_aside_failed", path=str(path))

    def _check_stuck(self, now: float) -> None:
        """Names that keep changing for longer than stuck_after: reported (watchd/stuck.py)."""
        for watch, watcher in zip(self.config.watches, self._watchers, strict=True):
            self.stuck.update(
                watch.name,
                watch.inbox,
                watcher.unsettled_since(now, watch.stuck_after),
                now_mono=now,
                now_wall=time.time(),
                note_after=watch.stuck_note_after,
                settle_seconds=watch.settle_seconds,
            )

    def _timeout(self, next_timer: float) -> float:
        """Sleep long when idle (events wake us), tick often while something is settling."""
        if self.completion.busy:
            return 0.0  # a manifest is being written a page per pass
        if any(w.pending() for w in self._watchers):
            return BUSY_TICK
        timeout = max(0.0, next_timer - time.monotonic())
        retry_at = self.ledger.next_retry_at()
        if retry_at is not None:
            timeout = min(timeout, max(0.0, retry_at - time.time()))
        if self.dispatcher.in_flight:
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

    def _finish_stuck(self) -> None:
        """Retry side effects that failed with an I/O error earlier (files left written/failing)."""
        recovery = self.ledger.stuck()
        if recovery.pending or recovery.written or recovery.failing:
            self.finisher.finish_interrupted(recovery)
            self.intake.finish_pending(list(recovery.pending))
        self.completion.report_unreported()  # a manifest that could not be written before

    def _prune(self) -> None:
        """Retention: forget finished jobs older than keep_days, a bounded slice at a time."""
        keep_days = self.config.daemon.keep_days
        if keep_days <= 0:
            return
        deleted = self.ledger.prune(time.time() - keep_days * 86400, limit=PRUNE_BATCH)
        if deleted:
            log.info("ledger.pruned", jobs=deleted, keep_days=keep_days)
            self.sweep_cache()

    def sweep_cache(self) -> None:
        """Copies of the content cache whose rows went (pruned with their files, evicted)."""
        removed = self.cache.sweep()
        if removed:
            entries, size = self.ledger.cache_size()
            log.info("cache.swept", removed=removed, entries=entries, bytes=size)

    # --- operators: control requests and stats ----------------------------------------------------

    def _handle_request(self, request: Request) -> Future[dict[str, Any]]:
        """Called in the control server's thread: hand the request to the main thread."""
        future: Future[dict[str, Any]] = Future()
        self._requests.put((request, future))
        self._wake("control")
        return future

    def _serve_requests(self) -> None:
        while True:
            try:
                request, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.commands.execute(request))
            except ProtocolError as exc:
                future.set_exception(exc)
            except Exception as exc:  # a bug must cost one request, never the daemon
                log.exception("control.failed", command=request.command)
                future.set_exception(ProtocolError("internal", f"{type(exc).__name__}: {exc}"))

    def snapshot(self) -> dict[str, Any]:
        """Everything ``watchd status`` and the stats file show (cheap: no table scans)."""
        config = self.config
        pool = self.pool.status()
        info = DaemonInfo(
            version=__version__,
            pid=os.getpid(),
            started_at=self._started_at,
            paused=self.paused,
            workers_total=pool.threads,
            workers_busy=pool.busy,
            backend=pool.backend,
            pool=pool.as_dict(),
            models=tuple(sorted({w.model for w in config.watches})),
            # A cluster's workers report their own providers as they join.
            providers={**self._providers, **pool.providers},
            watches={
                w.name: {"inbox": str(w.inbox), "outbox": str(w.outbox), "model": w.model}
                for w in config.watches
            },
            host=socket.gethostname(),
        )
        return build_snapshot(
            info,
            self.ledger.counts(),
            self.ledger.totals(),
            self._activity,
            self.finisher.last_error,
            now_wall=time.time(),
            now_mono=time.monotonic(),
            hooks={"manifest": self.completion.counters(), **self.hooks.counters.snapshot()},
            stuck_counts={w.name: self.stuck.count(w.name) for w in config.watches},
            stuck_files=self.stuck.listing(time.monotonic()),
        )

    def _write_stats(self) -> None:
        snapshot = self.snapshot()
        daemon = self.config.daemon
        try:
            write_stats_file(daemon.stats_file, snapshot)
            if daemon.metrics_file is not None:
                write_metrics_file(daemon.metrics_file, snapshot, self._activity)
        except OSError as exc:
            log.error("stats.write_failed", error=str(exc))

    def request_reload(self) -> dict[str, Any]:
        """The ``reload`` command: like SIGHUP, but the caller hears whether it took."""
        try:
            return {"reloaded": True, "changes": self.reload()}
        except ConfigError as exc:
            raise ProtocolError("conflict", f"{exc} (the running configuration stays)") from None

    def reload(self) -> list[str]:
        """Re-read the config file; apply it, or reject it whole and keep the old one.

        Queued files keep the options they were accepted with (frozen in the
        ledger). Changed watches restart their observers (the start-up scan
        catches anything dropped meanwhile); changed pool settings or models get
        a new pool, while files already running finish in the old one.
        """
        self.notifier.reloading()
        try:
            with self.notifier.keepalive():  # loading a new pool's models may outlast WatchdogSec
                return self._reload()
        finally:
            self.notifier.ready(self._status_line())

    def _reload(self) -> list[str]:
        old = self.config
        log.info("reload.begin", config=str(old.source) if old.source else None)
        try:
            new = keep_fixed(old, load_config(old.source)) if old.source else old
            refuse_problems(preflight.check(new, missing="error"))
            store = ModelStore(new.daemon.models_dir)
        except (WatchdError, OSError) as exc:
            log.error("reload.rejected", error=str(exc), message="the running configuration stays")
            raise ConfigError(str(exc)) from None
        changes = describe_changes(old, new)
        if pool_settings(new) != pool_settings(old):
            self._replace_pool(new, store)
        if new.watches != old.watches:
            for watch in old.watches:
                self.stuck.forget_watch(watch.name)  # found again by the new watchers
            for watcher in self._watchers:
                watcher.stop()
            self._watchers = []
            self.config = new
            self._start_watchers()
        self.config = new
        self.ledger.priority_aging = new.daemon.priority_aging
        self.cache.max_bytes = new.daemon.cache_max_bytes
        self.dispatcher.use_pool(self.pool, new.pool.max_attempts)
        log.info("reload.done", changes=changes)
        return changes

    def _replace_pool(self, config: Config, store: ModelStore) -> None:
        pool = new_pool(config, store, wake=self._wake)
        try:
            providers = {m: load_in_worker(pool, m).provider for m in models_of(config)}
        except WatchdError as exc:
            pool.close(cancel=True)
            log.error("reload.rejected", error=str(exc), message="the running configuration stays")
            raise ConfigError(str(exc)) from None
        old, self.pool = self.pool, pool
        old.close(cancel=False, wait=False)  # its running files finish and are collected as usual
        self._retired_pools.append(old)
        self._providers = providers

    def watches(self) -> tuple[WatchConfig, ...]:
        return self.config.watches

    def _status_line(self) -> str:
        """One line for ``systemctl status``."""
        names = ", ".join(f"{w.name}: {w.inbox}" for w in self.config.watches)
        paused = "paused; " if self.paused else ""
        return f"{paused}{self.pool.status().summary()}; watching {names}"

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

    def _shutdown(self) -> None:
        """Stop intake and the socket, drain within drain_seconds, close pool and ledger."""
        self.notifier.stopping()
        signame = signal.Signals(self._stop_signal).name if self._stop_signal else None
        dispatcher = self.dispatcher
        log.info("shutdown.begin", signal=signame, in_flight=len(dispatcher.in_flight))
        for watcher in self._watchers:
            watcher.stop()
        log.info("shutdown.intake_stopped")
        if self._http is not None:
            self._http.stop()
            log.info("shutdown.http_stopped")
        if self._control is not None:
            self._control.stop()
            self._serve_requests()  # anything queued before the socket closed gets its answer
            log.info("shutdown.control_stopped")
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
        log.info("shutdown.drained", requeued=requeued, queued=self.ledger.unfinished())
        left = self.hooks.close(min(deadline, time.monotonic() + HOOK_GRACE))
        self.completion.collect()
        log.info("shutdown.hooks_stopped", left=left, unreported=self.completion.open_jobs)
        self.pool.close(cancel=True)
        for retired in self._retired_pools:
            retired.close(cancel=True)
        log.info("shutdown.pool_closed")
        self._write_stats()
        self.ledger.close()
        log.info("shutdown.done")


def is_damaged_ledger(exc: BaseException) -> bool:
    """An error after which the ledger cannot be trusted: the daemon must stop (exit 2)."""
    if isinstance(exc, LedgerError):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


def watch_method(watch: WatchConfig) -> tuple[Literal["inotify", "poll"], str]:
    """``auto``: poll on network and FUSE mounts, where inotify never hears other clients."""
    fstype = filesystem_type(watch.inbox)
    if watch.method == "auto":
        return ("poll" if is_network(fstype) else "inotify"), fstype
    return watch.method, fstype


def refuse_problems(problems: list[preflight.Problem]) -> None:
    if problems:
        raise ConfigError("; ".join(str(p) for p in problems))


def keep_fixed(old: Config, new: Config) -> Config:
    """Settings a reload cannot move (the ledger's folder, the socket) keep their old values."""
    fixed = ("state_dir", "socket", "socket_mode", "socket_group")
    moved = [k for k in fixed if getattr(old.daemon, k) != getattr(new.daemon, k)]
    if moved:
        log.warning("reload.needs_restart", keys=[f"daemon.{k}" for k in moved])
    daemon = dataclasses.replace(new.daemon, **{k: getattr(old.daemon, k) for k in fixed})
    return dataclasses.replace(new, daemon=daemon)


def pool_settings(config: Config) -> tuple[Any, ...]:
    pool = config.pool
    return (
        pool.backend,
        pool.scheduler,
        pool.dispatch_window,
        pool.tls_ca_file,
        pool.tls_client_cert,
        pool.tls_client_key,
        pool.workers,
        pool.threads_per_worker,
        pool.file_timeout,
        pool.providers,
        pool.model_cache,
        pool.memory_arena,
        pool.lone_file_uses_all_cores,
        pool.max_files_per_worker,
        models_of(config),
        config.daemon.models_dir,
    )


def describe_changes(old: Config, new: Config) -> list[str]:
    """Readable list of what a reload changes, for the log and the ``reload`` answer."""
    changes = []
    for section in ("daemon", "pool"):
        before, after = getattr(old, section), getattr(new, section)
        for field in dataclasses.fields(before):
            if getattr(before, field.name) != getattr(after, field.name):
                changes.append(f"{section}.{field.name}")
    old_watches = {w.name: w for w in old.watches}
    new_watches = {w.name: w for w in new.watches}
    changes += [f"watch {n} added" for n in new_watches.keys() - old_watches.keys()]
    changes += [f"watch {n} removed" for n in old_watches.keys() - new_watches.keys()]
    changes += [
        f"watch {n} changed"
        for n in new_watches.keys() & old_watches.keys()
        if new_watches[n] != old_watches[n]
    ]
    return sorted(changes)


def load_in_worker(pool: Pool, model: str) -> ModelCheck:
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
        if watcher.revive():
            log.info("watch.revived", watch=name, message="the inbox is back; watching it again")
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
    notifier = Notifier.from_environment(os.environ)  # read once, here: systemd's variables
    ledger = config.daemon.state_dir / "ledger.sqlite3"
    try:
        return Daemon(config, notifier).run()
    except WatchdError as exc:
        log.error("daemon.failed", error=str(exc))
        return 2
    except sqlite3.DatabaseError as exc:  # a ledger damaged under the daemon: its memory is gone
        error = LedgerError(f"cannot use the ledger {ledger}: {exc} (see docs/reliability.md)")
        log.error("daemon.failed", error=str(error))
        return 2
