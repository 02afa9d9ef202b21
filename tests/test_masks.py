"""Hand-edited masks (issue 18, section 4): pairing at intake, decoding, composing, the worker.

Real parts: real PNG/JPEG bytes, the worker's real ``process`` (in this process; a task
with a mask never needs a model, which :func:`no_model` proves), the real ledger,
intake, spool and dispatcher. The pool runs ``process`` inline (:class:`InlinePool`).
The real daemon on real photos is in tests/test_e2e_cache.py.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.dispatch_support import DispatchRig, ImmediatePool, make_dispatch_rig
from watchd.config import OutputConfig
from watchd.errors import InputRejected
from watchd.files import error_note_path
from watchd.masks import LONE_MASK, decode_mask, flatten, from_mask, mask_stem, pair_masks
from watchd.pipeline import process
from watchd.pool.task import Result, Task


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def photo(size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def half_mask(size: tuple[int, int] = (40, 30)) -> Image.Image:
    """White (kept) on the left half, black (removed) on the right."""
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


class NoModel:
    """A worker's sessions that refuse to load any model: what a task with a hand-edited
    mask must never ask for."""

    threads = 1

    def get(self, *_args: object) -> None:
        raise AssertionError("a task with a hand-edited mask loaded a model")


def run(task: Task) -> Result:
    """The worker's recipe for one file, with sessions that have no model."""
    return process(task, NoModel())  # type: ignore[arg-type]


@pytest.fixture
def no_model() -> None:
    """(Kept as a marker of the tests that prove no model is needed: :func:`run`.)"""


# --- names and pairs ------------------------------------------------------------------------------


def test_mask_names() -> None:
    assert mask_stem("photo.mask.png") == "photo"
    assert mask_stem("shoot/Photo.MASK.PNG") == "shoot/Photo"
    assert mask_stem("photo.png") is None
    assert mask_stem(".mask.png") is None
    assert mask_stem("shoot/.mask.png") is None


def test_pairs_by_folder_and_stem_and_leaves_lone_or_ambiguous_masks() -> None:
    rels = [
        "a.jpg",
        "a.mask.png",
        "sub/a.tif",  # another folder: its own stem
        "b.jpg",
        "b.png",
        "b.mask.png",  # ambiguous: b.jpg or b.png
        "c.mask.png",  # no original
    ]
    by_id = {id(r): r for r in rels}
    inputs, pairs, lone = pair_masks(rels, by_id)
    assert inputs == ["a.jpg", "sub/a.tif", "b.jpg", "b.png"]
    assert pairs == {"a.jpg": "a.mask.png"}
    assert sorted(lone) == ["b.mask.png", "c.mask.png"]


# --- decoding and composing -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "1"])
def test_a_mask_as_any_editor_saves_it_is_read_as_greyscale(mode: str) -> None:
    mask = half_mask()
    if mode == "I;16":
        saved = Image.fromarray(np.asarray(mask, dtype=np.uint16) * 257)
    else:
        saved = mask.convert(mode)
    decoded = decode_mask(png(saved), (40, 30), "a.mask.png")
    assert decoded.mode == "L"
    assert np.array_equal(np.asarray(decoded), np.asarray(mask))


def test_transparent_pixels_of_a_mask_count_as_removed() -> None:
    mask = Image.new("RGBA", (40, 30), (255, 255, 255, 255))
    mask.paste((255, 255, 255, 0), (20, 0, 40, 30))
    decoded = decode_mask(png(mask), (40, 30), "a.mask.png")
    assert np.array_equal(np.asarray(decoded), np.asarray(half_mask()))


def test_a_mask_of_another_size_fails_with_both_sizes() -> None:
    with pytest.raises(InputRejected) as caught:
        decode_mask(png(half_mask((20, 15))), (40, 30), "shoot/a.mask.png")
    message = str(caught.value)
    assert "shoot/a.mask.png is 20 x 15 pixels but the image is 40 x 30" in message


def test_a_mask_that_is_no_png_fails_with_its_name() -> None:
    buffer = io.BytesIO()
    half_mask().save(buffer, "JPEG")
    with pytest.raises(InputRejected, match=r"a\.mask\.png is not a readable PNG"):
        decode_mask(buffer.getvalue(), (40, 30), "a.mask.png")


def compose(image: Image.Image, mask: Image.Image, output: OutputConfig) -> Image.Image:
    """What a worker encodes from an image and its mask when no product step runs."""
    return flatten(from_mask(image, mask, output), output)


def test_compose_gives_the_mask_the_cutout_or_the_cutout_on_a_colour() -> None:
    image, mask = photo(), half_mask()
    assert compose(image, mask, OutputConfig(format="mask")) is mask
    cutout = np.asarray(compose(image, mask, OutputConfig()))
    assert cutout.shape == (30, 40, 4)
    assert np.array_equal(cutout[:, :, 3], np.asarray(mask))
    assert np.array_equal(cutout[:, :20, :3], np.asarray(image)[:, :20])
    white = np.asarray(compose(image, mask, OutputConfig(background="#ffffff")))
    assert white.shape == (30, 40, 3)
    assert (white[:, 20:] == 255).all()


