"""What the content cache costs and what it saves (issue 18, section 3; docs/performance.md).

Two parts:

* ``micro``: in this process, on the scikit-image photos the tests use (as JPEG, their
  own sizes) and one 12 MP photo (astronaut scaled to 4000 x 3000), the cache's steps
  for one input, each timed ``--reps`` times (median): the key (SHA-256 of the input and
  of the options), storing the outputs' copy (atomic write with fsync, a real ledger row),
  and a lookup that finds it (reading the copy and checking its SHA-256). The "output"
  is the photo encoded as PNG level 1, about the size of its cutout. Also what a
  hand-edited mask costs the worker in place of inference: decoding a greyscale PNG of
  the photo's size and compositing the cutout (``masks.decode_mask``,
  ``from_mask``, ``flatten``).
* ``daemon``: the real daemon (``python -m watchd run``, ``--workers`` local workers, the
  u2netp model), two watches: ``plain`` (``duplicates = "reprocess"``, the default) and
  ``cached`` (``"reuse"``). ``--distinct`` different JPEGs (scikit-image photos, cycled,
  each a slightly different crop scaled to ``--size``) are dropped as one folder into
  ``cached`` (all new: the model runs and the copies are stored); then a folder of
  ``--photos`` files, each one of those photos under its own name (every photo
  ``photos / distinct`` times), all of them known. ``--with-plain`` first drops the
  distinct photos into ``plain`` too. (With ``--distinct`` equal to ``--photos`` the
  re-drop is the same folder again; the model pass is what makes that slow to prepare
  on a small machine: about 2 s per photo on the loaded 2-core machine of the results.)
  Each phase is timed from the folder's rename into the inbox until the ledger says its
  job ended and was reported (polled every 50 ms; the settle time, 0.5 s, is included).

    .venv/bin/python bench/content_cache.py                  # 1,000 photos, 2 workers
    .venv/bin/python bench/content_cache.py --photos 200 --skip-micro

Results go to ``bench/results/content_cache.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from tests.support import DaemonProcess, wait_for  # noqa: E402
from watchd import masks  # noqa: E402
from watchd.config import OutputConfig  # noqa: E402
from watchd.content_cache import ContentCache, cache_key  # noqa: E402
from watchd.ledger import Ledger, NewFile, NewJob  # noqa: E402
from watchd.models import ModelStore  # noqa: E402
from watchd.options import JobOptions  # noqa: E402


def skimage_photos() -> dict[str, Image.Image]:
    from skimage import data

    photos = {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
        "rocket": data.rocket(),
        "cat": data.cat(),
        "hubble": data.hubble_deep_field(),
    }
    return {name: Image.fromarray(pixels).convert("RGB") for name, pixels in photos.items()}


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def median_ms(action: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def from_mask(image: Image.Image, mask_png: bytes) -> Image.Image:
    """What the worker does with a hand-edited mask instead of inference (no encoding)."""
    output = OutputConfig()
    mask = masks.decode_mask(mask_png, image.size, "m.mask.png")
    return masks.flatten(masks.from_mask(image, mask, output), output)


def micro(reps: int) -> list[dict[str, Any]]:
    photos = skimage_photos()
    photos["astronaut-12MP"] = photos["astronaut"].resize((4000, 3000), Image.Resampling.LANCZOS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="watchd-cache-bench-") as tmp:
        ledger = Ledger.open(Path(tmp) / "ledger.sqlite3")
        cache = ContentCache(ledger, Path(tmp) / "cache", max_bytes=1 << 34)
        output = OutputConfig()
        for name, image in photos.items():
            data, made = jpeg(image), png(image)
            mask_png = png(image.convert("L"))  # a greyscale PNG of the photo's size
            _job, [file_id] = ledger.create_job(
                NewJob(
                    watch="w",
                    name=name,
                    kind="file",
                    options=JobOptions(model="u2netp", after="archive", max_file_bytes=1 << 30),
                    files=[NewFile(name, Path("/i"), Path("/o"), Path("/a"), Path("/f"), 1, 1)],
                )
            )
            key = cache_key(data, "u2netp", output)
            rows.append(
                {
                    "photo": name,
                    "pixels": f"{image.width}x{image.height}",
                    "input_bytes": len(data),
                    "output_bytes": len(made),
                    "key_ms": median_ms(lambda d=data: cache_key(d, "u2netp", output), reps),
                    "store_ms": median_ms(
                        lambda k=key, m=made, f=file_id: cache.store(k, f, (m,), (1, 1), now=1.0),
                        reps,
                    ),
                    "lookup_ms": median_ms(lambda k=key: cache.lookup(k, now=1e9), reps),
                    "hand_mask_ms": median_ms(lambda i=image, m=mask_png: from_mask(i, m), reps),
                }
            )
        ledger.close()
    return rows


CONFIG = """
[daemon]
state_dir = "state"
models_dir = "{models}"
log_format = "json"
rescan_interval = 5

