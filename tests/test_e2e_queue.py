"""What operators of a queue expect (issue 17), against the real daemon: ignore rules people
can extend, worker recycling, files that never settle, the queue's metrics.

Every wait is a deadline poll on the event the test means (a job's end, a log line).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import DaemonProcess, is_output, wait_for

pytestmark = pytest.mark.e2e


def outputs(root: Path) -> list[str]:
    base = root / "outbox"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if is_output(p))


def test_ignore_rules_built_in_and_per_watch_with_the_rule_in_the_log(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], tmp_path: Path
) -> None:
    daemon = daemon_factory(watch__ignore=["*.bak", "Proofs/"], daemon__log_level="debug")
    daemon.start()
    staging = tmp_path / "staging" / "shoot"
    (staging / "__MACOSX").mkdir(parents=True)
    (staging / "Proofs").mkdir()
    shutil.copyfile(photos["astronaut.jpg"], staging / "a.jpg")
    shutil.copyfile(photos["coffee.png"], staging / "__MACOSX" / "._a.jpg")
    shutil.copyfile(photos["coffee.png"], staging / "Proofs" / "b.jpg")
    shutil.copyfile(photos["coffee.png"], staging / "c.bak")
    (staging / ".stfolder").mkdir()
    shutil.move(staging, daemon.root / "inbox" / "shoot")  # one rename: arrives whole

    wait_for(lambda: daemon.count("job.done") == 1, what="the job's end")
    assert outputs(daemon.root) == ["shoot/a.png"]
    (accepted,) = daemon.events("job.accepted")
    assert accepted["files"] == 1
    rules = {e["rule"] for e in daemon.events("intake.ignored")}
    assert {"__MACOSX", "Proofs", "*.bak", ".stfolder"} <= rules


def test_max_files_per_worker_recycles_workers_without_failing_a_file(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(pool__max_files_per_worker=1).start()
    for name, target in (("astronaut.jpg", "a.jpg"), ("coffee.png", "b.png"), ("cat.png", "c.png")):
        shutil.copyfile(photos[name], daemon.root / "inbox" / target)
    wait_for(lambda: daemon.count("job.done") == 1, what="the job's end")
    assert outputs(daemon.root) == ["a.png", "b.png", "c.png"]
    done = daemon.events("file.done")
    assert [e["attempt"] for e in done] == [1, 1, 1]
    assert len({e["worker_pid"] for e in done}) == 3  # each file in a fresh worker
    assert daemon.count("file.retry") == 0


# --- names on case-insensitive shares -------------------------------------------------------------


def test_names_differing_only_in_case_get_distinct_outputs_in_one_drop_and_across_drops(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    inbox = daemon.root / "inbox"
    shutil.copyfile(photos["astronaut.jpg"], inbox / "A.jpg")
    shutil.copyfile(photos["coffee.png"], inbox / "a.jpg")
    wait_for(lambda: daemon.count("job.done") == 1, what="the first job's end")
    assert outputs(daemon.root) == ["A.png", "a (2).png"]  # sorted: "A" < "a"
    shutil.copyfile(photos["cat.png"], inbox / "A.JPG")
    wait_for(lambda: daemon.count("job.done") == 2, what="the second job's end")
    assert outputs(daemon.root) == ["A (3).png", "A.png", "a (2).png"]
    # the archive is a share folder too: the originals keep distinct names there
    archived = sorted(p.name for p in (daemon.root / "archive").iterdir())
    assert archived == ["A (3).JPG", "A.jpg", "a (2).jpg"]  # "A (2)" is "a (2)" there


def test_case_sensitive_names_keeps_names_apart_only_by_case(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory(watch__case_sensitive_names=True).start()
    shutil.copyfile(photos["astronaut.jpg"], daemon.root / "inbox" / "A.jpg")
    shutil.copyfile(photos["coffee.png"], daemon.root / "inbox" / "a.jpg")
    wait_for(lambda: daemon.count("job.done") == 1, what="the job's end")
    assert outputs(daemon.root) == ["A.png", "a.png"]


def _vfat_mount(image: Path, mountpoint: Path) -> None:
    """A case-insensitive file system on a loop file, or pytest.skip with the reason."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a loop file needs root")
    if shutil.which("mkfs.vfat") is None:
        pytest.skip("mkfs.vfat is not installed (Debian: apt install dosfstools; .ci/run does)")
    with open(image, "wb") as handle:
        handle.truncate(32 << 20)
    subprocess.run(["mkfs.vfat", str(image)], check=True, capture_output=True)
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)],
        check=False,
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a vfat loop file here: {mounted.stderr.strip()}")


