"""Image processing and the worker pool.

A worker receives bytes and options and returns encoded bytes; it never sees
the ledger or the users' folders (docs/design.md, invariant 5), which keeps the pool
replaceable by a remote one. Workers are *spawned*, not forked: each loads its
onnxruntime session once, in its initializer, and the main process never
holds a session it could fork.

Bad input is reported as :class:`~watchd.errors.InputRejected` with a message
meant for the person who dropped the file; it is not retried. A worker that
dies, runs past ``file_timeout`` or hits an unexpected error surfaces as
:class:`AttemptFailed`, which the dispatcher retries up to ``max_attempts``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import multiprocessing
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import ExifTags, Image, UnidentifiedImageError, _imaging

from watchd.config import OutputConfig
from watchd.errors import InputRejected, ModelError, WatchdError
from watchd.masks import compose, decode_mask, on_background, wants_mask
from watchd.png import encode_png
from watchd.u2net import FAMILY, PILLOW_BLOCK_SIZE, U2netSession

#: Formats Pillow may decode. Anything else (EPS/PS/PDF through Ghostscript, exotic
#: plug-ins) is refused before a decoder sees it. HEIF joins them when the optional
#: ``watchd[heic]`` extra (pillow-heif) is installed; see :func:`_heif_opener`.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"})

#: Suffixes an input may have. ``.heic``/``.heif`` are always listed: without the
#: extra such a file still fails with a reason that says what to install.
IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".webp",
        ".tif",
        ".tiff",
        ".bmp",
        ".gif",
        ".heic",
        ".heif",
    }
)

#: At most this many pages of one multi-page TIFF are processed; a longer document is
#: refused as a whole (split it), before any page is processed.
MAX_PAGES = 500

#: The encoded outputs of one input together: a file's result travels to the daemon as one
#: message, so a document whose pages would exceed this is refused (split it).
MAX_RESULT_BYTES = 1 << 30

#: Alpha matting (pymatting's closed-form matting) costs about 4 s and 500 MiB per
#: megapixel (docs/outputs.md); larger images are matted on a copy scaled down to this.
ALPHA_MATTING_MAX_PIXELS = 2_000_000

#: Lossless WebP effort: method 0 / quality 25 encodes a 2.4 MP cutout in about 0.12 s,
#: faster than PNG level 1 and smaller; Pillow's default (4 / 80) takes 2.4 s for 30 % less.
WEBP_METHOD = 0
WEBP_EFFORT = 25

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_HEIF_MISSING = (
    "a HEIC/HEIF photo, which this installation cannot read: "
    "install the optional extra with  pip install 'watchd[heic]'  and restart watchd"
)


@dataclass(frozen=True)
class Task:
    """One file's work: the bytes and the options it was accepted with."""

    file_id: int
    data: bytes
    model: str
    output: OutputConfig = field(default_factory=OutputConfig)
    #: onnxruntime threads for this file: 0 is the worker's own count; more when the file is
    #: alone in the pool and may use all of it (the pool's ``alone_threads``).
    threads: int = 0
    #: a hand-edited mask (PNG bytes, watchd/masks.py): used instead of the model's
    mask: bytes | None = None
    mask_name: str = ""


@dataclass(frozen=True)
class Result:
    """The encoded outputs of one input: one per page (a single-page input has one).

    ``width``/``height`` are those of the first page. The daemon names the pages with
    :func:`watchd.files.page_paths`.
    """

    file_id: int
    pages: tuple[bytes, ...]
    width: int
    height: int
    timings: Mapping[str, float] = field(default_factory=dict)
    threads: int = 1  # the onnxruntime threads its inference ran on
    worker_pid: int = 0  # the worker process that made it (0: not known), for the log

    @property
    def data(self) -> bytes:
        """The output of a single-page input (the first page of a multi-page one)."""
        return self.pages[0]

    @property
    def output_bytes(self) -> int:
        return sum(len(page) for page in self.pages)


@dataclass(frozen=True)
class Page:
    """One decoded page, upright, in RGB or RGBA, with what its output should carry."""

    image: Image.Image
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None


class AttemptFailed(WatchdError):
    """This attempt was lost (worker crash, time limit, unexpected error): the file may be retried.

    Retries are bounded by ``max_attempts``, so an input that kills its worker
    every time still ends in the failed folder with this reason.
    """


# --- worker side ---------------------------------------------------------------------------------

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
DEFAULT_MODEL_CACHE = 2

