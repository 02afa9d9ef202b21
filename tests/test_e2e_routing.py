"""Three watches, one daemon, one pool: different models, formats and priorities, mixed drops.

The issue's "done when": a config with three watches using different models and
formats runs end to end with mixed drops (loose files, a folder, a folder with a
sidecar), with the real daemon, real photos and real u2netp (imported a second
time under another name, as an operator adds a custom model).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from tests.support import DaemonProcess, wait_for
from watchd.models import ModelStore

pytestmark = pytest.mark.e2e

CONFIG = """
[daemon]
state_dir = "state"
models_dir = "models"
log_format = "json"
rescan_interval = 5

[pool]
workers = 2
model_cache = 2
file_timeout = 120

[[watch]]
name = "products"
inbox = "products/inbox"
outbox = "products/outbox"
format = "jpeg"
background = "#ffffff"
settle_seconds = 0.5

[[watch]]
name = "portraits"
inbox = "portraits/inbox"
outbox = "portraits/outbox"
model = "portrait-net"
priority = 10
post_process_mask = true
settle_seconds = 0.5

[[watch]]
name = "scans"
inbox = "scans/inbox"
outbox = "scans/outbox"
format = "mask"
method = "poll"
poll_interval = 0.5
settle_seconds = 0.5
"""

WATCHES = ("products", "portraits", "scans")


def _copy_in(src: Path, target: Path) -> None:
    """Copy under a hidden name, then rename into place (as uploaders do)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.part")
    shutil.copyfile(src, temp)
    temp.rename(target)


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _manifests(root: Path, watch: str) -> list[dict[str, object]]:
    outbox = root / watch / "outbox"
    return [json.loads(p.read_text()) for p in sorted(outbox.glob("*.manifest.json"))]


def test_three_watches_with_different_models_formats_and_a_sidecar(
    tmp_path: Path,
    model_store: ModelStore,
    photos: dict[str, Path],
) -> None:
    store = ModelStore(tmp_path / "models")
    store.import_file(model_store.path("u2netp"), "u2netp")
    store.import_file(model_store.path("u2netp"), "portrait-net")  # a custom model
    for watch in WATCHES:
        for folder in ("inbox", "outbox", "archive", "failed"):
            (tmp_path / watch / folder).mkdir(parents=True)
    daemon = DaemonProcess(tmp_path, CONFIG)
    daemon.start()
    root = daemon.root

    # products: two loose photos; portraits: a folder with a sidecar that asks for WebP;
    # scans: a folder with a nested subfolder
    _copy_in(photos["astronaut.jpg"], root / "products/inbox/shirt.jpg")
    _copy_in(photos["coffee.png"], root / "products/inbox/mug.png")
    session = root / "portraits/inbox/.session-12"
    _copy_in(photos["astronaut.jpg"], session / "anna.jpg")
    _copy_in(photos["cat.png"], session / "sub/bob.png")
    (session / "watchd.toml").write_text('format = "webp"\n')
    session.rename(root / "portraits/inbox/session-12")
    scans = root / "scans/inbox/.batch-7"
    _copy_in(photos["rocket.jpg"], scans / "page1.jpg")
    _copy_in(photos["chelsea.webp"], scans / "more/page2.webp")
    scans.rename(root / "scans/inbox/batch-7")

    wait_for(
        lambda: sum(len(_manifests(root, w)) for w in WATCHES) == 3,
        what="a manifest for each of the three jobs",
    )

    shirt = root / "products/outbox/shirt.jpg"
    with Image.open(shirt) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == _size(photos["astronaut.jpg"])
        corner = image.getpixel((0, 0))  # the astronaut's background became white
        assert isinstance(corner, tuple) and min(corner) >= 235, corner
    with Image.open(root / "products/outbox/mug.jpg") as image:
        assert image.format == "JPEG"

    portraits = root / "portraits/outbox/session-12"
    for rel, src in (("anna.webp", "astronaut.jpg"), ("sub/bob.webp", "cat.png")):
        with Image.open(portraits / rel) as image:
            assert image.format == "WEBP" and image.mode == "RGBA", rel
            assert image.size == _size(photos[src])
    assert not list(portraits.rglob("watchd.toml"))  # the sidecar is an option, not an input

    for rel, src in (("page1.png", "rocket.jpg"), ("more/page2.png", "chelsea.webp")):
        with Image.open(root / "scans/outbox/batch-7" / rel) as image:
            assert image.format == "PNG" and image.mode == "L", rel
            assert image.size == _size(photos[src])

    for watch in WATCHES:
        [manifest] = _manifests(root, watch)
        assert manifest["state"] == "done", manifest
        assert manifest["watch"] == watch
    [portrait_job] = _manifests(root, "portraits")
    jobs = {j["watch"]: j for j in json.loads(_cli(daemon, "jobs", "--json"))["jobs"]}
    assert jobs["portraits"]["priority"] == 10 and jobs["products"]["priority"] == 0
    assert portrait_job["name"] == "session-12"

    # each job was recorded with its watch's model (and the sidecar's format)
    with sqlite3.connect(root / "state" / "ledger.sqlite3") as db:
        recorded = {w: json.loads(o) for w, o in db.execute("SELECT watch, options FROM jobs")}
    assert recorded["portraits"]["model"] == "portrait-net"
    assert recorded["portraits"]["output"]["format"] == "webp"
    assert recorded["portraits"]["output"]["post_process_mask"] is True
    assert recorded["products"]["model"] == recorded["scans"]["model"] == "u2netp"
    # the sidecar travelled with its job into the archive, beside the originals
    assert (root / "portraits/archive/session-12/watchd.toml").read_text() == 'format = "webp"\n'
    assert (root / "portraits/archive/session-12/sub/bob.png").exists()
    assert daemon.count("file.failed") == 0
    assert daemon.stop() == 0


def _cli(daemon: DaemonProcess, *args: str) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "watchd", *args, "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout
