"""What the daemon and the dispatcher use of a worker pool, whichever backend it is.

A backend is a type they do not look inside: they submit a :class:`~watchd.pool.task.Task`
and get a future that completes with a :class:`~watchd.pool.task.Result` or raises one of
three errors, each with its rule (see :func:`outcome`):

* :class:`~watchd.errors.InputRejected`: the input is bad; it fails at once;
* :class:`~watchd.errors.PoolBroken`: the pool lost the file without running it (not the
  file's fault); the attempt is given back and the file queued again;
* :class:`~watchd.errors.AttemptFailed`: this attempt was lost (a worker died, a time
  limit, an unexpected error); retried up to ``max_attempts``.

For ``watchd status``, the stats file and the log a pool describes itself as a
:class:`PoolStatus`, a typed snapshot whose fields mean the same for every backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

from watchd.errors import AttemptFailed, InputRejected, PoolBroken
from watchd.pool.task import Result, Task


@dataclass(frozen=True)
class WorkerStatus:
    """One worker of a cluster as its scheduler last reported it."""

    address: str
    name: str
    host: str | None
    threads: int
    busy: int  # our files it started and has not finished
    memory_limit: int | None
    status: str | None  # the scheduler's word ("running", ...)
    providers: Mapping[str, str] = field(default_factory=dict)  # model -> provider


@dataclass(frozen=True)
class PoolStatus:
    """A pool at one moment (cheap to make: never waits for a worker or a scheduler)."""

    #: A label for status, logs and metrics ("local", "dask"); nothing branches on it.
    backend: str
    #: Worker processes, or the cluster's workers connected now.
    workers: int
    #: Files that can run at once (worker processes, or the cluster's worker threads).
    threads: int
    #: Of those, how many run our files now.
    busy: int
    #: Whether the pool can reach its workers (a local pool always can).
    connected: bool = True
    #: Why it cannot work now (None: it can).
    error: str | None = None
    #: A remote pool's scheduler address and its state in one word (None: a local pool).
    scheduler: str | None = None
    state: str | None = None
    #: When ``connected`` last changed (unix seconds; None: never).
    since: float | None = None
    #: How many files may be in the pool at once, how many are, how many wait in it.
    dispatch_window: int | None = None
    in_cluster: int = 0
    waiting: int = 0
    per_worker: tuple[WorkerStatus, ...] = ()
    #: model -> execution provider, as the pool's workers report it (empty: not reported).
    providers: Mapping[str, str] = field(default_factory=dict)

    @property
    def idle(self) -> int:
        return max(0, self.threads - self.busy)

    def as_dict(self) -> dict[str, Any]:
        """The status as plain data (the stats file's and ``watchd status``'s pool section)."""
        data = dataclasses.asdict(self)
        data["idle"] = self.idle
        data["providers"] = dict(self.providers)
        return data

    def summary(self) -> str:
        """``"4 workers"``, or ``"2 workers on tcp://host:8786 (connected)"``: for one line."""
        where = f" on {self.scheduler} ({self.state})" if self.scheduler else ""
        return f"{self.workers} workers{where}"


@dataclass(frozen=True)
class ModelCheck:
    """What :meth:`Pool.check_model` found out about a model."""

    #: The execution provider it runs on (several: ``"A on w1, B on w2"``), or why not known.
    provider: str
    #: True when no worker could be asked yet: each is asked as it joins, and dispatch
    #: waits for one (a cluster that is not up).
    deferred: bool = False


class Pool(Protocol):
    """What the dispatcher and the daemon use of a pool (:func:`~watchd.pool.factory.new_pool`)."""

    @property
    def alone_threads(self) -> int:
        """onnxruntime threads for a file that has the pool to itself (0: the usual)."""
        ...

    @property
    def capacity(self) -> int:
        """How many files may be in flight now (0: do not dispatch)."""
        ...

    def submit(self, task: Task) -> Future[Result]:
        """Start ``task``; the future ends as :func:`outcome` describes."""
        ...

    def check(self) -> None:
        """Notice a broken pool and fail the files it can no longer finish (cheap; per loop)."""
        ...

    def check_model(self, model: str, timeout: float) -> ModelCheck:
        """Prove in a real worker that ``model`` loads (start-up, reload)."""
        ...

    def verify_model(self, model: str) -> None:
        """Raise :class:`~watchd.errors.ModelError` (with the fix) if ``model`` cannot be
        used by this pool: a sidecar's model is checked with this at intake."""
        ...

    def status(self) -> PoolStatus: ...

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        """Stop: let running files finish, or end them when ``cancel``; ``wait=False``
        retires the pool after a reload (its files finish, the caller does not block)."""
        ...


def outcome(future: Future[Result]) -> Result | InputRejected | AttemptFailed:
    """A finished future as a result, a rejected input, or a lost attempt.

    A :class:`~watchd.errors.PoolBroken` comes back as itself (it is an AttemptFailed).
    Pools raise only those, but whatever else escapes a worker is mapped here too, so no
    file is ever left without an outcome.
    """
    try:
        return future.result()
    except (InputRejected, AttemptFailed) as exc:
        return exc
    except Exception as exc:  # a cancelled future too: its attempt is lost, not the file
        return as_failure(exc)


def as_failure(exc: BaseException) -> InputRejected | AttemptFailed:
    """An error from a worker as the outcome its rule says (shared by every backend)."""
    if isinstance(exc, InputRejected | AttemptFailed):
        return exc
    if isinstance(exc, FutureTimeout):
        return AttemptFailed("processing took longer than file_timeout; the worker was stopped")
    if isinstance(exc, MemoryError):  # outside process()'s own pages: no use retrying it
        return InputRejected("processing needs more memory than a worker can get (out of memory)")
    # unexpected, inside rembg/onnxruntime: retried, then failed
    detail = f": {exc}" if str(exc) else " (no message)"
    return AttemptFailed(f"processing failed: {type(exc).__name__}{detail}")


def pool_broke(future: Future[Result]) -> bool:
    """Whether the pool failed this file without running it to the end in a worker."""
    return not future.cancelled() and isinstance(future.exception(), PoolBroken)
