"""The HTTP door against ``rembg s`` (rembg's own server), same photos, same model, one run.

Two phases, results in ``bench/results/http-DATE.json`` and summarised on stdout:

1. **POST /api/remove**: the 2 MP set sent to watchd's ``/api/remove`` and to ``rembg s``
   (``bench/.venv-rembg``, created by bench/compare.py's helper) with 1 and 4 concurrent
   clients; photos/s and latency p50/p95 per server and concurrency. Each server gets one
   warm-up request first (a server runs for days: its first request is not its speed).
2. **RSS while uploading**: 100 photos of about 2 MB each (200 MB) in one
   ``POST /queue/submit``, the job waited for and ``results.zip`` fetched back, while the
   daemon's own RSS (not its workers') is sampled; the growth over the idle daemon is
   reported.

Run: ``.venv/bin/python bench/http_compare.py [--photos 16] [--workers N] [--only remove|rss]``
(``--only`` runs one phase; ``rss`` needs no ``rembg s``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import compare  # noqa: E402
import httpx  # noqa: E402

from tests.support import DaemonProcess, wait_for, write_config  # noqa: E402
from watchd.models import ModelStore  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_rembg_server(
    rembg: Path, model_dir: Path, work: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(work / "rembg-s.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            str(rembg),
            "s",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log_level",
            "warning",
            "--no-ui",
        ],
        stdout=log,
        stderr=log,
        env=compare.rembg_env(model_dir),
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/api", timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    wait_for(up, 180, what="rembg s to listen")
    return proc, url


def start_watchd(root: Path, store: ModelStore, workers: int) -> tuple[DaemonProcess, str]:
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(
        root,
        store,
        pool__workers=workers,
        pool__file_timeout=600,
        daemon__rescan_interval=60,
        daemon__stats_interval=10,
    )
    config += '\n[http]\nlisten = "127.0.0.1:0"\nmax_upload_bytes = 1073741824\n'
    daemon = DaemonProcess(root, config).start()
    events = wait_for(lambda: daemon.events("http.listening"), what="http.listening")
    return daemon, events[-1]["urls"][0]


def post_remove(client: httpx.Client, url: str, photo: Path) -> float:
    started = time.perf_counter()
    answer = client.post(
        url + "/api/remove",
        files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
        data={"model": compare.MODEL},
        timeout=600,
    )
    answer.raise_for_status()
    assert answer.content[:4] == b"\x89PNG"
    return time.perf_counter() - started


def remove_phase(url: str, photos: list[Path], clients: int) -> dict[str, Any]:
    with httpx.Client() as warm:
        post_remove(warm, url, photos[0])
    local = threading.local()

    def one(photo: Path) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client()
        latency: float = post_remove(local.client, url, photo)
        return latency

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, photos))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "photos": len(photos),
        "wall_s": round(wall, 2),
        "photos_per_s": round(len(photos) / wall, 3),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(compare.percentile(latencies, 95), 3),
    }


class RssSampler:
    """Samples one process's VmRSS (KiB) every 20 ms in a thread; ``peak`` is the highest.

    :meth:`mark` closes a step: ``steps`` keeps each step's peak and its RSS at the end, so
    a growth can be put on the upload, the processing or the zip.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._step_peak = 0
        self.steps: dict[str, dict[str, float | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = compare.status_kib(self.pid, "VmRSS") or 0
            self.peak = max(self.peak, rss)
            self._step_peak = max(self._step_peak, rss)
            time.sleep(0.02)

    def mark(self, step: str) -> None:
        now = compare.status_kib(self.pid, "VmRSS") or 0
        peak, self._step_peak = max(self._step_peak, now), 0
        self.steps[step] = {"peak_mib": compare.mib(peak), "end_mib": compare.mib(now)}

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def big_photos(folder: Path, count: int) -> list[Path]:
    """``count`` JPEGs of about 2 MB: the 2 MP set at quality 100 with film grain."""
    import numpy as np
    from PIL import Image

    base = compare.build_set(folder / "base", "2mp", min(count, 6), seed=14)
    rng = np.random.default_rng(14)
    paths = []
    for index in range(count):
        pixels = np.asarray(Image.open(base[index % len(base)]).convert("RGB"), dtype=np.int16)
        grain = rng.integers(-12, 13, size=pixels.shape, dtype=np.int16)
        photo = Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8))
        path = folder / f"upload-{index:03d}.jpg"
        photo.save(path, "JPEG", quality=100)
        paths.append(path)
    return paths


