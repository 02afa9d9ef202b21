"""The invariants under failure: the real daemon, real files, the real model, real faults.

Each scenario breaks something for real and then checks the invariants of docs/design.md
from the outside, by name: every input is exactly one output or one failed
original with its reason, no output is partial, nothing is left in temp files or
the spool, and the ledger agrees with the folders.

* kill -9 soak: the daemon is SIGKILLed at random moments (seeded) and restarted;
* worker crash: a pool worker is SIGKILLed while it holds a file;
* poison input: every worker that takes one file is SIGKILLed, until max_attempts;
* hung worker: a file that takes longer than file_timeout;
* transient errors: a read-only outbox, then a full one (tmpfs mounts; needs root).

The soak's size comes from the environment, read only here:
``WATCHD_SOAK_FILES`` (default 100), ``WATCHD_SOAK_KILLS`` (20), ``WATCHD_SOAK_SEED``.
``scripts/reliability-report`` runs this file with a longer soak and turns the
records every scenario writes (``WATCHD_FAULTS_RECORD``, JSON lines) into
docs/reliability.md. The records are written before the assertions, so a
failing run is reported too; lost and duplicated are counted, not assumed.

Faults are injected from outside only: nothing in watchd knows it is being
tested. A worker is "busy with a file" when its resident memory is far above an
idle, initialised worker's: decoding a multi-megapixel photo allocates hundreds
of MiB, loading the model does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support import DEADLINE, DaemonProcess, drop, is_manifest, is_output, wait_for
from watchd.control_client import ControlClient

pytestmark = pytest.mark.e2e


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


SOAK_FILES = _env_int("WATCHD_SOAK_FILES", 100)
SOAK_KILLS = _env_int("WATCHD_SOAK_KILLS", 20)
SOAK_SEED = _env_int("WATCHD_SOAK_SEED", 20261128)
#: Generous: about 5 s per kill cycle and 0.5 s per file on a 2-core machine, doubled.
SOAK_TIMEOUT = 300 + 12 * SOAK_KILLS + 2 * SOAK_FILES
RECORD = os.environ.get("WATCHD_FAULTS_RECORD")

#: Each test's scenario as docs/reliability.md names it (scripts/reliability-report reads this).
SCENARIOS = {
    "test_kill9_soak_every_input_is_exactly_one_result": "kill -9 soak",
    "test_worker_killed_mid_file_is_retried_and_other_files_are_unaffected": "worker crash",
    "test_worker_dying_before_it_takes_a_file_costs_that_file_no_attempt": (
        "worker killed while starting"
    ),
    "test_poison_input_that_kills_every_worker_fails_with_reason_and_the_daemon_carries_on": (
        "poison input"
    ),
    "test_hung_file_is_stopped_retried_then_failed_and_the_pool_keeps_its_size": "hung worker",
    "test_read_only_outbox_backs_off_then_every_output_appears_once": "outbox read-only",
    "test_full_outbox_backs_off_then_every_output_appears_once": "outbox full",
}

#: A worker holding a decoded multi-megapixel photo is this much above an idle one (MiB).
#: Idle workers have already grown their arena (warm-up), so the photo itself must make the
#: difference: a 12 MP photo adds about 160 MiB while it is processed, a 3 MP one only ~45.
BUSY_RSS_MB = 100.0
BIG = (4000, 3000)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: skimage photos that ship inside the package (no download).
SOURCES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
)
FORMATS = ((".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP"))


# --- processes, seen through /proc ----------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list: pebble starts workers from a thread)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = _read(f"/proc/{pid}/task/{task}/children")
            found.update(int(child) for child in (text or "").split())
    return sorted(found)


def worker_pids(daemon_pid: int) -> list[int]:
    """The pool's worker processes (spawned: ``spawn_main`` on their command line)."""
    return [c for c in children(daemon_pid) if "spawn_main" in (_read(f"/proc/{c}/cmdline") or "")]


@dataclass(frozen=True)
class Sample:
    state: str
    cpu_ticks: int
    rss_mb: float


def sample(pid: int) -> Sample | None:
    stat, statm = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/statm")
    if not stat or not statm:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return Sample(
        state=fields[0],
        cpu_ticks=int(fields[11]) + int(fields[12]),
        rss_mb=int(statm.split()[1]) * PAGE_SIZE / 2**20,
    )


