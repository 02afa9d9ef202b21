"""Quality figures on real photos and deliberately bad ones, and what each product step costs.

Two questions (issue 18), answered in one run of the worker's own code (``pipeline``,
``product``, ``quality``; u2netp, one thread), no daemon:

* **calibration**: the figures (docs/outputs.md, "Quality figures") of the scikit-image
  photos the tests use and of deliberately bad cases: a blank wall (flat plaster-like
  texture), a subject cut by the frame (the astronaut's right half; the upper left quarter
  of chelsea, the cat), a low-contrast scan (scikit-image's ``page`` text scan at 15 %
  contrast), and a photo with no subject at all (Hubble's deep field). The default
  ``review_if`` set (watchd/quality.py ``DEFAULT_REVIEW_IF``) was chosen from this table
  (docs/outputs.md, "Calibration").
* **cost**: per photo, median of ``--rounds`` runs, of the quality figures, the sheet (only
  for an output held for review), crop, canvas and a background picture, each timed around
  the function the worker calls, next to the inference and encoding of the same photo.

    .venv/bin/python bench/quality.py [--rounds 5] [--json bench/results/quality.json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from watchd import quality
from watchd.config import OutputConfig
from watchd.imaging import product
from watchd.imaging.cutout import cut_out_raw
from watchd.imaging.decode import Page
from watchd.imaging.encode import encode
from watchd.imaging.review_sheet import make_sheet
from watchd.models import ModelStore
from watchd.pool.worker import init_worker, sessions


def _photos() -> dict[str, tuple[Image.Image, str]]:
    from skimage import data

    rng = np.random.default_rng(18)
    wall = np.full((480, 640, 3), (214, 206, 190), float) + rng.normal(0, 6, (480, 640, 3))
    scan = data.page().astype(float)
    low = (scan - scan.mean()) * 0.15 + 200
    astronaut = data.astronaut()
    cat = data.chelsea()  # scikit-image's cat() is the same photo
    return {
        "astronaut": (Image.fromarray(astronaut), "good"),
        "coffee": (Image.fromarray(data.coffee()), "good"),
        "coffee x3 (2.2 MP, for the costs)": (
            Image.fromarray(data.coffee()).resize((1800, 1200), Image.Resampling.LANCZOS),
            "good",
        ),
        "chelsea": (Image.fromarray(cat), "good"),
        "rocket": (Image.fromarray(data.rocket()), "good"),
        "blank wall": (Image.fromarray(wall.clip(0, 255).astype(np.uint8)), "bad"),
        "cut by the frame (astronaut)": (Image.fromarray(astronaut[:, 256:]), "bad"),
        "cut by the frame (chelsea)": (
            Image.fromarray(cat[: cat.shape[0] // 2, : cat.shape[1] // 2]),
            "bad",
        ),
        "low-contrast scan": (
            Image.fromarray(low.clip(0, 255).astype(np.uint8)).convert("RGB"),
            "bad",
        ),
        "no subject (hubble)": (Image.fromarray(data.hubble_deep_field()), "bad"),
    }


def _median_ms(action: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def _costs(
    image: Image.Image, raw: Image.Image, session: Any, background: bytes, rounds: int
) -> dict[str, float]:
    """Milliseconds per photo (median of ``rounds``) of each step, beside inference."""
    page = Page(image)
    steps: dict[str, Callable[[], Any]] = {
        "infer": lambda: cut_out_raw(image, session, OutputConfig()),
        "encode_png": lambda: encode(raw, OutputConfig(), page),
        "quality": lambda: quality.measure(raw.getchannel("A")),
        "sheet": lambda: make_sheet(image, raw),
        "crop": lambda: product.finish(raw, OutputConfig(crop="subject", margin="5%"), None),
        "canvas_2000": lambda: product.finish(raw, OutputConfig(canvas="2000x2000"), None),
        "background_image": lambda: product.finish(
            raw, OutputConfig(background_image="bg"), background
        ),
    }
    return {name: _median_ms(step, rounds) for name, step in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    init_worker(ModelStore(None).worker_env(), 1, ("u2netp",))
    session = sessions().get("u2netp", 0)
    conditions = quality.parse_conditions(quality.DEFAULT_REVIEW_IF)
    picture = io.BytesIO()
    Image.new("RGB", (1600, 1200), (240, 236, 228)).save(picture, "JPEG", quality=90)
    background = picture.getvalue()
    rows = []
    for name, (image, kind) in _photos().items():
        raw = cut_out_raw(image, session, OutputConfig())
        alpha = raw.getchannel("A")
        figures = quality.measure(alpha)
        held = quality.tripped([figures], conditions)
        row: dict[str, Any] = {
            "photo": name,
            "kind": kind,
            "size": f"{image.width}x{image.height}",
            **figures.as_dict(),
            "held_by_default": held,
        }
        if kind == "good":
            row["ms"] = _costs(image, raw, session, background, args.rounds)
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
