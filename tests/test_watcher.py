"""Intake tests on real files: the tracker with injected time, the watcher with real observers."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from structlog.testing import capture_logs

from watchd.watcher import (
    DEFAULT_IGNORE,
    Batch,
    InboxWatcher,
    StabilityTracker,
    explain_ignored,
    ignore_rule,
    is_ignored,
)

SETTLE = 1.0


def write(path: Path, data: bytes = b"x" * 10, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def append(path: Path, mtime_ns: int) -> None:
    """Grow a file and move its mtime explicitly: two writes can land in one mtime tick."""
    with path.open("ab") as f:
        f.write(b"more")
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    d = tmp_path / "inbox"
    d.mkdir()
    return d


def tracker(inbox: Path, max_batch_files: int = 1000) -> StabilityTracker:
    return StabilityTracker("w", inbox, SETTLE, max_batch_files=max_batch_files)


def rels(batch: Batch) -> list[str]:
    return [c.rel for c in batch.files]


# --- ignore rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("photo.jpg", False),
        ("IMG_0001.JPG", False),
        ("scan 2024 [1].png", False),
        ("tmp", False),
        ("~photo.jpg", False),
        (".DS_Store", True),
        (".photo.jpg.Xy12Ab", True),
        ("photo.jpg.tmp", True),
        ("photo.jpg.TMP", True),
        ("photo.jpg.part", True),
        ("photo.jpg.crdownload", True),
        ("~$report.docx", True),
        ("Thumbs.db", True),
        ("thumbs.db", True),
        ("Desktop.ini", True),
        ("@eaDir", True),
        ("#recycle", True),
        ("__MACOSX", True),
        ("__macosx", True),
        (".stfolder", True),
        (".stversions", True),
        (".syncthing.photo.jpg.tmp", True),
        ("~WRL0001.tmp", True),
        (".~lock.report.odt#", True),
        ("MACOSX", False),
        ("lock.report.odt#", False),
    ],
)
def test_is_ignored_table(name: str, ignored: bool) -> None:
    assert is_ignored(name) is ignored


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("__MACOSX", "__MACOSX"),
        (".stfolder", ".stfolder"),
        (".stversions", ".stversions"),
        (".syncthing.a.jpg.tmp", ".syncthing.*"),
        ("~$report.docx", "~$*"),
        ("~WRL0001.tmp", "~*.tmp"),
        (".~lock.report.odt#", ".~lock.*#"),
        (".DS_Store", ".*"),
        ("photo.jpg", None),
    ],
)
def test_ignore_rule_names_the_most_specific_rule(name: str, rule: str | None) -> None:
    assert ignore_rule(name) == rule


def test_explain_ignored_names_the_component_and_rule() -> None:
    assert explain_ignored("shoot/__MACOSX/._a.jpg") == ("__MACOSX", "__MACOSX")
    assert explain_ignored("shoot/a.jpg") is None
    assert explain_ignored("shoot/Proofs/a.jpg", (*DEFAULT_IGNORE, "proofs")) == (
        "Proofs",
        "proofs",
    )


def test_a_folder_job_leaves_out_macos_and_syncthing_litter(inbox: Path) -> None:
    """A zip unpacked on a share brings __MACOSX/; Syncthing brings .stfolder and temp files."""
    job = inbox / "shoot"
    (job / "__MACOSX").mkdir(parents=True)
    (job / "__MACOSX" / "._a.jpg").write_bytes(b"resource fork")
    (job / ".stversions").mkdir()
    (job / ".stversions" / "a~20240101.jpg").write_bytes(b"old")
    (job / ".syncthing.b.jpg.tmp").write_bytes(b"partial")
    (job / ".~lock.notes.odt#").write_bytes(b"lock")
    (job / "a.jpg").write_bytes(b"jpeg")
    tracker = StabilityTracker("w", inbox, 1.0)
    tracker.touch("shoot", 0.0)
    assert tracker.tick(0.0) == []
    (batch,) = tracker.tick(2.0)
    assert [c.rel for c in batch.files] == ["a.jpg"]


def test_a_watchs_own_patterns_add_to_the_built_in_ones(inbox: Path) -> None:
    (inbox / "a.jpg").write_bytes(b"jpeg")
    (inbox / "a.bak").write_bytes(b"backup")
    (inbox / ".hidden.jpg").write_bytes(b"hidden")
    tracker = StabilityTracker("w", inbox, 1.0, (*DEFAULT_IGNORE, "*.BAK"))
    for name in ("a.jpg", "a.bak", ".hidden.jpg"):
        tracker.touch(name, 0.0)
    tracker.tick(0.0)
    (batch,) = tracker.tick(2.0)
    assert [c.rel for c in batch.files] == ["a.jpg"]


def test_is_ignored_custom_patterns() -> None:
    assert is_ignored("a.raw", ["*.raw"])
    assert not is_ignored(".hidden", [])
    assert set(DEFAULT_IGNORE) >= {".*", "*.tmp", "*.part", "~$*", "@eaDir", "#recycle"}


# --- stability ------------------------------------------------------------------------


def test_file_ready_only_after_settle(inbox: Path) -> None:
    f = write(inbox / "a.jpg", b"12345")
    t = tracker(inbox)
    t.touch("a.jpg", 0.0)
    assert t.tracked() == 1
    assert t.tick(0.0) == []  # first sight starts the clock
    assert t.tick(0.99) == []
    [batch] = t.tick(1.0)
    assert batch.kind == "loose"
    assert batch.root == inbox
    assert batch.name == "a.jpg"
    [c] = batch.files
    assert (c.path, c.rel, c.size, c.mtime_ns) == (f, "a.jpg", 5, f.stat().st_mtime_ns)
    assert t.tracked() == 0
    assert t.tick(5.0) == []


def test_changing_file_not_taken_until_it_stops(inbox: Path) -> None:
    f = write(inbox / "scan.png", mtime_ns=1_000_000_000)
    t = tracker(inbox)
    t.touch("scan.png", 0.0)
    t.tick(0.0)
    now = 0.0
    for i in range(1, 6):  # keeps growing every 0.9 s: never quiet for a full second
        now += 0.9
        append(f, (1 + i) * 1_000_000_000)
        assert t.tick(now) == []
    assert t.tick(now + 0.5) == []
    [batch] = t.tick(now + 1.0)
    assert batch.files[0].size == f.stat().st_size


def test_touch_of_tracked_entry_keeps_its_clock(inbox: Path) -> None:
    write(inbox / "a.jpg")
    t = tracker(inbox)
    t.touch("a.jpg", 0.0)
    t.tick(0.0)
    t.touch("a.jpg", 0.9)  # a periodic rescan must not postpone readiness
    assert len(t.tick(1.0)) == 1


def test_loose_files_within_one_window_form_one_batch(inbox: Path) -> None:
    write(inbox / "b.jpg")
    t = tracker(inbox)
    t.touch("b.jpg", 0.0)
    t.tick(0.0)
    write(inbox / "a.jpg")
    t.touch("a.jpg", 0.6)
    t.tick(0.6)
    assert t.tick(1.2) == []  # b.jpg is ready, but a.jpg is still settling
    [batch] = t.tick(1.6)
    assert rels(batch) == ["a.jpg", "b.jpg"]
    assert batch.name == "a.jpg +1 more"


def test_ready_file_that_changes_again_leaves_the_group(inbox: Path) -> None:
    a = write(inbox / "a.jpg", mtime_ns=10**9)
    write(inbox / "b.jpg")
    t = tracker(inbox)
    t.touch("a.jpg", 0.0)
    t.tick(0.0)
    t.touch("b.jpg", 0.5)
    t.tick(0.5)
    assert t.tick(1.0) == []  # a is ready and waits for b
    append(a, 2 * 10**9)  # a changes again before the group left: never take a partial
    assert t.tick(1.5) == []  # b is ready and now waits for a
    assert t.tick(2.4) == []
    [batch] = t.tick(2.5)
    assert rels(batch) == ["a.jpg", "b.jpg"]
    assert batch.files[0].size == a.stat().st_size


def test_max_batch_files_chunks(inbox: Path) -> None:
    for i in range(7):
        write(inbox / f"p{i}.jpg")
    t = tracker(inbox, max_batch_files=3)
    for i in range(7):
        t.touch(f"p{i}.jpg", 0.0)
    t.tick(0.0)
    batches = t.tick(1.0)
    assert [len(b.files) for b in batches] == [3, 3, 1]
    assert sorted(r for b in batches for r in rels(b)) == [f"p{i}.jpg" for i in range(7)]
    assert all(rels(b) == sorted(rels(b)) for b in batches)
    assert batches[0].name == f"{batches[0].files[0].rel} +2 more"
    assert t.tracked() == 0


def test_full_chunk_leaves_while_another_file_is_still_arriving(inbox: Path) -> None:
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        write(inbox / n)
    slow = write(inbox / "slow.jpg", mtime_ns=10**9)
    t = tracker(inbox, max_batch_files=2)
    for n in ("a.jpg", "b.jpg", "c.jpg", "slow.jpg"):
        t.touch(n, 0.0)
    t.tick(0.0)
    append(slow, 2 * 10**9)
    [batch] = t.tick(1.0)
    assert rels(batch) == ["a.jpg", "b.jpg"]
    assert t.tracked() == 2  # c.jpg waits for slow.jpg
    [batch] = t.tick(2.0)
    assert rels(batch) == ["c.jpg", "slow.jpg"]


def test_size_cap_does_not_flush_the_young_remainder(inbox: Path) -> None:
    slow = write(inbox / "slow.jpg", mtime_ns=10**9)
    write(inbox / "a.jpg")
    t = StabilityTracker("w", inbox, SETTLE, max_batch_files=2, max_batch_wait=4.0)
    t.touch("slow.jpg", 0.0)
    t.touch("a.jpg", 0.0)
    t.tick(0.0)
    for now in range(1, 10):
        append(slow, (2 + now) * 10**9)  # never settles, so only the caps send anything
        if now == 4:
            write(inbox / "b.jpg")
            write(inbox / "c.jpg")
            t.touch("b.jpg", now)
            t.touch("c.jpg", now)
        batches = t.tick(now)
        if now == 5:  # a.jpg (ready at 1) waited 4 s; a.jpg + b.jpg fill a chunk
            assert [rels(b) for b in batches] == [["a.jpg", "b.jpg"]]
        elif now == 9:  # c.jpg (ready at 5) waited 4 s too
            assert [rels(b) for b in batches] == [["c.jpg"]]
        else:
            assert batches == []


@pytest.mark.parametrize(
    ("settle", "max_wait", "expect_wait"), [(1.0, 5.0, 5.0), (0.5, None, 10.0)]
)
def test_max_batch_wait_under_a_never_ending_stream(
    inbox: Path, settle: float, max_wait: float | None, expect_wait: float
) -> None:
    """A scanner writing a page every second forever: there is always an unsettled file."""
    t = StabilityTracker("w", inbox, settle, max_batch_wait=max_wait)
    first_ready = 1  # page000 is first seen at 0 and found settled by the tick at 1
    for now in range(40):
        write(inbox / f"page{now:03}.jpg")
        t.touch(f"page{now:03}.jpg", float(now))
        batches = t.tick(float(now))
        if batches:
            break
    else:
        pytest.fail("no batch although the oldest page waited long enough")
    assert now == first_ready + expect_wait
    [batch] = batches
    assert batch.files[0].rel == "page000.jpg"
    assert f"page{now:03}.jpg" not in rels(batch)  # the page being written stays behind


def test_folder_with_nested_subfolders_is_one_batch(inbox: Path) -> None:
    album = inbox / "album"
    write(album / "b.jpg")
    write(album / "sub" / "a.png")
    write(album / "sub" / "deeper" / "c.jpg", b"12")
    write(album / "@eaDir" / "b.jpg" / "SYNOPHOTO_THUMB_XL.jpg")
    write(album / ".DS_Store")
    write(album / "sub" / "x.part")
    t = tracker(inbox)
    t.touch("album", 0.0)
    t.tick(0.0)
    write(album / "sub" / "late.jpg")  # a file added mid-settle restarts the clock
    assert t.tick(0.8) == []
    assert t.tick(1.5) == []
    [batch] = t.tick(1.8)
    assert (batch.kind, batch.name, batch.root) == ("folder", "album", album)
    assert rels(batch) == ["b.jpg", "sub/a.png", "sub/deeper/c.jpg", "sub/late.jpg"]
    assert batch.files[2].path == album / "sub" / "deeper" / "c.jpg"
    assert batch.files[2].size == 2
    assert t.tracked() == 0


def test_folder_rename_inside_restarts_the_clock(inbox: Path) -> None:
    album = inbox / "album"
    write(album / "a.jpg")
    write(album / "sub" / "b.jpg")
    t = tracker(inbox)
    t.touch("album", 0.0)
    t.tick(0.0)
    # Same count, size and file mtimes: only the directory's mtime tells. Set it explicitly
    # because the rename can land in the same timestamp tick as the creation.
    os.rename(album / "sub" / "b.jpg", album / "sub" / "c.jpg")
    later = (album / "sub").stat().st_mtime_ns + 10**9
    os.utime(album / "sub", ns=(later, later))
    assert t.tick(1.0) == []
    [batch] = t.tick(2.0)
    assert rels(batch) == ["a.jpg", "sub/c.jpg"]


def test_empty_folder_is_dropped_and_comes_back(inbox: Path) -> None:
    (inbox / "empty" / "sub").mkdir(parents=True)
    write(inbox / "empty" / ".hidden")
    t = tracker(inbox)
    t.touch("empty", 0.0)
    t.tick(0.0)
    assert t.tick(1.0) == []
    assert t.tracked() == 0
    write(inbox / "empty" / "sub" / "now.jpg")
    t.touch("empty", 2.0)
    t.tick(2.0)
    [batch] = t.tick(3.0)
    assert rels(batch) == ["sub/now.jpg"]


def test_ignored_top_level_names_are_never_tracked(inbox: Path) -> None:
    t = tracker(inbox)
    for name in (".hidden.jpg", "a.jpg.tmp", "b.jpg.part", "Thumbs.db", "@eaDir", "#recycle"):
        write(inbox / name)
        t.touch(name, 0.0)
    assert t.tracked() == 0
    assert t.tick(5.0) == []


def test_only_regular_files_are_ever_yielded(inbox: Path, tmp_path: Path) -> None:
    outside = write(tmp_path / "secret.jpg")
    write(tmp_path / "secret_dir" / "s.jpg")
    foreign = write(tmp_path / "foreign.jpg")
    (inbox / "link.jpg").symlink_to(outside)
    (inbox / "linkdir").symlink_to(tmp_path / "secret_dir")
    os.mkfifo(inbox / "pipe.jpg")
    os.link(foreign, inbox / "hard.jpg")
    write(inbox / "good.jpg")
    album = inbox / "album"
    write(album / "ok.jpg")
    (album / "link.jpg").symlink_to(outside)
    (album / "linkdir").symlink_to(tmp_path / "secret_dir")
    os.mkfifo(album / "pipe.jpg")
    os.link(foreign, album / "hard.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(album / "sock"))
    names = ["link.jpg", "linkdir", "pipe.jpg", "hard.jpg", "good.jpg", "album"]
    t = tracker(inbox)
    try:
        with capture_logs() as logs:
            got: list[Batch] = []
            for now in (0.0, 1.0, 2.0, 3.0):
                for n in names:
                    t.touch(n, now)
                got += t.tick(now)
    finally:
        sock.close()
    by_kind = {b.kind: rels(b) for b in got if b.name in ("good.jpg", "album")}
    assert by_kind == {"loose": ["good.jpg"], "folder": ["ok.jpg"]}
    for b in got:
        for c in b.files:
            st = c.path.lstat()
            assert c.path.is_file() and not c.path.is_symlink() and st.st_nlink == 1
            assert c.path.is_relative_to(inbox)
    skipped = [(e["path"], e["reason"]) for e in logs if e["event"] == "intake.skipped"]
    assert len(skipped) == len(set(skipped)), "each path is logged once"
    assert {(Path(p).relative_to(inbox).as_posix(), r) for p, r in skipped} >= {
        ("link.jpg", "symlink"),
        ("linkdir", "symlink"),
        ("pipe.jpg", "fifo"),
        ("hard.jpg", "hard link"),
        ("album/link.jpg", "symlink"),
        ("album/linkdir", "symlink"),
        ("album/pipe.jpg", "fifo"),
        ("album/hard.jpg", "hard link"),
        ("album/sock", "socket"),
    }


# --- sidecars (a folder job's watchd.toml) -------------------------------------------------------


def settled(t: StabilityTracker, name: str) -> list[Batch]:
    t.touch(name, 0.0)
    t.tick(0.0)
    return t.tick(SETTLE + 0.1)


def test_a_folder_sidecar_is_listed_apart_from_the_files(inbox: Path) -> None:
    album = inbox / "album"
    write(album / "a.jpg")
    write(album / "WATCHD.TOML", b'format = "webp"\n')  # any letter case: Windows clients
    write(album / "sub" / "watchd.toml")  # nested: an ordinary file (intake fails it)
    [batch] = settled(tracker(inbox), "album")
    assert rels(batch) == ["a.jpg", "sub/watchd.toml"]
    assert [(c.rel, c.path, c.size) for c in batch.sidecars] == [
        ("WATCHD.TOML", album / "WATCHD.TOML", 16)
    ]


def test_an_edited_sidecar_keeps_its_folder_unsettled(inbox: Path) -> None:
    album = inbox / "album"
    write(album / "a.jpg")
    sidecar = write(album / "watchd.toml", b"priority = 1\n", mtime_ns=10**18)
    t = tracker(inbox)
    t.touch("album", 0.0)
    t.tick(0.0)
    append(sidecar, 2 * 10**18)
    assert t.tick(1.5) == []
    [batch] = t.tick(2.6)
    assert [c.size for c in batch.sidecars] == [sidecar.stat().st_size]


def test_a_linked_sidecar_is_listed_so_that_intake_can_refuse_it(
    inbox: Path, tmp_path: Path
) -> None:
    outside = write(tmp_path / "secret.toml")
    album = inbox / "album"
    write(album / "a.jpg")
    (album / "watchd.toml").symlink_to(outside)
    [batch] = settled(tracker(inbox), "album")
    assert rels(batch) == ["a.jpg"]
    assert [c.path.is_symlink() for c in batch.sidecars] == [True]


def test_a_folder_holding_only_a_sidecar_is_no_job(inbox: Path) -> None:
    write(inbox / "album" / "watchd.toml")
    t = tracker(inbox)
    assert settled(t, "album") == []
    assert t.tracked() == 0  # like an empty folder: a later touch looks again


def test_a_loose_watchd_toml_is_an_ordinary_loose_file(inbox: Path) -> None:
    write(inbox / "watchd.toml")
    [batch] = settled(tracker(inbox), "watchd.toml")
    assert (batch.kind, rels(batch), batch.sidecars) == ("loose", ["watchd.toml"], ())


def test_vanished_entries_are_dropped(inbox: Path) -> None:
    f = write(inbox / "a.jpg")
    write(inbox / "album" / "b.jpg")
    t = tracker(inbox)
    t.touch("a.jpg", 0.0)
    t.touch("album", 0.0)
    t.touch("never-existed.jpg", 0.0)
    t.tick(0.0)
    assert t.tracked() == 2
    f.unlink()
    (inbox / "album" / "b.jpg").unlink()
    (inbox / "album").rmdir()
    assert t.tick(0.5) == []
    assert t.tracked() == 0


# --- InboxWatcher with real observers --------------------------------------------------

Method = Literal["inotify", "poll"]
METHODS: list[Method] = ["inotify", "poll"]


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


@pytest.fixture(params=METHODS)
def watcher(request: pytest.FixtureRequest, inbox: Path) -> Iterator[tuple[InboxWatcher, Wakes]]:
    wakes = Wakes()
    w = InboxWatcher("w", inbox, 0.2, wakes, method=request.param, poll_interval=0.2)
    w.start()
    try:
        yield w, wakes
    finally:
        w.stop()
        w.stop()  # idempotent


def wait_for_batch(w: InboxWatcher, timeout: float = 10.0) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batches = w.poll(time.monotonic())
        if batches:
            assert len(batches) == 1, batches
            return batches[0]
        time.sleep(0.05)
    pytest.fail("no batch within the deadline")


def test_watcher_file_written(watcher: tuple[InboxWatcher, Wakes], inbox: Path) -> None:
    w, wakes = watcher
    assert not w.pending()
    write(inbox / "photo.jpg")
    batch = wait_for_batch(w)
    assert (batch.kind, rels(batch)) == ("loose", ["photo.jpg"])
    assert wakes.count >= 1


def test_watcher_file_renamed_in_from_sibling(
    watcher: tuple[InboxWatcher, Wakes], inbox: Path, tmp_path: Path
) -> None:
    w, _ = watcher
    staged = write(tmp_path / "staging" / "moved.jpg")
    time.sleep(0.3)  # let the polling observer's snapshot pass before the move
    os.rename(staged, inbox / "moved.jpg")
    batch = wait_for_batch(w)
    assert rels(batch) == ["moved.jpg"]


def test_watcher_partial_renamed_to_final_name(
    watcher: tuple[InboxWatcher, Wakes], inbox: Path
) -> None:
    """Browsers and uploaders write "x.part" and rename it when done."""
    w, _ = watcher
    part = write(inbox / "dl.jpg.part")
    time.sleep(0.3)
    assert w.poll(time.monotonic()) == []
    os.rename(part, inbox / "dl.jpg")
    assert rels(wait_for_batch(w)) == ["dl.jpg"]


def test_watcher_folder_created_with_files(
    watcher: tuple[InboxWatcher, Wakes], inbox: Path
) -> None:
    w, _ = watcher
    write(inbox / "album" / "a.jpg")
    write(inbox / "album" / "sub" / "b.jpg")
    write(inbox / "album" / "sub" / ".tmp.jpg")
    batch = wait_for_batch(w)
    assert (batch.kind, batch.name, rels(batch)) == ("folder", "album", ["a.jpg", "sub/b.jpg"])


def test_watcher_scan_finds_what_was_there_before_start(inbox: Path) -> None:
    write(inbox / "old.jpg")
    write(inbox / ".hidden.jpg")
    (inbox / "link.jpg").symlink_to(inbox / "old.jpg")
    w = InboxWatcher("w", inbox, 0.2, lambda: None)
    assert w.scan(time.monotonic()) == 1
    assert w.pending()
    batch = wait_for_batch(w)
    assert rels(batch) == ["old.jpg"]
    assert not w.pending()


def test_reading_files_does_not_wake_the_watcher(
    watcher: tuple[InboxWatcher, Wakes], inbox: Path
) -> None:
    """rembg's watch mode reacts to the open events its own reads cause, and spins."""
    w, wakes = watcher
    old = inbox / "settled.jpg"
    write(old, mtime_ns=10**9)
    write(inbox / "album" / "inner.jpg", mtime_ns=10**9)
    deadline = time.monotonic() + 10.0
    while w.pending() and time.monotonic() < deadline:  # take the creations themselves
        w.poll(time.monotonic())
        time.sleep(0.05)
    time.sleep(0.5)  # events still in flight from the writes
    w.poll(time.monotonic())
    wakes.count = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        old.read_bytes()
        (inbox / "album" / "inner.jpg").read_bytes()
        w.scan(time.monotonic())  # our own stat and scandir work must not wake us either
        w.poll(time.monotonic())
        time.sleep(0.05)
    assert wakes.count == 0
    write(inbox / "new.jpg")  # and the observer is alive: a real write does wake it
    deadline = time.monotonic() + 10.0
    while wakes.count == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wakes.count >= 1


