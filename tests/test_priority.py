"""Priorities with aging in ``Ledger.claim``, on a real SQLite ledger with an injected clock.

The rule (docs/routing.md): a queued file's effective priority is its job's priority plus
one step per ``priority_aging`` seconds waited; the highest goes first, the oldest within
equal ones. Nothing here sleeps: the clock is a number the tests move.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support import Clock
from watchd.ledger import FileRecord, Ledger, NewFile, NewJob
from watchd.options import JobOptions

AGING = 60.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    opened = Ledger.open(tmp_path / "ledger.sqlite3", clock=clock, priority_aging=AGING)
    yield opened
    opened.close()


def new_file(rel: str) -> NewFile:
    return NewFile(
        rel=rel,
        source=Path("/in") / rel,
        output=Path("/out") / rel,
        archive=Path("/archive") / rel,
        failed=Path("/failed") / rel,
        size=1,
        mtime_ns=1,
    )


def queue_job(ledger: Ledger, name: str, priority: int, files: int = 1) -> list[int]:
    """Record a job of ``files`` files at the clock's current time and queue them."""
    _, ids = ledger.create_job(
        NewJob(
            watch="photos",
            name=name,
            kind="folder",
            options=JobOptions(model="u2netp", after="archive", max_file_bytes=1 << 20),
            files=[new_file(f"{name}/{i}.jpg") for i in range(files)],
            priority=priority,
        )
    )
    ledger.mark_queued(ids)
    return ids


def names(records: Sequence[FileRecord]) -> list[str]:
    return [r.rel.split("/")[0] for r in records]


def finish(ledger: Ledger, records: Sequence[FileRecord]) -> None:
    for record in records:
        ledger.mark_written(record.id, 1)
        ledger.mark_done(record.id)


# --- ordering -------------------------------------------------------------------------------------


def test_highest_priority_first_then_oldest_within_a_priority(ledger: Ledger, clock: Clock) -> None:
    queue_job(ledger, "low", -5)
    clock.now += 1
    queue_job(ledger, "normal-old", 0)
    clock.now += 1
    queue_job(ledger, "urgent-old", 10)
    clock.now += 1
    queue_job(ledger, "normal-new", 0)
    clock.now += 1
    queue_job(ledger, "urgent-new", 10)
    claimed = ledger.claim(10)
    assert names(claimed) == ["urgent-old", "urgent-new", "normal-old", "normal-new", "low"]
    assert all(r.state == "running" and r.attempts == 1 for r in claimed)


def test_fifo_within_one_priority_across_jobs_and_files(ledger: Ledger, clock: Clock) -> None:
    order: list[int] = []
    for k in range(5):
        order += queue_job(ledger, f"job{k}", 3, files=3)
        clock.now += 0.5
    got: list[int] = []
    while batch := ledger.claim(4):  # claimed a few at a time, as the dispatcher does
        got += [r.id for r in batch]
    assert got == order


def test_claim_respects_the_limit_and_takes_the_best_across_priorities(
    ledger: Ledger, clock: Clock
) -> None:
    a = queue_job(ledger, "a", 0, files=5)
    b = queue_job(ledger, "b", 1, files=5)
    assert [r.id for r in ledger.claim(7)] == b + a[:2]
    assert [r.id for r in ledger.claim(7)] == a[2:]
    assert ledger.claim(7) == []


def test_backed_off_files_are_skipped_until_their_time(ledger: Ledger, clock: Clock) -> None:
    [urgent] = queue_job(ledger, "urgent", 50)
    [normal] = queue_job(ledger, "normal", 0)
    ledger.claim(1)
    ledger.requeue(urgent, "disk full", retry_at=clock.now + 30)
    assert [r.id for r in ledger.claim(5)] == [normal]
    clock.now += 30
    assert [r.id for r in ledger.claim(5)] == [urgent]


