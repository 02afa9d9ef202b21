"""Finished product shots: crop to the subject, place it on a fixed canvas, put it on a background.

Shops list products on a fixed square with the subject centred and the same margins across
a catalogue; a raw cutout has the photo's size and the subject wherever the photographer
put it. These pure functions turn a cutout (RGBA) or a mask ("L") into that finished shot;
the worker calls :func:`finish` between the model and the encoder (docs/outputs.md,
"Product shots"). They never see the ledger or user folders (docs/design.md, invariant 5):
a background picture arrives as bytes the daemon read from the path the config names.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from watchd.config import parse_canvas, parse_margin
from watchd.errors import InputRejected

if TYPE_CHECKING:
    from watchd.config import OutputConfig

#: A pixel belongs to the subject's box when its alpha is at least this (10 %): the box
#: keeps the soft fringe of hair and fur, and drops the faint haze a model leaves around.
SUBJECT_ALPHA = 26

#: Canvas placement never enlarges a cutout more than this many times (Lanczos): a small
#: subject in a big photo is scaled up at most 2x and sits smaller on the canvas, rather
#: than turning into a blur that fills it.
MAX_UPSCALE = 2.0

EMPTY_MASK = (
    "nothing was found in this image (the mask is empty): there is no subject to {what}; "
    "check the photo, or process it without {options}"
)

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Placement:
    """Where a subject goes on a canvas: its size there and the top-left corner."""

    width: int
    height: int
    left: int
    top: int


def subject_box(alpha: Image.Image) -> Box | None:
    """The bounding box of the pixels with alpha >= :data:`SUBJECT_ALPHA` (None: empty)."""
    return alpha.point(lambda v: 255 if v >= SUBJECT_ALPHA else 0).getbbox()


def margin_pixels(margin: int | str, box: Box) -> int:
    """The margin in pixels: as given, or a percentage of the subject box's longer side
    (one figure for all four sides, so a tall bottle and a wide shoe get even borders)."""
    amount, percent = parse_margin(margin)
    if not percent:
        return int(amount)
    longer = max(box[2] - box[0], box[3] - box[1])
    return round(longer * amount / 100)


def crop_box(box: Box, margin: int, size: tuple[int, int]) -> Box:
    """``box`` grown by ``margin`` on each side and clamped to an image of ``size``."""
    return (
        max(0, box[0] - margin),
        max(0, box[1] - margin),
        min(size[0], box[2] + margin),
        min(size[1], box[3] + margin),
    )


def placement(
    subject: tuple[int, int], canvas: tuple[int, int], fill: float, align: str
) -> Placement:
    """Scale and position of a ``subject`` (w, h) on a ``canvas`` (w, h).

    The subject is scaled so that it fits in ``fill`` of the canvas in both directions (on
    a square canvas: its longer side takes ``fill`` of the side), never enlarged more than
    :data:`MAX_UPSCALE`. ``center`` centres it; ``bottom`` centres it across and leaves
    below it the gap a subject filling ``fill`` of the height would leave, so products of
    different heights stand on one line across a catalogue.
    """
    width, height = subject
    scale = min(fill * canvas[0] / width, fill * canvas[1] / height, MAX_UPSCALE)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    left = (canvas[0] - new_w) // 2
    if align == "bottom":
        top = canvas[1] - round((1 - fill) * canvas[1] / 2) - new_h
    else:
        top = (canvas[1] - new_h) // 2
    return Placement(new_w, new_h, left, top)


def reshapes(output: OutputConfig) -> bool:
    """Whether ``output`` asks for any product-shot step (else :func:`finish` is not called)."""
    return output.crop != "none" or output.canvas is not None or output.background_image is not None


def _alpha(made: Image.Image) -> Image.Image:
    return made if made.mode == "L" else made.getchannel("A")


def finish(made: Image.Image, output: OutputConfig, background_image: bytes | None) -> Image.Image:
    """Crop, place on the canvas and put on the background picture, as ``output`` says.

    ``made`` is the RGBA cutout or the "L" mask (a mask gets the same geometry, and no
    background). An empty mask fails the file (:class:`InputRejected`) instead of writing a
    blank canvas or the bare background picture.
    """
    box = subject_box(_alpha(made))
    if box is None:
        raise InputRejected(_empty_reason(output))
    if output.canvas is not None:
        subject = made.crop(box)
        size = parse_canvas(output.canvas)
        where = placement(subject.size, size, output.fill, output.align)
        scaled = subject.resize((where.width, where.height), Image.Resampling.LANCZOS)
        made = Image.new(made.mode, size, 0)
        made.paste(scaled, (where.left, where.top))
    elif output.crop == "subject":
        made = made.crop(crop_box(box, margin_pixels(output.margin, box), made.size))
    if background_image is not None and made.mode == "RGBA":
        made = on_picture(made, background_image)
    return made


def _empty_reason(output: OutputConfig) -> str:
    options = [
        name
        for name, used in (
            ('crop = "subject"', output.crop != "none"),
            ("canvas", output.canvas is not None),
            ("background_image", output.background_image is not None),
        )
        if used
    ]
    what = "crop or place" if output.crop != "none" or output.canvas else "put on the background"
    return EMPTY_MASK.format(what=what, options=" / ".join(options))


def on_picture(cutout: Image.Image, picture: bytes) -> Image.Image:
    """The cutout over a background picture scaled to cover it (centred, Lanczos): RGB."""
    try:
        with Image.open(io.BytesIO(picture)) as opened:
            background = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputRejected(f"the background_image cannot be read as a picture ({exc})") from None
    scale = max(cutout.width / background.width, cutout.height / background.height)
    size = (max(1, round(background.width * scale)), max(1, round(background.height * scale)))
    if size != background.size:
        background = background.resize(size, Image.Resampling.LANCZOS)
    left = (background.width - cutout.width) // 2
    top = (background.height - cutout.height) // 2
    background = background.crop((left, top, left + cutout.width, top + cutout.height))
    flat = background.convert("RGBA")
    return Image.alpha_composite(flat, cutout).convert("RGB")
