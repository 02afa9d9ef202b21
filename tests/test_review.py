"""The review folder against a real ledger and real files: hold, approve, reject, crash, cancel.

The daemon end to end is in tests/test_e2e_product.py; here each step of watchd/review.py
and the ledger transitions it uses are driven directly, including the crash windows
between them (docs/design.md, invariants 1 and 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.test_ledger import Clock, add_queued
from watchd.errors import Conflict, LedgerError
from watchd.ledger import FileRecord, Ledger
from watchd.quality import Figures
from watchd.review import ReviewDesk, note_path, sheet_path

FIGURES = (Figures(0.01, 0.05, ("left",)),)
WHY = ("coverage is 0.010 (coverage < 0.02)",)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger.open(tmp_path / "ledger.sqlite3", clock=Clock())
    yield opened
    opened.close()


def running(ledger: Ledger, tmp_path: Path, rel: str = "a.jpg") -> FileRecord:
    [file_id] = add_queued(ledger, rel)
    [record] = ledger.claim(1)
    assert record.id == file_id
    # the outbox of the test ledger is /out; give it one under tmp_path
    return replace(record, output=tmp_path / "out" / "a.png")


def hold(desk: ReviewDesk, record: FileRecord, folder: Path) -> Path:
    return desk.hold(record, folder, [b"cutout"], sheet=b"sheet", reasons=WHY, quality=FIGURES)


def held_one(ledger: Ledger, tmp_path: Path) -> tuple[ReviewDesk, FileRecord, Path]:
    """A desk, a file held by it in tmp_path/review, and where its output waits."""
    desk = ReviewDesk(ledger)
    record = running(ledger, tmp_path)
    return desk, record, hold(desk, record, tmp_path / "review")


def test_hold_writes_output_sheet_and_note_and_the_file_waits(
    ledger: Ledger, tmp_path: Path
) -> None:
    _desk, record, where = held_one(ledger, tmp_path)
    assert where == tmp_path / "review" / "a.png"
    assert where.read_bytes() == b"cutout"
    assert sheet_path(where).read_bytes() == b"sheet"
    note = note_path(where).read_text()
    assert "Why: coverage is 0.010 (coverage < 0.02)" in note
    assert "touches left" in note and f"watchd approve {record.job_id} {record.id}" in note
    held = ledger.file(record.id)
    assert (held.state, held.review) == ("review", where)
    assert ledger.in_review(record.job_id) == [held]
    detail = ledger.job_detail(record.job_id).files[0]
    assert detail.error == "held for review: " + WHY[0]
    assert detail.quality == (FIGURES[0].as_dict(),)
    assert ledger.unfinished() == 1  # the job stays open


def test_a_taken_review_name_is_numbered_and_a_rerun_keeps_its_path(
    ledger: Ledger, tmp_path: Path
) -> None:
    desk = ReviewDesk(ledger)
    (tmp_path / "review").mkdir()
    (tmp_path / "review" / "a.sheet.png").write_bytes(b"someone else's")
    record = running(ledger, tmp_path)
    # a crash after the path was recorded, before the file was held: recovery requeues it
    ledger.set_review_path(record.id, tmp_path / "review" / "a (2).png")
    ledger.recover()
    [again] = ledger.claim(1)
    again = replace(again, output=record.output)
    assert again.review == tmp_path / "review" / "a (2).png"
    assert hold(desk, again, tmp_path / "review") == again.review  # the same files
    assert (tmp_path / "review" / "a.sheet.png").read_bytes() == b"someone else's"


def test_approve_copies_into_the_outbox_then_cleanup_empties_the_review_folder(
    ledger: Ledger, tmp_path: Path
) -> None:
    desk = ReviewDesk(ledger)
    record = running(ledger, tmp_path)
    hold(desk, record, tmp_path / "review")
    [held] = ledger.in_review(record.job_id)
    held = replace(held, output=record.output)
    desk.approve(held)
    assert record.output.read_bytes() == b"cutout"
    assert ledger.file(record.id).state == "written"
    assert (tmp_path / "review" / "a.png").exists()  # until the file is finished
    ReviewDesk.cleanup(held)
    assert list((tmp_path / "review").iterdir()) == []
    ReviewDesk.cleanup(held)  # idempotent: recovery may run it again
    with pytest.raises(LedgerError):
        ledger.approve(record.id)  # no longer in review


def test_approve_refuses_a_held_output_that_is_gone_or_replaced_by_a_link(
    ledger: Ledger, tmp_path: Path
) -> None:
    desk, record, where = held_one(ledger, tmp_path)
    [held] = ledger.in_review(record.job_id)
    where.unlink()
    (tmp_path / "secret").write_bytes(b"not yours")
    where.symlink_to(tmp_path / "secret")
    with pytest.raises(Conflict, match="cannot be read"):
        desk.approve(held)
    assert ledger.file(record.id).state == "review"
    assert not record.output.exists()


def test_reject_and_cancel_fail_a_held_file(ledger: Ledger, tmp_path: Path) -> None:
    desk = ReviewDesk(ledger)
    record = running(ledger, tmp_path)
    hold(desk, record, tmp_path / "review")
    ledger.mark_failing(record.id, "rejected in review: blurry")
    assert ledger.file(record.id).state == "failing"

    other = running(ledger, tmp_path, "b.jpg")
    hold(desk, other, tmp_path / "review2")
    [cancelled] = ledger.cancel_job(other.job_id)
    assert (cancelled.id, cancelled.state, cancelled.review) == (
        other.id,
        "failing",
        tmp_path / "review2" / "a.png",
    )


def test_a_retried_file_forgets_its_figures_and_review_path(ledger: Ledger, tmp_path: Path) -> None:
    desk = ReviewDesk(ledger)
    record = running(ledger, tmp_path)
    hold(desk, record, tmp_path / "review")
    ledger.mark_failing(record.id, "rejected in review: no")
    ledger.mark_failed(record.id)
    ledger.requeue_failed(record.id, Path("/failed/a.jpg"), record.output, Path("/a"), Path("/f"))
    again = ledger.file(record.id)
    assert (again.state, again.review) == ("pending", None)
    assert ledger.job_detail(record.job_id).files[0].quality is None
