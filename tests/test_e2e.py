"""End to end: the real daemon (subprocess), real inotify, real SQLite, the real u2netp model.

Every wait is a deadline poll; nothing sleeps a fixed time to "let things happen",
except the slow writer, whose pauses are the point of the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import DaemonProcess, drop, is_output, jobs_ended, wait_for

pytestmark = pytest.mark.e2e


def outputs(root: Path) -> list[str]:
    """Finished outputs (a hidden ``.watchd-N.tmp`` being written is not one)."""
    base = root / "outbox"
    return sorted(
        str(p.relative_to(base))
        for p in base.rglob("*")
        if is_output(p)  # nor a job's manifest
    )


def files_by_state(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / "state" / "ledger.sqlite3") as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_loose_files_become_rgba_cutouts_and_originals_are_archived(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(pool__workers=2).start()
    root = daemon.root
    for name, target in (
        ("astronaut.jpg", "a.jpg"),
        ("coffee.png", "b.png"),
        ("chelsea.webp", "c.webp"),
    ):
        shutil.copyfile(photos[name], root / "inbox" / target)  # plain copy: created + modified

    wait_for(lambda: outputs(root) == ["a.png", "b.png", "c.png"], what="three cutouts")
    for out, src in (
        ("a.png", "astronaut.jpg"),
        ("b.png", "coffee.png"),
        ("c.png", "chelsea.webp"),
    ):
        with Image.open(root / "outbox" / out) as cutout, Image.open(photos[src]) as original:
            assert cutout.format == "PNG"
            assert cutout.mode == "RGBA"
            assert cutout.size == original.size
            alpha = np.asarray(cutout.getchannel("A"))
            assert alpha.min() == 0 and alpha.max() == 255  # a real cutout, not a copy
    wait_for(
        lambda: (
            sorted(p.name for p in (root / "archive").iterdir()) == ["a.jpg", "b.png", "c.webp"]
        ),
        what="originals archived",
    )
    assert list((root / "inbox").iterdir()) == []
    # An original is archived just before its file is marked done: wait for the job's end.
    wait_for(lambda: daemon.count("job.done") == 1, what="the job done")
    assert files_by_state(root) == {"done": 3}
    jobs = daemon.events("job.done")
    assert len(jobs) == 1 and jobs[0]["files"] == 3 and jobs[0]["state"] == "done"
    assert {e["file"] for e in daemon.events("file.done")} == {1, 2, 3}
    assert daemon.stop() == 0
    assert daemon.count("shutdown.done") == 1


def test_folder_with_nested_subfolders_is_one_job_keeping_its_structure(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    staging = root / "staging" / "scan-0930"
    (staging / "page" / "deep").mkdir(parents=True)
    shutil.copyfile(photos["astronaut.jpg"], staging / "top.jpg")
    shutil.copyfile(photos["coffee.png"], staging / "page" / "p1.png")
    shutil.copyfile(photos["rocket.jpg"], staging / "page" / "deep" / "p2.jpg")
    (staging / "@eaDir").mkdir()
    (staging / "@eaDir" / "thumb.jpg").write_bytes(b"synology thumbnail")
    (staging / ".DS_Store").write_bytes(b"mac")
    os.rename(staging, root / "inbox" / "scan-0930")  # a folder moved in, as a share client does

    expected = ["scan-0930/page/deep/p2.png", "scan-0930/page/p1.png", "scan-0930/top.png"]
    wait_for(lambda: outputs(root) == expected, what="folder outputs")
    wait_for((root / "outbox" / "scan-0930.manifest.json").is_file, what="the job's manifest")
    accepted = daemon.events("job.accepted")
    assert len(accepted) == 1 and accepted[0]["kind"] == "folder" and accepted[0]["files"] == 3
    wait_for(lambda: daemon.count("job.done") == 1, what="job.done")
    archived = sorted(
        str(p.relative_to(root / "archive")) for p in (root / "archive").rglob("*") if p.is_file()
    )
    assert archived == ["scan-0930/page/deep/p2.jpg", "scan-0930/page/p1.png", "scan-0930/top.jpg"]
    assert list((root / "inbox").iterdir()) == []  # the taken folder left the inbox, litter too


def test_slow_writer_is_taken_once_and_complete(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(watch__settle_seconds=1.0).start()
    root = daemon.root
    data = photos["rocket.jpg"].read_bytes()
    with open(root / "inbox" / "slow.jpg", "wb") as handle:
        for offset in range(0, len(data), 16 * 1024):
            handle.write(data[offset : offset + 16 * 1024])
            handle.flush()
            time.sleep(0.3)  # a slow scanner: pauses shorter than the settle time
    wait_for(lambda: outputs(root) == ["slow.png"], what="slow.png")
    wait_for((root / "archive" / "slow.jpg").exists, what="archived original")
    assert (root / "archive" / "slow.jpg").read_bytes() == data
    wait_for(lambda: files_by_state(root) == {"done": 1}, what="file done in the ledger")
    assert daemon.count("job.accepted") == 1
    with (
        Image.open(root / "outbox" / "slow.png") as cutout,
        Image.open(photos["rocket.jpg"]) as src,
    ):
        assert cutout.size == src.size


def test_name_clashes_get_distinct_deterministic_names(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    drop(photos["astronaut.jpg"], root / "inbox", "a.jpg")
    drop(photos["coffee.png"], root / "inbox", "a.png")  # same stem, same batch
    wait_for(lambda: outputs(root) == ["a (2).png", "a.png"], what="two outputs")
    wait_for(lambda: daemon.count("job.done") == 1, what="first job done")
    drop(photos["rocket.jpg"], root / "inbox", "a.jpg")  # a second drop of a.jpg later
    wait_for(lambda: outputs(root) == ["a (2).png", "a (3).png", "a.png"], what="third output")
    # Sorted inputs decide who gets the plain name: a.jpg before a.png.
    outbox = root / "outbox"
    assert size_of(outbox / "a.png") == size_of(photos["astronaut.jpg"])
    assert size_of(outbox / "a (2).png") == size_of(photos["coffee.png"])
    assert size_of(outbox / "a (3).png") == size_of(photos["rocket.jpg"])
    wait_for(
        lambda: (
            sorted(p.name for p in (root / "archive").iterdir()) == ["a (2).jpg", "a.jpg", "a.png"]
        ),
        what="archived originals",
    )


def test_sigterm_drains_and_a_restart_finishes_queued_work(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(daemon__drain_seconds=60).start()
    root = daemon.root
    names = [f"p{i}.jpg" for i in range(6)]
    for name in names:
        drop(photos["astronaut.jpg"], root / "inbox", name)
    wait_for(lambda: daemon.count("file.done") >= 1, what="first file done")
    assert daemon.stop(signal.SIGTERM) == 0
    drained = daemon.events("shutdown.drained")[-1]
    assert drained["requeued"] == 0  # the running file was allowed to finish
    done_before = len(outputs(root))
    assert 1 <= done_before < len(names)
    assert files_by_state(root).get("queued", 0) == len(names) - done_before

    daemon.start()
    wait_for(lambda: len(outputs(root)) == len(names), what="all outputs after restart")
    assert outputs(root) == sorted(n.replace(".jpg", ".png") for n in names)
    wait_for(lambda: files_by_state(root) == {"done": len(names)}, what="all done")


def test_kill9_mid_batch_then_restart_gives_exactly_one_output_per_input(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(pool__workers=2).start()
    root = daemon.root
    sources = sorted(photos.values())
    names = []
    for i, src in enumerate(sources * 2):
        names.append(f"k{i:02d}{src.suffix}")
        drop(src, root / "inbox", names[-1])
    wait_for(lambda: daemon.count("file.done") >= 2, what="some files done")
    daemon.kill()
    assert daemon.count("shutdown.begin") == 0  # it really died without a chance to clean up

    daemon.start()
    wait_for(lambda: files_by_state(root) == {"done": len(names)}, what="every file done")
    # The files are done before their job's manifest is written (a hidden temp meanwhile):
    # the leftovers below are only meaningful once the job itself has ended and reported.
    wait_for(lambda: jobs_ended(root), what="every job ended and reported")
    expected = sorted(Path(n).with_suffix(".png").name for n in names)
    assert outputs(root) == expected  # nothing lost, nothing duplicated, no "(2)" copies
    archived = sorted(p.name for p in (root / "archive").iterdir())
    assert archived == sorted(names)
    leftovers = list(root.rglob(".watchd-*.tmp")) + list((root / "state" / "spool").iterdir())
    assert leftovers == []
    for name in expected:
        with Image.open(root / "outbox" / name) as image:
            image.load()  # complete, decodable PNG
    with sqlite3.connect(root / "state" / "ledger.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_cutout_matches_rembg_remove(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], model_store: object
) -> None:
    """Alpha must equal rembg.remove() for the same image and model, within 1/255 per pixel."""
    from rembg import new_session, remove

    daemon = daemon_factory().start()
    root = daemon.root
    drop(photos["astronaut.jpg"], root / "inbox")
    wait_for(lambda: outputs(root) == ["astronaut.png"], what="cutout")

    session = new_session("u2netp")
    with Image.open(photos["astronaut.jpg"]) as original:
        expected = remove(original, session=session)
    with Image.open(root / "outbox" / "astronaut.png") as ours:
        ours_alpha = np.asarray(ours.getchannel("A"), dtype=np.int16)
        ours_rgb = np.asarray(ours.convert("RGB"), dtype=np.int16)
    reference_alpha = np.asarray(expected.getchannel("A"), dtype=np.int16)
    assert ours_alpha.shape == reference_alpha.shape
    assert np.abs(ours_alpha - reference_alpha).max() <= 1
    visible = reference_alpha > 0
    reference_rgb = np.asarray(expected.convert("RGB"), dtype=np.int16)
    assert np.abs(ours_rgb[visible] - reference_rgb[visible]).max() <= 1


def test_keep_leaves_originals_and_never_takes_them_twice(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(watch__after="keep").start()
    root = daemon.root
    drop(photos["coffee.png"], root / "inbox", "keep.png")
    wait_for(lambda: outputs(root) == ["keep.png"], what="output")
    wait_for(lambda: daemon.count("job.done") == 1, what="job done")
    assert (root / "inbox" / "keep.png").exists()
    assert daemon.stop() == 0
    daemon.start()  # the start-up scan sees keep.png again
    daemon.stop()
    assert daemon.count("job.accepted") == 1
    assert outputs(root) == ["keep.png"]


def test_bad_input_goes_to_failed_with_a_readable_reason(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    (root / "inbox" / "notes.jpg").write_text("this is not a photo\n")
    drop(photos["coffee.png"], root / "inbox", "good.png")
    # The note is written before the original is moved beside it: wait for the file's end.
    wait_for(lambda: files_by_state(root) == {"done": 1, "failed": 1}, what="ledger states")
    note = (root / "failed" / "notes.jpg.error.txt").read_text()
    assert "notes.jpg" in note and "not an image" in note
    assert (root / "failed" / "notes.jpg").read_text() == "this is not a photo\n"
    assert outputs(root) == ["good.png"]  # the good file still processed


def test_a_second_daemon_on_the_same_state_is_refused(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    first = daemon_factory().start()
    second = DaemonProcess(first.root, first.config.read_text())
    second.log_path = first.root / "second.log"
    second.start(wait_ready=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=60) == 2
    assert "already running" in second.log_text()
    assert first.proc is not None and first.proc.poll() is None


def test_missing_model_is_a_clear_start_up_error(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = daemon_factory(daemon__models_dir=str(tmp_path / "no-models"))
    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=60) == 2
    assert "watchd models pull u2netp" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()
