"""The content cache (issue 18, section 3): keys, copies, bounds, and the dispatcher's use.

Real parts throughout: a real config file, the real ledger (SQLite on disk), real intake
into a real spool, the real dispatcher writing real outputs and notes. The one fake is
the worker pool, the slow edge: :class:`CountingPool` answers each task at once with
bytes derived from the input, and counts the tasks, which is what "without running the
model" means here. The real daemon with the real model is in tests/test_e2e_cache.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dispatch_support import Clock, DispatchRig, ImmediatePool, make_dispatch_rig
from tests.test_ledger import new_file
from watchd.commands import submitted_batch
from watchd.completion import file_entry
from watchd.config import OutputConfig, load_config
from watchd.content_cache import CACHE_VERSION, ContentCache, cache_key
from watchd.dispatcher import FILL_BUDGET
from watchd.errors import ConfigError
from watchd.files import error_note_path
from watchd.ledger import Ledger, NewJob
from watchd.options import JobOptions

# --- the key --------------------------------------------------------------------------------------


def test_the_key_changes_with_the_bytes_the_model_and_every_output_option() -> None:
    base = cache_key(b"photo", "u2netp", OutputConfig())
    assert base == cache_key(b"photo", "u2netp", OutputConfig())
    assert len(base) == 64
    assert cache_key(b"photo!", "u2netp", OutputConfig()) != base
    assert cache_key(b"photo", "u2net", OutputConfig()) != base
    # every field of the output options, whatever fields there are (new ones included)
    changed = {
        bool: lambda v: not v,
        int: lambda v: v + 1,
        float: lambda v: v / 2,
        str: lambda v: v + "x",
        type(None): lambda _v: "#000000",
    }
    for field in dataclasses.fields(OutputConfig):
        value = getattr(OutputConfig(), field.name)
        other = dataclasses.replace(OutputConfig(), **{field.name: changed[type(value)](value)})
        assert cache_key(b"photo", "u2netp", other) != base, field.name
    # the background picture's bytes, not only its path (it may change under the same name)
    with_picture = OutputConfig(background_image="/srv/bg.jpg")
    one = cache_key(b"photo", "u2netp", with_picture, b"picture one")
    assert one != cache_key(b"photo", "u2netp", with_picture, b"picture two")
    assert one == cache_key(b"photo", "u2netp", with_picture, b"picture one")


def test_the_key_is_the_same_for_the_typed_options_and_their_recorded_dict() -> None:
    output = OutputConfig(format="webp", background="#102030")
    assert cache_key(b"x", "u2netp", output) == cache_key(
        b"x", "u2netp", dataclasses.asdict(output)
    )
    assert CACHE_VERSION >= 1


# --- the copies and their index -------------------------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger.open(tmp_path / "ledger.sqlite3", clock=Clock())
    yield ledger
    ledger.close()


def recorded_file(ledger: Ledger, rel: str = "a.jpg") -> int:
    _job, [file_id] = ledger.create_job(
        NewJob(
            watch="photos",
            name=rel,
            kind="file",
            options=JobOptions(model="u2netp", after="archive", max_file_bytes=1000),
            files=[new_file(rel)],
        )
    )
    return file_id


def test_a_stored_output_is_found_with_its_earlier_file(ledger: Ledger, tmp_path: Path) -> None:
    cache = ContentCache(ledger, tmp_path / "cache", max_bytes=1000)
    file_id = recorded_file(ledger)
    cache.store("k" * 64, file_id, (b"page one", b"page two"), (640, 480), now=1.0)
    hit = cache.lookup("k" * 64, now=2.0)
    assert hit is not None
    assert hit.pages == (b"page one", b"page two")
    assert (hit.entry.file_id, hit.entry.rel, hit.entry.width, hit.entry.height) == (
        file_id,
        "a.jpg",
        640,
        480,
    )
    assert cache.lookup("z" * 64, now=2.0) is None
    # copies are private to the daemon
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "cache").rglob("*.*"))


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_changed_or_missing_copy_is_never_trusted(
    ledger: Ledger, tmp_path: Path, damage: str
) -> None:
    cache = ContentCache(ledger, tmp_path / "cache", max_bytes=1000)
    cache.store("k" * 64, recorded_file(ledger), (b"page one", b"page two"), (1, 1), now=1.0)
    [copy] = (tmp_path / "cache").rglob("*.2")
    if damage == "changed":
        copy.write_bytes(b"page 2wo")  # same size, other bytes
    else:
        copy.unlink()
    assert cache.lookup("k" * 64, now=2.0) is None
    assert ledger.cache_size() == (0, 0)  # forgotten: the input is processed again
    assert list((tmp_path / "cache").rglob("k*.*")) == []


def test_the_least_recently_used_entries_go_beyond_max_bytes(
    ledger: Ledger, tmp_path: Path
) -> None:
    cache = ContentCache(ledger, tmp_path / "cache", max_bytes=25)
    ids = [recorded_file(ledger, f"{n}.jpg") for n in range(3)]
    cache.store("a" * 64, ids[0], (b"x" * 10,), (1, 1), now=1.0)
    cache.store("b" * 64, ids[1], (b"y" * 10,), (1, 1), now=2.0)
    assert cache.lookup("a" * 64, now=3.0) is not None  # a is now the more recent
    cache.store("c" * 64, ids[2], (b"z" * 10,), (1, 1), now=4.0)
    assert ledger.cache_size() == (2, 20)
    assert cache.lookup("b" * 64, now=5.0) is None
    assert cache.lookup("a" * 64, now=5.0) is not None
    assert not list((tmp_path / "cache").rglob("b*.*"))
    # one output larger than the whole cache is not kept at all
    cache.store("d" * 64, ids[2], (b"w" * 26,), (1, 1), now=6.0)
    assert cache.lookup("d" * 64, now=7.0) is None
    assert ledger.cache_size() == (2, 20)


def test_entries_go_with_their_files_when_the_ledger_is_pruned(
    ledger: Ledger, tmp_path: Path
) -> None:
    cache = ContentCache(ledger, tmp_path / "cache", max_bytes=1000)
    file_id = recorded_file(ledger)
    cache.store("k" * 64, file_id, (b"out",), (1, 1), now=1.0)
    (tmp_path / "cache" / "kk" / ".watchd-9.tmp").write_bytes(b"a crash's temp")
    ledger.mark_queued([file_id])
    ledger.claim(1)
    ledger.mark_failing(file_id, "x")
    ledger.mark_failed(file_id)
    assert ledger.prune(older_than=float("inf")) == 1
    assert ledger.cache_size() == (0, 0)
    assert cache.sweep() == 2  # the orphaned copy and the stray temp file
    assert list((tmp_path / "cache").rglob("*.*")) == []


def test_a_lowered_max_bytes_applies_at_the_next_sweep(ledger: Ledger, tmp_path: Path) -> None:
    cache = ContentCache(ledger, tmp_path / "cache", max_bytes=1000)
    for n, key in enumerate("ab"):
        cache.store(key * 64, recorded_file(ledger, f"{n}.jpg"), (b"x" * 10,), (1, 1), now=n)
    cache.max_bytes = 10
    cache.sweep()
    assert ledger.cache_size() == (1, 10)
    assert cache.lookup("b" * 64, now=9.0) is not None


# --- the dispatcher: reprocess, reuse, skip ------------------------------------------------------


class Rig(DispatchRig):
    pool: ImmediatePool
    cache: ContentCache

    def drop(self, name: str, data: bytes, folder: str = "") -> int:
        """One file, loose or in a folder whose sidecar changes an output option."""
        source = self.root / "drops" / folder / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        if folder:
            (source.parent / "watchd.toml").write_text('format = "webp"\n')
        return self.run(source.parent if folder else source)


def make_rig(root: Path, duplicates: str) -> Rig:
    rig = make_dispatch_rig(root, ImmediatePool(), f'duplicates = "{duplicates}"')
    return Rig(**{f.name: getattr(rig, f.name) for f in dataclasses.fields(rig)})


def test_reuse_writes_the_earlier_output_again_without_the_pool(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, "reuse")
    first = rig.drop("a.jpg", b"the same photo")
    second = rig.drop("b.jpg", b"the same photo")
    assert len(rig.pool.tasks) == 1
    out = tmp_path / "outbox"
    assert (out / "b.png").read_bytes() == (out / "a.png").read_bytes()
    [earlier] = rig.ledger.job_detail(first).files
    [again] = rig.ledger.job_detail(second).files
    assert (again.state, again.reused_from, earlier.reused_from) == ("done", earlier.id, None)
    assert file_entry(again, out)["reused_from"] == earlier.id  # the manifest says so
    assert "reused_from" not in file_entry(earlier, out)
    assert (tmp_path / "archive" / "b.jpg").exists()
    # other bytes, or the same bytes with other options (a sidecar), are new work
    rig.drop("c.jpg", b"another photo")
    rig.drop("a.jpg", b"the same photo", folder="album")
    assert len(rig.pool.tasks) == 3
    assert (out / "album" / "a.webp").exists()


def test_reuse_recomputes_when_the_cached_copy_was_damaged(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, "reuse")
    rig.drop("a.jpg", b"the same photo")
    for copy in (tmp_path / "state" / "cache").rglob("*.1"):
        copy.write_bytes(b"not what was made")
    job = rig.drop("b.jpg", b"the same photo")
    assert len(rig.pool.tasks) == 2
    [again] = rig.ledger.job_detail(job).files
    assert (again.state, again.reused_from) == ("done", None)
    assert (tmp_path / "outbox" / "b.png").read_bytes().startswith(b"cutout of ")
    # and the recomputed output is the cache's entry from now on
    rig.drop("c.jpg", b"the same photo")
    assert len(rig.pool.tasks) == 2


def test_one_fill_finishes_a_bounded_slice_of_hits_and_wakes_the_loop(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, "reuse")
    rig.drop("a.jpg", b"the same photo")
    folder = tmp_path / "drops" / "again"
    folder.mkdir(parents=True)
    for number in range(FILL_BUDGET + 6):
        (folder / f"{number:03d}.jpg").write_bytes(b"the same photo")
    job = rig.intake.accept(submitted_batch("photos", [folder], None), rig.watch, "move")
    assert job is not None
    rig.wakes.clear()
    assert rig.dispatcher.fill() == 0  # nothing handed to the pool ...
    detail = rig.ledger.job_detail(job)
    assert (detail.done, detail.queued) == (FILL_BUDGET, 6)  # ... a slice finished here
    assert rig.wakes  # and the loop comes back for the rest after its other work
    rig.dispatcher.fill()
    assert rig.ledger.job_detail(job).done == FILL_BUDGET + 6
    assert len(rig.pool.tasks) == 1


def test_skip_fails_the_duplicate_naming_the_earlier_job_and_file(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, "skip")
    first = rig.drop("a.jpg", b"the same photo")
    second = rig.drop("b.jpg", b"the same photo")
    assert len(rig.pool.tasks) == 1
    [earlier] = rig.ledger.job_detail(first).files
    [again] = rig.ledger.job_detail(second).files
    assert again.state == "failed"
    note = error_note_path(tmp_path / "failed" / "b.jpg").read_text()
    assert f"a.jpg of job {first} (file {earlier.id}" in note
    assert 'duplicates = "skip"' in note
    assert (tmp_path / "failed" / "b.jpg").read_bytes() == b"the same photo"
    assert not (tmp_path / "outbox" / "b.png").exists()


def test_reprocess_keeps_nothing_and_runs_every_file(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, "reprocess")
    rig.drop("a.jpg", b"the same photo")
    rig.drop("b.jpg", b"the same photo")
    assert len(rig.pool.tasks) == 2
    assert rig.ledger.cache_size() == (0, 0)
    assert not (tmp_path / "state" / "cache").exists()


# --- configuration --------------------------------------------------------------------------------


def config_with(tmp_path: Path, daemon: str = "", watch: str = "") -> Path:
    path = tmp_path / "watchd.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "state"\n{daemon}\n[[watch]]\nname = "photos"\n'
        f'inbox = "inbox"\noutbox = "outbox"\n{watch}\n'
    )
    return path


def test_the_defaults_change_nothing(tmp_path: Path) -> None:
    config = load_config(config_with(tmp_path))
    assert config.watches[0].duplicates == "reprocess"
    assert config.daemon.cache_max_bytes == 2 << 30


@pytest.mark.parametrize(
    ("daemon", "watch", "key", "message"),
    [
        ("", 'duplicates = "once"', "watch[0].duplicates", "must be one of 'reprocess'"),
        ("", "duplicates = true", "watch[0].duplicates", "must be one of"),
        ("cache_max_bytes = -1", "", "daemon.cache_max_bytes", "must be at least 0"),
        ('cache_max_bytes = "2G"', "", "daemon.cache_max_bytes", "expected an integer"),
    ],
)
def test_bad_values_name_the_file_and_the_key(
    tmp_path: Path, daemon: str, watch: str, key: str, message: str
) -> None:
    path = config_with(tmp_path, daemon, watch)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {key}: {message}")


def test_a_sidecar_may_set_duplicates_and_a_bad_one_names_the_sidecar(tmp_path: Path) -> None:
    from watchd.config import sidecar_overrides

    watch = load_config(config_with(tmp_path, watch='duplicates = "reuse"')).watches[0]
    sidecar = Path("album/watchd.toml")
    assert sidecar_overrides(sidecar, b"", watch).duplicates == "reuse"
    assert sidecar_overrides(sidecar, b'duplicates = "skip"\n', watch).duplicates == "skip"
    with pytest.raises(ConfigError) as caught:
        sidecar_overrides(sidecar, b'duplicates = "sometimes"\n', watch)
    assert str(caught.value).startswith("album/watchd.toml: duplicates: must be one of")


def test_the_job_options_keep_duplicates_and_masks_in_their_stored_form() -> None:
    options = JobOptions(
        model="u2netp",
        after="archive",
        max_file_bytes=10,
        duplicates="skip",
        masks={"a.jpg": "a.mask.png"},
    )
    stored = options.to_json()
    assert (stored["duplicates"], stored["masks"]) == ("skip", {"a.jpg": "a.mask.png"})
    assert JobOptions.from_json(stored) == options
    plain = JobOptions(model="u2netp", after="archive", max_file_bytes=10)
    assert "duplicates" not in plain.to_json() and "masks" not in plain.to_json()
    assert JobOptions.from_json(plain.to_json()).duplicates == "reprocess"
