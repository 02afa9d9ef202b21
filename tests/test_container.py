"""The container image, built and run for real (docs/container.md).

A private dockerd (tests/docker_support.py) builds the image with ``make image`` on a
debootstrap base with ``--network none``; every container here runs with
``--network none`` too, so a start that needed the network would fail. The tests
drop files into a bind-mounted ``/data`` from the host, as NAS users do over a share.
Run them alone with ``pytest -m container``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker_support import (
    Container,
    Dockerd,
    Timings,
    missing_requirements,
    session,
    unprivileged_user,
)
from tests.support import drop, is_output, wait_for

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.timeout(900),
]

GRACE = 60  # docker stop -t: the drain (drain_seconds, 30 s by default) fits in it
_names = itertools.count(1)


@pytest.fixture(scope="module")
def docker() -> Iterator[tuple[Dockerd, str]]:
    timings = Timings()
    try:
        yield from session(timings)
    finally:
        print(f"\ncontainer set-up timings (s): {timings.steps}")


@pytest.fixture(scope="module")
def user() -> tuple[int, int]:
    return unprivileged_user()


def start(
    docker: tuple[Dockerd, str],
    root: Path,
    user: tuple[int, int],
    *extra: str,
    env: dict[str, str] | None = None,
) -> Container:
    """``docker run -d`` with /data and /state bind-mounted from ``root``, as ``user``."""
    dockerd, image = docker
    (root / "data").mkdir(exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    name = f"watchd-t{os.getpid()}-{next(_names)}"
    settings = {
        "PUID": str(user[0]),
        "PGID": str(user[1]),
        "UMASK": "002",
        "WATCHD_WORKERS": "1",
        "WATCHD_SETTLE_SECONDS": "0.5",
        **(env or {}),
    }
    dockerd.docker(
        "run", "-d", "--name", name, "--network", "none",
        "-v", f"{root / 'data'}:/data", "-v", f"{root / 'state'}:/state",
        *(arg for key, value in settings.items() for arg in ("-e", f"{key}={value}")),
        *extra, image,
    )  # fmt: skip
    return Container(dockerd, name)


def outputs(outbox: Path) -> list[str]:
    return sorted(str(p.relative_to(outbox)) for p in outbox.rglob("*") if is_output(p))


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_image_is_lean_and_built_offline(docker: tuple[Dockerd, str]) -> None:
    """Built with --network none (the fixture's `make image`); no compilers, no pip cache,
    no wheelhouse, no test data in it."""
    dockerd, image = docker
    probe = dockerd.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c",
        "for x in gcc cc g++ make; do command -v $x; done; "
        "ls -d /wheelhouse /root/.cache/pip 2>/dev/null; "
        "find /opt/watchd -type d -name tests; ls /opt/watchd/models; true",
    )  # fmt: skip
    assert probe.stdout.split() == ["u2netp.onnx"], probe.stdout
    size = int(dockerd.docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    print(f"\nimage size: {size / 1e6:.0f} MB")


def test_drops_become_cutouts_owned_by_puid(
    docker: tuple[Dockerd, str],
    user: tuple[int, int],
    photos: dict[str, Path],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    container = start(docker, tmp_path, user)
    container.wait_ready()
    print(f"\nstart to ready: {time.monotonic() - started:.1f} s")
    data = tmp_path / "data"
    for name in ("inbox", "outbox", "archive", "failed"):  # made on first start, for PUID
        info = os.stat(data / name)
        assert (info.st_uid, info.st_gid) == user, name
    # As a Samba group share creates files (create mask 0664): an output is never more open
    # than its input (docs/design.md, invariant 4), so UMASK 002 shows on 0664 inputs.
    stage = tmp_path / "stage"
    stage.mkdir()
    for name in ("astronaut.jpg", "coffee.png"):
        shutil.copyfile(photos[name], stage / name)
        os.chmod(stage / name, 0o664)
        os.chown(stage / name, *user)
        os.rename(stage / name, data / "inbox" / name)
    shoot = stage / "shoot"  # a folder, moved in whole
    shoot.mkdir()
    shutil.copyfile(photos["chelsea.webp"], shoot / "chelsea.webp")
    shutil.copyfile(photos["rocket.jpg"], shoot / "rocket.jpg")
    for path in (shoot, shoot / "chelsea.webp", shoot / "rocket.jpg"):
        os.chmod(path, 0o775 if path.is_dir() else 0o664)
        os.chown(path, *user)  # as the share user (PUID) creates it over SMB
    os.rename(shoot, data / "inbox" / "shoot")
    (data / "inbox" / "broken.jpg").write_text("this is not a photo\n")

    expected = ["astronaut.png", "coffee.png", "shoot/chelsea.png", "shoot/rocket.png"]
    wait_for(lambda: outputs(data / "outbox") == expected, what="four cutouts")
    wait_for((data / "failed" / "broken.jpg.error.txt").exists, what="the failed note")
    assert "broken.jpg" in (data / "failed" / "broken.jpg.error.txt").read_text()
    assert (data / "failed" / "broken.jpg").read_text() == "this is not a photo\n"
    for name in expected:
        info = os.stat(data / "outbox" / name)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (*user, 0o664), name
    info = os.stat(data / "outbox" / "shoot")
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (*user, 0o775)
    wait_for(
        lambda: (
            tree(data / "archive")
            == ["astronaut.jpg", "coffee.png", "shoot/chelsea.webp", "shoot/rocket.jpg"]
        ),
        what="originals archived",
    )
    assert (data / "archive" / "coffee.png").read_bytes() == photos["coffee.png"].read_bytes()
    assert list((data / "inbox").iterdir()) == []
    # Nothing in the container runs as root; the daemon is PID 1's program, as PUID.
    processes = container.host_pids()
    assert processes and all((uid, gid) == user for _pid, uid, gid, _cmd in processes), processes
    assert any("watchd run" in cmd for *_ids, cmd in processes), processes


def _batch(photos: dict[str, Path], inbox: Path, prefix: str, count: int) -> list[str]:
    names = []
    sources = sorted(photos)
    for index in range(count):
        src = photos[sources[index % len(sources)]]
        name = f"{prefix}{index:02d}{src.suffix}"
        drop(src, inbox, name)
        names.append(name)
    return names


def _finished_exactly(data: Path, names: list[str]) -> bool:
    outs = outputs(data / "outbox")
    archived = tree(data / "archive")
    return outs == sorted(Path(n).stem + ".png" for n in names) and archived == sorted(names)


def test_stop_drains_and_kill_loses_nothing(
    docker: tuple[Dockerd, str],
    user: tuple[int, int],
    photos: dict[str, Path],
    tmp_path: Path,
) -> None:
    container = start(docker, tmp_path, user, f"--stop-timeout={GRACE}")
    container.wait_ready()
    data = tmp_path / "data"
    names = _batch(photos, data / "inbox", "s", 16)
    wait_for(lambda: outputs(data / "outbox"), what="the batch under way")

    # docker stop: SIGTERM, the daemon drains and exits 0 within the grace period
    started = time.monotonic()
    container.docker("stop", "-t", str(GRACE), container.name, timeout=GRACE + 60)
    took = time.monotonic() - started
    state = container.state()
    assert (state["ExitCode"], state["OOMKilled"]) == (0, False), container.logs()[-4000:]
    assert took < GRACE, took
    assert container.events("shutdown.drained"), container.logs()[-4000:]
    print(f"\ndocker stop took {took:.1f} s with {len(outputs(data / 'outbox'))} of 16 done")
    assert not _finished_exactly(data, names), "the batch finished before the stop: too small"

    container.docker("start", container.name)
    container.wait_ready(before=1)
    wait_for(lambda: _finished_exactly(data, names), what="the batch finished after start")

    # docker kill (SIGKILL) in the middle of a second batch, then start: the same
    more = _batch(photos, data / "inbox", "k", 16)
    wait_for(lambda: len(outputs(data / "outbox")) > len(names), what="second batch under way")
    container.docker("kill", container.name)
    wait_for(lambda: not container.state()["Running"], what="killed")
    assert container.state()["ExitCode"] == 137
    assert not _finished_exactly(data, names + more), "finished before the kill: too small"
    container.docker("start", container.name)
    container.wait_ready(before=2)
    wait_for(lambda: _finished_exactly(data, names + more), what="both batches, exactly once")
    assert list((data / "inbox").iterdir()) == []
    assert list((data / "failed").iterdir()) == []


def test_health_follows_the_daemon(
    docker: tuple[Dockerd, str], user: tuple[int, int], tmp_path: Path
) -> None:
    """HEALTHCHECK asks the daemon over its socket: healthy when it answers, unhealthy when
    it is stuck (SIGSTOP) and healthy again when it goes on."""
    container = start(
        docker, tmp_path, user,
        "--health-interval=1s", "--health-timeout=3s", "--health-retries=2",
    )  # fmt: skip
    wait_for(lambda: container.health() == "healthy", what="healthy")
    pid = int(container.state()["Pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: container.health() == "unhealthy", what="unhealthy while stopped")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: container.health() == "healthy", what="healthy again")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"WATCHD_WORKERS": "lots"},
            "watchd: environment variable WATCHD_WORKERS='lots': pool.workers: expected an "
            "integer, got str 'lots'",
        ),
        (
            {"WATCHD_MODEL": "u2net_cloth_seg"},
            "watchd: environment variable WATCHD_MODEL='u2net_cloth_seg': watch[0].model: ",
        ),
        ({"PUID": "0"}, "watchd: environment variable PUID='0': the daemon never runs as root"),
    ],
)
def test_a_bad_variable_stops_the_container_naming_it(
    docker: tuple[Dockerd, str],
    user: tuple[int, int],
    tmp_path: Path,
    env: dict[str, str],
    message: str,
) -> None:
    container = start(docker, tmp_path, user, env=env)
    wait_for(lambda: not container.state()["Running"], what="the container to stop")
    assert container.state()["ExitCode"] == 2
    assert container.logs().startswith(message), container.logs()