#: Loaded sessions by model, least recently used model first, at most ``_model_cache``
#: models; each model's sessions by onnxruntime thread count (the worker's own, and
#: ``_alone_threads`` for a file that has the pool to itself).
_sessions: OrderedDict[str, dict[int, Any]] = OrderedDict()
_session_lock = threading.Lock()  # a Dask worker runs tasks in threads of one process
_threads = 1
_alone_threads = 0
_providers: tuple[str, ...] = DEFAULT_PROVIDERS
_model_cache = DEFAULT_MODEL_CACHE
_memory_arena = True
_shared_arena = False  # this process's one CPU arena is registered (_share_arena)


def init_worker(  # noqa: PLR0917 - pebble passes initargs positionally
    env: Mapping[str, str],
    threads: int,
    models: tuple[str, ...],
    providers: tuple[str, ...] = DEFAULT_PROVIDERS,
    model_cache: int = DEFAULT_MODEL_CACHE,
    memory_arena: bool = True,
    alone_threads: int = 0,
) -> None:
    """Worker initializer: point rembg at the model store and load the models once.

    Only the first ``model_cache`` models are preloaded (more would evict each other);
    the others load on first use. Each preloaded model is warmed up (:func:`_warm_up`).
    ``alone_threads`` (more than ``threads``): each model gets a second session with that
    many threads, for a file alone in the pool (:attr:`Task.threads`).
    """
    global _threads, _alone_threads, _providers, _model_cache, _memory_arena  # noqa: PLW0603 - set once per process
    os.environ.update(env)
    _memory_arena = memory_arena
    _threads = threads
    _alone_threads = alone_threads if alone_threads > threads else 0
    _providers = providers
    _model_cache = max(1, model_cache)
    # Decompression bombs: Pillow warns between 1x and 2x MAX_IMAGE_PIXELS and raises above;
    # a warning must stop the file too, not just scroll past in a log.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    _imaging.set_block_size(PILLOW_BLOCK_SIZE)  # cutouts relabelled without a copy (u2net.py)
    for model in models[:_model_cache]:
        _warm_up(_session(model))
        if _alone_threads:
            _warm_up(_session(model, _alone_threads))


def _warm_up(session: Any) -> None:
    """One small image through the whole default path, once, when the worker starts.

    The first inference of a session grows onnxruntime's arena and the first PNG loads
    libpng: without this, a fresh worker's first photo costs 0.81 CPU-s at 2 MP against
    0.67 for the next ones (docs/performance.md). It costs about 0.6 s per worker start.
    """
    page = Page(Image.new("RGB", (64, 64), (128, 128, 128)))
    try:
        encode(cut_out(page.image, session, OutputConfig()), OutputConfig(), page)
    except Exception:  # a model that loads but cannot run: each of its files then fails
        return  # with the reason, which needs a worker that started


def _session(model: str, threads: int = 0) -> Any:
    """The session of ``model`` with ``threads`` onnxruntime threads (0: the worker's own).

    Loaded once per process and kept while the model is recently used.
    """
    threads = threads or _threads
    with _session_lock:  # one session per model, thread count and process
        by_threads = _sessions.get(model, {})
        session = by_threads.get(threads)
        if session is None:
            session = _new_session(model, threads)
            by_threads[threads] = session
            _sessions[model] = by_threads
            # An evicted session may still be running in another thread: that thread holds
            # a reference, so it is freed when that file is finished, not under it.
            while len(_sessions) > _model_cache:
                _sessions.popitem(last=False)
        _sessions.move_to_end(model)
        return session


def _share_arena() -> None:
    """Register one onnxruntime CPU arena for every session of this process, once.

    Sessions then take their working memory (about 280 MiB for u2netp) from this one
    arena instead of each keeping its own: a worker holding several models, or a model's
    second session for lone files, costs their weights, not another arena. Sessions of one
    worker process run one at a time (a Dask worker's threads share it safely).
    """
    global _shared_arena  # noqa: PLW0603 - once per process
    if _shared_arena:
        return
    import onnxruntime as ort

    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # its defaults
    _shared_arena = True


