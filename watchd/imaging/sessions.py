"""The onnxruntime sessions of one worker process, held in one object.

A worker (a local pool process, or a Dask worker process) makes one :class:`Sessions`
when it starts (:func:`watchd.pool.worker.init_worker`) and keeps it for its life: the
settings it was started with, and the loaded sessions by model, least recently used
model first, at most ``model_cache`` models. Each model's sessions are kept by
onnxruntime thread count (the worker's own, and ``alone_threads`` for a file that has
the pool to itself).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from watchd.config import DEFAULT_PROVIDERS, PoolConfig
from watchd.errors import ModelError
from watchd.imaging.u2net import FAMILY, U2netSession

#: The ``[pool]`` defaults, for workers started without a config (tests, the Dask plug-in).
DEFAULT_MODEL_CACHE = PoolConfig.model_cache


@dataclass(frozen=True)
class SessionSettings:
    """How a worker's sessions are made: the ``[pool]`` settings of the same names."""

    threads: int = 1
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    model_cache: int = DEFAULT_MODEL_CACHE
    memory_arena: bool = True
    #: threads for a file alone in the pool (0: no more than ``threads``)
    alone_threads: int = 0


class Sessions:
    """The loaded sessions of one worker process, by model and thread count."""

    def __init__(self, settings: SessionSettings) -> None:
        alone = settings.alone_threads if settings.alone_threads > settings.threads else 0
        self.settings = SessionSettings(
            threads=settings.threads,
            providers=settings.providers,
            model_cache=max(1, settings.model_cache),
            memory_arena=settings.memory_arena,
            alone_threads=alone,
        )
        self._by_model: OrderedDict[str, dict[int, Any]] = OrderedDict()
        self._lock = threading.Lock()  # a Dask worker runs tasks in threads of one process

    @property
    def threads(self) -> int:
        """The worker's own onnxruntime thread count."""
        return self.settings.threads

    @property
    def alone_threads(self) -> int:
        return self.settings.alone_threads

    def get(self, model: str, threads: int = 0) -> Any:
        """The session of ``model`` with ``threads`` onnxruntime threads (0: the worker's own).

        Loaded once per process and kept while the model is recently used.
        """
        threads = threads or self.settings.threads
        with self._lock:  # one session per model, thread count and process
            by_threads = self._by_model.get(model, {})
            session = by_threads.get(threads)
            if session is None:
                session = new_session(model, threads, self.settings)
                by_threads[threads] = session
                self._by_model[model] = by_threads
                # An evicted session may still be running in another thread: that thread holds
                # a reference, so it is freed when that file is finished, not under it.
                while len(self._by_model) > self.settings.model_cache:
                    self._by_model.popitem(last=False)
            self._by_model.move_to_end(model)
            return session

    def loaded(self) -> tuple[str, ...]:
        """The models whose sessions this process holds, least recently used first."""
        with self._lock:
            return tuple(self._by_model)

    def provider(self, model: str) -> str:
        """Load ``model``; returns the execution provider actually in use.

        onnxruntime falls back to the CPU silently when a GPU provider cannot load
        (missing CUDA/cuDNN libraries): the daemon compares this answer with what
        was asked for and logs it, or refuses to start with ``require_accelerator``.
        """
        providers = self.get(model).inner_session.get_providers()
        return str(providers[0])


@functools.cache
def _share_arena() -> None:
    """Register one onnxruntime CPU arena for every session of this process, once.

    Sessions then take their working memory (docs/performance.md) from this one
    arena instead of each keeping its own: a worker holding several models, or a model's
    second session for lone files, costs their weights, not another arena. Sessions of one
    worker process run one at a time (a Dask worker's threads share it safely).
    """
    import onnxruntime as ort

    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # its defaults


def new_session(model: str, threads: int, settings: SessionSettings) -> Any:
    """A session for ``model``: U²-Net models without rembg, other rembg models through it.

    U²-Net models (rembg's ``u2net``, ``u2netp``, ``u2net_human_seg``, ``silueta``, and
    any imported model, which rembg would run as ``u2net_custom``) run in
    :class:`~watchd.imaging.u2net.U2netSession`, so a worker that serves only them never
    imports rembg (seconds and a lot of memory: docs/performance.md).
    ``watchd models import file.onnx --name NAME`` puts the file where
    :class:`~watchd.models.ModelStore` finds it; the worker's environment carries the same
    ``U2NET_HOME``, so ``ModelStore(None)`` resolves the very file checked there.
    """
    import onnxruntime as ort

    from watchd.models import ModelStore

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if threads > 1:
        # Threads that spin between operators take the core from the other workers
        # (measured in docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Without the memory-pattern planner the arena is not sized for the largest run seen:
    # lower peak RSS on 12 MP photos at the same speed (docs/outputs.md).
    options.enable_mem_pattern = False
    # ``[pool] memory_arena``: with the arena a session keeps its activations between
    # runs, which makes inference cheaper; without it a worker holding several models
    # needs less (docs/performance.md, docs/outputs.md).
    options.enable_cpu_mem_arena = settings.memory_arena
    if settings.memory_arena:
        _share_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    providers = list(settings.providers)
    if model not in FAMILY:
        from rembg import new_session as rembg_session
        from rembg.sessions import sessions_names

        if model in sessions_names:
            return rembg_session(model, sess_opts=options, providers=providers)
    path = ModelStore(None).path(model)
    if not path.is_file():
        raise ModelError(
            f"model {model!r} is not installed in this worker (looked for {path}); "
            + (
                f"install it with: watchd models pull {model}"
                if model in FAMILY
                else f"import it with: watchd models import <file.onnx> --name {model}"
            )
        )
    return U2netSession(path, options, providers)
