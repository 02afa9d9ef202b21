"""How much does the operators' view cost on a ledger with a long history?

Builds a ledger with ``--files`` file rows (default 1,000,000) in jobs of ``--job-size``
files (default 1000), through the real schema and its triggers, then, on that one ledger:

1. times the queries behind ``watchd status`` / ``jobs`` / ``job`` (:func:`measure`), and
   for contrast the same figures computed the slow way (GROUP BY over ``files``, as the
   ledger did before migration 2);
2. times building the stats snapshot and writing the stats file and the Prometheus metrics
   file, in-process, as ``Daemon._write_stats`` does (:func:`measure_stats_files`);
3. starts the real daemon on that ledger and times ``watchd status`` end to end over the
   control socket, plus the ``watchd status`` command line ``--cli-runs`` times
   (:func:`measure_daemon`);
4. times the daemon's writes through every file transition, and a prune of the 10 oldest
   jobs (:func:`measure_writes`; last, because the prune deletes 1% of the history).

The issue's target: with 1,000,000 file rows, ``watchd status`` answers in under 100 ms and
writing the stats file takes under 100 ms. This is a benchmark, not a timed test: the
numbers depend on the machine and are written to ``bench/results/ledger_status.json``.

    .venv/bin/python bench/ledger_status.py                  # 1,000,000 rows, about 75 s
    .venv/bin/python bench/ledger_status.py --files 100000   # about 15-30 s
    .venv/bin/python bench/ledger_status.py --files 100000 --baseline

``--baseline`` builds the same rows a second time with the triggers dropped, to show
what the counters cost when recording.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from watchd import __version__  # noqa: E402
from watchd.config import load_config  # noqa: E402
from watchd.control_client import ControlClient  # noqa: E402
from watchd.errors import DaemonUnreachable  # noqa: E402
from watchd.ledger import Ledger  # noqa: E402
from watchd.models import ModelStore  # noqa: E402
from watchd.stats import (  # noqa: E402
    Activity,
    DaemonInfo,
    build_snapshot,
    render_metrics,
    write_metrics_file,
    write_stats_file,
)

WATCHES = ("photos", "scans", "shop")
ROWS_PER_TRANSACTION = 10_000
T0 = 1_700_000_000.0
OPTIONS = json.dumps({"model": "u2netp", "after": "archive", "format": "png"})
#: How long the daemon may take to start (open the ledger, load the model in a worker).
DAEMON_START_TIMEOUT = 120.0
#: How long it may take to stop after SIGTERM (nothing is in flight: it is paused).
DAEMON_STOP_TIMEOUT = 60.0


def build(path: Path, files: int, job_size: int, seed: int, *, triggers: bool) -> dict[str, Any]:
    """Create the ledger at ``path`` with ``files`` rows; return how long loading took."""
    Ledger.open(path).close()  # the real schema, every migration
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # as the daemon runs it
    db.execute("PRAGMA foreign_keys=ON")
    if not triggers:
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f"DROP TRIGGER {name}")
    rng = random.Random(seed)
    jobs = math.ceil(files / job_size)
    active_from = jobs - max(1, jobs // 100)  # the newest 1% of jobs are still running
    started = time.perf_counter()
    in_transaction = 0
    left = files
    db.execute("BEGIN IMMEDIATE")
    for job_id in range(1, jobs + 1):
        count = min(job_size, left)
        left -= count
        watch = WATCHES[job_id % len(WATCHES)]
        created = T0 + job_id * 60.0
        active = job_id > active_from
        rows = []
        failed = 0
        failure_rate = 0.01 if rng.random() < 0.1 else 0.0  # one job in ten has bad files
        for k in range(count):
            if active:
                state = rng.choice(("pending", "queued", "queued", "running", "written", "done"))
            else:
                state = "failed" if rng.random() < failure_rate else "done"
            failed += state == "failed"
            finished = created + 1.0 + k * 0.05 if state in ("done", "failed") else None
            size = rng.randint(200_000, 8_000_000)
            out = size // 3 if state in ("done", "written") else None
            name = f"{watch}/drop-{job_id:07d}/IMG_{k:05d}"
            rows.append(
                (
                    job_id,
                    f"IMG_{k:05d}.jpg".encode(),
                    f"/srv/watchd/spool/{job_id * job_size + k}".encode(),
                    f"/srv/share/outbox/{name}.png".encode(),
                    f"/srv/share/archive/{name}.jpg".encode(),
                    f"/srv/share/failed/{name}.jpg".encode(),
                    state,
                    1 if state != "pending" else 0,
                    size,
                    1_700_000_000_000_000_000 + k,
                    out,
                    created,
                    created + 0.5 if state not in ("pending", "queued") else None,
                    finished,
                )
            )
        job_state = "active" if active else ("failed" if failed else "done")
        db.execute(
            "INSERT INTO jobs (id, watch, name, kind, state, options, total, created_at, "
            "finished_at) VALUES (?, ?, ?, 'folder', ?, ?, ?, ?, ?)",
            (
                job_id,
                watch,
                f"drop-{job_id:07d}",
                job_state,
                OPTIONS,
                count,
                created,
                None if active else created + 1.0 + count * 0.05,
            ),
        )
        db.executemany(
            "INSERT INTO files (job_id, rel_path, source_path, output_path, archive_path, "
            "failed_path, state, attempts, size, mtime_ns, output_bytes, created_at, "
            "started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        in_transaction += count
        if in_transaction >= ROWS_PER_TRANSACTION:
            db.execute("COMMIT")
            db.execute("BEGIN IMMEDIATE")
            in_transaction = 0
    db.execute("COMMIT")
    seconds = time.perf_counter() - started
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return {
        "files": files,
        "jobs": jobs,
        "triggers": triggers,
        "seconds": round(seconds, 2),
        "rows_per_second": round(files / seconds),
        "db_bytes": path.stat().st_size,
    }


def timed(function: Callable[[], object], reps: int) -> dict[str, float]:
    function()  # warm the page cache and the statement cache: operators ask repeatedly
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000.0)
    return summarise(samples)


def summarise(samples_ms: list[float]) -> dict[str, float]:
    """Median, p95 (nearest rank) and max of samples in milliseconds."""
    samples = sorted(samples_ms)
    p95 = samples[min(len(samples) - 1, math.ceil(0.95 * len(samples)) - 1)]
    return {
        "median_ms": round(statistics.median(samples), 3),
        "p95_ms": round(p95, 3),
        "max_ms": round(samples[-1], 3),
    }


def measure(path: Path, reps: int, job_size: int) -> dict[str, Any]:
    ledger = Ledger.open(path)
    db = ledger._db  # the slow way, for contrast only
    jobs = int(db.execute("SELECT MAX(id) FROM jobs").fetchone()[0])
    full_job = next(
        job_id
        for job_id in range(jobs // 2, jobs)
        if db.execute("SELECT total FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == job_size
    )

    def status() -> None:
        ledger.counts()
        ledger.totals()
        ledger.list_jobs(limit=20)

    cases: dict[str, Callable[[], object]] = {
        "counts": ledger.counts,
        "totals": ledger.totals,
        "list_jobs_20": lambda: ledger.list_jobs(limit=20),
        "list_jobs_20_state_watch_deep_page": lambda: ledger.list_jobs(
            state="done", watch="scans", limit=20, before_id=jobs // 3
        ),
        f"job_detail_{job_size}_files": lambda: ledger.job_detail(full_job),
        "unfinished_compat": ledger.unfinished,
        "status_all_of_the_above": status,
    }
    results = {name: timed(function, reps) for name, function in cases.items()}
    slow = {
        "group_by_files_state": lambda: db.execute(
            "SELECT j.watch, f.state, COUNT(*) FROM files f JOIN jobs j ON j.id = f.job_id "
            "GROUP BY j.watch, f.state"
        ).fetchall(),
        "sum_totals_over_files": lambda: db.execute(
            "SELECT COUNT(*), SUM(size), SUM(output_bytes) FROM files WHERE state = 'done'"
        ).fetchall(),
    }
    contrast = {name: timed(function, min(reps, 3)) for name, function in slow.items()}
    ledger.close()
    return {"queries": results, "without_counters_for_contrast": contrast}


def measure_writes(path: Path, cycles: int) -> dict[str, Any]:
    """The cost of the triggers on the daemon's hot path: files through every transition."""
    ledger = Ledger.open(path)
    job_id = int(ledger._db.execute("SELECT MAX(id) FROM jobs").fetchone()[0])
    unstarted = ledger._db.execute(  # queued too: measure_daemon has queued the pending ones
        "SELECT id, state FROM files WHERE job_id = ? AND state IN ('pending', 'queued') "
        "ORDER BY id LIMIT ?",
        (job_id, cycles),
    ).fetchall()
    started = time.perf_counter()
    transitions = 0
    for file_id, state in unstarted:
        if state == "pending":
            ledger.mark_queued([file_id])
            transitions += 1
        for record in ledger.claim(1):
            ledger.mark_written(record.id, 1000)
            ledger.mark_done(record.id)
            transitions += 3
    seconds = time.perf_counter() - started
    before = ledger.counts()
    started = time.perf_counter()
    pruned = ledger.prune(T0 + 61.0 * 60.0, limit=10)  # the 10 oldest jobs
    prune_seconds = time.perf_counter() - started
    after = ledger.counts()
    ledger.close()
    return {
        "transitions": transitions,
        "ms_per_transition": round(seconds * 1000.0 / max(transitions, 1), 3),
        "note": "one BEGIN IMMEDIATE ... COMMIT each, synchronous=FULL (an fsync each)",
        "prune_jobs": pruned,
        "prune_files": _file_total(before) - _file_total(after),
        "prune_ms": round(prune_seconds * 1000.0, 1),
    }


