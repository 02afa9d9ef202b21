"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` subprocesses on 127.0.0.1.

Shared by tests/test_dask.py (the pool against the cluster) and
tests/test_dask_e2e.py (the real daemon against the cluster). The workers run
the venv's own ``dask`` command with ``--preload watchd.pool.dask_worker`` and the real
u2netp model; every process is started in its own process group so that a test
can SIGKILL a worker or the scheduler with everything it started.

A supervisor thread plays systemd's ``Restart=always`` for workers that should
come back: a Dask worker exits when its scheduler goes away, and it is its
supervisor that brings it back to wait for the scheduler.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

DASK = Path(sys.executable).parent / "dask"
ROOT = Path(__file__).resolve().parent.parent


def need_distributed() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        pytest.skip("dask[distributed] is not installed (pip install 'watchd[dask]')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A scheduler and named workers as real subprocesses, each in its own process group."""

    def __init__(
        self,
        root: Path,
        model_dir: Path,
        *,
        scheduler_env: dict[str, str] | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"{'tls' if tls else 'tcp'}://127.0.0.1:{self.port}"
        self.tls_args = [] if tls is None else tls.args()
        self.env = {**os.environ, "U2NET_HOME": str(model_dir), "PYTHONPATH": str(ROOT)}
        self.env.pop("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", None)
        self.scheduler_env = scheduler_env or {}
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.supervised: set[str] = set()  # workers restarted when they exit (Restart=always)
        self.starts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        try:
            return subprocess.Popen(
                [str(DASK), *args],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    def start_scheduler(self) -> None:
        args = ["scheduler", "--host", self.address.rsplit(":", 1)[0], "--port", str(self.port)]
        args += ["--no-dashboard", *self.tls_args]
        self.scheduler = self._spawn("scheduler", args, {**self.env, **self.scheduler_env})

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        kill_group(self.scheduler)
        self.scheduler = None

    def start_worker(self, name: str, *, supervise: bool = True) -> None:
        args = [
            "worker",
            self.address,
            "--name",
            name,
            "--nworkers",
            "1",
            "--nthreads",
            "1",
            "--no-dashboard",
            "--local-directory",
            str(self.root / "dask-scratch"),
            "--preload",
            "watchd.pool.dask_worker",
            "--watchd-models",
            "u2netp",
            *self.tls_args,
        ]
        with self._lock:
            self.workers[name] = self._spawn(name, args, self.env)
            self.starts[name] = self.starts.get(name, 0) + 1
            if supervise:
                self.supervised.add(name)

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker and its nanny: the host is gone, nothing restarts it."""
        with self._lock:
            self.supervised.discard(name)
            process = self.workers.pop(name)
        kill_group(process)

    def _supervise(self) -> None:
        while not self._stop.wait(0.3):
            with self._lock:
                exited = [n for n in self.supervised if self.workers[n].poll() is not None]
            for name in exited:
                self.start_worker(name)

    def client(self, timeout: float = 60.0) -> Any:
        """A Dask client of this cluster for the test's own questions (close it after use)."""
        import distributed

        return distributed.Client(self.address, set_as_default=False, timeout=timeout)

    def wait_for_workers(self, count: int, timeout: float = 120.0) -> None:
        """Block until ``count`` workers are registered (they start in ~10 s on 2 cores)."""
        client = self.client(timeout)
        try:
            client.wait_for_workers(count, timeout=timeout)
        except TimeoutError:
            logs = "\n".join(f"--- {n}\n{self.log(n)}" for n in ["scheduler", *self.starts])
            raise AssertionError(f"{count} dask workers did not come up:\n{logs}") from None
        finally:
            client.close()

    def files_run_since(self, since: float) -> set[int]:
        """Ledger file ids whose processing a worker started after unix time ``since``.

        Read from the start events the workers publish (``dask_worker.STARTED_TOPIC``;
        task keys are ``watchd-<file id>-<pool token>-<serial>``): the scheduler's
        own record of what ran on the cluster, whatever the daemon says.
        """
        from watchd.pool.dask_worker import STARTED_TOPIC

        client = self.client()
        try:
            events = client.get_events(STARTED_TOPIC)
        finally:
            client.close()
        return {
            int(str(message["key"]).split("-")[1])
            for stamp, message in events
            if stamp >= since and str(message["key"]).startswith("watchd-")
        }

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        self._stop.set()
        self._supervisor.join()
        for child in [*self.workers.values(), self.scheduler]:
            if child is not None:
                kill_group(child)


class TLSFiles:
    """A throw-away CA and one certificate for 127.0.0.1, made with the openssl command."""

    def __init__(self, folder: Path) -> None:
        self.ca, self.cert, self.key = folder / "ca.pem", folder / "node.pem", folder / "node.key"
        ca_key, csr, ext = folder / "ca.key", folder / "node.csr", folder / "san.cnf"
        ext.write_text("subjectAltName = IP:127.0.0.1\n")
        for command in (
            f"req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=watchd-test-ca "
            f"-keyout {ca_key} -out {self.ca}",
            f"req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {self.key} -out {csr}",
            f"x509 -req -in {csr} -CA {self.ca} -CAkey {ca_key} -CAcreateserial -days 2 "
            f"-extfile {ext} -out {self.cert}",
        ):
            subprocess.run(["openssl", *command.split()], check=True, capture_output=True)

    def args(self) -> list[str]:
        return [
            "--tls-ca-file",
            str(self.ca),
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
        ]


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
