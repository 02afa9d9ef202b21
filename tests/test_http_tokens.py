"""The tokens file: names, scopes, plain or hashed tokens, and messages naming the line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from watchd.errors import ConfigError
from watchd.http.tokens import Token, Tokens

SECRET = "correct-horse-battery-staple"


def test_plain_and_hashed_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    hashed = hashlib.sha256(b"another-long-secret").hexdigest()
    path.write_text(f"# comment\n\nshop submit {SECRET}\n  ops admin sha256:{hashed}  \n")
    tokens = Tokens.load(path)
    assert len(tokens) == 2
    assert tokens.check(SECRET) == Token("shop", "submit")
    assert tokens.check("another-long-secret") == Token("ops", "admin")
    assert tokens.check(f"sha256:{hashed}") is None  # the hash itself is not a token
    assert tokens.check(SECRET[:-1]) is None
    assert tokens.check("") is None


@pytest.mark.parametrize(
    ("scope", "needed", "allowed"),
    [
        ("read", "read", True),
        ("read", "submit", False),
        ("submit", "read", True),
        ("submit", "admin", False),
        ("admin", "submit", True),
    ],
)
def test_scopes_include_the_ones_before(scope: str, needed: str, allowed: bool) -> None:
    assert Token("x", scope).allows(needed) is allowed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (f"shop submit {SECRET} extra\n", "line 1: expected 'NAME SCOPE TOKEN'"),
        (f"# c\nshop write {SECRET}\n", "line 2: scope must be one of read, submit, admin"),
        (f"shop submit {SECRET}\nshop read {SECRET}x\n", "line 2: the name 'shop' is used twice"),
        ("shop submit short\n", "line 1: the token of 'shop' is shorter than 16"),
        (f"-shop submit {SECRET}\n", "line 1: '-shop' is not a usable name"),
        ("# nothing\n", "no tokens in the file"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_files_name_the_line(tmp_path: Path, text: str | bytes, fragment: str) -> None:
    path = tmp_path / "tokens"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Tokens.load(path)
    assert str(info.value).startswith(str(path))
    assert fragment in str(info.value)
    assert SECRET not in str(info.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.tokens_file: no such file"):
        Tokens.load(tmp_path / "nope")