def processes_in(root: Path) -> list[int]:
    """Live processes working in ``root``: the daemon and everything it started (cwd inherited)."""
    target = os.path.realpath(root)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") != target:
                continue
        except OSError:
            continue  # gone, or a zombie (no cwd): not alive
        info = sample(int(entry))
        if info is not None and info.state not in ("Z", "X"):
            found.append(int(entry))
    return found


def wait_all_gone(root: Path, timeout: float = 30.0) -> None:
    """After a kill -9 of the daemon its workers exit on their own; wait until they have."""
    wait_for(lambda: not processes_in(root), timeout, what=f"every process in {root} to exit")


def wait_idle_workers(daemon_pid: int, count: int) -> dict[int, Sample]:
    """``count`` workers up, initialised and idle: their CPU time stands still for 0.5 s."""

    def idle() -> dict[int, Sample] | None:
        pids = worker_pids(daemon_pid)
        if len(pids) != count:
            return None
        before = {pid: sample(pid) for pid in pids}
        time.sleep(0.5)
        after = {pid: sample(pid) for pid in pids}
        for pid in pids:
            first, second = before[pid], after[pid]
            if first is None or second is None or first.cpu_ticks != second.cpu_ticks:
                return None
        return {pid: s for pid, s in after.items() if s is not None}

    result: dict[int, Sample] = wait_for(idle, what=f"{count} idle workers")
    return result


def kill_worker_when_busy(
    daemon_pid: int, idle_rss_mb: float, *, exclude: Iterable[int] = (), timeout: float = DEADLINE
) -> int:
    """SIGKILL the first worker that holds a decoded image; returns its pid."""
    skip = set(exclude)

    def busy() -> int | None:
        for pid in worker_pids(daemon_pid):
            info = sample(pid)
            if pid not in skip and info is not None and info.rss_mb > idle_rss_mb + BUSY_RSS_MB:
                return pid
        return None

    pid: int = wait_for(busy, timeout, what="a worker busy with a file")
    os.kill(pid, signal.SIGKILL)
    return pid


# --- inputs ---------------------------------------------------------------------------------------


def _source_pixels() -> dict[str, np.ndarray]:
    from skimage import data

    pixels = {}
    for name in SOURCES:
        array = np.asarray(getattr(data, name)())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        pixels[name] = array[..., :3]
    return pixels


