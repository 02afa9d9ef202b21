"""The container's WATCHD_* variables: each lands on its config key, each bad value is refused
with config.py's message naming the variable (watchd.envconfig)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from watchd.envconfig import ENV_VARS, Layout, load_from_env
from watchd.errors import ConfigError


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """The container's volumes under tmp_path; no config file unless a test writes one."""
    return Layout(
        data=tmp_path / "data",
        state=tmp_path / "state",
        models=tmp_path / "models",
        config_file=tmp_path / "config" / "config.toml",
    )


def test_builtin_layout_without_variables(layout: Layout) -> None:
    config = load_from_env({}, layout)
    assert config.source is None
    assert config.daemon.state_dir == layout.state
    assert config.daemon.models_dir == layout.models
    (watch,) = config.watches
    assert (watch.inbox, watch.outbox) == (layout.data / "inbox", layout.data / "outbox")
    assert (watch.archive, watch.failed) == (layout.data / "archive", layout.data / "failed")
    assert watch.model == "u2netp"


GOOD = [
    ("WATCHD_WORKERS", "3", lambda c: c.pool.workers, 3),
    ("WATCHD_WORKERS", " 2 ", lambda c: c.pool.workers, 2),
    ("WATCHD_MODEL", "u2net_human_seg", lambda c: c.watches[0].model, "u2net_human_seg"),
    ("WATCHD_SETTLE_SECONDS", "0.5", lambda c: c.watches[0].settle_seconds, 0.5),
    ("WATCHD_SETTLE_SECONDS", "5", lambda c: c.watches[0].settle_seconds, 5.0),
    ("WATCHD_BACKGROUND", "#FFFFFF", lambda c: c.watches[0].output.background, "#ffffff"),
    ("WATCHD_FORMAT", "webp", lambda c: c.watches[0].output.format, "webp"),
    ("WATCHD_FORMAT", "mask", lambda c: c.watches[0].output.format, "mask"),
    ("WATCHD_DRAIN_SECONDS", "60", lambda c: c.daemon.drain_seconds, 60.0),
    ("WATCHD_LOG_LEVEL", "debug", lambda c: c.daemon.log_level, "debug"),
    ("WATCHD_HTTP_LISTEN", "127.0.0.1:8765", lambda c: c.http.listen, (("127.0.0.1", 8765),)),
]


@pytest.mark.parametrize(("name", "text", "read", "expected"), GOOD)
def test_each_variable_sets_its_key(
    layout: Layout, name: str, text: str, read: object, expected: object
) -> None:
    config = load_from_env({name: text}, layout)
    assert read(config) == expected  # type: ignore[operator]


