"""The local backend (``[pool] backend = "local"``): spawned worker processes on this machine.

pebble runs them and restarts a worker that died or ran past ``file_timeout``. Its
futures are not handed out: each file gets a future of its own that ends as the
:class:`~watchd.pool.protocol.Pool` protocol says, with pebble's errors translated
(:func:`failure`), so nothing outside this module knows pebble.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import TYPE_CHECKING, Any

from watchd.config import DEFAULT_PROVIDERS
from watchd.errors import AttemptFailed, InputRejected, PoolBroken
from watchd.imaging.sessions import DEFAULT_MODEL_CACHE
from watchd.pool.protocol import ModelCheck, PoolStatus, as_failure
from watchd.pool.task import Result, Task
from watchd.pool.worker import init_worker, load_model, run

if TYPE_CHECKING:
    from watchd.models import ModelStore

#: Why a file waiting in a pool that broke comes back (given back, not counted as an attempt).
BROKEN = "the worker pool broke"


class LocalPool:
    """A pool of spawned worker processes (pebble restarts dead or timed-out workers)."""

    def __init__(
        self,
        workers: int,
        threads_per_worker: int,
        env: Mapping[str, str],
        models: tuple[str, ...],
        file_timeout: float,
        *,
        providers: tuple[str, ...] = DEFAULT_PROVIDERS,
        model_cache: int = DEFAULT_MODEL_CACHE,
        memory_arena: bool = True,
        lone_file_uses_all_cores: bool = True,
        max_files_per_worker: int | None = None,
        store: ModelStore | None = None,
    ) -> None:
        """``model_cache``, ``memory_arena``, ``lone_file_uses_all_cores``,
        ``max_files_per_worker``: the ``[pool]`` settings of the same names. ``store``: where
        :meth:`verify_model` checks a model (default: rembg's own folder)."""
        self.size = workers
        #: pebble's ``max_tasks``: a worker exits after this many tasks, *after* returning the
        #: last one's result, and pebble starts a fresh one (with its own initializer). Files
        #: waiting are never assigned to the leaving worker, so none fails or is retried; the
        #: cost is one worker start (spawn + model load) per this many files.
        self.max_files_per_worker = max_files_per_worker
        self.file_timeout = file_timeout
        self._store = store
        # A file alone in the pool may use every thread of it, but not more than the cores
        # this process may run on (more workers than cores is the operator's choice; a lone
        # file's threads fighting each other is not).
        total = min(workers * threads_per_worker, len(os.sched_getaffinity(0)))
        #: threads a file may use when it is alone in the pool (0: no more than the others)
        self.alone_threads = total if lone_file_uses_all_cores and total > threads_per_worker else 0
        self._initargs = (
            dict(env),
            threads_per_worker,
            models,
            providers,
            model_cache,
            memory_arena,
            self.alone_threads,
        )
        self._closed = False
        #: our futures of files given to pebble and not finished
        self._pending: set[Future[Result]] = set()
        self._pool: Any = self._new_pool()

    @property
    def capacity(self) -> int:
        """In-flight cap for the dispatcher: two files per worker keep it busy."""
        return self.size * 2

    def status(self) -> PoolStatus:
        return PoolStatus(
            backend="local",
            workers=self.size,
            threads=self.size,
            busy=min(self.size, len(self._pending)),
        )

    def _new_pool(self) -> Any:
        from pebble import ProcessPool

        return ProcessPool(
            max_workers=self.size,
            max_tasks=self.max_files_per_worker or 0,
            initializer=init_worker,
            initargs=self._initargs,
            context=multiprocessing.get_context("spawn"),
        )

    def _live_pool(self) -> Any:
        """The pebble pool, replaced if it broke.

        pebble gives up for good when a worker dies outside a task (the OOM killer or
        ``kill -9`` on an idle worker, a failing initializer): every later ``schedule``
        raises RuntimeError. The futures it held were already failed (BrokenProcessPool:
        :class:`~watchd.errors.PoolBroken`, given back), so a fresh pool is all that is needed.
        """
        if not self._closed and not self._pool.active:
            broken, self._pool = self._pool, self._new_pool()
            broken.stop()
            broken.join()
            # pebble does not resolve every future of a broken pool (one scheduled just
            # before or after the break can stay pending forever): resolve them here.
            for future in list(self._pending):
                with contextlib.suppress(InvalidStateError):  # pebble may settle it meanwhile
                    future.set_exception(PoolBroken(BROKEN))
            self._pending.clear()
        return self._pool

    def check(self) -> None:
        self._live_pool()

    def check_model(self, model: str, timeout: float) -> ModelCheck:
        """Prove in a real worker that ``model`` loads; returns the execution provider."""
        future = self._live_pool().schedule(load_model, args=(model,), timeout=timeout)
        try:
            return ModelCheck(str(future.result()))
        except FutureTimeout:
            raise AttemptFailed(f"loading model {model!r} took longer than {timeout:g} s") from None

    def verify_model(self, model: str) -> None:
        """Installed and intact in this machine's model folder (the workers load it there)."""
        from watchd.models import ModelStore

        (self._store or ModelStore(None)).verify(model)

    def submit(self, task: Task) -> Future[Result]:
        inner = self._live_pool().schedule(run, args=(task,), timeout=self.file_timeout)
        future = _Handed(inner)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        future.add_done_callback(_Handed.release)
        inner.add_done_callback(partial(_settle, future))
        return future

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        """Stop the workers: let running files finish, or kill them when ``cancel``.

        ``wait=False`` retires the pool (after a reload replaced it): its running
        files finish and their futures complete as usual, without blocking the caller.
        """
        self._closed = True
        if cancel:
            self._pool.stop()
        else:
            self._pool.close()
        if wait:
            self._pool.join()


class _Handed(Future[Result]):
    """Our future of one file: it reports running while pebble's does (a worker took the
    file), as pebble's own future did before it was wrapped.

    Once it is done it lets go of pebble's future (:meth:`release`). Pebble's future keeps
    a callback that holds ours (:func:`_settle`); were ours to keep pebble's too, the two
    would form a reference cycle, and each file's input and encoded outputs (megabytes)
    would stay in the daemon's memory until Python's cyclic garbage collector ran, not
    free as soon as the dispatcher drops the future (docs/performance.md, "The daemon's
    memory while a job runs").
    """

    def __init__(self, inner: Future[Any]) -> None:
        super().__init__()
        self._inner: Future[Any] | None = inner

    def running(self) -> bool:
        inner = self._inner
        return super().running() or (not self.done() and inner is not None and inner.running())

    @staticmethod
    def release(future: Future[Result]) -> None:
        """Its done callback (a plain function, so the callback list holds no cycle either):
        the dispatcher gave up on the file (shutdown), so pebble stops its worker if it
        runs; in every case pebble's future is let go."""
        if not isinstance(future, _Handed):
            return
        inner, future._inner = future._inner, None
        if inner is not None and future.cancelled():
            inner.cancel()


def _settle(future: Future[Result], inner: Future[Any]) -> None:
    """pebble's future ended: end ours with its result or the protocol's error."""
    with contextlib.suppress(InvalidStateError):  # ours was cancelled or resolved meanwhile
        if inner.cancelled():
            future.cancel()
            return
        error = inner.exception()
        if error is None:
            future.set_result(inner.result())
        else:
            future.set_exception(failure(error))


def failure(error: BaseException) -> InputRejected | AttemptFailed:
    """A pebble future's error as the protocol's: a dead worker, a broken pool, the rest."""
    from pebble import ProcessExpired

    if isinstance(error, ProcessExpired):
        return AttemptFailed(f"the worker process died ({error})")
    if isinstance(error, BrokenProcessPool):
        return PoolBroken(f"{BROKEN} ({error})" if str(error) else BROKEN)
    return as_failure(error)