def _file_total(counts: dict[str, dict[str, dict[str, int]]]) -> int:
    return sum(sum(by_state.values()) for by_state in counts["files"].values())


# --- the stats file and the metrics file, in-process ----------------------------------------------


def fill_activity(activity: Activity, now_mono: float, rate: float, seed: int) -> int:
    """A busy daemon's last 15 minutes: ``rate`` files a second over every watch, 2% failed."""
    rng = random.Random(seed)
    records = int(rate * 900)
    start = now_mono - 900.0
    for k in range(records):
        activity.record(
            WATCHES[rng.randrange(len(WATCHES))],
            ok=rng.random() >= 0.02,
            latency=rng.lognormvariate(math.log(1.5), 0.5),
            now=start + (k + rng.random()) / rate,
        )
    return records


def daemon_info() -> DaemonInfo:
    """What a daemon serving every watch of the built history would report about itself."""
    return DaemonInfo(
        version=__version__,
        pid=os.getpid(),
        started_at=time.time() - 30 * 86400.0,
        paused=False,
        workers_total=os.cpu_count() or 1,
        workers_busy=os.cpu_count() or 1,
        backend="local",
        models=("u2netp",),
        providers={"u2netp": "CPUExecutionProvider"},
        watches={
            w: {
                "inbox": f"/srv/share/{w}/inbox",
                "outbox": f"/srv/share/{w}/outbox",
                "model": "u2netp",
            }
            for w in WATCHES
        },
    )


