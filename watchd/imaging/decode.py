"""Decoding an input: allowed formats only, every page of a document, upright, 8-bit RGB(A).

Bad input is reported as :class:`~watchd.errors.InputRejected` with a message meant
for the person who dropped the file; it is never retried. Runs in a worker (the main
process never decodes an image: docs/design.md, invariant 5).
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import ExifTags, Image, UnidentifiedImageError

from watchd.errors import InputRejected

#: Formats Pillow may decode. Anything else (EPS/PS/PDF through Ghostscript, exotic
#: plug-ins) is refused before a decoder sees it. HEIF joins them when the optional
#: ``watchd[heic]`` extra (pillow-heif) is installed; see :func:`_heif_opener`.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"})

#: At most this many pages of one multi-page TIFF are processed; a longer document is
#: refused as a whole (split it), before any page is processed.
MAX_PAGES = 500

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_HEIF_MISSING = (
    "a HEIC/HEIF photo, which this installation cannot read: "
    "install the optional extra with  pip install 'watchd[heic]'  and restart watchd"
)


@dataclass(frozen=True)
class Page:
    """One decoded page, upright, in RGB or RGBA, with what its output should carry."""

    image: Image.Image
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None


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
    a warning above it (which a worker turns into an error:
    :func:`watchd.pool.worker.init_worker`)."""
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

    Returns the image (``image`` itself when it needs no turning and no ``copy``: a copy
    of a big photo is not free) and whether width and height were swapped. Like
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