BAD = [
    ("WATCHD_WORKERS", "many", "pool.workers: expected an integer, got str 'many'"),
    ("WATCHD_WORKERS", "0", "pool.workers: must be at least 1 and at most 256, got 0"),
    ("WATCHD_WORKERS", "1.5", "pool.workers: expected an integer, got str '1.5'"),
    ("WATCHD_MODEL", "", None),  # empty counts as unset: no error
    ("WATCHD_SETTLE_SECONDS", "soon", "watch[0].settle_seconds: expected a number, got str"),
    ("WATCHD_SETTLE_SECONDS", "-1", "watch[0].settle_seconds: must be at least 0"),
    ("WATCHD_SETTLE_SECONDS", "nan", "watch[0].settle_seconds: expected a finite number"),
    ("WATCHD_SETTLE_SECONDS", "inf", "watch[0].settle_seconds: expected a finite number"),
    ("WATCHD_BACKGROUND", "white", 'watch[0].background: expected a colour like "#ffffff"'),
    ("WATCHD_FORMAT", "gif", "watch[0].format: must be one of 'png', 'webp', 'jpeg', 'mask'"),
    ("WATCHD_FORMAT", "jpeg", 'watch[0].background: format = "jpeg" has no transparency'),
    ("WATCHD_DRAIN_SECONDS", "-5", "daemon.drain_seconds: must be at least 0"),
    ("WATCHD_DRAIN_SECONDS", "a while", "daemon.drain_seconds: expected a number, got str"),
    ("WATCHD_LOG_LEVEL", "loud", "daemon.log_level: must be one of 'debug', 'info'"),
    ("WATCHD_HTTP_LISTEN", "everywhere", 'http.listen: expected "host:port"'),
    ("WATCHD_HTTP_LISTEN", "0.0.0.0:8765", "http.tokens_file: required"),
    ("WATCHD_HTTP_TOKENS_FILE", "/nonexistent/tokens", "http.listen: missing"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD)
def test_a_bad_value_names_the_variable(
    layout: Layout, name: str, text: str, message: str | None
) -> None:
    if message is None:
        assert load_from_env({name: text}, layout) == load_from_env({}, layout)
        return
    with pytest.raises(ConfigError) as caught:
        load_from_env({name: text}, layout)
    assert str(caught.value).startswith(f"environment variable {name}={text!r}: {message}")


def test_the_http_variables_are_checked_together(layout: Layout) -> None:
    """A public address needs a tokens file: set together, neither is refused alone."""
    config = load_from_env(
        {"WATCHD_HTTP_LISTEN": "0.0.0.0:8765", "WATCHD_HTTP_TOKENS_FILE": "/config/tokens"},
        layout,
    )
    assert config.http is not None
    assert config.http.listen == (("0.0.0.0", 8765),)
    assert config.http.tokens_file == Path("/config/tokens")
    with pytest.raises(ConfigError) as caught:
        load_from_env({"WATCHD_HTTP_LISTEN": "x", "WATCHD_HTTP_TOKENS_FILE": "/t"}, layout)
    assert str(caught.value).startswith(
        "environment variables WATCHD_HTTP_TOKENS_FILE='/t', WATCHD_HTTP_LISTEN='x': http.listen:"
    )


def test_every_variable_has_a_good_and_a_bad_case() -> None:
    names = {var.name for var in ENV_VARS}
    # WATCHD_HTTP_TOKENS_FILE is good only beside WATCHD_HTTP_LISTEN: the test above.
    assert {case[0] for case in GOOD} == names - {"WATCHD_HTTP_TOKENS_FILE"}
    assert {case[0] for case in BAD if case[2]} == names - {"WATCHD_MODEL"}  # see test_container


def test_jpeg_with_a_background_is_accepted(layout: Layout) -> None:
    config = load_from_env({"WATCHD_FORMAT": "jpeg", "WATCHD_BACKGROUND": "#102030"}, layout)
    assert (config.watches[0].output.format, config.watches[0].output.background) == (
        "jpeg",
        "#102030",
    )


def test_the_first_bad_variable_is_named(layout: Layout) -> None:
    with pytest.raises(ConfigError, match="WATCHD_WORKERS='x'"):
        load_from_env({"WATCHD_WORKERS": "x", "WATCHD_LOG_LEVEL": "loud"}, layout)


def test_a_config_file_decides_and_variables_override_every_watch(layout: Layout) -> None:
    layout.config_file.parent.mkdir()
    layout.config_file.write_text(
        "[pool]\nworkers = 4\n"
        '[[watch]]\nname = "a"\ninbox = "/data/a/in"\noutbox = "/data/a/out"\n'
        '[[watch]]\nname = "b"\ninbox = "/data/b/in"\noutbox = "/data/b/out"\nmodel = "x"\n'
    )
    config = load_from_env({"WATCHD_MODEL": "u2net", "WATCHD_LOG_LEVEL": "warning"}, layout)
    assert config.source == layout.config_file.resolve()
    assert config.pool.workers == 4
    assert [w.model for w in config.watches] == ["u2net", "u2net"]
    assert config.daemon.log_level == "warning"
    assert config.daemon.state_dir == layout.state  # the ledger stays on the state volume
    assert config.daemon.models_dir == layout.models


def test_a_config_file_keeps_its_own_state_dir(layout: Layout, tmp_path: Path) -> None:
    layout.config_file.parent.mkdir()
    layout.config_file.write_text(
        '[daemon]\nstate_dir = "/var/lib/x"\n[[watch]]\nname = "a"\ninbox = "i"\noutbox = "o"\n'
    )
    config = load_from_env({}, layout)
    assert config.daemon.state_dir == Path("/var/lib/x")
    assert config.watches[0].inbox == layout.config_file.parent / "i"  # relative to the file


def test_a_bad_config_file_names_the_file(layout: Layout) -> None:
    layout.config_file.parent.mkdir()
    layout.config_file.write_text("[pool]\nworkers = 0\n[[watch]]\n")
    with pytest.raises(ConfigError, match=rf"^{layout.config_file}: pool.workers: must be"):
        load_from_env({"WATCHD_WORKERS": "2"}, layout)


def test_a_variable_against_a_config_file_names_the_variable(layout: Layout) -> None:
    layout.config_file.parent.mkdir()
    layout.config_file.write_text('[[watch]]\nname = "a"\ninbox = "/i"\noutbox = "/o"\n')
    with pytest.raises(ConfigError) as caught:
        load_from_env({"WATCHD_WORKERS": "0"}, layout)
    assert str(caught.value) == (
        "environment variable WATCHD_WORKERS='0': pool.workers: must be at least 1 and at "
        "most 256, got 0"
    )


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHD_")}
    return subprocess.run(
        [sys.executable, "-m", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_in_the_container_prints_the_same_message() -> None:
    """`watchd check-config` (WATCHD_CONTAINER set by the image) and the entrypoint's check
    print the same line for a bad variable, and both exit 2."""
    expected = (
        "watchd: environment variable WATCHD_SETTLE_SECONDS='soon': watch[0].settle_seconds: "
        "expected a number, got str 'soon'\n"
    )
    env = {"WATCHD_CONTAINER": "1", "WATCHD_SETTLE_SECONDS": "soon"}
    check = _cli("watchd", "check-config", **env)
    entry = _cli("watchd.container", "check", **env)
    assert (check.returncode, check.stderr) == (2, expected)
    assert (entry.returncode, entry.stderr) == (2, expected)


def test_without_the_container_flag_the_variables_are_ignored(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watchd", "check-config"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("WATCHD_")},
            "WATCHD_WORKERS": "0",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "WATCHD_WORKERS" not in result.stderr
    assert f'inbox = "{tmp_path / "inbox"}"' in result.stdout


def test_docs_and_compose_name_exactly_the_variables_there_are() -> None:
    root = Path(__file__).resolve().parent.parent
    known = {var.name for var in ENV_VARS}
    docs = (root / "docs" / "container.md").read_text()
    compose = (root / "compose.yaml").read_text()
    for name in known:
        assert f"| `{name}` |" in docs, name  # a row of the table
    mentioned = set(re.findall(r"WATCHD_[A-Z_]+", docs + compose))
    assert mentioned - known == {"WATCHD_CONTAINER"}


def test_compose_example_is_complete() -> None:
    """compose.yaml: the variables it sets exist, the four volumes, no network, and a stop
    grace period longer than the drain."""
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parent.parent
    service = yaml.safe_load((root / "compose.yaml").read_text())["services"]["watchd"]
    assert set(service["environment"]) <= {"PUID", "PGID", "UMASK"} | {v.name for v in ENV_VARS}
    assert {"PUID", "PGID", "UMASK"} <= set(service["environment"])
    builtin = Layout(config_file=root / "no-such-config.toml")
    load_from_env(service["environment"], builtin)
    targets = [volume.split(":")[1] for volume in service["volumes"]]
    assert targets == ["/data", "/state", "/models"]
    assert (service["network_mode"], service["stop_signal"]) == ("none", "SIGTERM")
    grace = int(service["stop_grace_period"].removesuffix("s"))
    assert grace > load_from_env({}, builtin).daemon.drain_seconds + 10