@contextlib.contextmanager
def fsync_disabled() -> Iterator[None]:
    """For contrast only: the same writes with ``os.fsync`` a no-op (what the fsyncs cost)."""
    with mock.patch.object(os, "fsync", lambda _fd: None):
        yield


def measure_stats_files(
    path: Path, folder: Path, reps: int, rate: float, seed: int
) -> dict[str, Any]:
    """``Daemon._write_stats`` piece by piece: ledger figures, snapshot, both files."""
    ledger = Ledger.open(path)
    activity = Activity(seed)
    records = fill_activity(activity, time.monotonic(), rate, seed)
    info = daemon_info()
    stats_path, metrics_path = folder / "stats.json", folder / "watchd.prom"
    counts, totals = ledger.counts(), ledger.totals()

    def snapshot_from(counts: Any, totals: Any) -> dict[str, Any]:
        return build_snapshot(
            info, counts, totals, activity, None, now_wall=time.time(), now_mono=time.monotonic()
        )

    snap = snapshot_from(counts, totals)

    def write_stats() -> None:  # exactly Daemon._write_stats: snapshot() then both files
        fresh = snapshot_from(ledger.counts(), ledger.totals())
        write_stats_file(stats_path, fresh)
        write_metrics_file(metrics_path, fresh, activity)

    cases: dict[str, Callable[[], object]] = {
        "ledger_counts_and_totals": lambda: (ledger.counts(), ledger.totals()),
        "build_snapshot": lambda: snapshot_from(counts, totals),
        "write_stats_file": lambda: write_stats_file(stats_path, snap),
        "render_metrics": lambda: render_metrics(snap, activity),
        "write_metrics_file": lambda: write_metrics_file(metrics_path, snap, activity),
        "together_as_the_daemon_does": write_stats,
    }
    results = {name: timed(function, reps) for name, function in cases.items()}
    with fsync_disabled():
        contrast = {
            "write_stats_file": timed(lambda: write_stats_file(stats_path, snap), reps),
            "write_metrics_file": timed(
                lambda: write_metrics_file(metrics_path, snap, activity), reps
            ),
            "together_as_the_daemon_does": timed(write_stats, reps),
        }
    ledger.close()
    return {
        "activity_records": records,
        "activity_rate_files_per_second": rate,
        "stats_file_bytes": stats_path.stat().st_size,
        "metrics_file_bytes": metrics_path.stat().st_size,
        "note": "each file write is temp + write + fsync + rename + fsync of the folder",
        "timings": results,
        "without_fsync_for_contrast": contrast,
    }


