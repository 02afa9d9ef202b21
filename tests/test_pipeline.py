"""Tests for watchd.pipeline: decoding rules, real inference, outcome mapping and the real pool.

The model is the real u2netp through rembg/onnxruntime. ``process`` runs in the
pytest process after ``init_worker`` (as a worker would); ``LocalPool`` spawns
real worker processes, which are killed with real signals.
"""

from __future__ import annotations

import concurrent.futures
import gc
import io
import multiprocessing
import os
import random
import signal
import subprocess
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pebble import ProcessExpired
from PIL import EpsImagePlugin, Image, ImageChops, ImageOps

from tests.support import wait_for
from watchd.config import OutputConfig
from watchd.errors import AttemptFailed, InputRejected, UnsafePath
from watchd.imaging.decode import decode_pages
from watchd.models import ModelStore
from watchd.pool.local import LocalPool, failure
from watchd.pool.protocol import outcome
from watchd.pool.task import Result, Task
from watchd.pool.worker import init_worker
from watchd.pool.worker import run as process

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    b"0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
)
PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    """An input's first page, as a worker decodes it."""
    return next(decode_pages(data)).image


def rejected(data: bytes) -> str:
    """The message decode() rejects ``data`` with, under the worker's warning rules."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InputRejected) as info:
            decode(data)
    return str(info.value)


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def level_output(level: int) -> OutputConfig:
    return OutputConfig(png_compress_level=level)


def noise_jpeg(width: int, height: int) -> bytes:
    """A valid JPEG of random pixels: slow to encode as PNG, so a task on it runs a while."""
    pixels = random.Random(width * height).randbytes(width * height * 3)
    return encode(Image.frombytes("RGB", (width, height), pixels), "JPEG", quality=90)


# --- decode: refusals ----------------------------------------------------------------------------


def test_empty_file_is_rejected() -> None:
    assert "empty" in rejected(b"")


@pytest.mark.parametrize(
    "data",
    [
        random.Random(1).randbytes(4096),
        b"Dear scanner,\nthis is a text file, not a photo.\n" * 20,
        b"\x89PNG\r\n\x1a\n",  # a PNG signature and nothing else
        b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
    ],
    ids=["random", "text", "png-signature-only", "svg"],
)
def test_not_an_image_is_rejected(data: bytes) -> None:
    message = rejected(data)
    assert "not an image" in message
    assert "JPEG, PNG, WebP" in message


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX", "SGI"])
def test_formats_outside_the_allow_list_are_rejected(fmt: str) -> None:
    data = encode(Image.new("RGB", (16, 16), (200, 10, 10)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would read it
    assert "not an image" in rejected(data)


@pytest.mark.parametrize("name", ["astronaut.jpg", "coffee.png", "chelsea.webp"])
def test_truncated_image_is_rejected(name: str, photos: dict[str, Path]) -> None:
    data = photos[name].read_bytes()
    assert "damaged or truncated" in rejected(data[: len(data) // 2])


def test_eps_and_pdf_never_reach_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def record(*args: Any, **_kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("Ghostscript or a subprocess was started")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", record)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    monkeypatch.setattr(subprocess, "Popen", record)

    # Control: without the allow-list Pillow takes the EPS and load() would run Ghostscript.
    opened = Image.open(io.BytesIO(EPS))
    assert opened.format == "EPS"
    with pytest.raises(AssertionError):
        opened.load()
    assert calls
    calls.clear()

    for data in (EPS, PDF, b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"):
        assert "not an image" in rejected(data)
    assert calls == []


@pytest.mark.slow
def test_decompression_bomb_is_rejected() -> None:
    # 30000 x 30000 = 900 Mpixel, beyond twice Pillow's limit; mode "1" keeps it to ~110 MB
    # while building and a few hundred kB as a PNG. decode() refuses it from the header.
    data = encode(Image.new("1", (30000, 30000)), "PNG", compress_level=1)
    assert len(data) < 5_000_000
    message = rejected(data)
    assert "too large" in message


def test_image_over_the_warning_limit_is_rejected_in_a_worker() -> None:
    # Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; init_worker turns that into an error.
    side = int((Image.MAX_IMAGE_PIXELS or 89_478_485) ** 0.5) + 100
    data = encode(Image.new("1", (side, side)), "PNG", compress_level=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as outside a worker: the warning scrolls past
        assert decode(data).size == (side, side)
        init_worker({}, 1, ())  # installs the worker's rule inside this catch_warnings block
        with pytest.raises(InputRejected, match="too large"):
            decode(data)


# --- decode: conversions -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_allowed_formats_decode(fmt: str) -> None:
    image = decode(encode(Image.new("RGB", (33, 21), (20, 120, 220)), fmt))
    assert image.size == (33, 21)
    assert image.mode in ("RGB", "RGBA")


@pytest.mark.parametrize("name", ["astronaut.jpg", "coffee.png", "chelsea.webp", "cat.png"])
def test_real_photos_decode_to_rgb(name: str, photos: dict[str, Path]) -> None:
    image = decode(photos[name].read_bytes())
    assert image.mode == "RGB"
    assert image.size == size_of(photos[name])


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = decode(data)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((16, 16))  # type: ignore[misc]
    assert red > 240 and green < 15 and blue < 15


def test_16_bit_png_becomes_rgb_without_clipping() -> None:
    gradient = Image.linear_gradient("L").resize((256, 64))  # left to right: 0 .. 255
    sixteen = gradient.convert("I").point(lambda v: v * 257).convert("I;16")
    data = encode(sixteen, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    image = decode(data)
    assert image.mode == "RGB"
    assert image.size == (256, 64)
    # the full 16-bit range maps onto 0..255, not clipped to white above 255
    assert ImageChops.difference(image, gradient.convert("RGB")).getbbox() is None


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_tiff_is_stretched_to_8_bits(mode: str) -> None:
    gradient = Image.linear_gradient("L").resize((64, 64))
    scale = 1 / 255 if mode == "F" else 1000  # float 0..1, or int 0..255000
    deep = gradient.convert(mode).point(lambda v: v * scale)
    image = decode(encode(deep, "TIFF"))
    assert image.mode == "RGB"
    assert image.convert("L").getextrema() == (0, 255)


def test_grayscale_becomes_rgb() -> None:
    image = decode(encode(Image.new("L", (10, 10), 77), "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (77, 77, 77)


def test_one_bit_becomes_rgb() -> None:
    image = decode(encode(Image.new("1", (10, 10), 1), "TIFF"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_becomes_rgba() -> None:
    palette_image = Image.new("P", (10, 10), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette_image.paste(1, (0, 0, 5, 10))
    data = encode(palette_image, "PNG", transparency=0)
    image = decode(data)
    assert image.mode == "RGBA"
    assert image.getpixel((2, 5)) == (0, 0, 255, 255)
    assert image.getpixel((8, 5))[3] == 0  # type: ignore[index]


def test_palette_without_transparency_becomes_rgb() -> None:
    palette_image = Image.new("P", (10, 10), 0)
    palette_image.putpalette([0, 200, 0] * 256)
    image = decode(encode(palette_image, "GIF"))
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == (0, 200, 0)


def test_grayscale_with_alpha_becomes_rgba() -> None:
    image = decode(encode(Image.new("LA", (10, 10), (90, 30)), "PNG"))
    assert image.mode == "RGBA"
    assert image.getpixel((3, 3)) == (90, 90, 90, 30)


def test_exif_rotated_jpeg_comes_out_upright() -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # a red mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    image = decode(data)
    assert image.size == (20, 40)
    red, _, blue = image.getpixel((15, 4))  # type: ignore[misc]
    assert red > 200 and blue < 60  # the mark is now at the top-right
    assert image.getpixel((4, 4))[2] > 200  # type: ignore[index]
    assert image.getexif().get(0x0112) in (None, 1)
    # rembg's remove() runs exif_transpose again: the orientation must not apply twice
    assert ImageOps.exif_transpose(image).size == (20, 40)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation: int) -> None:
    stored = Image.linear_gradient("L").resize((40, 20)).convert("RGB")
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "PNG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as opened:
        expected = ImageOps.exif_transpose(opened).convert("RGB")
    image = decode(data)
    assert image.size == expected.size
    assert ImageChops.difference(image, expected).getbbox() is None
    assert ImageOps.exif_transpose(image).size == image.size


# An EXIF block whose first tag (0x0152, ExtraSamples, a SHORT tag) holds ASCII "Camera":
# Pillow reads it, but rewriting it (which ImageOps.exif_transpose does) raises struct.error.
CORRUPT_EXIF = bytes.fromhex(
    "4578696600004d4d002a0000000800020152000200000007000000260112000300000001"
    "000600000000000043616d6572610000"
)


def test_corrupt_exif_is_still_decoded_upright() -> None:
    data = encode(Image.new("RGB", (40, 20), (9, 99, 199)), "JPEG", exif=CORRUPT_EXIF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow warns about the odd tag
        image = decode(data)
        assert image.size == (20, 40)
        assert ImageOps.exif_transpose(image).size == (20, 40)  # as rembg calls it


# --- process: real inference in this process -----------------------------------------------------


@pytest.fixture(scope="module")
def worker(model_store: ModelStore) -> None:
    """Make this process a worker: the real u2netp session, loaded once."""
    init_worker(model_store.worker_env(), 1, ("u2netp",))


@pytest.fixture(scope="module")
def astronaut_cutouts(worker: None, photos: dict[str, Path]) -> dict[int, Result]:
    data = photos["astronaut.jpg"].read_bytes()
    return {
        level: process(Task(file_id=level, data=data, model="u2netp", output=level_output(level)))
        for level in (0, 9)
    }


@pytest.mark.parametrize("name", ["astronaut.jpg", "chelsea.webp", "rocket.jpg"])
def test_process_returns_a_png_cutout(name: str, worker: None, photos: dict[str, Path]) -> None:
    result = process(Task(file_id=7, data=photos[name].read_bytes(), model="u2netp"))
    assert result.file_id == 7
    assert result.data.startswith(b"\x89PNG\r\n\x1a\n")
    cutout = Image.open(io.BytesIO(result.data))
    assert cutout.format == "PNG"
    assert cutout.mode == "RGBA"
    assert cutout.size == size_of(photos[name]) == (result.width, result.height)
    low, high = cast("tuple[int, int]", cutout.getchannel("A").getextrema())
    assert low < 50 and high > 200  # a real mask: some background gone, some subject kept
    assert set(result.timings) == {"decode", "infer", "quality", "product", "encode"}
    assert all(seconds >= 0 for seconds in result.timings.values())


def test_process_keeps_an_exif_rotated_photo_upright(worker: None, photos: dict[str, Path]) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(photos["rocket.jpg"]) as rocket:
        data = encode(rocket, "JPEG", exif=exif.tobytes())
        width, height = rocket.size
    result = process(Task(file_id=1, data=data, model="u2netp"))
    assert (result.width, result.height) == (height, width)


def test_process_a_photo_with_corrupt_exif(worker: None) -> None:
    data = encode(Image.new("RGB", (60, 30), (200, 30, 30)), "JPEG", exif=CORRUPT_EXIF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = process(Task(file_id=4, data=data, model="u2netp"))
    assert (result.width, result.height) == (30, 60)


def test_compress_level_changes_size_not_pixels(astronaut_cutouts: dict[int, Result]) -> None:
    fast, small = astronaut_cutouts[0], astronaut_cutouts[9]
    assert len(fast.data) > len(small.data)
    assert (
        Image.open(io.BytesIO(fast.data)).tobytes() == Image.open(io.BytesIO(small.data)).tobytes()
    )


def test_process_rejects_bad_input(worker: None) -> None:
    with pytest.raises(InputRejected, match="not an image"):
        process(Task(file_id=1, data=b"hello", model="u2netp"))


# --- outcome -------------------------------------------------------------------------------------


def finished(*, result: Result | None = None, error: BaseException | None = None) -> Any:
    future: concurrent.futures.Future[Result] = concurrent.futures.Future()
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)
    return future


def test_outcome_passes_a_result_through() -> None:
    result = Result(file_id=3, pages=(b"png",), width=1, height=2)
    assert outcome(finished(result=result)) is result


@pytest.mark.parametrize("error", [InputRejected("the file is empty"), UnsafePath("a symlink")])
def test_outcome_keeps_a_rejected_input(error: InputRejected) -> None:
    assert outcome(finished(error=error)) is error


def test_outcome_maps_a_timeout() -> None:
    failed = outcome(finished(error=concurrent.futures.TimeoutError()))
    assert isinstance(failed, AttemptFailed)
    assert "file_timeout" in str(failed)


def test_outcome_maps_a_dead_worker() -> None:
    died = ProcessExpired("Abnormal termination", code=-9, pid=1234)  # type: ignore[no-untyped-call]
    failed = failure(died)  # the local pool's translation of pebble's error
    assert isinstance(failed, AttemptFailed)
    assert "worker process died" in str(failed)


@pytest.mark.parametrize(
    "error",
    [RuntimeError("onnxruntime exploded"), ValueError("bad"), KeyError("x"), RuntimeError()],
)
def test_outcome_maps_anything_else_to_a_retryable_failure(error: Exception) -> None:
    failed = outcome(finished(error=error))
    assert isinstance(failed, AttemptFailed)
    assert type(error).__name__ in str(failed)
    assert not isinstance(failed, InputRejected)
    assert not str(failed).endswith(": ")  # never an empty reason


def test_outcome_of_an_out_of_memory_input_is_permanent_and_in_words() -> None:
    """The same input needs the same memory: retrying it only fails again (issue 12)."""
    failed = outcome(finished(error=MemoryError()))
    assert isinstance(failed, InputRejected)
    assert "more memory" in str(failed)


def test_outcome_of_a_cancelled_future() -> None:
    future: concurrent.futures.Future[Result] = concurrent.futures.Future()
    assert future.cancel()
    assert isinstance(outcome(future), AttemptFailed)


# --- LocalPool: real spawned workers -------------------------------------------------------------


_children_before_pool: set[int | None] = set()


@pytest.fixture(scope="module")
def pool(model_store: ModelStore) -> Iterator[LocalPool]:
    """One spawned worker with the real model, shared by the pool tests (each leaves it healthy)."""
    _children_before_pool.update(child.pid for child in multiprocessing.active_children())
    local = LocalPool(
        workers=1,
        threads_per_worker=1,
        env=model_store.worker_env(),
        models=("u2netp",),
        file_timeout=120,
    )
    try:
        yield local
    finally:
        local.close(cancel=True)


def pool_workers() -> list[multiprocessing.process.BaseProcess]:
    """The pool's worker processes: children of this process started after the pool."""
    return [
        child
        for child in multiprocessing.active_children()
        if child.pid not in _children_before_pool
    ]


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_busy(future: concurrent.futures.Future[Result], pid: int, timeout: float = 120) -> None:
    """Until the worker is well inside the task.

    pebble marks the future running when the worker's acknowledgement arrives; the worker
    sends it while holding the pool's channel lock. A kill in that instant would leave the
    lock held for pebble's 60 s lock timeout, so wait for CPU time spent *after* the
    acknowledgement: then the lock is released and the worker is processing.
    """
    deadline = time.monotonic() + timeout
    while not future.running():
        assert not future.done(), f"task finished before it could be interrupted: {future}"
        assert time.monotonic() < deadline, "no worker took the task"
        time.sleep(0.005)
    acknowledged = cpu_seconds(pid)
    while cpu_seconds(pid) < acknowledged + 0.2:
        assert not future.done(), f"task finished before it could be interrupted: {future}"
        assert time.monotonic() < deadline, "the worker does not work on the task"
        time.sleep(0.01)


