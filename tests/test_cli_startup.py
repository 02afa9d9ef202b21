"""`watchd status` starts fast: scripts and health checks call it every few seconds.

Timing on a shared, loaded CI machine is too noisy to assert (docs/performance.md has the
measured numbers); what is asserted is the cause of a slow start, deterministically: the
modules a `watchd status` process imports. The daemon's heavy ones (asyncio for the
control server, structlog, SQLite, the image and model stack) must not be among them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: Modules only the daemon needs; any of them in a `watchd status` process costs start-up.
DAEMON_ONLY = (
    "asyncio",
    "structlog",
    "sqlite3",
    "concurrent.futures",
    "tempfile",
    "difflib",
    "watchdog",
    "PIL",
    "numpy",
    "onnxruntime",
    "pebble",
    "watchd.daemon",
    "watchd.ledger",
    "watchd.pipeline",
    "watchd.config",  # the whole configuration: status reads [daemon] alone (watchd/locate.py)
    "watchd.control",  # the server: the client is watchd.control_client
    "dataclasses",
)

PROBE = """
import json, sys
from watchd import cli
code = cli.main(sys.argv[1:])
# a module imported lazily (importlib.util.LazyLoader) has not run: not loaded. Only its type
# is looked at, since any attribute access would run it.
loaded = [m for m in json.loads(sys.stdin.read())
          if m in sys.modules and type(sys.modules[m]).__name__ != "_LazyModule"]
print(json.dumps({"code": code, "loaded": loaded}))
"""


def probe(*argv: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        input=json.dumps(DAEMON_ONLY),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return answer


def test_status_imports_none_of_the_daemons_modules(tmp_path: Path) -> None:
    config = tmp_path / "watchd.toml"
    config.write_text('[[watch]]\nname = "w"\ninbox = "in"\noutbox = "out"\n')
    answer = probe("status", "--config", str(config))
    assert answer["code"] == 3  # no daemon here: the client ran and could not connect
    assert answer["loaded"] == [], answer


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchd", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_config_mistake_still_gets_its_suggestion(tmp_path: Path) -> None:
    """difflib is imported only when a key is misspelt, and then it is."""
    config = tmp_path / "watchd.toml"
    config.write_text('[[watch]]\nname = "w"\ninbox = "in"\noutbox = "out"\nsetle_seconds = 1\n')
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert "did you mean 'settle_seconds'?" in result.stderr


def test_status_reads_only_where_the_daemon_is(tmp_path: Path) -> None:
    """A mistake outside [daemon] (say, made after the daemon started) does not stop an operator
    from asking the running daemon: status goes to the socket [daemon] names."""
    config = tmp_path / "watchd.toml"
    config.write_text(
        '[daemon]\nstate_dir = "st"\n[[watch]]\nname = "w"\ninbox = "in"\noutbox = "out"\n'
        "setle_seconds = 1\n"
    )
    result = run_cli("status", "--config", str(config))
    assert result.returncode == 3, result.stderr
    assert f"cannot talk to watchd at {tmp_path / 'st' / 'control.sock'}" in result.stderr


@pytest.mark.parametrize(
    ("command", "content", "message"),
    [
        (
            "status",
            "[daemon]\nsocket = 5\n",
            "daemon.socket: expected a non-empty string, got int 5",
        ),
        ("stats", "[daemon\n", "not valid TOML"),
    ],
)
def test_a_bad_daemon_table_or_file_names_the_file(
    tmp_path: Path, command: str, content: str, message: str
) -> None:
    config = tmp_path / "watchd.toml"
    config.write_text(content)
    result = run_cli(command, "--config", str(config))
    assert result.returncode == 2
    assert f"{config}: {message}" in result.stderr