def _new_session(model: str, threads: int) -> Any:
    """A session for ``model``: U²-Net models without rembg, other rembg models through it.

    U²-Net models (rembg's ``u2net``, ``u2netp``, ``u2net_human_seg``, ``silueta``, and
    any imported model, which rembg would run as ``u2net_custom``) run in
    :class:`~watchd.u2net.U2netSession`, so a worker that serves only them never imports
    rembg (2.4 s and ~175 MiB). ``watchd models import file.onnx --name NAME`` puts the
    file where :class:`~watchd.models.ModelStore` finds it; the worker's environment
    carries the same ``U2NET_HOME``, so ``ModelStore(None)`` resolves the very file
    checked there.
    """
    import onnxruntime as ort

    from watchd.models import ModelStore

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if threads > 1:
        # Threads that spin between operators take the core from the other workers: two
        # workers x two threads made 3.07 inferences/s spinning, 3.65 not (docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Without the memory-pattern planner the arena is not sized for the largest run seen:
    # peak RSS on 12 MP photos 975 -> 773 MiB at the same speed (docs/outputs.md).
    options.enable_mem_pattern = False
    # ``[pool] memory_arena``: with the arena a session keeps its activations (~280 MiB for
    # u2netp) between runs, which makes inference about 14 % cheaper; without it a worker
    # holding 1 / 2 / 3 models needs less (docs/performance.md, docs/outputs.md).
    options.enable_cpu_mem_arena = _memory_arena
    if _memory_arena:
        _share_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    providers = list(_providers)
    if model not in FAMILY:
        from rembg import new_session
        from rembg.sessions import sessions_names

        if model in sessions_names:
            return new_session(model, sess_opts=options, providers=providers)
    path = ModelStore(None).path(model)
    if not path.is_file():
        raise ModelError(
            f"model {model!r} is not installed in this worker (looked for {path}); "
            + (
                f"install it with: watchd models pull {model}"
                if model in FAMILY
                else f"import it with: watchd models import <file.onnx> --name {model}"
            )
        )
    return U2netSession(path, options, providers)


def loaded_models() -> tuple[str, ...]:
    """The models whose sessions this process holds, least recently used first."""
    with _session_lock:
        return tuple(_sessions)


def load_model(model: str) -> str:
    """Load ``model`` in a worker; returns the execution provider actually in use.

    onnxruntime falls back to the CPU silently when a GPU provider cannot load
    (missing CUDA/cuDNN libraries): the daemon compares this answer with what
    was asked for and logs it, or refuses to start with ``require_accelerator``.
    """
    session = _session(model)
    providers = session.inner_session.get_providers()
    return str(providers[0])


# --- decoding ------------------------------------------------------------------------------------


def decode(data: bytes) -> Image.Image:
    """Decode an input (its first page), refusing formats outside the allow-list and bad images."""
    return next(decode_pages(data)).image


def decode_pages(data: bytes) -> Iterator[Page]:
    """Decode each page of an input, one at a time, so only one is held in memory.

    A TIFF yields every page (scanners put a document in one file), skipping reduced-
    resolution copies (thumbnails) and transparency masks stored as extra pages; other
    formats yield their first image only (an animated GIF/WebP/PNG is not a document).
    The page count is checked against :data:`MAX_PAGES` before the first page is decoded.
    """
    if not data:
        raise InputRejected("the file is empty (0 bytes)")
    opened = _open(data)
    frames = _pages(opened) if opened.format == "TIFF" else [0]
    for index in frames:
        yield _page(opened, index)


def _open(data: bytes) -> Image.Image:
    formats = set(ALLOWED_FORMATS)
    if _looks_like_heif(data):
        if not _heif_opener():
            raise InputRejected(_HEIF_MISSING)
        formats.add("HEIF")
    with _decoding():
        return Image.open(io.BytesIO(data), formats=sorted(formats))


def _looks_like_heif(data: bytes) -> bool:
    """An ISO-BMFF ``ftyp`` box naming a HEIF brand (major or compatible) in the header."""
    if data[4:8] != b"ftyp":
        return False
    box = data[8 : min(len(data), int.from_bytes(data[:4], "big"), 64)]
    brands = {box[0:4]} | {box[i : i + 4] for i in range(8, len(box) - 3, 4)}
    return bool(brands & _HEIF_BRANDS)


