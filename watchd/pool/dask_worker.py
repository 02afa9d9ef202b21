"""The watchd side of a Dask worker (``[pool] backend = "dask"``).

Start a worker host with::

    dask worker tcp://SCHEDULER:8786 --nworkers 4 --nthreads 1 \\
        --preload watchd.pool.dask_worker --watchd-models u2netp

``--preload watchd.pool.dask_worker`` makes every worker process call
:func:`dask_setup` once, before it registers with the scheduler: it checks
the model files (the same checksums ``watchd models list`` shows) and loads
each model's onnxruntime session through :func:`watchd.pool.worker.init_worker`,
exactly as a local pool worker does. A worker whose models cannot be loaded
does not join the cluster: it exits with the reason in its log, instead of
taking files only to fail them. (The old name, ``--preload watchd.dask_worker``,
still works: :mod:`watchd.dask_worker` forwards to this module.)

Options (each also read from an environment variable, handy in a systemd unit):

==========================  ====================  =========================================
option                      environment           meaning
==========================  ====================  =========================================
``--watchd-models``         ``WATCHD_MODELS``     models to load at start (comma separated;
                                                  default ``u2netp``)
``--watchd-models-dir``     ``WATCHD_MODELS_DIR`` the model folder (``watchd models ...
                                                  --config``'s ``models_dir``); default:
                                                  rembg's own (``$U2NET_HOME``, ``~/.u2net``)
``--watchd-threads``        ``WATCHD_THREADS``    onnxruntime threads per inference (default 1:
                                                  run one process per core, ``--nthreads 1``)
``--watchd-providers``      ``WATCHD_PROVIDERS``  onnxruntime execution providers, in order of
                                                  preference (default ``CPUExecutionProvider``)
``--watchd-model-cache``    ``WATCHD_MODEL_CACHE`` sessions kept loaded per process, least
                                                  recently used one unloaded first (default 2,
                                                  or the number of ``--watchd-models`` if more)
==========================  ====================  =========================================

Dask runs tasks in threads of one process, so the sessions here are shared by
every task thread of the process; loading is serialised by a lock (a model the
preload did not load is loaded on first use, once). onnxruntime's
``InferenceSession.run`` is itself thread-safe.

The worker never sees the ledger or any user folder (docs/design.md, invariant 5):
:func:`run_task` gets a :class:`~watchd.pool.task.Task` (bytes and options) and
returns a :class:`~watchd.pool.task.Result` (bytes), which the daemon writes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from watchd.config import DEFAULT_PROVIDERS
from watchd.imaging.sessions import DEFAULT_MODEL_CACHE
from watchd.pool.task import Result, Task
from watchd.pool.worker import init_worker, load_model, run

#: Event topic a task announces its start on; the daemon's ``file_timeout`` clock starts then,
#: not while the task waits in the scheduler's queue (as with the local pool).
STARTED_TOPIC = "watchd-task-started"

log = logging.getLogger("watchd.dask_worker")  # the name operators grep their logs for

_lock = threading.Lock()
_initialised = False
_models_dir: Path | None = None  # None: rembg's own folder ($U2NET_HOME, ~/.u2net)
_providers: dict[str, str] = {}  # model -> execution provider in use in this process


def _names(value: str) -> tuple[str, ...]:
    return tuple(part for part in value.replace(",", " ").split() if part)


def _setup_logging() -> None:
    if not log.handlers:  # dask configures only its own loggers; match its format
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def setup(
    models: tuple[str, ...],
    models_dir: Path | None = None,
    threads: int = 1,
    providers: tuple[str, ...] = DEFAULT_PROVIDERS,
    model_cache: int | None = None,
    *,
    memory_arena: bool = True,
) -> dict[str, str]:
    """Check the model files, initialise this process as a watchd worker, load ``models``.

    ``model_cache`` (default: enough for ``models``, at least 2) bounds the sessions
    kept loaded; a preloaded model must not be unloaded by the next one it preloads.
    ``memory_arena`` is ``[pool] memory_arena`` of a local pool, for this worker host.
    Returns the execution provider each model runs on. Raises
    :class:`~watchd.errors.ModelError` with the command that fixes a missing or
    corrupt model.
    """
    global _initialised, _models_dir
    from watchd.models import ModelStore

    store = ModelStore(models_dir)
    for model in models:
        store.verify(model)
    with _lock:
        cache = model_cache or max(DEFAULT_MODEL_CACHE, len(models))
        init_worker(store.worker_env(), threads, (), providers, cache, memory_arena)
        _initialised, _models_dir = True, store.root
        for model in models:
            _providers[model] = load_model(model)
    return {model: _providers[model] for model in models}


def _ensure(model: str) -> str:
    """The provider of ``model`` in this process, initialising and loading it once if needed."""
    provider = _providers.get(model)
    if provider is not None:
        return provider
    with _lock:
        if not _initialised:  # a worker started without --preload: defaults from the environment
            _lazy_init()
        provider = _providers.get(model)
        if provider is None:
            from watchd.models import ModelStore

            started = time.perf_counter()
            ModelStore(_models_dir).verify(model)  # a clear "run: watchd models pull", no download
            provider = _providers[model] = load_model(model)
            log.info(
                "watchd: loaded model %s on %s in %.2fs (not preloaded: add it to --watchd-models)",
                model,
                provider,
                time.perf_counter() - started,
            )
        return provider


def _lazy_init() -> None:
    global _initialised, _models_dir  # noqa: PLW0603 - per-process worker state, set once
    _setup_logging()
    folder = os.environ.get("WATCHD_MODELS_DIR")
    _models_dir = Path(folder).absolute() if folder else None
    env = {} if _models_dir is None else {"U2NET_HOME": str(_models_dir)}
    threads = int(os.environ.get("WATCHD_THREADS") or 1)
    providers = _names(os.environ.get("WATCHD_PROVIDERS", "")) or DEFAULT_PROVIDERS
    cache = int(os.environ.get("WATCHD_MODEL_CACHE") or DEFAULT_MODEL_CACHE)
    arena = os.environ.get("WATCHD_MEMORY_ARENA", "1").strip().lower() not in ("0", "false", "no")
    init_worker(env, threads, (), providers, cache, arena)
    _initialised = True
    log.warning(
        "watchd: worker was started without --preload watchd.pool.dask_worker; initialised now"
    )


@click.command(context_settings={"help_option_names": []})
@click.option("--watchd-models", envvar="WATCHD_MODELS", default="u2netp", show_default=True)
@click.option(
    "--watchd-models-dir",
    envvar="WATCHD_MODELS_DIR",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--watchd-threads", envvar="WATCHD_THREADS", default=1, type=click.IntRange(1, 256))
@click.option("--watchd-providers", envvar="WATCHD_PROVIDERS", default=",".join(DEFAULT_PROVIDERS))
@click.option(
    "--watchd-model-cache", envvar="WATCHD_MODEL_CACHE", default=None, type=click.IntRange(1, 64)
)
@click.option(
    "--watchd-memory-arena/--watchd-no-memory-arena", envvar="WATCHD_MEMORY_ARENA", default=True
)
def dask_setup(
    worker: Any,
    *,
    watchd_models: str,
    watchd_models_dir: Path | None,
    watchd_threads: int,
    watchd_providers: str,
    watchd_model_cache: int | None,
    watchd_memory_arena: bool,
) -> None:
    """Dask preload hook: runs once in each worker process, before it joins the scheduler."""
    _setup_logging()
    models = _names(watchd_models)
    started = time.perf_counter()
    try:
        providers = setup(
            models,
            watchd_models_dir,
            watchd_threads,
            _names(watchd_providers) or DEFAULT_PROVIDERS,
            watchd_model_cache,
            memory_arena=watchd_memory_arena,
        )
    except Exception as exc:
        # Dask only logs a failing preload and lets the worker join anyway; a worker without
        # its model would fail every file sent to it. Leave instead; the supervisor (systemd,
        # the nanny) restarts it, and the reason is in the log.
        log.error("watchd: this worker cannot process files and exits: %s", exc)
        raise SystemExit(f"watchd: {exc}") from None
    log.info(
        "watchd: worker %s ready: models %s, %d onnxruntime thread(s), loaded in %.2fs",
        getattr(worker, "name", "?"),
        ", ".join(f"{m} on {p}" for m, p in providers.items()) or "(none preloaded)",
        watchd_threads,
        time.perf_counter() - started,
    )


# --- what the daemon runs on the cluster ---------------------------------------------------------


def run_task(task: Task) -> Result:
    """One file: announce the start (for ``file_timeout``), then bytes in, bytes out."""
    from distributed import get_worker

    worker = get_worker()
    worker.log_event(
        STARTED_TOPIC, {"key": str(worker.get_current_task()), "worker": str(worker.address)}
    )
    _ensure(task.model)
    return run(task)


def load_on_worker(model: str) -> str:
    """Load ``model`` in this worker (if the preload did not); returns the provider in use."""
    return _ensure(model)
