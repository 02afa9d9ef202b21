"""Test helpers: deadline polls, a fake clock, dropping files, the real daemon as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def drop(content: Path | bytes, inbox: Path, name: str | None = None) -> Path:
    """Drop a file into ``inbox`` as careful uploaders (and rsync) do: written under a hidden
    temp name beside its place, then renamed, so the watcher never sees it half-written.

    ``content``: a file to copy, or the bytes. ``name`` (default: the source file's name)
    may name a path below ``inbox`` whose folders exist. Returns where the file now is.
    """
    if name is None:
        if not isinstance(content, Path):
            raise TypeError("drop(bytes, ...) needs a name")
        name = content.name
    target = inbox / name
    temp = target.with_name(f".{target.name}.partial")
    if isinstance(content, Path):
        shutil.copyfile(content, temp)
    else:
        temp.write_bytes(content)
    os.rename(temp, target)
    return target


class Clock:
    """A settable fake clock: pass it where code takes ``clock`` (``Ledger.open``, intake,
    completion); a test moves time by setting ``now`` or calling :meth:`advance`."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def jobs_ended(root: Path) -> bool:
    """Every job in the ledger under ``root`` has ended *and* been reported: its manifest is
    written and its hooks have run (docs/completion.md). Until then a hidden temp file of
    the manifest (``.watchd-job-N.manifest.tmp``) may still be in the outbox."""
    import sqlite3

    with sqlite3.connect(root / "state" / "ledger.sqlite3", timeout=30) as db:
        row = db.execute(
            "SELECT COUNT(*), SUM(state != 'active' AND reported = 1) FROM jobs"
        ).fetchone()
    return bool(row[0]) and row[0] == row[1]


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
    if isinstance(value, str | list):  # a JSON string or list of strings is valid TOML
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


#: Manifests sit in the outbox beside the outputs (docs/completion.md).
MANIFEST_SUFFIX = ".manifest.json"


def is_output(path: Path) -> bool:
    """A finished output in an outbox: not a hidden temp being written, not a job's manifest."""
    return path.is_file() and not path.name.startswith(".") and not is_manifest(path)


def is_manifest(path: Path) -> bool:
    return path.name.endswith(MANIFEST_SUFFIX) and not path.name.startswith(".")


@dataclass
class Received:
    """One request the webhook receiver got."""

    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 in a thread; ``answer(request)`` picks each status."""

    requests: list[Received] = field(default_factory=list)
    answer: Callable[[Received], int] = lambda _request: 200
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                request = Received(dict(self.headers.items()), self.rfile.read(length))
                receiver.requests.append(request)
                status = receiver.answer(request)
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return  # the test's output stays readable

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/watchd?token=abc"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
