"""Tests for watchd.options: a job's options as one typed value, and the ledger's stored form.

The stored JSON must stay readable across versions: rows written before a key existed
load with what that key meant then, and what is written now is what older code wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watchd.config import JobOverrides, OutputConfig, WatchConfig, build_config
from watchd.ledger import Ledger, NewFile, NewJob
from watchd.options import JobOptions, job_options


def a_watch(tmp_path: Path, **keys: object) -> WatchConfig:
    watch = {
        "name": "photos",
        "inbox": str(tmp_path / "in"),
        "outbox": str(tmp_path / "out"),
        **keys,
    }
    raw = {"daemon": {"state_dir": str(tmp_path / "state")}, "watch": [watch]}
    return build_config(raw, source=tmp_path / "watchd.toml", base=tmp_path).watches[0]


def test_options_are_frozen_from_the_watch(tmp_path: Path) -> None:
    watch = a_watch(tmp_path, after="keep", format="webp")
    options = job_options(watch)
    assert (options.model, options.after, options.output.format) == (watch.model, "keep", "webp")
    assert options.in_place and options.intake == "inbox" and options.suffix == ".webp"
    copied = job_options(watch, "copy")
    assert copied.copied and not copied.in_place  # a submitted copy waits in the spool
    with pytest.raises(AttributeError):
        options.model = "other"  # type: ignore[misc]


def test_a_sidecar_overrides_model_and_output_and_is_named(tmp_path: Path) -> None:
    watch = a_watch(tmp_path)
    overrides = JobOverrides(model="u2net", output=OutputConfig(format="mask"), priority=3)
    options = job_options(watch, "inbox", overrides, "album/watchd.toml")
    assert (options.model, options.output.format, options.suffix) == ("u2net", "mask", ".png")
    assert options.sidecar == "album/watchd.toml"


def test_the_stored_form_round_trips_and_keeps_its_keys() -> None:
    options = JobOptions(
        model="u2netp",
        after="delete",
        max_file_bytes=5,
        output=OutputConfig(format="jpeg", background="#ffffff"),
        intake="move",
    )
    stored = options.to_json()
    assert list(stored) == ["model", "after", "output", "max_file_bytes", "intake", "in_place"]
    assert "sidecar" not in stored  # only a sidecar's job names one
    assert JobOptions.from_json(json.loads(json.dumps(stored))) == options
    named = JobOptions(model="u2netp", after="archive", max_file_bytes=5, sidecar="a/watchd.toml")
    assert JobOptions.from_json(named.to_json()) == named


def test_rows_from_older_versions_still_load() -> None:
    """The first releases stored no output table (PNG, maybe a level), no intake, no in_place."""
    v1 = {"model": "u2netp", "after": "archive", "png_compress_level": 6, "max_file_bytes": 9}
    options = JobOptions.from_json(v1)
    assert options.output == OutputConfig(png_compress_level=6)
    assert (options.intake, options.in_place, options.sidecar) == ("inbox", False, None)
    bare = JobOptions.from_json({"model": "u2netp", "after": "delete", "max_file_bytes": 9})
    assert bare.output == OutputConfig()


@pytest.mark.parametrize(
    "stored",
    [
        {"after": "archive", "max_file_bytes": 1},  # no model
        {"model": "u2netp", "after": "archive", "max_file_bytes": "many"},
        {"model": "u2netp", "after": "archive", "max_file_bytes": 1, "output": {"colour": 1}},
        ["not", "a", "table"],
    ],
)
def test_a_damaged_stored_form_is_a_clear_error(stored: object) -> None:
    with pytest.raises(ValueError, match="stored options cannot be read"):
        JobOptions.from_json(stored)  # type: ignore[arg-type]


def test_the_ledger_stores_and_returns_the_typed_value(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "ledger.sqlite3")
    try:
        options = JobOptions(
            model="u2netp", after="archive", max_file_bytes=7, output=OutputConfig(format="mask")
        )
        source = tmp_path / "inbox" / "a.jpg"
        new = NewFile(
            rel="a.jpg",
            source=source,
            output=tmp_path / "out" / "a.png",
            archive=tmp_path / "archive" / "a.jpg",
            failed=tmp_path / "failed" / "a.jpg",
            size=1,
            mtime_ns=1,
        )
        job_id, _ids = ledger.create_job(NewJob("photos", "a.jpg", "loose", options, [new]))
        assert ledger.job_detail(job_id).options == options
        assert [f.options for f in ledger.job_files(job_id)] == [options]
    finally:
        ledger.close()
