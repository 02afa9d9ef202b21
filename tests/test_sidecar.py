"""Per-job options: a folder job's ``watchd.toml`` sidecar, from the inbox to the ledger.

The component tests wire the real parts the daemon uses for intake — a real config file,
the real stability tracker on real folders, the real ledger (SQLite on disk), the real
intake and the dispatcher's real failure path — and stop short of the worker pool, which
intake never touches. The last test runs the real daemon with the real model.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import Clock, DaemonProcess, wait_for
from watchd.commands import submitted_batch
from watchd.config import OUTPUT_KEYS, DaemonConfig, WatchConfig, load_config
from watchd.control_client import ControlClient
from watchd.files import error_note_path
from watchd.finisher import Finisher
from watchd.intake import LOOSE_SIDECAR, NESTED_SIDECAR, SIDECAR_MAX_BYTES, Intake
from watchd.ledger import JobDetail, Ledger
from watchd.stats import Activity
from watchd.watcher import Batch, StabilityTracker

SETTLE = 1.0
VALID = b'model = "u2net_human_seg"\nformat = "webp"\npriority = 7\npost_process_mask = true\n'


@dataclass
class Rig:
    root: Path
    watch: WatchConfig
    ledger: Ledger
    intake: Intake

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def settle(self, name: str) -> list[Batch]:
        """The batches the real tracker makes of a top-level entry once it has settled."""
        tracker = StabilityTracker(self.watch.name, self.inbox, SETTLE)
        tracker.touch(name, 0.0)
        tracker.tick(0.0)
        return tracker.tick(SETTLE + 0.1)

    def accept(self, name: str) -> JobDetail:
        [batch] = self.settle(name)
        job_id = self.intake.accept(batch, self.watch)
        assert job_id is not None
        return self.ledger.job_detail(job_id)


def make_rig(root: Path, after: str = "archive") -> Rig:
    config_path = root / "watchd.toml"
    config_path.write_text(
        '[daemon]\nstate_dir = "state"\n\n[[watch]]\nname = "photos"\ninbox = "inbox"\n'
        f'outbox = "outbox"\narchive = "archive"\nfailed = "failed"\nafter = "{after}"\n'
        "png_compress_level = 4\n"
    )
    watch = load_config(config_path).watches[0]
    for folder in ("inbox", "outbox", "archive", "failed", "state/spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    clock = Clock()
    ledger = Ledger.open(root / "state" / "ledger.sqlite3", clock=clock)
    finisher = Finisher(
        ledger,
        root / "state" / "spool",
        activity=Activity(),
        clock=clock,
        monotonic=clock,
        job_ended=lambda _job: None,
    )
    return Rig(root, watch, ledger, Intake(ledger, root / "state" / "spool", finisher))


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def write(path: Path, data: bytes = b"jpeg bytes") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def album(rig: Rig, sidecar: bytes | None = VALID, name: str = "watchd.toml") -> Path:
    folder = rig.inbox / "album"
    write(folder / "a.jpg", b"a")
    write(folder / "sub" / "b.jpg", b"b")
    if sidecar is not None:
        write(folder / name, sidecar)
    return folder


def spooled(rig: Rig) -> list[str]:
    return sorted(p.name for p in (rig.root / "state" / "spool").iterdir())


# --- a valid sidecar ------------------------------------------------------------------------------


def test_a_valid_sidecar_sets_its_jobs_model_output_and_priority(rig: Rig) -> None:
    album(rig)
    job = rig.accept("album")
    assert job.priority == 7
    assert job.options.model == "u2net_human_seg"
    assert job.options.sidecar == "album/watchd.toml"
    output = job.options.output
    assert (output.format, output.post_process_mask) == ("webp", True)
    assert output.png_compress_level == 4  # not in the sidecar: the watch's value
    # the sidecar is no input; the images are queued, with outputs in the sidecar's format
    assert [(f.rel, f.state, f.output.name) for f in job.files] == [
        ("a.jpg", "queued", "a.webp"),
        ("sub/b.jpg", "queued", "b.webp"),
    ]
    assert spooled(rig) == sorted(str(f.id) for f in job.files)
    # it travelled with its job into the archive folder; the inbox folder is gone
    assert (rig.root / "archive" / "album" / "watchd.toml").read_bytes() == VALID
    assert not (rig.inbox / "album").exists()


def test_any_letter_case_of_the_name_counts(rig: Rig) -> None:
    album(rig, b'format = "mask"\n', name="WatchD.TOML")
    job = rig.accept("album")
    assert job.options.output.format == "mask"
    assert job.options.sidecar == "album/WatchD.TOML"
    assert (rig.root / "archive" / "album" / "WatchD.TOML").exists()


def test_without_a_sidecar_the_watch_decides(rig: Rig) -> None:
    album(rig, None)
    job = rig.accept("album")
    assert (job.priority, job.options.model, job.options.output.format) == (
        0,
        "u2netp",
        "png",
    )
    assert job.options.sidecar is None


def test_after_delete_removes_a_used_sidecar(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, after="delete")
    album(rig)
    assert rig.accept("album").priority == 7
    assert not (rig.inbox / "album").exists()
    assert list((rig.root / "archive").iterdir()) == []


def test_after_keep_leaves_the_sidecar_with_the_originals(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, after="keep")
    folder = album(rig)
    job = rig.accept("album")
    assert (job.priority, job.options.in_place) == (7, True)
    assert (folder / "watchd.toml").read_bytes() == VALID
    [again] = rig.settle("album")
    assert rig.intake.accept(again, rig.watch) is None  # nothing new: taken before


def test_nested_sidecars_set_nothing_and_fail_with_a_note(rig: Rig) -> None:
    folder = album(rig)
    write(folder / "sub" / "watchd.toml", b'format = "jpeg"\n')
    job = rig.accept("album")
    assert job.priority == 7  # the top-level one applies
    by_rel = {f.rel: f for f in job.files}
    assert by_rel["sub/watchd.toml"].state == "failed"
    assert by_rel["sub/watchd.toml"].error == NESTED_SIDECAR
    assert (by_rel["a.jpg"].state, by_rel["sub/b.jpg"].state) == ("queued", "queued")
    failed = rig.root / "failed" / "album" / "sub" / "watchd.toml"
    assert failed.read_bytes() == b'format = "jpeg"\n'
    assert NESTED_SIDECAR in error_note_path(failed).read_text()


def test_a_loose_watchd_toml_is_failed_with_a_note_and_sets_nothing(rig: Rig) -> None:
    write(rig.inbox / "watchd.toml", b"priority = 99\n")
    job = rig.accept("watchd.toml")
    assert (job.kind, job.priority, job.state) == ("loose", 0, "failed")
    [file] = job.files
    assert file.error == LOOSE_SIDECAR
    assert (rig.root / "failed" / "watchd.toml").exists()
    assert (
        "put it at the top of a folder"
        in error_note_path(rig.root / "failed" / "watchd.toml").read_text()
    )


def test_submit_of_a_folder_applies_its_sidecar_and_an_explicit_priority_wins(
    rig: Rig, tmp_path: Path
) -> None:
    source = write(tmp_path / "elsewhere" / "album" / "watchd.toml", VALID).parent
    write(source / "a.jpg")
    batch = submitted_batch("photos", [source], None)
    assert [c.rel for c in batch.files] == ["a.jpg"]
    job_id = rig.intake.accept(batch, rig.watch, intake="copy", priority=-3)
    assert job_id is not None
    job = rig.ledger.job_detail(job_id)
    assert (job.priority, job.options.model) == (-3, "u2net_human_seg")
    assert (source / "watchd.toml").read_bytes() == VALID  # a copy leaves the source alone


# --- an invalid sidecar fails its whole job -------------------------------------------------------


def _symlink(folder: Path) -> None:
    outside = write(folder.parent.parent / "outside.toml", b'format = "webp"\n')
    (folder / "watchd.toml").symlink_to(outside)


def _hard_link(folder: Path) -> None:
    other = write(folder.parent.parent / "other.toml", b'format = "webp"\n')
    os.link(other, folder / "watchd.toml")


def _two(folder: Path) -> None:
    write(folder / "watchd.toml", b"priority = 1\n")
    write(folder / "WATCHD.toml", b"priority = 2\n")


INVALID: dict[str, tuple[bytes | Callable[[Path], None], str]] = {
    "not TOML": (b"format = \n", "album/watchd.toml: not valid TOML"),
    "unknown key": (b'inbox = "/etc"\n', "inbox: not allowed in a job's watchd.toml"),
    "near miss": (b'fromat = "webp"\n', "did you mean 'format'?"),
    "bad value": (b'format = "gif"\n', "album/watchd.toml: format:"),
    "out of range": (b"priority = 1000\n", "album/watchd.toml: priority:"),
    "jpeg without background": (b'format = "jpeg"\n', "background"),
    "not UTF-8": (b"format = '\xff'\n", "the file is not UTF-8"),
    "too large": (b"#" + b"x" * 70_000 + b"\n", "more than the limit of 65536 bytes"),
    "a symlink": (_symlink, "symbolic link"),
    "a hard link": (_hard_link, "hard link"),
    "two of them": (_two, "more than one options file"),
}


@pytest.mark.parametrize("kind", INVALID)
def test_an_invalid_sidecar_fails_every_file_with_a_readable_note(rig: Rig, kind: str) -> None:
    content, fragment = INVALID[kind]
    folder = album(rig, None)
    if callable(content):
        content(folder)
    else:
        write(folder / "watchd.toml", content)
    job = rig.accept("album")  # returns normally: the daemon carries on
    assert (job.state, job.failed, job.queued) == ("failed", 2, 0)
    failed = rig.root / "failed" / "album"
    for file in job.files:
        assert file.state == "failed"
        assert "options file is invalid" in (file.error or "")
        assert fragment in (file.error or "")
        note = error_note_path(failed / file.rel).read_text()
        assert fragment in note and "album/" in note
        assert (failed / file.rel).read_bytes() == (b"a" if file.rel == "a.jpg" else b"b")
    assert spooled(rig) == []
    # the sidecar went with the failed originals, and the inbox folder was taken
    sidecars = sorted(
        p.name for p in failed.iterdir() if p.name.lower().startswith("watchd") and p.suffix
    )
    assert sidecars == (  # names that differ only by case clash in the failed folder too
        ["WATCHD.toml", "watchd (2).toml"] if kind == "two of them" else ["watchd.toml"]
    )
    assert not (rig.inbox / "album").exists()


def test_a_crash_before_the_spool_still_fails_the_job_on_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reason is recorded with each file in the job's own transaction, so a daemon
    killed before the inputs moved fails them on restart instead of processing them
    with options the sidecar did not ask for."""
    rig = make_rig(tmp_path)
    album(rig, b'format = "gif"\n')
    [batch] = rig.settle("album")

    class Killed(Exception):
        pass

    def killed(_self: Intake, _records: object) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Intake, "finish_pending", killed)
        with pytest.raises(Killed):
            rig.intake.accept(batch, rig.watch)
    rig.ledger.close()

    restarted = make_rig(tmp_path)  # a new ledger connection, intake and dispatcher
    recovery = restarted.ledger.recover()
    assert [f.state for f in recovery.pending] == ["pending", "pending"]
    restarted.intake.finish_pending(list(recovery.pending))
    job = restarted.ledger.job_detail(1)
    assert (job.state, job.queued, job.failed) == ("failed", 0, 2)
    assert all("format" in (f.error or "") for f in job.files)
    assert (tmp_path / "failed" / "album" / "a.jpg").exists()


