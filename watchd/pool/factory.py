"""The one place that knows which pool backends exist: :func:`new_pool`.

The daemon asks for a pool for its configuration and gets a
:class:`~watchd.pool.protocol.Pool`; it never learns which kind.
"""

from __future__ import annotations

from collections.abc import Callable

from watchd.config import Config
from watchd.models import ModelStore
from watchd.pool.protocol import Pool


def models_of(config: Config) -> tuple[str, ...]:
    """The models the configured watches use (what every worker preloads)."""
    return tuple(sorted({watch.model for watch in config.watches}))


def models_on_this_machine(config: Config) -> bool:
    """Whether the pool's workers load models from this machine's model folder (so it is
    checked here), or hold their own on other hosts (a cluster: each worker checks its own)."""
    return config.pool.backend != "dask"


def new_pool(config: Config, store: ModelStore, wake: Callable[[], None] | None = None) -> Pool:
    """A pool for ``config``'s ``[pool]`` section; ``wake`` is called when a pool that had
    no capacity can take work again (a cluster came up), so dispatch need not wait a tick."""
    pool = config.pool
    if pool.backend == "dask":
        assert pool.scheduler is not None  # config validation
        from watchd.pool.dask import DaskPool, security_from  # only with backend = "dask"

        return DaskPool(
            pool.scheduler,
            models=models_of(config),
            file_timeout=pool.file_timeout,
            dispatch_window=pool.dispatch_window,
            security=security_from(pool.tls_ca_file, pool.tls_client_cert, pool.tls_client_key),
            on_capacity=wake,  # dispatch as soon as the cluster can take work
        )
    from watchd.pool.local import LocalPool

    return LocalPool(
        workers=pool.workers,
        threads_per_worker=pool.threads_per_worker,
        env=store.worker_env(),
        models=models_of(config),
        file_timeout=pool.file_timeout,
        providers=pool.providers,
        model_cache=pool.model_cache,
        memory_arena=pool.memory_arena,
        lone_file_uses_all_cores=pool.lone_file_uses_all_cores,
        max_files_per_worker=pool.max_files_per_worker,
        store=store,
    )
