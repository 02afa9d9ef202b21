"""Output options (issue #8): formats, background, masks, matting, metadata, pages, HEIC, models.

Everything runs the real u2netp model through rembg on real photos from scikit-image,
scaled down where the option does not depend on size, so the file stays fast. The
model-cache and custom-model tests make this process a worker with its own model
folder (restored afterwards); the last test runs the real daemon on a multi-page TIFF.
"""

from __future__ import annotations

import io
import shutil
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image, ImageCms

from tests.support import DaemonProcess, wait_for
from watchd import files
from watchd.config import OutputConfig
from watchd.errors import InputRejected
from watchd.files import NAME_MAX, page_paths, remove_stray_temp, temp_name
from watchd.finisher import write_outputs
from watchd.imaging import cutout as cutting
from watchd.imaging import decode as decoding
from watchd.imaging.decode import decode_pages
from watchd.imaging.u2net import U2netSession
from watchd.ledger import FileRecord
from watchd.models import ModelStore
from watchd.options import JobOptions
from watchd.pool import worker as pool_worker
from watchd.pool.task import Result, Task
from watchd.pool.worker import init_worker
from watchd.pool.worker import run as process

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
RED = (200, 30, 40)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def small(photos: dict[str, Path], name: str, width: int = 240) -> Image.Image:
    """A real photo scaled to ``width`` pixels wide: inference costs the same, the rest less."""
    with Image.open(photos[name]) as photo:
        photo.load()
        height = round(photo.height * width / photo.width)
        return photo.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def run(data: bytes, **options: Any) -> Result:
    return process(Task(file_id=1, data=data, model="u2netp", output=OutputConfig(**options)))


def pixels(image: Image.Image) -> np.ndarray[Any, Any]:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def worker(model_store: ModelStore) -> None:
    init_worker(model_store.worker_env(), 1, ("u2netp",))


@pytest.fixture(scope="module")
def coffee(photos: dict[str, Path]) -> bytes:
    return encode(small(photos, "coffee.png"), "PNG")


@pytest.fixture(scope="module")
def reference(worker: None, coffee: bytes) -> Image.Image:
    """The default output (RGBA PNG) of the coffee photo: what other options are checked against."""
    return opened(run(coffee).data)


# --- formats -------------------------------------------------------------------------------------


def test_png_is_an_rgba_cutout_and_honours_the_compress_level(
    worker: None, coffee: bytes, reference: Image.Image
) -> None:
    assert reference.format == "PNG" and reference.mode == "RGBA"
    low, high = cast("tuple[int, int]", reference.getchannel("A").getextrema())
    assert low == 0 and high == 255
    level9 = run(coffee, png_compress_level=9).data
    assert len(level9) < len(run(coffee, png_compress_level=0).data)
    assert opened(level9).tobytes() == reference.tobytes()


def test_webp_is_lossless_rgba(worker: None, coffee: bytes, reference: Image.Image) -> None:
    webp = opened(run(coffee, format="webp").data)
    assert webp.format == "WEBP" and webp.mode == "RGBA"
    alpha = pixels(reference.getchannel("A"))
    assert np.array_equal(pixels(webp.getchannel("A")), alpha)  # lossless, not just close
    visible = alpha > 0
    assert np.array_equal(pixels(webp)[visible], pixels(reference)[visible])


def test_jpeg_is_composited_onto_the_background_with_its_quality(
    worker: None, coffee: bytes, reference: Image.Image
) -> None:
    result = run(coffee, format="jpeg", background="#c81e28", jpeg_quality=95)
    jpeg = opened(result.data)
    assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
    expected = Image.alpha_composite(Image.new("RGBA", reference.size, (*RED, 255)), reference)
    assert np.abs(pixels(jpeg) - pixels(expected.convert("RGB"))).mean() < 3
    assert len(run(coffee, format="jpeg", background="#c81e28", jpeg_quality=30).data) < len(
        result.data
    )


