"""A 100,000-file job's end: status and intake while its manifest is written.

A job's manifest is written a page per pass of the daemon's loop (``MANIFEST_PAGE`` entries,
docs/performance.md, "Big jobs off the main loop"). This builds a ledger holding one ended,
unreported job of ``--files`` done files (what a ``kill -9`` right after its last file
leaves), starts the real daemon on it (recovery hands the job to completion, which writes
the manifest), and meanwhile:

1. asks ``status`` over the control socket every ``--interval`` seconds, timing each answer,
   until the manifest is in place;
2. drops one photo into the inbox and times drop to ``job.accepted`` (intake during it).

The issue's target: ``status`` stays under 100 ms. This is a benchmark, not a timed test;
the numbers go to ``bench/results/big_manifest.json``.

    .venv/bin/python bench/big_manifest.py                 # 100,000 files
    .venv/bin/python bench/big_manifest.py --files 20000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ledger_status import (  # noqa: E402
    host_facts,
    stop_daemon,
    summarise,
    wait_until_answering,
    write_config,
)

from watchd.completion import MANIFEST_PAGE  # noqa: E402
from watchd.config import load_config  # noqa: E402
from watchd.control_client import ControlClient  # noqa: E402
from watchd.ledger import Ledger, NewFile, NewJob  # noqa: E402
from watchd.options import JobOptions  # noqa: E402

RESULTS = REPO / "bench" / "results" / "big_manifest.json"


def build_ended_job(state_dir: Path, folder: Path, files: int) -> Path:
    """One folder job of ``files`` done files, ended and not yet reported; returns the manifest."""
    outbox = folder / "outbox"
    manifest = outbox / "shoot.manifest.json"
    state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger.open(state_dir / "ledger.sqlite3")
    try:
        job_id, ids = ledger.create_job(
            NewJob(
                watch="photos",
                name="shoot",
                kind="folder",
                options=JobOptions(model="u2netp", after="archive", max_file_bytes=1 << 30),
                files=[
                    NewFile(
                        rel=f"day-{i // 1000:03d}/IMG_{i:06d}.jpg",
                        source=folder / "inbox" / "shoot" / f"day-{i // 1000:03d}/IMG_{i:06d}.jpg",
                        output=outbox / "shoot" / f"day-{i // 1000:03d}/IMG_{i:06d}.png",
                        archive=folder / "archive" / "shoot" / f"IMG_{i:06d}.jpg",
                        failed=folder / "failed" / "shoot" / f"IMG_{i:06d}.jpg",
                        size=250_000 + i,
                        mtime_ns=1,
                    )
                    for i in range(files)
                ],
                manifest=manifest,
            )
        )
        ledger.mark_queued(ids)
        ledger.claim(len(ids))
    finally:
        ledger.close()
    # Ending 100,000 files one transition at a time is 200,000 fsyncs: one transaction.
    now = time.time()
    with contextlib.closing(sqlite3.connect(state_dir / "ledger.sqlite3")) as db, db:
        db.execute(
            "UPDATE files SET state = 'done', output_bytes = 900000, started_at = ?, "
            "finished_at = ? WHERE job_id = ?",
            (now - 60, now - 1, job_id),
        )
        db.execute("UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ?", (now, job_id))
    return manifest


def photo() -> bytes:
    from io import BytesIO

    from PIL import Image
    from skimage import data

    buffer = BytesIO()
    Image.fromarray(data.coffee()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def accepted_at(log: Path, name: str) -> float | None:
    """Monotonic-free: the wall time (log timestamp) of the job.accepted naming ``name``."""
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if '"job.accepted"' in line and name in line:
                event = json.loads(line)
                stamp = event.get("timestamp")
                if isinstance(stamp, str):
                    from datetime import datetime

                    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


def run(files: int, interval: float, work: Path) -> dict[str, Any]:
    folder = work / "daemon"
    folder.mkdir(parents=True)
    state_dir = folder / "state"
    built = time.perf_counter()
    manifest = build_ended_job(state_dir, folder, files)
    build_seconds = time.perf_counter() - built
    config_path = write_config(folder, state_dir)
    config = load_config(config_path)
    log = folder / "daemon.log"
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "watchd", "run", "--config", str(config_path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    dropped = photo()  # made before the daemon starts: skimage's import takes seconds
    samples: list[float] = []
    dropped_wall: float | None = None
    try:
        client = ControlClient(config.daemon.socket, timeout=30.0)
        wait_until_answering(process, client, log)
        ready = time.perf_counter() - started
        written_at: float | None = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            asked = time.perf_counter()
            client.call("status")
            samples.append((time.perf_counter() - asked) * 1000)
            if dropped_wall is None:  # while the first pages are written
                temp = folder / "inbox" / ".drop.tmp"
                temp.write_bytes(dropped)
                dropped_wall = time.time()
                temp.rename(folder / "inbox" / "dropped.jpg")
            if manifest.exists():
                written_at = time.perf_counter() - started
                break
            time.sleep(interval)
        while accepted_at(log, "dropped.jpg") is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the drop may settle after the manifest is done
        accepted_wall = accepted_at(log, "dropped.jpg")
        # For contrast: the same calls once the daemon has nothing to do (what the machine's
        # own load costs a status call).
        baseline: list[float] = []
        for _ in range(max(len(samples), 50)):
            asked = time.perf_counter()
            client.call("status")
            baseline.append((time.perf_counter() - asked) * 1000)
            time.sleep(interval)
        shutil.copy(log, work.parent / "big_manifest-daemon.log")
    finally:
        stopped = stop_daemon(process)
    return {
        "files": files,
        "manifest_page": MANIFEST_PAGE,
        "ledger_build_seconds": round(build_seconds, 1),
        "start_to_answering_seconds": round(ready, 2),
        "start_to_manifest_seconds": round(written_at, 2) if written_at else None,
        "manifest_mib": round(manifest.stat().st_size / 2**20, 1) if manifest.exists() else None,
        "status_interval_seconds": interval,
        "status_during_manifest_ms": summarise(samples),
        "status_calls_during_manifest": len(samples),
        "status_idle_afterwards_ms": summarise(baseline),
        "drop_to_job_accepted_seconds": (
            round(accepted_wall - dropped_wall, 3) if accepted_wall and dropped_wall else None
        ),
        **stopped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between status")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="watchd-big-manifest-"))
    try:
        result = {"host": host_facts(work), **run(args.files, args.interval, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
