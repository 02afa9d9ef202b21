"""PNG encoding that does not spend most of a big photo's time choosing row filters.

Pillow's PNG encoder tries every filter on every row and keeps the best; at 12 MP that
search alone costs more than the model's inference. libpng (through imagecodecs) with
one fixed filter, "Up", makes files of about the same size in less than half the
time (measured in docs/performance.md). The pixels are the
same whatever the filter: PNG is lossless.

imagecodecs writes no metadata, so the two chunks watchd carries from the input, the
colour profile (iCCP) and the resolution (pHYs), are inserted here, right after the
header chunk, where the PNG specification puts them (before any image data).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = len(_SIGNATURE) + 4 + 4 + 13 + 4  # length, type, 13 bytes of data, CRC
_INCH = 0.0254  # metres


def encode_png(
    image: Image.Image,
    level: int,
    *,
    icc_profile: bytes | None = None,
    dpi: tuple[float, float] | None = None,
) -> bytes:
    """``image`` (mode L, RGB or RGBA) as PNG at zlib ``level``, with its profile and DPI."""
    import imagecodecs

    if image.mode not in ("L", "RGB", "RGBA"):
        raise ValueError(f"cannot write mode {image.mode} as PNG here")
    pixels = np.asarray(image)
    data = bytes(imagecodecs.png_encode(pixels, level=level, filter=imagecodecs.PNG.FILTER.UP))
    chunks = b""
    if icc_profile:
        # name, NUL, compression method 0 (zlib), the compressed profile
        chunks += _chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile))
    if dpi is not None:
        # pixels per metre, as Pillow writes and reads them (unit 1 = metre)
        x, y = (int(value / _INCH + 0.5) for value in dpi)
        chunks += _chunk(b"pHYs", struct.pack(">IIB", x, y, 1))
    if not chunks:
        return data
    if not data.startswith(_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("the PNG encoder wrote no header chunk first")
    return data[:_IHDR_END] + chunks + data[_IHDR_END:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