@functools.cache
def _heif_opener() -> bool:
    """Register pillow-heif's opener in this process, once, on the first HEIF input.

    Lazy: most workers never see one, and the import pulls in libheif.
    """
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """Decoder errors as :class:`InputRejected` with a sentence for the person who dropped it."""
    try:
        yield
    except UnidentifiedImageError:
        raise InputRejected(
            "not an image watchd can read (supported: JPEG, PNG, WebP, TIFF, BMP, GIF"
            + (", HEIC/HEIF)" if _heif_opener() else "; HEIC/HEIF with watchd[heic])")
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputRejected(f"the image is too large to process safely: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputRejected(f"the image is damaged or truncated: {exc}") from None


#: TIFF NewSubfileType bits of pages that are not document pages: a reduced-resolution
#: copy of another page (1) and a transparency mask (4).
_NOT_A_PAGE = 0x1 | 0x4


def _pages(opened: Image.Image) -> list[int]:
    """The frame indexes of a TIFF's document pages, refusing more than :data:`MAX_PAGES`.

    Counted by seeking (header reads only), stopping at the cap, so a file with a
    million tiny pages costs no more than one with ``MAX_PAGES + 1``.
    """
    pages: list[int] = []
    index = 0
    with _decoding():
        while True:
            try:
                opened.seek(index)
            except EOFError:
                break
            subfile = opened.tag_v2.get(254, 0)  # type: ignore[attr-defined]
            if not isinstance(subfile, int) or not subfile & _NOT_A_PAGE:
                pages.append(index)
            if len(pages) > MAX_PAGES:
                raise InputRejected(
                    f"the document has more than {MAX_PAGES} pages, the most watchd "
                    "processes from one file: split it into several files"
                )
            index += 1
    return pages or [0]


def _page(opened: Image.Image, index: int) -> Page:
    with _decoding():
        opened.seek(index)  # counting the pages left the file at its last one
        if index:
            _check_pixels(opened.size)  # Image.open checks the first page only
        opened.load()
    icc = opened.info.get("icc_profile")
    dpi = _dpi(opened.info.get("dpi"))
    # A TIFF's next page is decoded into the same image object: a page it yields is a copy.
    image, swapped = _upright(opened, copy=opened.format == "TIFF")
    if swapped and dpi is not None:
        dpi = (dpi[1], dpi[0])
    if image.mode not in ("RGB", "RGBA"):
        if image.mode.startswith("I") or image.mode == "F":
            image = _to_8bit(image)
        has_alpha = image.mode in ("LA", "PA", "La") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    # A CMYK or greyscale profile does not describe the RGB pixels made from it
    # (Pillow converts those naively): only an RGB profile is carried to the output.
    keep_icc = isinstance(icc, bytes) and icc[16:20] == b"RGB "
    return Page(image, icc if keep_icc else None, dpi)


def _check_pixels(size: tuple[int, int]) -> None:
    """Pillow's decompression-bomb rule for a later page: an error above twice the limit,
    a warning above it (which a worker turns into an error, see :func:`init_worker`)."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = size[0] * size[1]
    if limit is None or pixels <= limit:
        return
    message = f"a page of {size[0]}x{size[1]} = {pixels} pixels is more than the limit of {limit}"
    if pixels > 2 * limit:
        raise Image.DecompressionBombError(message)
    warnings.warn(message, Image.DecompressionBombWarning, stacklevel=2)


def _dpi(value: object) -> tuple[float, float] | None:
    """The resolution as two positive numbers, or None (absent, zero, or nonsense)."""
    if not isinstance(value, tuple) or len(value) != 2:
        return None
    try:
        x, y = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        return None
    if not (0 < x < 1e6 and 0 < y < 1e6):
        return None
    return (x, y)


_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


#: Where Pillow finds EXIF/XMP metadata (and the orientation in it) in ``Image.info``.
_METADATA_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _upright(image: Image.Image, *, copy: bool) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation and drop the EXIF/XMP metadata (the cutout carries none).

    Returns the image (``image`` itself when it needs no turning and no ``copy``; 12 MP
    copied costs 13 ms) and whether width and height were swapped. Like
    ``ImageOps.exif_transpose``, but that one rewrites the EXIF block, which raises
    (struct.error) on some corrupt EXIF data; rembg's ``remove`` runs exif_transpose again
    on what it is given, so the metadata must go, or it would rotate twice or raise there.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # unreadable EXIF: the pixels are still good, keep them as stored
        orientation = 1
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    upright = image if method is None else image.transpose(method)
    if copy and upright is image:
        upright = image.copy()
    for key in _METADATA_KEYS:
        upright.info.pop(key, None)
    return upright, isinstance(orientation, int) and orientation >= 5 and method is not None


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth greyscale (16-bit PNG/TIFF scans, 32-bit or float TIFF) to 8-bit "L".

    Pillow's own conversion clips at 255, which turns a 16-bit scan almost white.
    16-bit data is scaled from its full range; "I" and "F" have no fixed range, so
    the values present are stretched to 0..255.
    """
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        extrema = image.getextrema()
        low, high = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
    scale = 255.0 / (high - low) if high > low else 1.0
    offset = 0.5 - low * scale  # convert("L") truncates; the half rounds to nearest
    return image.convert("F").point(lambda value: value * scale + offset).convert("L")


# --- removing the background and encoding --------------------------------------------------------


def process(task: Task) -> Result:
    """Bytes in, encoded outputs out (one per page): decode, remove the background, encode.

    Pages are decoded, cut out and encoded one at a time; only the encoded bytes are kept.
    """
    session = _session(task.model, task.threads) if task.mask is None else None
    timings = {"decode": 0.0, "infer": 0.0, "encode": 0.0}
    outputs: list[bytes] = []
    total = 0
    size = (0, 0)
    pages = decode_pages(task.data)
    while True:
        started = time.perf_counter()
        page = next(pages, None)
        decoded = time.perf_counter()
        if page is None:
            break
        try:
            if task.mask is None:
                made = cut_out(page.image, session, task.output)
            else:
                made = _from_hand_mask(page.image, task, len(outputs))
            inferred = time.perf_counter()
            data = encode(made, task.output, page)
        except MemoryError:
            raise InputRejected(too_big_for_memory(page.image.size)) from None
        encoded = time.perf_counter()
        timings["decode"] += decoded - started
        timings["infer"] += inferred - decoded
        timings["encode"] += encoded - inferred
        if not outputs:
            size = page.image.size
        outputs.append(data)
        total += len(data)
        if total > MAX_RESULT_BYTES:
            raise InputRejected(
                f"the outputs of this file's {len(outputs)} pages exceed "
                f"{MAX_RESULT_BYTES >> 20} MiB, the most watchd makes from one file: "
                "split it into several files"
            )
        del page, made  # the next page is decoded without this one still held
    return Result(
        file_id=task.file_id,
        pages=tuple(outputs),
        width=size[0],
        height=size[1],
        timings=timings,
        threads=task.threads or _threads,
        worker_pid=os.getpid(),
    )


def too_big_for_memory(size: tuple[int, int]) -> str:
    """The reason for an image whose processing needs more memory than a worker can get.

    Deterministic (the same image needs the same memory), so the file fails at once instead
    of being retried: an 80,000,000 x 1 PNG is under the pixel limit, but resizing a line
    that long for the model needs gigabytes.
    """
    width, height = size
    return (
        f"the image ({width} x {height} pixels) needs more memory to process than a worker "
        "can get (out of memory); images this large, or this long and thin, cannot be "
        "processed: scale or crop it"
    )


def _from_hand_mask(image: Image.Image, task: Task, page: int) -> Image.Image:
    """The output made from the job's hand-edited mask (watchd/masks.py), no inference."""
    if page:
        raise InputRejected(
            f"the hand-edited mask {task.mask_name} belongs to a one-page image; this file "
            "has more pages"
        )
    return compose(image, decode_mask(task.mask or b"", image.size, task.mask_name), task.output)


def cut_out(image: Image.Image, session: Any, output: OutputConfig) -> Image.Image:
    """The RGBA cutout, the opaque composite on ``background``, or the "L" mask.

    A U²-Net session without alpha matting or post-processing takes watchd's own copy of
    rembg's steps (watchd/u2net.py), the same pixels without importing rembg.
    """
    plain = not output.alpha_matting and not output.post_process_mask
    if plain and isinstance(session, U2netSession):
        return compose(image, session.mask(image), output)
    from rembg import remove

    if wants_mask(output) and not output.alpha_matting:
        only: Image.Image = remove(
            image, session=session, only_mask=True, post_process_mask=output.post_process_mask
        )
        return only
    if output.alpha_matting:
        cutout = _matted(image, session, output)
    else:
        cutout = remove(image, session=session, post_process_mask=output.post_process_mask)
    if wants_mask(output):
        return cutout.getchannel("A")  # the matted alpha: the mask of the cutout one would get
    if output.background is not None or output.format == "jpeg":
        return on_background(cutout, output.background or "#ffffff")
    return cutout


def _matted(image: Image.Image, session: Any, output: OutputConfig) -> Image.Image:
    """rembg's alpha matting, at most on :data:`ALPHA_MATTING_MAX_PIXELS`.

    pymatting's cost grows with the pixel count (about 4 s and 500 MiB per megapixel),
    so a 12 MP photo would take close to a minute and several GiB. Above the limit the
    matting runs on a scaled copy (the erode size scaled with it); its alpha is scaled
    back up and applied to the full-resolution pixels, as rembg's plain cutout does.
    """
    from rembg import remove

    scale = min(1.0, (ALPHA_MATTING_MAX_PIXELS / (image.width * image.height)) ** 0.5)
    small = image
    erode = output.alpha_matting_erode_size
    if scale < 1.0:
        small = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.LANCZOS,
        )
        erode = max(1, round(erode * scale)) if erode else 0
    cutout: Image.Image = remove(
        small,
        session=session,
        alpha_matting=True,
        alpha_matting_foreground_threshold=output.alpha_matting_foreground_threshold,
        alpha_matting_background_threshold=output.alpha_matting_background_threshold,
        alpha_matting_erode_size=erode,
        post_process_mask=output.post_process_mask,
    )
    if scale == 1.0:
        return cutout
    alpha = cutout.getchannel("A").resize(image.size, Image.Resampling.LANCZOS)
    empty = Image.new("RGBA", image.size, 0)
    return Image.composite(image.convert("RGBA"), empty, alpha)


def encode(made: Image.Image, output: OutputConfig, page: Page) -> bytes:
    """Encode in the output format, carrying the input's ICC profile and resolution.

    A mask holds coverage, not colours: it gets the resolution but no colour profile.
    WebP has no resolution field (only EXIF, which watchd does not write), so a WebP
    output carries the profile only.
    """
    icc = None if made.mode == "L" else page.icc_profile
    extra: dict[str, Any] = {}
    if icc is not None:
        extra["icc_profile"] = icc
    if page.dpi is not None and output.format != "webp":
        extra["dpi"] = page.dpi
    buffer = io.BytesIO()
    if output.format == "webp":
        made.save(buffer, "WEBP", lossless=True, method=WEBP_METHOD, quality=WEBP_EFFORT, **extra)
    elif output.format == "jpeg":
        made.save(buffer, "JPEG", quality=output.jpeg_quality, **extra)
    else:  # png, mask: see watchd/png.py for why not Pillow's encoder
        return encode_png(made, output.png_compress_level, icc_profile=icc, dpi=extra.get("dpi"))
    return buffer.getvalue()


# --- main-process side ---------------------------------------------------------------------------


class Pool(Protocol):
    """What the dispatcher and the daemon use of a pool: :class:`LocalPool` or ``DaskPool``."""

    file_timeout: float

    @property
    def alone_threads(self) -> int:
        """onnxruntime threads for a file that has the pool to itself (0: the usual)."""
        ...

    @property
    def size(self) -> int: ...

    @property
    def capacity(self) -> int:
        """How many files may be in flight now (0: do not dispatch)."""
        ...

    def available(self) -> bool: ...

    def check_model(self, model: str, timeout: float) -> str: ...

    def submit(self, task: Task) -> Future[Result]: ...

    def close(self, *, cancel: bool, wait: bool = True) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def check(self) -> None:
        """Notice a broken pool and fail the files it can no longer finish (cheap; per loop)."""
        ...


class LocalPool:
    """A pool of spawned worker processes (pebble restarts dead or timed-out workers)."""

    def __init__(
        self,
        workers: int,
        threads_per_worker: int,
        env: Mapping[str, str],
        models: tuple[str, ...],
        file_timeout: float,
        *,
        providers: tuple[str, ...] = DEFAULT_PROVIDERS,
        model_cache: int = DEFAULT_MODEL_CACHE,
        memory_arena: bool = True,
        lone_file_uses_all_cores: bool = True,
        max_files_per_worker: int | None = None,
    ) -> None:
        """``model_cache``, ``memory_arena``, ``lone_file_uses_all_cores``,
        ``max_files_per_worker``: the ``[pool]`` settings of the same names."""
        self.size = workers
        #: pebble's ``max_tasks``: a worker exits after this many tasks, *after* returning the
        #: last one's result, and pebble starts a fresh one (with its own initializer). Files
        #: waiting are never assigned to the leaving worker, so none fails or is retried; the
        #: cost is one worker start (spawn + model load) per this many files.
        self.max_files_per_worker = max_files_per_worker
        self.file_timeout = file_timeout
        # A file alone in the pool may use every thread of it, but not more than the cores
        # this process may run on (more workers than cores is the operator's choice; a lone
        # file's threads fighting each other is not).
        total = min(workers * threads_per_worker, len(os.sched_getaffinity(0)))
        #: threads a file may use when it is alone in the pool (0: no more than the others)
        self.alone_threads = total if lone_file_uses_all_cores and total > threads_per_worker else 0
        self._initargs = (
            dict(env),
            threads_per_worker,
            models,
            providers,
            model_cache,
            memory_arena,
            self.alone_threads,
        )
        self._closed = False
        self._pending: set[Future[Result]] = set()
        self._pool: Any = self._new_pool()

    @property
    def capacity(self) -> int:
        """In-flight cap for the dispatcher: two files per worker keep it busy."""
        return self.size * 2

    def available(self) -> bool:
        return not self._closed

    def describe(self) -> dict[str, Any]:
        return {"backend": "local", "connected": True, "workers": self.size}

    def _new_pool(self) -> Any:
        from pebble import ProcessPool

        return ProcessPool(
            max_workers=self.size,
            max_tasks=self.max_files_per_worker or 0,
            initializer=init_worker,
            initargs=self._initargs,
            context=multiprocessing.get_context("spawn"),
        )

    def _live_pool(self) -> Any:
        """The pebble pool, replaced if it broke.

        pebble gives up for good when a worker dies outside a task (the OOM killer or
        ``kill -9`` on an idle worker, a failing initializer): every later ``schedule``
        raises RuntimeError. The futures it held were already failed (BrokenProcessPool:
        :class:`AttemptFailed`, retried), so a fresh pool is all that is needed.
        """
        if not self._closed and not self._pool.active:
            broken, self._pool = self._pool, self._new_pool()
            broken.stop()
            broken.join()
            # pebble does not resolve every future of a broken pool (one scheduled just
            # before or after the break can stay pending forever): resolve them here.
            for future in list(self._pending):
                with contextlib.suppress(InvalidStateError):  # pebble may settle it meanwhile
                    future.set_exception(BrokenProcessPool("the worker pool broke"))
            self._pending.clear()
        return self._pool

    def check(self) -> None:
        self._live_pool()

    def check_model(self, model: str, timeout: float) -> str:
        """Prove in a real worker that ``model`` loads; returns the execution provider."""
        future = self._live_pool().schedule(load_model, args=(model,), timeout=timeout)
        try:
            return str(future.result())
        except FutureTimeout:
            raise AttemptFailed(f"loading model {model!r} took longer than {timeout:g} s") from None

    def submit(self, task: Task) -> Future[Result]:
        future: Future[Result] = self._live_pool().schedule(
            process, args=(task,), timeout=self.file_timeout
        )
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def close(self, *, cancel: bool, wait: bool = True) -> None:
        """Stop the workers: let running files finish, or kill them when ``cancel``.

        ``wait=False`` retires the pool (after a reload replaced it): its running
        files finish and their futures complete as usual, without blocking the caller.
        """
        self._closed = True
        if cancel:
            self._pool.stop()
        else:
            self._pool.close()
        if wait:
            self._pool.join()


def outcome(future: Future[Result]) -> Result | InputRejected | AttemptFailed:
    """Turn a finished future into a result, a rejected input, or a lost worker."""
    from pebble import ProcessExpired

    try:
        return future.result()
    except InputRejected as exc:
        return exc
    except AttemptFailed as exc:  # a pool's own verdict (DaskPool: time limit, worker died)
        return exc
    except FutureTimeout:
        return AttemptFailed("processing took longer than file_timeout; the worker was stopped")
    except ProcessExpired as exc:
        return AttemptFailed(f"the worker process died ({exc})")
    except MemoryError:  # outside process()'s own pages: still no use retrying the same input
        return InputRejected("processing needs more memory than a worker can get (out of memory)")
    except Exception as exc:  # unexpected, inside rembg/onnxruntime: retried, then failed
        detail = f": {exc}" if str(exc) else " (no message)"
        return AttemptFailed(f"processing failed: {type(exc).__name__}{detail}")
