"""Checks of a valid configuration against the machine it runs on.

:mod:`watchd.config` answers "is this file well-formed?"; this module answers
"can the daemon work with it here, as this user?": folders that exist and can
be written, models that are installed, a state folder on a local disk. The
same checks run in ``watchd check-config`` (so an operator hears about every
problem at once), at start-up and on reload (where the first problem refuses
the new configuration). Run ``check-config`` as the service user
(``sudo -u watchd watchd check-config``) to check that user's permissions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchd.config import Config
from watchd.errors import ModelError
from watchd.files import ensure_dir
from watchd.fsinfo import filesystem_type, is_network
from watchd.models import ModelStore
from watchd.pool.factory import models_on_this_machine

Missing = Literal["error", "create", "ignore"]


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def check(config: Config, *, missing: Missing = "error") -> list[Problem]:
    """Every problem found.

    ``missing`` says what a missing watch folder is: an ``"error"`` (a config file:
    a typo must not silently create ``/srv/shrae/inbox``), something to ``"create"``
    (the built-in default of ``make run``), or to ``"ignore"`` (checking that default).
    """
    problems: list[Problem] = []
    problems += _state_dir(config)
    for index, watch in enumerate(config.watches):
        prefix = f"watch[{index}]"
        problems += _folder(f"{prefix}.inbox", watch.inbox, missing, inbox=True)
        for key in ("outbox", "archive", "failed"):
            problems += _folder(f"{prefix}.{key}", getattr(watch, key), missing)
    problems += _tls_files(config)
    if not models_on_this_machine(config):
        return problems  # the models live on the worker hosts; the daemon checks them there
    store = ModelStore(config.daemon.models_dir)
    seen: set[str] = set()
    for index, watch in enumerate(config.watches):
        if watch.model in seen:
            continue
        seen.add(watch.model)
        try:
            store.verify(watch.model)
        except ModelError as exc:
            problems.append(Problem(f"watch[{index}].model", str(exc)))
    return problems


def _tls_files(config: Config) -> list[Problem]:
    problems = []
    for key in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
        path = getattr(config.pool, key)
        if path is not None and not os.access(path, os.R_OK):
            problems.append(Problem(f"pool.{key}", f"{path} cannot be read by this user"))
    return problems


def _state_dir(config: Config) -> list[Problem]:
    state = config.daemon.state_dir
    fstype = filesystem_type(state)
    if is_network(fstype):
        return [
            Problem(
                "daemon.state_dir",
                f"{state} is on a network or FUSE file system ({fstype}); the ledger (SQLite) "
                "needs a local disk: its locking and write-ahead log do not work over the network",
            )
        ]
    if state.exists():
        return _writable("daemon.state_dir", state, inbox=False)
    if not state.parent.is_dir():
        return [Problem("daemon.state_dir", f"{state} does not exist, nor does its parent folder")]
    return _writable("daemon.state_dir", state.parent, inbox=False, creating=state)


def _folder(key: str, folder: Path, missing: Missing, *, inbox: bool = False) -> list[Problem]:
    if os.path.islink(folder):
        return [Problem(key, f"{folder} is a symbolic link; give the real folder")]
    if not folder.exists():
        if missing == "create":
            ensure_dir(folder)
            return []
        if missing == "ignore":
            return []
        return [Problem(key, f"{folder} does not exist (create it, or fix the path)")]
    if not folder.is_dir():
        return [Problem(key, f"{folder} is not a folder")]
    return _writable(key, folder, inbox=inbox)


def _writable(
    key: str, folder: Path, *, inbox: bool, creating: Path | None = None
) -> list[Problem]:
    need = os.R_OK | os.W_OK | os.X_OK if inbox else os.W_OK | os.X_OK
    if os.access(folder, need):
        return []
    user = _user_name()
    what = f"cannot create {creating} in {folder}" if creating else f"{folder} is not writable"
    if inbox:
        what = f"{folder} is not readable and writable (files are moved out of it)"
    return [Problem(key, f"{what} by user {user}")]


def _user_name() -> str:
    import pwd

    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
