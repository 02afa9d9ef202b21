"""Product shots and the quality gate end to end: the real daemon, real photos, the real CLI.

Crop with a margin and canvas placement are checked by measuring the subject's box in the
written output; the review folder by holding a photo that trips ``review_if``, restarting
the daemon, and approving (or rejecting) it with ``watchd approve`` / ``watchd reject``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.support import DaemonProcess, is_manifest, is_output, jobs_ended, wait_for
from tests.test_e2e_operators import cli, cli_json, drop
from watchd.control_client import ControlClient
from watchd.errors import ProtocolError
from watchd.imaging import product

pytestmark = pytest.mark.e2e


def subject_box(path: Path) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    with Image.open(path) as image:
        box = product.subject_box(image.getchannel("A"))
        assert box is not None, path
        return image.size, box


def test_crop_with_a_margin_and_a_canvas_from_a_sidecar(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    # First the plain cutout: where the subject is in the full frame.
    plain = daemon_factory(watch__manifest=False).start()
    root = plain.root
    drop(photos["coffee.png"], root / "inbox", "plain.png")
    wait_for((root / "outbox" / "plain.png").exists, what="the plain cutout")
    (width, height), (left, top, right, bottom) = subject_box(root / "outbox" / "plain.png")
    assert plain.stop() == 0

    # crop = "subject", margin = 20: the subject's box plus 20 px, clamped to the frame
    margin = 20
    daemon = daemon_factory(watch__crop="subject", watch__margin=margin).start()
    drop(photos["coffee.png"], root / "inbox", "cropped.png")
    wait_for((root / "outbox" / "cropped.png").exists, what="the cropped shot")
    size, box = subject_box(root / "outbox" / "cropped.png")
    gaps = [min(margin, left), min(margin, top), min(margin, width - right)]
    gaps.append(min(margin, height - bottom))
    assert size == (right - left + gaps[0] + gaps[2], bottom - top + gaps[1] + gaps[3])
    assert box == (gaps[0], gaps[1], size[0] - gaps[2], size[1] - gaps[3])

    # A folder job's sidecar puts its photos on a 600x600 canvas, standing at the bottom.
    album = root / "album"
    album.mkdir()
    shutil.copyfile(photos["coffee.png"], album / "cup.png")
    (album / "watchd.toml").write_text('canvas = "600x600"\nfill = 0.8\nalign = "bottom"\n')
    os.rename(album, root / "inbox" / "album")
    wait_for((root / "outbox" / "album" / "cup.png").exists, what="the canvas shot")
    size, (x0, y0, x1, y1) = subject_box(root / "outbox" / "album" / "cup.png")
    assert size == (600, 600)
    assert abs(max(x1 - x0, y1 - y0) - 480) <= 2  # the longer side takes 80 % of the canvas
    assert abs((x0 + x1) / 2 - 300) <= 1  # centred across
    assert abs(y1 - 540) <= 1  # standing 60 px (half of the 20 % left) above the bottom

    # Each output's quality figures: in the ledger (watchd job) and in the manifest.
    wait_for(lambda: jobs_ended(root), what="both jobs reported")
    job = cli_json(daemon, "job", "3")  # 1: the plain cutout, 2: the cropped one
    [figures] = job["files"][0]["quality"]
    assert 0.2 < figures["coverage"] < 0.8 and figures["clipped"] == []
    entry = next(e for e in manifest_entries(root) if e["input"] == "cup.png")
    assert entry["quality"] == [figures]


def manifest_entries(root: Path) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = []
    for path in (root / "outbox").iterdir():
        if is_manifest(path):
            entries += json.loads(path.read_text())["inputs"]
    return entries


def test_a_held_output_waits_in_review_across_a_restart_until_approved_or_rejected(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    # The astronaut touches the left and right edges; the coffee cup touches none.
    daemon = daemon_factory(watch__review_if=["clipped left right"])
    root = daemon.root
    (root / "review").mkdir()
    daemon.start()
    album = root / "shoot"
    album.mkdir()
    shutil.copyfile(photos["astronaut.jpg"], album / "astronaut.jpg")
    shutil.copyfile(photos["coffee.png"], album / "coffee.png")
    os.rename(album, root / "inbox" / "shoot")

    held = root / "review" / "astronaut.png"
    wait_for(lambda: daemon.count("file.review") == 1, what="the astronaut held for review")
    wait_for((root / "outbox" / "shoot" / "coffee.png").exists, what="the coffee cup")
    assert held.exists() and (root / "review" / "astronaut.sheet.png").exists()
    note = (root / "review" / "astronaut.review.txt").read_text()
    assert "the subject touches the left and right edge (clipped left right)" in note
    assert "watchd approve 1 " in note
    assert not (root / "outbox" / "shoot" / "astronaut.png").exists()
    job = cli_json(daemon, "job", "1")
    assert job["state"] == "active"  # not reported while a file waits for a person
    states = {f["rel"]: f["state"] for f in job["files"]}
    assert states == {"astronaut.jpg": "review", "coffee.png": "done"}
    table = cli(daemon, "job", "1").stdout
    assert "held for review: the subject touches the left and right edge" in table
    assert cli_json(daemon, "status")["files"]["review"] == 1
    assert not any(is_manifest(p) for p in (root / "outbox").iterdir())
    held_bytes = held.read_bytes()

    assert daemon.stop() == 0
    daemon.start()  # the file is still held: nothing runs again
    after = {f["rel"]: f["state"] for f in cli_json(daemon, "job", "1")["files"]}
    assert after["astronaut.jpg"] == "review"

    # bad requests: nothing held in a job, a file that is not held, a job that is not there
    coffee_id = next(f["id"] for f in job["files"] if f["rel"] == "coffee.png")
    refused = cli(daemon, "approve", "1", str(coffee_id))
    assert refused.returncode != 0 and "is not waiting in review" in refused.stderr
    assert "no job 99" in cli(daemon, "approve", "99").stderr
    assert cli(daemon, "approve", "1", "nine").returncode == 2  # argparse: not an id

    assert cli_json(daemon, "approve", "1") == {"id": 1, "approved_files": 1}
    wait_for(lambda: jobs_ended(root), what="job 1 reported after approval")
    assert (root / "outbox" / "shoot" / "astronaut.png").read_bytes() == held_bytes
    assert sorted(p.name for p in (root / "review").iterdir()) == []
    assert (root / "archive" / "shoot" / "astronaut.jpg").exists()
    entries = {e["input"]: e for e in manifest_entries(root)}
    assert entries["astronaut.jpg"]["state"] == "done"
    assert entries["astronaut.jpg"]["quality"][0]["clipped"] == ["bottom", "left", "right"]

    # Rejected: the original goes to failed/ with the reason; nothing stays in review.
    drop(photos["astronaut.jpg"], root / "inbox", "again.jpg")
    wait_for(lambda: daemon.count("file.review") == 2, what="the second astronaut held")
    rejected = cli_json(daemon, "reject", "2", "--reason", "the arms are cut off")
    assert rejected == {"id": 2, "rejected_files": 1}
    note_path = root / "failed" / "again.jpg.error.txt"
    wait_for(note_path.exists, what="the failed note")
    assert "rejected in review: the arms are cut off" in note_path.read_text()
    assert (root / "failed" / "again.jpg").exists()
    assert list((root / "review").iterdir()) == []
    assert not any(p.name.startswith("again") for p in (root / "outbox").iterdir() if is_output(p))
    wait_for(lambda: jobs_ended(root), what="job 2 reported")
    ended = cli(daemon, "job", "2", "--json")
    assert ended.returncode == 1  # the job failed: exit code 1, as for any failed job
    assert json.loads(ended.stdout)["state"] == "failed"


def test_a_background_picture_from_the_config(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(
        watch__format="jpeg", watch__background_image="backdrop.png", watch__manifest=False
    )
    root = daemon.root
    Image.new("RGB", (64, 48), (0, 0, 255)).save(root / "backdrop.png")
    daemon.start()
    drop(photos["coffee.png"], root / "inbox", "cup.png")
    wait_for((root / "outbox" / "cup.jpg").exists, what="the cup on the backdrop")
    with Image.open(root / "outbox" / "cup.jpg") as shot:
        assert shot.size == (600, 400) and shot.mode == "RGB"
        red, green, blue = shot.getpixel((3, 3))  # a corner: the picture, not the cup
        assert blue > 200 and red < 60 and green < 60
    # (An empty mask is tested on a drawn mask in tests/test_product.py: u2netp finds
    # something in every photo tried, black, white, grey, noise and the deep field alike.)


def test_submit_with_crop_and_margin_from_the_cli(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], tmp_path: Path
) -> None:
    daemon = daemon_factory(watch__manifest=False).start()
    root = daemon.root
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("plain.png", "cropped.png"):
        shutil.copyfile(photos["coffee.png"], elsewhere / name)

    plain = cli(daemon, "submit", str(elsewhere / "plain.png"), "--wait")
    assert plain.returncode == 0, plain.stderr
    margin = 10
    cropped = cli(
        daemon, "submit", str(elsewhere / "cropped.png"), "--crop", "subject", "--margin",
        str(margin), "--wait",
    )  # fmt: skip
    assert cropped.returncode == 0, cropped.stderr
    (width, height), (left, top, right, bottom) = subject_box(root / "outbox" / "plain.png")
    size, box = subject_box(root / "outbox" / "cropped.png")
    gaps = [min(margin, left), min(margin, top), min(margin, width - right)]
    gaps.append(min(margin, height - bottom))
    assert size == (right - left + gaps[0] + gaps[2], bottom - top + gaps[1] + gaps[3])
    assert box == (gaps[0], gaps[1], size[0] - gaps[2], size[1] - gaps[3])
    [accepted] = [e for e in daemon.events("job.accepted") if e["job"] == 2]
    assert accepted["sidecar"] == "submit options"  # named where a sidecar's file would be

    # refused by the daemon with a sidecar's rules, naming the option; nothing recorded
    bad = cli(daemon, "submit", str(elsewhere / "plain.png"), "--canvas", "10by10")
    assert bad.returncode == 2 and "submit options: canvas:" in bad.stderr
    with pytest.raises(ProtocolError) as refused:
        ControlClient(root / "state" / "control.sock").call(
            "submit", paths=[str(elsewhere / "plain.png")], options={"margin": [10]}
        )
    assert refused.value.code == "bad_request" and "submit options: margin:" in str(refused.value)
    album = elsewhere / "album"
    album.mkdir()
    shutil.copyfile(photos["coffee.png"], album / "cup.png")
    (album / "watchd.toml").write_text('crop = "subject"\n')
    both = cli(daemon, "submit", str(album), "--crop", "none")
    assert both.returncode == 2 and "has its own options file" in both.stderr
    assert len(cli_json(daemon, "jobs")["jobs"]) == 2
    assert daemon.stop() == 0
