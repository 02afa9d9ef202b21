"""The side-by-side sheet of an output held for review: original, cutout, mask.

Made in the worker (pixels never reach the daemon's main thread, docs/design.md), only for
an output that tripped a ``review_if`` condition, so the person reviewing sees at a glance
what the model did: the photo, the cutout on a checkerboard (transparency visible), and the
mask in grey. Each panel is scaled to :data:`PANEL_HEIGHT` pixels high, so a sheet is small
(about 100-300 KB) whatever the photo's size.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from watchd.imaging.png import encode_png

PANEL_HEIGHT = 360
GAP = 8
CHECKER = 12  # pixels per checkerboard square
_LIGHT, _DARK = (204, 204, 204), (153, 153, 153)


def checkerboard(size: tuple[int, int]) -> Image.Image:
    """A grey checkerboard, as image editors show transparency."""
    board = Image.new("RGB", size, _LIGHT)
    draw = ImageDraw.Draw(board)
    for top in range(0, size[1], CHECKER):
        for left in range((top // CHECKER) % 2 * CHECKER, size[0], 2 * CHECKER):
            draw.rectangle((left, top, left + CHECKER - 1, top + CHECKER - 1), fill=_DARK)
    return board


def _panel(image: Image.Image) -> Image.Image:
    width = max(1, round(image.width * PANEL_HEIGHT / max(1, image.height)))
    return image.resize((width, PANEL_HEIGHT), Image.Resampling.BILINEAR, reducing_gap=3.0)


def make_sheet(original: Image.Image, cutout: Image.Image) -> bytes:
    """PNG bytes: ``original`` | ``cutout`` (RGBA, or an "L" mask) on a checkerboard | mask."""
    photo = _panel(original.convert("RGB"))
    if cutout.mode == "L":
        mask = _panel(cutout)
        rgba = photo.convert("RGBA")
        rgba.putalpha(mask)
    else:
        rgba = _panel(cutout.convert("RGBA"))
        mask = rgba.getchannel("A")
    shown = checkerboard(rgba.size)
    shown.paste(rgba, (0, 0), rgba)
    panels = [photo, shown, mask.convert("RGB")]
    width = sum(p.width for p in panels) + GAP * (len(panels) - 1)
    sheet = Image.new("RGB", (width, PANEL_HEIGHT), (255, 255, 255))
    left = 0
    for panel in panels:
        sheet.paste(panel, (left, 0))
        left += panel.width + GAP
    return encode_png(sheet, 1)
