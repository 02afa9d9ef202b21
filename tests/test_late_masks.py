"""A hand-edited mask dropped after its original (watchd/late_masks.py): the lookup of the
earlier original and the job that remakes its output, with the real ledger, intake, spool,
dispatcher and the worker's ``process`` run inline (no model: tests/test_masks.py).
The real daemon on a real photo is in tests/test_e2e_cache.py.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.dispatch_support import make_dispatch_rig
from tests.test_masks import InlinePool, Rig, half_mask, photo, png
from watchd.files import error_note_path
from watchd.late_masks import earlier_original
from watchd.masks import LONE_MASK


class LateRig(Rig):
    def drop_file(self, name: str, data: bytes) -> int:
        path = self.root / "drops" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.run(path)

    def alpha(self, path: Path) -> np.ndarray:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            return np.asarray(image.getchannel("A"))


@pytest.fixture
def late(tmp_path: Path) -> Iterator[LateRig]:
    inner = make_dispatch_rig(tmp_path, InlinePool())
    yield LateRig(**{f.name: getattr(inner, f.name) for f in dataclasses.fields(inner)})
    inner.ledger.close()


def test_the_lookup_finds_the_latest_cutout_whose_original_is_archived(late: LateRig) -> None:
    first = late.drop_folder({"a.png": png(photo()), "a.v2.png": png(photo())})
    second = late.drop_file("a.jpg", png(photo()))  # a later photo named a.*
    by_job = {f.job_id: f for f in late.ledger.done_files_named("photos", "a")}
    assert set(by_job) == {first, second}
    found = earlier_original(late.ledger, "photos", "a")
    assert found is not None and found.job_id == second  # the latest; a.v2.png never
    assert found.archive == late.root / "archive" / "a.jpg"
    os.remove(found.archive)  # its original left the archive: the one before it
    found = earlier_original(late.ledger, "photos", "a")
    assert found is not None and found.rel == "a.png" and found.job_id == first
    assert earlier_original(late.ledger, "photos", "b") is None
    assert earlier_original(late.ledger, "another watch", "a") is None


def test_a_file_whose_output_was_a_mask_is_passed_over(tmp_path: Path) -> None:
    inner = make_dispatch_rig(tmp_path, InlinePool(), 'format = "mask"')
    rig = LateRig(**{f.name: getattr(inner, f.name) for f in dataclasses.fields(inner)})
    rig.drop_file("a.png", png(photo()))
    assert earlier_original(rig.ledger, "photos", "a") is None  # no cutout to correct
    inner.ledger.close()


def test_a_mask_dropped_later_replaces_the_output_without_the_model(late: LateRig) -> None:
    late.drop_folder({"a.png": png(photo())})
    output = late.root / "outbox" / "shoot" / "a.png"
    original = late.root / "archive" / "shoot" / "a.png"
    before = original.read_bytes()
    assert output.exists()
    late.pool.tasks.clear()

    job = late.drop_file("a.mask.png", png(half_mask()))

    [file] = late.ledger.job_detail(job).files
    assert (file.rel, file.state, file.output) == ("a.png", "done", output)
    [task] = late.pool.tasks
    assert task.mask_name == "a.mask.png"  # run from the mask: InlinePool has no model
    assert np.array_equal(late.alpha(output), np.asarray(half_mask()))  # replaced in place
    assert original.read_bytes() == before  # the original stays in the archive
    assert (late.root / "archive" / "shoot" / "a.mask.png").read_bytes() == png(half_mask())
    assert not (late.root / "outbox" / "shoot" / "a (2).png").exists()
    assert list((late.root / "state" / "spool").iterdir()) == []
    assert not (late.root / "drops" / "a.mask.png").exists()  # taken, like any drop

    # corrected again: the latest finished file is the correction, its original the same
    again = half_mask()
    again.paste(255, (30, 0, 40, 10))
    late.drop_file("a.mask.png", png(again))
    assert np.array_equal(late.alpha(output), np.asarray(again))
    assert original.read_bytes() == before


def test_a_late_mask_of_the_wrong_size_fails_and_keeps_the_earlier_output(late: LateRig) -> None:
    late.drop_folder({"a.png": png(photo())})
    output = late.root / "outbox" / "shoot" / "a.png"
    earlier = output.read_bytes()

    job = late.drop_file("a.mask.png", png(half_mask((10, 10))))

    [file] = late.ledger.job_detail(job).files
    assert file.state == "failed"
    note = error_note_path(late.root / "failed" / "a.png").read_text()
    assert "a.mask.png is 10 x 10 pixels but the image is 40 x 30" in note
    assert output.read_bytes() == earlier  # never a partial, never a lost output
    assert (late.root / "archive" / "shoot" / "a.png").exists()
    assert list((late.root / "state" / "spool").iterdir()) == []


def test_a_late_mask_without_an_archived_original_fails_with_the_reason(late: LateRig) -> None:
    late.drop_folder({"a.png": png(photo())})
    os.remove(late.root / "archive" / "shoot" / "a.png")  # the original is gone
    job = late.drop_file("a.mask.png", png(half_mask()))
    [file] = late.ledger.job_detail(job).files
    assert (file.rel, file.state) == ("a.mask.png", "failed")
    assert LONE_MASK in error_note_path(late.root / "failed" / "a.mask.png").read_text()
    assert (late.root / "failed" / "a.mask.png").read_bytes() == png(half_mask())  # kept


def test_an_ambiguous_mask_is_not_taken_for_a_late_one(late: LateRig) -> None:
    late.drop_folder({"a.png": png(photo())})
    folder = late.root / "drops" / "again"
    folder.mkdir()
    for name, data in {"a.jpg": png(photo()), "a.tif": png(photo())}.items():
        (folder / name).write_bytes(data)
    (folder / "a.mask.png").write_bytes(png(half_mask()))
    job = late.run(folder)
    states = {f.rel: f.state for f in late.ledger.job_detail(job).files}
    assert states == {"a.jpg": "done", "a.tif": "done", "a.mask.png": "failed"}
    assert len(late.ledger.list_jobs()) == 2  # no third job remade a.png from the mask
