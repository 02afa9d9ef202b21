"""Hand-edited masks: a cutout from a mask a person drew, without running the model.

The round trip (docs/outputs.md, "A mask corrected by hand"): take the ``format = "mask"``
output of a photo, correct it in any image editor, and drop it back as
``NAME.mask.png`` together with the original ``NAME.jpg`` (same folder, same drop), or
alone, later: then the original is taken from the archive (watchd/late_masks.py).
Intake pairs the two (:func:`pair_masks`); the worker makes the output from that mask
with the job's options (format, crop, canvas, background, ...) through the same steps the
model's masks go through (watchd/pipeline.py), so a corrected output differs from the
model's only where the mask does.

This module also holds the two steps every cutout shares, the model's or a hand's:
:func:`from_mask` (the image and its mask to the "L" mask or the RGBA cutout) and
:func:`flatten` (onto the background colour), so there is one place for each.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, TypeVar

from PIL import Image, UnidentifiedImageError

from watchd.errors import InputRejected
from watchd.imaging.u2net import naive_cutout

if TYPE_CHECKING:
    from watchd.config import OutputConfig

#: A hand-edited mask's name ends with this (any letter case): ``NAME.mask.png``.
MASK_SUFFIX = ".mask.png"

#: Why a ``NAME.mask.png`` without its original is failed, not processed as a photo: none
#: beside it in its drop, and none processed before (watchd/late_masks.py).
LONE_MASK = (
    "a hand-edited mask needs its original: drop NAME.mask.png in the same folder and the "
    "same drop as NAME.jpg (or .png, .tif, ...), or later, once NAME.jpg has been made into "
    "a cutout by this watch and its original is in the archive; neither was found, as "
    "docs/outputs.md says"
)
#: Why masks are not paired on a watch that leaves originals in the inbox.
MASK_IN_PLACE = (
    'hand-edited masks need after = "archive" or "delete": with after = "keep" the mask '
    "would be taken again and again"
)


def mask_stem(rel: str) -> str | None:
    """``"a/b.mask.png"`` → ``"a/b"``; None when the name is not a mask's."""
    if not rel.lower().endswith(MASK_SUFFIX) or len(rel) == len(MASK_SUFFIX):
        return None
    stem = rel[: -len(MASK_SUFFIX)]
    return None if stem.endswith("/") else stem


_C = TypeVar("_C")


def pair_masks(
    candidates: Sequence[_C], rel_of: dict[int, str]
) -> tuple[list[_C], dict[str, _C], list[_C]]:
    """Split a batch into (inputs, {input rel: its mask}, masks without an original).

    ``rel_of`` maps ``id(candidate)`` to its relative path. An input pairs with the mask
    of the same folder and stem (``photo.jpg`` with ``photo.mask.png``; the letter case
    of the suffix does not matter, the stem's does). Two inputs with that stem
    (``photo.jpg`` and ``photo.tif``) make the mask ambiguous: it pairs with neither and
    is failed as a lone mask, and both are processed by the model.
    """
    masks: dict[str, _C] = {}
    for candidate in candidates:
        stem = mask_stem(rel_of[id(candidate)])
        if stem is not None:
            masks[stem] = candidate
    by_stem: dict[str, list[_C]] = {}
    inputs: list[_C] = []
    for candidate in candidates:
        rel = rel_of[id(candidate)]
        if mask_stem(rel) is None:
            inputs.append(candidate)
            path = PurePosixPath(rel)
            by_stem.setdefault(str(path.with_name(path.stem)), []).append(candidate)
    pairs: dict[str, _C] = {}
    for stem, mask in masks.items():
        owners = by_stem.get(stem, [])
        if len(owners) == 1:
            pairs[rel_of[id(owners[0])]] = mask
    paired = {id(mask) for mask in pairs.values()}
    lone = [mask for mask in masks.values() if id(mask) not in paired]
    return inputs, pairs, lone


def decode_mask(data: bytes, size: tuple[int, int], name: str) -> Image.Image:
    """The hand-edited mask ``name`` as an 8-bit greyscale image of exactly ``size``.

    Any PNG an editor writes is accepted (greyscale, RGB, with or without alpha, 16-bit):
    its luminance is the mask (white kept, black removed), as in the ``"mask"`` output.
    A mask of another size fails the file with both sizes: it was drawn for another image
    (or scaled by the editor), and stretching it would put its edges in the wrong place.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=["PNG"])
            opened.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputRejected(f"the hand-edited mask {name} is not a readable PNG ({exc})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputRejected(f"the hand-edited mask {name} is too large to decode") from None
    mask: Image.Image = opened
    if mask.size != size:
        raise InputRejected(
            f"the hand-edited mask {name} is {mask.width} x {mask.height} pixels but the image "
            f"is {size[0]} x {size[1]}: a mask must have exactly the image's size (start from "
            'the format = "mask" output of this image, and do not scale it)'
        )
    if mask.mode.startswith("I;16") or mask.mode in ("I", "F"):
        return mask.point(lambda value: value / 257).convert("L")
    if mask.mode in ("LA", "RGBA", "PA") or "transparency" in mask.info:
        mask = mask.convert("RGBA")
        flat = Image.new("RGBA", mask.size, (0, 0, 0, 255))  # transparent counts as removed
        mask = Image.alpha_composite(flat, mask)
    return mask.convert("L")


def wants_mask(output: OutputConfig) -> bool:
    """Whether the output is the greyscale mask rather than a cutout."""
    return output.format == "mask" or output.only_mask


def from_mask(image: Image.Image, mask: Image.Image, output: OutputConfig) -> Image.Image:
    """The "L" mask itself, or the RGBA cutout it makes: what the quality figures are
    measured on and the product steps (crop, canvas) work on, the model's mask or a hand's."""
    if wants_mask(output):
        return mask
    return naive_cutout(image, mask)


def flatten(made: Image.Image, output: OutputConfig) -> Image.Image:
    """An RGBA cutout on ``background`` (or white, for JPEG) as opaque RGB; else as it is."""
    if made.mode == "RGBA" and (output.background is not None or output.format == "jpeg"):
        return on_background(made, output.background or "#ffffff")
    return made


def on_background(cutout: Image.Image, colour: str) -> Image.Image:
    """The cutout over an opaque ``#rrggbb`` colour: an RGB image with no transparency."""
    rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    flat = Image.new("RGBA", cutout.size, (*rgb, 255))
    return Image.alpha_composite(flat, cutout.convert("RGBA")).convert("RGB")