def test_on_a_case_insensitive_outbox_even_the_opt_out_never_overwrites(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path], tmp_path: Path
) -> None:
    """vfat compares names without case, like an SMB share's clients: with
    case_sensitive_names = true the file system itself still says "A.png" is taken."""
    import subprocess

    mountpoint = tmp_path / "vfat"
    _vfat_mount(tmp_path / "vfat.img", mountpoint)
    try:
        daemon = daemon_factory(
            watch__outbox=str(mountpoint), watch__case_sensitive_names=True
        ).start()
        shutil.copyfile(photos["astronaut.jpg"], daemon.root / "inbox" / "A.jpg")
        shutil.copyfile(photos["coffee.png"], daemon.root / "inbox" / "a.jpg")
        wait_for(lambda: daemon.count("job.done") == 1, what="the job's end")
        names = sorted(p.name for p in mountpoint.iterdir() if is_output(p))
        assert names == ["A.png", "a (2).png"]
        daemon.stop()
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


# --- the queue's metrics --------------------------------------------------------------------------


def test_metrics_file_has_queue_wait_run_time_workers_online_and_build_info(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    import socket

    from prometheus_client.parser import text_string_to_metric_families

    daemon = daemon_factory(daemon__metrics_file="metrics.prom", daemon__stats_interval=1)
    daemon.start()
    shutil.copyfile(photos["coffee.png"], daemon.root / "inbox" / "a.png")
    wait_for(lambda: daemon.count("job.done") == 1, what="the job's end")
    metrics = daemon.root / "metrics.prom"

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        if not metrics.exists():
            return {}
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.read_text())
            for s in family.samples
        }

    wait_for(
        lambda: samples().get(("watchd_run_seconds_count", (("watch", "photos"),))) == 1,
        what="the attempt in watchd_run_seconds",
    )
    got = samples()
    assert got[("watchd_queue_wait_seconds_count", (("watch", "photos"),))] == 1
    assert got[("watchd_run_seconds_sum", (("watch", "photos"),))] > 0
    assert got[("watchd_file_retries_total", (("reason", "timeout"), ("watch", "photos")))] == 0
    assert got[("watchd_workers_online", (("host", socket.gethostname()),))] == 1
    (build,) = [labels for name, labels in got if name == "watchd_build_info"]
    assert dict(build)["backend"] == "local"


# --- files that never settle ----------------------------------------------------------------------


def test_a_file_that_never_settles_is_reported_noted_and_then_taken(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    import subprocess
    import sys
    import threading
    import time

    daemon = daemon_factory(
        watch__stuck_after=2, watch__stuck_note_after=4, daemon__stats_interval=1
    ).start()
    growing = daemon.root / "inbox" / "scan.tif"
    note = daemon.root / "inbox" / "scan.tif.watchd-stuck.txt"
    stop = threading.Event()

    def keep_writing() -> None:  # a scanner that never finishes its page
        with open(growing, "ab") as handle:
            while not stop.is_set():
                handle.write(b"\0" * 64)
                handle.flush()
                time.sleep(0.1)

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        (event,) = wait_for(lambda: daemon.events("intake.stuck"), what="intake.stuck")
        assert event["path"] == str(growing)
        status = subprocess.run(
            [sys.executable, "-m", "watchd", "status", "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert f"{growing}: changing for" in status.stdout
        assert "not taken" in status.stdout
        wait_for(note.exists, what="the note beside it")
        assert "kept changing" in note.read_text()
        assert daemon.count("job.accepted") == 0  # never taken while it changes
    finally:
        stop.set()
        writer.join()
    # it settles, is taken (and fails: it is no image), and the note goes
    wait_for(lambda: daemon.count("intake.unstuck") == 1, what="intake.unstuck")
    wait_for(lambda: not note.exists(), what="the note removed")
    wait_for(lambda: daemon.count("job.done") == 1, what="the job's end")
    assert daemon.count("intake.stuck") == 1