def test_an_ignored_name_is_logged_once_at_debug_with_its_rule(inbox: Path) -> None:
    (inbox / "__MACOSX").mkdir()
    (inbox / "a.jpg").write_bytes(b"jpeg")
    watcher = InboxWatcher("w", inbox, 1.0, wake=lambda: None)
    with capture_logs() as logs:
        watcher.scan(0.0)
        watcher.scan(1.0)  # a rescan meets it again: no second line
    ignored = [e for e in logs if e["event"] == "intake.ignored"]
    assert ignored == [
        {
            "event": "intake.ignored",
            "log_level": "debug",
            "watch": "w",
            "path": str(inbox / "__MACOSX"),
            "rule": "__MACOSX",
        }
    ]


# --- names that never settle (stuck_after) -----------------------------------------------------


def test_a_name_that_keeps_changing_is_reported_as_unsettled(inbox: Path) -> None:
    tracker = StabilityTracker("w", inbox, 1.0)
    growing = inbox / "scan.pdf"
    growing.write_bytes(b"x")
    (inbox / "done.jpg").write_bytes(b"jpeg")
    for name in ("scan.pdf", "done.jpg"):
        tracker.touch(name, 0.0)
    batches = []
    for step in range(1, 40):  # the scan grows every half second for 20 s
        now = step * 0.5
        with open(growing, "ab") as handle:
            handle.write(b"x")
        os.utime(growing, ns=(step * 10**9, step * 10**9))
        batches += tracker.tick(now)
    assert [c.rel for b in batches for c in b.files] == ["done.jpg"]
    assert tracker.unsettled_since(19.5, older_than=30.0) == {}
    assert tracker.unsettled_since(19.5, older_than=10.0) == {"scan.pdf": 0.0}
    # once it stops changing it settles, is handed out, and is no longer stuck
    (batch,) = tracker.tick(20.0) + tracker.tick(21.5)
    assert [c.rel for c in batch.files] == ["scan.pdf"]
    assert tracker.unsettled_since(21.5, older_than=10.0) == {}


