"""The Dask backend of the worker pool (``[pool] backend = "dask"``): one daemon, many hosts.

The daemon stays the only owner of the ledger and of every folder (docs/design.md,
invariant 5). :class:`DaskPool` sends each file's bytes and options to a Dask
cluster (``dask worker ... --preload watchd.pool.dask_worker`` on each host, see
docs/scale-out.md) and hands back a :class:`concurrent.futures.Future` that
completes with the returned bytes, as every :class:`~watchd.pool.protocol.Pool` does,
so the dispatcher uses it exactly like :class:`~watchd.pool.local.LocalPool`.

How faults map onto the dispatcher's rules:

* **A worker dies mid-file.** The scheduler reruns the task on another worker
  (up to its ``allowed-failures``); past that, :class:`distributed.KilledWorker`
  becomes :class:`~watchd.errors.AttemptFailed` (one attempt, retried up to
  ``max_attempts``). Our future completes at most once, so a task that Dask
  ran twice still gives one output.
* **The scheduler is not there yet.** The constructor never waits: a background
  thread connects, :meth:`status` says ``connecting`` (then ``disconnected``
  with the reason) and :attr:`capacity` is 0, so the dispatcher claims nothing
  until workers are connected. :meth:`check_model` waits only
  :data:`MODEL_CHECK_WAIT` for the cluster; without one it defers the check to
  each worker as it joins, because a reload into ``backend = "dask"`` runs in the
  daemon's main loop and must not stall it for minutes.
* **The scheduler goes away.** Nothing fails: files sent to it go back into
  this pool's own queue (without costing an attempt), dispatch pauses
  (:attr:`capacity` is 0) and :meth:`status` says why. When the
  scheduler is back (the client reconnects, or a new one is made every
  second) the queue is sent again.
* **file_timeout.** A running Dask task cannot be stopped. The clock starts when
  a worker *starts* the task (it announces that on an event topic), like the
  local pool's; when it runs out our future fails with :class:`AttemptFailed`
  and the Dask future is released, so the result is thrown away. A task that
  never starts (the cluster is saturated) gives up after twice the time.
* **Retired by a reload.** Files already in the cluster finish. Files this pool
  holds but cannot send (its cluster is gone) fail as a broken pool
  (:class:`~watchd.errors.PoolBroken`): the dispatcher gives
  their attempt back and queues them for the new pool, instead of leaving them
  waiting for a cluster nobody uses any more.
* **Bounded.** At most :attr:`dispatch_window` files are in the cluster (by
  default two per worker thread, at least one); the rest wait here, and the
  dispatcher's own cap bounds those.

``distributed`` is imported here and in :mod:`watchd.pool.dask_worker` only: the local
pool never needs it.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import dask
import distributed
import structlog
from distributed import KilledWorker

from watchd.errors import AttemptFailed, InputRejected, PoolBroken
from watchd.logs import StdlibBridge, bridge_stdlib_logs
from watchd.models import check_name
from watchd.pool import dask_worker
from watchd.pool.protocol import ModelCheck, PoolStatus, WorkerStatus, as_failure
from watchd.pool.task import Result, Task

log = structlog.get_logger()

#: distributed is only partly annotated (mypy --strict refuses calls to its unannotated
#: functions): its client API is used through this untyped handle.
_dd: Any = distributed

#: How often the monitor thread wakes up when nothing wakes it (seconds).
TICK = 0.1
#: How often the cluster's workers are listed (seconds).
INFO_INTERVAL = 1.0
#: The longest a call to the scheduler may hang the monitor (seconds).
RPC_TIMEOUT = 5.0
#: Pause between attempts to connect while the scheduler is away (seconds).
RECONNECT_INTERVAL = 1.0
#: Extra time a finished result may take to arrive, beyond file_timeout (seconds).
FETCH_GRACE = 60.0
#: Threads that fetch finished results from the workers concurrently.
FETCHERS = 4
#: check_model: how long the other workers may take once the first one has loaded the model.
LATE_ANSWER = 30.0
#: check_model: the longest it waits for a scheduler with a worker before deferring the check
#: (seconds). It runs in the daemon's main loop (start-up, reload): the loop must keep going.
MODEL_CHECK_WAIT = 5.0
#: What check_model returns for a model it could not check yet (no cluster to ask).
UNCHECKED = "unknown (not checked yet: no dask worker connected)"


def security_from(
    tls_ca_file: str | Path | None = None,
    tls_client_cert: str | Path | None = None,
    tls_client_key: str | Path | None = None,
) -> Any | None:
    """Dask's own TLS settings from the ``[pool] tls_*`` keys (None when none is set).

    Use a ``tls://`` scheduler address with them; encryption is then required.
    """
    files = {
        "tls_ca_file": tls_ca_file,
        "tls_client_cert": tls_client_cert,
        "tls_client_key": tls_client_key,
    }
    if all(value is None for value in files.values()):
        return None
    given = {name: str(value) for name, value in files.items() if value is not None}
    return _dd.Security(require_encryption=True, **given)


#: The loggers distributed gives a stderr handler of its own (see distributed/config.py).
_DASK_LOGGERS = ("distributed", "distributed.client", "distributed.gc", "tornado")


def route_dask_logs() -> None:
    """Send distributed's log lines (warnings and up) into watchd's log, one event each.

    Under systemd the daemon writes JSON lines; dask's own plain-text lines on the
    same stderr would break ``journalctl -o cat | jq``.
    """
    bridge_stdlib_logs(_DASK_LOGGERS, StdlibBridge("dask.log"))


def _summary(by_worker: dict[str, str]) -> str:
    """One provider for a model, or ``"A on w1, B on w2"`` where the workers disagree."""
    distinct = sorted(set(by_worker.values()))
    if len(distinct) == 1:
        return distinct[0]
    return ", ".join(f"{provider} on {worker}" for worker, provider in sorted(by_worker.items()))


@dataclass(eq=False)
class _Entry:
    """One submitted file, from :meth:`DaskPool.submit` to its future's completion."""

    task: Task
    future: Future[Result]
    key: str = ""
    dask_future: Any = None  # distributed.Future while it is in the cluster
    comm: Any = None  # the scheduler connection it was sent over
    sent_at: float = 0.0
    started_at: float | None = None
    worker: str | None = None
    settled: bool = False