def make_photos(
    folder: Path, count: int, rng: random.Random, *, sides: tuple[int, int] = (200, 300)
) -> dict[str, Path]:
    """``count`` distinct photos: random crops of real photos, flipped or not, long side in
    ``sides``, saved as JPEG, PNG or WebP. Returns ``{file name: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = _source_pixels()
    made = {}
    for index in range(count):
        source = pixels[rng.choice(SOURCES)]
        height, width = source.shape[:2]
        crop_h, crop_w = (
            rng.randint(height * 11 // 20, height),
            rng.randint(width * 11 // 20, width),
        )
        top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
        image = Image.fromarray(source[top : top + crop_h, left : left + crop_w])
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.randint(*sides) / max(crop_w, crop_h)
        image = image.resize((max(32, round(crop_w * scale)), max(32, round(crop_h * scale))))
        suffix, fmt = rng.choice(FORMATS)
        path = folder / f"p{index:04d}{suffix}"
        image.save(path, fmt, quality=rng.randint(80, 95))
        made[path.name] = path
    return made


def big_photo(path: Path, size: tuple[int, int], source: str = "astronaut") -> Path:
    """A real photo scaled up to ``size``: seconds of work for a worker."""
    from skimage import data

    pixels = np.asarray(getattr(data, source)())
    Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC).save(path, "JPEG", quality=90)
    return path


def drop_folder(sources: dict[str, Path], root: Path, name: str) -> None:
    """Build a folder outside the inbox and move it in whole (one folder job)."""
    staging = root / "staging" / name
    staging.mkdir(parents=True)
    for file_name, src in sources.items():
        shutil.copyfile(src, staging / file_name)
    os.rename(staging, root / "inbox" / name)


# --- the daemon's view ----------------------------------------------------------------------------


def client(daemon: DaemonProcess) -> ControlClient:
    return ControlClient(daemon.root / "state" / "control.sock", timeout=30.0)


def ledger_states(root: Path) -> dict[str, int]:
    """File states straight from the ledger, read-only (used while the daemon is down)."""
    path = root / "state" / "ledger.sqlite3"
    if not path.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
    except sqlite3.Error:
        return {}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def output_names(root: Path) -> list[str]:
    base = root / "outbox"
    return [p.relative_to(base).as_posix() for p in files_under(base) if not is_manifest(p)]


# --- counting by name -----------------------------------------------------------------------------

_NUMBERED = re.compile(r" \(\d+\)$")


def name_key(rel: str) -> str:
    """``b1 (2)/p0003 (2).png`` -> ``b1/p0003``: an input, its output and its failed original
    share a key, whatever clash numbers or suffix they got."""
    path = PurePosixPath(rel)
    parts = [*path.parent.parts, path.stem if path.suffix else path.name]
    return "/".join(_NUMBERED.sub("", part) for part in parts if part != ".")


@dataclass
class Tally:
    """Inputs against what is in the folders, counted by name."""

    scenario: str
    files_in: int
    outputs: int
    failed: int  # failed originals with a non-empty <name>.error.txt beside them
    lost: int  # inputs with neither
    duplicated: int  # results beyond one per input (and results for no input)
    lost_names: list[str] = field(default_factory=list)
    duplicated_names: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def tally(root: Path, inputs: Iterable[str], **details: Any) -> Tally:
    """Count by name what became of ``inputs``; the scenario is the running test's."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    scenario = SCENARIOS.get(test, test)
    keys = [name_key(rel) for rel in inputs]
    assert len(set(keys)) == len(keys), "test inputs must have distinct names"
    outbox, failed_dir = root / "outbox", root / "failed"
    outputs: Counter[str] = Counter(
        name_key(p.relative_to(outbox).as_posix()) for p in files_under(outbox) if is_output(p)
    )
    failed: Counter[str] = Counter()
    for path in files_under(failed_dir):
        if path.name.endswith(".error.txt") or path.name.startswith("."):
            continue
        note = path.with_name(path.name + ".error.txt")
        if note.is_file() and note.read_text(errors="replace").strip():
            failed[name_key(path.relative_to(failed_dir).as_posix())] += 1
    wanted = set(keys)
    lost = sorted(k for k in keys if outputs[k] + failed[k] == 0)
    extra = {k: outputs[k] + failed[k] - (k in wanted) for k in set(outputs) | set(failed)}
    duplicated = sorted(k for k, n in extra.items() if n > 0)
    return Tally(
        scenario=scenario,
        files_in=len(keys),
        outputs=sum(outputs.values()),
        failed=sum(failed.values()),
        lost=len(lost),
        duplicated=sum(extra[k] for k in duplicated),
        lost_names=lost,
        duplicated_names=duplicated,
        details=details,
    )


