"""The real daemon on a real Dask cluster: ``[pool] backend = "dask"`` end to end.

One ``dask scheduler`` and two ``dask worker --preload watchd.pool.dask_worker``
processes (tests/dask_support.py) serve the whole module: starting them costs
~15 s on 2 cores. The daemon is the real ``watchd run`` subprocess; photos are
dropped into its inbox, its status is read with the real ``watchd status``,
and it is switched between backends with the real ``watchd reload``. What ran
on the cluster is read from the scheduler itself (the workers' start events),
not from the daemon's own account.

The last test stops and restarts the scheduler, so it stays last.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dask_support import Cluster, need_distributed
from tests.support import DaemonProcess, drop, wait_for, write_config
from watchd.models import ModelStore
from watchd.pool.task import Task
from watchd.pool.worker import init_worker
from watchd.pool.worker import run as process

pytestmark = pytest.mark.e2e

#: The four smallest of the session's photos: each takes a worker ~0.5-1 s.
SMALL = ("cat.png", "chelsea.webp", "coffee.png", "astronaut.jpg")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, model_store: ModelStore) -> Iterator[Cluster]:
    need_distributed()
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), model_store.path("u2netp").parent)
    try:
        cluster.start_scheduler()
        for name in ("w0", "w1"):
            cluster.start_worker(name)  # supervised: back after a scheduler restart
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def reference(photos: dict[str, Path], model_store: ModelStore) -> dict[str, bytes]:
    """Each photo's cutout as a local pool worker makes it (``watchd.pool.worker.run``, here)."""
    init_worker(model_store.worker_env(), 1, ("u2netp",))
    return {
        name: process(Task(file_id=0, data=path.read_bytes(), model="u2netp")).data
        for name, path in photos.items()
    }


