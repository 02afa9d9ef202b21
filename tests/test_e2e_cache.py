"""Issue 18, sections 3 and 4, end to end: the real daemon, the real model, real photos.

* ``duplicates = "reuse"`` and ``"skip"`` after a restart: the cache is a folder and a
  ledger table, so a photo processed before the restart is known after it.
* The hand-edited mask round trip of docs/outputs.md: the ``format = "mask"`` output,
  edited, dropped back beside the original; and the model's mask (the cutout's alpha),
  edited, dropped alone later: the output is remade from the archived original.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support import DaemonProcess, jobs_ended, wait_for, write_config
from tests.test_e2e_operators import cli, cli_json
from watchd.files import error_note_path
from watchd.masks import LONE_MASK
from watchd.models import ModelStore


def drop(root: Path, source: Path, name: str) -> None:
    """Drop a copy of ``source`` as ``name``: written beside the inbox, renamed in whole."""
    staging = root / "staging"
    staging.mkdir(exist_ok=True)
    shutil.copyfile(source, staging / name)
    os.rename(staging / name, root / "inbox" / name)


def drop_folder(root: Path, name: str, files: dict[str, Path | Image.Image | bytes]) -> None:
    folder = root / "staging" / name
    folder.mkdir(parents=True)
    for rel, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, folder / rel)
        elif isinstance(content, Image.Image):
            content.save(folder / rel, "PNG")
        else:
            (folder / rel).write_bytes(content)
    os.rename(folder, root / "inbox" / name)


def opened(path: Path) -> Image.Image:
    """An image file, read whole and closed."""
    with Image.open(path) as image:
        image.load()
        return image.copy()


def done_event(daemon: DaemonProcess, output: Path) -> dict[str, object]:
    [event] = [e for e in daemon.events("file.done") if e["output"] == str(output)]
    return event


def test_reuse_and_skip_after_a_restart(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], model_store: ModelStore
) -> None:
    daemon = daemon_factory(watch__duplicates="reuse").start()
    root = daemon.root
    outbox = root / "outbox"
    drop(root, photos["astronaut.jpg"], "astronaut.jpg")
    wait_for(lambda: daemon.count("job.done") == 1 and jobs_ended(root), what="first job")
    made = (outbox / "astronaut.png").read_bytes()
    first = done_event(daemon, outbox / "astronaut.png")
    assert "infer_s" in first and "reused_from" not in first
    cached = [p for p in (root / "state" / "cache").rglob("*.1")]
    assert len(cached) == 1 and cached[0].read_bytes() == made
    assert daemon.stop() == 0

    daemon.start()  # a restart: the same ledger and cache folder
    drop(root, photos["astronaut.jpg"], "again.jpg")
    wait_for(lambda: daemon.count("job.done") == 2 and jobs_ended(root), what="the re-drop")
    assert (outbox / "again.png").read_bytes() == made
    again = done_event(daemon, outbox / "again.png")
    assert (again["reused_from"], again["reused_job"]) == (first["file"], first["job"])
    assert "infer_s" not in again  # no worker saw it
    manifest = json.loads((outbox / "again.manifest.json").read_text())
    assert manifest["inputs"][0]["reused_from"] == first["file"]
    shown = cli(daemon, "job", str(again["job"]))  # and `watchd job` says so
    assert f"again.png (reused from file {first['file']})" in shown.stdout, shown.stderr
    [file] = cli_json(daemon, "job", str(again["job"]))["files"]
    assert file["reused_from"] == first["file"]
    assert (root / "archive" / "again.jpg").exists()
    # another photo is new work, and the same photo with other options too (a sidecar)
    drop_folder(
        root,
        "album",
        {"astronaut.jpg": photos["astronaut.jpg"], "watchd.toml": b'format = "webp"\n'},
    )
    wait_for(lambda: daemon.count("job.done") == 3 and jobs_ended(root), what="the album")
    assert "infer_s" in done_event(daemon, outbox / "album" / "astronaut.webp")
    assert daemon.stop() == 0

    daemon.config.write_text(write_config(root, model_store, watch__duplicates="skip"))
    daemon.start()
    drop(root, photos["astronaut.jpg"], "third.jpg")
    wait_for(lambda: daemon.count("job.done") == 4 and jobs_ended(root), what="the skipped drop")
    assert not (outbox / "third.png").exists()
    assert (root / "failed" / "third.jpg").read_bytes() == photos["astronaut.jpg"].read_bytes()
    note = error_note_path(root / "failed" / "third.jpg").read_text()
    assert f"as astronaut.jpg of job {first['job']} (file {first['file']}" in note
    assert 'duplicates = "skip"' in note
    assert daemon.stop() == 0


def test_a_hand_edited_mask_round_trip(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    outbox = root / "outbox"
    # 1. the model's mask of the photo
    drop_folder(
        root, "first", {"coffee.png": photos["coffee.png"], "watchd.toml": b'format = "mask"\n'}
    )
    wait_for(lambda: daemon.count("job.done") == 1 and jobs_ended(root), what="the mask")
    mask = opened(outbox / "first" / "coffee.png")
    assert mask.mode == "L"
    # 2. corrected in "an image editor": the left half removed, a square in it kept
    edited = np.asarray(mask).copy()
    width = edited.shape[1]
    edited[:, : width // 2] = 0
    edited[10:60, 10:60] = 255
    edited_image = Image.fromarray(edited).convert("RGB")  # editors often save RGB
    # 3. dropped back beside the original, and a mask of the wrong size with another photo
    wrong = Image.new("L", (64, 64), 255)
    drop_folder(
        root,
        "fixed",
        {
            "coffee.png": photos["coffee.png"],
            "coffee.mask.png": edited_image,
            "rocket.jpg": photos["rocket.jpg"],
            "rocket.mask.png": wrong,
        },
    )
    wait_for(lambda: daemon.count("job.done") == 2 and jobs_ended(root), what="the fixed job")
    out = opened(outbox / "fixed" / "coffee.png")
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[:, :, 3], edited)  # exactly the edited mask
    note = error_note_path(root / "failed" / "fixed" / "rocket.jpg").read_text()
    rocket = opened(photos["rocket.jpg"])
    assert (
        f"rocket.mask.png is 64 x 64 pixels but the image is {rocket.width} x {rocket.height}"
        in note
    )
    # the masks went with their job; no output was made from a mask file itself
    assert (root / "archive" / "fixed" / "coffee.mask.png").exists()
    assert not (outbox / "fixed" / "coffee.mask.png").exists()
    assert daemon.stop() == 0


def test_a_mask_dropped_after_its_original_replaces_the_cutout(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], tmp_path: Path
) -> None:
    daemon = daemon_factory(watch__manifest=False).start()
    root = daemon.root
    output = root / "outbox" / "coffee.png"
    drop(root, photos["coffee.png"], "coffee.png")
    wait_for(lambda: daemon.count("job.done") == 1, what="the first cutout")
    assert (root / "archive" / "coffee.png").exists()
    # the model's mask is the cutout's alpha; corrected in "an image editor", saved as RGB
    edited = np.asarray(opened(output).getchannel("A")).copy()
    edited[:, : edited.shape[1] // 2] = 0
    edited[10:60, 10:60] = 255
    Image.fromarray(edited).convert("RGB").save(tmp_path / "coffee.mask.png")
    drop(root, tmp_path / "coffee.mask.png", "coffee.mask.png")
    wait_for(lambda: daemon.count("job.done") == 2, what="the corrected cutout")
    assert np.array_equal(np.asarray(opened(output))[:, :, 3], edited)  # replaced in place
    assert sorted(p.name for p in (root / "outbox").iterdir()) == ["coffee.png"]
    assert (root / "archive" / "coffee.png").exists()  # the original stays archived
    assert (root / "archive" / "coffee.mask.png").exists()  # the mask beside it
    [event] = daemon.events("job.accepted")[1:]
    assert event["mask_after"] == 1  # made from file 1's original, without the model

    # a mask of another size: fails with the reason; the corrected cutout stays
    corrected = output.read_bytes()
    Image.new("L", (64, 64), 255).save(tmp_path / "small.png")
    drop(root, tmp_path / "small.png", "coffee.mask.png")
    note = error_note_path(root / "failed" / "coffee.png")
    wait_for(note.exists, what="the wrong size failed")
    assert "coffee.mask.png is 64 x 64 pixels but the image is" in note.read_text()
    assert output.read_bytes() == corrected
    # a mask whose original was never processed: failed with the reason, kept
    drop(root, tmp_path / "small.png", "tea.mask.png")
    lone = error_note_path(root / "failed" / "tea.mask.png")
    kept = root / "failed" / "tea.mask.png"  # moved there after its note is written
    wait_for(lambda: lone.exists() and kept.exists(), what="the lone mask failed")
    assert LONE_MASK in lone.read_text()
    assert daemon.stop() == 0
