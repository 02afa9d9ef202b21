"""A file alone in the pool runs its inference on all of the pool's threads.

Who decides (the dispatcher: the only file queued, nothing in flight), what the worker
does (a second session of the model with more threads, sharing one memory arena), that
the cutout is the same to the byte, and the real daemon doing it for a lone photo and
not for a batch. Real model, real worker processes, real photos.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import DaemonProcess, drop, wait_for
from watchd import pipeline
from watchd.models import ModelStore
from watchd.pool import worker
from watchd.pool.local import LocalPool
from watchd.pool.task import Task
from watchd.pool.worker import init_worker
from watchd.pool.worker import run as process

CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("workers", "threads", "enabled", "expected"),
    [
        (CORES, 1, True, CORES if CORES > 1 else 0),  # the default: a worker per core
        (2, 1, False, 0),  # [pool] lone_file_uses_all_cores = false
        (1, 2, True, 0),  # one worker already has all its threads: nothing to add
        (4 * CORES, 1, True, CORES if CORES > 1 else 0),  # never more threads than cores
    ],
)
def test_a_lone_file_may_use_every_thread_of_the_pool(
    workers: int, threads: int, enabled: bool, expected: int
) -> None:
    pool = LocalPool(
        workers, threads, {}, (), 60.0, lone_file_uses_all_cores=enabled
    )  # workers start on the first task: none here
    try:
        assert pool.alone_threads == expected
    finally:
        pool.close(cancel=True)


@pytest.mark.usefixtures("fresh_worker")
def test_the_lone_file_session_has_more_threads_and_the_same_cutout(
    model_store: ModelStore, photos: dict[str, Path]
) -> None:
    init_worker(model_store.worker_env(), 1, ("u2netp",), alone_threads=2)
    usual, wide = (worker.sessions().get("u2netp", n) for n in (1, 2))
    assert usual is worker.sessions().get("u2netp") and wide is not usual  # both preloaded
    assert worker.sessions().loaded() == ("u2netp",)  # one model, two sessions
    for session, threads, spinning in ((usual, 1, None), (wide, 2, "0")):
        options = session.inner_session.get_session_options()
        assert options.intra_op_num_threads == threads
        entries = {"session.intra_op.allow_spinning": spinning, "session.use_env_allocators": "1"}
        for key, value in entries.items():
            found = options.get_session_config_entry(key) if value is not None else None
            assert found == value, key
    data = photos["astronaut.jpg"].read_bytes()
    alone = process(Task(1, data, "u2netp", threads=2))
    assert alone.threads == 2
    assert alone.data == process(Task(2, data, "u2netp")).data  # the same bytes


@pytest.mark.usefixtures("fresh_worker")
def test_without_the_arena_no_session_shares_one(model_store: ModelStore) -> None:
    init_worker(model_store.worker_env(), 1, ("u2netp",), memory_arena=False, alone_threads=2)
    for threads in (1, 2):
        options = worker.sessions().get("u2netp", threads).inner_session.get_session_options()
        assert options.enable_cpu_mem_arena is False
        with pytest.raises(Exception, match="use_env_allocators"):
            options.get_session_config_entry("session.use_env_allocators")


@pytest.mark.usefixtures("fresh_worker")
def test_a_model_that_cannot_run_still_lets_the_worker_start(
    model_store: ModelStore, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up is an optimisation: a model that loads but fails to run must not stop
    the worker starting (pebble would restart it forever); its files fail with the reason."""

    def broken(*_args: object) -> None:
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : wrong input shape")

    monkeypatch.setattr(pipeline, "cut_out", broken)  # the warm-up's step
    monkeypatch.setattr(pipeline, "cut_out_raw", broken)  # a file's (before product steps)
    init_worker(model_store.worker_env(), 1, ("u2netp",), alone_threads=2)
    assert worker.sessions().loaded() == ("u2netp",)
    with pytest.raises(RuntimeError, match="wrong input shape"):
        process(Task(1, photos["coffee.png"].read_bytes(), "u2netp"))


def threads_of(daemon: DaemonProcess) -> dict[str, int]:
    return {Path(e["output"]).name: e["threads"] for e in daemon.events("file.done")}


@pytest.mark.e2e
def test_the_daemon_gives_a_lone_photo_every_core_and_a_batch_one_each(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(pool__workers=2).start()
    inbox = daemon.root / "inbox"
    drop(photos["coffee.png"], inbox, "lone.png")
    wait_for(lambda: "lone.png" in threads_of(daemon), what="the lone photo")
    assert threads_of(daemon) == {"lone.png": 2}
    album = daemon.root / "staging" / "album"  # a folder job: three files queued at once
    album.mkdir(parents=True)
    for name in ("astronaut.jpg", "coffee.png", "chelsea.webp"):
        drop(photos[name], album)
    album.rename(inbox / "album")
    wait_for(lambda: len(threads_of(daemon)) == 4, what="the album's three photos")
    assert threads_of(daemon) == {
        "lone.png": 2,
        "astronaut.png": 1,
        "coffee.png": 1,
        "chelsea.png": 1,
    }
    drop(photos["rocket.jpg"], inbox, "later.jpg")  # alone again once the album is done
    wait_for(lambda: "later.png" in threads_of(daemon), what="the later photo")
    assert threads_of(daemon)["later.png"] == 2
