"""The systemd unit and its sysusers/tmpfiles snippets, checked with this machine's systemd tools.

What these tests cannot show (it needs systemd as PID 1): that the sandbox lets
the daemon run. docs/service.md lists how each directive that could break it
was tried without systemd (unshare, prctl, strace) and what still needs a real
systemd to verify.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from watchd import config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "watchd.service"
#: The drop-in that switches the unit to Type=notify-reload on systemd >= 253.
NOTIFY_RELOAD = SYSTEMD / "notify-reload.conf"
NOTIFY_RELOAD_SINCE = 253
EXEC_START_BINARY = "/opt/watchd/bin/watchd"
#: Highest acceptable "Overall exposure level" of `systemd-analyze security` (0 safe .. 10 unsafe).
MAX_EXPOSURE = 2.5
#: Time after the drain for the rest of the shutdown (closing the pool, stats, ledger).
SHUTDOWN_MARGIN = 30.0

requires_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian/Ubuntu: apt install systemd)",
)


def directives(path: Path = UNIT) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, every value of a key in order (comments skipped)."""
    found: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a Key=value line: {raw!r}"
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def one(key: str) -> str:
    values = directives().get(key)
    assert values, f"{UNIT.name} has no {key}="
    assert len(values) == 1, f"{UNIT.name} sets {key}= {len(values)} times"
    return values[0]


_SPAN_UNITS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}


def timespan(value: str) -> float:
    """A systemd time span ("90", "90s", "1min 30s", "5min") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*[a-z]*)+\s*", value), value
    return sum(float(number) * _SPAN_UNITS[unit] for number, unit in parts)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat", "LC_ALL": "C.UTF-8"},
    )


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary swapped for an executable that exists here.

    ``systemd-analyze verify`` refuses a unit whose ExecStart= binary is missing,
    and /opt/watchd/bin/watchd exists only on an installed host. ``--root`` is no
    way around it: with a root, verify also wants that root's own unit tree
    (sysinit.target, ...). Only the path changes; every other line is verified
    as written (ExecReload's /bin/kill must exist, and does on any systemd host).
    """
    fake = tmp_path / "bin" / "watchd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(EXEC_START_BINARY) == 1
    copy = tmp_path / "unit" / UNIT.name  # the same name: verify checks name-dependent rules
    copy.parent.mkdir()
    copy.write_text(text.replace(EXEC_START_BINARY, str(fake)))
    return copy


# --- systemd's own checks ------------------------------------------------------------------------


@requires_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    copy = runnable_copy(tmp_path)
    result = analyze("verify", str(copy))
    output = result.stdout + result.stderr
    # verify may also report on units of this host that ours pulls in; ours must be clean,
    # including the warnings it prints with exit status 0 (unknown keys, unparsable values).
    ours = [line for line in output.splitlines() if UNIT.name in line or str(tmp_path) in line]
    assert result.returncode == 0, output
    assert ours == [], "\n".join(ours)


@requires_analyze
def test_exposure_level_is_low(tmp_path: Path) -> None:
    usage = analyze("security", "--help")
    if "--offline" not in usage.stdout + usage.stderr:
        pytest.skip("this systemd-analyze has no 'security --offline' (needs systemd >= 250)")
    result = analyze("security", "--offline=true", str(runnable_copy(tmp_path)))
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for watchd\.service: (\d+(?:\.\d+)?)", output)
    assert match, output
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, output


def analyze_version() -> int:
    """The major version of this machine's systemd-analyze ("systemd 252 (252.38-1)")."""
    match = re.match(r"systemd (\d+)", analyze("--version").stdout)
    assert match, "systemd-analyze --version printed no version"
    return int(match.group(1))


@requires_analyze
def test_the_notify_reload_drop_in_where_systemd_knows_it(tmp_path: Path) -> None:
    """The unit with the drop-in installed beside it, as `systemctl edit` would place it.

    systemd >= 253: verify must be clean (Type=notify-reload, ReloadSignal=, ExecReload=
    reset). Older systemd: verify must say it does not know the type, which is why the
    unit itself keeps Type=notify and docs/service.md installs the drop-in only on 253+.
    """
    copy = runnable_copy(tmp_path)
    drop_ins = copy.parent / f"{UNIT.name}.d"
    drop_ins.mkdir()
    shutil.copyfile(NOTIFY_RELOAD, drop_ins / NOTIFY_RELOAD.name)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        # the unit's own folder first, so verify finds watchd.service.d/ there; the trailing
        # ":" keeps the built-in search path for the units ours refers to
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{copy.parent}:", "SYSTEMD_COLORS": "0"},
    )
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if str(tmp_path) in line]
    assert result.returncode == 0, output
    if analyze_version() >= NOTIFY_RELOAD_SINCE:
        assert ours == [], "\n".join(ours)
    else:
        assert any("Failed to parse service type, ignoring: notify-reload" in x for x in ours), (
            output
        )


