"""Running as a service: preflight errors, execution providers, and reload with jobs in flight."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import DaemonProcess, is_output, wait_for
from watchd.models import ModelStore

TEST_USER = "watchd-test"


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchd", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
    )


def check_config_as(user: str, config: Path) -> tuple[int, str]:
    """``watchd check-config`` run by another user: fork, drop privileges, run the real CLI.

    (Executing the interpreter as that user is not possible here: this venv's Python
    lives under /root. The forked child has it loaded already.)
    """
    from watchd import cli

    entry = pwd.getpwnam(user)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read_fd)
            os.dup2(write_fd, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            code = cli.main(["check-config", "--config", str(config)])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as reader:
        stderr = reader.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stderr


def config_text(
    root: Path, models_dir: Path, *, state: str = "state", model: str = "u2netp"
) -> str:
    return f"""
[daemon]
state_dir = "{state}"
models_dir = "{models_dir}"

[[watch]]
name = "photos"
inbox = "{root}/inbox"
outbox = "{root}/outbox"
archive = "{root}/archive"
failed = "{root}/failed"
model = "{model}"
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    for name in ("inbox", "outbox", "archive", "failed", "state"):
        (tmp_path / name).mkdir()
    return tmp_path


def models_dir(store: ModelStore) -> Path:
    return store.path("u2netp").parent


def test_check_config_accepts_a_good_setup(site: Path, model_store: ModelStore) -> None:
    config = site / "watchd.toml"
    config.write_text(config_text(site, models_dir(model_store)))
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_check_config_reports_a_missing_folder(site: Path, model_store: ModelStore) -> None:
    shutil.rmtree(site / "outbox")
    config = site / "watchd.toml"
    config.write_text(config_text(site, models_dir(model_store)))
    result = check_config(config)
    assert result.returncode == 2
    assert f"watchd: {config}: watch[0].outbox: {site / 'outbox'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_reports_a_model_that_is_not_installed(
    site: Path, model_store: ModelStore
) -> None:
    config = site / "watchd.toml"
    config.write_text(config_text(site, models_dir(model_store), model="u2net_human_seg"))
    result = check_config(config)
    assert result.returncode == 2
    assert f"watchd: {config}: watch[0].model: " in result.stderr
    assert "watchd models pull u2net_human_seg" in result.stderr


@pytest.fixture
def fuse_mount(tmp_path: Path) -> Iterator[Path]:
    """A real FUSE mount (bindfs), which behaves like a network share."""
    if shutil.which("bindfs") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("bindfs or /dev/fuse is not available: cannot make a FUSE mount here")
    backing = tmp_path / "backing"
    mount = tmp_path / "mount"
    backing.mkdir()
    mount.mkdir()
    result = subprocess.run(["bindfs", str(backing), str(mount)], capture_output=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"bindfs could not mount (no FUSE permission here): {result.stderr!r}")
    try:
        yield mount
    finally:
        subprocess.run(["fusermount", "-u", str(mount)], check=False)


