"""A private Docker daemon for the container tests, a Debian base image made with debootstrap,
and the watchd image built on it by ``make image`` with ``--network none``.

No registry is reachable on CI machines and no Docker daemon runs there, so the
set-up starts its own ``dockerd`` (Debian's ``docker.io``) with its own data and
exec roots in a temp folder, no bridge and no iptables rules, and stops it at the
end. The base image is ``debootstrap --variant=minbase bookworm`` with Python,
imported with ``docker import``; its tarball is cached in :data:`CACHE` (keyed by
what goes into it), because debootstrap takes minutes and its result never changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path("/var/cache/watchd-test")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
INCLUDE = "python3,python3-venv,ca-certificates"


def missing_requirements() -> str | None:
    """Why the container tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "dockerd and debootstrap need root (CI runs as root)"
    needed = {"dockerd": "docker.io", "docker": "docker.io", "debootstrap": "debootstrap"}
    absent = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if absent:
        return f"install Debian's {' and '.join(absent)} (.ci/run does) to run the container tests"
    return None


@dataclass
class Timings:
    """Seconds each set-up step took, printed at the end of the session (docs/container.md)."""

    steps: dict[str, float] = field(default_factory=dict)

    def measure(self, name: str, action: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = action()
        self.steps[name] = round(time.monotonic() - started, 1)
        return result


class Dockerd:
    """``dockerd`` with everything under one temp folder; ``docker`` talks only to it."""

    def __init__(self) -> None:
        # a short path: the socket's name must fit in sun_path (108 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="watchd-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    def start(self) -> Dockerd:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={self.root / 'data'}",
                f"--exec-root={self.root / 'exec'}",
                f"--pidfile={self.root / 'dockerd.pid'}",
                f"--host=unix://{self.socket}",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        wait_for(
            lambda: (
                self.proc is not None
                and (
                    self.proc.poll() is not None
                    or self.docker("version", check=False).returncode == 0
                )
            ),
            what="dockerd to answer",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"dockerd exited at start:\n{self.log_path.read_text()[-4000:]}")
        return self

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", *args],
            env=self.env,
            capture_output=True,
            text=input is None,
            input=input,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {result.returncode}\n{result.stderr}")
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def _run(argv: list[str], timeout: float, **kwargs: Any) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {result.returncode}\n{result.stderr[-4000:]}")


def base_tarball(scratch: Path) -> Path:
    """The debootstrap root file system as a tarball, from :data:`CACHE` when made before."""
    arch = (
        subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=False
        ).stdout.strip()
        or platform.machine()
    )
    key = hashlib.sha256(f"{SUITE} minbase {INCLUDE} {arch} {MIRROR}".encode()).hexdigest()[:12]
    name = f"debootstrap-{SUITE}-{arch}-{key}.tar"
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        cache: Path = CACHE
    except OSError:
        cache = scratch
    tarball = cache / name
    if tarball.exists():
        return tarball
    rootfs = scratch / "rootfs"
    _run(
        ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(rootfs), MIRROR],
        timeout=1200,
    )
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):  # downloads, not the system
        for entry in (rootfs / leftover).glob("*"):
            if entry.is_file():
                entry.unlink()
    temp = cache / f".{name}.{os.getpid()}.partial"
    _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(temp), "."], timeout=600)
    os.replace(temp, tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def build_images(dockerd: Dockerd, scratch: Path, timings: Timings) -> tuple[str, str]:
    """(base image, watchd image): the base imported, watchd's built by ``make image``."""
    tarball = timings.measure("debootstrap (or cache)", lambda: base_tarball(scratch))
    base = f"watchd-test-base:{tarball.stem.rsplit('-', 1)[1]}"
    with open(tarball, "rb") as stream:
        timings.measure(
            "docker import",
            lambda: dockerd.docker("import", "-", base, input=stream.read(), timeout=600),
        )
    image = "watchd-test:latest"
    timings.measure(
        "make image (wheelhouse + docker build --network none)",
        lambda: _run(
            ["make", "--no-print-directory", "image", f"IMAGE={image}", f"BASE={base}"],
            timeout=1200,
            cwd=ROOT,
            env=dockerd.env,
        ),
    )
    return base, image


@dataclass
class Container:
    """One container of the watchd image, and what the tests ask of it."""

    dockerd: Dockerd
    name: str

    def docker(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.dockerd.docker(*args, **kwargs)

    def inspect(self) -> dict[str, Any]:
        result: list[dict[str, Any]] = json.loads(self.docker("inspect", self.name).stdout)
        return result[0]

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.inspect()["State"]
        return state

    def health(self) -> str:
        return str((self.state().get("Health") or {}).get("Status"))

    def logs(self) -> str:
        result = self.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.logs().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
        return found

    def wait_ready(self, before: int = 0) -> None:
        wait_for(
            lambda: len(self.events("daemon.ready")) > before or not self.state()["Running"],
            what=f"{self.name}: daemon.ready",
        )
        assert self.state()["Running"], f"{self.name} exited at start:\n{self.logs()[-4000:]}"

    def host_pids(self) -> list[tuple[int, int, int, str]]:
        """(pid, uid, gid, command line) of every process in the container, read from /proc."""
        rows = []
        for line in self.docker("top", self.name, "-eo", "pid").stdout.splitlines()[1:]:
            pid = int(line.strip())
            status = Path(f"/proc/{pid}/status").read_text()
            ids = {
                key: int(rest.split()[0])
                for key, rest in (row.split(":", 1) for row in status.splitlines())
                if key in ("Uid", "Gid")
            }
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            rows.append((pid, ids["Uid"], ids["Gid"], command.strip()))
        return rows


def unprivileged_user(name: str = "watchd-ct") -> tuple[int, int]:
    """A real non-root user (created once) to be PUID/PGID."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell",
             "/usr/sbin/nologin", name],
            timeout=60,
        )  # fmt: skip
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def session(timings: Timings) -> Iterator[tuple[Dockerd, str]]:
    """The fixture's body: dockerd up, images built; everything removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix="watchd-image-"))
    dockerd = timings.measure("dockerd start", lambda: Dockerd().start())
    try:
        _base, image = build_images(dockerd, scratch, timings)
        yield dockerd, image
    finally:
        dockerd.stop()
        shutil.rmtree(scratch, ignore_errors=True)