# --- the worker -----------------------------------------------------------------------------------


def test_the_worker_uses_the_mask_without_a_model(no_model: None) -> None:
    image = photo()
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    result = run(
        Task(1, buffer.getvalue(), "u2netp", OutputConfig(), mask=png(half_mask()), mask_name="m")
    )
    out = Image.open(io.BytesIO(result.data))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[:, :, 3], np.asarray(half_mask()))


def test_the_worker_refuses_a_mask_of_the_wrong_size(no_model: None) -> None:
    task = Task(
        1, png(photo()), "u2netp", OutputConfig(), mask=png(half_mask((41, 30))), mask_name="m"
    )
    with pytest.raises(InputRejected, match="41 x 30 pixels but the image is 40 x 30"):
        run(task)


# --- intake and dispatcher ------------------------------------------------------------------------


class InlinePool(ImmediatePool):
    """Runs the worker's ``process`` in this process for a task with a mask; a task
    without one (which would need the model) gets the stand-in cutout."""

    def answer(self, task: Task) -> Result:
        return super().answer(task) if task.mask is None else run(task)


class Rig(DispatchRig):
    def drop_folder(self, files: dict[str, bytes]) -> int:
        folder = self.root / "drops" / "shoot"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return self.run(folder)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    inner = make_dispatch_rig(tmp_path, InlinePool(), 'duplicates = "reuse"')
    yield Rig(**{f.name: getattr(inner, f.name) for f in dataclasses.fields(inner)})
    inner.ledger.close()


def test_a_mask_dropped_with_its_original_makes_the_output(rig: Rig, no_model: None) -> None:
    job = rig.drop_folder({"a.png": png(photo()), "a.mask.png": png(half_mask())})
    detail = rig.ledger.job_detail(job)
    assert [(f.rel, f.state) for f in detail.files] == [("a.png", "done")]  # the mask: no input
    assert detail.options.masks == {"a.png": "a.mask.png"}
    [task] = rig.pool.tasks
    assert task.mask_name == "a.mask.png"
    out = Image.open(io.BytesIO((rig.root / "outbox" / "shoot" / "a.png").read_bytes()))
    assert np.array_equal(np.asarray(out)[:, :, 3], np.asarray(half_mask()))
    # the mask travelled with its job, like a sidecar; nothing is left in the spool
    assert (rig.root / "archive" / "shoot" / "a.mask.png").read_bytes() == png(half_mask())
    assert list((rig.root / "state" / "spool").iterdir()) == []


def test_a_mask_of_the_wrong_size_fails_its_original_with_the_reason(
    rig: Rig, no_model: None
) -> None:
    job = rig.drop_folder({"a.png": png(photo()), "a.mask.png": png(half_mask((10, 10)))})
    [file] = rig.ledger.job_detail(job).files
    assert file.state == "failed"
    note = error_note_path(rig.root / "failed" / "shoot" / "a.png").read_text()
    assert "a.mask.png is 10 x 10 pixels but the image is 40 x 30" in note
    assert list((rig.root / "state" / "spool").iterdir()) == []


def test_a_mask_without_its_original_is_failed_with_the_reason(rig: Rig, no_model: None) -> None:
    job = rig.drop_folder({"b.png": png(photo()), "a.mask.png": png(half_mask())})
    states = {f.rel: f.state for f in rig.ledger.job_detail(job).files}
    assert states == {"b.png": "done", "a.mask.png": "failed"}
    note = error_note_path(rig.root / "failed" / "shoot" / "a.mask.png").read_text()
    assert LONE_MASK in note
    assert [t.mask for t in rig.pool.tasks] == [None]  # b.png went to the (here: no) model


def test_a_mask_larger_than_max_file_bytes_fails_its_original(tmp_path: Path) -> None:
    inner = make_dispatch_rig(tmp_path, InlinePool(), "max_file_bytes = 1000")
    rig = Rig(**{f.name: getattr(inner, f.name) for f in dataclasses.fields(inner)})
    small = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(small, "JPEG")
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 255, (30, 40), dtype=np.uint8))
    assert len(small.getvalue()) < 1000 < len(png(noise))
    job = rig.drop_folder({"a.jpg": small.getvalue(), "a.mask.png": png(noise)})
    [file] = rig.ledger.job_detail(job).files
    assert file.state == "failed"
    note = error_note_path(tmp_path / "failed" / "shoot" / "a.jpg").read_text()
    assert "the hand-edited mask a.mask.png could not be used" in note
    assert rig.pool.tasks == []
    inner.ledger.close()
