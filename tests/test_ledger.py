"""Unit tests of the ledger on a real SQLite file (WAL) in ``tmp_path``.

Time is injected through ``Ledger.open(path, clock=...)``: nothing here sleeps.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from watchd.errors import LedgerError
from watchd.ledger import (
    MIGRATIONS,
    SCHEMA_VERSION,
    FileRecord,
    Ledger,
    NewFile,
    NewJob,
)

OPTIONS = {"model": "u2netp", "after": "archive", "png_compress_level": 6, "max_file_bytes": 1000}


class Clock:
    """A settable clock for ``Ledger.open(..., clock=...)``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


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


def new_job(files: Sequence[NewFile], *, name: str = "drop", kind: str = "loose") -> NewJob:
    return NewJob(watch="photos", name=name, kind=kind, options=OPTIONS, files=files)


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
    assert ledger.integrity_check() == "ok"


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
    assert tables == [("files",), ("jobs",)]


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
        assert dict(record.options) == OPTIONS
        assert record.created_at == 1234.5
    assert raw(db_path, "SELECT size, mtime_ns FROM files ORDER BY id") == [(11, 5), (22, 6)]
    assert ledger.file_counts() == {"pending": 2}
    assert ledger.unfinished() == 2
    assert [j.id for j in ledger.jobs()] == [job_id]


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
    assert ledger.file_counts() == {"done": 3}


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
