"""The Dask backend end to end: a real scheduler and real workers on 127.0.0.1.

``dask scheduler`` and ``dask worker ... --preload watchd.pool.dask_worker`` run as
subprocesses (the venv's own ``dask`` command) with the real u2netp model, and
:class:`watchd.pool.dask.DaskPool` is driven with real tasks built from real
photos. Faults are real too: workers and the scheduler are killed with SIGKILL.
Every process a test starts is killed in its fixture's ``finally``. The
cluster itself is :class:`tests.dask_support.Cluster`; the real daemon against
it is in tests/test_dask_e2e.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

from tests.dask_support import ROOT, Cluster, TLSFiles, free_port, need_distributed
from tests.support import wait_for
from watchd.errors import AttemptFailed, InputRejected, PoolBroken
from watchd.models import ModelStore
from watchd.pool.protocol import outcome, pool_broke
from watchd.pool.task import Result, Task
from watchd.pool.worker import init_worker
from watchd.pool.worker import run as process

if TYPE_CHECKING:
    from watchd.pool.dask import DaskPool

pytestmark = pytest.mark.e2e


@pytest.fixture
def cluster_factory(
    tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore
) -> Iterator[Callable[..., Cluster]]:
    need_distributed()
    made: list[Cluster] = []
    model_dir = model_store.path("u2netp").parent

    def make(workers: int = 2, **options: Any) -> Cluster:
        cluster = Cluster(tmp_path_factory.mktemp("cluster"), model_dir, **options)
        made.append(cluster)
        cluster.start_scheduler()
        for index in range(workers):
            cluster.start_worker(f"w{index}")
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()


@pytest.fixture
def pool_factory() -> Iterator[Callable[..., DaskPool]]:
    from watchd.pool.dask import DaskPool

    made: list[DaskPool] = []

    def make(cluster: Cluster, *, workers: int = 2, **options: Any) -> DaskPool:
        options.setdefault("file_timeout", 120.0)
        options.setdefault("connect_timeout", 2.0)
        pool = DaskPool(cluster.address, models=("u2netp",), **options)
        made.append(pool)
        try:
            wait_for(
                lambda: pool.status().as_dict()["workers"] >= workers,
                what=f"{workers} dask workers",
            )
        except AssertionError:
            logs = "\n".join(f"--- {n}\n{cluster.log(n)}" for n in ["scheduler", *cluster.starts])
            raise AssertionError(
                f"the cluster did not come up: {pool.status().as_dict()}\n{logs}"
            ) from None
        return pool

    try:
        yield make
    finally:
        for pool in made:
            pool.close(cancel=True)


@pytest.fixture(scope="module")
def reference(photos: dict[str, Path], model_store: ModelStore) -> dict[str, bytes]:
    """Each photo's cutout made by ``watchd.pool.worker.run`` in this process (the local way)."""
    init_worker(model_store.worker_env(), 1, ("u2netp",))
    return {
        name: process(Task(file_id=0, data=path.read_bytes(), model="u2netp")).data
        for name, path in photos.items()
    }


def task(file_id: int, photos: dict[str, Path], name: str | None = None) -> Task:
    names = sorted(photos)
    name = name or names[file_id % len(names)]
    return Task(file_id=file_id, data=photos[name].read_bytes(), model="u2netp")


def photo_of(file_id: int, photos: dict[str, Path]) -> str:
    return sorted(photos)[file_id % len(photos)]


def area(path: Path) -> int:
    with Image.open(path) as image:
        return image.width * image.height


def wait_all(futures: list[Future[Result]], timeout: float = 240.0) -> None:
    wait_for(lambda: all(f.done() for f in futures), timeout, "every future to complete")


def busy_on(pool: DaskPool, name: str) -> int:
    return sum(w["busy"] for w in pool.status().as_dict()["per_worker"] if w["name"] == name)


# --- without a cluster ---------------------------------------------------------------------------


