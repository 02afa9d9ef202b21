"""What runs in a worker process, whichever backend started it.

Workers are *spawned*, not forked: each makes its :class:`~watchd.imaging.sessions.Sessions`
once, in :func:`init_worker` (a local pool's initializer, a Dask worker's preload), and the
main process never holds a session it could fork. :func:`run` is the task a pool sends.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

from PIL import Image, _imaging

from watchd.config import DEFAULT_PROVIDERS
from watchd.imaging.sessions import DEFAULT_MODEL_CACHE, Sessions, SessionSettings
from watchd.imaging.u2net import PILLOW_BLOCK_SIZE
from watchd.pipeline import process, warm_up
from watchd.pool.task import Result, Task

#: This process's sessions, made by :func:`init_worker` (one per worker process).
_sessions: Sessions | None = None


def init_worker(  # noqa: PLR0917 - pebble passes initargs positionally
    env: Mapping[str, str],
    threads: int,
    models: tuple[str, ...],
    providers: tuple[str, ...] = DEFAULT_PROVIDERS,
    model_cache: int = DEFAULT_MODEL_CACHE,
    memory_arena: bool = True,
    alone_threads: int = 0,
) -> None:
    """Worker initializer: point rembg at the model store and load the models once.

    Only the first ``model_cache`` models are preloaded (more would evict each other);
    the others load on first use. Each preloaded model is warmed up
    (:func:`watchd.pipeline.warm_up`). ``alone_threads`` (more than ``threads``): each
    model gets a second session with that many threads, for a file alone in the pool
    (:attr:`Task.threads`).
    """
    global _sessions  # noqa: PLW0603 - set once per process
    os.environ.update(env)
    # Decompression bombs: Pillow warns between 1x and 2x MAX_IMAGE_PIXELS and raises above;
    # a warning must stop the file too, not just scroll past in a log.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    _imaging.set_block_size(PILLOW_BLOCK_SIZE)  # cutouts relabelled without a copy (u2net.py)
    sessions = _sessions = Sessions(
        SessionSettings(threads, providers, model_cache, memory_arena, alone_threads)
    )
    for model in models[: sessions.settings.model_cache]:
        warm_up(sessions, model)
        if sessions.alone_threads:
            warm_up(sessions, model, sessions.alone_threads)


def sessions() -> Sessions:
    """This worker process's sessions (:func:`init_worker` must have run)."""
    if _sessions is None:
        raise RuntimeError("this process was not initialised as a watchd worker")
    return _sessions


def run(task: Task) -> Result:
    """One file in this worker: :func:`watchd.pipeline.process` with its sessions."""
    return process(task, sessions())


def load_model(model: str) -> str:
    """Load ``model`` in this worker; returns the execution provider actually in use."""
    return sessions().provider(model)
