"""Test helpers: deadline polling and the real daemon as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchd.models import ModelStore

DEADLINE = 90.0  # seconds: generous for a loaded 2-core CI machine; polls return as soon as true


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(0.05)


class DaemonProcess:
    """The real ``watchd run`` in a subprocess, with its JSON log captured to a file."""

    def __init__(self, root: Path, config_text: str) -> None:
        self.root = root
        self.config = root / "watchd.toml"
        self.config.write_text(config_text)
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        for folder in ("inbox", "outbox", "archive", "failed"):  # as an operator creates them
            (root / folder).mkdir(exist_ok=True)

    def start(
        self, wait_ready: bool = True, extra_env: dict[str, str] | None = None
    ) -> DaemonProcess:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        # Not systemd's variables of whatever runs the tests (CI may itself be a unit).
        inherited = ("WATCHD_", "NOTIFY_SOCKET", "WATCHDOG_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        env.update(extra_env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watchd", "run", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            cwd=self.root,
            env=env,
        )
        log.close()
        if wait_ready:
            ready_before = self.count("daemon.ready")
            wait_for(
                lambda: self.count("daemon.ready") > ready_before or self._exited(),
                what="daemon.ready",
            )
            assert self.proc.poll() is None, f"daemon exited at start:\n{self.log_text()}"
        return self

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        result = []
        for line in self.log_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by kill -9, or a library's stray print
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                result.append(event)
        return result

    def count(self, name: str) -> int:
        return len(self.events(name))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)


def write_config(root: Path, model_store: ModelStore, **overrides: Any) -> str:
    """A config for a daemon rooted at ``root`` with fast settle times for tests."""
    watch = {
        "name": "photos",
        "inbox": "inbox",
        "outbox": "outbox",
        "archive": "archive",
        "failed": "failed",
        "model": "u2netp",
        "settle_seconds": 0.5,
    }
    pool = {"workers": 1, "threads_per_worker": 1, "max_attempts": 3, "file_timeout": 120}
    daemon = {
        "state_dir": "state",
        "models_dir": str(model_store.path("u2netp").parent),
        "log_format": "json",
        "drain_seconds": 30,
        "rescan_interval": 5,
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        {"watch": watch, "pool": pool, "daemon": daemon}[section][name] = value
    lines = ["[daemon]"] + [f"{k} = {_toml(v)}" for k, v in daemon.items()]
    lines += ["", "[pool]"] + [f"{k} = {_toml(v)}" for k, v in pool.items()]
    lines += ["", "[[watch]]"] + [f"{k} = {_toml(v)}" for k, v in watch.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
