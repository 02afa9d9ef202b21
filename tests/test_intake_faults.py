"""What people really drop: shares, slow writers, bursts, bad files, hostile names and links.

Every test runs the real daemon (subprocess) with the real u2netp model on real files.
Waits are deadline polls; the only fixed pauses are the ones a scenario is made of (a
slow writer's pauses, "nothing happens for N seconds" checks).
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support import DaemonProcess, drop, is_output, wait_for
from watchd.control_client import ControlClient
from watchd.errors import DaemonUnreachable, UnsafePath
from watchd.files import (
    NAME_MAX,
    error_note_path,
    fit_name,
    move_file,
    numbered,
    with_suffix,
)
from watchd.watcher import StabilityTracker

e2e = pytest.mark.e2e

#: Files of the burst tests; CI runs the full 20,000 (about 20 s each on 2 cores).
BURST_FILES = int(os.environ.get("WATCHD_TEST_BURST_FILES", "20000"))
#: The daemon's main process must stay below this resident size through a burst (MiB).
#: Measured: about 56 MiB peak for 20,000 files (43 MiB before the burst).
RSS_LIMIT_MIB = 200
RSS_GROWTH_LIMIT_MIB = 64
#: How long the control socket may take to answer while a burst is recorded (seconds).
#: Measured on an idle 2-core VM: at most 0.9 s (one 1000-file batch per pass of the main
#: loop); before the watcher bounded a pass, the daemon answered only when all 20,000 were
#: recorded (16.6 s). On a machine busy with other work every step is slower, so the bound
#: is this or a fifth of the whole intake, whichever is larger: still far from a stall.
PING_LIMIT = 3.0


def ping_bound(intake_seconds: float) -> float:
    return max(PING_LIMIT, intake_seconds / 5)


# --- helpers --------------------------------------------------------------------------------------


def outputs(root: Path) -> list[str]:
    base = root / "outbox"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if is_output(p))


def ledger_rows(root: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with sqlite3.connect(root / "state" / "ledger.sqlite3", timeout=30) as db:
        return db.execute(sql, params).fetchall()


def files_by_state(root: Path) -> dict[str, int]:
    return dict(ledger_rows(root, "SELECT state, COUNT(*) FROM files GROUP BY state"))


def job_json(daemon: DaemonProcess, job_id: int) -> dict[str, Any]:
    """``watchd job ID --json`` through the real CLI; its output must be valid JSON."""
    result = subprocess.run(
        [sys.executable, "-m", "watchd", "job", str(job_id), "--json", "--config", daemon.config],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr.decode(errors="replace")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def files_of_jobs(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    """Every file of every job, by input name (rel), from ``watchd job ID --json``."""
    by_rel: dict[str, dict[str, Any]] = {}
    for (job_id,) in ledger_rows(daemon.root, "SELECT id FROM jobs ORDER BY id"):
        for file in job_json(daemon, job_id)["files"]:
            by_rel[file["rel"]] = file
    return by_rel


def assert_log_is_json_lines(daemon: DaemonProcess) -> None:
    raw = daemon.log_path.read_bytes()
    for number, line in enumerate(raw.splitlines(), 1):
        text = line.decode("utf-8")  # the log is UTF-8 (in fact ASCII: JSON escapes the rest)
        assert isinstance(json.loads(text), dict), f"log line {number} is not a JSON object"
    assert b"Traceback" not in raw


def timestamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def control(root: Path, timeout: float = 30.0) -> ControlClient:
    return ControlClient(root / "state" / "control.sock", timeout=timeout)


def jpeg_bytes(pixels: np.ndarray | Image.Image, size: tuple[int, int] | None = None) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    if size is not None:
        image = image.resize(size)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def small_photo() -> bytes:
    """A real photo, small enough that u2netp takes a fraction of a second on it."""
    from skimage import data

    return jpeg_bytes(data.astronaut(), (160, 160))


def write_file(path: Path | bytes, data: bytes) -> None:
    """Write through ``os.open``, so ``path`` may be bytes (names that are not UTF-8)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def regular_files_with(content: bytes, *folders: Path) -> list[Path]:
    """Regular files (links never followed) anywhere below ``folders`` holding ``content``."""
    found = []
    for folder in folders:
        for dirpath, _dirs, names in os.walk(folder):
            for name in names:
                path = Path(dirpath) / name
                info = path.lstat()
                if path.is_symlink() or info.st_size != len(content):
                    continue
                if path.read_bytes() == content:
                    found.append(path)
    return found