class DaskPool:
    """A :class:`~watchd.pool.protocol.Pool` on a Dask cluster.

    It is the daemon's only client of the scheduler; a monitor thread keeps it connected.
    """

    def __init__(
        self,
        scheduler: str,
        *,
        models: tuple[str, ...],
        file_timeout: float,
        dispatch_window: int | None = None,
        security: Any | None = None,
        connect_timeout: float = 10.0,
        on_capacity: Callable[[], None] | None = None,
    ) -> None:
        if dispatch_window is not None and dispatch_window < 1:
            raise ValueError("dispatch_window must be at least 1")
        self.scheduler = scheduler
        self.models = models
        self.file_timeout = file_timeout
        self._window_setting = dispatch_window
        self._security = security
        self._connect_timeout = connect_timeout
        # Called (from the pool's own thread) when work can be sent again: connected with
        # workers. The daemon's loop otherwise only looks at the pool on its next pass.
        self._on_capacity = on_capacity
        self._token = uuid.uuid4().hex[:12]
        self._serial = itertools.count(1)
        # Everything below is guarded by this condition's lock. Never hold it while waiting
        # for the client's event loop: the start-event handler runs there and takes it.
        self._cond = threading.Condition()
        self._client: Any = None  # distributed.Client
        self._comm: Any = None  # the connection our event subscription was made on
        self._waiting: deque[_Entry] = deque()
        self._sent: dict[str, _Entry] = {}
        self._workers: dict[str, dict[str, Any]] = {}
        self._connected = False
        self._error: str | None = "connecting to the scheduler"
        self._tried = False  # an attempt failed, or a connection was lost: "disconnected"
        self._since = time.time()
        # Which execution provider each worker runs each model on (asked when it joins).
        self._providers: dict[str, dict[str, str]] = {}
        self._probes: dict[str, Any] = {}  # key -> distributed.Future of a model check
        self._closed = False
        self._next_info = 0.0
        self._next_connect = 0.0
        self._connecting = threading.Event()
        # Inputs of up to max_file_bytes travel inside the task; that is intended here.
        dask.config.set({"distributed.admin.large-graph-warning-threshold": 2**50})
        route_dask_logs()
        self._fetcher = ThreadPoolExecutor(FETCHERS, thread_name_prefix="watchd-dask-fetch")
        self._monitor = threading.Thread(target=self._run, name="watchd-dask", daemon=True)
        self._monitor.start()

    # --- what the dispatcher and the daemon use ---------------------------------------------------

    @property
    def dispatch_window(self) -> int:
        """How many files may be in the cluster at once: the setting, or 2 x worker threads."""
        with self._cond:
            return self._window()

    @property
    def size(self) -> int:
        """The current dispatch window (what the dispatcher sizes its in-flight cap from)."""
        return self.dispatch_window

    @property
    def alone_threads(self) -> int:
        """0: a file alone gets no more threads (each Dask worker host sets its own)."""
        return 0

    @property
    def capacity(self) -> int:
        """In-flight cap for the dispatcher: the window while the cluster can work, else 0."""
        with self._cond:
            return self._window() if not self._closed and self._can_send() else 0

    def _available(self) -> bool:
        """The scheduler is reachable and at least one worker is connected to it."""
        with self._cond:
            return not self._closed and self._can_send()

    def submit(self, task: Task) -> Future[Result]:
        """Queue ``task`` for the cluster; the future completes with its result or error."""
        future: Future[Result] = Future()
        entry = _Entry(task=task, future=future)
        with self._cond:
            if self._closed:
                raise RuntimeError("the dask pool is closed")
            self._waiting.append(entry)
        # A weak reference: the future's callback list must not hold its own entry (the entry
        # holds the future: a cycle that would keep the input and the result in memory until
        # the cyclic garbage collector runs; docs/performance.md). A pending entry is held
        # by ``_waiting`` or ``_sent`` anyway.
        future.add_done_callback(partial(self._our_future_done, weakref.ref(entry)))
        self._pump()
        return future

    def check_model(self, model: str, timeout: float) -> ModelCheck:
        """Load ``model`` on every connected worker; returns the execution provider in use.

        Workers that disagree (one on a GPU, one on the CPU) give ``"A on worker, B on
        worker"``, which the daemon reports as a provider fallback; a worker that cannot
        load the model raises its error (the daemon refuses the start or the reload).

        The daemon calls this in its main loop, at start-up and on every reload that
        makes a new pool. So it waits at most :data:`MODEL_CHECK_WAIT` seconds (or
        ``timeout``, if shorter) for the scheduler and a first worker. Without them it
        returns a deferred check (:data:`UNCHECKED`) at once and leaves the check to the
        monitor, which asks each worker as it joins (:meth:`status` shows the answers);
        dispatch waits for the cluster meanwhile. Waiting here instead (for ``timeout``:
        minutes) would stop the daemon from taking files, answering ``watchd status`` and
        pinging systemd.
        """
        if not self._wait_for_cluster(model, min(timeout, MODEL_CHECK_WAIT)):
            return ModelCheck(UNCHECKED, deferred=True)
        deadline = time.monotonic() + timeout
        with self._cond:
            client, workers = self._client, sorted(self._workers)
        assert client is not None
        futures = [
            client.submit(
                dask_worker.load_on_worker,
                model,
                key=f"watchd-load-{model}-{self._token}-{next(self._serial)}",
                workers=[address],
                allow_other_workers=False,
                pure=False,
            )
            for address in workers
        ]
        # Once one worker has answered, the others get LATE_ANSWER more seconds: a worker that
        # left meanwhile must not hold up the start for the whole timeout.
        while any(f.status == "pending" for f in futures) and time.monotonic() < deadline:
            if any(f.status != "pending" for f in futures):
                deadline = min(deadline, time.monotonic() + LATE_ANSWER)
            time.sleep(0.05)
        providers: dict[str, str] = {}
        try:
            for address, future in zip(workers, futures, strict=True):
                if future.status == "finished":
                    providers[address] = str(future.result())
                elif future.status == "error":
                    error = future.exception()
                    if isinstance(error, BaseException):
                        raise error
        finally:
            for future in futures:
                future.release()
        if not providers:
            raise AttemptFailed(f"loading model {model!r} took longer than {timeout:g} s")
        with self._cond:
            for address, provider in providers.items():
                self._providers.setdefault(address, {})[model] = provider
        return ModelCheck(_summary(providers))

    def verify_model(self, model: str) -> None:
        """Only the name: the workers hold the models, and each checks its own files
        (the preload refuses to join without them; a file for a model a worker lacks fails
        there with the command that installs it)."""
        check_name(model)

    def _wait_for_cluster(self, model: str, wait: float) -> bool:
        """Whether a worker is there within ``wait`` s (False at once if connecting failed)."""
        deadline = time.monotonic() + wait
        while not self._available():
            with self._cond:
                closed, tried = self._closed, self._tried
                why = self._error or "no dask worker is connected"
            if closed:
                raise AttemptFailed(f"cannot load model {model!r}: the dask pool is closed")
            if tried or time.monotonic() >= deadline:
                log.warning(
                    "dask.model_check_deferred",
                    model=model,
                    scheduler=self.scheduler,
                    reason=why,
                    message="each worker is checked when it joins; dispatch waits for one",
                )
                return False
            time.sleep(TICK)
        return True

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        """Stop using the cluster: fail what is not done when ``cancel``, else let it finish.

        ``wait=False`` retires the pool (after a reload replaced it): files already
        given to it finish and their futures complete; then it disconnects.
        """
        with self._cond:
            self._closed = True
            dropped: list[_Entry] = []
            if cancel:
                dropped = [*self._waiting, *self._sent.values()]
            self._cond.notify_all()
        for entry in dropped:
            self._settle(entry, error=AttemptFailed("the dask pool was closed before it finished"))
        if wait:
            self._monitor.join()

    def check(self) -> None:
        """Nothing to do: lost dask futures are resolved by the pool's own callbacks."""

    def status(self) -> PoolStatus:
        """The pool for ``watchd status`` and the stats file (cached: never waits for a reply)."""
        with self._cond:
            client = self._client
            connected = client is not None and client.status == "running" and self._connected
            executing: dict[str, int] = {}
            for entry in self._sent.values():
                if entry.started_at is not None and entry.worker is not None:
                    executing[entry.worker] = executing.get(entry.worker, 0) + 1
            per_worker: list[WorkerStatus] = []
            providers: dict[str, dict[str, str]] = {}  # model -> worker name -> provider
            for address, info in sorted(self._workers.items()):
                for model, provider in self._providers.get(address, {}).items():
                    providers.setdefault(model, {})[str(info.get("name", address))] = provider
                threads = int(info.get("nthreads") or 0)
                busy = executing.get(address, 0)  # our files it started and has not finished
                per_worker.append(
                    WorkerStatus(
                        address=address,
                        name=str(info.get("name", address)),
                        host=info.get("host"),
                        threads=threads,
                        busy=min(threads, busy),
                        memory_limit=info.get("memory_limit"),
                        status=info.get("status"),
                        providers=dict(self._providers.get(address, {})),
                    )
                )
            return PoolStatus(
                backend="dask",
                scheduler=self.scheduler,
                state=self._state(connected),
                connected=connected,
                error=None if connected and self._workers else self._error,
                since=self._since,
                workers=len(per_worker),
                threads=sum(w.threads for w in per_worker),
                busy=sum(w.busy for w in per_worker),
                dispatch_window=self._window(),
                in_cluster=len(self._sent),
                waiting=len(self._waiting),
                per_worker=tuple(per_worker),
                providers={model: _summary(by) for model, by in providers.items()},
            )

    # --- state helpers (call with the lock held) --------------------------------------------------

    def _state(self, connected: bool) -> str:
        """One word for status: connecting, connected, no workers, disconnected, closed."""
        if self._closed:
            return "closed"
        if connected:
            return "connected" if self._workers else "no workers"
        return "disconnected" if self._tried else "connecting"

    def _window(self) -> int:
        if self._window_setting is not None:
            return self._window_setting
        threads = sum(int(info.get("nthreads") or 0) for info in self._workers.values())
        return max(1, 2 * threads)

    def _can_send(self) -> bool:
        client = self._client
        return (
            client is not None
            and client.status == "running"
            and self._comm is not None
            and client.scheduler_comm is self._comm
            and bool(self._workers)
        )

    # --- sending ----------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Send waiting files while the cluster is usable and the window has room."""
        with self._cond:
            if not self._can_send():
                return
            client, comm = self._client, self._comm
            batch: list[_Entry] = []
            while self._waiting and len(self._sent) < self._window():
                entry = self._waiting.popleft()
                entry.key = f"watchd-{entry.task.file_id}-{self._token}-{next(self._serial)}"
                entry.started_at = entry.worker = None
                entry.comm = comm
                self._sent[entry.key] = entry
                batch.append(entry)
        for entry in batch:
            self._send(client, entry)

    def _send(self, client: Any, entry: _Entry) -> None:
        try:
            dask_future = client.submit(dask_worker.run_task, entry.task, key=entry.key, pure=False)
        except Exception as exc:  # the client closed in between: keep the file, try again later
            log.warning("dask.submit_failed", file=entry.task.file_id, error=str(exc))
            with self._cond:
                if not entry.settled and self._sent.pop(entry.key, None) is entry:
                    self._waiting.appendleft(entry)
            return
        with self._cond:
            stale = entry.settled or self._sent.get(entry.key) is not entry
            if not stale:
                entry.dask_future = dask_future
                entry.sent_at = time.monotonic()
        if stale:  # cancelled or closed while it was being sent
            dask_future.release()
            return
        dask_future.add_done_callback(partial(self._dask_done, entry))

    # --- completion -------------------------------------------------------------------------------

    def _dask_done(self, entry: _Entry, dask_future: Any) -> None:
        """In Dask's callback thread: the task finished, failed or was cancelled."""
        with self._cond:
            if entry.settled or entry.dask_future is not dask_future:
                return
        try:
            status = dask_future.status
            if status == "finished":
                self._fetcher.submit(self._fetch, entry, dask_future)
            elif status == "error":
                try:
                    error = dask_future.exception(timeout=RPC_TIMEOUT)
                except Exception as exc:
                    error = exc
                self._failed(entry, dask_future, error)
            else:  # cancelled: the connection to the scheduler was lost, or someone cancelled it
                self._failed(entry, dask_future, None)
        except Exception as exc:  # never leave a file hanging: this attempt is lost, not the file
            log.exception("dask.callback_failed", file=entry.task.file_id)
            self._settle(entry, error=AttemptFailed(f"the dask result was lost: {exc!r}"))

    def _fetch(self, entry: _Entry, dask_future: Any) -> None:
        try:
            result = dask_future.result(timeout=self.file_timeout + FETCH_GRACE)
        except TimeoutError:
            reason = "its result could not be fetched from the dask cluster in time"
            self._settle(entry, error=AttemptFailed(reason))
            return
        except BaseException as exc:  # whatever it is, the file must not hang
            self._failed(entry, dask_future, exc)
            return
        if isinstance(result, Result):
            self._settle(entry, result=result)
        else:
            self._settle(entry, error=AttemptFailed(f"a dask worker returned {type(result)!r}"))

    def _failed(self, entry: _Entry, dask_future: Any, error: BaseException | None) -> None:
        """Map a Dask failure onto the dispatcher's outcomes, or send the file again."""
        if isinstance(error, InputRejected):
            self._settle(entry, error=error)
            return
        if isinstance(error, KilledWorker):
            self._settle(entry, error=AttemptFailed(f"the dask worker running it died: {error}"))
            return
        if self._connection_lost(entry):
            self._requeue(entry, dask_future)
            return
        if error is None:
            reason = "cancelled in the dask cluster"
            self._settle(entry, error=AttemptFailed(f"processing was {reason} ({self.scheduler})"))
        elif isinstance(error, Exception):
            self._settle(entry, error=as_failure(error))  # "processing failed: <type>: <msg>"
        else:
            self._settle(entry, error=AttemptFailed(f"processing failed: {error!r}"))

    def _connection_lost(self, entry: _Entry) -> bool:
        client = self._client
        if client is None or client.status != "running":
            return True
        return client.scheduler_comm is not entry.comm

    def _requeue(self, entry: _Entry, dask_future: Any) -> None:
        """The scheduler connection broke under this file: send it again, at no attempt's cost."""
        with self._cond:
            if entry.settled or self._sent.get(entry.key) is not entry:
                return
            del self._sent[entry.key]
            entry.dask_future = None
            self._waiting.appendleft(entry)
            self._cond.notify_all()
        dask_future.release()

    def _settle(
        self, entry: _Entry, *, result: Result | None = None, error: BaseException | None = None
    ) -> None:
        """Complete our future exactly once and forget the Dask future."""
        with self._cond:
            if entry.settled:
                return
            entry.settled = True
            if self._sent.get(entry.key) is entry:
                del self._sent[entry.key]
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(entry)
            dask_future, entry.dask_future = entry.dask_future, None
            self._cond.notify_all()
        if dask_future is not None:
            dask_future.release()
        try:
            if error is not None:
                entry.future.set_exception(error)
            elif result is not None:
                entry.future.set_result(result)
        except InvalidStateError:  # cancelled by the dispatcher meanwhile
            pass

    def _our_future_done(self, ref: weakref.ref[_Entry], future: Future[Result]) -> None:
        entry = ref()  # None: settled and forgotten already
        if entry is not None and future.cancelled():  # the dispatcher gave up on it (shutdown)
            self._settle(entry)  # let the cluster forget it

    def _on_started(self, event: Any) -> None:
        """In the client's event loop: a worker began one of our tasks (starts file_timeout)."""
        try:
            message = event[1]
            key, worker = str(message["key"]), str(message["worker"])
        except (IndexError, KeyError, TypeError):
            return
        with self._cond:
            entry = self._sent.get(key)
            if entry is not None:
                entry.started_at = time.monotonic()
                entry.worker = worker

    # --- the monitor thread: connection, worker list, time limits ---------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closed and not self._waiting and not self._sent:
                        break
                self._keep_connected()
                self._expire()
                self._pump()
                self._give_back_stranded()
                with self._cond:
                    self._cond.wait(TICK)
        except Exception:  # a bug here must be loud, not a silently stalled pool
            log.exception("dask.monitor_failed", scheduler=self.scheduler)
            raise
        finally:
            self._disconnect()

    def _keep_connected(self) -> None:
        now = time.monotonic()
        client = self._client
        if client is not None and client.status in ("closing", "closed"):
            self._set_state(False, "the scheduler cannot be reached; trying again")
            with self._cond:
                self._client = None
            self._close_client(client)
            client = None
        if client is None:
            if now >= self._next_connect and not self._connecting.is_set():
                self._next_connect = now + RECONNECT_INTERVAL
                self._connecting.set()
                threading.Thread(
                    target=self._connect, name="watchd-dask-connect", daemon=True
                ).start()
            return
        if client.status != "running":
            self._set_state(False, "lost the connection to the scheduler; reconnecting")
            return
        if client.scheduler_comm is not self._comm or now >= self._next_info:
            self._refresh(client)

    def _connect(self) -> None:
        """In its own thread: a connection attempt blocks for up to connect_timeout."""
        try:
            client = _dd.Client(
                self.scheduler,
                security=self._security,
                timeout=self._connect_timeout,
                set_as_default=False,
                name="watchd",
            )
        except Exception as exc:
            self._set_state(False, f"cannot connect: {type(exc).__name__}: {exc}")
            self._connecting.clear()
            return
        with self._cond:
            closed = self._closed and not self._waiting and not self._sent
            if not closed:
                self._client, self._comm = client, None
            self._cond.notify_all()
        self._connecting.clear()
        if closed:  # the pool was closed while this attempt was under way
            self._close_client(client)

    def _refresh(self, client: Any) -> None:
        """List the workers; (re-)subscribe to start events on a new scheduler connection."""
        comm = client.scheduler_comm
        self._next_info = time.monotonic() + INFO_INTERVAL
        try:
            if comm is not self._comm:
                client.subscribe_topic(dask_worker.STARTED_TOPIC, self._on_started)
            identity = client.sync(
                client.scheduler.identity, n_workers=-1, callback_timeout=RPC_TIMEOUT
            )
        except Exception as exc:
            self._set_state(False, f"the scheduler does not answer: {type(exc).__name__}: {exc}")
            return
        workers = dict(identity.get("workers") or {})
        with self._cond:
            if client is not self._client:
                return
            joined = sorted(workers.keys() - self._workers.keys())
            gone = self._workers.keys() - workers.keys()
            for address in gone:
                self._providers.pop(address, None)
            now = time.monotonic()
            for entry in self._sent.values():
                if entry.worker in gone:  # dask runs it again elsewhere: its clock starts again
                    entry.started_at = entry.worker = None
                    entry.sent_at = now
            self._workers = workers
            self._comm = comm
            self._cond.notify_all()
        if gone:
            log.warning("dask.workers_lost", workers=sorted(gone), remaining=len(workers))
        self._set_state(True, None if workers else "no dask worker is connected")
        self._probe(client, joined)

    def _probe(self, client: Any, addresses: list[str]) -> None:
        """Ask each newly joined worker which provider runs each model (loading it if needed).

        The preload has loaded the models already, so this costs a worker a moment.
        It keeps :meth:`status` true as workers come and go (a GPU host next to CPU
        hosts), and it is the model check when :meth:`check_model` had no cluster to ask.
        The keys do not start with ``watchd-``: these are not files.
        """
        for address in addresses:
            for model in self.models:
                key = f"watchd.probe-{model}-{self._token}-{next(self._serial)}"
                try:
                    probe = client.submit(
                        dask_worker.load_on_worker,
                        model,
                        key=key,
                        workers=[address],
                        allow_other_workers=False,
                        pure=False,
                    )
                except Exception as exc:  # the client is closing: the next connection asks again
                    log.debug("dask.probe_failed", worker=address, error=str(exc))
                    return
                with self._cond:
                    self._probes[key] = probe
                probe.add_done_callback(partial(self._probed, address, model, key))

    def _probed(self, address: str, model: str, key: str, probe: Any) -> None:
        """In Dask's callback thread: a model check ended; fetching its answer may block."""
        if probe.status in ("finished", "error"):
            self._fetcher.submit(self._record_probe, address, model, key, probe)
        else:  # cancelled (connection lost, worker gone): asked again when it joins again
            with self._cond:
                self._probes.pop(key, None)

    def _record_probe(self, address: str, model: str, key: str, probe: Any) -> None:
        try:
            provider = str(probe.result(timeout=RPC_TIMEOUT))
        except Exception as exc:
            provider = f"cannot load: {type(exc).__name__}: {exc}"
            log.error("dask.model_failed", worker=address, model=model, error=provider)
        finally:
            with self._cond:
                self._probes.pop(key, None)
            probe.release()
        with self._cond:
            if address in self._workers:
                self._providers.setdefault(address, {})[model] = provider

    def _give_back_stranded(self) -> None:
        """A retired pool that cannot reach its cluster hands its unsent files back.

        After a reload replaced this pool, nobody waits for its scheduler to come back;
        files still queued here would wait for ever. Failing them as a broken pool makes
        the dispatcher give the attempt back and queue them for the new pool.
        """
        with self._cond:
            if not self._closed or not self._waiting or self._can_send():
                return
            stranded = list(self._waiting)
        for entry in stranded:
            self._settle(
                entry,
                error=PoolBroken(
                    f"the retired dask pool cannot reach {self.scheduler}; sent back to the queue"
                ),
            )

    def _set_state(self, connected: bool, error: str | None) -> None:
        with self._cond:
            changed = connected != self._connected or error != self._error
            if connected != self._connected:
                self._since = time.time()
            self._connected, self._error = connected, error
            if not connected:
                self._tried = True
                self._workers = {}
                self._providers = {}
        if not changed:
            return
        if connected and error is None:
            log.info("dask.connected", scheduler=self.scheduler, workers=len(self._workers))
            if self._on_capacity is not None:
                self._on_capacity()
        elif connected:
            log.warning("dask.no_workers", scheduler=self.scheduler, message=error)
        else:
            log.warning("dask.disconnected", scheduler=self.scheduler, error=error)

    def _expire(self) -> None:
        """file_timeout: fail files that ran too long (a task cannot be stopped, only dropped)."""
        now = time.monotonic()
        expired: list[tuple[_Entry, str]] = []
        with self._cond:
            for entry in self._sent.values():
                if entry.dask_future is None:
                    continue
                if entry.started_at is not None:
                    if now - entry.started_at >= self.file_timeout:
                        expired.append(
                            (
                                entry,
                                f"processing took longer than file_timeout "
                                f"({self.file_timeout:g} s) on dask worker {entry.worker}; "
                                "the result is dropped (Dask cannot stop a running task)",
                            )
                        )
                elif not self._workers:
                    entry.sent_at = now  # nobody could start it: waiting for workers is free
                elif now - entry.sent_at >= 2 * self.file_timeout:
                    expired.append(
                        (
                            entry,
                            f"no dask worker started it within twice file_timeout "
                            f"({2 * self.file_timeout:g} s)",
                        )
                    )
        for entry, reason in expired:
            self._settle(entry, error=AttemptFailed(reason))

    def _disconnect(self) -> None:
        with self._cond:
            client, self._client = self._client, None
            self._connected = False
            self._error = "closed"
            probes, self._probes = list(self._probes.values()), {}
        for probe in probes:
            probe.release()
        self._fetcher.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            self._close_client(client)

    def _close_client(self, client: Any) -> None:
        try:
            client.close(timeout=min(self._connect_timeout, RPC_TIMEOUT))
        except Exception as exc:  # closing a client whose scheduler is gone may complain
            log.debug("dask.close_failed", error=str(exc))