def test_the_drop_in_switches_to_notify_reload_and_clears_exec_reload() -> None:
    found = directives(NOTIFY_RELOAD)
    # SIGHUP is the signal the daemon reloads on (tests/test_service.py sends it and checks
    # RELOADING=1 with MONOTONIC_USEC, then READY=1, on a real notify socket)
    assert found == {"Type": ["notify-reload"], "ReloadSignal": ["SIGHUP"], "ExecReload": [""]}


# --- what the daemon relies on -------------------------------------------------------------------


def test_type_notify_with_watchdog_and_reload() -> None:
    unit_type = one("Type")
    assert unit_type in {"notify", "notify-reload"}
    assert one("NotifyAccess") == "main"  # only the main process may say READY/WATCHDOG
    assert timespan(one("WatchdogSec")) >= 10
    if unit_type == "notify":
        assert one("ExecReload") == "/bin/kill -HUP $MAINPID"  # the daemon reloads on SIGHUP
    assert one("ExecStart").endswith(" run --config /etc/watchd/config.toml")


def test_stop_timeout_outlasts_the_default_drain() -> None:
    drain_default = float(config._DAEMON_KEYS["drain_seconds"][1])
    assert one("KillSignal") == "SIGTERM"  # what starts the drain
    assert one("KillMode") == "mixed"  # SIGTERM to the main process only; it stops its workers
    assert timespan(one("TimeoutStopSec")) >= drain_default + SHUTDOWN_MARGIN


def test_start_timeout_outlasts_model_loading() -> None:
    from watchd.daemon import MODEL_LOAD_TIMEOUT

    # The daemon's own time limit (with its clearer message) must fire before systemd's.
    assert timespan(one("TimeoutStartSec")) > MODEL_LOAD_TIMEOUT


def test_folders_umask_and_user() -> None:
    assert one("User") == "watchd"
    assert one("Group") == "watchd"
    assert one("StateDirectory") == "watchd"
    assert one("RuntimeDirectory") == "watchd"
    assert one("RuntimeDirectoryMode") == "0750"
    assert one("UMask") == "0007"  # cutouts 0660 for the share's group, nothing for others
    assert one("ReadWritePaths")
    assert one("ProtectSystem") == "strict"


def test_example_config_uses_the_units_folders() -> None:
    """The example config's socket and state folder are the ones systemd creates."""
    example = tomllib.loads((ROOT / "config.example.toml").read_text())["daemon"]
    assert Path(example["socket"]).parent == Path("/run") / one("RuntimeDirectory")
    assert Path(example["state_dir"]) == Path("/var/lib") / one("StateDirectory")


def test_memory_limit_kills_a_worker_not_the_service() -> None:
    assert re.fullmatch(r"\d+[KMG]", one("MemoryMax"))
    # Without it systemd stops the whole unit when the kernel OOM-kills one worker.
    assert one("OOMPolicy") == "continue"


def test_numba_cache_is_in_the_cache_directory() -> None:
    assert one("CacheDirectory") == "watchd"
    assert "NUMBA_CACHE_DIR=%C/watchd/numba" in directives()["Environment"]


def test_no_secrets_in_environment() -> None:
    for value in directives().get("Environment", []):
        assert not re.search(r"(?i)pass|secret|token|key", value), value
    assert "EnvironmentFile" not in directives()


@pytest.mark.slow
def test_memory_deny_write_execute_stays_off() -> None:
    """rembg imports pymatting, which compiles with numba (W+X memory) at import time."""
    assert "MemoryDenyWriteExecute" not in directives()
    from importlib.util import find_spec

    if find_spec("numba") is None:
        pytest.skip("numba is not installed")
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, rembg; print('numba' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.stdout.strip() == "True", probe.stderr  # if this changes, reconsider MDWE


# --- sysusers.d and tmpfiles.d, applied to a scratch root -----------------------------------------


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles are not installed",
)
@pytest.mark.skipif(os.geteuid() != 0, reason="creating files owned by watchd needs root")
def test_sysusers_and_tmpfiles_in_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for tool, snippet in (
        ("systemd-sysusers", SYSTEMD / "sysusers.d" / "watchd.conf"),
        ("systemd-tmpfiles", SYSTEMD / "tmpfiles.d" / "watchd.conf"),
    ):
        args = [tool, f"--root={root}", *(["--create"] if tool == "systemd-tmpfiles" else [])]
        result = subprocess.run(
            [*args, str(snippet)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Failed" not in result.stderr and "Ignoring" not in result.stderr, result.stderr

    users = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
    }
    _name, _, uid, gid, _gecos, home, shell = users["watchd"]
    assert home == "/var/lib/watchd" == f"/var/lib/{one('StateDirectory')}"
    assert shell.endswith("nologin")
    assert int(uid) < 1000  # a system user
    assert groups["watchd"][2] == gid

    for folder in ("", "inbox", "outbox", "archive", "failed"):
        st = (root / "srv/watchd" / folder).stat()
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o2770, (folder, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == (int(uid), int(gid)), folder
    assert "/srv/watchd" in one("ReadWritePaths").split()
    state = (root / "var/lib/watchd").stat()  # before the first start: models pull writes here
    assert stat.S_IMODE(state.st_mode) == int(one("StateDirectoryMode"), 8)
    assert (state.st_uid, state.st_gid) == (int(uid), int(gid))
