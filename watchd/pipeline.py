"""Image processing and the worker pool.

A worker receives bytes and options and returns encoded bytes; it never sees
the ledger or the users' folders (DESIGN.md invariant 5), which keeps the pool
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
import io
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import ExifTags, Image, UnidentifiedImageError

from watchd.config import OutputConfig
from watchd.errors import InputRejected, WatchdError

#: Formats Pillow may decode. Anything else (EPS/PS/PDF through Ghostscript, exotic
#: plug-ins) is refused before a decoder sees it.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"})

#: Suffixes an input may have; other files in the inbox are failed with a clear reason.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
)


@dataclass(frozen=True)
class Task:
    """One file's work: the bytes and the options it was accepted with."""

    file_id: int
    data: bytes
    model: str
    png_compress_level: int = 1
    output: OutputConfig = field(default_factory=OutputConfig)


@dataclass(frozen=True)
class Result:
    file_id: int
    data: bytes
    width: int
    height: int
    timings: Mapping[str, float] = field(default_factory=dict)


class AttemptFailed(WatchdError):
    """This attempt was lost (worker crash, time limit, unexpected error): the file may be retried.

    Retries are bounded by ``max_attempts``, so an input that kills its worker
    every time still ends in the failed folder with this reason.
    """


# --- worker side ---------------------------------------------------------------------------------

DEFAULT_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)

_sessions: dict[str, Any] = {}
_session_lock = threading.Lock()  # a Dask worker runs tasks in threads of one process
_threads = 1
_providers: tuple[str, ...] = DEFAULT_PROVIDERS


def init_worker(
    env: Mapping[str, str],
    threads: int,
    models: tuple[str, ...],
    providers: tuple[str, ...] = DEFAULT_PROVIDERS,
) -> None:
    """Worker initializer: point rembg at the model store and load the models once."""
    global _threads, _providers  # noqa: PLW0603 - per-process worker state, set once
    os.environ.update(env)
    _threads = threads
    _providers = providers
    # Decompression bombs: Pillow warns between 1x and 2x MAX_IMAGE_PIXELS and raises above;
    # a warning must stop the file too, not just scroll past in a log.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    for model in models:
        _session(model)


def _session(model: str) -> Any:
    session = _sessions.get(model)
    if session is None:
        with _session_lock:  # one session per model and process, also with several threads
            session = _sessions.get(model)
            if session is None:
                import onnxruntime as ort
                from rembg import new_session

                options = ort.SessionOptions()
                options.intra_op_num_threads = _threads
                options.inter_op_num_threads = 1
                session = new_session(model, sess_opts=options, providers=list(_providers))
                _sessions[model] = session
    return session


def load_model(model: str) -> str:
    """Load ``model`` in a worker; returns the execution provider actually in use.

    onnxruntime falls back to the CPU silently when a GPU provider cannot load
    (missing CUDA/cuDNN libraries): the daemon compares this answer with what
    was asked for and logs it, or refuses to start with ``require_accelerator``.
    """
    session = _session(model)
    providers = session.inner_session.get_providers()
    return str(providers[0])


def decode(data: bytes) -> Image.Image:
    """Decode an input, refusing formats outside the allow-list and broken or huge images."""
    if not data:
        raise InputRejected("the file is empty (0 bytes)")
    try:
        opened = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
        opened.load()
    except UnidentifiedImageError:
        raise InputRejected(
            "not an image watchd can read (supported: JPEG, PNG, WebP, TIFF, BMP, GIF)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputRejected(f"the image is too large to process safely: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputRejected(f"the image is damaged or truncated: {exc}") from None
    image = _upright(opened)
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    has_alpha = image.mode in ("LA", "PA") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


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


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and drop the EXIF/XMP metadata (the cutout carries none).

    Like ``ImageOps.exif_transpose``, but that one rewrites the EXIF block, which raises
    (struct.error) on some corrupt EXIF data; rembg's ``remove`` runs exif_transpose again
    on what it is given, so the metadata must go, or it would rotate twice or raise there.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # unreadable EXIF: the pixels are still good, keep them as stored
        orientation = 1
    method = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    upright = image.transpose(method) if method is not None else image.copy()
    for key in _METADATA_KEYS:
        upright.info.pop(key, None)
    return upright


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


def process(task: Task) -> Result:
    """Bytes in, PNG cutout bytes out: decode, remove the background, encode."""
    from rembg import remove

    started = time.perf_counter()
    image = decode(task.data)
    decoded = time.perf_counter()
    cutout = remove(image, session=_session(task.model))
    inferred = time.perf_counter()
    buffer = io.BytesIO()
    cutout.save(buffer, "PNG", compress_level=task.png_compress_level)
    encoded = time.perf_counter()
    return Result(
        file_id=task.file_id,
        data=buffer.getvalue(),
        width=cutout.width,
        height=cutout.height,
        timings={
            "decode": decoded - started,
            "infer": inferred - decoded,
            "encode": encoded - inferred,
        },
    )


# --- main-process side ---------------------------------------------------------------------------


class Pool(Protocol):
    """What the dispatcher and the daemon use of a pool: :class:`LocalPool` or ``DaskPool``."""

    file_timeout: float

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
    ) -> None:
        self.size = workers
        self.file_timeout = file_timeout
        self._initargs = (dict(env), threads_per_worker, models, providers)
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
    except Exception as exc:  # unexpected, inside rembg/onnxruntime: retried, then failed
        return AttemptFailed(f"processing failed: {type(exc).__name__}: {exc}")
