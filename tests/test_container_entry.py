"""The container entrypoint's own parts: PUID/PGID/UMASK, the volumes it prepares, the model
check that names WATCHD_MODEL (watchd.container). The image itself: tests/test_container.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watchd.container import Identity, check_models, identity_from_env, prepare
from watchd.envconfig import Layout, load_from_env
from watchd.errors import ConfigError
from watchd.models import ModelStore


def test_identity_defaults() -> None:
    assert identity_from_env({}) == Identity(uid=1000, gid=1000, umask=0o022)


def test_identity_from_variables() -> None:
    env = {"PUID": "1026", "PGID": "100", "UMASK": "002"}
    assert identity_from_env(env) == Identity(uid=1026, gid=100, umask=0o002)
    assert identity_from_env({"UMASK": "0027", "PGID": "0"}).umask == 0o027
    assert identity_from_env({"PUID": "", "UMASK": " "}) == identity_from_env({})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PUID": "admin"}, "environment variable PUID='admin': expected a numeric id"),
        ({"PUID": "-1"}, "environment variable PUID='-1': expected a numeric id"),
        ({"PUID": "4294967295"}, "environment variable PUID='4294967295': expected a numeric"),
        ({"PUID": "0"}, "environment variable PUID='0': the daemon never runs as root"),
        ({"PGID": "users"}, "environment variable PGID='users': expected a numeric id"),
        ({"PGID": "1.5"}, "environment variable PGID='1.5': expected a numeric id"),
        ({"UMASK": "999"}, "environment variable UMASK='999': expected an octal umask"),
        ({"UMASK": "u=rwx"}, "environment variable UMASK='u=rwx': expected an octal umask"),
        ({"UMASK": "22"}, "environment variable UMASK='22': expected an octal umask"),
    ],
)
def test_bad_identity_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        identity_from_env(env)
    assert str(caught.value).startswith(message)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(
        data=tmp_path / "data",
        state=tmp_path / "state",
        models=tmp_path / "models",
        config_file=tmp_path / "config" / "config.toml",
    )


def _baked(tmp_path: Path, content: bytes = b"model bytes") -> Path:
    baked = tmp_path / "baked"
    baked.mkdir()
    (baked / "u2netp.onnx").write_bytes(content)
    return baked


def test_prepare_creates_the_folders_and_seeds_the_models(tmp_path: Path, layout: Layout) -> None:
    (layout.data / "inbox").mkdir(parents=True)  # an existing folder stays as it is
    (layout.data / "inbox" / "photo.jpg").write_bytes(b"x")
    config = load_from_env({}, layout)
    prepare(config, None, baked=_baked(tmp_path))
    for name in ("inbox", "outbox", "archive", "failed"):
        assert (layout.data / name).is_dir()
    assert (layout.data / "inbox" / "photo.jpg").read_bytes() == b"x"
    assert layout.state.is_dir()
    assert (layout.models / "u2netp.onnx").read_bytes() == b"model bytes"


def test_prepare_keeps_a_model_already_in_the_volume(tmp_path: Path, layout: Layout) -> None:
    layout.models.mkdir()
    (layout.models / "u2netp.onnx").write_bytes(b"the user's own copy")
    prepare(load_from_env({}, layout), None, baked=_baked(tmp_path))
    assert (layout.models / "u2netp.onnx").read_bytes() == b"the user's own copy"


def test_prepare_never_writes_through_a_link_in_the_models_volume(
    tmp_path: Path, layout: Layout
) -> None:
    """The volume is PUID's: a link planted there must not make root write elsewhere."""
    layout.models.mkdir()
    elsewhere = tmp_path / "elsewhere"
    (layout.models / "u2netp.onnx").symlink_to(elsewhere)  # dangling: exists() is False
    prepare(load_from_env({}, layout), None, baked=_baked(tmp_path))
    assert not elsewhere.exists()
    assert (layout.models / "u2netp.onnx").is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root (CI runs as root)")
def test_prepare_as_root_hands_new_folders_and_the_state_to_puid(
    tmp_path: Path, layout: Layout
) -> None:
    (layout.data / "inbox").mkdir(parents=True)  # the share's folder: not chowned
    layout.state.mkdir()
    (layout.state / "ledger.sqlite3").write_bytes(b"")  # from an earlier PUID (root here)
    who = Identity(uid=4321, gid=4322, umask=0o022)
    prepare(load_from_env({}, layout), who, baked=_baked(tmp_path))
    owners = {
        name: (os.stat(layout.data / name).st_uid, os.stat(layout.data / name).st_gid)
        for name in ("inbox", "outbox", "archive", "failed")
    }
    assert owners == {
        "inbox": (0, 0),
        "outbox": (4321, 4322),
        "archive": (4321, 4322),
        "failed": (4321, 4322),
    }
    for path in (layout.state, layout.state / "ledger.sqlite3", layout.models / "u2netp.onnx"):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (4321, 4322), path


def test_check_models_names_watchd_model(
    tmp_path: Path, layout: Layout, model_store: ModelStore
) -> None:
    layout.models.mkdir()
    (layout.models / "u2netp.onnx").write_bytes(model_store.path("u2netp").read_bytes())
    check_models(load_from_env({}, layout), {})  # the baked model: fine
    for bad in ("../etc/passwd", "u2net_human_seg"):  # not a name; a name not installed
        env = {"WATCHD_MODEL": bad}
        with pytest.raises(ConfigError) as caught:
            check_models(load_from_env(env, layout), env)
        assert str(caught.value).startswith(
            f"environment variable WATCHD_MODEL={bad!r}: watch[0].model: "
        )
