"""The quality figures of a cutout, and the ``review_if`` conditions that hold one back.

A background remover does not know when it failed: an empty mask, a wall taken for the
subject, a soft cloud of half-transparent pixels, a product cut by the frame all come out
as a file in the outbox. Three cheap figures of the mask (computed from its histogram,
about 2 ms at 2 MP) say which results a person should look at before a customer does:

* ``coverage``: the share of the frame that is subject (alpha >= 50 %);
* ``uncertain``: among the pixels with any subject in them (alpha >= 10 %), the share the
  model was unsure about (alpha between 10 % and 90 %);
* ``clipped``: the edges of the frame the subject touches (at least :data:`EDGE_SHARE` of
  that edge's pixels are subject).

How to read them and how the default thresholds were calibrated: docs/outputs.md
("Quality figures"). The figures are made in the worker; the conditions are checked in
the daemon's main thread, which decides where the output goes (docs/design.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

#: alpha >= this (50 %) is subject, for ``coverage`` and ``clipped``
SOLID_ALPHA = 128
#: alpha from this (10 %) up to HIGH_ALPHA (90 %, exclusive) is uncertain; from it, some subject
LOW_ALPHA = 26
HIGH_ALPHA = 230
#: an edge is touched when at least this share of its pixels is subject: a stray pixel
#: or a thin shadow line does not count, a product cut by the frame does
EDGE_SHARE = 0.01

EDGES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class Figures:
    """The quality figures of one output (of one page)."""

    coverage: float
    uncertain: float
    clipped: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "coverage": round(self.coverage, 4),
            "uncertain": round(self.uncertain, 4),
            "clipped": list(self.clipped),
        }


def measure(alpha: Image.Image) -> Figures:
    """The figures of a mask ("L", 0 = background, 255 = subject)."""
    histogram = alpha.histogram()
    pixels = alpha.width * alpha.height or 1
    solid = sum(histogram[SOLID_ALPHA:])
    some = sum(histogram[LOW_ALPHA:])
    unsure = sum(histogram[LOW_ALPHA:HIGH_ALPHA])
    width, height = alpha.size
    strips = {
        "top": (0, 0, width, 1),
        "bottom": (0, height - 1, width, height),
        "left": (0, 0, 1, height),
        "right": (width - 1, 0, width, height),
    }
    clipped = tuple(edge for edge in EDGES if _edge_share(alpha, strips[edge]) >= EDGE_SHARE)
    return Figures(
        coverage=solid / pixels,
        uncertain=unsure / some if some else 0.0,
        clipped=clipped,
    )


def _edge_share(alpha: Image.Image, box: tuple[int, int, int, int]) -> float:
    strip = alpha.crop(box).histogram()
    return sum(strip[SOLID_ALPHA:]) / (sum(strip) or 1)


# --- review_if ----------------------------------------------------------------------------------

_FIGURE_RE = re.compile(r"\s*(coverage|uncertain)\s*(<|>)\s*([0-9]*\.?[0-9]+)\s*")
_CLIPPED_RE = re.compile(r"\s*clipped((?:\s+[a-z]+)*)\s*")

#: ``review_if = "default"``: calibrated on the scikit-image photos and deliberately bad
#: cases (docs/outputs.md, "Calibration"; bench/quality_calibration.py).
DEFAULT_REVIEW_IF: tuple[str, ...] = (
    "coverage < 0.02",
    "coverage > 0.9",
    "uncertain > 0.4",
    "clipped top left right",
)


@dataclass(frozen=True)
class Condition:
    """One ``review_if`` entry: a figure compared with a number, or edges touched."""

    text: str  # as written (normalised), what the review note quotes
    figure: str  # coverage | uncertain | clipped
    op: str = ""  # < or > for a figure
    value: float = 0.0
    edges: tuple[str, ...] = ()  # for clipped: any of these (all four when none named)

    def tripped(self, figures: Figures) -> str | None:
        """What tripped, for the note (None: the figures pass this condition)."""
        if self.figure == "clipped":
            hit = [edge for edge in figures.clipped if edge in self.edges]
            return (
                f"the subject touches the {' and '.join(hit)} edge ({self.text})" if hit else None
            )
        measured = figures.coverage if self.figure == "coverage" else figures.uncertain
        if (self.op == "<" and measured < self.value) or (self.op == ">" and measured > self.value):
            return f"{self.figure} is {measured:.3f} ({self.text})"
        return None


def parse_condition(text: str) -> Condition:
    """``"coverage < 0.02"``, ``"uncertain > 0.08"``, ``"clipped"``, ``"clipped left right"``.

    ValueError says what was expected.
    """
    match = _FIGURE_RE.fullmatch(text)
    if match:
        value = float(match[3])
        if value > 1:
            raise ValueError(f"{text!r}: a share from 0 to 1, got {match[3]}")
        return Condition(f"{match[1]} {match[2]} {match[3]}", match[1], match[2], value)
    match = _CLIPPED_RE.fullmatch(text)
    if match:
        edges = tuple(match[1].split()) or EDGES
        unknown = [edge for edge in edges if edge not in EDGES]
        if unknown:
            raise ValueError(f"{text!r}: {unknown[0]!r} is not an edge (top, bottom, left, right)")
        return Condition(" ".join(("clipped", *edges)), "clipped", edges=edges)
    raise ValueError(
        f'{text!r} is not a condition: use "coverage < 0.02", "coverage > 0.95", '
        '"uncertain > 0.08" or "clipped left right"'
    )


def parse_conditions(texts: Iterable[str]) -> tuple[Condition, ...]:
    return tuple(parse_condition(text) for text in texts)


def tripped(pages: Sequence[Figures], conditions: Sequence[Condition]) -> list[str]:
    """What tripped on any page (empty: the output may go to the outbox)."""
    reasons: list[str] = []
    for number, figures in enumerate(pages, start=1):
        for condition in conditions:
            reason = condition.tripped(figures)
            if reason is not None:
                reasons.append(f"page {number}: {reason}" if len(pages) > 1 else reason)
    return reasons
