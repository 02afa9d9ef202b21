"""Reading a TOML document with an error that names the file and says what is wrong.

Two kinds of TOML reach watchd from people: the configuration file and a job's sidecar
(``watchd.toml`` in a dropped folder). Both must turn every way a file can be bad (not
UTF-8, not TOML, nested or numbered past what Python's parser survives, unreadable) into
one :class:`~watchd.errors.ConfigError` whose message starts with the file's path, since
that message is what the operator or the person who dropped the job reads.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from watchd.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

#: Why a TOML file nested thousands of levels deep is refused (tomllib recurses per level).
TOO_DEEP = "tables or arrays are nested too deeply"
#: Why a TOML number with thousands of digits is refused (Python will not convert it).
TOO_LONG = "a number has too many digits"


def parse_toml(where: Path, data: bytes) -> dict[str, Any]:
    """The document in ``data``, read from ``where`` (named in every error)."""
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not valid TOML: the file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:  # Python's TOML parser recurses once per nested table or array
        raise ConfigError(f"{where}: not valid TOML: {TOO_DEEP}") from None
    except ValueError:  # tomllib's int() of a number with thousands of digits
        raise ConfigError(f"{where}: not valid TOML: {TOO_LONG}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """The configuration file at ``path``; a missing or unreadable file is a ConfigError too."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading the config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as exc:  # not a folder on the way, a loop of links, a name too long, ...
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    return parse_toml(path, data)