def small_task(photos: dict[str, Path], file_id: int = 1) -> Task:
    return Task(file_id=file_id, data=photos["coffee.png"].read_bytes(), model="u2netp")


def test_pool_check_model_and_process(pool: LocalPool, photos: dict[str, Path]) -> None:
    assert pool.check_model("u2netp", 120).provider == "CPUExecutionProvider"
    result = outcome(pool.submit(small_task(photos, file_id=11)))
    assert isinstance(result, Result)
    assert result.file_id == 11
    assert Image.open(io.BytesIO(result.data)).mode == "RGBA"
    assert len(pool_workers()) == 1


def test_pool_result_is_freed_when_its_future_is_dropped(
    pool: LocalPool, photos: dict[str, Path]
) -> None:
    """A finished file's result (its encoded outputs: megabytes) goes as soon as the
    dispatcher drops the future, without Python's cycle collector: the pool's future and
    pebble's hold no reference cycle once done (docs/performance.md, the daemon's memory
    while a job runs)."""
    gc.collect()
    gc.disable()
    try:
        future = pool.submit(small_task(photos, file_id=12))
        result = outcome(future)
        assert isinstance(result, Result)
        gone = weakref.ref(result)
        del future, result
        # pebble's scheduler thread holds the task it scheduled last until the next arrives
        assert isinstance(outcome(pool.submit(small_task(photos, file_id=13))), Result)
        wait_for(lambda: gone() is None, 10, what="the result to be freed without gc")
    finally:
        gc.enable()


