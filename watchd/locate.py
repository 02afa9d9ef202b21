"""Where a running daemon can be reached: its state folder, control socket and stats file.

The operator commands (``watchd status``, ``jobs``, ``cancel``, ``stats``, ...) need nothing
else of the configuration, and scripts and health checks run them every few seconds, so
they read ``[daemon]`` alone (:func:`locate`) instead of importing and validating the whole
configuration (:mod:`watchd.config`, which costs most of the command's start-up:
docs/performance.md, "watchd status start-up"). The full configuration derives the same
paths with :func:`daemon_paths`, so their defaults have one owner.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from watchd.tomlfile import read_toml

#: Set by the container image: the ``watchd`` command then makes its configuration from the
#: environment (:func:`watchd.envconfig.load_from_env`), not from a file.
CONTAINER_FLAG = "WATCHD_CONTAINER"
#: ``[daemon] state_dir`` when the configuration does not set it.
DEFAULT_STATE_DIR = ".watchd"
#: The keys of ``[daemon]`` that say where the daemon is; every other key is not read here.
LOCATION_KEYS = ("state_dir", "socket", "stats_file")


class DaemonPaths(NamedTuple):
    """Absolute paths of a daemon's state folder, control socket and stats file."""

    state_dir: Path
    socket: Path
    stats_file: Path


def resolve(base: Path, value: str) -> Path:
    """A path from the configuration: ``~`` expanded, relative ones taken from ``base``."""
    return Path(os.path.abspath(base / Path(value).expanduser()))


def daemon_paths(
    base: Path, state_dir: str, socket: str | None, stats_file: str | None
) -> DaemonPaths:
    """The socket and stats file default to ``control.sock`` and ``stats.json`` in the state
    folder; all three are relative to ``base`` (the config file's folder) unless absolute."""
    state = resolve(base, state_dir)
    return DaemonPaths(
        state_dir=state,
        socket=resolve(base, socket) if socket else state / "control.sock",
        stats_file=resolve(base, stats_file) if stats_file else state / "stats.json",
    )


def locate(config: Path | None) -> DaemonPaths | None:
    """The paths the configuration file at ``config`` gives (``None``: the built-in default,
    rooted at the working folder), or ``None`` where ``[daemon]`` holds a value that is not a
    plain path: then only the full validation (:func:`watchd.config.load_config`) can say
    what is wrong with it, naming the file and key. A file that cannot be read or is not TOML
    raises :class:`~watchd.errors.ConfigError` as the full load would."""
    if config is None:
        return daemon_paths(Path.cwd(), DEFAULT_STATE_DIR, None, None)
    daemon: Any = read_toml(config).get("daemon", {})
    if not isinstance(daemon, dict):
        return None
    values = {key: daemon.get(key) for key in LOCATION_KEYS}
    if not all(value is None or (isinstance(value, str) and value) for value in values.values()):
        return None
    return daemon_paths(
        config.resolve().parent,
        values["state_dir"] or DEFAULT_STATE_DIR,
        values["socket"],
        values["stats_file"],
    )
