"""watchd/stuck.py: a name that never settles is reported, then noted beside it."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from watchd.stuck import StuckFiles, note_path
from watchd.watcher import is_ignored


def test_stuck_is_logged_once_then_noted_then_resolved(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "scan.pdf").write_bytes(b"growing")
    stuck = StuckFiles()
    kwargs = {"note_after": 3600.0, "settle_seconds": 2.0}
    with capture_logs() as logs:
        stuck.update("w", inbox, {"scan.pdf": 100.0}, now_mono=800.0, now_wall=5000.0, **kwargs)
        stuck.update("w", inbox, {"scan.pdf": 100.0}, now_mono=900.0, now_wall=5100.0, **kwargs)
    assert [e["event"] for e in logs] == ["intake.stuck"]
    assert logs[0]["changing_seconds"] == 700.0
    assert stuck.count("w") == 1
    assert stuck.listing(900.0) == [
        {"watch": "w", "path": str(inbox / "scan.pdf"), "changing_seconds": 800.0, "note": False}
    ]
    note = note_path(inbox / "scan.pdf")
    assert not note.exists()
    stuck.update("w", inbox, {"scan.pdf": 100.0}, now_mono=3700.0, now_wall=8900.0, **kwargs)
    assert note.name == "scan.pdf.watchd-stuck.txt"
    assert "kept changing" in note.read_text()
    assert is_ignored(note.name)  # intake never takes watchd's own note
    assert stuck.listing(3700.0)[0]["note"] is True
    assert sorted(p.name for p in inbox.iterdir()) == ["scan.pdf", "scan.pdf.watchd-stuck.txt"]
    with capture_logs() as logs:
        stuck.update("w", inbox, {}, now_mono=3800.0, now_wall=9000.0, **kwargs)  # it settled
    assert [e["event"] for e in logs] == ["intake.unstuck"]
    assert not note.exists()
    assert stuck.count("w") == 0


def test_no_note_with_stuck_note_after_zero_and_watches_are_apart(tmp_path: Path) -> None:
    stuck = StuckFiles()
    for watch in ("a", "b"):
        stuck.update(
            watch,
            tmp_path,
            {"x.jpg": 0.0},
            now_mono=1e6,
            now_wall=1e6,
            note_after=0.0,
            settle_seconds=2.0,
        )
    assert list(tmp_path.iterdir()) == []
    stuck.update("a", tmp_path, {}, now_mono=1e6, now_wall=1e6, note_after=0.0, settle_seconds=2)
    assert (stuck.count("a"), stuck.count("b")) == (0, 1)
    stuck.forget_watch("b")
    assert stuck.count("b") == 0
