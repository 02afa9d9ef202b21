"""Did the local pool get slower when the Dask backend came in? Same photos, several checkouts.

The Dask support changed code that every file passes through with the *local*
backend too: the pool protocol (``capacity`` asked of the pool on each dispatch
pass instead of a fixed number), ``LocalPool`` (it tracks its pending futures
to resolve them if pebble breaks) and the dispatcher around it. This benchmark
runs the same work through several source trees of watchd, one after the other
and interleaved round by round, so that the machine's changing load hits every
tree alike:

* ``plumbing``: ``LocalPool`` alone, driven as the dispatcher drives it (at most
  two files per worker in flight, the next one submitted as one finishes), with
  empty inputs. A worker rejects an empty file at once, so this is the pool's own
  cost per file: submit, pebble, the worker round trip, the future, ``outcome``.
* ``pool``: the same loop with real photos (u2netp): the local pool's throughput.
* ``daemon``: the real daemon (``python -m watchd run``) on the same photos, from
  the first drop into the inbox to the last cutout in the outbox (settle time
  subtracted): the whole local path, dispatcher and ledger included.

Each tree runs in its own interpreter with ``PYTHONPATH=<tree>`` (its spawned
workers inherit it), with this venv's packages and the same model file. Make the
trees with ``git worktree add``, never by stashing or checking out in place::

    git log --oneline -- watchd/dask_pool.py          # the commit that added Dask: 799e5e3
    git worktree add --detach /tmp/pre-dask 799e5e3~1
    git worktree add --detach /tmp/with-dask 799e5e3
    .venv/bin/python bench/local_overhead.py \\
        --tree pre-dask=/tmp/pre-dask --tree with-dask=/tmp/with-dask --tree head=.

Results go to ``bench/results/local_overhead.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import DaemonProcess, wait_for  # noqa: E402
from watchd.models import ModelStore  # noqa: E402

#: Runs in the tree's own interpreter: LocalPool as the dispatcher drives it.
POOL_DRIVER = r"""
import json, sys, time
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path

import watchd
from watchd.models import ModelStore
try:
    from watchd.pool.local import LocalPool
    from watchd.pool.protocol import outcome
    from watchd.pool.task import Result, Task
except ImportError:  # a tree from before watchd/pool/
    from watchd.pipeline import LocalPool, Result, Task, outcome

spec = json.loads(sys.argv[1])
assert Path(watchd.__file__).resolve().is_relative_to(Path(spec["tree"]).resolve()), watchd.__file__
store = ModelStore(Path(spec["models_dir"]))
workers = spec["workers"]
pool = LocalPool(workers, 1, store.worker_env(), ("u2netp",), 300.0)
pool.check_model("u2netp", 300.0)


def drive(datas):
    cap = 2 * workers  # the dispatcher's in-flight cap for the local pool, in every version
    pending, index, ok = set(), 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    while index < len(datas) or pending:
        while index < len(datas) and len(pending) < cap:
            pending.add(pool.submit(Task(file_id=index, data=datas[index], model="u2netp")))
            index += 1
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        ok += sum(isinstance(outcome(f), Result) for f in done)
    return time.perf_counter() - wall, time.process_time() - cpu, ok


drive([b""] * (4 * workers))  # warm-up: every worker has answered once
photos = [Path(p).read_bytes() for p in spec["photos"]]
drive(photos[: 2 * workers])  # and has run the model once
wall, cpu, _ = drive([b""] * spec["plumbing"])
pwall, pcpu, ok = drive(photos)
pool.close(cancel=False)
print(json.dumps({
    "plumbing": {"files": spec["plumbing"], "wall_s": wall, "parent_cpu_s": cpu},
    "pool": {"files": len(photos), "ok": ok, "wall_s": pwall, "parent_cpu_s": pcpu},
}))
"""

#: A config every compared version accepts (no key newer than the oldest tree).
CONFIG = """[daemon]
state_dir = "state"
models_dir = "{models_dir}"
log_format = "json"
drain_seconds = 30
rescan_interval = 60

[pool]
workers = {workers}
threads_per_worker = 1