@pytest.fixture
def fuse_share(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(backing, mount): a real FUSE mount (bindfs), which behaves like a network share.

    Writing into ``backing`` directly is another client writing to the share: the
    kernel's inotify on ``mount`` hears nothing of it.
    """
    if shutil.which("bindfs") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("bindfs or /dev/fuse is not available: cannot make a FUSE mount here")
    backing = tmp_path / "share-backing"
    mount = tmp_path / "share"
    backing.mkdir()
    mount.mkdir()
    result = subprocess.run(["bindfs", str(backing), str(mount)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"bindfs could not mount (no FUSE permission here): {result.stderr!r}")
    try:
        yield backing, mount
    finally:
        unmount = subprocess.run(["fusermount", "-u", str(mount)], capture_output=True, check=False)
        if unmount.returncode != 0:  # still busy (a daemon left running by a failed test)
            subprocess.run(["fusermount", "-u", "-z", str(mount)], check=False)


def share_daemon(
    factory: Callable[..., DaemonProcess], mount: Path, backing: Path, **overrides: Any
) -> DaemonProcess:
    """A daemon whose inbox, outbox, archive and failed folders are all on the share."""
    for folder in ("inbox", "outbox", "archive", "failed"):
        (backing / folder).mkdir()
    folders = ("inbox", "outbox", "archive", "failed")
    settings: dict[str, Any] = {f"watch__{folder}": str(mount / folder) for folder in folders}
    settings.update(overrides)
    return factory(**settings)


def share_outputs(backing: Path) -> list[str]:
    base = backing / "outbox"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if is_output(p))


# --- network shares -------------------------------------------------------------------------------


@e2e
def test_share_auto_polls_and_takes_files_another_client_wrote(
    daemon_factory: Callable[..., DaemonProcess], fuse_share: tuple[Path, Path]
) -> None:
    backing, mount = fuse_share
    poll_interval, settle = 1.0, 0.5
    daemon = share_daemon(
        daemon_factory,
        mount,
        backing,
        watch__method="auto",
        watch__poll_interval=poll_interval,
        watch__settle_seconds=settle,
    )
    try:
        daemon.start()
        [started] = daemon.events("watch.started")
        assert started["method"] == "poll" and started["configured"] == "auto"
        assert str(started["filesystem"]).startswith("fuse"), started
        assert started["poll_interval"] == poll_interval

        photo = small_photo()
        for i in range(3):  # three drops, each waited for: a latency, not a lucky first one
            name = f"remote{i}.jpg"
            write_file(backing / "inbox" / name, photo)  # another client writes to the share
            written = time.time()
            wait_for(lambda i=i: daemon.count("job.accepted") == i + 1, what=f"{name} accepted")
            accepted = daemon.events("job.accepted")[-1]
            assert accepted["name"] == name
            latency = timestamp(accepted) - written
            # first poll that lists it + a full settle window on the next ones + loop ticks
            assert latency <= poll_interval * 2 + settle + 1.5, latency
            wait_for(lambda n=name: f"{n[:-4]}.png" in share_outputs(backing), what="cutout")
        wait_for(
            lambda: sorted(os.listdir(backing / "archive")) == [f"remote{i}.jpg" for i in range(3)],
            what="originals archived on the share",
        )
        assert (backing / "archive" / "remote0.jpg").read_bytes() == photo
        assert os.listdir(backing / "inbox") == []
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
    assert_log_is_json_lines(daemon)


@e2e
def test_inotify_on_a_share_hears_nothing_another_client_wrote_until_the_rescan(
    daemon_factory: Callable[..., DaemonProcess], fuse_share: tuple[Path, Path]
) -> None:
    """Why ``auto`` polls on FUSE/network mounts: inotify only sees this host's own writes."""
    backing, mount = fuse_share
    rescan = 12.0
    daemon = share_daemon(
        daemon_factory, mount, backing, watch__method="inotify", daemon__rescan_interval=rescan
    )
    try:
        daemon.start()
        [started] = daemon.events("watch.started")
        assert started["method"] == "inotify"
        ready = timestamp(daemon.events("daemon.ready")[-1])
        photo = small_photo()
        write_file(backing / "inbox" / "behind.jpg", photo)  # another client: no event here
        write_file(mount / "inbox" / "local.jpg", photo)  # through this host's mount: an event
        wait_for(lambda: "local.png" in share_outputs(backing), what="the locally written file")
        first = daemon.events("job.accepted")
        assert [e["name"] for e in first] == ["local.jpg"]
        assert timestamp(first[0]) - ready < rescan / 2
        assert (backing / "inbox" / "behind.jpg").exists()

        wait_for(lambda: "behind.png" in share_outputs(backing), what="the rescan's file")
        behind = daemon.events("job.accepted")[-1]
        assert behind["name"] == "behind.jpg"
        assert timestamp(behind) - ready >= rescan - 0.5  # only the periodic rescan found it
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


# --- slow writers ---------------------------------------------------------------------------------


@e2e
def test_slow_writer_of_a_12_megapixel_photo_is_taken_once_and_complete(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    from skimage import data

    settle = 1.0
    daemon = daemon_factory(watch__settle_seconds=settle).start()
    root = daemon.root
    big = Image.fromarray(data.astronaut()).resize((4000, 3000), Image.Resampling.BICUBIC)
    source = jpeg_bytes(big)
    chunk = 64 * 1024
    pause = 0.6 * settle  # a scanner on a slow link: every pause shorter than the settle time
    with open(root / "inbox" / "scan.jpg", "wb") as handle:
        for offset in range(0, len(source), chunk):
            handle.write(source[offset : offset + chunk])
            handle.flush()
            assert daemon.count("job.accepted") == 0, f"taken after {offset + chunk} bytes"
            time.sleep(pause)
    assert len(source) // chunk * pause > 5 * settle  # the write spanned several settle windows
    wait_for(lambda: outputs(root) == ["scan.png"], what="the cutout")
    wait_for((root / "archive" / "scan.jpg").exists, what="the archived original")
    assert (root / "archive" / "scan.jpg").read_bytes() == source
    with Image.open(root / "outbox" / "scan.png") as cutout:
        assert cutout.size == (4000, 3000) and cutout.mode == "RGBA"
    [accepted] = daemon.events("job.accepted")
    assert accepted["files"] == 1 and accepted["bytes"] == len(source)
    wait_for(lambda: files_by_state(root) == {"done": 1}, what="done in the ledger")


@e2e
def test_a_file_that_keeps_growing_is_not_taken_until_it_stops(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    settle = 1.0
    daemon = daemon_factory(watch__settle_seconds=settle).start()
    root = daemon.root
    source = photos["coffee.png"].read_bytes()
    steps = 12
    pause = 0.7 * settle  # 12 appends 0.7 s apart: growing for 8 s, eight settle windows
    piece = -(-len(source) // steps)
    target = root / "inbox" / "growing.png"
    started = time.monotonic()
    for step in range(steps):
        with open(target, "ab") as handle:
            handle.write(source[step * piece : (step + 1) * piece])
        time.sleep(pause)
        assert daemon.count("job.accepted") == 0, f"taken while growing, after step {step}"
        assert target.exists()
    assert time.monotonic() - started >= 8 * settle
    stopped = time.time() - pause
    wait_for(lambda: outputs(root) == ["growing.png"], what="the cutout")
    [accepted] = daemon.events("job.accepted")
    assert timestamp(accepted) >= stopped + settle - 0.3  # a full quiet window after the end
    wait_for((root / "archive" / "growing.png").exists, what="archived")
    assert (root / "archive" / "growing.png").read_bytes() == source


# --- bursts ---------------------------------------------------------------------------------------


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 20)).save(buffer, "PNG")
    return buffer.getvalue()


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def watch_intake(daemon: DaemonProcess, count: int, timeout: float = 240.0) -> dict[str, float]:
    """Ping the daemon while it records ``count`` files; the slowest answer and peak memory."""
    root = daemon.root
    assert daemon.proc is not None
    client = control(root, timeout=60)
    slowest = 0.0
    peak = 0
    deadline = time.monotonic() + timeout
    while True:
        asked = time.monotonic()
        assert client.call("ping")
        slowest = max(slowest, time.monotonic() - asked)
        peak = max(peak, memory_kib(daemon.proc.pid)["VmHWM"])
        [(recorded,)] = ledger_rows(root, "SELECT COUNT(*) FROM files")
        if recorded >= count and not os.listdir(root / "inbox"):
            break
        assert time.monotonic() < deadline, f"{recorded} of {count} recorded in {timeout:g} s"
        time.sleep(0.25)
    return {"slowest_ping": slowest, "peak_kib": float(peak)}


def assert_all_recorded_once(root: Path, names: set[str]) -> None:
    rows = ledger_rows(root, "SELECT rel_path, state FROM files")
    rels = [os.fsdecode(rel) for rel, _state in rows]
    assert len(rels) == len(names), (len(rels), len(names))
    assert set(rels) == names  # none missed, none twice
    assert {state for _rel, state in rows} == {"queued"}
    assert len(os.listdir(root / "state" / "spool")) == len(names)
    assert os.listdir(root / "inbox") == []


@e2e
@pytest.mark.timeout(600)
def test_a_burst_dropped_at_once_is_all_recorded_with_bounded_memory(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    assert daemon.proc is not None
    control(root).call("pause")  # record everything; 20,000 cutouts are not the point here
    before = memory_kib(daemon.proc.pid)["VmRSS"]
    png = tiny_png()
    names = {f"burst-{i:06d}.png" for i in range(BURST_FILES)}
    began = time.monotonic()
    for name in sorted(names):
        write_file(root / "inbox" / name, png)  # written straight in: several events each
    written = time.monotonic() - began
    seen = watch_intake(daemon, BURST_FILES)
    took = time.monotonic() - began
    assert_all_recorded_once(root, names)
    peak_mib = seen["peak_kib"] / 1024
    print(
        f"\nburst of {BURST_FILES}: written in {written:.1f} s, recorded after {took:.1f} s, "
        f"RSS {before / 1024:.0f} MiB before, VmHWM {peak_mib:.0f} MiB, "
        f"slowest ping {seen['slowest_ping']:.2f} s"
    )
    assert peak_mib < RSS_LIMIT_MIB
    assert peak_mib - before / 1024 < RSS_GROWTH_LIMIT_MIB
    assert seen["slowest_ping"] < ping_bound(took)
    assert daemon.stop() == 0
    assert_log_is_json_lines(daemon)


@e2e
@pytest.mark.timeout(600)
def test_start_up_on_an_inbox_already_holding_a_burst_does_not_stall_the_daemon(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    control(root).call("pause")  # persisted in the ledger: the next start is paused too
    assert daemon.stop() == 0
    png = tiny_png()
    names = {f"waiting-{i:06d}.png" for i in range(BURST_FILES)}
    for name in names:
        write_file(root / "inbox" / name, png)

    daemon.start()
    ready = time.monotonic()
    assert control(root).call("ping")
    first_answer = time.monotonic() - ready
    assert first_answer < PING_LIMIT
    assert daemon.events("daemon.ready")[-1]["paused"] is True
    [_, started] = daemon.events("watch.started")
    assert started["entries"] == BURST_FILES
    seen = watch_intake(daemon, BURST_FILES)
    took = time.monotonic() - ready
    assert_all_recorded_once(root, names)
    print(
        f"\nstart-up with {BURST_FILES} waiting: first ping {first_answer:.2f} s after ready, "
        f"slowest ping {seen['slowest_ping']:.2f} s, all recorded {took:.1f} s after ready, "
        f"VmHWM {seen['peak_kib'] / 1024:.0f} MiB"
    )
    assert seen["slowest_ping"] < ping_bound(took)
    assert seen["peak_kib"] / 1024 < RSS_LIMIT_MIB
    assert daemon.stop() == 0


def test_one_poll_hands_out_a_bounded_number_of_files(tmp_path: Path) -> None:
    """The unit behind the burst tests: ready files beyond the budget wait for the next tick."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(25):
        (inbox / f"p{i:02d}.jpg").write_bytes(b"x")
    (inbox / "album").mkdir()
    (inbox / "album" / "a.jpg").write_bytes(b"x")
    tracker = StabilityTracker("w", inbox, 1.0, max_batch_files=10)
    for name in os.listdir(inbox):
        tracker.touch(name, 0.0)
    tracker.tick(0.0)
    sizes = []
    for now in (1.0, 1.2, 1.4, 1.6, 1.8):
        sizes.append([len(b.files) for b in tracker.tick(now, max_files=10)])
    assert sizes == [[1, 10], [10], [5], [], []]  # the folder first, then one chunk a tick
    assert tracker.tracked() == 0


# --- bad input ------------------------------------------------------------------------------------


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG of 900 megapixels that compresses to about 100 KB."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    parts = [compressor.compress(row) for _ in range(height)]
    pixels = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 100 100
newpath 10 10 moveto 90 90 lineto stroke
showpage
%%EOF
"""
POSTSCRIPT = b"%!PS-Adobe-3.0\n%%Pages: 1\n/Helvetica findfont 12 scalefont setfont\nshowpage\n"
PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
)
NOT_AN_IMAGE = "not an image watchd can read"


@e2e
def test_bad_input_costs_one_file_with_a_reason_in_the_note_and_the_ledger(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    limit = 2_000_000
    daemon = daemon_factory(watch__max_file_bytes=limit).start()
    root = daemon.root
    photo = photos["astronaut.jpg"].read_bytes()
    bad: dict[str, tuple[bytes, str]] = {
        "empty.jpg": (b"", "empty (0 bytes)"),
        "truncated.jpg": (photo[: len(photo) * 2 // 3], "damaged or truncated"),
        "noise.jpg": (random.Random(7).randbytes(40_000), NOT_AN_IMAGE),
        "notes.png": (b"shopping list: milk, eggs\n", NOT_AN_IMAGE),
        "bomb.png": (png_bomb(), "too large to process safely"),
        "huge.jpg": (b"\xff\xd8\xff\xe0" + bytes(limit), f"more than the limit of {limit} bytes"),
        "drawing.eps": (EPS, NOT_AN_IMAGE),
        "flyer.ps": (POSTSCRIPT, NOT_AN_IMAGE),
        "invoice.pdf": (PDF, NOT_AN_IMAGE),
        "disguised-eps.jpg": (EPS, NOT_AN_IMAGE),  # the name does not pick the decoder
    }
    assert len(bad["bomb.png"][0]) < 200_000
    for name, (content, _reason) in bad.items():
        drop(content, root / "inbox", name)

    wait_for(lambda: files_by_state(root) == {"failed": len(bad)}, what="every bad file failed")
    assert daemon.proc is not None and daemon.proc.poll() is None
    ledger = files_of_jobs(daemon)
    for name, (content, reason) in bad.items():
        note = (root / "failed" / f"{name}.error.txt").read_text()
        assert name in note and reason in note, (name, note)
        assert (root / "failed" / name).read_bytes() == content  # the original, untouched
        assert ledger[name]["state"] == "failed"
        assert reason in ledger[name]["error"], (name, ledger[name]["error"])
    assert outputs(root) == []
    assert os.listdir(root / "inbox") == []

    drop(photo, root / "inbox", "after.jpg")  # the daemon carries on
    wait_for(lambda: outputs(root) == ["after.png"], what="a good file after the bad ones")
    wait_for(lambda: files_by_state(root) == {"failed": len(bad), "done": 1}, what="ledger")
    retries = daemon.events("file.retry")
    assert retries == []  # bad input is not retried: it is the file's fault, not the worker's
    assert daemon.stop() == 0
    assert_log_is_json_lines(daemon)


def exif_rotated_jpeg(pixels: np.ndarray) -> bytes:
    """Stored 300 wide x 200 high with EXIF orientation 6: shown 200 wide x 300 high."""
    image = Image.fromarray(pixels).resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def animated(frames: list[Image.Image], fmt: str) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=200, loop=0)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@e2e
def test_every_kind_of_image_people_drop_becomes_an_upright_rgba_cutout(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    from skimage import data

    daemon = daemon_factory(pool__workers=2).start()
    root = daemon.root
    astronaut = Image.fromarray(data.astronaut()).resize((256, 256))
    coffee = Image.fromarray(data.coffee()).resize((256, 256))
    camera = data.camera()[::2, ::2]  # 256 x 256 greyscale
    with_alpha = astronaut.convert("RGBA")
    alpha = np.full((256, 256), 255, np.uint8)
    alpha[:, :128] = 0  # the left half is already transparent
    with_alpha.putalpha(Image.fromarray(alpha))
    grey_alpha = Image.fromarray(camera).convert("LA")
    grey_alpha.putalpha(Image.fromarray(alpha))
    inputs: dict[str, bytes] = {
        "animated-gif.gif": animated([astronaut, coffee], "GIF"),
        "animated-webp.webp": animated([astronaut, coffee], "WEBP"),
        "cmyk.jpg": encode(astronaut.convert("CMYK"), "JPEG"),
        "deep16.png": encode(Image.fromarray(camera.astype(np.uint16) * 257)),
        "grey.jpg": encode(Image.fromarray(camera), "JPEG"),
        "palette.png": encode(astronaut.convert("P")),
        "rgba.png": encode(with_alpha),
        "grey-alpha.png": encode(grey_alpha),
        "rotated.jpg": exif_rotated_jpeg(data.astronaut()),
    }
    with Image.open(io.BytesIO(inputs["deep16.png"])) as check:
        assert check.mode.startswith("I;16") or check.mode == "I"  # really 16-bit
    with Image.open(io.BytesIO(inputs["animated-webp.webp"])) as check:
        assert getattr(check, "n_frames", 1) == 2
    with Image.open(io.BytesIO(inputs["cmyk.jpg"])) as check:
        assert check.mode == "CMYK"
    for name, content in inputs.items():
        drop(content, root / "inbox", name)

    expected = sorted(f"{Path(name).stem}.png" for name in inputs)
    wait_for(lambda: outputs(root) == expected, what="every cutout")
    wait_for(lambda: files_by_state(root) == {"done": len(inputs)}, what="all done")

    def cutout(name: str) -> Image.Image:
        with Image.open(root / "outbox" / name) as image:
            image.load()
            assert image.mode == "RGBA" and image.format == "PNG"
            return image.copy()

    for name in expected:
        image = cutout(name)
        want = (200, 300) if name == "rotated.png" else (256, 256)
        assert image.size == want, (name, image.size)  # EXIF rotation applied: upright
        assert np.asarray(image.getchannel("A")).max() > 0, name  # something was kept

    # Already transparent pixels stay transparent (rembg multiplies the alpha it finds).
    for name in ("rgba.png", "grey-alpha.png"):
        assert np.asarray(cutout(name).getchannel("A"))[:, :128].max() == 0, name
    # Animated images: the first frame is what is cut out.
    for name in ("animated-gif.png", "animated-webp.png"):
        image = cutout(name)
        kept = np.asarray(image.getchannel("A")) > 200
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)[kept]
        first = np.asarray(astronaut, dtype=np.int16)[kept]
        second = np.asarray(coffee, dtype=np.int16)[kept]
        assert np.abs(rgb - first).mean() < np.abs(rgb - second).mean() / 3
    # 16-bit greyscale is scaled to 8 bits, not clipped to white: the same grey levels.
    deep = cutout("deep16.png")
    kept = np.asarray(deep.getchannel("A")) >= 250  # (colours are scaled by the alpha)
    grey = np.asarray(deep.convert("L"), dtype=np.int16)[kept]
    assert kept.sum() > 100
    assert np.abs(grey - camera.astype(np.int16)[kept]).mean() < 5  # clipped: about 200
    assert daemon.stop() == 0


# --- hostile links --------------------------------------------------------------------------------


@e2e
def test_links_out_of_the_inbox_are_never_read_through(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    from skimage import data

    daemon = daemon_factory(daemon__rescan_interval=1).start()
    root = daemon.root
    inbox = root / "inbox"
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    secret = jpeg_bytes(data.coffee(), (200, 150))  # a real photo: read through, it would work
    secret_hard = jpeg_bytes(data.chelsea(), (200, 150))
    (outside / "secret.jpg").write_bytes(secret)
    (outside / "secret-hard.jpg").write_bytes(secret_hard)
    (outside / "folder" / "inside.jpg").write_bytes(secret)
    (outside / "folder-hard.jpg").write_bytes(secret_hard)

    (inbox / "link.jpg").symlink_to(outside / "secret.jpg")
    (inbox / "shadow.jpg").symlink_to("/etc/shadow")
    (inbox / "linked-folder").symlink_to(outside / "folder", target_is_directory=True)
    os.link(outside / "secret-hard.jpg", inbox / "hard.jpg")
    album = tmp_path / "staging" / "album"
    album.mkdir(parents=True)
    (album / "real.jpg").write_bytes(small_photo())
    (album / "inner-link.jpg").symlink_to(outside / "secret.jpg")
    os.link(outside / "folder-hard.jpg", album / "inner-hard.jpg")
    os.rename(album, inbox / "album")
    drop(small_photo(), inbox, "good.jpg")

    wait_for(lambda: outputs(root) == ["album/real.png", "good.png"], what="the real files")
    wait_for(lambda: daemon.count("job.done") == 2, what="both jobs done")
    expected = {
        str(inbox / "link.jpg"): "symlink",
        str(inbox / "shadow.jpg"): "symlink",
        str(inbox / "linked-folder"): "symlink",
        str(inbox / "hard.jpg"): "hard link",
        str(inbox / "album" / "inner-link.jpg"): "symlink",
        str(inbox / "album" / "inner-hard.jpg"): "hard link",
    }
    wait_for(
        lambda: {e["path"] for e in daemon.events("intake.skipped")} >= set(expected),
        what="every link reported",
    )
    time.sleep(2.5)  # two more rescans meet the same links: reported once, not every time
    skipped = daemon.events("intake.skipped")
    for path, reason in expected.items():
        [event] = [e for e in skipped if e["path"] == path]
        assert event["reason"] == reason

    # Moved aside as they were (links stay links, the hard link is the same file, not a
    # copy), each with a note; nothing of the secrets anywhere watchd writes.
    failed = root / "failed"
    wait_for(lambda: len(daemon.events("intake.set_aside")) == len(expected), what="set aside")
    assert os.readlink(failed / "link.jpg") == str(outside / "secret.jpg")
    assert (failed / "linked-folder").is_symlink() and (
        failed / "album" / "inner-link.jpg"
    ).is_symlink()
    assert (failed / "hard.jpg").stat().st_ino == (outside / "secret-hard.jpg").stat().st_ino
    assert os.stat(outside / "secret-hard.jpg").st_nlink == 2
    assert (outside / "secret.jpg").read_bytes() == secret
    for name in ("link.jpg", "shadow.jpg", "linked-folder", "hard.jpg", "album/inner-hard.jpg"):
        assert "not processed" in (failed / f"{name}.error.txt").read_text()
    assert list(inbox.iterdir()) == []  # the album folder went once its link was moved
    linked = {(outside / n).stat().st_ino for n in ("secret-hard.jpg", "folder-hard.jpg")}
    for content in (secret, secret_hard):
        leaked = regular_files_with(
            content, root / "outbox", root / "archive", root / "failed", root / "state"
        )
        assert [p for p in leaked if p.stat().st_ino not in linked] == []
    assert files_by_state(root) == {"done": 2}
    assert daemon.stop() == 0


def wait_until_blocked(root: Path, timeout: float = 8.0) -> None:
    """Until the daemon's main thread stops answering: it waits for the ledger's write lock."""

    def blocked() -> bool:
        try:
            control(root, timeout=1.5).call("ping")
        except DaemonUnreachable:
            return True
        return False

    wait_for(blocked, timeout=timeout, what="the daemon waiting for the ledger lock")


@e2e
@pytest.mark.parametrize("where", ["local", "share"])
def test_a_symlink_swapped_in_after_the_file_settled_is_never_read_through(
    daemon_factory: Callable[..., DaemonProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    """The real race: the watcher's ``lstat`` saw a plain file, then the name became a link.

    The daemon is held between the two steps by the ledger's write lock (taken here,
    as a second SQLite client would): it has settled the file and waits to record the
    job; meanwhile the file is swapped for a symlink; then the lock is released. The
    move into the spool renames (same file system) or copies (a share) whatever entry
    is there: neither may read through the link.
    """
    from skimage import data

    secret = jpeg_bytes(data.coffee(), (200, 150))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.jpg").write_bytes(secret)
    if where == "share":
        backing, mount = request.getfixturevalue("fuse_share")
        daemon = share_daemon(daemon_factory, mount, backing, watch__method="auto")
        drop_dir = backing / "inbox"
        failed_dir = backing / "failed"
    else:
        daemon = daemon_factory()
        drop_dir = daemon.root / "inbox"
        failed_dir = daemon.root / "failed"
    root = daemon.root
    try:
        daemon.start()
        control(root).call("pause")  # while paused, the loop's only ledger write is intake
        db = sqlite3.connect(root / "state" / "ledger.sqlite3", isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            write_file(drop_dir / "photo.jpg", small_photo())
            wait_until_blocked(root)  # it settled the plain file and now waits to record it
            link = drop_dir / ".photo.jpg.swap"
            link.symlink_to(tmp_path / "outside" / "secret.jpg")
            os.rename(link, drop_dir / "photo.jpg")
        finally:
            db.execute("ROLLBACK")
            db.close()
        wait_for(lambda: daemon.count("job.accepted") == 1, what="the job recorded")
        assert daemon.events("job.accepted")[0]["files"] == 1
        control(root).call("resume")
        wait_for(lambda: files_by_state(root) == {"failed": 1}, what="the file failed")

        [failed] = daemon.events("file.failed")
        assert "symbolic link" in failed["error"]
        [file] = files_of_jobs(daemon).values()
        assert "symbolic link" in file["error"]
        note = wait_for(lambda: list(failed_dir.glob("*.error.txt")), what="the note")
        assert "symbolic link" in note[0].read_text()
        if where == "share":  # the copy was refused; the watcher then moves the link aside
            wait_for(lambda: not os.path.lexists(drop_dir / "photo.jpg"), what="link set aside")
            assert any(e["path"].endswith("photo.jpg") for e in daemon.events("intake.skipped"))
            assert [p.is_symlink() for p in failed_dir.glob("photo*.jpg")] == [True]
        else:  # renamed as an entry into the spool, refused there, quarantined as the link
            assert (failed_dir / "photo.jpg").is_symlink()
        assert daemon.proc is not None and daemon.proc.poll() is None
        leaked = regular_files_with(secret, root / "outbox", root / "archive", root / "state")
        if where == "share":
            leaked += regular_files_with(secret, backing)
        else:
            leaked += regular_files_with(secret, root / "failed", root / "inbox")
        assert leaked == []
        assert (tmp_path / "outside" / "secret.jpg").read_bytes() == secret
        assert daemon.stop() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


# --- hostile names --------------------------------------------------------------------------------


def test_derived_names_always_fit_the_file_system() -> None:
    """Unit rules behind the names test: shortened at a character boundary, suffix kept."""
    assert fit_name("a.jpg") == "a.jpg"
    long_jpeg = "x" * 250 + ".jpeg"  # 255 bytes
    assert with_suffix(long_jpeg, ".png") == "x" * 250 + ".png"  # 254: fits as it is
    no_suffix = "y" * 254
    assert numbered(Path("/o") / with_suffix(no_suffix, ".png"), 1).name == "y" * 251 + ".png"
    assert numbered(Path("/o") / ("x" * 250 + ".png"), 2).name == "x" * 247 + " (2).png"
    wide = "é" * 127 + ".jpg"  # 258 bytes of UTF-8 (as a derived name could be)
    assert fit_name(wide) == "é" * 125 + ".jpg"  # whole characters only: 254 bytes
    note = error_note_path(Path("/f") / ("w" * 251 + ".jpg"))
    assert note.name == "w" * 241 + ".jpg.error.txt" and len(note.name) == NAME_MAX
    assert error_note_path(Path("/f/a.jpg")).name == "a.jpg.error.txt"
    odd = os.fsdecode(b"caf\xe9" * 63 + b".jpg")  # not UTF-8: surrogate escapes, one byte each
    assert len(os.fsencode(fit_name(odd, 200))) <= 200


@e2e
def test_hostile_names_stay_inside_the_outbox_and_nothing_is_lost(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    # Exact names throughout (each original archived under its own name): the case-folding
    # default is tested in tests/test_e2e_queue.py; here Case/case/CASE are three names.
    daemon = daemon_factory(pool__workers=2, watch__case_sensitive_names=True).start()
    root = daemon.root
    inbox = os.fsencode(root / "inbox")
    photo = small_photo()
    names = [
        b"a..b.jpg",
        b"..hidden-looking-but-hidden.jpg",  # a leading dot: ignored by design, stays put
        b"-rf.jpg",
        b"--help.jpg",
        b"new\nline.jpg",
        b"tab\tand \"quotes\" 'and' $(x) `y`.jpg",
        b"back\\slash.jpg",
        b"x" * 250 + b".jpeg",  # 255 bytes; its .png is 254
        b"y" * 254,  # no suffix: y...y.png would be 258 bytes
        b"z" * 251 + b"a.jp",  # 255 bytes each; both shorten to the same name: a clash
        b"z" * 251 + b"b.jp",
        b"caf\xe9 latin-1.jpg",  # not UTF-8
        b"\xff\xfe.jpg",
        "日本語の写真.jpg".encode(),
        b"Case.jpg",
        b"case.jpg",
        b"CASE.JPG",
    ]
    failing = b"w" * 251 + b".jpg"  # 255 bytes, not an image: its .error.txt must still fit
    for name in names:
        write_file(inbox + b"/" + name, photo)
    write_file(inbox + b"/" + failing, b"not a photo")
    taken = [n for n in names if not n.startswith(b".")]

    wait_for(
        lambda: files_by_state(root) == {"done": len(taken), "failed": 1},
        what="every file done or failed",
    )
    # Everything is in the outbox (no escape), findable through the ledger, NAME_MAX-sized.
    outbox = os.path.realpath(root / "outbox")
    produced = [os.fsencode(p) for p in outputs(root)]
    assert len(produced) == len(taken)
    assert all(len(p) <= NAME_MAX and b"/" not in p for p in produced)
    by_rel = files_of_jobs(daemon)
    assert len(by_rel) == len(taken) + 1  # names as JSON: undecodable bytes become U+FFFD
    rows = ledger_rows(root, "SELECT rel_path, output_path, state FROM files")
    for _rel, output, state in rows:
        if state == "done":
            assert os.path.realpath(output).startswith(os.fsencode(outbox) + b"/")
            assert os.path.isfile(output), output
    outputs_of = {rel: os.path.basename(out) for rel, out, _state in rows}
    assert outputs_of[b"y" * 254] == b"y" * 251 + b".png"
    assert outputs_of[b"x" * 250 + b".jpeg"] == b"x" * 250 + b".png"
    assert sorted([outputs_of[b"z" * 251 + b"a.jp"], outputs_of[b"z" * 251 + b"b.jp"]]) == sorted(
        [b"z" * 251 + b".png", b"z" * 247 + b" (2).png"]
    )
    assert outputs_of[b"caf\xe9 latin-1.jpg"] == b"caf\xe9 latin-1.png"
    assert outputs_of[b"-rf.jpg"] == b"-rf.png" and outputs_of[b"a..b.jpg"] == b"a..b.png"
    case = sorted(outputs_of[n] for n in (b"Case.jpg", b"case.jpg", b"CASE.JPG"))
    assert case == [b"CASE.png", b"Case.png", b"case.png"]
    # Originals archived under their own names; the failing one has its note.
    archive = os.fsencode(root / "archive")
    for name in taken:
        with open(archive + b"/" + name, "rb") as handle:
            assert handle.read() == photo
    failed = os.fsencode(root / "failed")
    notes = [n for n in os.listdir(failed) if n.endswith(b".error.txt")]
    assert notes == [b"w" * 241 + b".jpg.error.txt"]
    with open(failed + b"/" + notes[0], "rb") as note:
        assert b"not an image" in note.read()
    assert os.listdir(inbox) == [b"..hidden-looking-but-hidden.jpg"]

    # The same long name dropped again: its numbered output and archive names must fit too.
    write_file(inbox + b"/" + b"x" * 250 + b".jpeg", photo)
    wait_for(lambda: files_by_state(root).get("done") == len(taken) + 1, what="the second drop")
    assert os.path.isfile(os.fsencode(root / "outbox") + b"/" + b"x" * 247 + b" (2).png")
    assert os.path.isfile(archive + b"/" + b"x" * 246 + b" (2).jpeg")
    for event in ("file.write_failed", "file.archive_failed", "file.quarantine_failed"):
        assert daemon.events(event) == [], event
    assert daemon.stop() == 0
    assert_log_is_json_lines(daemon)


# --- moves across file systems (the share -> spool copy), without a second file system ----------


@pytest.fixture
def cross_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rename fails as between two file systems, so ``move_file`` has to copy."""

    def rename(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.usefixtures("cross_device")
def test_a_copying_move_never_reads_through_a_symlink(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"someone else's photo")
    inbox, spool = tmp_path / "inbox", tmp_path / "spool"
    inbox.mkdir()
    (inbox / "a.jpg").symlink_to(secret)
    with pytest.raises(UnsafePath, match="symbolic link"):
        move_file(inbox / "a.jpg", spool / "1", 1, plain_only=True)  # taking an input
    assert (inbox / "a.jpg").is_symlink() and not os.path.lexists(spool / "1")
    move_file(inbox / "a.jpg", spool / "1", 1)  # moving an original: the link itself moves
    assert (spool / "1").is_symlink() and os.readlink(spool / "1") == str(secret)
    assert not os.path.lexists(inbox / "a.jpg")
    assert os.listdir(spool) == ["1"]  # no temp left behind


@pytest.mark.usefixtures("cross_device")
def test_a_copying_move_refuses_hard_links_and_special_files_as_inputs(tmp_path: Path) -> None:
    inbox, spool = tmp_path / "inbox", tmp_path / "spool"
    inbox.mkdir()
    (tmp_path / "theirs.jpg").write_bytes(b"theirs")
    os.link(tmp_path / "theirs.jpg", inbox / "hard.jpg")
    with pytest.raises(UnsafePath, match="hard link"):
        move_file(inbox / "hard.jpg", spool / "1", 1, plain_only=True)
    assert (inbox / "hard.jpg").exists() and not os.path.lexists(spool / "1")
    os.mkfifo(inbox / "pipe.jpg")
    with pytest.raises(UnsafePath, match="not a regular file"):
        move_file(inbox / "pipe.jpg", spool / "2", 2, plain_only=True)
    with pytest.raises(OSError, match="not a regular file") as info:  # not UnsafePath
        move_file(inbox / "pipe.jpg", spool / "2", 2)
    assert info.value.errno == errno.EINVAL
    assert sorted(os.listdir(spool)) == []


def test_an_inotify_queue_overflow_rescans_at_once_and_stays_out_of_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """watchdog only *logs* a kernel queue overflow; the lost names must not wait for the
    periodic rescan, and the plain-text record must not end up in the JSON log."""
    import logging

    from watchd.watcher import InboxWatcher

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "lost.jpg").write_bytes(b"x")  # before start, and never scanned: no event, unknown
    wakes: list[int] = []
    watcher = InboxWatcher("w", inbox, 0.1, lambda: wakes.append(1), method="inotify")
    watcher.start()
    try:
        assert not watcher.pending()
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )  # what watchdog does, from its thread, when the kernel reports IN_Q_OVERFLOW
        assert wakes and watcher.pending()
        batches = wait_for(lambda: watcher.poll(time.monotonic()), timeout=10, what="a batch")
        assert [c.rel for b in batches for c in b.files] == ["lost.jpg"]
        logging.getLogger("watchdog.observers.inotify").error("something %s", "odd")
    finally:
        watcher.stop()
    captured = capfd.readouterr()
    assert "overflowed" not in captured.err + captured.out
    assert "something odd" not in captured.err  # not a plain-text line on stderr ...
    assert "watchdog.log" in captured.out and "something odd" in captured.out  # ... an event