def test_mask_format_is_the_greyscale_mask(
    worker: None, coffee: bytes, reference: Image.Image
) -> None:
    mask = opened(run(coffee, format="mask").data)
    assert mask.format == "PNG" and mask.mode == "L"
    assert np.array_equal(pixels(mask), pixels(reference.getchannel("A")))


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_background_makes_png_and_webp_opaque(
    fmt: str, worker: None, coffee: bytes, reference: Image.Image
) -> None:
    flat = opened(run(coffee, format=fmt, background="#c81e28").data)
    assert flat.mode == "RGB"  # no alpha channel at all: opaque
    expected = Image.alpha_composite(Image.new("RGBA", reference.size, (*RED, 255)), reference)
    assert np.array_equal(pixels(flat), pixels(expected.convert("RGB")))  # both lossless


@pytest.mark.parametrize(("fmt", "mode"), [("png", "L"), ("webp", "RGB"), ("jpeg", "L")])
def test_only_mask_writes_the_mask_in_the_chosen_format(
    fmt: str, mode: str, worker: None, coffee: bytes, reference: Image.Image
) -> None:
    # A mask has no colours: a background is ignored; WebP has no greyscale mode (R = G = B).
    mask = opened(run(coffee, format=fmt, only_mask=True, background="#c81e28").data)
    assert mask.format == {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[fmt]
    assert mask.mode == mode
    difference = np.abs(pixels(mask.convert("L")) - pixels(reference.getchannel("A")))
    if fmt == "jpeg":  # lossy
        assert difference.mean() < 2 and difference.max() < 64
    else:
        assert difference.max() == 0


# --- rembg's options -----------------------------------------------------------------------------


def test_post_process_mask_makes_a_hard_edged_mask(
    worker: None, coffee: bytes, reference: Image.Image
) -> None:
    soft = set(np.unique(pixels(reference.getchannel("A"))).tolist())
    assert len(soft) > 2  # u2netp's own mask has soft edges
    hard = opened(run(coffee, format="mask", post_process_mask=True).data)
    assert set(np.unique(pixels(hard)).tolist()) == {0, 255}


def test_alpha_matting_matches_rembg_with_the_thresholds(
    worker: None, photos: dict[str, Path], model_store: ModelStore
) -> None:
    from rembg import remove

    photo = small(photos, "astronaut.jpg", 200)
    options = {
        "alpha_matting_foreground_threshold": 230,
        "alpha_matting_background_threshold": 20,
        "alpha_matting_erode_size": 6,
    }
    matted = opened(run(encode(photo, "PNG"), alpha_matting=True, **options).data)
    expected = remove(
        photo,
        session=pool_worker.sessions().get("u2netp"),
        alpha_matting=True,
        **options,
    )
    assert matted.mode == "RGBA" and matted.size == photo.size
    assert np.abs(pixels(matted.getchannel("A")) - pixels(expected.getchannel("A"))).max() <= 1
    plain = opened(run(encode(photo, "PNG")).data)
    assert not np.array_equal(pixels(matted.getchannel("A")), pixels(plain.getchannel("A")))
    # only_mask with matting: the matted alpha, not the model's raw mask
    mask = opened(run(encode(photo, "PNG"), only_mask=True, alpha_matting=True, **options).data)
    assert np.array_equal(pixels(mask), pixels(matted.getchannel("A")))


def test_alpha_matting_on_a_large_image_runs_on_a_bounded_copy(
    worker: None, photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limit is lowered instead of feeding a 12 MP photo (minutes of pymatting): the same
    # code path, the large image being 6x the limit here.
    monkeypatch.setattr(cutting, "ALPHA_MATTING_MAX_PIXELS", 10_000)
    photo = small(photos, "astronaut.jpg", 245)  # 60,025 pixels
    calls: list[tuple[int, int]] = []
    import rembg

    original = rembg.remove

    def spy(image: Image.Image, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("alpha_matting"):
            calls.append(image.size)
        return original(image, *args, **kwargs)

    monkeypatch.setattr(rembg, "remove", spy)
    matted = opened(run(encode(photo, "PNG"), alpha_matting=True).data)
    assert matted.size == photo.size and matted.mode == "RGBA"
    ((width, height),) = calls
    assert width * height <= 10_000 * 1.02
    low, high = cast("tuple[int, int]", matted.getchannel("A").getextrema())
    assert low == 0 and high == 255
    # full-resolution colours: where the cutout is opaque, the photo's own pixels
    opaque = pixels(matted.getchannel("A")) == 255
    assert opaque.any()
    assert np.array_equal(pixels(matted.convert("RGB"))[opaque], pixels(photo)[opaque])


# --- metadata ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "icc", "dpi"),
    [("png", True, True), ("webp", True, False), ("jpeg", True, True), ("mask", False, True)],
)
def test_icc_profile_and_dpi_are_carried(
    fmt: str, icc: bool, dpi: bool, worker: None, photos: dict[str, Path]
) -> None:
    photo = small(photos, "chelsea.webp", 160)
    data = encode(photo, "JPEG", quality=90, icc_profile=SRGB, dpi=(300, 150))
    output = opened(run(data, format=fmt, background="#ffffff" if fmt == "jpeg" else None).data)
    assert output.info.get("icc_profile") == (SRGB if icc else None)
    if dpi:
        x, y = output.info["dpi"]
        assert abs(x - 300) < 0.5 and abs(y - 150) < 0.5
    else:
        assert "dpi" not in output.info


def test_dpi_follows_a_rotation_and_a_foreign_profile_is_dropped(
    worker: None, photos: dict[str, Path]
) -> None:
    photo = small(photos, "chelsea.webp", 160)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the horizontal resolution becomes the vertical one
    cmyk_profile = SRGB[:16] + b"CMYK" + SRGB[20:]  # what a CMYK scan would carry
    data = encode(photo, "JPEG", dpi=(300, 150), exif=exif.tobytes(), icc_profile=cmyk_profile)
    output = opened(run(data).data)
    x, y = output.info["dpi"]
    assert abs(x - 150) < 0.5 and abs(y - 300) < 0.5
    assert "icc_profile" not in output.info  # a CMYK profile does not describe RGB pixels


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg", "mask"])
def test_exif_orientation_is_applied_for_every_format(
    fmt: str, worker: None, photos: dict[str, Path]
) -> None:
    photo = small(photos, "rocket.jpg", 180)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(photo, "JPEG", quality=92, exif=exif.tobytes())
    options = {"format": fmt, "background": "#ffffff" if fmt == "jpeg" else None}
    result = run(data, **options)
    output = opened(result.data)
    assert output.size == (photo.height, photo.width) == (result.width, result.height)
    assert output.getexif().get(0x0112) is None  # no orientation left to apply twice
    # the output is that of the upright photo itself (up to the JPEG input's noise), not
    # that of the photo turned the other way
    right, wrong = (
        opened(run(encode(photo.transpose(turn), "PNG"), **options).data)
        for turn in (Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_90)
    )
    assert right.mode == output.mode
    near = np.abs(pixels(output) - pixels(right)).mean()
    assert near < 12
    assert np.abs(pixels(output) - pixels(wrong)).mean() > 2 * near


# --- multi-page TIFF -----------------------------------------------------------------------------


def tiff(pages: list[Image.Image], **options: Any) -> bytes:
    """A multi-page TIFF; copies are saved, as Pillow leaves each page's save options on it."""
    fresh = [page.copy() for page in pages]
    return encode(fresh[0], "TIFF", save_all=True, append_images=fresh[1:], **options)


@pytest.fixture(scope="module")
def scan_pages(photos: dict[str, Path]) -> list[Image.Image]:
    return [
        small(photos, "coffee.png", 200),
        small(photos, "astronaut.jpg", 160),
        small(photos, "chelsea.webp", 180),
    ]


def test_multi_page_tiff_makes_one_output_per_page(
    worker: None, scan_pages: list[Image.Image]
) -> None:
    result = run(tiff(scan_pages, compression="tiff_lzw", dpi=(300, 300)))
    assert len(result.pages) == 3
    assert (result.width, result.height) == scan_pages[0].size
    assert result.output_bytes == sum(len(page) for page in result.pages)
    for page, image in zip(result.pages, scan_pages, strict=True):
        output = opened(page)
        assert output.size == image.size and output.mode == "RGBA"
        alone = opened(run(encode(image, "PNG")).data)  # the page as a file of its own
        assert output.tobytes() == alone.tobytes()
        assert abs(output.info["dpi"][0] - 300) < 0.5


def test_single_page_tiff_and_other_formats_make_one_output(
    worker: None, scan_pages: list[Image.Image]
) -> None:
    assert len(run(tiff(scan_pages[:1])).pages) == 1
    # an animated GIF is not a document: its first frame only
    gif = encode(scan_pages[0], "GIF", save_all=True, append_images=[scan_pages[0].rotate(90)])
    assert opened(gif).n_frames == 2
    assert len(run(gif).pages) == 1


def test_thumbnail_pages_are_not_outputs(worker: None, scan_pages: list[Image.Image]) -> None:
    import tifffile

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        writer.write(np.asarray(scan_pages[0]), photometric="rgb")
        writer.write(np.asarray(scan_pages[0].resize((50, 33))), photometric="rgb", subfiletype=1)
        writer.write(np.asarray(scan_pages[1]), photometric="rgb")
    sizes = [page.image.size for page in decode_pages(buffer.getvalue())]
    assert sizes == [scan_pages[0].size, scan_pages[1].size]


def test_a_document_over_the_page_cap_is_rejected_before_any_page_runs(worker: None) -> None:
    pages = [Image.new("L", (8, 8), n % 256) for n in range(decoding.MAX_PAGES + 1)]
    data = tiff(pages)
    with pytest.raises(InputRejected, match=rf"more than {decoding.MAX_PAGES} pages.*split"):
        next(decode_pages(data))  # refused before the first page is even decoded
    with pytest.raises(InputRejected, match="split it"):
        run(data)
    assert len(list(decode_pages(tiff(pages[:-1])))) == decoding.MAX_PAGES


def test_a_huge_later_page_is_refused(worker: None) -> None:
    side = int((Image.MAX_IMAGE_PIXELS or 89_478_485) ** 0.5) + 100
    data = tiff([Image.new("1", (8, 8)), Image.new("1", (side, side))], compression="group4")
    with pytest.raises(InputRejected, match="too large"):
        list(decode_pages(data))


def test_page_paths_naming() -> None:
    out = Path("/out/scans/report.png")
    assert page_paths(out, 1) == [out]
    assert page_paths(out, 3) == [Path(f"/out/scans/report-p{k}.png") for k in (1, 2, 3)]
    twelve = page_paths(out, 12)
    assert twelve[0].name == "report-p01.png" and twelve[-1].name == "report-p12.png"
    assert [p.name for p in twelve] == sorted(p.name for p in twelve)  # name order = page order
    assert page_paths(out, 12) == twelve  # deterministic: a rerun writes the same paths
    long = Path("/out") / ("é" * 125 + ".png")  # 254 bytes: fits, its page names would not
    names = [p.name for p in page_paths(long, 3)]
    assert all(
        len(n.encode()) <= NAME_MAX and n.endswith(f"-p{k}.png") for k, n in enumerate(names, 1)
    )
    assert len(set(names)) == 3


def test_pages_have_distinct_temp_names_and_recovery_removes_them(tmp_path: Path) -> None:
    assert len({temp_name(7), temp_name(7, 1), temp_name(7, 2), temp_name(71, 1)}) == 4
    strays = [temp_name(7), temp_name(7, 1), temp_name(7, 12)]
    others = [temp_name(70, 1), temp_name(17, 1), ".watchd-7.p1.tmp.keep", "report-p1.png"]
    for name in strays + others:
        (tmp_path / name).write_bytes(b"partial")
    assert remove_stray_temp(tmp_path, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
    assert not remove_stray_temp(tmp_path, 7)
    assert not remove_stray_temp(tmp_path / "missing", 7)


def record(output: Path) -> FileRecord:
    return FileRecord(
        id=7,
        job_id=1,
        watch="photos",
        rel="scan.tif",
        source=output.parent / "in" / "scan.tif",
        output=output,
        archive=output.parent / "archive" / "scan.tif",
        failed=output.parent / "failed" / "scan.tif",
        state="running",
        attempts=1,
        error=None,
        options=JobOptions(model="u2netp", after="archive", max_file_bytes=1 << 20),
        created_at=0.0,
        pages=1,
        review=None,
    )


def test_dispatcher_writes_every_page_atomically_and_a_rerun_overwrites_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "outbox" / "scan.png"
    pages = (b"page one", b"page two", b"page three")
    result = Result(file_id=7, pages=pages, width=1, height=1)
    temps: list[str] = []
    write = files.atomic_write

    def watch(
        path: Path, data: bytes, file_id: int, *, page: int | None = None, **access: Any
    ) -> None:
        temps.append(temp_name(file_id, page))
        write(path, data, file_id, page=page, **access)

    monkeypatch.setattr("watchd.finisher.atomic_write", watch)
    write_outputs(record(out), result)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "scan-p1.png",
        "scan-p2.png",
        "scan-p3.png",
    ]
    assert [(out.parent / f"scan-p{k}.png").read_bytes() for k in (1, 2, 3)] == list(pages)
    assert temps == [temp_name(7, 1), temp_name(7, 2), temp_name(7, 3)]
    # the rerun after a crash between pages 2 and 3: the same paths, nothing beside them
    (out.parent / temp_name(7, 3)).write_bytes(b"half")
    assert remove_stray_temp(out.parent, 7)
    write_outputs(record(out), replace(result, pages=(b"1", b"2", b"3")))
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "scan-p1.png",
        "scan-p2.png",
        "scan-p3.png",
    ]
    assert (out.parent / "scan-p3.png").read_bytes() == b"3"
    # a single-page result keeps the assigned path and the plain temp name
    temps.clear()
    write_outputs(record(tmp_path / "single.png"), replace(result, pages=(b"x",)))
    assert (tmp_path / "single.png").read_bytes() == b"x" and temps == [temp_name(7)]


# --- HEIC ----------------------------------------------------------------------------------------

#: The start of a HEIC file (an ``ftyp`` box, brand heic): enough for the sniffing.
HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def test_heic_without_the_extra_says_what_to_install(
    worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import pillow_heif now fails
    decoding._heif_opener.cache_clear()
    try:
        with pytest.raises(InputRejected, match=r"pip install 'watchd\[heic\]'"):
            run(HEIC_HEADER)
    finally:
        decoding._heif_opener.cache_clear()


def test_heic_photo_becomes_a_cutout(worker: None, photos: dict[str, Path]) -> None:
    pillow_heif = pytest.importorskip(
        "pillow_heif", reason="the watchd[heic] extra (pillow-heif) is not installed"
    )
    photo = small(photos, "chelsea.webp", 200)
    heif = pillow_heif.from_pillow(photo)
    buffer = io.BytesIO()
    heif.save(buffer, quality=90, format="HEIF")
    data = buffer.getvalue()
    assert data[4:12] == b"ftypheic"
    result = run(data)
    cutout = opened(result.data)
    assert cutout.mode == "RGBA" and cutout.size == photo.size
    expected = opened(run(encode(photo, "PNG")).data).getchannel("A")
    assert np.abs(pixels(cutout.getchannel("A")) - pixels(expected)).mean() < 8
    damaged = data[: len(data) // 2]
    with pytest.raises(InputRejected, match="damaged or truncated"):
        run(damaged)


# --- models --------------------------------------------------------------------------------------


@pytest.fixture
def own_store(
    tmp_path: Path, model_store: ModelStore, monkeypatch: pytest.MonkeyPatch, fresh_worker: None
) -> Iterator[ModelStore]:
    """This process as a fresh worker on a model folder with u2netp and two imported copies.

    The worker's globals and ``U2NET_HOME`` are restored afterwards, so other tests keep
    their worker.
    """
    store = ModelStore(tmp_path / "models")
    (tmp_path / "models").mkdir()
    for name in ("u2netp", "copy-a", "copy-b"):
        store.import_file(model_store.path("u2netp"), name)
    monkeypatch.setenv("U2NET_HOME", str(store.root))
    yield store


@pytest.mark.parametrize("arena", [True, False])
def test_memory_arena_setting_reaches_the_session(own_store: ModelStore, arena: bool) -> None:
    init_worker(own_store.worker_env(), 1, ("copy-a",), model_cache=1, memory_arena=arena)
    options = pool_worker.sessions().get("copy-a").inner_session.get_session_options()
    assert options.enable_cpu_mem_arena is arena
    assert options.enable_mem_pattern is False  # either way: no pattern planning


def test_model_cache_keeps_the_most_recently_used(own_store: ModelStore) -> None:
    init_worker(own_store.worker_env(), 1, ("u2netp", "copy-a", "copy-b"), model_cache=2)
    assert pool_worker.sessions().loaded() == (
        "u2netp",
        "copy-a",
    )  # only as many as the cache holds
    first = pool_worker.sessions().get("u2netp")  # used: now the most recent
    pool_worker.sessions().get("copy-b")  # loading a third unloads the least recently used
    assert pool_worker.sessions().loaded() == ("u2netp", "copy-b")
    assert pool_worker.sessions().get("u2netp") is first  # still the same session, not reloaded
    pool_worker.sessions().get("copy-a")
    assert pool_worker.sessions().loaded() == ("u2netp", "copy-a")


def test_imported_model_runs_as_a_u2net(own_store: ModelStore, photos: dict[str, Path]) -> None:
    """An imported model runs as rembg's ``u2net_custom`` would (tests/test_u2net.py), in
    watchd's own U²-Net session."""
    init_worker(own_store.worker_env(), 1, (), model_cache=2)
    data = encode(small(photos, "coffee.png"), "PNG")
    custom = process(Task(file_id=1, data=data, model="copy-a", output=OutputConfig()))
    assert isinstance(pool_worker.sessions().get("copy-a"), U2netSession)
    builtin = process(Task(file_id=2, data=data, model="u2netp", output=OutputConfig()))
    assert custom.data == builtin.data  # the same weights: the same cutout
    with pytest.raises(Exception, match=r"watchd models import"):
        pool_worker.sessions().get("not-imported")


# --- the real daemon -----------------------------------------------------------------------------


@pytest.mark.e2e
def test_daemon_writes_the_pages_of_a_scanned_tiff(
    daemon_factory: Callable[..., DaemonProcess], scan_pages: list[Image.Image]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    staging = root / "scan.tif"
    staging.write_bytes(tiff(scan_pages, dpi=(300, 300)))
    shutil.move(staging, root / "inbox" / "scan.tif")
    names = ["scan-p1.png", "scan-p2.png", "scan-p3.png"]
    outbox = root / "outbox"
    wait_for(lambda: sorted(p.name for p in outbox.glob("*.png")) == names, what="3 pages")
    wait_for((outbox / "scan.manifest.json").exists, what="the job manifest")
    for name, image in zip(names, scan_pages, strict=True):
        with Image.open(root / "outbox" / name) as page:
            assert page.size == image.size and page.mode == "RGBA"
    (done,) = daemon.events("file.done")
    assert done["pages"] == 3
    with sqlite3.connect(root / "state" / "ledger.sqlite3") as db:
        row = db.execute("SELECT state, pages, output_bytes FROM files").fetchone()
    assert row[0] == "done" and row[1] == 3
    assert row[2] == sum((root / "outbox" / n).stat().st_size for n in names)
    assert (root / "archive" / "scan.tif").exists()
    assert not list(root.rglob(".watchd-*.tmp"))
    assert daemon.stop() == 0


@pytest.mark.e2e
def test_a_document_whose_page_names_are_taken_fails_and_overwrites_nothing(
    daemon_factory: Callable[..., DaemonProcess], scan_pages: list[Image.Image]
) -> None:
    """``scan-p2.png`` made earlier from some other photo: the pages of a later ``scan.tif``
    would land on it. Its page 1 name is free, so intake cannot see this coming (the page
    count is known only after the worker); the dispatcher checks before the first write."""
    daemon = daemon_factory().start()
    root = daemon.root
    theirs = root / "outbox" / "scan-p2.png"
    theirs.write_bytes(b"someone's earlier cutout")
    staging = root / "scan.tif"
    staging.write_bytes(tiff(scan_pages))
    shutil.move(staging, root / "inbox" / "scan.tif")
    note = root / "failed" / "scan.tif.error.txt"
    # The note is written before the original is moved beside it: wait for the job's end.
    wait_for(lambda: daemon.count("job.done") == 1, what="the document's job ended")
    assert "scan-p2.png" in note.read_text() and "move those files away" in note.read_text()
    assert (root / "failed" / "scan.tif").exists()
    assert theirs.read_bytes() == b"someone's earlier cutout"
    assert sorted(p.name for p in (root / "outbox").glob("*.png")) == ["scan-p2.png"]
    assert daemon.stop() == 0
