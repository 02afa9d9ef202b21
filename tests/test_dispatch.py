"""The dispatcher, the finisher and intake without workers: the fast loop for their rules.

Real parts everywhere but the pool: a real config file, real folders and files, the real
stability tracker, the real ledger (SQLite on disk), the real intake, finisher and
dispatcher. The pool is :class:`tests.fakes.FakePool`, whose files end when a test says
how; time is a :class:`tests.support.Clock`. Each test runs in milliseconds.
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakePool
from tests.support import Clock
from watchd.backoff import BACKOFF_BASE
from watchd.config import Config, WatchConfig, load_config
from watchd.daemon import LiveConfig
from watchd.dispatcher import Dispatcher, Pause
from watchd.files import error_note_path
from watchd.finisher import Finisher
from watchd.intake import Intake
from watchd.ledger import FinishedJob, Ledger
from watchd.stats import Activity
from watchd.watcher import StabilityTracker

SETTLE = 1.0
PHOTO = b"\xff\xd8\xff\xe0 a photo's bytes"


@dataclass
class Rig:
    root: Path
    config: Config
    ledger: Ledger
    pool: FakePool
    clock: Clock
    finisher: Finisher
    pause: Pause
    dispatcher: Dispatcher
    intake: Intake
    ended: list[FinishedJob] = field(default_factory=list)

    @property
    def watch(self) -> WatchConfig:
        return self.config.watches[0]

    def drop(self, name: str, data: bytes = PHOTO) -> int:
        """Drop a file in the inbox, let it settle, take it: returns its job id."""
        path = self.watch.inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        tracker = StabilityTracker(self.watch.name, self.watch.inbox, SETTLE)
        tracker.touch(name.split("/", maxsplit=1)[0], 0.0)
        tracker.tick(0.0)
        [batch] = tracker.tick(SETTLE + 0.1)
        job_id = self.intake.accept(batch, self.watch)
        assert job_id is not None
        return job_id

    def file_ids(self, job_id: int) -> list[int]:
        return [f.id for f in self.ledger.job_files(job_id)]

    def state(self, file_id: int) -> str:
        [record] = [f for f in self.ledger.job_files(self.ledger_job(file_id)) if f.id == file_id]
        return record.state

    def ledger_job(self, file_id: int) -> int:
        for job in self.ledger.list_jobs(limit=1000):
            if file_id in self.file_ids(job.id):
                return job.id
        raise KeyError(file_id)


def make_rig(root: Path, *, extra: str = "", capacity: int = 4, alone_threads: int = 0) -> Rig:
    """Real folders, config, ledger, finisher, dispatcher and intake, on a fake pool."""
    config_path = root / "watchd.toml"
    config_path.write_text(
        '[daemon]\nstate_dir = "state"\n\n[pool]\nmax_attempts = 3\n\n[[watch]]\nname = "photos"\n'
        'inbox = "inbox"\noutbox = "outbox"\narchive = "archive"\nfailed = "failed"\n' + extra
    )
    config = load_config(config_path)
    for folder in ("inbox", "outbox", "archive", "failed", "state/spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    clock = Clock(1_700_000_000.0)
    ledger = Ledger.open(root / "state" / "ledger.sqlite3", clock=clock)
    pool = FakePool(capacity, alone_threads=alone_threads)
    activity = Activity()
    ended: list[FinishedJob] = []
    finisher = Finisher(
        ledger,
        root / "state" / "spool",
        activity=activity,
        clock=clock,
        monotonic=clock,
        job_ended=ended.append,
    )
    pause = Pause(ledger)
    dispatcher = Dispatcher(
        ledger,
        pool,
        finisher,
        pause,
        max_attempts=config.pool.max_attempts,
        wake=lambda: None,
        clock=clock,
        rng=random.Random(0),
        activity=activity,
        monotonic=clock,
    )
    intake = Intake(ledger, root / "state" / "spool", finisher, check_model=pool.verify_model)
    return Rig(root, config, ledger, pool, clock, finisher, pause, dispatcher, intake, ended)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


# --- dispatching --------------------------------------------------------------------------------


def test_queued_files_go_to_the_pool_with_their_jobs_options_up_to_its_capacity(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, extra='format = "webp"\n', capacity=2)
    jobs = [rig.drop(f"{n}.jpg", PHOTO + bytes([n])) for n in range(3)]
    assert rig.dispatcher.fill() == 2  # the cap: two in flight, the third waits queued
    assert rig.dispatcher.fill() == 0
    first, second = rig.pool.submitted
    assert (first.data, first.model, first.output.format) == (PHOTO + b"\x00", "u2netp", "webp")
    assert second.data == PHOTO + b"\x01"
    [waiting] = rig.file_ids(jobs[2])
    assert rig.state(waiting) == "queued"
    rig.pool.finish(first.file_id)
    rig.dispatcher.collect()
    assert rig.dispatcher.fill() == 1
    assert rig.pool.submitted[-1].file_id == waiting


def test_a_file_alone_in_the_pool_gets_all_its_threads(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, alone_threads=8)
    rig.drop("one.jpg")
    rig.dispatcher.fill()
    assert rig.pool.submitted[-1].threads == 8
    rig.drop("two.jpg")
    rig.drop("three.jpg")
    rig.dispatcher.fill()  # one is still in flight: the next ones share the pool
    assert [t.threads for t in rig.pool.submitted[1:]] == [0, 0]


def test_pause_stops_claims_and_survives_a_restart(rig: Rig) -> None:
    rig.pause.set(True)
    rig.drop("a.jpg")
    assert rig.dispatcher.fill() == 0 and not rig.pool.submitted
    assert Pause(rig.ledger).paused  # read back from the ledger, as a restart does
    rig.pause.set(False)
    assert rig.dispatcher.fill() == 1
    assert not Pause(rig.ledger).paused


def test_an_input_larger_than_the_limit_fails_without_reaching_the_pool(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, extra="max_file_bytes = 10\n")
    job = rig.drop("big.jpg", b"x" * 11)
    rig.dispatcher.fill()
    assert not rig.pool.submitted and not rig.dispatcher.in_flight
    [file_id] = rig.file_ids(job)
    assert rig.state(file_id) == "failed"
    assert (rig.watch.failed / "big.jpg").read_bytes() == b"x" * 11
    assert "10" in error_note_path(rig.watch.failed / "big.jpg").read_text()
    assert [j.id for j in rig.ended] == [job]


# --- finishing ----------------------------------------------------------------------------------


def test_a_result_is_written_the_original_archived_and_the_job_handed_on(rig: Rig) -> None:
    job = rig.drop("a.jpg")
    rig.dispatcher.fill()
    [file_id] = rig.file_ids(job)
    rig.pool.finish(file_id, b"cutout bytes")
    assert rig.dispatcher.collect() == 1
    assert (rig.watch.outbox / "a.png").read_bytes() == b"cutout bytes"
    assert (rig.watch.archive / "a.jpg").read_bytes() == PHOTO
    assert not list((rig.root / "state" / "spool").iterdir())
    assert rig.state(file_id) == "done"
    assert [(j.id, j.state) for j in rig.ended] == [(job, "done")]
    assert rig.finisher.jobs_finished == 1 and not rig.dispatcher.in_flight


def test_a_document_writes_one_output_per_page(rig: Rig) -> None:
    job = rig.drop("scan.tif")
    rig.dispatcher.fill()
    [file_id] = rig.file_ids(job)
    rig.pool.finish(file_id, b"one", b"two")
    rig.dispatcher.collect()
    assert sorted(p.name for p in rig.watch.outbox.iterdir()) == ["scan-p1.png", "scan-p2.png"]
    assert rig.state(file_id) == "done"


def test_pages_that_would_overwrite_someone_elses_files_fail_the_document(rig: Rig) -> None:
    job = rig.drop("scan.tif")
    rig.dispatcher.fill()
    (rig.watch.outbox / "scan-p2.png").write_bytes(b"someone else's")
    [file_id] = rig.file_ids(job)
    rig.pool.finish(file_id, b"one", b"two")
    rig.dispatcher.collect()
    assert rig.state(file_id) == "failed"
    assert (rig.watch.outbox / "scan-p2.png").read_bytes() == b"someone else's"
    assert "scan-p2.png" in error_note_path(rig.watch.failed / "scan.tif").read_text()


def test_a_rejected_input_fails_at_once_with_its_reason(rig: Rig) -> None:
    job = rig.drop("a.jpg")
    rig.dispatcher.fill()
    [file_id] = rig.file_ids(job)
    rig.pool.reject(file_id, "not an image watchd can read")
    rig.dispatcher.collect()
    assert rig.state(file_id) == "failed"
    assert (rig.watch.failed / "a.jpg").read_bytes() == PHOTO
    assert "not an image" in error_note_path(rig.watch.failed / "a.jpg").read_text()
    assert rig.finisher.last_error is not None
    assert "not an image" in rig.finisher.last_error["message"]


def test_a_lost_attempt_is_retried_until_max_attempts(rig: Rig) -> None:
    job = rig.drop("a.jpg")
    [file_id] = rig.file_ids(job)
    for attempt in (1, 2):
        rig.dispatcher.fill()
        rig.pool.lose(file_id)
        rig.dispatcher.collect()
        assert rig.state(file_id) == "queued", attempt
    rig.dispatcher.fill()
    rig.pool.lose(file_id, "the worker process died (signal 9)")
    rig.dispatcher.collect()
    assert rig.state(file_id) == "failed"
    note = error_note_path(rig.watch.failed / "a.jpg").read_text()
    assert "gave up after 3 attempts" in note
    assert len(rig.pool.submitted) == 3


def test_a_broken_pool_gives_the_attempt_back_and_backs_off(rig: Rig) -> None:
    job = rig.drop("a.jpg")
    [file_id] = rig.file_ids(job)
    for _ in range(5):  # more breaks than max_attempts: never the file's fault
        rig.dispatcher.fill()
        rig.pool.break_pool()
        rig.dispatcher.collect()
        assert rig.state(file_id) == "queued"
        retry_at = rig.ledger.next_retry_at()
        assert retry_at is not None and retry_at >= rig.clock() + BACKOFF_BASE
        assert rig.dispatcher.fill() == 0  # not before its time
        rig.clock.advance(retry_at - rig.clock())
    [record] = rig.ledger.job_files(job)
    assert record.attempts == 0
    assert rig.finisher.last_error is not None
    assert "pool broke" in rig.finisher.last_error["message"]


def test_a_transient_write_error_waits_and_a_permanent_one_fails(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = rig.drop("a.jpg")
    [file_id] = rig.file_ids(job)
    failure = [errno.ENOSPC]

    def full(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(failure[0], "no room")

    monkeypatch.setattr("watchd.finisher.atomic_write", full)
    rig.dispatcher.fill()
    rig.pool.finish(file_id)
    rig.dispatcher.collect()
    assert rig.state(file_id) == "queued"  # waits, with backoff, at no attempt's cost
    [record] = rig.ledger.job_files(job)
    assert record.attempts == 0 and rig.ledger.next_retry_at() is not None
    assert rig.finisher.last_error is not None
    assert "retrying" in rig.finisher.last_error["message"]

    failure[0] = errno.ENAMETOOLONG  # no wait cures that
    rig.clock.advance(1000)
    rig.dispatcher.fill()
    rig.pool.finish(file_id)
    rig.dispatcher.collect()
    assert rig.state(file_id) == "failed"
    assert (rig.watch.failed / "a.jpg").exists()


def test_shutdown_puts_running_files_back_at_no_attempts_cost(rig: Rig) -> None:
    job = rig.drop("a.jpg")
    rig.dispatcher.fill()
    [future] = rig.dispatcher.in_flight
    assert rig.dispatcher.abandon_in_flight() == 1
    assert future.cancelled() and not rig.dispatcher.in_flight
    [record] = rig.ledger.job_files(job)
    assert (record.state, record.attempts) == ("queued", 0)


def test_recovery_finishes_what_a_crash_interrupted(rig: Rig) -> None:
    job = rig.drop("a.jpg")
    [file_id] = rig.file_ids(job)
    rig.dispatcher.fill()
    (rig.watch.outbox / "a.png").write_bytes(b"cutout")
    rig.ledger.mark_written(file_id, 6)  # the crash came before the original was archived
    rig.finisher.finish_interrupted(rig.ledger.recover())
    assert rig.state(file_id) == "done"
    assert (rig.watch.archive / "a.jpg").read_bytes() == PHOTO


# --- intake -------------------------------------------------------------------------------------


def test_intake_takes_a_file_into_the_spool_and_queues_it(rig: Rig) -> None:
    job = rig.drop("a.jpg")
    [record] = rig.ledger.job_files(job)
    assert record.state == "queued"
    assert not (rig.watch.inbox / "a.jpg").exists()
    assert (rig.root / "state" / "spool" / str(record.id)).read_bytes() == PHOTO
    assert record.options.model == "u2netp" and record.options.after == "archive"


def test_an_input_that_vanished_before_it_was_taken_fails_through_the_finisher(rig: Rig) -> None:
    path = rig.watch.inbox / "gone.jpg"
    path.write_bytes(PHOTO)
    tracker = StabilityTracker(rig.watch.name, rig.watch.inbox, SETTLE)
    tracker.touch("gone.jpg", 0.0)
    tracker.tick(0.0)
    [batch] = tracker.tick(SETTLE + 0.1)
    path.unlink()  # removed by whoever dropped it, between settling and taking
    job = rig.intake.accept(batch, rig.watch)
    assert job is not None
    [record] = rig.ledger.job_files(job)
    assert record.state == "failed"
    assert "removed from the inbox" in (record.error or "")
    assert [j.id for j in rig.ended] == [job]


def test_a_sidecar_naming_a_model_the_pool_lacks_fails_its_job(rig: Rig) -> None:
    folder = rig.watch.inbox / "album"
    folder.mkdir()
    (folder / "watchd.toml").write_text('model = "isnet-anime"\n')
    job = rig.drop("album/a.jpg")
    [record] = rig.ledger.job_files(job)
    assert record.state == "failed"
    assert "isnet-anime" in (record.error or "") and "not installed" in (record.error or "")
    assert not rig.pool.submitted


# --- the daemon's pieces ------------------------------------------------------------------------


def test_hooks_follow_the_live_config_and_a_removed_watch_has_none(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    live = LiveConfig(rig.config)
    outbox, hooks = live.hooks_of("photos") or (None, None)
    assert outbox == rig.watch.outbox and hooks == rig.watch.hooks
    (tmp_path / "other").mkdir()
    other = make_rig(tmp_path / "other").config
    live.config = other  # a reload replaced the config whole
    assert live.hooks_of("photos") == (other.watches[0].outbox, other.watches[0].hooks)
    assert live.hooks_of("gone") is None