def record(result: Tally, started: float) -> Tally:
    """Append the scenario's figures to ``WATCHD_FAULTS_RECORD`` (scripts/reliability-report)."""
    if RECORD:
        entry = asdict(result)
        entry["seconds"] = round(time.monotonic() - started, 1)
        entry["test"] = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(RECORD, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
    return result


# --- the end state --------------------------------------------------------------------------------


def verify_end_state(root: Path, inputs: dict[str, Path], result: Tally) -> None:
    """Every invariant that can be seen once the daemon has stopped."""
    assert result.lost == 0, f"lost: {result.lost_names}"
    assert result.duplicated == 0, f"duplicated: {result.duplicated_names}"
    assert result.outputs + result.failed == len(inputs)

    leftovers = [p for p in root.rglob("*.tmp")]
    assert leftovers == [], f"temp files left: {leftovers}"
    assert list((root / "state" / "spool").iterdir()) == [], "the spool is not empty"
    in_inbox = files_under(root / "inbox")
    assert in_inbox == [], f"files left in the inbox: {in_inbox}"

    with contextlib.closing(sqlite3.connect(root / "state" / "ledger.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute(
            "SELECT id, state, output_path, archive_path, failed_path, error FROM files"
        ).fetchall()
        job_states = dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        job_totals = db.execute(
            "SELECT j.id FROM jobs j WHERE j.total != (SELECT COUNT(*) FROM files f "
            "WHERE f.job_id = j.id)"
        ).fetchall()
    assert len(rows) == len(inputs), f"{len(rows)} ledger rows for {len(inputs)} inputs"
    assert set(job_states) <= {"done", "failed"}, f"jobs not finished: {job_states}"
    assert job_totals == []
    by_key = {name_key(rel): src for rel, src in inputs.items()}
    for file_id, state, output_b, archive_b, failed_b, error in rows:
        output, archive, failed = (Path(os.fsdecode(b)) for b in (output_b, archive_b, failed_b))
        assert state in ("done", "failed"), f"file {file_id} is {state}"
        if state == "done":
            assert output.is_file() and archive.is_file(), f"file {file_id} done but missing"
            assert not failed.exists()
            rel = output.relative_to(root / "outbox").as_posix()
            check_cutout(output, by_key[name_key(rel)])
        else:
            note = failed.with_name(failed.name + ".error.txt")
            assert failed.is_file() and note.is_file(), f"file {file_id} failed but not in failed/"
            assert error and error in note.read_text()
            assert not output.exists()


def check_cutout(output: Path, source: Path) -> None:
    """A complete RGBA PNG of the input's size whose pixels are the input's (premultiplied)."""
    with Image.open(output) as cutout:
        assert cutout.format == "PNG"
        cutout.load()  # a truncated file raises here
        assert cutout.mode == "RGBA"
        pixels = np.asarray(cutout, dtype=np.float64)
    with Image.open(source) as original:
        expected = np.asarray(original.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == expected.shape[:2], f"{output} is not the size of {source}"
    alpha = pixels[..., 3:4]
    premultiplied = expected * alpha / 255.0
    assert np.abs(pixels[..., :3] - premultiplied).max() <= 1.0, f"{output} is not {source}'s"
    assert alpha.max() > 0, f"{output} is fully transparent"


def events_of(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return daemon.events(name)


# --- kill -9 soak ---------------------------------------------------------------------------------


@dataclass
class KillCycle:
    phase: str  # "start-up" (before daemon.ready) or "running"
    after_s: float  # seconds from the process start to the kill
    states: dict[str, int]  # the ledger's file states right after the kill
    wave: int  # inputs dropped during this cycle


def soak(daemon: DaemonProcess, photos: dict[str, Path], kills: int, rng: random.Random) -> dict:
    """Drop ``photos`` in waves (loose bursts and whole folders) while killing the daemon
    with SIGKILL ``kills`` times at random moments; start it once more at the end."""
    root = daemon.root
    names = sorted(photos)
    wave_count = max(1, min(len(names), math.ceil(kills * 2 / 3)))
    size = math.ceil(len(names) / wave_count)
    waves = [names[i : i + size] for i in range(0, len(names), size)]
    inputs: dict[str, Path] = {}

    def drop_wave(index: int) -> int:
        if index >= len(waves):
            return 0
        wave = waves[index]
        if index % 3 == 2:  # every third wave is a folder job
            drop_folder({n: photos[n] for n in wave}, root, f"batch{index:02d}")
            inputs.update({f"batch{index:02d}/{n}": photos[n] for n in wave})
        else:
            for name in wave:
                drop(photos[name], root / "inbox", name)
                inputs[name] = photos[name]
        return len(wave)

    cycles: list[KillCycle] = []
    for cycle in range(kills):
        assert daemon.proc is None or daemon.proc.poll() is not None
        startup = rng.random() < 0.25
        ready_before = daemon.count("daemon.ready")

        def ready(before: int = ready_before) -> bool:
            return daemon.count("daemon.ready") > before or daemon._exited()

        if startup:  # killed during recovery, the model load or the first scan
            dropped = drop_wave(cycle)
            delay = rng.uniform(0.1, 3.0)
            daemon.start(wait_ready=False)
            started = time.monotonic()
            time.sleep(delay)
        else:  # killed while it works: processing, writing, intake of the wave
            delay, drop_at = rng.uniform(0.0, 3.0), rng.random()
            daemon.start(wait_ready=False)
            started = time.monotonic()
            wait_for(ready, what="daemon.ready")
            time.sleep(delay * drop_at)
            dropped = drop_wave(cycle)
            time.sleep(delay * (1 - drop_at))
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, (
            f"the daemon died on its own:\n{daemon.log_text()[-3000:]}"
        )
        after = time.monotonic() - started
        daemon.kill()
        wait_all_gone(root)
        phase = "running" if daemon.count("daemon.ready") > ready_before else "start-up"
        cycles.append(KillCycle(phase, round(after, 2), ledger_states(root), dropped))
    for index in range(kills, len(waves)):  # fewer kills than waves: drop the rest now
        drop_wave(index)

    daemon.start()
    status = client(daemon)

    def finished() -> bool:
        if files_under(root / "inbox"):
            return False
        files = status.call("status")["files"]
        return files["done"] + files["failed"] == len(inputs) and all(
            n == 0 for state, n in files.items() if state not in ("done", "failed")
        )

    wait_for(finished, 60 + 2 * len(inputs), what="every input finished")
    assert daemon.stop() == 0
    return {"inputs": inputs, "cycles": cycles}


@pytest.mark.timeout(SOAK_TIMEOUT)
def test_kill9_soak_every_input_is_exactly_one_result(
    daemon_factory: Callable[..., DaemonProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.monotonic()
    rng = random.Random(SOAK_SEED)
    photos = make_photos(tmp_path_factory.mktemp("soak-photos"), SOAK_FILES, rng)
    daemon = daemon_factory(pool__workers=2, watch__settle_seconds=0.3, daemon__rescan_interval=2)
    outcome = soak(daemon, photos, SOAK_KILLS, rng)
    inputs, cycles = outcome["inputs"], outcome["cycles"]
    recoveries = daemon.events("recovery.done")
    result = record(
        tally(
            daemon.root,
            inputs,
            kills=len(cycles),
            seed=SOAK_SEED,
            kills_at_start_up=sum(c.phase == "start-up" for c in cycles),
            kills_with_files_running=sum(c.states.get("running", 0) > 0 for c in cycles),
            kills_with_files_queued=sum(c.states.get("queued", 0) > 0 for c in cycles),
            requeued_by_recovery=sum(r.get("requeued", 0) for r in recoveries),
            finished_by_recovery=sum(
                r.get("written", 0) + r.get("failing", 0) + r.get("pending", 0) for r in recoveries
            ),
            temp_files_removed=daemon.count("recovery.temp_removed"),
            folders_left_in_inbox=sorted(
                p.relative_to(daemon.root / "inbox").as_posix()
                for p in (daemon.root / "inbox").rglob("*")
                if p.is_dir()
            ),
            cycles=[asdict(c) for c in cycles],
        ),
        started,
    )
    verify_end_state(daemon.root, inputs, result)
    assert result.failed == 0, "good photos must not fail because the daemon was killed"
    assert daemon.count("file.retry") == 0, "a kill of the daemon must not cost a file an attempt"
    outbox = files_under(daemon.root / "outbox")
    digests = {hashlib.sha256(p.read_bytes()).digest() for p in outbox if is_output(p)}
    assert len(digests) == len(inputs), "every output is a different image"
    assert sum(c.phase == "running" for c in cycles) > 0


# --- worker crash ---------------------------------------------------------------------------------


def test_worker_killed_mid_file_is_retried_and_other_files_are_unaffected(
    daemon_factory: Callable[..., DaemonProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("crash-photos")
    sources = ("astronaut", "coffee", "chelsea", "rocket", "retina", "immunohistochemistry")
    inputs = {f"m{i}.jpg": big_photo(folder / f"m{i}.jpg", BIG, s) for i, s in enumerate(sources)}
    daemon = daemon_factory(pool__workers=2, pool__max_attempts=3).start()
    assert daemon.proc is not None
    idle = wait_idle_workers(daemon.proc.pid, 2)
    for name, src in inputs.items():
        drop(src, daemon.root / "inbox", name)

    killed = kill_worker_when_busy(daemon.proc.pid, max(s.rss_mb for s in idle.values()))
    control = client(daemon)
    wait_for(lambda: control.call("status")["jobs"]["done"] == 1, what="the job done")
    replaced = wait_for(
        lambda: (pids := worker_pids(daemon.proc.pid)) and len(pids) == 2 and killed not in pids,
        what="the pool back to two workers",
    )
    job = control.call("job", id=1)
    status = control.call("status")
    retries = daemon.events("file.retry")
    assert daemon.stop() == 0
    attempts = {f["rel"]: f["attempts"] for f in job["files"]}
    result = record(
        tally(
            daemon.root,
            inputs,
            killed_worker=killed,
            attempts=attempts,
            retry_reasons=[e["error"] for e in retries],
        ),
        started,
    )
    verify_end_state(daemon.root, inputs, result)
    assert result.failed == 0
    assert [f["state"] for f in job["files"]] == ["done"] * len(inputs)
    assert len(retries) == 1 and "worker process died" in retries[0]["error"]
    retried = next(f for f in job["files"] if f["id"] == retries[0]["file"])
    assert retried["attempts"] == 2
    assert sorted(attempts.values()) == [1] * (len(inputs) - 1) + [2], attempts
    assert status["workers"]["total"] == 2 and replaced


def test_worker_dying_before_it_takes_a_file_costs_that_file_no_attempt(
    daemon_factory: Callable[..., DaemonProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A worker killed while it starts up (the OOM killer's favourite moment) holds no file;
    pebble then declares the whole pool broken and fails every file waiting in it. Those
    files did nothing wrong: they must be retried without losing an attempt."""
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("startup-photos")
    inputs = {
        "a.jpg": big_photo(folder / "a.jpg", BIG, "astronaut"),
        "b.jpg": big_photo(folder / "b.jpg", BIG, "coffee"),
    }
    daemon = daemon_factory(pool__workers=1, pool__max_attempts=2, daemon__drain_seconds=5).start()
    assert daemon.proc is not None
    idle = wait_idle_workers(daemon.proc.pid, 1)
    (first,) = idle
    for name, src in inputs.items():
        drop(src, daemon.root / "inbox", name)
    # a.jpg runs, b.jpg waits in the pool; the worker dies with a.jpg (its attempt 1) ...
    kill_worker_when_busy(daemon.proc.pid, idle[first].rss_mb)
    # ... and its replacement dies while loading the model, before taking anything.
    second = wait_for(
        lambda: [p for p in worker_pids(daemon.proc.pid) if p != first], what="a new worker"
    )[0]
    os.kill(second, signal.SIGKILL)
    control = client(daemon)
    try:  # both files take about 5 s; a file stranded in a dead pool never finishes
        wait_for(lambda: control.call("status")["jobs"]["active"] == 0, 40, what="job finished")
        stuck: list[str] = []
    except AssertionError:
        stuck = [f["rel"] for f in control.call("job", id=1)["files"] if f["state"] == "running"]
    files = {f["rel"]: f for f in control.call("job", id=1)["files"]}
    retries = daemon.events("file.retry")
    assert daemon.stop() == 0
    result = record(
        tally(
            daemon.root,
            inputs,
            attempts={rel: f["attempts"] for rel, f in files.items()},
            retry_reasons=[e["error"] for e in retries],
            stuck_running=stuck,
        ),
        started,
    )
    assert stuck == [], f"files stuck in 'running' after the pool broke: {stuck}"
    verify_end_state(daemon.root, inputs, result)
    assert result.failed == 0, {rel: f["error"] for rel, f in files.items()}
    assert files["a.jpg"]["attempts"] == 2  # its own crash, then success
    assert files["b.jpg"]["attempts"] == 1  # never ran in a worker that died


# --- poison input ---------------------------------------------------------------------------------


def test_poison_input_that_kills_every_worker_fails_with_reason_and_the_daemon_carries_on(
    daemon_factory: Callable[..., DaemonProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("poison-photos")
    poison = big_photo(folder / "poison.jpg", (4000, 3000))
    good = make_photos(folder / "good", 1, random.Random(7))
    daemon = daemon_factory(
        pool__workers=1, pool__max_attempts=2, watch__png_compress_level=9
    ).start()
    assert daemon.proc is not None
    idle = wait_idle_workers(daemon.proc.pid, 1)
    idle_rss = max(s.rss_mb for s in idle.values())
    drop(poison, daemon.root / "inbox", "poison.jpg")

    killed: list[int] = []
    for _attempt in range(2):  # every worker that takes the file dies, max_attempts times
        killed.append(kill_worker_when_busy(daemon.proc.pid, idle_rss, exclude=killed))
    note = daemon.root / "failed" / "poison.jpg.error.txt"
    wait_for(note.exists, what="the poison input in failed/ with its reason")
    assert daemon.proc.poll() is None, "the daemon must survive a poison input"
    ((name, src),) = good.items()
    drop(src, daemon.root / "inbox", name)
    wait_for(lambda: output_names(daemon.root) == [name.rsplit(".", 1)[0] + ".png"], what="good")
    control = client(daemon)
    wait_for(lambda: control.call("status")["jobs"]["active"] == 0, what="both jobs finished")
    poisoned = control.call("job", id=1)["files"][0]
    assert daemon.stop() == 0
    inputs = {"poison.jpg": poison, name: src}
    result = record(
        tally(
            daemon.root,
            inputs,
            workers_killed=len(killed),
            attempts=poisoned["attempts"],
            reason=poisoned["error"],
        ),
        started,
    )
    verify_end_state(daemon.root, inputs, result)
    assert (result.outputs, result.failed) == (1, 1)
    assert poisoned["state"] == "failed" and poisoned["attempts"] == 2
    reason = note.read_text()
    assert "worker process died" in reason and "gave up after 2 attempts" in reason, reason
    assert (daemon.root / "failed" / "poison.jpg").read_bytes() == poison.read_bytes()


# --- hung worker ----------------------------------------------------------------------------------


def test_hung_file_is_stopped_retried_then_failed_and_the_pool_keeps_its_size(
    daemon_factory: Callable[..., DaemonProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("hung-photos")
    slow = big_photo(
        folder / "slow.jpg", (4000, 3000)
    )  # ~17 s at compress level 9 on a 2.5 GHz Xeon
    good = make_photos(folder / "good", 1, random.Random(11))
    daemon = daemon_factory(
        pool__workers=2,
        pool__max_attempts=2,
        pool__file_timeout=3,
        watch__png_compress_level=9,
    ).start()
    assert daemon.proc is not None
    wait_idle_workers(daemon.proc.pid, 2)
    drop(slow, daemon.root / "inbox", "slow.jpg")
    note = daemon.root / "failed" / "slow.jpg.error.txt"
    wait_for(note.exists, what="the slow input in failed/ with its reason")
    # The pool is whole again: two workers, started and idle (a fresh worker's first file is
    # a cold onnxruntime run, ~1 s while its sibling still loads the model: not this test's point).
    wait_idle_workers(daemon.proc.pid, 2)
    ((name, src),) = good.items()
    drop(src, daemon.root / "inbox", name)
    wait_for(lambda: output_names(daemon.root) == [name.rsplit(".", 1)[0] + ".png"], what="good")
    control = client(daemon)
    wait_for(lambda: control.call("status")["jobs"]["active"] == 0, what="both jobs finished")
    workers = wait_for(lambda: len(pids := worker_pids(daemon.proc.pid)) == 2 and pids, what="2")
    status = control.call("status")
    slow_file = control.call("job", id=1)["files"][0]
    retries = daemon.events("file.retry")
    assert daemon.stop() == 0
    inputs = {"slow.jpg": slow, name: src}
    result = record(
        tally(
            daemon.root,
            inputs,
            file_timeout=3,
            attempts=slow_file["attempts"],
            reason=slow_file["error"],
        ),
        started,
    )
    verify_end_state(daemon.root, inputs, result)
    assert (result.outputs, result.failed) == (1, 1)
    assert slow_file["attempts"] == 2
    reason = note.read_text()
    assert "file_timeout" in reason and "gave up after 2 attempts" in reason, reason
    assert len(retries) == 1 and "file_timeout" in retries[0]["error"]
    assert status["workers"]["total"] == 2 and len(workers) == 2


# --- transient errors: an unwritable outbox, a full one -------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A tmpfs mounted on ``path`` for the test; yields ``remount(options)``; unmounted after."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs on {path} (needs root or CAP_SYS_ADMIN): "
            f"{mounted.stderr.strip() or mounted.returncode}"
        )

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    try:
        yield remount
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def killed_on_exit(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """Make sure the daemon and its workers are gone before a mount under it is taken away."""
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        wait_all_gone(daemon.root)


def write_failures(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return daemon.events("file.write_failed")


def transient_scenario(
    daemon: DaemonProcess,
    inputs: dict[str, Path],
    remount: Callable[[str], None],
    *,
    break_with: str,
    heal_with: str,
    expect_error: str,
    started: float,
) -> None:
    """Break the outbox, drop ``inputs``, watch them back off, heal it, check the end state."""
    root = daemon.root
    control = client(daemon)
    remount(break_with)
    for name, src in inputs.items():
        drop(src, root / "inbox", name)

    def backing_off() -> bool:  # every file failed to write, and one failed again on its retry
        failures = Counter(e["file"] for e in write_failures(daemon))
        return len(failures) == len(inputs) and max(failures.values()) >= 2

    wait_for(backing_off, what="every file failing to write, one of them twice")
    during = control.call("status")
    broken_outbox = output_names(root) + [p.name for p in (root / "outbox").iterdir()]
    remount(heal_with)
    wait_for(
        lambda: control.call("status")["jobs"]["active"] == 0,
        DEADLINE * 2,  # the backoff has grown meanwhile: seconds to a minute
        what="every file written after the outbox came back",
    )
    jobs = control.call("jobs")["jobs"]
    files = [f for job in jobs for f in control.call("job", id=job["id"])["files"]]
    failures = write_failures(daemon)
    assert daemon.stop() == 0
    result = record(
        tally(
            root,
            inputs,
            write_failures=len(failures),
            retry_in=[e["retry_in"] for e in failures],
            errors=sorted({e["error"].rsplit(": ", 1)[-1] for e in failures}),
            attempts=sorted(f["attempts"] for f in files),
        ),
        started,
    )
    verify_end_state(root, inputs, result)
    assert result.failed == 0
    # While broken: nothing written, nothing done, everything waiting, and status says why.
    assert broken_outbox == []
    assert during["files"]["done"] == 0 and during["files"]["written"] == 0
    assert during["files"]["queued"] + during["files"]["running"] == len(inputs)
    assert during["last_error"] is not None and expect_error in during["last_error"]["message"]
    assert all(expect_error in e["error"] and e["retry_in"] > 0 for e in failures)
    if len(failures) >= 3:  # exponential: the third wait is longer than the first, jitter or not
        assert failures[2]["retry_in"] > failures[0]["retry_in"]
    assert len({e["retry_in"] for e in failures}) > 1
    # Each exactly once, under its own name; a write failure costs no attempt.
    assert output_names(root) == sorted(n.rsplit(".", 1)[0] + ".png" for n in inputs)
    assert [f["attempts"] for f in files] == [1] * len(inputs)


def test_read_only_outbox_backs_off_then_every_output_appears_once(
    daemon_factory: Callable[..., DaemonProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.monotonic()
    inputs = make_photos(tmp_path_factory.mktemp("ro-photos"), 3, random.Random(3))
    daemon = daemon_factory(pool__workers=1)
    with tmpfs(daemon.root / "outbox", "64m") as remount, killed_on_exit(daemon.start()):
        transient_scenario(
            daemon,
            inputs,
            remount,
            break_with="ro",
            heal_with="rw",
            expect_error="Read-only file system",
            started=started,
        )


def test_full_outbox_backs_off_then_every_output_appears_once(
    daemon_factory: Callable[..., DaemonProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.monotonic()
    folder = tmp_path_factory.mktemp("full-photos")
    inputs = {
        f"f{i}.jpg": big_photo(folder / f"f{i}.jpg", (2000, 1500), s)
        for i, s in enumerate(("coffee", "chelsea"))
    }
    daemon = daemon_factory(pool__workers=1)
    with tmpfs(daemon.root / "outbox", "64m") as remount, killed_on_exit(daemon.start()):
        transient_scenario(
            daemon,
            inputs,
            remount,
            break_with="size=512k",  # each cutout is a few MiB
            heal_with="size=64m",
            expect_error="No space left on device",
            started=started,
        )
        assert all(e["bytes"] > 512 * 1024 for e in daemon.events("file.done"))