# --- the documentation ---------------------------------------------------------------------------


def test_routing_doc_lists_every_sidecar_key_and_the_limits() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "routing.md").read_text()
    for key in OUTPUT_KEYS:
        assert f"| `{key}` |" in text, key
    assert f"**{SIDECAR_MAX_BYTES // 1024} KiB**" in text
    [aging] = [f.default for f in dataclasses.fields(DaemonConfig) if f.name == "priority_aging"]
    ledger_default = inspect.signature(Ledger.open).parameters["priority_aging"].default
    assert aging == ledger_default  # the ledger's default is the config's
    assert f"default **{aging:g}** seconds" in text


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_daemon_applies_a_sidecar_and_survives_a_bad_one(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory().start()
    root = daemon.root
    staging = root / "staging"
    for name, sidecar in (("broken", b'format = "gif"\n'), ("album", b'format = "webp"\n')):
        folder = staging / name
        folder.mkdir(parents=True)
        shutil.copyfile(photos["coffee.png"], folder / "coffee.png")
        (folder / "watchd.toml").write_bytes(sidecar + b"priority = 5\n")
        os.rename(folder, root / "inbox" / name)  # dropped whole, as a share client would
        wait_for(lambda n=name: not (root / "inbox" / n).exists(), what=f"{name} taken")

    note = error_note_path(root / "failed" / "broken" / "coffee.png")
    assert "broken/watchd.toml: format:" in note.read_text()
    assert (root / "failed" / "broken" / "watchd.toml").exists()
    wait_for((root / "outbox" / "album" / "coffee.webp").exists, what="webp output")
    assert not (root / "outbox" / "album" / "watchd.webp").exists()
    wait_for(lambda: daemon.count("job.done") == 2, what="both jobs ended")
    assert (root / "archive" / "album" / "watchd.toml").exists()

    client = ControlClient(root / "state" / "control.sock")
    assert client.call("ping")["pong"] is True  # still serving
    jobs = {j["name"]: j for j in client.call("jobs")["jobs"]}
    assert (jobs["broken"]["state"], jobs["broken"]["priority"]) == ("failed", 0)
    assert (jobs["album"]["state"], jobs["album"]["priority"]) == ("done", 5)
    [invalid] = daemon.events("job.sidecar_invalid")
    assert "broken/watchd.toml" in invalid["error"]


# --- the batch boundary: whatever goes wrong while taking a batch costs that batch only ----------


def _raising(exc: BaseException) -> Callable[..., Any]:
    def raise_it(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return raise_it


def test_an_unexpected_error_while_taking_a_batch_quarantines_that_batch(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchd import intake

    album(rig)
    [batch] = rig.settle("album")
    monkeypatch.setattr(intake, "read_sidecar", _raising(RuntimeError("a bug")))
    assert rig.intake.take(batch, rig.watch) is None
    failed = rig.root / "failed" / "album"
    assert (failed / "a.jpg").read_bytes() == b"a"
    assert (failed / "sub" / "b.jpg").read_bytes() == b"b"
    assert (failed / "watchd.toml").read_bytes() == VALID
    for name in ("a.jpg", "sub/b.jpg", "watchd.toml"):
        note = error_note_path(failed / name).read_text()
        assert "RuntimeError: a bug" in note and "intake.batch_failed" in note
    assert not (rig.inbox / "album").exists()  # the folder went, as a taken folder does
    assert rig.ledger.list_jobs() == []  # nothing recorded: nothing for recovery to redo


def test_an_io_error_while_taking_a_batch_leaves_it_for_the_next_scan(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from watchd import intake

    album(rig)
    [batch] = rig.settle("album")
    monkeypatch.setattr(intake, "read_sidecar", _raising(OSError(errno.EIO, "I/O error")))
    assert rig.intake.take(batch, rig.watch) is None
    assert (rig.inbox / "album" / "a.jpg").read_bytes() == b"a"
    assert not (rig.root / "failed" / "album").exists()
    monkeypatch.undo()
    [again] = rig.settle("album")  # the next scan offers it again, and then it is taken
    assert rig.intake.take(again, rig.watch) is not None


def test_a_damaged_ledger_while_taking_a_batch_stops_the_daemon(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from watchd import intake

    album(rig)
    [batch] = rig.settle("album")
    damaged = sqlite3.DatabaseError("database disk image is malformed")
    monkeypatch.setattr(intake, "read_sidecar", _raising(damaged))
    with pytest.raises(sqlite3.DatabaseError):
        rig.intake.take(batch, rig.watch)
    assert (rig.inbox / "album" / "a.jpg").exists()  # nothing moved on a ledger gone bad


@pytest.mark.parametrize(
    ("model", "words"),
    [("/etc/passwd", "not a model name"), ("../../x", "not a model name"), ("x.onnx", "suffix")],
)
def test_a_sidecar_model_that_is_no_model_name_is_refused(rig: Rig, model: str, words: str) -> None:
    album(rig, f'model = "{model}"\n'.encode())
    detail = rig.accept("album")
    assert {f.state for f in detail.files} == {"failed"}
    assert all(f"album/watchd.toml: model: {model!r}" in (f.error or "") for f in detail.files)
    assert all(words in (f.error or "") for f in detail.files)


def test_a_sidecar_model_the_pool_cannot_load_is_refused_at_intake(tmp_path: Path) -> None:
    from watchd.errors import ModelError

    rig = make_rig(tmp_path)
    checked: list[str] = []

    def check(model: str) -> None:
        checked.append(model)
        raise ModelError(f"model {model!r} is not installed")

    rig.intake = Intake(rig.ledger, tmp_path / "state" / "spool", rig.intake._finisher, check)
    album(rig, b'model = "isnet-anime"\n')
    detail = rig.accept("album")
    assert checked == ["isnet-anime"]
    assert {f.state for f in detail.files} == {"failed"}
    assert all(
        "model: model 'isnet-anime' is not installed" in (f.error or "") for f in detail.files
    )


@pytest.mark.parametrize("opener", [b"{a = ", b"["])
def test_a_sidecar_nested_too_deeply_for_the_parser_fails_its_job(rig: Rig, opener: bytes) -> None:
    closer = b"}" if opener.startswith(b"{") else b"]"
    album(rig, b"x = " + opener * 3000 + b"1" + closer * 3000 + b"\n")
    detail = rig.accept("album")
    assert {f.state for f in detail.files} == {"failed"}
    assert all("nested too deeply" in (f.error or "") for f in detail.files)


def test_a_config_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    from watchd.errors import ConfigError

    path = tmp_path / "watchd.toml"
    path.write_bytes(b"x = " + b"[" * 5000 + b"]" * 5000 + b"\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


@pytest.mark.parametrize(
    ("sidecar", "words"),
    [
        (b"priority = " + b"1" * 5000 + b"\n", "not valid TOML: a number has too many digits"),
        (b"priority = 0x" + b"f" * 4000 + b"\n", "priority: must be at least -100"),
        (b'format = "' + b"x" * 60000 + b'"\n', "format: must be one of"),
    ],
    ids=["5000-digits", "16000-bits", "60-KiB-string"],
)
def test_a_sidecar_with_a_monstrous_value_fails_its_job_with_a_short_reason(
    rig: Rig, sidecar: bytes, words: str
) -> None:
    album(rig, sidecar)
    detail = rig.accept("album")
    assert {f.state for f in detail.files} == {"failed"}
    for file in detail.files:
        assert words in (file.error or ""), file.error
        assert len(file.error or "") < 1000
