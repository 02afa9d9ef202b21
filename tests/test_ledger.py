"""Unit tests of the ledger on a real SQLite file (WAL) in ``tmp_path``.

Time is injected through ``Ledger.open(path, clock=...)``: nothing here sleeps.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support import Clock
from watchd.errors import Conflict, LedgerError, NotFound
from watchd.ledger import (
    MIGRATIONS,
    SCHEMA_VERSION,
    FileRecord,
    Ledger,
    NewFile,
    NewJob,
)
from watchd.options import JobOptions
from watchd.states import JobState

#: A job's options as the first releases stored them (no "output": PNG at this level).
OPTIONS_V1 = {
    "model": "u2netp",
    "after": "archive",
    "png_compress_level": 6,
    "max_file_bytes": 1000,
}
OPTIONS = JobOptions.from_json(OPTIONS_V1)


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.sqlite3"


@pytest.fixture
def ledger(db_path: Path, clock: Clock) -> Iterator[Ledger]:
    db_path.parent.mkdir()
    opened = Ledger.open(db_path, clock=clock)
    yield opened
    opened.close()


def new_file(rel: str, *, out: str = "/out", size: int = 10, mtime_ns: int = 1) -> NewFile:
    return NewFile(
        rel=rel,
        source=Path("/in") / rel,
        output=Path(out) / (rel.rsplit(".", 1)[0] + ".png"),
        archive=Path("/archive") / rel,
        failed=Path("/failed") / rel,
        size=size,
        mtime_ns=mtime_ns,
    )


def new_job(
    files: Sequence[NewFile], *, name: str = "drop", kind: str = "loose", watch: str = "photos"
) -> NewJob:
    return NewJob(watch=watch, name=name, kind=kind, options=OPTIONS, files=files)


def add_queued(ledger: Ledger, *rels: str) -> list[int]:
    """Record one job with ``rels`` and move all of them to ``queued``."""
    _, ids = ledger.create_job(new_job([new_file(rel) for rel in rels]))
    ledger.mark_queued(ids)
    return ids


def raw(db_path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Look at the database with a second, independent connection."""
    connection = sqlite3.connect(db_path)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def file_counts(ledger: Ledger) -> dict[str, int]:
    """Files by state, all watches together (states with no files absent), from the counters."""
    total: Counter[str] = Counter()
    for by_state in ledger.counts()["files"].values():
        total.update(by_state)
    return {state: n for state, n in total.items() if n}


def states(ledger: Ledger, ids: Sequence[int]) -> list[str]:
    return [ledger.file(file_id).state for file_id in ids]


def ids_of(records: Sequence[FileRecord]) -> list[int]:
    return [record.id for record in records]


def open_fds_to(path: Path) -> int:
    """How many descriptors of this process point at ``path`` (Linux /proc)."""
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue
        if target == str(path):
            count += 1
    return count


# --- opening --------------------------------------------------------------------------------------


def test_open_sets_wal_full_sync_busy_timeout_and_schema(ledger: Ledger, db_path: Path) -> None:
    db = ledger._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert ledger.schema_version() == len(MIGRATIONS) == SCHEMA_VERSION
    # WAL is a property of the file: a fresh connection sees it too.
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert raw(db_path, "PRAGMA integrity_check") == [("ok",)]