def cli(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``watchd`` command against the daemon's config."""
    return subprocess.run(
        [sys.executable, "-m", "watchd", *args, "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def status(daemon: DaemonProcess) -> dict[str, Any]:
    result = cli(daemon, "status", "--json")
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def outputs(root: Path) -> dict[str, bytes]:
    """The finished cutouts (not a job's manifest, not a hidden temp file being written)."""
    base = root / "outbox"
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in base.rglob("*.png")
        if p.is_file() and not p.name.startswith(".")
    }


def ledger(root: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(root / "state" / "ledger.sqlite3") as db:
        return db.execute(query).fetchall()


def file_ids(root: Path) -> dict[str, int]:
    """Output name -> ledger file id."""
    rows = ledger(root, "SELECT id, output_path FROM files")
    return {Path(bytes(path).decode()).name: int(file_id) for file_id, path in rows}


def states(root: Path) -> dict[str, int]:
    return dict(ledger(root, "SELECT state, COUNT(*) FROM files GROUP BY state"))


def switch_backend(daemon: DaemonProcess, model_store: ModelStore, **pool: Any) -> dict[str, Any]:
    """Rewrite the config file with other [pool] settings and run ``watchd reload``."""
    daemon.config.write_text(
        write_config(daemon.root, model_store, **{f"pool__{k}": v for k, v in pool.items()})
    )
    result = cli(daemon, "reload", "--json")
    assert result.returncode == 0, result.stderr + daemon.log_text()[-3000:]
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["reloaded"] is True and "pool.backend" in answer["changes"], answer
    return answer


def test_a_batch_on_the_cluster_matches_local_processing_and_status_shows_the_cluster(
    cluster: Cluster,
    daemon_factory: Any,
    photos: dict[str, Path],
    reference: dict[str, bytes],
) -> None:
    cluster.wait_for_workers(2)
    since = time.time()
    daemon = daemon_factory(pool__backend="dask", pool__scheduler=cluster.address).start()
    root = daemon.root
    assert daemon.count("dask.model_check_deferred") == 0  # checked on the workers at start-up
    ready = daemon.events("daemon.ready")[-1]  # what runs the files, not [pool] workers
    assert (ready["backend"], ready["scheduler"], ready["workers"]) == ("dask", cluster.address, 2)
    before = status(daemon)
    assert before["backend"] == "dask"
    by_host = before["pool"].pop("workers_by_host")
    assert before["pool"] == {"scheduler": cluster.address, "connected": True, "error": None}
    assert (
        sum(by_host.values()) == 2
    )  # both workers online, counted per host (watchd_workers_online)
    assert before["workers"] == {"total": 2, "busy": 0}  # 2 workers x 1 thread, both idle
    assert before["providers"] == {"u2netp": "CPUExecutionProvider"}

    for name, path in photos.items():  # all six: a few seconds of work for two workers
        drop(path, root / "inbox", name)
    busy = wait_for(
        lambda: status(daemon)["workers"]["busy"], what="watchd status to show a busy worker"
    )
    assert 1 <= busy <= 2
    expected = {f"{Path(name).stem}.png" for name in photos}
    wait_for(lambda: set(outputs(root)) == expected, what="six cutouts")

    made = outputs(root)
    for name in photos:  # byte for byte what a local pool worker makes
        assert made[f"{Path(name).stem}.png"] == reference[name], name
    wait_for(lambda: states(root) == {"done": 6}, what="every file done")
    assert cluster.files_run_since(since) == set(file_ids(root).values())  # all on the cluster
    done = [e["file"] for e in daemon.events("file.done")]
    assert sorted(done) == sorted(set(done)) and len(done) == 6  # each file finished once

    after = status(daemon)
    assert after["workers"] == {"total": 2, "busy": 0}  # idle again: total - busy = 2 idle
    assert after["totals"]["files_done"] == 6
    table = cli(daemon, "status").stdout
    assert f"{cluster.address} connected" in table and "0 busy / 2 (dask)" in table, table
    assert daemon.stop() == 0


def test_reload_switches_backend_and_back_losing_and_duplicating_nothing(
    cluster: Cluster,
    daemon_factory: Any,
    model_store: ModelStore,
    photos: dict[str, Path],
) -> None:
    cluster.wait_for_workers(2)
    daemon = daemon_factory().start()  # the local pool: one worker process, two files in flight
    root, inbox = daemon.root, daemon.root / "inbox"
    ready = daemon.events("daemon.ready")[-1]
    assert (ready["backend"], ready["scheduler"], ready["workers"]) == ("local", None, 1)
    assert status(daemon)["backend"] == "local"

    # Batch 1 on the local pool; switch to the cluster while its files are running.
    for index, name in enumerate(SMALL):
        drop(photos[name], inbox, f"l{index}{Path(name).suffix}")
    wait_for(lambda: states(root).get("running", 0) >= 1, what="a file running on the local pool")
    running_at_switch = {
        int(row[0]) for row in ledger(root, "SELECT id FROM files WHERE state = 'running'")
    }
    since = time.time()
    switch_backend(daemon, model_store, backend="dask", scheduler=cluster.address)
    switched = status(daemon)
    assert switched["backend"] == "dask" and switched["pool"]["connected"], switched
    wait_for(lambda: len(outputs(root)) == 4, what="batch 1 to finish across the switch")

    # Batch 2: new files go to the cluster.
    for index, name in enumerate(SMALL):
        drop(photos[name], inbox, f"d{index}{Path(name).suffix}")
    wait_for(lambda: len(outputs(root)) == 8, what="batch 2 on the cluster")

    # And back: the local pool again, for batch 3.
    switch_backend(daemon, model_store, backend="local")
    assert status(daemon)["backend"] == "local"
    until = time.time()
    for index, name in enumerate(SMALL[:2]):
        drop(photos[name], inbox, f"b{index}{Path(name).suffix}")
    wait_for(lambda: len(outputs(root)) == 10, what="batch 3 on the local pool")
    wait_for(lambda: states(root) == {"done": 10}, what="every file done")

    made, ids = outputs(root), file_ids(root)
    expected = {f"{batch}{i}.png" for batch in "ld" for i in range(4)} | {"b0.png", "b1.png"}
    assert set(made) == expected  # nothing lost, nothing extra
    on_cluster = cluster.files_run_since(since)
    assert {ids[f"d{i}.png"] for i in range(4)} <= on_cluster  # after the switch: the cluster
    assert not running_at_switch & on_cluster  # in flight at the switch: finished where it was
    assert not {ids["b0.png"], ids["b1.png"]} & cluster.files_run_since(until)  # local again
    for index in range(4):  # the same photo gives the same bytes on either backend
        assert made[f"l{index}.png"] == made[f"d{index}.png"], SMALL[index]
    assert made["b0.png"] == made["d0.png"] and made["b1.png"] == made["d1.png"]
    done = [e["file"] for e in daemon.events("file.done")]
    assert sorted(done) == sorted(ids.values())  # each file finished exactly once
    assert not daemon.events("file.retry") and not daemon.events("file.failed")
    assert daemon.stop() == 0


def test_reload_into_an_unreachable_scheduler_does_not_block_and_dispatch_resumes(
    cluster: Cluster,
    daemon_factory: Any,
    model_store: ModelStore,
    photos: dict[str, Path],
    reference: dict[str, bytes],
) -> None:
    """Before the fix, this reload held the main loop for 300 s (the model check's wait)."""
    daemon = daemon_factory().start()
    root = daemon.root
    cluster.kill_scheduler()  # the workers lose it too; their supervisor restarts them

    started = time.monotonic()
    switch_backend(daemon, model_store, backend="dask", scheduler=cluster.address)
    assert time.monotonic() - started < 20  # MODEL_CHECK_WAIT (5 s) plus two CLI round trips
    assert daemon.count("dask.model_check_deferred") == 1
    waiting = status(daemon)  # the main loop answers at once
    assert waiting["backend"] == "dask" and waiting["workers"]["total"] == 0
    assert waiting["pool"]["connected"] is False and waiting["pool"]["error"], waiting
    assert "DISCONNECTED" in cli(daemon, "status").stdout

    drop(photos["cat.png"], root / "inbox", "cat.png")  # intake goes on; dispatch waits
    wait_for(lambda: states(root) == {"queued": 1}, what="the file to be taken and queued")
    assert status(daemon)["files"]["running"] == 0

    cluster.start_scheduler()  # same address: the pool connects, the workers rejoin
    wait_for(lambda: "cat.png" in outputs(root), what="dispatch to resume on the cluster")
    assert outputs(root)["cat.png"] == reference["cat.png"]
    wait_for(lambda: states(root) == {"done": 1}, what="the file done")
    connected = status(daemon)
    assert connected["pool"]["connected"] is True and connected["workers"]["total"] >= 1
    wait_for(  # the check deferred at the reload, done by the pool as the workers joined
        lambda: status(daemon)["providers"] == {"u2netp": "CPUExecutionProvider"},
        what="the workers' providers in watchd status",
    )
    assert not daemon.events("file.retry") and not daemon.events("file.failed")
    assert daemon.stop() == 0