def test_a_settled_file_waiting_for_its_group_is_not_stuck(inbox: Path) -> None:
    tracker = StabilityTracker("w", inbox, 1.0, max_batch_wait=1000.0)
    (inbox / "a.jpg").write_bytes(b"a")
    (inbox / "b.jpg").write_bytes(b"b")
    tracker.touch("a.jpg", 0.0)
    tracker.touch("b.jpg", 0.0)
    for step in range(1, 40):
        (inbox / "b.jpg").write_bytes(b"b" * step)  # keeps changing: a.jpg waits for it
        tracker.tick(step * 0.5)
    assert set(tracker.unsettled_since(19.5, older_than=10.0)) == {"b.jpg"}


def test_a_vanished_inbox_is_not_alive_and_revives_when_it_is_back(
    watcher: tuple[InboxWatcher, Wakes], inbox: Path
) -> None:
    w, wakes = watcher
    assert w.alive and not w.revive()  # a live watch is left alone
    for entry in inbox.iterdir():
        entry.unlink()
    inbox.rmdir()
    deadline = time.monotonic() + 10
    while w.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not w.alive  # the emitter ended with the folder, though the observer thread lives
    assert not w.revive()  # nothing to watch yet
    inbox.mkdir()
    assert w.revive() and w.alive
    before = wakes.count
    (inbox / "back.jpg").write_bytes(b"x")
    assert rels(wait_for_batch(w)) == ["back.jpg"]  # found by its events: no scan ran
    assert wakes.count > before