def test_job_priority_is_listed(ledger: Ledger) -> None:
    queue_job(ledger, "a", 7, files=2)
    queue_job(ledger, "b", -3)
    assert [(j.name, j.priority) for j in ledger.list_jobs()] == [("b", -3), ("a", 7)]
    assert ledger.job_detail(1).priority == 7
    assert ledger.job(2).priority == -3


# --- aging ----------------------------------------------------------------------------------------


def test_worked_example_a_job_waiting_ten_minutes_overtakes_new_priority_9_work(
    ledger: Ledger, clock: Clock
) -> None:
    """docs/routing.md: with aging 60 s, priority 0 after 600 s is worth 10 > 9."""
    queue_job(ledger, "patient", 0)
    clock.now += 600
    queue_job(ledger, "new-9", 9)
    assert names(ledger.claim(2)) == ["patient", "new-9"]


@pytest.mark.parametrize(
    ("later", "first"),
    [
        (599.0, "urgent"),  # recorded less than 10 x 60 s later: overtakes
        (600.0, "patient"),  # exactly the bound: a tie, and the older one wins
        (601.0, "patient"),
    ],
)
def test_the_overtaking_bound_is_priority_difference_times_aging(
    ledger: Ledger, clock: Clock, later: float, first: str
) -> None:
    queue_job(ledger, "patient", 0)
    clock.now += later
    queue_job(ledger, "urgent", 10)
    clock.now += 3600  # when claimed does not matter: both have aged the same since
    assert names(ledger.claim(1)) == [first]


def test_aging_can_be_changed_on_a_running_ledger(ledger: Ledger, clock: Clock) -> None:
    queue_job(ledger, "patient", 0)
    clock.now += 300
    queue_job(ledger, "urgent", 10)
    ledger.priority_aging = 20.0  # a reload: 300 s now equal 15 steps
    assert names(ledger.claim(1)) == ["patient"]


def steady_stream(ledger: Ledger, clock: Clock, *, backlog: int, seconds: int) -> float | None:
    """Simulate a saturated daemon: one priority-10 file arrives and one file is processed
    every second, on top of a priority-10 backlog and one priority-0 job recorded at t0.

    Returns how long after t0 the priority-0 file was claimed (None: not within ``seconds``).
    """
    t0 = clock.now
    queue_job(ledger, "patient", 0)
    for k in range(backlog):
        queue_job(ledger, f"backlog{k}", 10)
    for second in range(1, seconds + 1):
        clock.now = t0 + second
        queue_job(ledger, f"stream{second}", 10)
        claimed = ledger.claim(1)
        finish(ledger, claimed)
        if names(claimed) == ["patient"]:
            return clock.now - t0
    return None


@pytest.mark.slow
def test_a_steady_stream_of_priority_10_work_never_starves_a_priority_0_job(
    ledger: Ledger, clock: Clock
) -> None:
    """Everything recorded more than 10 x 60 s after it comes after it, so it waits for at
    most the higher work recorded before t0 + 600 s: 600 files of the stream plus the
    backlog, at one file per second here."""
    backlog = 50
    waited = steady_stream(ledger, clock, backlog=backlog, seconds=3 * 3600)
    assert waited is not None, "the priority-0 job starved"
    assert waited <= 10 * AGING + backlog + 1
    assert waited >= 10 * AGING  # and the urgent work did go first until then


@pytest.mark.slow
def test_without_aging_the_same_stream_would_starve_it(tmp_path: Path, clock: Clock) -> None:
    """The control experiment: with aging so slow that it never matters, the job waits
    for the whole simulated run, so the test above measures aging and nothing else."""
    ledger = Ledger.open(tmp_path / "slow.sqlite3", clock=clock, priority_aging=10**9)
    try:
        waited = steady_stream(ledger, clock, backlog=5, seconds=2000)
    finally:
        ledger.close()
    assert waited is None


# --- cost -----------------------------------------------------------------------------------------


