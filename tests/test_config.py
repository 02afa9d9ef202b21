"""Tests for watchd.config: defaults, typed values, path resolution and every error message.

Every error must name the file and the key, because the person reading it is an
operator looking at ``journalctl``; the CLI turns it into exit code 2 without a
traceback.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from watchd import cli
from watchd.config import Config, build_config, load_config
from watchd.errors import ConfigError

FULL = """\
[daemon]
state_dir = "state"
models_dir = "~/models"
log_format = "json"
log_level = "debug"
drain_seconds = 12.5
rescan_interval = 7

[pool]
workers = 3
threads_per_worker = 2
max_attempts = 5
file_timeout = 90

[[watch]]
name = "photos"
inbox = "in/photos"
outbox = "/srv/out/photos"
archive = "done"
failed = "broken"
model = "u2net"
settle_seconds = 0.5
after = "delete"
method = "poll"
poll_interval = 1.5
png_compress_level = 9
max_file_bytes = 1048576

[[watch]]
name = "scans.2024_a-b"
inbox = "in/scans"
outbox = "out/scans"
"""

WATCH = {"name": "w", "inbox": "in", "outbox": "out"}


def write(folder: Path, text: str, name: str = "watchd.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(raw: dict[str, Any], tmp_path: Path) -> str:
    """The message build_config raises for ``raw``, as if it came from tmp_path/w.toml."""
    with pytest.raises(ConfigError) as info:
        build_config(raw, source=tmp_path / "w.toml", base=tmp_path)
    return str(info.value)


def with_watch(**changes: Any) -> dict[str, Any]:
    watch = dict(WATCH)
    watch.update(changes)
    return {"watch": [watch]}


# --- the embedded default ------------------------------------------------------------------------


def test_default_is_rooted_at_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.source is None
    assert config.daemon.state_dir == tmp_path / ".watchd"
    assert config.daemon.models_dir is None
    assert config.daemon.log_format == "auto"
    assert config.daemon.log_level == "info"
    assert config.daemon.drain_seconds == 30.0
    assert config.daemon.rescan_interval == 60.0
    assert config.pool.workers == max(1, os.cpu_count() or 1)
    assert config.pool.threads_per_worker == 1
    assert config.pool.max_attempts == 3
    assert config.pool.file_timeout == 300.0
    (watch,) = config.watches
    assert watch.name == "default"
    assert watch.inbox == tmp_path / "inbox"
    assert watch.outbox == tmp_path / "outbox"
    assert watch.archive == tmp_path / "archive"
    assert watch.failed == tmp_path / "failed"
    assert watch.model == "u2netp"
    assert watch.settle_seconds == 2.0
    assert watch.after == "archive"
    assert watch.method == "auto"
    assert watch.output.png_compress_level == 1
    assert config.watch("default") is watch
    with pytest.raises(KeyError):
        config.watch("nope")


def test_config_is_frozen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool = config.pool  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool.workers = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.daemon.state_dir = tmp_path  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.watches[0].inbox = tmp_path  # type: ignore[misc]
    assert isinstance(config.watches, tuple)


# --- a full file ---------------------------------------------------------------------------------


def test_full_file_parses_to_typed_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)  # relative paths must not follow the cwd
    config = load_config(write(etc, FULL))

    assert isinstance(config, Config)
    assert config.source == etc / "watchd.toml"
    assert config.daemon.state_dir == etc / "state"
    assert config.daemon.models_dir == home / "models"
    assert config.daemon.log_format == "json"
    assert config.daemon.log_level == "debug"
    assert config.daemon.drain_seconds == 12.5
    assert config.daemon.rescan_interval == 7.0
    assert isinstance(config.daemon.rescan_interval, float)

    assert config.pool.workers == 3
    assert config.pool.threads_per_worker == 2
    assert config.pool.max_attempts == 5
    assert config.pool.file_timeout == 90.0
    assert isinstance(config.pool.file_timeout, float)

    photos, scans = config.watches
    assert photos.name == "photos"
    assert photos.inbox == etc / "in" / "photos"
    assert photos.outbox == Path("/srv/out/photos")
    assert photos.archive == etc / "done"
    assert photos.failed == etc / "broken"
    assert photos.model == "u2net"
    assert photos.settle_seconds == 0.5
    assert photos.after == "delete"
    assert photos.method == "poll"
    assert photos.poll_interval == 1.5
    assert photos.output.png_compress_level == 9
    assert photos.max_file_bytes == 1048576

    # Unset archive/failed sit beside the inbox; everything else takes its default.
    assert scans.name == "scans.2024_a-b"
    assert scans.inbox == etc / "in" / "scans"
    assert scans.outbox == etc / "out" / "scans"
    assert scans.archive == etc / "in" / "archive"
    assert scans.failed == etc / "in" / "failed"
    assert scans.model == "u2netp"
    assert scans.settle_seconds == 2.0
    assert scans.after == "archive"
    assert scans.method == "auto"
    assert scans.poll_interval == 5.0
    assert scans.output.png_compress_level == 1
    assert scans.max_file_bytes == 200 * 1024 * 1024
    assert config.watch("scans.2024_a-b") is scans


def test_relative_config_path_resolves_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", '[[watch]]\nname = "a"\ninbox = "../in"\noutbox = "out"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/watchd.toml"))
    assert config.source == tmp_path / "conf" / "watchd.toml"
    assert config.watches[0].inbox == tmp_path / "in"
    assert config.watches[0].outbox == tmp_path / "conf" / "out"
    assert config.daemon.state_dir == tmp_path / "conf" / ".watchd"


def test_tilde_expands_in_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = build_config(
        {
            "daemon": {"state_dir": "~/state", "models_dir": "~/models"},
            "watch": [
                {
                    "name": "a",
                    "inbox": "~/in",
                    "outbox": "~/out",
                    "archive": "~/archive",
                    "failed": "~/failed",
                }
            ],
        },
        source=tmp_path / "w.toml",
        base=tmp_path / "etc",
    )
    home = tmp_path / "home"
    assert config.daemon.state_dir == home / "state"
    assert config.daemon.models_dir == home / "models"
    watch = config.watches[0]
    assert (watch.inbox, watch.outbox, watch.archive, watch.failed) == (
        home / "in",
        home / "out",
        home / "archive",
        home / "failed",
    )


def test_paths_are_normalised(tmp_path: Path) -> None:
    config = build_config(
        with_watch(inbox="a/./b/../in", outbox="out/"), source=tmp_path / "w.toml", base=tmp_path
    )
    assert config.watches[0].inbox == tmp_path / "a" / "in"
    assert config.watches[0].outbox == tmp_path / "out"


def test_int_is_accepted_for_a_float_key(tmp_path: Path) -> None:
    config = build_config(with_watch(settle_seconds=3), source=None, base=tmp_path)
    assert config.watches[0].settle_seconds == 3.0
    assert isinstance(config.watches[0].settle_seconds, float)


# --- errors: every one names the file and the key ------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"watches": [WATCH]}, "watches", "unknown section (did you mean 'watch'?)"),
        ({"demon": {}, "watch": [WATCH]}, "demon", "unknown section (did you mean 'daemon'?)"),
        ({"zzz": 1, "watch": [WATCH]}, "zzz", "unknown section"),
        (
            {"daemon": {"state_dirr": "s"}, "watch": [WATCH]},
            "daemon.state_dirr",
            "unknown key (did you mean 'state_dir'?)",
        ),
        (
            {"pool": {"worker": 2}, "watch": [WATCH]},
            "pool.worker",
            "unknown key (did you mean 'workers'?)",
        ),
        (
            with_watch(setle_seconds=1),
            "watch[0].setle_seconds",
            "unknown key (did you mean 'settle_seconds'?)",
        ),
        (with_watch(colour="red"), "watch[0].colour", "unknown key"),
    ],
)
def test_unknown_names(raw: dict[str, Any], key: str, fragment: str, tmp_path: Path) -> None:
    message = config_error(raw, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: {key}: ")
    assert fragment in message


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path: Path) -> None:
    message = config_error(with_watch(colour="red"), tmp_path)
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"pool": {"workers": "4"}}, "pool.workers", "expected an integer, got str '4'"),
        ({"pool": {"workers": 2.0}}, "pool.workers", "expected an integer, got float 2.0"),
        ({"pool": {"workers": True}}, "pool.workers", "expected an integer, got bool True"),
        (
            {"pool": {"file_timeout": True}},
            "pool.file_timeout",
            "expected a number, got bool True",
        ),
        (
            {"daemon": {"drain_seconds": "10"}},
            "daemon.drain_seconds",
            "expected a number, got str '10'",
        ),
        (
            {"daemon": {"state_dir": ["a", "b"]}},
            "daemon.state_dir",
            "expected a non-empty string, got list ['a', 'b']",
        ),
        ({"daemon": {"models_dir": ""}}, "daemon.models_dir", "expected a non-empty string"),
        ({"daemon": {"log_format": 1}}, "daemon.log_format", "must be one of"),
        ({"daemon": []}, "daemon", "expected a table, got list []"),
        ({"pool": 4}, "pool", "expected a table, got int 4"),
    ],
)
def test_wrong_types_in_tables(
    raw: dict[str, Any], key: str, fragment: str, tmp_path: Path
) -> None:
    message = config_error({**raw, "watch": [WATCH]}, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: {key}: ")
    assert fragment in message


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"inbox": ["in"]}, "inbox", "expected a non-empty string, got list ['in']"),
        ({"outbox": 5}, "outbox", "expected a non-empty string, got int 5"),
        ({"archive": {"a": 1}}, "archive", "expected a non-empty string, got dict"),
        ({"failed": ""}, "failed", "expected a non-empty string, got str ''"),
        ({"model": 3}, "model", "expected a non-empty string, got int 3"),
        ({"settle_seconds": False}, "settle_seconds", "expected a number, got bool False"),
        ({"settle_seconds": "2"}, "settle_seconds", "expected a number, got str '2'"),
        ({"png_compress_level": 1.0}, "png_compress_level", "expected an integer"),
        ({"max_file_bytes": True}, "max_file_bytes", "expected an integer, got bool True"),
        ({"name": 7}, "name", "expected a non-empty string, got int 7"),
    ],
)
def test_wrong_types_in_a_watch(
    changes: dict[str, Any], key: str, fragment: str, tmp_path: Path
) -> None:
    message = config_error(with_watch(**changes), tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: watch[0].{key}: ")
    assert fragment in message


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"pool": {"workers": 0}}, "pool.workers", "must be at least 1 and at most 256, got 0"),
        ({"pool": {"workers": 257}}, "pool.workers", "at most 256, got 257"),
        ({"pool": {"threads_per_worker": 0}}, "pool.threads_per_worker", "at least 1"),
        ({"pool": {"max_attempts": 0}}, "pool.max_attempts", "at least 1"),
        ({"pool": {"file_timeout": 0.5}}, "pool.file_timeout", "must be at least 1, got 0.5"),
        ({"daemon": {"drain_seconds": -1}}, "daemon.drain_seconds", "at least 0, got -1"),
        ({"daemon": {"rescan_interval": 0}}, "daemon.rescan_interval", "at least 1, got 0"),
        (
            with_watch(png_compress_level=10),
            "watch[0].png_compress_level",
            "must be at least 0 and at most 9, got 10",
        ),
        (with_watch(png_compress_level=-1), "watch[0].png_compress_level", "got -1"),
        (
            with_watch(settle_seconds=-1),
            "watch[0].settle_seconds",
            "must be at least 0 and at most 3600, got -1",
        ),
        (with_watch(settle_seconds=3601), "watch[0].settle_seconds", "at most 3600"),
        (with_watch(poll_interval=0.05), "watch[0].poll_interval", "at least 0.1"),
        (with_watch(max_file_bytes=0), "watch[0].max_file_bytes", "at least 1, got 0"),
        # nan passes every comparison and inf overflows timed waits: both are refused
        (with_watch(settle_seconds=float("nan")), "watch[0].settle_seconds", "finite"),
        ({"pool": {"file_timeout": float("inf")}}, "pool.file_timeout", "finite"),
        ({"daemon": {"drain_seconds": float("inf")}}, "daemon.drain_seconds", "finite"),
        ({"daemon": {"rescan_interval": float("nan")}}, "daemon.rescan_interval", "finite"),
    ],
)
def test_out_of_range(raw: dict[str, Any], key: str, fragment: str, tmp_path: Path) -> None:
    raw = {"watch": [WATCH], **raw}
    message = config_error(raw, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: {key}: ")
    assert fragment in message


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        (with_watch(after="move"), "watch[0].after", "'archive', 'delete', 'keep', got 'move'"),
        (with_watch(method="fanotify"), "watch[0].method", "'inotify', 'poll', got 'fanotify'"),
        ({"daemon": {"log_format": "xml"}}, "daemon.log_format", "got 'xml'"),
        ({"daemon": {"log_level": "INFO"}}, "daemon.log_level", "got 'INFO'"),
    ],
)
def test_bad_choices(raw: dict[str, Any], key: str, fragment: str, tmp_path: Path) -> None:
    message = config_error({"watch": [WATCH], **raw}, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: {key}: must be one of ")
    assert fragment in message


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        (with_watch(format="tiff"), "watch[0].format", "must be one of 'png', 'webp'"),
        (with_watch(format="jpeg"), "watch[0].background", 'set background = "#rrggbb"'),
        (with_watch(background="white"), "watch[0].background", 'like "#ffffff"'),
        (with_watch(background="#fff"), "watch[0].background", 'like "#ffffff"'),
        (with_watch(jpeg_quality=0), "watch[0].jpeg_quality", "at least 1 and at most 100"),
        (with_watch(alpha_matting="yes"), "watch[0].alpha_matting", "expected true or false"),
        (
            with_watch(alpha_matting_foreground_threshold=256),
            "watch[0].alpha_matting_foreground_threshold",
            "at most 255",
        ),
        (with_watch(priority=101), "watch[0].priority", "at least -100 and at most 100"),
        (with_watch(on_complete="/bin/true"), "watch[0].on_complete", "no shell is used"),
        (with_watch(on_complete=["notify"]), "watch[0].on_complete", "an absolute path"),
        (with_watch(on_complete=[]), "watch[0].on_complete", "non-empty list"),
        (with_watch(on_complete_timeout=0), "watch[0].on_complete_timeout", "at least 1"),
        (with_watch(webhook_url="ftp://x/y"), "watch[0].webhook_url", "http:// or https://"),
        (with_watch(webhook_secret=""), "watch[0].webhook_secret", "non-empty string"),
        (with_watch(manifest="no"), "watch[0].manifest", "expected true or false"),
        ({**with_watch(), "pool": {"model_cache": 0}}, "pool.model_cache", "at least 1"),
        ({**with_watch(), "pool": {"memory_arena": 1}}, "pool.memory_arena", "true or false"),
        (
            {**with_watch(), "pool": {"lone_file_uses_all_cores": "yes"}},
            "pool.lone_file_uses_all_cores",
            "true or false",
        ),
        ({**with_watch(), "daemon": {"priority_aging": 0}}, "daemon.priority_aging", "at least 1"),
        (
            {**with_watch(), "pool": {"max_files_per_worker": 0}},
            "pool.max_files_per_worker",
            "at least 1",
        ),
        (
            {**with_watch(), "pool": {"max_files_per_worker": "100"}},
            "pool.max_files_per_worker",
            "expected an integer",
        ),
        (
            {
                **with_watch(),
                "pool": {
                    "backend": "dask",
                    "scheduler": "tcp://127.0.0.1:8786",
                    "max_files_per_worker": 10,
                },
            },
            "pool.max_files_per_worker",
            "local pool only",
        ),
        (with_watch(case_sensitive_names="no"), "watch[0].case_sensitive_names", "true or false"),
        (with_watch(stuck_after=0), "watch[0].stuck_after", "at least 1"),
        (
            with_watch(stuck_after=2, settle_seconds=2),
            "watch[0].stuck_after",
            "longer than settle_seconds (2)",
        ),
        (with_watch(stuck_note_after=-1), "watch[0].stuck_note_after", "at least 0"),
        (
            with_watch(stuck_after=600, stuck_note_after=60),
            "watch[0].stuck_note_after",
            "0 (no note) or at least stuck_after (600)",
        ),
        (with_watch(ignore="*.bak"), "watch[0].ignore", "a list of patterns"),
        (with_watch(ignore=[3]), "watch[0].ignore", "a list of patterns"),
        (with_watch(ignore=[""]), "watch[0].ignore", "must name something"),
        (with_watch(ignore=["/"]), "watch[0].ignore", "must name something"),
        (with_watch(ignore=["drafts/*.jpg"]), "watch[0].ignore", "not a path; use '*.jpg'"),
        (with_watch(ignore=["*"]), "watch[0].ignore", "would ignore every file"),
    ],
)
def test_bad_output_priority_and_hook_values(
    raw: dict[str, Any], key: str, fragment: str, tmp_path: Path
) -> None:
    message = config_error(raw, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: {key}: "), message
    assert fragment in message, message


@pytest.mark.parametrize("key", ["name", "inbox", "outbox"])
def test_missing_required_watch_keys(key: str, tmp_path: Path) -> None:
    watch = {k: v for k, v in WATCH.items() if k != key}
    message = config_error({"watch": [watch]}, tmp_path)
    assert message == f"{tmp_path / 'w.toml'}: watch[0].{key}: missing (required)"


@pytest.mark.parametrize(
    "raw",
    [{}, {"daemon": {}}, {"watch": []}, {"watch": {"name": "a"}}, {"watch": "a"}],
    ids=["empty", "daemon-only", "empty-list", "table-not-array", "string"],
)
def test_a_file_needs_a_watch(raw: dict[str, Any], tmp_path: Path) -> None:
    message = config_error(raw, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: watch: ")
    assert "[[watch]]" in message


def test_an_empty_file_needs_a_watch(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"watch: at least one \[\[watch\]\] table is needed"):
        load_config(path)


def test_a_watch_must_be_a_table(tmp_path: Path) -> None:
    message = config_error({"watch": [WATCH, "second"]}, tmp_path)
    assert message == f"{tmp_path / 'w.toml'}: watch[1]: expected a table, got str 'second'"


def test_duplicate_watch_names(tmp_path: Path) -> None:
    second = {"name": "w", "inbox": "in2", "outbox": "out2"}
    message = config_error({"watch": [WATCH, second]}, tmp_path)
    assert message == f"{tmp_path / 'w.toml'}: watch[1].name: 'w' is used by two watches"


def test_two_watches_sharing_an_inbox(tmp_path: Path) -> None:
    second = {"name": "v", "inbox": "./in/", "outbox": "out2"}
    message = config_error({"watch": [WATCH, second]}, tmp_path)
    assert message == (
        f"{tmp_path / 'w.toml'}: watch[1].inbox: {tmp_path / 'in'} is already the inbox of "
        "watch 'w'"
    )


@pytest.mark.parametrize("inner_first", [True, False])
def test_nested_inboxes(inner_first: bool, tmp_path: Path) -> None:
    # archive/failed are set explicitly so that only the inbox nesting is wrong
    outer = {"name": "outer", "inbox": "in", "outbox": "o1", "archive": "a1", "failed": "f1"}
    inner = {"name": "inner", "inbox": "in/sub", "outbox": "o2", "archive": "a2", "failed": "f2"}
    watches = [inner, outer] if inner_first else [outer, inner]
    message = config_error({"watch": watches}, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: watch[1].inbox: ")
    assert "nested" in message


@pytest.mark.parametrize("key", ["outbox", "archive", "failed", "state_dir"])
@pytest.mark.parametrize("relation", ["equal", "inside", "containing"])
def test_inbox_overlapping_an_output_folder(key: str, relation: str, tmp_path: Path) -> None:
    target = {"equal": "in", "inside": "in/sub", "containing": "."}[relation]
    watch = {"name": "w", "inbox": "in", "outbox": "out", "archive": "ar", "failed": "fa"}
    raw: dict[str, Any]
    if key == "state_dir":
        raw = {"daemon": {"state_dir": target}, "watch": [watch]}
    else:
        raw = {"daemon": {"state_dir": "state"}, "watch": [{**watch, key: target}]}
    message = config_error(raw, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: watch[0].inbox: ")
    where = "daemon.state_dir" if key == "state_dir" else f"watch[0].{key}"
    assert f"and {where} (" in message
    assert "overlap" in message


def test_inbox_overlapping_another_watchs_outbox(tmp_path: Path) -> None:
    first = {"name": "a", "inbox": "in1", "outbox": "in2/out"}
    second = {"name": "b", "inbox": "in2", "outbox": "out2"}
    message = config_error({"watch": [first, second]}, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: watch[1].inbox: ")
    assert "watch[0].outbox" in message


def test_default_archive_beside_the_inbox_overlapping_an_inbox(tmp_path: Path) -> None:
    # archive defaults to <inbox>/../archive; an inbox called "archive" meets it
    message = config_error(with_watch(inbox="archive"), tmp_path)
    assert "watch[0].inbox" in message
    assert "watch[0].archive" in message


@pytest.mark.parametrize(
    "name",
    ["../x", "", "a/b", ".hidden", "-dash", "with space", "x" * 65, "a\n", "tab\t", "ünï"],
)
def test_invalid_watch_names(name: str, tmp_path: Path) -> None:
    message = config_error(with_watch(name=name), tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: watch[0].name: ")


@pytest.mark.parametrize("name", ["a", "Photos_2024", "scans.v2", "x-y", "9", "x" * 64])
def test_valid_watch_names(name: str, tmp_path: Path) -> None:
    config = build_config(with_watch(name=name), source=None, base=tmp_path)
    assert config.watches[0].name == name


def test_errors_without_a_file_name_the_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"pool": {"workers": 0}}, source=None, base=tmp_path)
    assert str(info.value).startswith("the built-in default configuration: pool.workers: ")


# --- errors reading the file ---------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: no such config file"


def test_a_folder_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a folder, not a config file"


def test_a_file_on_the_way_is_not_a_folder(tmp_path: Path) -> None:
    path = write(tmp_path, FULL) / "x.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read the config file: Not a directory"


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, which reads anything: make open() refuse as it would for a user.
    path = write(tmp_path, FULL)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("watchd.tomlfile.open", refuse, raising=False)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: permission denied reading the config file"


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, '[[watch]]\nname = "a"\ninbox = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line 3" in message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[watch]]\nname = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not valid TOML: the file is not UTF-8"


def test_error_in_a_file_names_the_resolved_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[[watch]]\nname = "a"\ninbox = "in"\noutbox = "out"\nsetle_seconds = 1\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(Path("watchd.toml"))
    assert str(info.value) == (
        f"{tmp_path / 'watchd.toml'}: watch[0].setle_seconds: unknown key "
        "(did you mean 'settle_seconds'?)"
    )


# --- the CLI -------------------------------------------------------------------------------------


def test_check_config_prints_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, FULL)
    # FULL names folders and a model this machine does not have: the config is still
    # printed in full, and each problem is reported on stderr with exit code 2.
    assert cli.main(["check-config", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert f"watchd: {path}: watch[0].outbox: /srv/out/photos does not exist" in captured.err
    assert f"watchd: {path}: watch[0].model: " in captured.err
    out = captured.out
    assert f"configuration from {path}" in out
    config = load_config(path)
    sections: list[Any] = [config.daemon, config.pool]
    for watch in config.watches:  # output and hooks are nested in code, flat in the file
        sections += [watch, watch.output, watch.hooks]
    for section in sections:
        for field in dataclasses.fields(section):
            if field.name in ("output", "hooks"):
                continue
            shown = f"\n{field.name} = " in out or f"\n# {field.name} = (not set)" in out
            shown = shown or f"\n# {field.name} = (set; not shown)" in out
            assert shown, field.name
    assert out.count("[[watch]]") == 2
    assert "[daemon]" in out
    assert "[pool]" in out
    # defaults filled in for the second watch
    second = out.split("[[watch]]")[2]
    assert 'model = "u2netp"' in second
    assert "settle_seconds = 2.0" in second
    assert 'after = "archive"' in second
    assert f'archive = "{tmp_path / "in" / "archive"}"' in second
    assert "workers = 3\n" in out
    assert f'state_dir = "{tmp_path / "state"}"' in out


def test_check_config_without_a_file_prints_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "the built-in default" in out
    assert 'name = "default"' in out
    assert f'inbox = "{tmp_path / "inbox"}"' in out
    assert "# models_dir = (not set)" in out
    assert f"workers = {max(1, os.cpu_count() or 1)}\n" in out


def test_check_config_output_is_valid_toml_that_loads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, FULL)
    assert cli.main(["check-config", "--config", str(path)]) == 2  # problems: see above
    again = write(tmp_path, capsys.readouterr().out, name="again.toml")
    assert load_config(again) == dataclasses.replace(load_config(path), source=again)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[pool]\nworkers = 0\n", "pool.workers"),
        ('[[watch]]\nname = "a"\ninbox = "in"\noutbox = "out"\nafter = "move"\n', "watch[0].after"),
        ('[[watch]]\nname = "a"\ninbox = "in"\noutbox = "in/out"\n', "watch[0].inbox"),
    ],
)
def test_check_config_bad_config_exits_2(
    text: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    assert cli.main(["check-config", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"watchd: {path}: {key}: ")
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("what", ["missing", "folder", "not-a-folder", "bad-toml", "latin-1"])
def test_check_config_unreadable_exits_2(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = {
        "missing": tmp_path / "nope.toml",
        "folder": tmp_path,
        "not-a-folder": write(tmp_path, "") / "x.toml",
        "bad-toml": write(tmp_path, "[[watch]\n", name="bad.toml"),
        "latin-1": tmp_path / "latin.toml",
    }[what]
    if what == "latin-1":
        path.write_bytes("# caf\xe9\n".encode("latin-1"))
    assert cli.main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"watchd: {path}: ")
    assert "Traceback" not in err


def test_models_path_prints_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "u2netp.onnx").write_bytes(b"not really a model")
    path = write(
        tmp_path,
        f'[daemon]\nmodels_dir = "{models}"\n[[watch]]\nname = "a"\ninbox = "in"\noutbox = "out"\n',
    )
    assert cli.main(["models", "path", "u2netp", "--config", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert Path(out) == models / "u2netp.onnx"


def test_models_path_of_a_missing_model_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = write(
        tmp_path,
        f'[daemon]\nmodels_dir = "{models}"\n[[watch]]\nname = "a"\ninbox = "in"\noutbox = "out"\n',
    )
    assert cli.main(["models", "path", "u2netp", "--config", str(path)]) == 1
    out = capsys.readouterr().out.strip()
    assert Path(out).parent in (models, models / "u2netp")
    assert Path(out).name == "u2netp.onnx"


def test_models_path_with_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[daemon]\nmodel_dir = 'x'\n")
    assert cli.main(["models", "path", "u2netp", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"watchd: {path}: daemon.model_dir: unknown key")
    assert "did you mean 'models_dir'?" in err


# --- [http] --------------------------------------------------------------------------------------


def test_the_built_in_default_listens_on_loopback_8765(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    http = load_config(None).http
    assert http is not None
    assert http.listen == (("127.0.0.1", 8765),)
    assert http.urls() == ["http://127.0.0.1:8765"]
    assert http.tokens_file is None
    assert http.watch == "default"
    assert http.cors_origins == ()


def test_a_file_without_http_has_no_http_door(tmp_path: Path) -> None:
    assert build_config(with_watch(), source=tmp_path / "w.toml", base=tmp_path).http is None


def test_http_keys_parse(tmp_path: Path) -> None:
    raw = with_watch()
    raw["http"] = {
        "listen": ["127.0.0.1:0", "[::1]:8766", "0.0.0.0:8080"],
        "tokens_file": "tokens.txt",
        "max_upload_bytes": 1000,
        "max_files_per_job": 5,
        "max_queued_files": 7,
        "watch": WATCH["name"],
        "cors_origins": ["https://shop.example"],
        "tls_cert": "cert.pem",
        "tls_key": "key.pem",
        "remove_timeout": 9,
    }
    http = build_config(raw, source=tmp_path / "w.toml", base=tmp_path).http
    assert http is not None
    assert http.listen == (("127.0.0.1", 0), ("::1", 8766), ("0.0.0.0", 8080))
    assert http.tokens_file == tmp_path / "tokens.txt"
    assert (http.max_upload_bytes, http.max_files_per_job, http.max_queued_files) == (1000, 5, 7)
    assert http.cors_origins == ("https://shop.example",)
    assert http.tls_key == tmp_path / "key.pem"
    assert http.scheme == "https"
    assert http.remove_timeout == 9.0


@pytest.mark.parametrize(
    ("http", "key", "fragment"),
    [
        ({"listen": "8765"}, "http.listen", 'expected "host:port"'),
        ({"listen": "127.0.0.1:70000"}, "http.listen", 'expected "host:port"'),
        ({"listen": []}, "http.listen", 'expected "host:port" or a list'),
        ({"listen": [1]}, "http.listen", 'expected "host:port"'),
        ({}, "http.listen", "missing"),
        ({"listen": "0.0.0.0:8765"}, "http.tokens_file", "'0.0.0.0', which is not loopback"),
        ({"listen": ["127.0.0.1:1", "[::]:2"]}, "http.tokens_file", "not loopback"),
        ({"listen": "127.0.0.1:1", "max_upload_bytes": 0}, "http.max_upload_bytes", "at least 1"),
        ({"listen": "127.0.0.1:1", "max_files_per_job": "9"}, "http.max_files_per_job", "integer"),
        ({"listen": "127.0.0.1:1", "max_queued_files": -1}, "http.max_queued_files", "at least"),
        ({"listen": "127.0.0.1:1", "watch": "nope"}, "http.watch", "no watch named 'nope'"),
        ({"listen": "127.0.0.1:1", "cors_origins": "*"}, "http.cors_origins", "list of origins"),
        (
            {"listen": "127.0.0.1:1", "cors_origins": ["a.example/x"]},
            "http.cors_origins",
            "no path",
        ),
        ({"listen": "127.0.0.1:1", "tls_cert": "c.pem"}, "http.tls_cert", "together"),
        ({"listen": "127.0.0.1:1", "remove_timeout": 0}, "http.remove_timeout", "at least 1"),
        ({"listen": "127.0.0.1:1", "listne": 1}, "http.listne", "did you mean 'listen'"),
    ],
)
def test_bad_http_values(http: dict[str, Any], key: str, fragment: str, tmp_path: Path) -> None:
    raw = with_watch()
    raw["http"] = http
    message = config_error(raw, tmp_path)
    assert message.startswith(f"{tmp_path / 'w.toml'}: {key}: "), message
    assert fragment in message


def test_check_config_prints_http_as_toml_that_loads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    raw = with_watch()
    raw["http"] = {"listen": ["127.0.0.1:1", "[::1]:2"], "cors_origins": ["https://a.example"]}
    lines = ['[[watch]]\nname = "w"\ninbox = "in"\noutbox = "out"\n[http]\n']
    lines.append('listen = ["127.0.0.1:1", "[::1]:2"]\ncors_origins = ["https://a.example"]\n')
    path = write(tmp_path, "".join(lines))
    cli.main(["check-config", "--config", str(path)])
    out = capsys.readouterr().out
    assert "\n[http]\n" in out
    again = write(tmp_path, out, name="again.toml")
    assert load_config(again).http == load_config(path).http


# --- ignore rules: the per-watch list and check-ignore ------------------------------------------


def test_watch_ignore_patterns_drop_a_trailing_slash(tmp_path: Path) -> None:
    config = build_config(with_watch(ignore=["*.bak", "Proofs/"]), source=None, base=tmp_path)
    assert config.watches[0].ignore == ("*.bak", "Proofs")
    assert build_config(with_watch(), source=None, base=tmp_path).watches[0].ignore == ()


def test_check_ignore_names_the_rule_and_its_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        '[[watch]]\nname = "w"\ninbox = "in"\noutbox = "out"\nignore = ["*.bak"]\n',
    )
    inbox = tmp_path / "in"
    code = cli.main(
        [
            "check-ignore",
            "--config",
            str(path),
            str(inbox / "shoot" / "__MACOSX" / "x.jpg"),
            "a.BAK",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ignored by built-in rule '__MACOSX' (name '__MACOSX', watch w)" in out
    assert "a.BAK: ignored by watch's ignore rule '*.bak' (name 'a.BAK', watch w)" in out
    assert cli.main(["check-ignore", "--config", str(path), "photo.jpg"]) == 1
    assert "photo.jpg: not ignored (watch w)" in capsys.readouterr().out


def test_check_ignore_with_an_unknown_watch_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[[watch]]\nname = "w"\ninbox = "in"\noutbox = "out"\n')
    assert cli.main(["check-ignore", "--config", str(path), "--watch", "nope", "a.jpg"]) == 2
    assert "no watch named 'nope' (watches: w)" in capsys.readouterr().err
