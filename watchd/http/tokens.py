"""Bearer tokens for the HTTP door: a file of ``name scope secret`` lines.

Each line names a client, gives its scope (``read`` < ``submit`` < ``admin``: each
scope includes the ones before it) and its secret, either as the token itself or as
``sha256:<hex>`` of it, so the file need not hold usable tokens. A presented token is
hashed and compared with every entry's hash by :func:`hmac.compare_digest`, so how
long a comparison takes says nothing about how much of a token was right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from watchd.errors import ConfigError

SCOPES: Final = ("read", "submit", "admin")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_HASHED_RE: Final = re.compile(r"sha256:([0-9a-f]{64})")
#: A token shorter than this is refused: it could be guessed.
MIN_TOKEN_LENGTH: Final = 16


@dataclass(frozen=True)
class Token:
    """One client: its name (for the log) and scope."""

    name: str
    scope: str

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


#: Who a request is when the door has no tokens file (loopback only, see config).
ANONYMOUS: Final = Token("anonymous", "admin")


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Tokens:
    """The clients of one tokens file."""

    def __init__(self, entries: list[tuple[Token, bytes]]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, presented: str) -> Token | None:
        """The token's client, or None; every entry is compared, in constant time each."""
        wanted = digest(presented)
        found: Token | None = None
        for token, hashed in self._entries:
            if hmac.compare_digest(hashed, wanted):
                found = token
        return found

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read ``path``; every problem names the file and the line (never the secret)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: http.tokens_file: no such file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: http.tokens_file: the file is not UTF-8") from None
        except OSError as exc:
            raise ConfigError(
                f"{path}: http.tokens_file: cannot read it: {exc.strerror or exc}"
            ) from None
        entries: list[tuple[Token, bytes]] = []
        names: set[str] = set()
        for number, line in enumerate(text.splitlines(), start=1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            token, value = _parse_line(words, f"{path}: line {number}", names)
            names.add(token.name)
            entries.append((token, value))
        if not entries:
            raise ConfigError(f"{path}: http.tokens_file: no tokens in the file")
        return cls(entries)


def _parse_line(words: list[str], where: str, names: set[str]) -> tuple[Token, bytes]:
    if len(words) != 3:
        raise ConfigError(f"{where}: expected 'NAME SCOPE TOKEN' (three words)")
    name, scope, secret = words
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} is not a usable name (letters, digits, _.@-)")
    if name in names:
        raise ConfigError(f"{where}: the name {name!r} is used twice")
    if scope not in SCOPES:
        raise ConfigError(f"{where}: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    hashed = _HASHED_RE.fullmatch(secret)
    if hashed:
        value = bytes.fromhex(hashed.group(1))
    elif len(secret) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{where}: the token of {name!r} is shorter than {MIN_TOKEN_LENGTH} characters"
        )
    else:
        value = digest(secret)
    return Token(name, scope), value