def traced_selects(ledger: Ledger, call: Callable[[], object]) -> list[str]:
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)
    try:
        call()
    finally:
        ledger._db.set_trace_callback(None)
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")]


def vm_steps(ledger: Ledger, call: Callable[[], object]) -> int:
    """SQLite virtual-machine steps (in units of 100) spent by ``call``: a measure of work
    that, unlike wall time, does not depend on how busy the machine is."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    ledger._db.set_progress_handler(count, 100)
    try:
        call()
    finally:
        ledger._db.set_progress_handler(None, 100)
    return steps


def test_claim_reads_the_queue_index_and_never_sorts_the_backlog(ledger: Ledger) -> None:
    for priority in (-5, 0, 0, 5, 10):
        queue_job(ledger, f"p{priority}", priority, files=3)
    selects = traced_selects(ledger, lambda: ledger.claim(4))
    assert selects
    for sql in selects:
        plan = [str(row[3]) for row in ledger._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert not [s for s in plan if s.startswith("SCAN files")], (sql, plan)
        assert not [s for s in plan if "TEMP B-TREE" in s], (sql, plan)


@pytest.mark.slow
def test_claim_costs_the_same_with_100000_queued_files(tmp_path: Path, clock: Clock) -> None:
    """100,000 queued files in 100 jobs over five priorities: claiming 8 costs about what
    it costs with 1,000 queued, and still takes exactly the right files; so does asking
    when the next backed-off file is due."""
    costs, retry_costs = {}, {}
    for total in (1_000, 100_000):
        path = tmp_path / f"{total}.sqlite3"
        ledger = Ledger.open(path, clock=clock, priority_aging=AGING)
        try:
            for k in range(100):
                clock.now += 1
                queue_job(ledger, f"j{k}", (-5, 0, 5, 10, 0)[k % 5], files=total // 100)
            clock.now += 10
            costs[total] = vm_steps(ledger, lambda: ledger.claim(8))  # noqa: B023
            # asked on every pass of the daemon's loop: one probe, not a walk of the queue
            retry_costs[total] = vm_steps(ledger, ledger.next_retry_at)
        finally:
            ledger.close()
        # the claimed ones are the first files of the oldest priority-10 job (j3)
        with sqlite3.connect(path) as db:
            running = db.execute(
                "SELECT j.name, MIN(f.id) - MIN(j0.first), COUNT(*) FROM files f "
                "JOIN jobs j ON j.id = f.job_id "
                "JOIN (SELECT job_id, MIN(id) AS first FROM files GROUP BY job_id) j0 "
                "ON j0.job_id = f.job_id WHERE f.state = 'running' GROUP BY j.name"
            ).fetchall()
        assert running == [("j3", 0, 8)]
    assert costs[100_000] <= 2 * costs[1_000] + 10, costs
    assert retry_costs[100_000] <= retry_costs[1_000] + 2, retry_costs


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("101", "must be from -100 to 100 (higher runs first), got 101"),
        ("-101", "must be from -100 to 100 (higher runs first), got -101"),
        ("high", "expected a whole number from -100 to 100, got 'high'"),
        ("1.5", "expected a whole number from -100 to 100, got '1.5'"),
    ],
)
def test_submit_priority_is_checked_before_anything_is_sent(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from watchd.cli import main

    missing_socket = tmp_path / "nobody.sock"  # nothing is sent: no daemon needed
    with pytest.raises(SystemExit) as exited:
        main(["submit", "/a.jpg", "--priority", value, "--socket", str(missing_socket)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --priority" in err and message in err


def test_submit_priority_range_ends_are_accepted() -> None:
    from watchd.cli import build_parser

    for value in ("-100", "0", "100"):
        args = build_parser().parse_args(["submit", "/a.jpg", "--priority", value])
        assert args.priority == int(value)
    assert build_parser().parse_args(["submit", "/a.jpg"]).priority is None
