"""Product shots (watchd/imaging/product.py) and quality figures (watchd/quality.py) on real pixels.

The geometry is checked on masks drawn here (a known box), the figures on the real photos
the other tests use, and the worker's whole path (``pipeline.process``) with the real model.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.test_config import config_error, with_watch
from watchd import quality
from watchd.config import OutputConfig, sidecar_overrides
from watchd.errors import ConfigError, InputRejected
from watchd.imaging import product
from watchd.imaging.review_sheet import make_sheet
from watchd.models import ModelStore
from watchd.pool.task import Task


def mask_with_box(
    size: tuple[int, int], box: tuple[int, int, int, int], value: int = 255
) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=value)
    return mask


def cutout_with_box(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    cutout = Image.new("RGBA", size, (200, 30, 30, 0))
    cutout.putalpha(mask_with_box(size, box))
    return cutout


# --- geometry -----------------------------------------------------------------------------------


def test_subject_box_ignores_faint_haze_but_keeps_the_fringe() -> None:
    mask = mask_with_box((100, 80), (20, 10, 60, 50))
    ImageDraw.Draw(mask).point((5, 5), fill=product.SUBJECT_ALPHA - 1)  # haze: not subject
    ImageDraw.Draw(mask).point((90, 70), fill=product.SUBJECT_ALPHA)  # fringe: subject
    assert product.subject_box(mask) == (20, 10, 91, 71)
    assert product.subject_box(Image.new("L", (10, 10), product.SUBJECT_ALPHA - 1)) is None


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        (0, (20, 10, 60, 50)),
        (5, (15, 5, 65, 55)),
        ("10%", (16, 6, 64, 54)),  # 10 % of the box's longer side (40) = 4
        (1000, (0, 0, 100, 80)),  # clamped to the image
    ],
)
def test_crop_to_the_subject_with_a_margin(margin: int | str, expected: tuple[int, ...]) -> None:
    made = cutout_with_box((100, 80), (20, 10, 60, 50))
    shot = product.finish(made, OutputConfig(crop="subject", margin=margin), None)
    assert shot.size == (expected[2] - expected[0], expected[3] - expected[1])
    assert shot.mode == "RGBA"
    # the subject sits inside the margin: its box in the result
    box = product.subject_box(shot.getchannel("A"))
    assert box == (20 - expected[0], 10 - expected[1], 60 - expected[0], 50 - expected[1])


@pytest.mark.parametrize(
    ("subject", "canvas", "fill", "align", "box"),
    [
        # a 100x100 subject on 200x200 at fill 0.8 takes 160 px, centred: 20 px each side
        ((100, 100), (200, 200), 0.8, "center", (20, 20, 180, 180)),
        # wide subject: its longer side takes the fill; centred vertically
        ((80, 20), (200, 200), 0.5, "center", (50, 87, 150, 112)),
        # bottom: the gap below is the one a full-height subject would leave (10 % of 200)
        ((80, 20), (200, 200), 0.8, "bottom", (20, 140, 180, 180)),
        # never enlarged more than MAX_UPSCALE (2x): a 10x10 subject becomes 20x20
        ((10, 10), (400, 400), 0.9, "center", (190, 190, 210, 210)),
    ],
)
def test_canvas_places_the_subject(
    subject: tuple[int, int], canvas: tuple[int, int], fill: float, align: str, box: tuple[int, ...]
) -> None:
    made = cutout_with_box((300, 240), (100, 50, 100 + subject[0], 50 + subject[1]))
    output = OutputConfig(canvas=f"{canvas[0]}x{canvas[1]}", fill=fill, align=align)
    shot = product.finish(made, output, None)
    assert shot.size == canvas
    measured = product.subject_box(shot.getchannel("A"))
    assert measured is not None
    assert all(abs(a - b) <= 1 for a, b in zip(measured, box, strict=True)), measured


def test_a_mask_gets_the_same_geometry_and_no_background(tmp_path: Path) -> None:
    mask = mask_with_box((300, 240), (100, 50, 140, 90))
    picture = _png(Image.new("RGB", (50, 50), (0, 0, 255)))
    shot = product.finish(mask, OutputConfig(canvas="100x100", fill=0.5), picture)
    assert (shot.mode, shot.size) == ("L", (100, 100))
    assert product.subject_box(shot) == (25, 25, 75, 75)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_background_image_covers_the_output_behind_the_subject() -> None:
    made = cutout_with_box((120, 60), (40, 20, 80, 40))
    picture = _png(Image.new("RGB", (30, 30), (0, 0, 255)))  # small, square: scaled to cover
    shot = product.finish(made, OutputConfig(background_image="/srv/bg.png"), picture)
    assert (shot.mode, shot.size) == ("RGB", (120, 60))
    assert shot.getpixel((5, 5)) == (0, 0, 255)  # the picture where there is no subject
    assert shot.getpixel((60, 30)) == (200, 30, 30)  # the subject over it


def test_a_background_image_that_is_no_picture_fails_the_file_with_the_key() -> None:
    made = cutout_with_box((120, 60), (40, 20, 80, 40))
    with pytest.raises(InputRejected, match="background_image cannot be read as a picture"):
        product.finish(made, OutputConfig(background_image="/srv/bg.png"), b"not an image")


@pytest.mark.parametrize(
    ("output", "names"),
    [
        (OutputConfig(crop="subject"), 'crop = "subject"'),
        (OutputConfig(canvas="100x100"), "canvas"),
        (OutputConfig(background_image="/srv/bg.png"), "background_image"),
    ],
)
def test_an_empty_mask_fails_instead_of_a_blank_canvas(output: OutputConfig, names: str) -> None:
    empty = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    with pytest.raises(InputRejected) as info:
        product.finish(empty, output, _png(Image.new("RGB", (8, 8))))
    assert "nothing was found in this image" in str(info.value)
    assert names in str(info.value)


def test_reshapes_only_when_asked() -> None:
    assert not product.reshapes(OutputConfig())
    assert not product.reshapes(OutputConfig(margin=20, fill=0.5, align="bottom"))
    assert product.reshapes(OutputConfig(crop="subject"))
    assert product.reshapes(OutputConfig(canvas="10x10"))


# --- quality figures ----------------------------------------------------------------------------


def test_figures_of_a_drawn_mask() -> None:
    mask = mask_with_box((100, 100), (0, 20, 50, 60))  # 50x40 solid, touching the left edge
    ImageDraw.Draw(mask).rectangle((60, 60, 69, 69), fill=128)  # 100 uncertain pixels
    figures = quality.measure(mask)
    assert figures.coverage == pytest.approx((2000 + 100) / 10_000)
    assert figures.uncertain == pytest.approx(100 / 2100)
    assert figures.clipped == ("left",)
    assert quality.measure(Image.new("L", (10, 10), 0)) == quality.Figures(0.0, 0.0, ())
    assert quality.measure(Image.new("L", (10, 10), 255)).clipped == quality.EDGES


def test_a_stray_pixel_on_an_edge_is_no_clipping() -> None:
    mask = Image.new("L", (400, 400), 0)
    mask.putpixel((0, 200), 255)  # 1 of 400 pixels of the left edge: below EDGE_SHARE
    assert quality.measure(mask).clipped == ()


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("coverage < 0.02", "coverage < 0.02"),
        ("  uncertain>0.08 ", "uncertain > 0.08"),
        ("clipped", "clipped top bottom left right"),
        ("clipped left right", "clipped left right"),
    ],
)
def test_conditions_parse(text: str, normalised: str) -> None:
    assert quality.parse_condition(text).text == normalised


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("coverage = 0.2", "is not a condition"),
        ("coverage < 2", "a share from 0 to 1"),
        ("sharpness > 0.1", "is not a condition"),
        ("clipped middle", "'middle' is not an edge"),
    ],
)
def test_bad_conditions_say_what_is_expected(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        quality.parse_condition(text)


def test_tripped_names_the_figure_and_the_condition() -> None:
    conditions = quality.parse_conditions(["coverage < 0.02", "clipped left right"])
    ok = quality.Figures(0.3, 0.05, ("bottom",))
    assert quality.tripped([ok], conditions) == []
    bad = quality.Figures(0.01, 0.05, ("left",))
    assert quality.tripped([bad], conditions) == [
        "coverage is 0.010 (coverage < 0.02)",
        "the subject touches the left edge (clipped left right)",
    ]
    assert quality.tripped([ok, bad], conditions)[0].startswith("page 2: ")


def test_the_sheet_shows_three_panels_side_by_side() -> None:
    original = Image.new("RGB", (400, 200), (10, 200, 10))
    sheet = Image.open(
        io.BytesIO(make_sheet(original, cutout_with_box((400, 200), (100, 50, 300, 150))))
    )
    from watchd.imaging.review_sheet import GAP, PANEL_HEIGHT

    assert sheet.size == (3 * 720 + 2 * GAP, PANEL_HEIGHT)
    assert sheet.getpixel((10, 10)) == (10, 200, 10)  # the original
    assert sheet.getpixel((2 * 720 + 2 * GAP + 360, 180)) == (255, 255, 255)  # the mask: subject


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"crop": "box"}, "crop", "must be one of 'none', 'subject'"),
        ({"margin": "5"}, "margin", 'a percentage ("5%")'),
        ({"margin": -3}, "margin", "pixels from 0 to 100000"),
        ({"margin": "x%"}, "margin", "a percentage such as"),
        ({"margin": True}, "margin", "expected pixels (24)"),
        ({"canvas": "2000"}, "canvas", 'a size like "2000x2000"'),
        ({"canvas": "0x10"}, "canvas", 'a size like "2000x2000"'),
        ({"canvas": "30000x10"}, "canvas", "at most 20000 pixels"),
        ({"canvas": 2000}, "canvas", 'a size like "2000x2000"'),
        ({"fill": 0}, "fill", "at least 0.05 and at most 1"),
        ({"fill": 1.5}, "fill", "at least 0.05 and at most 1"),
        ({"align": "top"}, "align", "must be one of 'center', 'bottom'"),
        ({"background_image": ""}, "background_image", "non-empty string"),
        (
            {"background_image": "bg.png", "background": "#ffffff"},
            "background_image",
            "not both",
        ),
        ({"review": 3}, "review", "non-empty string"),
        ({"review_if": "coverage < 0.02"}, "review_if", '"default" or a list'),
        ({"review_if": ["coverage = 1"]}, "review_if", "is not a condition"),
        ({"review_if": ["clipped up"]}, "review_if", "'up' is not an edge"),
    ],
)
def test_bad_values_name_the_file_and_the_key(
    changes: dict[str, Any], key: str, fragment: str, tmp_path: Path
) -> None:
    message = config_error(with_watch(**changes), tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: watch[0].{key}: "), message
    assert fragment in message, message


def test_good_values_parse(tmp_path: Path) -> None:
    from watchd.config import build_config

    raw = with_watch(
        crop="subject",
        margin="5%",
        canvas="2000x2000",
        fill=0.9,
        align="bottom",
        background_image="bg/white.jpg",
        review_if="default",
    )
    watch = build_config(raw, source=tmp_path / "w.toml", base=tmp_path).watches[0]
    assert watch.output.canvas == "2000x2000"
    assert watch.output.margin == "5%"
    assert watch.output.background_image == str(tmp_path / "bg" / "white.jpg")
    assert watch.review_if == quality.DEFAULT_REVIEW_IF
    assert watch.review is not None and watch.review.name == "review"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b'canvas = "big"\n', 'canvas: expected a size like "2000x2000"'),
        (b"margin = -1\n", "margin: expected pixels from 0 to 100000"),
        (b'crop = "all"\n', "crop: must be one of"),
        (b"fill = 2\n", "fill: must be at least 0.05 and at most 1, got 2"),
        (b'align = "top"\n', "align: must be one of 'center', 'bottom'"),
        (b'background = "red"\n', 'background: expected a colour like "#ffffff"'),
        (b'background_image = "/etc/x.png"\n', "background_image: not allowed in a job's"),
        (b'review_if = ["coverage < 0.5"]\n', "review_if: not allowed in a job's"),
    ],
)
def test_a_sidecar_names_itself_and_the_key(text: bytes, fragment: str, tmp_path: Path) -> None:
    from watchd.config import build_config

    watch = build_config(with_watch(), source=tmp_path / "w.toml", base=tmp_path).watches[0]
    sidecar = tmp_path / "album" / "watchd.toml"
    with pytest.raises(ConfigError) as info:
        sidecar_overrides(sidecar, text, watch)
    assert str(info.value).startswith(f"{sidecar}: "), info.value
    assert fragment in str(info.value)


def test_a_sidecar_sets_product_options_and_keeps_the_watchs_picture(tmp_path: Path) -> None:
    from watchd.config import build_config

    raw = with_watch(background_image="bg.png")
    watch = build_config(raw, source=tmp_path / "w.toml", base=tmp_path).watches[0]
    text = b'canvas = "800x600"\nfill = 0.7\nalign = "bottom"\ncrop = "subject"\nmargin = 12\n'
    overrides = sidecar_overrides(tmp_path / "a" / "watchd.toml", text, watch)
    assert overrides.output == replace(
        watch.output, canvas="800x600", fill=0.7, align="bottom", crop="subject", margin=12
    )


# --- the worker's whole path, with the real model -------------------------------------------------


@pytest.mark.usefixtures("fresh_worker")
def test_process_makes_a_finished_shot_and_the_figures(
    photos: dict[str, Path], model_store: ModelStore
) -> None:
    from watchd.pool.worker import init_worker
    from watchd.pool.worker import run as process

    init_worker(model_store.worker_env(), 1, ("u2netp",))
    data = photos["astronaut.jpg"].read_bytes()
    output = OutputConfig(canvas="500x500", fill=0.8)
    review_if = ("coverage < 0.9",)
    result = process(Task(file_id=1, data=data, model="u2netp", output=output, review_if=review_if))
    shot = Image.open(io.BytesIO(result.data))
    assert shot.size == (500, 500)
    box = product.subject_box(shot.getchannel("A"))
    assert box is not None
    longer = max(box[2] - box[0], box[3] - box[1])
    assert abs(longer - 400) <= 2  # the subject's longer side takes 80 % of the canvas
    [figures] = result.quality
    assert 0.2 < figures.coverage < 0.7 and "bottom" in figures.clipped
    assert result.review == (f"coverage is {figures.coverage:.3f} (coverage < 0.9)",)
    assert result.sheet is not None and Image.open(io.BytesIO(result.sheet)).height == 360
    plain = process(Task(file_id=2, data=data, model="u2netp"))
    assert plain.review == () and plain.sheet is None
    assert plain.quality == result.quality  # measured before the product steps
    assert Image.open(io.BytesIO(plain.data)).size == (512, 512)


# --- preflight: the files and folders the new keys name ------------------------------------------


def _problems(tmp_path: Path, **changes: Any) -> dict[str, str]:
    from watchd.config import build_config
    from watchd.preflight import check

    config = build_config(with_watch(**changes), source=tmp_path / "w.toml", base=tmp_path)
    return {p.key: p.message for p in check(config, missing="ignore")}


def test_preflight_refuses_a_background_image_that_is_missing_or_no_picture(
    tmp_path: Path,
) -> None:
    problems = _problems(tmp_path, background_image="nowhere.png")
    assert "is not a regular file" in problems["watch[0].background_image"]
    (tmp_path / "notes.png").write_text("not a picture")
    problems = _problems(tmp_path, background_image="notes.png")
    assert "is not a picture watchd can read" in problems["watch[0].background_image"]
    Image.new("RGB", (8, 8)).save(tmp_path / "white.png")
    assert "watch[0].background_image" not in _problems(tmp_path, background_image="white.png")


def test_preflight_wants_the_review_folder_only_with_review_if(tmp_path: Path) -> None:
    from watchd.config import build_config
    from watchd.preflight import check

    def problems(**changes: Any) -> dict[str, str]:
        raw = with_watch(review="held", **changes)
        config = build_config(raw, source=tmp_path / "w.toml", base=tmp_path)
        return {p.key: p.message for p in check(config)}  # a missing folder is an error

    assert "does not exist" in problems(review_if=["coverage < 0.02"])["watch[0].review"]
    assert "watch[0].review" not in problems()  # no review_if: nothing is ever held


def test_stats_count_each_watchs_figures_and_held_files() -> None:
    from watchd.stats import Activity

    activity = Activity()
    assert activity.quality("photos") == {
        "outputs": 0,
        "held_for_review": 0,
        "coverage_mean": None,
        "uncertain_mean": None,
        "clipped": {"top": 0, "bottom": 0, "left": 0, "right": 0},
    }
    page = {"coverage": 0.5, "uncertain": 0.1, "clipped": ["bottom"]}
    activity.record_quality("photos", [page, {**page, "coverage": 0.3}], held=False)
    activity.record_quality("photos", [{**page, "clipped": ["left", "right"]}], held=True)
    figures = activity.quality("photos")
    assert (figures["outputs"], figures["held_for_review"]) == (3, 1)
    assert figures["coverage_mean"] == pytest.approx(0.4333, abs=1e-4)
    assert figures["clipped"] == {"top": 0, "bottom": 2, "left": 1, "right": 1}
    assert activity.quality("scans")["outputs"] == 0
