"""How much does the operators' view cost on a ledger with a long history?

Builds a ledger with ``--files`` file rows (default 1,000,000) in jobs of ``--job-size``
files (default 1000), through the real schema and its triggers, then times the queries
behind ``watchd status`` / ``jobs`` / ``job`` over ``--reps`` repetitions and writes the
numbers to ``bench/results/ledger_status.json``.

The target: ``status`` answers in well under 100 ms whatever the history, because
nothing it asks scans ``files``. For contrast the same figures are also computed the
slow way (GROUP BY over ``files``), as the ledger did before migration 2.

    .venv/bin/python bench/ledger_status.py               # 1,000,000 rows
    .venv/bin/python bench/ledger_status.py --files 100000 --baseline

``--baseline`` builds the same rows a second time with the triggers dropped, to show
what the counters cost when recording.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchd.ledger import Ledger

WATCHES = ("photos", "scans", "shop")
ROWS_PER_TRANSACTION = 10_000
T0 = 1_700_000_000.0
OPTIONS = json.dumps({"model": "u2netp", "after": "archive", "format": "png"})


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
    samples.sort()
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
    now = T0 + jobs * 60.0

    def status() -> None:
        ledger.counts()
        ledger.totals()
        ledger.oldest_unfinished_created_at()
        ledger.finished_since(now - 300.0)
        ledger.list_jobs(limit=20)

    cases: dict[str, Callable[[], object]] = {
        "counts": ledger.counts,
        "totals": ledger.totals,
        "list_jobs_20": lambda: ledger.list_jobs(limit=20),
        "list_jobs_20_state_watch_deep_page": lambda: ledger.list_jobs(
            state="done", watch="scans", limit=20, before_id=jobs // 3
        ),
        f"job_detail_{job_size}_files": lambda: ledger.job_detail(full_job),
        "oldest_unfinished_created_at": ledger.oldest_unfinished_created_at,
        "finished_since_5min": lambda: ledger.finished_since(now - 300.0),
        "file_counts_compat": ledger.file_counts,
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
    pending = [
        row[0]
        for row in ledger._db.execute(
            "SELECT id FROM files WHERE job_id = ? AND state = 'pending' ORDER BY id LIMIT ?",
            (job_id, cycles),
        )
    ]
    started = time.perf_counter()
    transitions = 0
    for file_id in pending:
        ledger.mark_queued([file_id])
        for record in ledger.claim(1):
            ledger.mark_written(record.id, 1000)
            ledger.mark_done(record.id)
            transitions += 3
        transitions += 1
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--job-size", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20)
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
        path = Path(tmp) / "ledger.sqlite3"
        print(f"building {args.files:,} file rows in jobs of {args.job_size} ...", flush=True)
        load = build(path, args.files, args.job_size, args.seed, triggers=True)
        print(f"  {load['seconds']} s, {load['rows_per_second']:,} rows/s", flush=True)
        result: dict[str, Any] = {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "machine": platform.machine(),
            "reps": args.reps,
            "load": load,
        }
        if args.baseline:
            plain = Path(tmp) / "plain.sqlite3"
            base = build(plain, args.files, args.job_size, args.seed, triggers=False)
            base["trigger_overhead"] = round(load["seconds"] / base["seconds"] - 1.0, 3)
            result["load_without_triggers"] = base
            print(f"  without triggers: {base['seconds']} s", flush=True)
            plain.unlink()
        result.update(measure(path, args.reps, args.job_size))
        result["writes"] = measure_writes(path, args.cycles)

    for name, numbers in result["queries"].items():
        print(f"{name:40} median {numbers['median_ms']:9.3f} ms   p95 {numbers['p95_ms']:9.3f} ms")
    for name, numbers in result["without_counters_for_contrast"].items():
        print(f"{'(slow) ' + name:40} median {numbers['median_ms']:9.3f} ms")
    writes = result["writes"]
    print(f"{'transition (incl. fsync)':40} {writes['ms_per_transition']} ms each")
    print(f"{'prune 10 jobs':40} {writes['prune_ms']} ms ({writes['prune_files']} files)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