def test_state_folder_on_a_network_filesystem_is_refused(
    site: Path, model_store: ModelStore, fuse_mount: Path
) -> None:
    config = site / "watchd.toml"
    config.write_text(config_text(site, models_dir(model_store), state=str(fuse_mount / "state")))
    result = check_config(config)
    assert result.returncode == 2
    assert f"watchd: {config}: daemon.state_dir: " in result.stderr
    assert "network or FUSE file system (fuse)" in result.stderr
    run = subprocess.run(
        [sys.executable, "-m", "watchd", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2
    assert "needs a local disk" in run.stderr
    assert not (fuse_mount / "state" / "ledger.sqlite3").exists()


@pytest.fixture(scope="module")
def unprivileged_user() -> str:
    """A real unprivileged user: permission checks mean nothing as root."""
    if os.geteuid() != 0:
        pytest.skip("creating a test user needs root (CI runs as root)")
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
        )
    return TEST_USER


def test_check_config_reports_folders_the_service_user_cannot_write(
    unprivileged_user: str, model_store: ModelStore
) -> None:
    # tmp_path lives under a root-only folder: build a world-readable site elsewhere.
    site = Path(tempfile.mkdtemp(prefix="watchd-perm-"))
    try:
        site.chmod(0o755)
        for name in ("inbox", "outbox", "archive", "failed", "state"):
            (site / name).mkdir(mode=0o755)  # owned by root: the test user may only read
        config = site / "watchd.toml"
        config.write_text(config_text(site, models_dir(model_store), state=str(site / "state")))
        config.chmod(0o644)
        code, stderr = check_config_as(unprivileged_user, config)
        assert code == 2, f"exit {code}: {stderr}"
        uid = pwd.getpwnam(unprivileged_user).pw_uid
        outbox = f"watch[0].outbox: {site / 'outbox'} is not writable by user {unprivileged_user}"
        assert outbox in stderr
        assert f"(uid {uid})" in stderr
        assert f"watch[0].inbox: {site / 'inbox'} is not readable and writable" in stderr
        assert "daemon.state_dir:" in stderr
    finally:
        shutil.rmtree(site)


# --- execution providers ---


def test_require_accelerator_refuses_to_start_on_a_cpu_only_host(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory(
        pool__providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        pool__require_accelerator=True,
    )
    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=120) == 2
    failed = daemon.events("daemon.failed")
    assert failed, daemon.log_text()
    message = failed[0]["error"]
    assert "CUDAExecutionProvider was asked for" in message
    assert "CPUExecutionProvider" in message and "require_accelerator" in message


def test_a_provider_fallback_is_logged_and_shown_in_status(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    daemon = daemon_factory(pool__providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    daemon.start()
    warning = daemon.events("model.provider_fallback")
    assert warning and warning[0]["provider"] == "CPUExecutionProvider"
    from watchd.control_client import ControlClient

    status = ControlClient(daemon.root / "state" / "control.sock").call("status")
    assert status["providers"] == {"u2netp": "CPUExecutionProvider"}


# --- reload ---


def test_reload_with_jobs_in_flight_loses_and_duplicates_nothing(
    daemon_factory: Callable[..., DaemonProcess], photos: dict[str, Path]
) -> None:
    daemon = daemon_factory()
    root = daemon.root
    daemon.start()
    for i in range(6):
        shutil.copyfile(photos["coffee.png"], root / "inbox" / f"c{i}.png")
    wait_for(lambda: daemon.count("file.done") >= 1, what="first file done")

    # a second watch, more workers: a new pool while files are running in the old one
    (root / "inbox2").mkdir()
    (root / "outbox2").mkdir()
    text = daemon.config.read_text().replace("workers = 1", "workers = 2")
    text += '\n[[watch]]\nname = "second"\ninbox = "inbox2"\noutbox = "outbox2"\n'
    text += 'archive = "archive"\nfailed = "failed"\nsettle_seconds = 0.5\n'
    daemon.config.write_text(text)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    done = wait_for(lambda: daemon.events("reload.done"), what="reload.done")
    assert "watch second added" in done[0]["changes"] and "pool.workers" in done[0]["changes"]

    shutil.copyfile(photos["cat.png"], root / "inbox2" / "cat.png")
    wait_for((root / "outbox2" / "cat.png").exists, what="new watch works")

    def first_outputs() -> list[Path]:
        return [p for p in (root / "outbox").iterdir() if is_output(p)]

    wait_for(lambda: len(first_outputs()) == 6, what="all first outputs")
    outputs = sorted(p.name for p in first_outputs())
    assert outputs == [f"c{i}.png" for i in range(6)]  # each exactly once
    # an original is archived just after its output is written: wait for it, not assume it
    wait_for(lambda: len(list((root / "archive").iterdir())) == 7, what="all originals archived")

    # a broken config is rejected and the running one stays
    daemon.config.write_text(text + "\n[pool]\nworkers = 0\n")
    daemon.proc.send_signal(signal.SIGHUP)
    rejected = wait_for(lambda: daemon.events("reload.rejected"), what="reload.rejected")
    assert "pool" in rejected[0]["error"]
    shutil.copyfile(photos["rocket.jpg"], root / "inbox2" / "rocket.jpg")
    wait_for((root / "outbox2" / "rocket.png").exists, what="still working")
    assert daemon.stop() == 0


def test_reload_command_reports_changes_or_the_reason_it_was_refused(
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    from watchd.control_client import ControlClient
    from watchd.errors import ProtocolError

    daemon = daemon_factory()
    daemon.start()
    client = ControlClient(daemon.root / "state" / "control.sock")
    daemon.config.write_text(
        daemon.config.read_text().replace("settle_seconds = 0.5", "settle_seconds = 1.5")
    )
    assert client.call("reload") == {"reloaded": True, "changes": ["watch photos changed"]}
    daemon.config.write_text(
        daemon.config.read_text().replace('model = "u2netp"', 'model = "nope"')
    )
    with pytest.raises(ProtocolError) as refused:
        client.call("reload")
    assert refused.value.code == "conflict" and "nope" in refused.value.message
    assert client.call("ping")["pong"] is True


# --- systemd notify ---


def test_daemon_speaks_systemd_notify(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """READY only once serving; WATCHDOG from the loop; RELOADING then READY; STOPPING."""
    import socket as socketlib

    address = str(tmp_path / "notify.sock")
    sink = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    sink.bind(address)
    sink.settimeout(60)
    daemon = daemon_factory()
    try:
        daemon.start(
            wait_ready=False, extra_env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
        )

        def receive() -> str:
            return sink.recv(4096).decode()

        first = receive()
        assert first.startswith("READY=1\nSTATUS=")
        assert daemon.count("daemon.ready") == 1  # ledger open, recovery done, watches live
        pings = [receive() for _ in range(2)]
        assert pings == ["WATCHDOG=1", "WATCHDOG=1"]
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        messages = [receive() for _ in range(4)]
        reloading = [m for m in messages if m.startswith("RELOADING=1")]
        assert reloading and "\nMONOTONIC_USEC=" in reloading[0]
        after = messages[messages.index(reloading[0]) + 1 :]
        while not any(m.startswith("READY=1") for m in after):
            after.append(receive())
        assert daemon.stop() == 0
        rest = []
        sink.settimeout(5)
        with contextlib.suppress(TimeoutError):
            while True:
                rest.append(receive())
        assert "STOPPING=1" in rest
    finally:
        sink.close()
