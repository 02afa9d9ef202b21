"""What the page costs the daemon: throughput with 0 and with 5 open pages, and idle CPU.

The issue's bar: the page costs nothing when nobody has it open, and with 5 pages open
during a batch the daemon's throughput drops by less than 3 %. Phases, one daemon:

1. **Idle**: the daemon's own CPU seconds (utime + stime of the main process, not its
   workers) over ``--idle`` seconds with no page open, then with 5 pages open and
   visible (headless Chromium, Debian's ``chromium``, driven by Playwright).
2. **Batches**: the same ``--photos`` small photos (the "small" set of bench/compare.py,
   at most 0.4 MP) dropped into the inbox as one folder, ``--rounds`` times with 0 pages
   and as often with 5 pages, alternating (0, 5, 0, 5…) so a slow spell of the machine
   hits both alike. Throughput is the job's own: files over the time from its first
   file's start to its end (``elapsed_seconds`` of ``GET /queue/job/ID``), so the settle
   time of the drop is not counted.

The 5 pages are: 3 on the overview, 2 on the jobs list (the views that poll for as
long as they are open); each polls every 2 s while visible (docs/page.md).

The browser runs on this machine too, where a person's browser runs on their own:
its five renderers would take CPU from the workers that has nothing to do with what the
page costs the daemon (on 2 cores, about 7 % in the first quiet run). So once the pages
are open, every Chromium process is reniced to ``--browser-nice`` (default 19: it gets
the CPU the workers leave, and its polls still reach the daemon); ``--browser-nice 0``
measures the browser's own share as well.

Run: ``.venv/bin/python bench/page_load.py [--photos 1000] [--rounds 2] [--workers N]``
(``make bench-page``); results in ``bench/results/page-DATE.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import compare  # noqa: E402
import httpx  # noqa: E402
from http_compare import start_watchd  # noqa: E402

from tests.browser_support import CHROMIUM, launch  # noqa: E402
from tests.support import wait_for  # noqa: E402
from watchd.models import ModelStore  # noqa: E402

VIEWS = ("#/", "#/jobs", "#/", "#/jobs", "#/")


def renice_browser(nice: int) -> int:
    """Set the niceness of every running Chromium process (the pages' browser: this bench
    runs nothing else of Chromium's); returns how many there were."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = Path(os.readlink(entry / "exe")).name
        except OSError:
            continue  # gone, or not ours to read
        if exe in ("chromium", "chrome", "headless_shell"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(entry.name), nice)
                count += 1
    return count


@contextmanager
def open_pages(url: str, count: int, nice: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` visible pages of the page in one headless Chromium, for the block's time,
    the browser at niceness ``nice``. Yields a dict that, after the block, says how many
    API requests the pages made."""
    seen: dict[str, Any] = {"pages": count, "requests": 0, "visible": True}
    if count == 0:
        yield seen
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = launch(driver)
        try:
            pages = []
            for view in VIEWS[:count]:
                page = browser.new_page()
                page.goto(f"{url}/{view}")
                page.wait_for_selector("main h2")
                page.evaluate("performance.setResourceTimingBufferSize(1000000)")
                pages.append(page)
            seen["browser_processes"] = renice_browser(nice)
            yield seen
            for page in pages:
                seen["visible"] &= page.evaluate("document.visibilityState") == "visible"
                seen["requests"] += page.evaluate(
                    "performance.getEntriesByType('resource')"
                    ".filter(e => e.initiatorType === 'fetch').length"
                )
        finally:
            browser.close()


def poll(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """``predicate``'s first truthy value, asked once a second: the job's own timings say
    when it ended, and asking more often (a 1,000-file job's answer lists every file)
    would load the daemon in every batch, with pages or without."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(1.0)
    return value


def run_batch(  # noqa: PLR0917
    daemon_root: Path,
    client: httpx.Client,
    photos: list[Path],
    name: str,
    pages: int,
    url: str,
    pid: int,
    nice: int,
) -> dict[str, Any]:
    folder = daemon_root / f"{name}.tmp"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    cpu_before = compare.cpu_seconds(pid) or 0.0
    with open_pages(url, pages, nice) as seen:
        folder.rename(daemon_root / "inbox" / name)  # one rename: the whole drop at once

        def recorded() -> int | None:
            jobs = client.get("/queue/jobs", params={"limit": 5}).json()["jobs"]
            return next((j["job_id"] for j in jobs if j["name"] == name), None)

        job_id = wait_for(recorded, 120.0, what=f"job {name}")

        def ended() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/queue/job/{job_id}").json()
            return job if job["finished_at"] else None

        job = poll(ended, compare.SET_TIMEOUT, what=f"job {name} to end")
        daemon_cpu = (compare.cpu_seconds(pid) or 0.0) - cpu_before
    elapsed = float(job["elapsed_seconds"])
    done = job["progress"]["processed"]
    return {
        "pages": pages,
        "job_id": job_id,
        "files": done,
        "failed": job["progress"]["failed"],
        "elapsed_s": round(elapsed, 2),
        "photos_per_s": round(done / elapsed, 3),
        "daemon_main_cpu_s": round(daemon_cpu, 2),  # the main process, not its workers
        "page_requests": seen["requests"],
        "pages_visible": seen["visible"],
        "browser_processes": seen.get("browser_processes", 0),
    }


def idle_cpu(pid: int, seconds: float) -> float:
    before = compare.cpu_seconds(pid) or 0.0
    time.sleep(seconds)
    return round((compare.cpu_seconds(pid) or 0.0) - before, 3)


def save(out: Path, result: dict[str, Any]) -> None:
    """After every phase: a run stopped half-way keeps what it measured."""
    out.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1000, help="small photos per batch")
    parser.add_argument("--rounds", type=int, default=2, help="batches per page count")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds per idle measure")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".page-work")
    parser.add_argument(
        "--browser-nice", type=int, default=19, help="the browser's niceness (0: as the daemon)"
    )
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set WATCHD_CHROMIUM)")
    store = ModelStore(None)
    store.verify(compare.MODEL)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    (args.work / ".gitignore").write_text("*\n")
    photos = compare.build_set(args.work / "photos", "small", args.photos, seed=15)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": compare.host_facts(),
        "workers": args.workers,
        "browser_nice": args.browser_nice,
        "set": compare.describe_set(photos),
        "batches": [],
    }
    out = REPO / "bench" / "results" / f"page-{result['date'][:16].replace(':', '')}.json"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # the daemon is stopped too
    daemon, url = start_watchd(args.work / "daemon", store, args.workers)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            compare.log(f"idle CPU over {args.idle:g} s, no page open ...")
            time.sleep(5)  # start-up settles
            result["idle_cpu_s"] = {"no_page": idle_cpu(pid, args.idle)}
            compare.log(f"idle CPU over {args.idle:g} s, 5 pages open ...")
            with open_pages(url, 5, args.browser_nice) as seen:
                result["idle_cpu_s"]["five_pages"] = idle_cpu(pid, args.idle)
            result["idle_cpu_s"]["five_pages_requests"] = seen["requests"]
            save(out, result)
            for round_ in range(args.rounds):
                for pages in (0, 5):
                    name = f"batch-{round_}-{pages}p"
                    compare.log(f"{name}: {args.photos} photos with {pages} page(s) open ...")
                    batch = run_batch(
                        daemon.root, client, photos, name, pages, url, pid, args.browser_nice
                    )
                    batch["load_average_1m"] = round(os.getloadavg()[0], 2)
                    compare.log(f"  {batch['photos_per_s']} photos/s")
                    result["batches"].append(batch)
                    save(out, result)
    finally:
        daemon.stop()
    rate = {
        pages: statistics.mean(b["photos_per_s"] for b in result["batches"] if b["pages"] == pages)
        for pages in (0, 5)
    }
    result["photos_per_s"] = {"no_page": round(rate[0], 3), "five_pages": round(rate[5], 3)}
    result["drop_percent"] = round(100 * (rate[0] - rate[5]) / rate[0], 2)
    save(out, result)
    print(json.dumps({k: result[k] for k in ("idle_cpu_s", "photos_per_s", "drop_percent")}))
    compare.log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