def test_pool_rejects_bad_input_without_losing_the_worker(
    pool: LocalPool, photos: dict[str, Path]
) -> None:
    assert isinstance(outcome(pool.submit(small_task(photos))), Result)  # a worker is up
    before = {child.pid for child in pool_workers()}
    assert len(before) == 1
    rejection = outcome(pool.submit(Task(file_id=2, data=b"", model="u2netp")))
    assert isinstance(rejection, InputRejected)
    assert "empty" in str(rejection)
    assert isinstance(outcome(pool.submit(small_task(photos))), Result)
    assert {child.pid for child in pool_workers()} == before


def test_pool_survives_a_killed_worker(pool: LocalPool, photos: dict[str, Path]) -> None:
    # compress level 9 on 6 Mpixel of noise takes seconds: the worker is killed mid-task
    big = Task(file_id=5, data=noise_jpeg(3000, 2000), model="u2netp", output=level_output(9))
    assert isinstance(outcome(pool.submit(small_task(photos))), Result)  # a worker is up
    (victim,) = pool_workers()
    assert victim.pid is not None
    future = pool.submit(big)
    wait_busy(future, victim.pid)
    os.kill(victim.pid, signal.SIGKILL)
    failed = outcome(future)
    assert isinstance(failed, AttemptFailed), failed
    assert "worker process died" in str(failed)
    # pebble starts a fresh worker (its initializer loads the model again) for the next task
    result = outcome(pool.submit(small_task(photos, file_id=6)))
    assert isinstance(result, Result), result
    assert result.file_id == 6
    assert victim.pid not in {child.pid for child in pool_workers()}