def test_local_pool_and_daemon_do_not_import_dask() -> None:
    code = (
        "import sys, watchd.cli, watchd.daemon, watchd.dispatcher, watchd.pipeline\n"
        "import watchd.pool.factory, watchd.pool.local\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_the_preloads_old_name_still_works() -> None:
    """Worker hosts set up with ``--preload watchd.dask_worker`` get the same hook."""
    need_distributed()
    from watchd import dask_worker as old
    from watchd.pool import dask_worker

    assert old.dask_setup is dask_worker.dask_setup


def test_tls_settings_become_dask_security(tmp_path: Path) -> None:
    need_distributed()
    from distributed.security import Security

    from watchd.pool.dask import security_from

    assert security_from() is None
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    security = security_from(ca, cert, key)
    assert isinstance(security, Security)
    assert security.require_encryption
    assert (security.tls_ca_file, security.tls_client_cert, security.tls_client_key) == (
        str(ca),
        str(cert),
        str(key),
    )


def test_without_a_scheduler_nothing_waits_and_dispatch_stays_shut() -> None:
    """The daemon builds pools and checks models in its main loop: none of that may block."""
    need_distributed()
    from watchd.pool.dask import MODEL_CHECK_WAIT, UNCHECKED, DaskPool

    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    started = time.monotonic()
    pool = DaskPool(address, models=("u2netp",), file_timeout=60, connect_timeout=30)
    try:
        assert time.monotonic() - started < 1.0
        described = pool.status().as_dict()
        assert (described["state"], described["connected"], described["workers"]) == (
            "connecting",
            False,
            0,
        )
        assert pool.capacity == 0 and not pool.capacity > 0  # the dispatcher claims nothing

        started = time.monotonic()
        assert pool.check_model("u2netp", 300).provider == UNCHECKED  # deferred, not an error
        assert time.monotonic() - started < MODEL_CHECK_WAIT + 2.0

        # Retired by a reload while its cluster is away: what it holds goes back, refunded.
        future = pool.submit(Task(file_id=1, data=b"not sent", model="u2netp"))
        pool.close(cancel=False, wait=False)
        wait_for(future.done, timeout=10, what="the stranded file to be handed back")
        assert isinstance(future.exception(), PoolBroken)
        assert pool_broke(future)  # the dispatcher gives the attempt back and queues it again
    finally:
        pool.close(cancel=True)


# --- a healthy cluster ---------------------------------------------------------------------------


def test_outputs_match_local_processing(
    cluster_factory: Callable[..., Cluster],
    pool_factory: Callable[..., DaskPool],
    photos: dict[str, Path],
    reference: dict[str, bytes],
) -> None:
    cluster = cluster_factory()
    can_take_work = threading.Event()  # the daemon passes its wake-up here
    pool = pool_factory(cluster, on_capacity=can_take_work.set)
    wait_for(can_take_work.is_set, what="the pool saying it can take work")
    assert pool.capacity > 0
    assert pool.check_model("u2netp", 60).provider == "CPUExecutionProvider"
    described = pool.status().as_dict()
    assert described["backend"] == "dask" and described["connected"]
    assert (described["workers"], described["threads"], described["idle"]) == (2, 2, 2)
    assert sorted(w["name"] for w in described["per_worker"]) == ["w0", "w1"]
    assert pool.dispatch_window == pool.size == pool.capacity == 4  # 2 threads x 2
    assert described["state"] == "connected"
    # Each worker is asked which provider it runs the model on when it joins.
    wait_for(lambda: pool.status().as_dict()["providers"] == {"u2netp": "CPUExecutionProvider"})
    assert all(w["providers"] for w in pool.status().as_dict()["per_worker"])

    futures = [pool.submit(task(i, photos)) for i in range(len(photos) * 2)]
    wait_all(futures)
    for file_id, future in enumerate(futures):
        result = outcome(future)
        assert isinstance(result, Result), result
        assert result.file_id == file_id
        expected = reference[photo_of(file_id, photos)]
        assert result.data == expected  # byte for byte what the local pool makes
        assert result.width > 0 and set(result.timings) == {"decode", "infer", "encode"}
    described = pool.status().as_dict()
    assert (described["in_cluster"], described["waiting"], described["busy"]) == (0, 0, 0)

    # Bad input: InputRejected comes back as itself (not retried by the dispatcher).
    bad = pool.submit(Task(file_id=99, data=b"GIF89a but not really", model="u2netp"))
    empty = pool.submit(Task(file_id=100, data=b"", model="u2netp"))
    wait_all([bad, empty])
    assert isinstance(outcome(bad), InputRejected)
    assert "not an image" in str(outcome(bad))
    assert "empty" in str(outcome(empty))

    # Cancelling our future (the dispatcher abandoning a file at shutdown) forgets the task.
    futures = [pool.submit(task(200 + i, photos)) for i in range(6)]
    for future in futures:
        future.cancel()
    wait_for(
        lambda: pool.status().as_dict()["in_cluster"] + pool.status().as_dict()["waiting"] == 0
    )


def test_dispatch_window_bounds_what_the_cluster_holds(
    cluster_factory: Callable[..., Cluster],
    pool_factory: Callable[..., DaskPool],
    photos: dict[str, Path],
) -> None:
    import distributed

    cluster = cluster_factory()
    small = min(photos, key=lambda n: photos[n].stat().st_size)
    observer: Any = distributed.Client(cluster.address, set_as_default=False, timeout=30)
    try:
        for window, expected in ((None, 4), (1, 1)):
            pool = pool_factory(cluster, dispatch_window=window)
            assert pool.dispatch_window == expected
            futures = [pool.submit(task(i, photos, small)) for i in range(2 * expected + 4)]
            peak_here = peak_scheduler = 0
            while not all(f.done() for f in futures):
                described = pool.status().as_dict()
                peak_here = max(peak_here, described["in_cluster"])
                assert described["in_cluster"] + described["waiting"] <= len(futures)
                on_scheduler = observer.run_on_scheduler(
                    lambda dask_scheduler: sum(
                        1 for key in dask_scheduler.tasks if str(key).startswith("watchd-")
                    )
                )
                peak_scheduler = max(peak_scheduler, on_scheduler)
                time.sleep(0.05)
            assert all(isinstance(outcome(f), Result) for f in futures)
            assert 1 <= peak_here <= expected
            assert peak_scheduler <= expected  # never more tasks than the window in the cluster
            pool.close(cancel=False)
    finally:
        observer.close()


def test_file_timeout_fails_the_attempt_and_drops_the_task(
    cluster_factory: Callable[..., Cluster],
    pool_factory: Callable[..., DaskPool],
    photos: dict[str, Path],
) -> None:
    cluster = cluster_factory(workers=1)
    pool = pool_factory(cluster, workers=1, file_timeout=0.2)
    big = max(photos, key=lambda name: area(photos[name]))
    started = time.monotonic()
    future = pool.submit(task(1, photos, big))
    wait_all([future], timeout=60)
    failure = outcome(future)
    assert isinstance(failure, AttemptFailed), failure
    assert "file_timeout" in str(failure) and "0.2 s" in str(failure)
    assert time.monotonic() - started < 30
    described = pool.status().as_dict()
    assert (described["in_cluster"], described["waiting"]) == (0, 0)  # the Dask future is released


# --- faults --------------------------------------------------------------------------------------


def test_worker_killed_mid_batch_every_file_completes_once(
    cluster_factory: Callable[..., Cluster],
    pool_factory: Callable[..., DaskPool],
    photos: dict[str, Path],
    reference: dict[str, bytes],
) -> None:
    """Dask's default allowed-failures: the scheduler reruns the lost task on the other worker."""
    cluster = cluster_factory()
    pool = pool_factory(cluster)
    futures = [pool.submit(task(i, photos)) for i in range(10)]
    wait_for(lambda: busy_on(pool, "w1") > 0, what="w1 to be processing a file")
    cluster.kill_worker("w1")
    wait_all(futures)
    file_ids = []
    for future in futures:
        result = outcome(future)
        assert isinstance(result, Result), result
        file_ids.append(result.file_id)
        expected = reference[photo_of(result.file_id, photos)]
        assert result.data == expected  # byte for byte what the local pool makes
    assert sorted(file_ids) == list(range(10))  # every file exactly once
    wait_for(lambda: pool.status().as_dict()["workers"] == 1, what="the pool to report one worker")
    assert [w["name"] for w in pool.status().as_dict()["per_worker"]] == ["w0"]


def test_crashed_worker_costs_an_attempt_when_dask_does_not_retry(
    cluster_factory: Callable[..., Cluster],
    pool_factory: Callable[..., DaskPool],
    photos: dict[str, Path],
) -> None:
    """allowed-failures = 0 (what docs/scale-out.md recommends): max_attempts alone decides."""
    import distributed

    cluster = cluster_factory(scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"})
    pool = pool_factory(cluster)
    client: Any = distributed.Client(cluster.address, set_as_default=False, timeout=30)
    try:
        pids = client.run(os.getpid)
    finally:
        client.close()
    victim = next(w["address"] for w in pool.status().as_dict()["per_worker"] if w["name"] == "w1")

    # Emulate the dispatcher: an AttemptFailed is retried up to max_attempts, then failed.
    max_attempts = 3
    attempts = dict.fromkeys(range(8), 1)
    pending = {pool.submit(task(i, photos)): i for i in attempts}
    results: dict[int, list[Result]] = {i: [] for i in attempts}
    failures: list[str] = []
    wait_for(lambda: busy_on(pool, "w1") > 0, what="w1 to be processing a file")
    os.kill(pids[victim], signal.SIGKILL)  # the worker process only: its nanny restarts it
    deadline = time.monotonic() + 240
    while pending:
        assert time.monotonic() < deadline, "files did not finish"
        for future in [f for f in pending if f.done()]:
            file_id = pending.pop(future)
            result = outcome(future)
            if isinstance(result, Result):
                results[file_id].append(result)
            else:
                assert isinstance(result, AttemptFailed), result
                failures.append(str(result))
                assert attempts[file_id] < max_attempts, result
                attempts[file_id] += 1
                pending[pool.submit(task(file_id, photos))] = file_id
        time.sleep(0.05)
    assert all(len(r) == 1 for r in results.values()), results  # nothing lost, nothing twice
    assert failures, "the killed worker's file should have cost an attempt"
    assert all("died" in f for f in failures), failures
    assert any(n > 1 for n in attempts.values())


def test_scheduler_loss_pauses_dispatch_and_resumes(
    cluster_factory: Callable[..., Cluster],
    pool_factory: Callable[..., DaskPool],
    photos: dict[str, Path],
    reference: dict[str, bytes],
) -> None:
    cluster = cluster_factory()
    pool = pool_factory(cluster)
    futures = [pool.submit(task(i, photos)) for i in range(8)]
    wait_for(lambda: pool.status().as_dict()["busy"] > 0, what="a file to be processing")
    cluster.kill_scheduler()

    wait_for(lambda: not pool.capacity > 0, timeout=15, what="the pool to notice")
    assert pool.capacity == 0  # the dispatcher stops claiming files
    wait_for(
        lambda: not pool.status().as_dict()["connected"], timeout=15, what="status() to say so"
    )
    more = [pool.submit(task(100 + i, photos)) for i in range(4)]
    # A fresh connection attempt runs into connect_timeout: the pool keeps trying, files wait.
    wait_for(
        lambda: "cannot connect" in str(pool.status().as_dict()["error"]),
        timeout=30,
        what="a failed reconnection attempt",
    )
    described = pool.status().as_dict()
    assert not described["connected"] and described["state"] == "disconnected", described
    assert described["in_cluster"] == 0
    unfinished = [f for f in futures + more if not f.done()]
    assert described["waiting"] == len(unfinished) >= 4  # parked, not failed
    assert all(isinstance(outcome(f), Result) for f in futures + more if f.done())

    cluster.start_scheduler()  # same port; the supervisor restarts the workers, which rejoin
    wait_for(lambda: pool.capacity > 0, what="the pool to reconnect")
    wait_all(futures + more)
    for future in futures + more:
        result = outcome(future)
        assert isinstance(result, Result), result
        expected = reference[photo_of(result.file_id, photos)]
        assert result.data == expected  # byte for byte what the local pool makes
    assert sorted(outcome(f).file_id for f in futures + more) == [  # type: ignore[union-attr]
        *range(8),
        *range(100, 104),
    ]
    assert pool.status().as_dict()["connected"]


def test_tls_scheduler_needs_and_gets_the_client_certificate(
    tmp_path: Path,
    cluster_factory: Callable[..., Cluster],
    pool_factory: Callable[..., DaskPool],
    photos: dict[str, Path],
    reference: dict[str, bytes],
) -> None:
    """tls_ca_file, tls_client_cert and tls_client_key reach Dask's TLS: a real tls:// cluster."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    from watchd.pool.dask import DaskPool, security_from

    tls = TLSFiles(tmp_path)
    cluster = cluster_factory(workers=1, tls=tls)
    assert cluster.address.startswith("tls://")
    pool = pool_factory(cluster, workers=1, security=security_from(tls.ca, tls.cert, tls.key))
    future = pool.submit(task(1, photos))
    wait_all([future])
    result = outcome(future)
    assert isinstance(result, Result), result
    assert result.data == reference[photo_of(1, photos)]

    plain = DaskPool(cluster.address, models=("u2netp",), file_timeout=60, connect_timeout=2)
    try:  # without the certificates the scheduler cannot be reached, and the pool says why
        wait_for(lambda: plain.status().as_dict()["state"] == "disconnected", timeout=30)
        described = plain.status().as_dict()
        assert not plain.capacity > 0 and not described["connected"], described
        assert "cannot connect" in described["error"], described
    finally:
        plain.close(cancel=True)


@pytest.mark.usefixtures("fresh_worker")
@pytest.mark.parametrize("arena", [True, False])
def test_worker_setup_passes_memory_arena_to_its_sessions(
    monkeypatch: pytest.MonkeyPatch, model_store: ModelStore, arena: bool
) -> None:
    """``--watchd-[no-]memory-arena`` on a worker host is ``[pool] memory_arena`` locally."""
    from watchd.pool import dask_worker, worker

    monkeypatch.setattr(dask_worker, "_providers", {})
    monkeypatch.setattr(dask_worker, "_initialised", False)
    monkeypatch.setattr(dask_worker, "_models_dir", None)
    folder = model_store.path("u2netp").parent
    monkeypatch.setenv("U2NET_HOME", str(folder))  # setup exports it: restored afterwards
    providers = dask_worker.setup(("u2netp",), folder, memory_arena=arena)
    assert providers == {"u2netp": "CPUExecutionProvider"}
    options = worker.sessions().get("u2netp").inner_session.get_session_options()
    assert options.enable_cpu_mem_arena is arena
