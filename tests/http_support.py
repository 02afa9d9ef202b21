"""Helpers for the HTTP door's tests: a daemon with [http], multipart bodies, raw sockets."""

from __future__ import annotations

import io
import socket
import stat
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.support import DaemonProcess, wait_for, write_config
from watchd.models import ModelStore


def http_daemon(
    root: Path, model_store: ModelStore, http: dict[str, Any] | None = None, **overrides: Any
) -> DaemonProcess:
    """A daemon (not started) whose config has ``[http]`` on a free loopback port."""
    keys = {"listen": "127.0.0.1:0", **(http or {})}
    text = write_config(root, model_store, **overrides) + "\n[http]\n"
    text += "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
    return DaemonProcess(root, text)


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def base_url(daemon: DaemonProcess) -> str:
    """The URL the daemon logged in its latest ``http.listening``."""
    events = wait_for(lambda: daemon.events("http.listening"), what="http.listening")
    url: str = events[-1]["urls"][0]
    return url


def staging(daemon: DaemonProcess) -> Path:
    return daemon.root / "state" / "spool" / "http"


def staged_files(daemon: DaemonProcess) -> list[Path]:
    """Everything an upload left in the staging folder (should be nothing between requests)."""
    root = staging(daemon)
    return sorted(root.rglob("*")) if root.exists() else []


def wait_job(client: httpx.Client, job_id: int, timeout: float = 120.0) -> dict[str, Any]:
    """Poll GET /queue/job/ID until the job has ended; returns its last answer."""

    def ended() -> dict[str, Any] | None:
        answer = client.get(f"/queue/job/{job_id}")
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        return job if job["finished_at"] is not None else None

    result: dict[str, Any] = wait_for(ended, timeout, what=f"job {job_id} to end")
    return result


def make_zip(entries: list[tuple[str, bytes]], *, links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = stat.S_IFLNK | 0o777 if name in links else stat.S_IFREG | 0o644
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def open_upload(url: str, declared: int, first: bytes) -> socket.socket:
    """A raw connection that starts a multipart upload of ``declared`` bytes and sends
    ``first`` of them; the caller decides what happens to the rest."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    head = (
        "POST /queue/submit HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    part = (
        b'--XyZ\r\nContent-Disposition: form-data; name="images"; filename="big.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    sock.sendall(head + part + first)
    return sock