def rss_phase(daemon: DaemonProcess, url: str, photos: list[Path]) -> dict[str, Any]:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    idle = compare.status_kib(pid, "VmRSS") or 0
    uploaded = sum(p.stat().st_size for p in photos)

    def body() -> Any:
        boundary = "benchBoundary14"
        for photo in photos:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                f'filename="{photo.name}"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            with open(photo, "rb") as handle:
                while chunk := handle.read(256 * 1024):
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    headers = {"content-type": "multipart/form-data; boundary=benchBoundary14"}
    with RssSampler(pid) as sampler, httpx.Client(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        answer = client.post("/queue/submit", content=body(), headers=headers)
        answer.raise_for_status()
        upload_s = time.perf_counter() - started
        job_id = answer.json()["job_id"]
        after_upload = sampler.peak
        sampler.mark("upload")

        def ended() -> bool:
            return client.get(f"/queue/job/{job_id}").json()["finished_at"] is not None

        wait_for(ended, 3600, what="the uploaded job")
        sampler.mark("processing")
        fetched = 0
        with client.stream("GET", f"/queue/job/{job_id}/results.zip") as stream:
            for chunk in stream.iter_bytes():
                fetched += len(chunk)
        sampler.mark("results_zip")
        job = client.get(f"/queue/job/{job_id}").json()
    return {
        "photos": len(photos),
        "uploaded_mb": round(uploaded / 1e6, 1),
        "upload_s": round(upload_s, 2),
        "results_zip_mb": round(fetched / 1e6, 1),
        "job_status": job["status"],
        "rss_idle_mib": compare.mib(idle),
        "rss_peak_during_upload_mib": compare.mib(after_upload),
        "rss_peak_mib": compare.mib(sampler.peak),
        "rss_growth_mib": compare.mib(sampler.peak - idle),
        "rss_steps": sampler.steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=16, help="2 MP photos per measurement")
    parser.add_argument("--uploads", type=int, default=100, help="photos in the RSS phase")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".http-work")
    parser.add_argument("--only", choices=("remove", "rss"), help="run this phase alone")
    args = parser.parse_args(argv)
    store = ModelStore(None)
    store.verify(compare.MODEL)
    model_dir = store.path(compare.MODEL).parent
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / ".gitignore").write_text("*\n")
    photos = compare.build_set(args.work / "photos", "2mp", args.photos, seed=14)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": compare.host_facts(),
        "workers": args.workers,
        "set": compare.describe_set(photos),
        "remove": {"watchd": [], "rembg_s": []},
        "targets": {},
    }
    proc = None
    if args.only != "rss":
        rembg = compare.ensure_rembg_venv(compare.DEFAULT_REMBG_VENV)
        proc, rembg_url = start_rembg_server(rembg, model_dir, args.work)
    daemon, watchd_url = start_watchd(args.work / "daemon", store, args.workers)
    try:
        if proc is not None:
            for clients in (1, 4):  # alternate the servers: a slow spell hits both alike
                for name, url in (("rembg_s", rembg_url), ("watchd", watchd_url)):
                    compare.log(f"/api/remove on {name} with {clients} client(s) ...")
                    result["remove"][name].append(remove_phase(url, photos, clients))
            proc.terminate()
            proc.wait(30)
            four = {name: runs[-1] for name, runs in result["remove"].items()}
            result["targets"]["photos_per_s_4_clients_ratio"] = round(
                four["watchd"]["photos_per_s"] / four["rembg_s"]["photos_per_s"], 2
            )
            result["targets"]["p95_4_clients_lower"] = (
                four["watchd"]["p95_s"] < four["rembg_s"]["p95_s"]
            )
        if args.only != "remove":
            compare.log(f"POST /queue/submit of {args.uploads} photos of about 2 MB ...")
            uploads = big_photos(args.work / "uploads", args.uploads)
            result["rss"] = rss_phase(daemon, watchd_url, uploads)
            growth = result["rss"]["rss_growth_mib"] or 0
            result["targets"]["rss_growth_under_50_mib"] = growth < 50
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        daemon.stop()
    out = REPO / "bench" / "results" / f"http-{result['date'][:16].replace(':', '')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    shown = ("remove", "rss", "targets")
    print(json.dumps({k: result[k] for k in shown if k in result}, indent=2))
    compare.log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