def test_reopening_is_idempotent_and_keeps_data(db_path: Path, clock: Clock) -> None:
    db_path.parent.mkdir()
    first = Ledger.open(db_path, clock=clock)
    job_id, ids = first.create_job(new_job([new_file("a.jpg")]))
    first.close()
    for _ in range(2):
        again = Ledger.open(db_path, clock=clock)
        assert again.schema_version() == SCHEMA_VERSION
        assert again.job(job_id).total == 1
        assert ids_of(again.job_files(job_id)) == ids
        again.close()
    tables = raw(db_path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert tables == [
        ("content_cache",),
        ("file_counts",),
        ("files",),
        ("hook_deliveries",),
        ("job_counts",),
        ("jobs",),
        ("name_keys",),
        ("settings",),
        ("totals",),
    ]


def test_newer_schema_is_refused_and_connection_closed(db_path: Path, clock: Clock) -> None:
    db_path.parent.mkdir()
    Ledger.open(db_path, clock=clock).close()
    connection = sqlite3.connect(db_path)
    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    connection.close()
    before = open_fds_to(db_path)
    with pytest.raises(LedgerError, match="newer"):
        Ledger.open(db_path, clock=clock)
    # The refused ledger must not stay open (and must not have been "migrated" back).
    assert open_fds_to(db_path) == before
    assert raw(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]


def test_unusable_file_is_a_ledger_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "garbage.sqlite3"
    not_a_db.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(LedgerError, match="ledger"):
        Ledger.open(not_a_db)


# --- recording ------------------------------------------------------------------------------------


def test_create_job_records_job_and_files_pending(
    ledger: Ledger, db_path: Path, clock: Clock
) -> None:
    clock.now = 1234.5
    files = [new_file("a.jpg", size=11, mtime_ns=5), new_file("sub/b.jpg", size=22, mtime_ns=6)]
    job_id, ids = ledger.create_job(new_job(files, name="scan-0930", kind="folder"))
    assert len(ids) == 2 and ids[0] < ids[1]

    job = ledger.job(job_id)
    assert (job.watch, job.name, job.kind, job.state, job.total) == (
        "photos",
        "scan-0930",
        "folder",
        "active",
        2,
    )
    assert job.created_at == 1234.5 and job.finished_at is None

    records = ledger.job_files(job_id)
    assert ids_of(records) == ids
    for record, item in zip(records, files, strict=True):
        assert record.job_id == job_id
        assert record.watch == "photos"
        assert record.state == "pending"
        assert record.attempts == 0
        assert record.error is None
        assert (record.rel, record.source) == (item.rel, item.source)
        assert (record.output, record.archive, record.failed) == (
            item.output,
            item.archive,
            item.failed,
        )
        assert record.options == OPTIONS
        assert record.created_at == 1234.5
    assert raw(db_path, "SELECT size, mtime_ns FROM files ORDER BY id") == [(11, 5), (22, 6)]
    assert file_counts(ledger) == {"pending": 2}
    assert ledger.unfinished() == 2
    assert [j.id for j in ledger.list_jobs()] == [job_id]


def test_create_job_is_one_transaction(ledger: Ledger, db_path: Path) -> None:
    # A NOT NULL violation on the second file must leave neither the job nor the first file.
    bad = NewFile(
        rel="b.jpg",
        source=Path("/in/b.jpg"),
        output=Path("/out/b.png"),
        archive=Path("/archive/b.jpg"),
        failed=Path("/failed/b.jpg"),
        size=None,  # type: ignore[arg-type]
        mtime_ns=1,
    )
    with pytest.raises(sqlite3.IntegrityError):
        ledger.create_job(new_job([new_file("a.jpg"), bad]))
    assert raw(db_path, "SELECT COUNT(*) FROM jobs") == [(0,)]
    assert raw(db_path, "SELECT COUNT(*) FROM files") == [(0,)]
    # And the ledger is still usable afterwards (no transaction left open).
    job_id, _ = ledger.create_job(new_job([new_file("a.jpg")]))
    assert ledger.job(job_id).total == 1


def test_unknown_ids_raise(ledger: Ledger) -> None:
    with pytest.raises(LedgerError):
        ledger.file(999)
    with pytest.raises(LedgerError):
        ledger.job(999)


def test_non_utf8_paths_round_trip(ledger: Ledger) -> None:
    name = os.fsdecode(b"caf\xe9.jpg")
    item = NewFile(
        rel=os.fsdecode(b"sub/caf\xe9.jpg"),
        source=Path(os.fsdecode(b"/in/caf\xe9.jpg")),
        output=Path(os.fsdecode(b"/out/caf\xe9.png")),
        archive=Path(os.fsdecode(b"/archive/caf\xe9.jpg")),
        failed=Path(os.fsdecode(b"/failed/caf\xe9.jpg")),
        size=3,
        mtime_ns=4,
    )
    # The job is named after the dropped file, as the batcher does for loose files.
    job_id, [file_id] = ledger.create_job(new_job([item], name=name))
    record = ledger.file(file_id)
    assert os.fsencode(record.rel) == b"sub/caf\xe9.jpg"
    assert os.fsencode(record.source) == b"/in/caf\xe9.jpg"
    assert os.fsencode(record.output) == b"/out/caf\xe9.png"
    assert os.fsencode(record.archive) == b"/archive/caf\xe9.jpg"
    assert os.fsencode(record.failed) == b"/failed/caf\xe9.jpg"
    assert ledger.is_known_source(item.source, 3, 4)
    assert ledger.path_in_use(Path(os.fsdecode(b"/out/caf\xe9.png")))
    # The name is for people: readable text that still shows where the odd byte was.
    assert ledger.job(job_id).name == "caf\ufffd.jpg"

    # Reasons that quote such a path can be recorded too.
    ledger.mark_queued([file_id])
    ledger.claim(1)
    ledger.requeue(file_id, f"cannot write the output {item.output}")
    assert ledger.file(file_id).error == "cannot write the output /out/caf\ufffd.png"
    ledger.claim(1)
    ledger.mark_failing(file_id, f"cannot decode {item.source}")
    assert ledger.file(file_id).error == "cannot decode /in/caf\ufffd.jpg"


def test_is_known_source_matches_path_size_and_mtime(ledger: Ledger) -> None:
    ledger.create_job(new_job([new_file("a.jpg", size=100, mtime_ns=777)]))
    assert ledger.is_known_source(Path("/in/a.jpg"), 100, 777)
    assert not ledger.is_known_source(Path("/in/a.jpg"), 101, 777)
    assert not ledger.is_known_source(Path("/in/a.jpg"), 100, 778)
    assert not ledger.is_known_source(Path("/in/b.jpg"), 100, 777)


# --- path_in_use ----------------------------------------------------------------------------------


def test_path_in_use_exact_and_below_folder(ledger: Ledger) -> None:
    _, [file_id] = ledger.create_job(new_job([new_file("x.jpg", out="/out/scan")]))
    assert ledger.file(file_id).output == Path("/out/scan/x.png")
    assert ledger.path_in_use(Path("/out/scan/x.png"))  # exact output
    assert ledger.path_in_use(Path("/out/scan"))  # a folder job's output root
    assert ledger.path_in_use(Path("/out"))
    assert ledger.path_in_use(Path("/archive/x.jpg"))  # archive and failed targets count too
    assert ledger.path_in_use(Path("/failed/x.jpg"))
    assert ledger.path_in_use(Path("/failed"))
    assert not ledger.path_in_use(Path("/out/scan/y.png"))
    assert not ledger.path_in_use(Path("/out/scan/x.png/deeper"))
    assert not ledger.path_in_use(Path("/out/sc"))  # a prefix of a name is not a parent


def test_path_in_use_ignores_siblings_with_a_common_prefix(ledger: Ledger) -> None:
    ledger.create_job(new_job([new_file("x.jpg", out="/out/scan-2")]))
    ledger.create_job(new_job([new_file("y.jpg", out="/out/scan0")]))
    ledger.create_job(new_job([new_file("z.jpg", out="/out/scan.old")]))
    # '-' and '.' sort before '/', '0' right after it: none of these is below /out/scan.
    assert not ledger.path_in_use(Path("/out/scan"))
    assert ledger.path_in_use(Path("/out/scan-2"))
    assert ledger.path_in_use(Path("/out/scan0"))
    assert ledger.path_in_use(Path("/out/scan.old"))


def test_path_in_use_frees_after_done_and_failed(ledger: Ledger) -> None:
    _, [ok] = ledger.create_job(new_job([new_file("a.jpg", out="/out/one")]))
    _, [bad] = ledger.create_job(new_job([new_file("b.jpg", out="/out/two")]))
    ledger.mark_queued([ok, bad])
    ledger.claim(2)
    ledger.mark_written(ok, 5)
    ledger.mark_failing(bad, "broken")
    # written and failing are still unfinished: their side effects are not done yet.
    assert ledger.path_in_use(Path("/out/one"))
    assert ledger.path_in_use(Path("/out/two/b.png"))
    ledger.mark_done(ok)
    ledger.mark_failed(bad)
    assert not ledger.path_in_use(Path("/out/one"))
    assert not ledger.path_in_use(Path("/out/one/a.png"))
    assert not ledger.path_in_use(Path("/out/two"))
    assert not ledger.path_in_use(Path("/failed/b.jpg"))


# --- queueing and claiming ------------------------------------------------------------------------


def test_mark_queued_moves_only_pending_files(ledger: Ledger) -> None:
    _, ids = ledger.create_job(new_job([new_file("a.jpg"), new_file("b.jpg"), new_file("c.jpg")]))
    ledger.mark_failing(ids[2], "gone from the inbox")
    ledger.mark_queued(ids[:1])
    assert states(ledger, ids) == ["queued", "pending", "failing"]
    ledger.mark_queued(ids)  # again, and including a failing file: only pending ones move
    assert states(ledger, ids) == ["queued", "queued", "failing"]


def test_claim_oldest_first_counts_attempts_and_respects_limit(
    ledger: Ledger, clock: Clock, db_path: Path
) -> None:
    first = add_queued(ledger, "a.jpg", "b.jpg")
    second = add_queued(ledger, "c.jpg")
    _, [pending] = ledger.create_job(new_job([new_file("d.jpg")]))  # never queued
    assert ledger.claim(0) == []
    assert ledger.claim(-1) == []

    clock.now = 2000.0
    claimed = ledger.claim(2)
    assert ids_of(claimed) == first
    assert all(r.state == "running" and r.attempts == 1 for r in claimed)
    assert states(ledger, first) == ["running", "running"]
    assert [ledger.file(i).attempts for i in first] == [1, 1]
    assert raw(db_path, "SELECT started_at FROM files WHERE id = ?", (first[0],)) == [(2000.0,)]

    rest = ledger.claim(10)
    assert ids_of(rest) == second  # never a file twice, never a pending one
    assert ledger.claim(10) == []
    assert ledger.file(pending).state == "pending"


def test_claim_skips_backed_off_files_until_retry_at(ledger: Ledger, clock: Clock) -> None:
    a, b = add_queued(ledger, "a.jpg", "b.jpg")
    assert ledger.next_retry_at() is None
    ledger.claim(1)
    ledger.requeue(a, "disk full", retry_at=1060.0, refund=True)
    assert ledger.next_retry_at() == 1060.0
    record = ledger.file(a)
    assert (record.state, record.error, record.attempts) == ("queued", "disk full", 0)

    # a is older but backed off: b goes first.
    assert ids_of(ledger.claim(5)) == [b]
    clock.now = 1059.999
    assert ledger.claim(5) == []
    assert ledger.next_retry_at() == 1060.0
    clock.now = 1060.0
    again = ledger.claim(5)
    assert ids_of(again) == [a]
    assert again[0].attempts == 1
    assert ledger.next_retry_at() is None  # claiming clears retry_at


def test_next_retry_at_is_the_earliest_queued(ledger: Ledger) -> None:
    a, b, c = add_queued(ledger, "a.jpg", "b.jpg", "c.jpg")
    ledger.claim(3)
    ledger.requeue(a, "x", retry_at=1500.0)
    ledger.requeue(b, "x", retry_at=1200.0)
    ledger.requeue(c, "x")  # no back-off: claimable now, not "waiting"
    assert ledger.next_retry_at() == 1200.0


# --- transitions check their from-state -----------------------------------------------------------


def test_transitions_refuse_the_wrong_from_state(ledger: Ledger) -> None:
    _, [pending] = ledger.create_job(new_job([new_file("p.jpg")]))
    [queued] = add_queued(ledger, "q.jpg")

    with pytest.raises(LedgerError):
        ledger.mark_written(queued, 5)
    with pytest.raises(LedgerError):
        ledger.mark_written(pending, 5)
    with pytest.raises(LedgerError):
        ledger.requeue(queued, "not running")
    with pytest.raises(LedgerError):
        ledger.mark_done(queued)
    with pytest.raises(LedgerError):
        ledger.mark_failed(queued)
    with pytest.raises(LedgerError):
        ledger.mark_written(999, 5)
    assert states(ledger, [pending, queued]) == ["pending", "queued"]

    ledger.claim(1)
    with pytest.raises(LedgerError):
        ledger.mark_done(queued)  # running, not written
    ledger.mark_written(queued, 5)
    with pytest.raises(LedgerError):
        ledger.mark_written(queued, 5)
    with pytest.raises(LedgerError):
        ledger.mark_failing(queued, "too late")
    with pytest.raises(LedgerError):
        ledger.mark_failed(queued)  # written, not failing
    ledger.mark_done(queued)
    with pytest.raises(LedgerError):
        ledger.mark_done(queued)
    assert ledger.file(queued).state == "done"

    ledger.mark_failing(pending, "gone")
    with pytest.raises(LedgerError):
        ledger.mark_failing(pending, "twice")
    ledger.mark_failed(pending)
    with pytest.raises(LedgerError):
        ledger.mark_failed(pending)
    assert ledger.file(pending).state == "failed"
    assert ledger.file(pending).error == "gone"  # the second reason was not recorded


def test_a_refused_transition_leaves_the_ledger_usable(ledger: Ledger) -> None:
    [file_id] = add_queued(ledger, "a.jpg")
    with pytest.raises(LedgerError):
        ledger.mark_written(file_id, 1)
    # No transaction was left open: the next one works.
    assert ids_of(ledger.claim(1)) == [file_id]


def test_requeue_counts_or_refunds_the_attempt(ledger: Ledger) -> None:
    [file_id] = add_queued(ledger, "a.jpg")
    ledger.claim(1)
    ledger.requeue(file_id, "worker crashed")
    assert ledger.file(file_id).attempts == 1
    assert ledger.claim(1)[0].attempts == 2
    ledger.requeue(file_id, "shutdown", refund=True)
    record = ledger.file(file_id)
    assert (record.state, record.attempts, record.error) == ("queued", 1, "shutdown")


def test_mark_failing_from_each_unfinished_state(ledger: Ledger) -> None:
    _, [pending] = ledger.create_job(new_job([new_file("p.jpg")]))
    queued, running = add_queued(ledger, "q.jpg", "r.jpg")
    ledger.claim(2)  # both running now
    ledger.requeue(queued, "again")  # back to queued
    for file_id in (pending, queued, running):
        ledger.mark_failing(file_id, f"reason {file_id}")
        record = ledger.file(file_id)
        assert (record.state, record.error) == ("failing", f"reason {file_id}")


def test_mark_written_clears_the_error_and_records_bytes(ledger: Ledger, db_path: Path) -> None:
    [file_id] = add_queued(ledger, "a.jpg")
    ledger.claim(1)
    ledger.requeue(file_id, "transient")
    ledger.claim(1)
    ledger.mark_written(file_id, 4321)
    assert ledger.file(file_id).error is None
    assert raw(db_path, "SELECT output_bytes FROM files WHERE id = ?", (file_id,)) == [(4321,)]


# --- job completion -------------------------------------------------------------------------------


def test_job_done_returned_only_by_the_last_file(ledger: Ledger, clock: Clock) -> None:
    clock.now = 100.0
    ids = add_queued(ledger, "a.jpg", "b.jpg", "c.jpg")
    job_id = ledger.file(ids[0]).job_id
    ledger.claim(3)
    for file_id in ids:
        ledger.mark_written(file_id, 1)
    clock.now = 110.0
    assert ledger.mark_done(ids[0]) is None
    assert ledger.mark_done(ids[2]) is None
    assert ledger.job(job_id).state == "active"
    clock.now = 142.5
    finished = ledger.mark_done(ids[1])
    assert finished is not None
    assert (finished.id, finished.watch, finished.name) == (job_id, "photos", "drop")
    assert (finished.state, finished.total, finished.failed) == ("done", 3, 0)
    assert finished.seconds == pytest.approx(42.5)
    job = ledger.job(job_id)
    assert (job.state, job.finished_at) == ("done", 142.5)
    assert ledger.unfinished() == 0
    assert file_counts(ledger) == {"done": 3}


def test_job_failed_when_any_file_failed(ledger: Ledger, clock: Clock) -> None:
    clock.now = 10.0
    ok, bad, worse = add_queued(ledger, "a.jpg", "b.jpg", "c.jpg")
    job_id = ledger.file(ok).job_id
    other = add_queued(ledger, "other.jpg")  # another job stays open throughout
    ledger.claim(4)
    ledger.mark_failing(bad, "not an image")
    assert ledger.mark_failed(bad) is None
    ledger.mark_failing(worse, "too big")
    assert ledger.mark_failed(worse) is None
    ledger.mark_written(ok, 9)
    clock.now = 15.0
    finished = ledger.mark_done(ok)
    assert finished is not None
    assert (finished.id, finished.state) == (job_id, "failed")
    assert (finished.total, finished.failed) == (3, 2)
    assert finished.seconds == pytest.approx(5.0)
    assert ledger.job(job_id).state == "failed"
    assert ledger.job(ledger.file(other[0]).job_id).state == "active"


def test_job_finished_by_a_failure(ledger: Ledger, clock: Clock) -> None:
    [file_id] = add_queued(ledger, "a.jpg")
    ledger.mark_failing(file_id, "gone")
    clock.now += 3.0
    finished = ledger.mark_failed(file_id)
    assert finished is not None
    assert (finished.state, finished.total, finished.failed) == ("failed", 1, 1)
    assert finished.seconds == pytest.approx(3.0)


# --- recovery -------------------------------------------------------------------------------------


def test_recover_requeues_running_and_reports_what_to_finish(ledger: Ledger) -> None:
    _, [pending] = ledger.create_job(new_job([new_file("p.jpg")]))
    queued, running, written, failing, done = add_queued(
        ledger, "q.jpg", "r.jpg", "w.jpg", "f.jpg", "d.jpg"
    )
    ledger.claim(5)
    ledger.requeue(queued, "retry", refund=True)
    ledger.mark_written(written, 1)
    ledger.mark_failing(failing, "bad pixels")
    ledger.mark_written(done, 1)
    ledger.mark_done(done)
    assert ledger.file(running).attempts == 1

    recovery = ledger.recover()
    assert ids_of(recovery.requeued) == [running]
    assert ids_of(recovery.pending) == [pending]
    assert ids_of(recovery.written) == [written]
    assert ids_of(recovery.failing) == [failing]
    assert recovery.failing[0].error == "bad pixels"
    # The requeued file is back in the queue with its attempt refunded, and the record says so.
    record = ledger.file(running)
    assert (record.state, record.attempts) == ("queued", 0)
    assert (recovery.requeued[0].state, recovery.requeued[0].attempts) == ("queued", 0)
    assert recovery.requeued[0].output == record.output
    assert states(ledger, [queued, written, failing, done]) == [
        "queued",
        "written",
        "failing",
        "done",
    ]
    # Recovering again finds nothing running.
    assert ledger.recover().requeued == ()
    assert ids_of(ledger.claim(5)) == [queued, running]


def test_stuck_lists_unfinished_side_effects_without_touching_running(ledger: Ledger) -> None:
    _, [pending] = ledger.create_job(new_job([new_file("p.jpg")]))
    running, written, failing = add_queued(ledger, "r.jpg", "w.jpg", "f.jpg")
    ledger.claim(3)
    ledger.mark_written(written, 1)
    ledger.mark_failing(failing, "bad")
    stuck = ledger.stuck()
    assert stuck.requeued == ()
    assert ids_of(stuck.pending) == [pending]
    assert ids_of(stuck.written) == [written]
    assert ids_of(stuck.failing) == [failing]
    record = ledger.file(running)
    assert (record.state, record.attempts) == ("running", 1)


def test_crash_between_transactions_keeps_committed_state(db_path: Path, clock: Clock) -> None:
    db_path.parent.mkdir()
    first = Ledger.open(db_path, clock=clock)
    job_id, [a, b] = first.create_job(new_job([new_file("a.jpg"), new_file("b.jpg")]))
    first.mark_queued([a, b])
    first.claim(2)
    first.mark_written(a, 3)
    first.close()  # the daemon dies here: b was running, a written but not archived

    second = Ledger.open(db_path, clock=clock)
    assert ledger_states(second, job_id) == {a: "written", b: "running"}
    recovery = second.recover()
    assert ids_of(recovery.requeued) == [b]
    assert ids_of(recovery.written) == [a]
    second.close()

    third = Ledger.open(db_path, clock=clock)  # and dies again right after recovering
    assert ledger_states(third, job_id) == {a: "written", b: "queued"}
    assert third.file(b).attempts == 0
    assert third.mark_done(a) is None
    [again] = third.claim(1)
    assert (again.id, again.attempts) == (b, 1)
    third.mark_written(b, 4)
    finished = third.mark_done(b)
    assert finished is not None and finished.state == "done"
    third.close()


def ledger_states(ledger: Ledger, job_id: int) -> dict[int, str]:
    return {record.id: record.state for record in ledger.job_files(job_id)}


def test_uncommitted_work_is_rolled_back_by_a_crash(db_path: Path, clock: Clock) -> None:
    db_path.parent.mkdir()
    ledger = Ledger.open(db_path, clock=clock)
    [file_id] = add_queued(ledger, "a.jpg")
    # Simulate dying inside a transaction: it was begun and changed, never committed.
    ledger._db.execute("BEGIN IMMEDIATE")
    ledger._db.execute("UPDATE files SET state = 'running' WHERE id = ?", (file_id,))
    ledger._db.close()
    reopened = Ledger.open(db_path, clock=clock)
    assert reopened.file(file_id).state == "queued"
    reopened.close()


# --- the operators' view: counters kept by triggers -----------------------------------------------

WATCHES = ("photos", "scans", "shop")


def grouped_counts(db_path: Path) -> dict[str, dict[str, dict[str, int]]]:
    """What ``counts()`` must say, computed the slow way: GROUP BY over the rows."""
    result: dict[str, dict[str, dict[str, int]]] = {"files": {}, "jobs": {}}
    queries = {
        "files": "SELECT j.watch, f.state, COUNT(*) FROM files f JOIN jobs j ON j.id = f.job_id "
        "GROUP BY j.watch, f.state",
        "jobs": "SELECT watch, state, COUNT(*) FROM jobs GROUP BY watch, state",
    }
    for key, sql in queries.items():
        for watch, state, n in raw(db_path, sql):
            result[key].setdefault(str(watch), {})[str(state)] = int(str(n))
    return result


def job_state_violations(db_path: Path) -> list[tuple[object, ...]]:
    """Jobs whose state disagrees with their files (empty when the ledger is consistent)."""
    return raw(
        db_path,
        "SELECT j.id, j.state, j.cancelled, "
        "SUM(f.state NOT IN ('done', 'failed')) AS open, SUM(f.state = 'failed') AS failed "
        "FROM jobs j JOIN files f ON f.job_id = j.id GROUP BY j.id HAVING "
        "(open > 0 AND j.state != 'active') OR (open = 0 AND j.state != CASE "
        "WHEN j.cancelled THEN 'cancelled' WHEN failed > 0 THEN 'failed' ELSE 'done' END)",
    )


def as_totals(expected: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
    keys = ("files_done", "files_failed", "bytes_in", "bytes_out")
    return {watch: {key: counts[key] for key in keys} for watch, counts in expected.items()}


class RandomWalk:
    """Drives a ledger through random transitions and keeps the totals it must report."""

    def __init__(self, ledger: Ledger, db_path: Path, clock: Clock, seed: int) -> None:
        self.ledger, self.db_path, self.clock = ledger, db_path, clock
        self.rng = random.Random(seed)
        self.size: dict[int, int] = {}
        self.written: dict[int, int] = {}
        self.watch_of: dict[int, str] = {}
        self.expected: dict[str, Counter[str]] = {}
        self.done: Counter[str] = Counter()  # what the walk did, to prove it went everywhere

    def step(self, number: int) -> None:
        self.clock.now += 1.0
        rows = raw(self.db_path, "SELECT id, state, job_id FROM files ORDER BY id")
        action = self.rng.random()
        if action < 0.1 or not rows:
            self.create(number)
        elif action < 0.13:
            try:
                job_id = int(str(self.rng.choice(rows)[2]))
                self.done["cancel"] += len(self.ledger.cancel_job(job_id)) + 1
            except Conflict:
                self.done["cancel_refused"] += 1
        elif action < 0.14:
            limit = self.rng.randint(1, 5)
            self.done["pruned"] += self.ledger.prune(self.clock.now - 100.0, limit=limit)
        elif action < 0.145:
            self.ledger.recover()
            self.done["recover"] += 1
        else:
            file_id, state, _ = self.rng.choice(rows)
            getattr(self, f"from_{state}")(int(str(file_id)), self.rng.random())

    def create(self, number: int) -> None:
        watch = self.rng.choice(WATCHES)
        items = [
            new_file(f"s{number}/{k}.jpg", size=self.rng.randint(1, 10_000))
            for k in range(self.rng.randint(1, 6))
        ]
        _, ids = self.ledger.create_job(new_job(items, watch=watch))
        for file_id, item in zip(ids, items, strict=True):
            self.size[file_id], self.watch_of[file_id] = item.size, watch
        self.done["create"] += 1

    def from_pending(self, file_id: int, choice: float) -> None:
        if choice < 0.8:
            self.ledger.mark_queued([file_id])
            self.done["queue"] += 1
        else:
            self.ledger.mark_failing(file_id, "gone")
            self.done["fail_pending"] += 1

    def from_queued(self, file_id: int, choice: float) -> None:
        if choice < 0.85:
            self.ledger.claim(self.rng.randint(1, 4))  # the oldest queued, maybe not this one
            self.done["claim"] += 1
        else:
            self.ledger.mark_failing(file_id, "too big")
            self.done["fail_queued"] += 1

    def from_running(self, file_id: int, choice: float) -> None:
        if choice < 0.55:
            self.written[file_id] = self.rng.randint(1, 5000)
            self.ledger.mark_written(file_id, self.written[file_id])
            self.done["write"] += 1
        elif choice < 0.8:
            self.ledger.requeue(file_id, "worker crashed", refund=self.rng.random() < 0.5)
            self.done["requeue"] += 1
        else:
            self.ledger.mark_failing(file_id, "not an image")
            self.done["fail_running"] += 1

    def from_written(self, file_id: int, _choice: float) -> None:
        self.ledger.mark_done(file_id)
        totals = self.expected.setdefault(self.watch_of[file_id], Counter())
        totals["files_done"] += 1
        totals["bytes_in"] += self.size[file_id]
        totals["bytes_out"] += self.written[file_id]
        self.done["done"] += 1

    def from_failing(self, file_id: int, _choice: float) -> None:
        self.ledger.mark_failed(file_id)
        self.expected.setdefault(self.watch_of[file_id], Counter())["files_failed"] += 1
        self.done["failed"] += 1

    def from_failed(self, file_id: int, choice: float) -> None:
        if choice < 0.3:
            self.done["retry"] += 1
            n = self.done["retry"]
            self.ledger.requeue_failed(
                file_id,
                Path(f"/failed/{file_id}"),
                Path(f"/out/r{n}.png"),
                Path(f"/archive/r{n}"),
                Path(f"/failed/r{n}"),
            )
        else:
            self.from_done(file_id, choice)

    def from_done(self, file_id: int, _choice: float) -> None:
        with pytest.raises(LedgerError):  # a refused transition changes no counter
            self.ledger.mark_done(file_id)
        self.done["refused"] += 1


@pytest.mark.slow
def test_counters_match_group_by_after_random_transitions(
    ledger: Ledger, db_path: Path, clock: Clock
) -> None:
    walk = RandomWalk(ledger, db_path, clock, seed=20240601)
    for number in range(1500):
        walk.step(number)
        assert ledger.counts() == grouped_counts(db_path), f"step {number}"
        assert ledger.totals() == as_totals(walk.expected), f"step {number}"

    assert job_state_violations(db_path) == []
    flat: Counter[str] = Counter()
    for by_state in grouped_counts(db_path)["files"].values():
        flat.update(by_state)
    assert file_counts(ledger) == {state: n for state, n in flat.items() if n}
    assert ledger.unfinished() == sum(n for s, n in flat.items() if s not in ("done", "failed"))
    # The walk really went everywhere (a change of seed or weights must not hollow it out).
    for what in ("create", "queue", "claim", "write", "requeue", "done", "failed", "retry"):
        assert walk.done[what] >= 10, (what, walk.done)
    for what in ("cancel", "cancel_refused", "pruned", "recover", "refused", "fail_pending"):
        assert walk.done[what] >= 1, (what, walk.done)


def finish_files(ledger: Ledger, ok: Sequence[int], bad: Sequence[int] = ()) -> None:
    """Take pending files (and no others queued) to done (``ok``) or failed (``bad``)."""
    ledger.mark_queued([*ok, *bad])
    claimed = ids_of(ledger.claim(len(ok) + len(bad)))
    assert sorted(claimed) == sorted([*ok, *bad])
    for file_id in ok:
        ledger.mark_written(file_id, 10 * file_id)
        ledger.mark_done(file_id)
    for file_id in bad:
        ledger.mark_failing(file_id, "broken")
        ledger.mark_failed(file_id)


def test_totals_grow_on_done_and_failed_and_survive_prune(
    ledger: Ledger, db_path: Path, clock: Clock
) -> None:
    assert ledger.totals() == {}
    _, [a, b] = ledger.create_job(new_job([new_file("a.jpg", size=100), new_file("b.jpg")]))
    _, [c] = ledger.create_job(new_job([new_file("c.jpg", size=7)], watch="scans"))
    ledger.mark_queued([a, b, c])
    ledger.claim(3)
    ledger.mark_written(a, 40)
    assert ledger.totals() == {}  # written is not yet done
    ledger.mark_done(a)
    ledger.mark_failing(b, "broken")
    ledger.mark_failed(b)
    ledger.mark_written(c, 3)
    ledger.mark_done(c)
    expected = {
        "photos": {"files_done": 1, "files_failed": 1, "bytes_in": 100, "bytes_out": 40},
        "scans": {"files_done": 1, "files_failed": 0, "bytes_in": 7, "bytes_out": 3},
    }
    assert ledger.totals() == expected

    clock.now += 1000
    assert ledger.prune(clock.now) == 2
    assert raw(db_path, "SELECT COUNT(*) FROM files") == [(0,)]
    assert ledger.counts() == {"files": {}, "jobs": {}}
    assert ledger.totals() == expected  # lifetime: history is forgotten, the sums are not


# --- upgrading a version-1 ledger -----------------------------------------------------------------


def make_v1_ledger(db_path: Path) -> None:
    """A ledger as the first release left it: migration 1 only, with rows in every state."""
    db_path.parent.mkdir(exist_ok=True)
    connection = sqlite3.connect(db_path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            connection.execute(statement)
    connection.execute("PRAGMA user_version=1")
    options = json.dumps(OPTIONS_V1)
    jobs = [
        (1, "photos", "one", "folder", "done", 2, 10.0, 20.0),
        (2, "photos", "two", "loose", "failed", 2, 11.0, 21.0),
        (3, "scans", "three", "folder", "active", 5, 12.0, None),
        (4, "scans", "four", "loose", "done", 1, 13.0, 23.0),
    ]
    for job in jobs:
        connection.execute(
            "INSERT INTO jobs (id, watch, name, kind, state, total, created_at, finished_at, "
            "options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*job, options),
        )
    files = [  # (job, state, size, output_bytes)
        (1, "done", 100, 40),
        (1, "done", 200, 70),
        (2, "done", 50, 20),
        (2, "failed", 30, None),
        (3, "pending", 1, None),
        (3, "queued", 2, None),
        (3, "running", 3, None),
        (3, "written", 4, 5),
        (3, "failing", 5, None),
        (4, "done", 7, 3),
    ]
    for number, (job_id, state, size, output_bytes) in enumerate(files, start=1):
        connection.execute(
            "INSERT INTO files (job_id, rel_path, source_path, output_path, archive_path, "
            "failed_path, state, size, mtime_ns, output_bytes, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, 10.0)",
            (
                job_id,
                f"f{number}.jpg".encode(),
                f"/in/f{number}.jpg".encode(),
                f"/out/f{number}.png".encode(),
                f"/archive/f{number}.jpg".encode(),
                f"/failed/f{number}.jpg".encode(),
                state,
                size,
                output_bytes,
            ),
        )
    connection.close()


def test_version_1_ledger_upgrades_in_place_and_backfills(db_path: Path, clock: Clock) -> None:
    make_v1_ledger(db_path)
    before = raw(db_path, "SELECT * FROM files ORDER BY id")
    ledger = Ledger.open(db_path, clock=clock)
    try:
        assert ledger.schema_version() == SCHEMA_VERSION == 7
        # rows untouched; migration 3 added two columns (pages, 1 for every old file, and
        # the job's priority, 0 like every old job's); "quality" two more (the figures and the
        # review path: none for an old file); "content_cache" one: reused_from, NULL (every
        # old file's outputs were made by the model)
        after = raw(db_path, "SELECT * FROM files ORDER BY id")
        assert after == [(*r, 1, 0, None, None, None) for r in before]
        assert raw(db_path, "PRAGMA integrity_check") == [("ok",)]
        assert ledger.counts() == grouped_counts(db_path)
        assert ledger.counts()["files"] == {
            "photos": {"done": 3, "failed": 1},
            "scans": {
                "pending": 1,
                "queued": 1,
                "running": 1,
                "written": 1,
                "failing": 1,
                "done": 1,
            },
        }
        assert ledger.counts()["jobs"] == {
            "photos": {"done": 1, "failed": 1},
            "scans": {"active": 1, "done": 1},
        }
        assert ledger.totals() == {
            "photos": {"files_done": 3, "files_failed": 1, "bytes_in": 350, "bytes_out": 130},
            "scans": {"files_done": 1, "files_failed": 0, "bytes_in": 7, "bytes_out": 3},
        }
        assert raw(db_path, "SELECT DISTINCT cancelled FROM jobs") == [(0,)]
        assert ledger.get_setting("paused") is None
        assert [s.id for s in ledger.list_jobs()] == [4, 3, 2, 1]
        assert ledger.unfinished() == 5
        # migration 4: the unfinished files' targets by their folded names, nothing else
        assert raw(db_path, "SELECT COUNT(*), COUNT(DISTINCT file_id) FROM name_keys") == [(15, 5)]
        assert ledger.name_in_use(Path("/OUT/F5.PNG"))  # pending: in use in any letter case
        assert ledger.name_in_use(Path("/Archive/f9.JPG"))  # failing
        assert not ledger.name_in_use(Path("/OUT/F1.PNG"))  # done: its name is free again
        assert not ledger.path_in_use(Path("/OUT/F5.PNG"))  # the exact check stays exact
        # migration 5: no hook has a delivery yet, so every hook of job 3 will run
        assert raw(db_path, "SELECT COUNT(*) FROM hook_deliveries") == [(0,)]

        # And the triggers carry on from the backfilled numbers.
        ledger.recover()  # the running file goes back to the queue
        ledger.mark_done(8)  # the written one
        ledger.mark_failed(9)  # the failing one
        assert ledger.counts() == grouped_counts(db_path)
        assert ledger.totals()["scans"] == {
            "files_done": 2,
            "files_failed": 1,
            "bytes_in": 11,
            "bytes_out": 8,
        }
    finally:
        ledger.close()
    # Reopening does not migrate (or backfill) a second time.
    again = Ledger.open(db_path, clock=clock)
    assert raw(db_path, "SELECT COUNT(*) FROM name_keys") == [(15,)]
    assert again.totals()["scans"]["files_done"] == 2
    assert again.counts() == grouped_counts(db_path)
    again.close()


# --- listing jobs ---------------------------------------------------------------------------------


def test_list_jobs_filters_and_keyset_paging(ledger: Ledger, clock: Clock) -> None:
    made: dict[int, tuple[str, str]] = {}  # job id -> (watch, state)
    for k in range(30):
        clock.now = 100.0 + k
        watch = WATCHES[k % 2]
        job_id, ids = ledger.create_job(
            new_job([new_file(f"{k}/a.jpg"), new_file(f"{k}/b.jpg")], watch=watch, name=f"j{k}")
        )
        if k % 3 == 0:
            finish_files(ledger, ids)
            made[job_id] = (watch, "done")
        elif k % 3 == 1:
            finish_files(ledger, ids[:1], ids[1:])
            made[job_id] = (watch, "failed")
        else:
            made[job_id] = (watch, "active")  # its files stay pending

    def pages(**filters: str) -> list[list[int]]:
        result: list[list[int]] = []
        before: int | None = None
        while True:
            page = ledger.list_jobs(limit=4, before_id=before, **filters)
            if not page:
                return result
            result.append([s.id for s in page])
            before = page[-1].id

    cases: list[dict[str, str]] = [
        {},
        {"state": "done"},
        {"watch": "scans"},
        {"state": "failed", "watch": "photos"},
        {"state": "active", "watch": "scans"},
    ]
    for filters in cases:
        expected = sorted(
            (
                job_id
                for job_id, (watch, state) in made.items()
                if filters.get("watch", watch) == watch and filters.get("state", state) == state
            ),
            reverse=True,
        )
        got = pages(**filters)
        assert [job_id for page in got for job_id in page] == expected, filters
        assert all(len(page) == 4 for page in got[:-1])

    summaries = {s.id: s for s in ledger.list_jobs(limit=100)}
    assert len(summaries) == 30
    for job_id, (watch, state) in made.items():
        summary = summaries[job_id]
        assert (summary.watch, summary.state, summary.total) == (watch, state, 2)
        assert (summary.done, summary.failed) == {
            "done": (2, 0),
            "failed": (1, 1),
            "active": (0, 0),
        }[state]
        assert summary.cancelled is False
        assert (summary.finished_at is None) == (state == "active")

    # Jobs arriving between two pages neither repeat nor shift what the next page shows.
    first = ledger.list_jobs(limit=5)
    ledger.create_job(new_job([new_file("late.jpg")]))
    second = ledger.list_jobs(limit=5, before_id=first[-1].id)
    assert [s.id for s in first + second] == sorted(made, reverse=True)[:10]

    assert ledger.list_jobs(limit=0) == []
    assert ledger.list_jobs(watch="nowhere") == []
    with pytest.raises(ValueError, match="unknown job state"):
        ledger.list_jobs(state="finished")
    assert [s.id for s in ledger.list_jobs(state=JobState.DONE, limit=2)] == [
        job_id for job_id in sorted(made, reverse=True) if made[job_id][1] == "done"
    ][:2]


# --- job detail -----------------------------------------------------------------------------------


def test_job_detail_counts_options_and_every_file(ledger: Ledger, clock: Clock) -> None:
    clock.now = 500.0
    job_id, [a, b, c, d, e] = ledger.create_job(
        new_job(
            [new_file(f"{n}.jpg", size=i + 1) for i, n in enumerate("abcde")],
            name="scan",
            kind="folder",
        )
    )
    ledger.mark_queued([a, b, c, d])
    clock.now = 510.0
    ledger.claim(2)
    ledger.mark_written(a, 77)
    clock.now = 520.0
    ledger.mark_done(a)
    ledger.mark_failing(b, "broken")
    ledger.mark_failed(b)
    ledger.claim(1)  # c

    detail = ledger.job_detail(job_id)
    assert (detail.id, detail.watch, detail.name, detail.kind, detail.state) == (
        job_id,
        "photos",
        "scan",
        "folder",
        "active",
    )
    assert (detail.total, detail.done, detail.failed, detail.queued, detail.running) == (
        5,
        1,
        1,
        1,
        1,
    )
    assert (detail.created_at, detail.finished_at, detail.cancelled) == (500.0, None, False)
    assert detail.options == OPTIONS
    assert [(f.id, f.rel, f.state) for f in detail.files] == [
        (a, "a.jpg", "done"),
        (b, "b.jpg", "failed"),
        (c, "c.jpg", "running"),
        (d, "d.jpg", "queued"),
        (e, "e.jpg", "pending"),
    ]
    fa, fb, fc = detail.files[:3]
    assert (fa.output, fa.size, fa.output_bytes, fa.attempts) == (Path("/out/a.png"), 1, 77, 1)
    assert (fa.created_at, fa.started_at, fa.finished_at, fa.error) == (500.0, 510.0, 520.0, None)
    assert (fb.error, fb.output_bytes) == ("broken", None)
    assert (fc.started_at, fc.finished_at) == (520.0, None)

    short = ledger.job_detail(job_id, file_limit=2)
    assert [f.id for f in short.files] == [a, b]
    assert (short.total, short.done, short.failed, short.queued, short.running) == (5, 1, 1, 1, 1)

    with pytest.raises(NotFound):
        ledger.job_detail(999)
    with pytest.raises(LedgerError):  # NotFound is a LedgerError: old callers still catch it
        ledger.job_detail(999)


# --- cancel ---------------------------------------------------------------------------------------


def test_cancel_fails_waiting_files_and_lets_running_ones_finish(
    ledger: Ledger, db_path: Path, clock: Clock
) -> None:
    job_id, [r, w, q, p] = ledger.create_job(
        new_job([new_file("r.jpg"), new_file("w.jpg"), new_file("q.jpg"), new_file("p.jpg")])
    )
    ledger.mark_queued([r, w, q])
    ledger.claim(2)  # r and w
    ledger.mark_written(w, 5)

    cancelled = ledger.cancel_job(job_id)
    assert ids_of(cancelled) == [q, p]
    assert all(rec.state == "failing" and rec.error == "cancelled" for rec in cancelled)
    assert cancelled[0].failed == Path("/failed/q.jpg")  # the daemon moves the original there
    assert states(ledger, [r, w, q, p]) == ["running", "written", "failing", "failing"]
    assert ledger.file(q).error == "cancelled"
    summary = ledger.list_jobs()[0]
    assert (summary.state, summary.cancelled) == ("active", True)
    assert ledger.claim(10) == []  # nothing of it runs any more
    assert ledger.cancel_job(job_id) == []  # asking again changes nothing

    assert ledger.mark_failed(q) is None
    assert ledger.mark_failed(p) is None
    assert ledger.mark_done(w) is None  # already written: kept
    # The running file comes back for a retry: it must not run again.
    assert ledger.requeue(r, "worker crashed") == "failing"
    assert (ledger.file(r).state, ledger.file(r).error) == ("failing", "cancelled")
    clock.now += 2.0
    finished = ledger.mark_failed(r)
    assert finished is not None
    assert (finished.id, finished.state, finished.total, finished.failed) == (
        job_id,
        "cancelled",
        4,
        3,
    )
    job = ledger.job(job_id)
    assert (job.state, job.finished_at) == ("cancelled", clock.now)
    assert ledger.counts() == grouped_counts(db_path)
    assert ledger.counts()["jobs"] == {"photos": {"cancelled": 1}}

    with pytest.raises(Conflict, match="already cancelled"):
        ledger.cancel_job(job_id)
    with pytest.raises(NotFound):
        ledger.cancel_job(999)


def test_cancelled_job_whose_running_file_succeeds_still_ends_cancelled(ledger: Ledger) -> None:
    [a, b] = add_queued(ledger, "a.jpg", "b.jpg")
    job_id = ledger.file(a).job_id
    ledger.claim(1)  # a
    assert ids_of(ledger.cancel_job(job_id)) == [b]
    ledger.mark_failed(b)
    ledger.mark_written(a, 3)
    finished = ledger.mark_done(a)
    assert finished is not None and (finished.state, finished.failed) == ("cancelled", 1)


def test_cancel_refuses_finished_jobs(ledger: Ledger) -> None:
    job_id, ids = ledger.create_job(new_job([new_file("a.jpg")]))
    finish_files(ledger, ids)
    with pytest.raises(Conflict, match=f"job {job_id} is already done"):
        ledger.cancel_job(job_id)
    assert ledger.job(job_id).state == "done"


def test_recover_fails_running_files_of_a_cancelled_job(ledger: Ledger) -> None:
    [a, b] = add_queued(ledger, "a.jpg", "b.jpg")
    [other] = add_queued(ledger, "other.jpg")
    ledger.claim(3)
    ledger.cancel_job(ledger.file(a).job_id)  # both running: nothing waiting to fail
    recovery = ledger.recover()  # the daemon died before they came back
    assert ids_of(recovery.requeued) == [other]
    assert ids_of(recovery.failing) == [a, b]
    assert {rec.error for rec in recovery.failing} == {"cancelled"}


# --- retry ----------------------------------------------------------------------------------------


def test_retry_puts_failed_files_back_with_new_paths(
    ledger: Ledger, db_path: Path, clock: Clock
) -> None:
    job_id, [a, b, c] = ledger.create_job(
        new_job([new_file("a.jpg", size=5), new_file("b.jpg", size=6), new_file("c.jpg")])
    )
    finish_files(ledger, [a], [b, c])
    assert ledger.job(job_id).state == "failed"
    totals = ledger.totals()["photos"]
    assert (totals["files_done"], totals["files_failed"]) == (1, 2)

    failed = ledger.retry_job(job_id)
    assert ids_of(failed) == [b, c]
    assert failed[0].failed == Path("/failed/b.jpg")  # where the daemon finds the original
    assert ledger.file(b).state == "failed"  # retry_job itself changes nothing

    clock.now = 5000.0
    record = ledger.requeue_failed(
        b,
        Path("/failed/b.jpg"),
        Path("/out/b-2.png"),
        Path("/archive/b-2.jpg"),
        Path("/failed/b-2.jpg"),
    )
    assert (record.id, record.state, record.attempts, record.error) == (b, "pending", 0, None)
    # The original is taken from where it waits now, the failed folder, into the spool.
    assert (record.source, record.output, record.archive, record.failed) == (
        Path("/failed/b.jpg"),
        Path("/out/b-2.png"),
        Path("/archive/b-2.jpg"),
        Path("/failed/b-2.jpg"),
    )
    assert raw(
        db_path,
        "SELECT retry_at, started_at, finished_at, output_bytes FROM files WHERE id = ?",
        (b,),
    ) == [(None, None, None, None)]
    job = ledger.job(job_id)
    assert (job.state, job.finished_at) == ("active", None)
    assert ledger.path_in_use(Path("/out/b-2.png"))
    assert not ledger.path_in_use(Path("/out/b.png"))
    assert ids_of(ledger.retry_job(job_id)) == [c]  # c is still failed
    with pytest.raises(Conflict, match="not failed"):
        ledger.requeue_failed(b, Path("/w"), Path("/x"), Path("/y"), Path("/z"))
    with pytest.raises(NotFound):
        ledger.requeue_failed(999, Path("/w"), Path("/x"), Path("/y"), Path("/z"))

    finish_files(ledger, [b])
    job = ledger.job(job_id)
    assert (job.state, job.finished_at) == ("failed", 5000.0)  # c is still failed
    ledger.requeue_failed(
        c, Path("/failed/c.jpg"), Path("/out/c-2.png"), Path("/archive/c-2"), Path("/failed/c-2")
    )
    finish_files(ledger, [c])
    assert ledger.job(job_id).state == "done"
    totals = ledger.totals()["photos"]
    assert (totals["files_done"], totals["files_failed"]) == (3, 2)  # failures stay counted
    assert totals["bytes_in"] == 5 + 6 + 10
    assert ledger.counts() == grouped_counts(db_path)

    with pytest.raises(Conflict, match="no failed files"):
        ledger.retry_job(job_id)
    with pytest.raises(NotFound):
        ledger.retry_job(999)


def test_retry_of_a_cancelled_job_clears_the_cancel(ledger: Ledger) -> None:
    [a] = add_queued(ledger, "a.jpg")
    job_id = ledger.file(a).job_id
    [cancelled] = ledger.cancel_job(job_id)
    ledger.mark_failed(cancelled.id)
    assert ledger.job(job_id).state == "cancelled"
    [failed] = ledger.retry_job(job_id)
    ledger.requeue_failed(
        failed.id, failed.failed, Path("/out/a-2.png"), Path("/ar/a-2"), Path("/fa/a-2")
    )
    assert ledger.list_jobs()[0].cancelled is False
    finish_files(ledger, [a])
    assert ledger.job(job_id).state == "done"


# --- settings -------------------------------------------------------------------------------------


def test_settings_round_trip_and_persist(ledger: Ledger, db_path: Path, clock: Clock) -> None:
    assert ledger.get_setting("paused") is None
    ledger.set_setting("paused", "1")
    assert ledger.get_setting("paused") == "1"
    ledger.set_setting("paused", "0")
    assert ledger.get_setting("paused") == "0"
    ledger.set_setting("note", "snow ☃")
    again = Ledger.open(db_path, clock=clock)
    assert (again.get_setting("paused"), again.get_setting("note")) == ("0", "snow ☃")
    again.close()


# --- prune ----------------------------------------------------------------------------------------


def test_prune_deletes_old_finished_jobs_only(ledger: Ledger, db_path: Path, clock: Clock) -> None:
    clock.now = 50.0
    active, [open_file] = ledger.create_job(new_job([new_file("open.jpg")]))
    clock.now = 100.0
    old_done, ids = ledger.create_job(new_job([new_file("a.jpg"), new_file("b.jpg")]))
    finish_files(ledger, ids)
    clock.now = 150.0
    old_cancelled, _ = ledger.create_job(new_job([new_file("x.jpg")], watch="scans"))
    [rec] = ledger.cancel_job(old_cancelled)
    ledger.mark_failed(rec.id)
    clock.now = 200.0
    recent, ids = ledger.create_job(new_job([new_file("c.jpg")]))
    finish_files(ledger, [], ids)
    totals = ledger.totals()

    assert ledger.prune(150.0) == 1  # strictly older than: the cancelled job stays
    assert ledger.prune(160.0) == 1
    assert {s.id for s in ledger.list_jobs()} == {active, recent}
    assert raw(
        db_path, "SELECT COUNT(*) FROM files WHERE job_id IN (?, ?)", (old_done, old_cancelled)
    ) == [(0,)]
    assert ledger.counts() == grouped_counts(db_path)
    assert ledger.counts()["jobs"] == {"photos": {"active": 1, "failed": 1}}
    assert ledger.totals() == totals
    assert ledger.prune(1e12) == 1  # never the active job, however old
    assert ledger.file(open_file).state == "pending"
    assert ledger.prune(1e12) == 0
    with pytest.raises(NotFound):
        ledger.job(recent)


def test_prune_limit_takes_the_oldest_first(ledger: Ledger, clock: Clock) -> None:
    finished_order = []
    for k in range(5):
        clock.now = 100.0 + k
        job_id, ids = ledger.create_job(new_job([new_file(f"{k}.jpg")]))
        finish_files(ledger, ids)
        finished_order.append(job_id)
    assert ledger.prune(1000.0, limit=2) == 2
    assert sorted(s.id for s in ledger.list_jobs()) == finished_order[2:]
    assert ledger.prune(1000.0, limit=0) == 0
    assert ledger.prune(1000.0) == 3


# --- costs stay flat ------------------------------------------------------------------------------


def traced(ledger: Ledger, calls: Callable[[], object]) -> list[str]:
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    try:
        calls()
    finally:
        ledger._db.set_trace_callback(None)
    return statements


def test_status_queries_never_scan_files_or_jobs(ledger: Ledger) -> None:
    for k in range(3):
        job_id, ids = ledger.create_job(new_job([new_file(f"{k}/a.jpg"), new_file(f"{k}/b.jpg")]))
        finish_files(ledger, ids[:1], ids[1:])
    add_queued(ledger, "q.jpg")

    def status() -> None:
        ledger.counts()
        ledger.totals()
        ledger.unfinished()
        ledger.list_jobs(limit=20)
        ledger.list_jobs(state="done", limit=20)
        ledger.list_jobs(watch="photos", limit=20, before_id=3)
        ledger.list_jobs(state="failed", watch="photos", limit=20, before_id=3)
        ledger.job_detail(job_id)
        ledger.prune(0.0)

    statements = [s for s in traced(ledger, status) if s.lstrip().upper().startswith("SELECT")]
    assert len(statements) >= 12
    for sql in statements:
        plan = [str(row[3]) for row in ledger._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        if plan == ["SCAN jobs"] and "ORDER BY id DESC LIMIT" in sql:
            continue  # the newest jobs, in rowid order: the LIMIT stops the walk
        scans = [step for step in plan if step.startswith(("SCAN files", "SCAN jobs"))]
        # Sorting one job's files is bounded by the job, not by the history.
        one_job = "WHERE job_id = " in sql
        sorts = [step for step in plan if "TEMP B-TREE FOR ORDER BY" in step and not one_job]
        assert scans == [] and sorts == [], (sql, plan)


def test_a_running_files_page_count_survives_a_crash_and_its_next_claim(ledger: Ledger) -> None:
    """The dispatcher records the page count before writing the first page: after a crash,
    the file's next claim carries it, so its own half-written pages are not taken for
    someone else's."""
    [file_id] = add_queued(ledger, "scan.tif")
    with pytest.raises(LedgerError):
        ledger.set_pages(file_id, 3)  # queued, not running
    [claimed] = ledger.claim(1)
    assert claimed.pages == 1
    ledger.set_pages(file_id, 3)
    ledger.recover()  # the daemon died while writing the pages
    [again] = ledger.claim(1)
    assert again.id == file_id and again.pages == 3


# --- names as Windows and macOS clients compare them ----------------------------------------------


def test_name_in_use_folds_case_and_accents_and_follows_the_files_state(
    ledger: Ledger, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job_id, (file_id,) = ledger.create_job(
        new_job([new_file("Caf\u00e9.jpg", out=str(out / "Shoot"))])
    )
    for same in ("shoot/CAF\u00c9.png", "SHOOT/cafe\u0301.PNG", "shoot"):
        assert ledger.name_in_use(out / same), same
    assert not ledger.name_in_use(out / "shoot" / "cafe.png")
    assert not ledger.name_in_use(out / "shoo")
    ledger.mark_queued([file_id])
    ledger.mark_failing(file_id, "bad")
    ledger.mark_failed(file_id)  # terminal: the name is free again
    assert not ledger.name_in_use(out / "shoot" / "CAF\u00c9.png")
    moved = out / "Shoot" / "Other.png"
    ledger.requeue_failed(file_id, tmp_path / "src.jpg", moved, tmp_path / "a", tmp_path / "f")
    assert ledger.name_in_use(out / "shoot" / "other.PNG")
    assert not ledger.name_in_use(out / "shoot" / "caf\u00e9.png")  # the old keys went
    assert job_id


# --- hook deliveries (at least once per hook) ---------------------------------------------------


def test_a_hook_delivery_keeps_its_id_until_finished_and_a_retry_starts_anew(
    ledger: Ledger, tmp_path: Path
) -> None:
    job_id, (file_id,) = ledger.create_job(new_job([new_file("a.jpg")]))
    ledger.mark_queued([file_id])
    ledger.mark_failing(file_id, "bad")
    ledger.mark_failed(file_id)
    assert ledger.hook_delivery(job_id, "webhook", "d1") == ("d1", False)
    assert ledger.hook_delivery(job_id, "webhook", "d2") == ("d1", False)  # the same id again
    assert ledger.hook_delivery(job_id, "command", "c1") == ("c1", False)
    ledger.finish_hook(job_id, "command", "c1")
    assert ledger.hook_delivery(job_id, "command", "c9") == ("c1", True)  # never again
    assert ledger.hook_delivery(job_id, "webhook", "d3") == ("d1", False)  # still to do
    ledger.requeue_failed(
        file_id, tmp_path / "a.jpg", tmp_path / "o.png", tmp_path / "a", tmp_path / "f"
    )
    ledger.finish_hook(job_id, "webhook", "d1")  # the old report's hook ending late: no effect
    assert ledger.hook_delivery(job_id, "command", "c2") == ("c2", False)  # a new report
    assert ledger.hook_delivery(job_id, "webhook", "d4") == ("d4", False)
