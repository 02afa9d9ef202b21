"""Outputs and the pages of multi-page inputs never share a name (invariant 2).

A scanned TIFF's page names (``scan-p1.png`` ...) are only known once a worker has
counted its pages, after intake assigned ``scan.png``. Intake therefore keeps
page-like names apart from unfinished outputs, and a TIFF's name apart from
existing first-page names. The real ledger, the real tracker, no daemon.
"""

from __future__ import annotations

from pathlib import Path

from tests.test_sidecar import Rig, make_rig, write
from watchd.files import first_page_names, page_base, page_paths


def _outputs(rig: Rig, name: str) -> list[str]:
    return sorted(f.output.name for f in rig.accept(name).files)


def test_page_base_and_first_page_names_invert_page_paths() -> None:
    out = Path("/out/scan.png")
    for pages in (2, 12, 500):
        for page in page_paths(out, pages):
            assert page_base(page) == out
        assert page_paths(out, pages)[0] in first_page_names(out)
    assert page_base(Path("/out/scan.png")) is None
    assert page_base(Path("/out/top-pics.png")) is None  # "-p" without digits is no page


def test_a_page_like_name_is_renumbered_while_its_base_is_unfinished(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    write(rig.inbox / "scan.tif")
    assert _outputs(rig, "scan.tif") == ["scan.png"]  # recorded, not yet processed
    write(rig.inbox / "scan-p1.jpg")
    assert _outputs(rig, "scan-p1.jpg") == ["scan-p1 (2).png"]  # page 1 of scan.tif may come


def test_a_page_like_name_in_the_same_folder_job_is_renumbered(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    write(rig.inbox / "box" / "scan.tiff")
    write(rig.inbox / "box" / "scan-p01.jpg")
    # sorted: scan-p01.jpg is named first; the TIFF then keeps clear of its page names
    assert _outputs(rig, "box") == ["scan (2).png", "scan-p01.png"]


def test_a_tiff_avoids_a_name_whose_first_page_exists(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    write(rig.root / "outbox" / "scan-p1.png", b"someone's earlier output")
    write(rig.inbox / "scan.tif")
    assert _outputs(rig, "scan.tif") == ["scan (2).png"]
    write(rig.inbox / "photo.jpg")  # not a multi-page format: its first-page names do not matter
    write(rig.root / "outbox" / "photo-p1.png", b"x")
    assert _outputs(rig, "photo.jpg") == ["photo.png"]