def test_pool_survives_a_worker_killed_while_idle(pool: LocalPool, photos: dict[str, Path]) -> None:
    # pebble breaks the whole pool when a worker dies outside a task (the OOM killer, kill -9);
    # LocalPool replaces it, so this costs at most one retryable attempt, never the daemon.
    assert isinstance(outcome(pool.submit(small_task(photos))), Result)
    (victim,) = pool_workers()
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(30)
    first = outcome(pool.submit(small_task(photos, file_id=21)))
    assert isinstance(first, Result | AttemptFailed), first
    second = outcome(pool.submit(small_task(photos, file_id=22)))
    assert isinstance(second, Result), second
    assert second.file_id == 22
    assert pool.check_model("u2netp", 120).provider == "CPUExecutionProvider"
    assert victim.pid not in {child.pid for child in pool_workers()}


def test_pool_stops_a_task_past_file_timeout(
    pool: LocalPool, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "file_timeout", 1.0)
    big = Task(file_id=8, data=noise_jpeg(3000, 2000), model="u2netp", output=level_output(9))
    started = time.monotonic()
    failed = outcome(pool.submit(big))
    assert isinstance(failed, AttemptFailed), failed
    assert "file_timeout" in str(failed)
    assert time.monotonic() - started < 60
    monkeypatch.setattr(pool, "file_timeout", 120.0)
    assert isinstance(outcome(pool.submit(small_task(photos, file_id=9))), Result)


def test_max_files_per_worker_replaces_a_worker_between_files(
    model_store: ModelStore, photos: dict[str, Path]
) -> None:
    """[pool] max_files_per_worker: each worker makes exactly N files, then a fresh one takes
    over; every file queued meanwhile succeeds on its first attempt (none fails or waits on
    the leaving worker)."""
    recycling = LocalPool(
        workers=1,
        threads_per_worker=1,
        env=model_store.worker_env(),
        models=("u2netp",),
        file_timeout=120,
        max_files_per_worker=2,
    )
    try:
        futures = [recycling.submit(small_task(photos, file_id=i)) for i in range(1, 7)]
        results = [outcome(f) for f in futures]
    finally:
        recycling.close(cancel=True)
    assert all(isinstance(r, Result) for r in results), results
    pids = [r.worker_pid for r in results if isinstance(r, Result)]
    assert [r.file_id for r in results if isinstance(r, Result)] == [1, 2, 3, 4, 5, 6]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5], pids
    assert len(set(pids)) == 3, pids
