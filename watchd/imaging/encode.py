"""Encoding a cutout in its output format, with the input's colour profile and resolution.

PNG (and the mask, a greyscale PNG) goes through :mod:`watchd.imaging.png` (libpng with
a fixed row filter); WebP and JPEG through Pillow.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from watchd.config import OutputConfig
from watchd.imaging.decode import Page
from watchd.imaging.png import encode_png

#: Lossless WebP effort: method 0 / quality 25 is faster than PNG level 1 and smaller;
#: Pillow's default (4 / 80) is many times slower for a modestly smaller file
#: (docs/performance.md, "Numbers behind choices in the code").
WEBP_METHOD = 0
WEBP_EFFORT = 25


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
    else:  # png, mask: see watchd/imaging/png.py for why not Pillow's encoder
        return encode_png(made, output.png_compress_level, icc_profile=icc, dpi=extra.get("dpi"))
    return buffer.getvalue()
