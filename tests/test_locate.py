"""watchd/locate.py: the operator commands find the daemon exactly where the full
configuration puts it, for every way [daemon] can say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchd.config import load_config
from watchd.errors import ConfigError
from watchd.locate import DaemonPaths, locate

DAEMON_TABLES = [
    "",
    '[daemon]\nstate_dir = "state"\n',
    '[daemon]\nstate_dir = "/var/lib/w"\nsocket = "../run/w.sock"\n',
    '[daemon]\nsocket = "~/w.sock"\nstats_file = "s/stats.json"\nlog_level = "debug"\n',
    '[daemon]\nstate_dir = "~/st"\nstats_file = "/tmp/w-stats.json"\n',
]


@pytest.mark.parametrize("daemon", DAEMON_TABLES)
def test_locate_agrees_with_the_full_configuration(tmp_path: Path, daemon: str) -> None:
    config = tmp_path / "conf" / "watchd.toml"
    config.parent.mkdir()
    config.write_text(daemon + '[[watch]]\nname = "w"\ninbox = "in"\noutbox = "out"\n')
    full = load_config(config).daemon
    assert locate(config) == DaemonPaths(full.state_dir, full.socket, full.stats_file)


def test_the_built_in_configuration_is_rooted_at_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    full = load_config(None).daemon
    assert locate(None) == DaemonPaths(full.state_dir, full.socket, full.stats_file)
    assert full.socket == tmp_path / ".watchd" / "control.sock"


@pytest.mark.parametrize(
    "daemon",
    [
        'daemon = "x"\n',
        "[daemon]\nstate_dir = 3\n",
        '[daemon]\nsocket = ""\n',
        "[daemon]\nstats_file = []\n",
    ],
)
def test_a_value_only_the_full_validation_can_explain_is_left_to_it(
    tmp_path: Path, daemon: str
) -> None:
    config = tmp_path / "watchd.toml"
    config.write_text(daemon)
    assert locate(config) is None
    with pytest.raises(ConfigError, match=str(config)):
        load_config(config)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such config file"),
        (b"[daemon", "not valid TOML"),
        (b"\xff\xfe", "not valid TOML: the file is not UTF-8"),
    ],
)
def test_a_file_that_cannot_be_read_is_a_config_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    config = tmp_path / "watchd.toml"
    if content is not None:
        config.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^{config}: {message}"):
        locate(config)