# --- watchd status through the real daemon --------------------------------------------------------


def prepare_for_daemon(path: Path) -> dict[str, int]:
    """Make the built history safe to hand to a real daemon in a temporary folder.

    The built rows point at made-up paths (/srv/share/...). Start-up recovery would try to
    finish pending, running and written files by moving files to and from those paths, and
    the dispatcher would try to process queued ones. So unfinished files become ``queued``
    (the counters follow through the triggers) and dispatching is paused, as ``watchd pause``
    leaves it: the daemon starts, serves and stops without touching any file of the history.
    """
    ledger = Ledger.open(path)
    with ledger._transaction() as db:
        requeued = db.execute(
            "UPDATE files SET state = 'queued' "
            "WHERE state IN ('pending', 'running', 'written', 'failing')"
        ).rowcount
    ledger.set_setting("paused", "1")
    queued = sum(by_state.get("queued", 0) for by_state in ledger.counts()["files"].values())
    ledger.close()
    return {"made_queued": requeued, "queued": queued}


def write_config(folder: Path, state_dir: Path) -> Path:
    """A config for one watch in ``folder``, the built ledger in ``state_dir``."""
    models_dir = ModelStore(None).path("u2netp").parent

    def q(path: Path) -> str:
        return json.dumps(str(path))  # a TOML basic string

    for name in ("inbox", "outbox", "archive", "failed"):
        (folder / name).mkdir(exist_ok=True)
    config = folder / "watchd.toml"
    config.write_text(
        "[daemon]\n"
        f"state_dir = {q(state_dir)}\n"
        f"models_dir = {q(models_dir)}\n"
        'log_format = "json"\n'
        f"metrics_file = {q(folder / 'watchd.prom')}\n"
        "keep_days = 0  # the built history is years old: retention would delete all of it\n"
        "\n[pool]\nworkers = 1\n"
        "\n[[watch]]\n"
        'name = "photos"\n'
        f"inbox = {q(folder / 'inbox')}\n"
        f"outbox = {q(folder / 'outbox')}\n"
        f"archive = {q(folder / 'archive')}\n"
        f"failed = {q(folder / 'failed')}\n"
    )
    return config


def wait_until_answering(
    process: subprocess.Popen[bytes], client: ControlClient, log: Path
) -> None:
    """Poll ``ping`` until the daemon answers; fail with its log if it exits or takes too long."""
    deadline = time.monotonic() + DAEMON_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {process.returncode}:\n{_tail(log)}")
        try:
            client.call("ping")
            return
        except DaemonUnreachable:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no answer to ping within {DAEMON_START_TIMEOUT:g} s:\n{_tail(log)}"
            )
        time.sleep(0.1)


