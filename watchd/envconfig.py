"""The container's configuration: ``WATCHD_*`` variables mapped onto the one validated config.

People who run watchd as a container set a handful of environment variables in a
compose file instead of writing a TOML file. Each variable here is a key of the
same configuration a ``config.toml`` has, and the result goes through
:func:`watchd.config.build_config`, so the container accepts exactly what a file
accepts and nothing is validated twice in two ways. A bad value is reported with
config.py's own message, prefixed with the variable, because the person reading
it edits a compose file, not a TOML key.

Without ``/config/config.toml`` the built-in container layout is used: one
watch ``/data/inbox`` → ``/data/outbox`` (archive and failed beside them), the
ledger and spool in ``/state``, models in ``/models``. With a file, the file
decides and the variables still override their keys (watch keys in every
``[[watch]]``); ``state_dir`` and ``models_dir`` default to the volumes.

The ``watchd`` command reads this instead of its built-in default when
``WATCHD_CONTAINER`` is set (the image sets it) and no ``--config`` is given, so
``docker exec … watchd status`` and ``watchd check-config`` see what the daemon sees.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from watchd.config import Config, build_config, load_config
from watchd.errors import ConfigError
from watchd.tomlfile import read_toml

Kind = Literal["int", "float", "str"]


@dataclass(frozen=True)
class EnvVar:
    """One variable: the config key it sets and how its text becomes a TOML value."""

    name: str
    section: str  # "daemon", "pool", "http" or "watch" (every [[watch]] table)
    key: str
    kind: Kind


#: The variables (each documented in docs/container.md), in the order they are applied: a
#: variable another one depends on comes first (WATCHD_BACKGROUND before WATCHD_FORMAT,
#: since format = "jpeg" needs a background). Adding one is one line here.
ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("WATCHD_WORKERS", "pool", "workers", "int"),
    EnvVar("WATCHD_MODEL", "watch", "model", "str"),
    EnvVar("WATCHD_SETTLE_SECONDS", "watch", "settle_seconds", "float"),
    EnvVar("WATCHD_BACKGROUND", "watch", "background", "str"),
    EnvVar("WATCHD_FORMAT", "watch", "format", "str"),
    EnvVar("WATCHD_DRAIN_SECONDS", "daemon", "drain_seconds", "float"),
    EnvVar("WATCHD_LOG_LEVEL", "daemon", "log_level", "str"),
    # The HTTP door (docs/http.md), checked together (see _steps). With --network host,
    # "127.0.0.1:8765" is the host's loopback; beyond loopback a tokens file is required.
    EnvVar("WATCHD_HTTP_TOKENS_FILE", "http", "tokens_file", "str"),
    EnvVar("WATCHD_HTTP_LISTEN", "http", "listen", "str"),
)


@dataclass(frozen=True)
class Layout:
    """Where the container's volumes are mounted (the image's fixed paths)."""

    data: Path = Path("/data")
    state: Path = Path("/state")
    models: Path = Path("/models")
    config_file: Path = Path("/config/config.toml")


def builtin_raw(layout: Layout) -> dict[str, Any]:
    """The built-in container configuration, as a parsed TOML document would look."""
    return {
        "daemon": {"state_dir": str(layout.state), "models_dir": str(layout.models)},
        "watch": [
            {
                "name": "default",
                "inbox": str(layout.data / "inbox"),
                "outbox": str(layout.data / "outbox"),
                "archive": str(layout.data / "archive"),
                "failed": str(layout.data / "failed"),
            }
        ],
    }


_INT_RE = re.compile(r"[+-]?[0-9]+")


def _value(var: EnvVar, text: str) -> Any:
    """The TOML value of a variable's text. Text that is not a number of the expected kind
    stays a string, so config.py's own check rejects it ("expected an integer, got str ...")."""
    if var.kind == "str":
        return text
    if _INT_RE.fullmatch(text):
        return int(text)
    if var.kind == "float":
        try:
            return float(text)  # nan and inf too: config.py says why they are refused
        except ValueError:
            return text
    return text


def _apply(raw: dict[str, Any], var: EnvVar, value: Any) -> None:
    if var.section == "watch":
        for table in raw.get("watch") or []:
            if isinstance(table, dict):
                table[var.key] = value
    else:
        section = raw.setdefault(var.section, {})
        if isinstance(section, dict):
            section[var.key] = value


def _without_where(message: str, where: str) -> str:
    prefix = f"{where}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def load_from_env(environ: Mapping[str, str], layout: Layout | None = None) -> Config:
    """The container's configuration: the file in /config (or the built-in layout) plus
    the ``WATCHD_*`` variables. Raises :class:`ConfigError` naming the file or the variable.

    Empty variables count as unset (a compose file's ``WATCHD_WORKERS:`` with no value).
    """
    layout = layout or Layout()
    source: Path | None
    if layout.config_file.exists():
        load_config(layout.config_file)  # the file alone first: its errors name the file
        source = layout.config_file.resolve()
        raw = read_toml(source)
        daemon = raw.setdefault("daemon", {})
        if isinstance(daemon, dict):  # a file that keeps its ledger elsewhere says so
            daemon.setdefault("state_dir", str(layout.state))
            daemon.setdefault("models_dir", str(layout.models))
        base = source.parent
        where = str(source)
    else:
        source, raw, base = None, builtin_raw(layout), Path("/")
        where = "the built-in default configuration"
    config = build_config(raw, source=source, base=base)
    # One step at a time, in table order: an error names the variable(s) that caused it.
    for step in _steps():
        given = [(var, text) for var in step if (text := environ.get(var.name, "").strip())]
        if not given:
            continue
        candidate = copy.deepcopy(raw)
        for var, text in given:
            _apply(candidate, var, _value(var, text))
        try:
            config = build_config(candidate, source=source, base=base)
        except ConfigError as exc:
            detail = _without_where(str(exc), where)
            named = ", ".join(f"{var.name}={text!r}" for var, text in given)
            noun = "variable" if len(given) == 1 else "variables"
            raise ConfigError(f"environment {noun} {named}: {detail}") from None
        raw = candidate
    return config


def _steps() -> list[list[EnvVar]]:
    """The variables in the groups they are checked in: one each, except the ``[http]``
    ones, which only make sense together (a public ``listen`` needs ``tokens_file``)."""
    steps: list[list[EnvVar]] = []
    for var in ENV_VARS:
        if steps and var.section == "http" and steps[-1][0].section == "http":
            steps[-1].append(var)
        else:
            steps.append([var])
    return steps
