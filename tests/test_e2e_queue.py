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