[[watch]]
name = "photos"
inbox = "inbox"
outbox = "outbox"
archive = "archive"
failed = "failed"
model = "u2netp"
settle_seconds = {settle}
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_photos(folder: Path, count: int) -> list[Path]:
    """``count`` small JPEGs (scikit-image's photos, native size, each flipped or not)."""
    from PIL import Image, ImageOps
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = Image.fromarray(sources[index % len(sources)]).convert("RGB")
        if (index // len(sources)) % 2:
            image = ImageOps.mirror(image)
        path = folder / f"p{index:03d}.jpg"
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def env_for(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHD_", "NOTIFY_"))}
    env["PYTHONPATH"] = str(tree)
    return env


def run_pool(tree: Path, photos: list[Path], args: argparse.Namespace, models: Path) -> Any:
    spec = {
        "tree": str(tree),
        "models_dir": str(models),
        "workers": args.workers,
        "plumbing": args.plumbing,
        "photos": [str(p) for p in photos],
    }
    done = subprocess.run(
        [sys.executable, "-c", POOL_DRIVER, json.dumps(spec)],
        env=env_for(tree),
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_daemon(tree: Path, photos: list[Path], args: argparse.Namespace, models: Path) -> Any:
    root = Path(tempfile.mkdtemp(prefix="watchd-overhead-"))
    try:
        text = CONFIG.format(models_dir=models, workers=args.workers, settle=args.settle)
        daemon = DaemonProcess(root, text).start(extra_env={"PYTHONPATH": str(tree)})
        # Warm-up: one photo per worker, so every worker has run the model once.
        for photo in photos[: args.workers]:
            shutil.copyfile(photo, root / "inbox" / f"warm-{photo.name}")
        outbox = root / "outbox"
        wait_for(
            lambda: len(list(outbox.glob("warm-*.png"))) == args.workers, 300, "warm-up outputs"
        )
        started = time.perf_counter()
        for photo in photos:
            temp = root / "inbox" / f".{photo.name}.part"
            shutil.copyfile(photo, temp)
            os.rename(temp, root / "inbox" / photo.name)
        expected = {f"{p.stem}.png" for p in photos}
        wait_for(lambda: expected <= {p.name for p in outbox.glob("p*.png")}, 600, "every output")
        elapsed = time.perf_counter() - started
        assert daemon.stop() == 0
        return {"files": len(photos), "wall_s": elapsed, "settle_s": args.settle}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def rates(key: str) -> list[float]:
        if key == "daemon":
            return [r[key]["files"] / (r[key]["wall_s"] - r[key]["settle_s"]) for r in runs]
        return [r[key]["files"] / r[key]["wall_s"] for r in runs]

    plumbing_cpu_ms = [1000 * r["plumbing"]["parent_cpu_s"] / r["plumbing"]["files"] for r in runs]
    return {
        "plumbing_files_per_s": statistics.median(rates("plumbing")),
        "plumbing_parent_cpu_ms_per_file": statistics.median(plumbing_cpu_ms),
        "pool_photos_per_s": statistics.median(rates("pool")),
        "daemon_photos_per_s": statistics.median(rates("daemon")),
        "each_run": {k: [round(x, 3) for x in rates(k)] for k in ("plumbing", "pool", "daemon")},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tree", action="append", required=True, help="NAME=PATH of a watchd source tree"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--photos", type=int, default=16, help="photos per run (default 16)")
    parser.add_argument("--plumbing", type=int, default=400, help="empty files per plumbing run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--settle", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/local_overhead.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trees = {}
    for item in args.tree:
        name, _, path = item.partition("=")
        trees[name] = Path(path).resolve()
    models = ModelStore(None).path("u2netp").parent
    work = Path(tempfile.mkdtemp(prefix="watchd-overhead-photos-"))
    photos = make_photos(work, args.photos)
    load = [os.getloadavg()[0]]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        for round_ in range(1, args.rounds + 1):
            order = list(trees) if round_ % 2 else list(reversed(trees))  # alternate who goes first
            for name in order:
                log(f"round {round_}: {name}")
                run = run_pool(trees[name], photos, args, models)
                run["daemon"] = run_daemon(trees[name], photos, args, models)
                runs[name].append(run)
                load.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_1m": load,
        "settings": {k: v for k, v in vars(args).items() if k not in ("tree", "out")},
        "trees": {
            name: {
                "path": str(path),
                "commit": subprocess.run(
                    ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.strip(),
            }
            for name, path in trees.items()
        },
        "summary": {name: summarise(r) for name, r in runs.items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    return 0


def report(result: dict[str, Any]) -> str:
    lines = [
        f"{'tree':<12} {'commit':<9} {'plumbing files/s':>17} {'parent ms/file':>15} "
        f"{'pool photos/s':>14} {'daemon photos/s':>16}"
    ]
    for name, summary in result["summary"].items():
        lines.append(
            f"{name:<12} {result['trees'][name]['commit']:<9} "
            f"{summary['plumbing_files_per_s']:>17.1f} "
            f"{summary['plumbing_parent_cpu_ms_per_file']:>15.2f} "
            f"{summary['pool_photos_per_s']:>14.2f} {summary['daemon_photos_per_s']:>16.2f}"
        )
    lines.append(f"load average (1 min) during the runs: {result['load_average_1m']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