def stop_daemon(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """SIGTERM and wait, as systemd would; kill only if it does not stop in time."""
    if process.poll() is not None:
        return {"exit_code": process.returncode, "stop_seconds": 0.0}
    started = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=DAEMON_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return {"exit_code": code, "stop_seconds": round(time.perf_counter() - started, 2)}


def time_command(argv: list[str], runs: int) -> tuple[dict[str, float], str]:
    """Wall time of a whole command (Python start-up included); its output of the last run."""
    samples = []
    output = ""
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
        samples.append((time.perf_counter() - started) * 1000.0)
        if done.returncode != 0:
            raise RuntimeError(f"{argv} exited with {done.returncode}: {done.stderr}")
        output = done.stdout
    return summarise(samples), output


def measure_daemon(path: Path, folder: Path, reps: int, cli_runs: int) -> dict[str, Any]:
    """``watchd status`` end to end: a real daemon on the built ledger, asked over its socket.

    Each ``ControlClient.call("status")`` is what the CLI does: connect, send the request,
    the control thread hands it to the main thread, which reads the ledger's counters and
    builds the snapshot, and the answer comes back as one JSON line.
    """
    prepared = prepare_for_daemon(path)
    config_path = write_config(folder, path.parent)
    config = load_config(config_path)  # validates it, and says where the socket will be
    log = folder / "daemon.log"
    argv = [sys.executable, "-m", "watchd"]
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            [*argv, "run", "--config", str(config_path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = ControlClient(config.daemon.socket, timeout=10.0)
        wait_until_answering(process, client, log)
        startup = time.perf_counter() - started
        status = client.call("status")
        socket_status = timed(lambda: client.call("status"), reps)
        socket_ping = timed(lambda: client.call("ping"), reps)
        cli_status, cli_output = time_command(
            [*argv, "status", "--config", str(config_path)], cli_runs
        )
        cli_version, _ = time_command([*argv, "--version"], cli_runs)
        bare_python, _ = time_command([sys.executable, "-c", "pass"], cli_runs)
        rss_kib = _rss_kib(process.pid)
    finally:
        stopped = stop_daemon(process)
    errors = [line for line in log.read_text(errors="replace").splitlines() if '"error"' in line]
    return {
        "prepared": prepared,
        "startup_seconds_to_first_ping": round(startup, 2),
        "status_files_total": sum(status["files"].values()),
        "status_response_bytes": len(json.dumps(status)),
        "socket_status": socket_status,
        "socket_ping_for_contrast": socket_ping,
        "cli_runs": cli_runs,
        "cli_status_wall": cli_status,
        "cli_version_wall_start_up_and_cli_imports": cli_version,
        "bare_python_start_up_wall": bare_python,
        "cli_status_output": cli_output.splitlines(),
        "daemon_rss_mib": round(rss_kib / 1024.0, 1) if rss_kib else None,
        "log_lines_with_level_error": len(errors),
        **stopped,
    }


def _rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def _tail(log: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --- the machine, the run, the table --------------------------------------------------------------


def host_facts(folder: Path) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    filesystem = None
    with contextlib.suppress(OSError, ValueError):
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
        here = str(folder.resolve())
        best = max(
            (m for m in mounts if here == m[1] or here.startswith(m[1].rstrip("/") + "/")),
            key=lambda m: len(m[1]),
        )
        filesystem = f"{best[2]} on {best[0]} (mounted at {best[1]})"
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "filesystem_of_ledger_and_stats_files": filesystem,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(result: dict[str, Any]) -> None:
    def row(name: str, numbers: dict[str, float]) -> None:
        print(
            f"{name:44} median {numbers['median_ms']:9.3f} ms   p95 {numbers['p95_ms']:9.3f} ms"
            f"   max {numbers['max_ms']:9.3f} ms"
        )

    host, load = result["host"], result["load"]
    print(
        f"\n{load['files']:,} file rows, {load['db_bytes'] / 2**20:.0f} MiB; "
        f"{host['cpu_count']} CPUs ({host['cpu_model']}), Python {host['python']}, "
        f"SQLite {host['sqlite']}, {host['filesystem_of_ledger_and_stats_files']}; "
        f"load average {host['load_average_at_start'][0]} at start, "
        f"{host['load_average_at_end'][0]} at end"
    )
    print("-- ledger queries")
    for name, numbers in result["queries"].items():
        row(name, numbers)
    for name, numbers in result["without_counters_for_contrast"].items():
        row("(slow) " + name, numbers)
    stats = result["stats_files"]
    print(
        f"-- stats files (stats.json {stats['stats_file_bytes']:,} B, "
        f"metrics {stats['metrics_file_bytes']:,} B)"
    )
    for name, numbers in stats["timings"].items():
        row(name, numbers)
    for name, numbers in stats["without_fsync_for_contrast"].items():
        row("(no fsync) " + name, numbers)
    daemon = result["daemon"]
    startup = daemon["startup_seconds_to_first_ping"]
    print(f"-- watchd status through the daemon (started in {startup} s)")
    row("status over the socket (ControlClient)", daemon["socket_status"])
    row("ping over the socket", daemon["socket_ping_for_contrast"])
    row("CLI `watchd status`, wall, incl. start-up", daemon["cli_status_wall"])
    row("CLI `watchd --version`, wall", daemon["cli_version_wall_start_up_and_cli_imports"])
    row("`python -c pass`, wall", daemon["bare_python_start_up_wall"])
    writes = result["writes"]
    print("-- the daemon's writes")
    print(f"{'transition (incl. fsync)':44} {writes['ms_per_transition']} ms each")
    print(f"{'prune 10 jobs':44} {writes['prune_ms']} ms ({writes['prune_files']} files)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--job-size", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20, help="repetitions of each ledger query")
    parser.add_argument(
        "--status-reps", type=int, default=50, help="repetitions of status and the stats writes"
    )
    parser.add_argument("--cli-runs", type=int, default=5, help="runs of the `watchd status` CLI")
    parser.add_argument(
        "--activity-rate",
        type=float,
        default=10.0,
        help="files per second recorded in the stats Activity over its 15 minutes",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cycles", type=int, default=200, help="files taken through the writes")
    parser.add_argument("--baseline", action="store_true", help="also load without triggers")
    parser.add_argument("--dir", type=Path, help="where to build (default: a temporary folder)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "ledger_status.json",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        path = folder / "state" / "ledger.sqlite3"  # where the daemon will look for it
        path.parent.mkdir()
        print(f"building {args.files:,} file rows in jobs of {args.job_size} ...", flush=True)
        load = build(path, args.files, args.job_size, args.seed, triggers=True)
        print(f"  {load['seconds']} s, {load['rows_per_second']:,} rows/s", flush=True)
        result: dict[str, Any] = {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "machine": platform.machine(),
            "host": host_facts(folder),
            "reps": args.reps,
            "status_reps": args.status_reps,
            "load": load,
        }
        if args.baseline:
            plain = folder / "plain.sqlite3"
            base = build(plain, args.files, args.job_size, args.seed, triggers=False)
            base["trigger_overhead"] = round(load["seconds"] / base["seconds"] - 1.0, 3)
            result["load_without_triggers"] = base
            print(f"  without triggers: {base['seconds']} s", flush=True)
            plain.unlink()
        print("timing the ledger queries ...", flush=True)
        result.update(measure(path, args.reps, args.job_size))
        print("timing the stats file and the metrics file ...", flush=True)
        result["stats_files"] = measure_stats_files(
            path, folder, args.status_reps, args.activity_rate, args.seed
        )
        print("starting the daemon on the ledger and timing `watchd status` ...", flush=True)
        result["daemon"] = measure_daemon(path, folder, args.status_reps, args.cli_runs)
        print("timing the writes ...", flush=True)  # last: it prunes the 10 oldest jobs
        result["writes"] = measure_writes(path, args.cycles)

    result["host"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