[pool]
workers = {workers}
threads_per_worker = 1

[[watch]]
name = "plain"
inbox = "inbox"
outbox = "outbox"
archive = "archive"
failed = "failed"
settle_seconds = 0.5

[[watch]]
name = "cached"
inbox = "inbox-cached"
outbox = "outbox-cached"
archive = "archive-cached"
failed = "failed-cached"
settle_seconds = 0.5
duplicates = "reuse"
"""


def ended(root: Path, jobs: int) -> bool:
    """``jobs`` jobs recorded, each ended and reported (asked of the ledger: cheap, unlike
    parsing a log of thousands of lines every 50 ms beside the daemon)."""
    with sqlite3.connect(root / "state" / "ledger.sqlite3", timeout=30) as db:
        row = db.execute(
            "SELECT COUNT(*), SUM(state != 'active' AND reported = 1) FROM jobs"
        ).fetchone()
    return bool(row[0] == jobs and row[1] == jobs)


def make_folders(
    root: Path, count: int, distinct: int, size: tuple[int, int]
) -> tuple[Path, Path, int]:
    """(a folder of ``distinct`` different JPEGs, a folder of ``count`` files that are each
    one of them, the bytes of the second): scikit-image photos cycled, each a different
    crop."""
    new, known = root / "distinct", root / "known"
    new.mkdir()
    known.mkdir()
    sources = list(skimage_photos().values())
    variants = []
    for index in range(distinct):
        image = sources[index % len(sources)]
        shift = index // len(sources)
        box = (shift % 40, (shift // 40) % 40, image.width - 40, image.height - 40)
        variants.append(jpeg(image.crop(box).resize(size, Image.Resampling.LANCZOS)))
        (new / f"photo-{index:05d}.jpg").write_bytes(variants[-1])
    total = 0
    for index in range(count):
        data = variants[index % distinct]
        (known / f"photo-{index:05d}.jpg").write_bytes(data)
        total += len(data)
    return new, known, total


def daemon(
    count: int, distinct: int, workers: int, size: tuple[int, int], with_plain: bool
) -> dict[str, Any]:
    store = ModelStore(None)
    store.verify("u2netp")
    with tempfile.TemporaryDirectory(prefix="watchd-cache-bench-") as tmp:
        root = Path(tmp)
        for folder in ("inbox-cached", "outbox-cached", "archive-cached", "failed-cached"):
            (root / folder).mkdir()
        config = CONFIG.format(models=store.path("u2netp").parent, workers=workers)
        process = DaemonProcess(root, config).start()
        new, known, input_bytes = make_folders(root, count, distinct, size)
        phases = []
        try:
            plan = [
                ("reuse, all new", "inbox-cached", new, distinct),
                ("reuse, all known", "inbox-cached", known, count),
            ]
            if with_plain:
                plan.insert(0, ("plain (reprocess)", "inbox", new, distinct))
            for number, (label, inbox, source, files) in enumerate(plan, start=1):
                staged = root / f"staged-{number}"
                shutil.copytree(source, staged)
                started = time.perf_counter()
                os.rename(staged, root / inbox / f"drop-{number}")
                wait_for(lambda n=number: ended(root, n), timeout=7200, what=label)
                seconds = time.perf_counter() - started
                reused = sum(1 for e in process.events("file.done") if "reused_from" in e)
                phases.append(
                    {
                        "phase": label,
                        "seconds": round(seconds, 2),
                        "files": files,
                        "photos_per_s": round(files / seconds, 1),
                        "reused_so_far": reused,
                    }
                )
                print(phases[-1], flush=True)
        finally:
            process.stop()
        cache_bytes = sum(p.stat().st_size for p in (root / "state" / "cache").rglob("*.*"))
        return {
            "photos": count,
            "distinct": distinct,
            "size": f"{size[0]}x{size[1]}",
            "input_bytes": input_bytes,
            "cache_bytes": cache_bytes,
            "workers": workers,
            "phases": phases,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument("--with-plain", action="store_true", help="first a reprocess pass")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "content_cache.json"
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    results: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_start": os.getloadavg(),
        },
    }
    if not args.skip_micro:
        results["micro"] = micro(args.reps)
        for row in results["micro"]:
            print(row, flush=True)
    if not args.skip_daemon:
        results["daemon"] = daemon(
            args.photos, args.distinct, args.workers, (width, height), args.with_plain
        )
    results["machine"]["load_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
