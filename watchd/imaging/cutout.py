"""Removing the background: the cutout, the cutout on a colour, or the mask.

A U²-Net session without alpha matting or mask post-processing takes watchd's own copy
of rembg's steps (:mod:`watchd.imaging.u2net`); everything else goes through rembg,
imported on first use.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from watchd.config import OutputConfig
from watchd.imaging.u2net import U2netSession
from watchd.masks import flatten, from_mask, wants_mask

#: Alpha matting (pymatting's closed-form matting) costs seconds and hundreds of MiB per
#: megapixel (docs/performance.md, docs/outputs.md); larger images are matted on a copy
#: scaled down to this.
ALPHA_MATTING_MAX_PIXELS = 2_000_000


def cut_out(image: Image.Image, session: Any, output: OutputConfig) -> Image.Image:
    """The RGBA cutout, the opaque composite on ``background``, or the "L" mask."""
    return flatten(cut_out_raw(image, session, output), output)


def cut_out_raw(image: Image.Image, session: Any, output: OutputConfig) -> Image.Image:
    """The RGBA cutout or the "L" mask, before any background or product-shot step
    (the quality figures are measured on it: watchd/quality.py).

    A U²-Net session without alpha matting or post-processing takes watchd's own copy of
    rembg's steps (:mod:`watchd.imaging.u2net`), the same pixels without importing rembg.
    """
    plain = not output.alpha_matting and not output.post_process_mask
    if plain and isinstance(session, U2netSession):
        return from_mask(image, session.mask(image), output)
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
    return cutout


def _matted(image: Image.Image, session: Any, output: OutputConfig) -> Image.Image:
    """rembg's alpha matting, at most on :data:`ALPHA_MATTING_MAX_PIXELS`.

    pymatting's cost grows with the pixel count (docs/performance.md), so a 12 MP photo
    would take close to a minute and several GiB. Above the limit the
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
