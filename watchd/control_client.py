"""The control socket's client: what ``watchd status`` and the other operator commands use.

Apart from the server (:mod:`watchd.control`) because a command-line call imports this
alone: scripts and health checks run ``watchd status`` every few seconds, and the server's
argument tables, asyncio and socket-file handling are start-up it does not need
(docs/performance.md, "watchd status start-up"). The wire format is docs/protocol.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from watchd.errors import DaemonUnreachable, ProtocolError

#: The protocol version every request and answer carries.
PROTOCOL_VERSION: Final = 1
#: The client refuses answers longer than this (bytes); the server's answers are far smaller.
MAX_RESPONSE: Final = 64 * 1024 * 1024


def encode_line(obj: Mapping[str, Any]) -> bytes:
    """One request or answer on the wire: compact UTF-8 JSON and a newline."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


_REASONS: Final = {
    errno.ENOENT: "no such file (is the daemon running?)",
    errno.ECONNREFUSED: "connection refused (a stale socket: the daemon is not running)",
    errno.EACCES: "permission denied (is this user in the socket's group?)",
    errno.EPERM: "permission denied (is this user in the socket's group?)",
    errno.EAGAIN: "the daemon is too busy to accept a connection (try again)",
    errno.ENOTSOCK: "not a socket",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ECONNRESET: "the daemon closed the connection",
    errno.EPIPE: "the daemon closed the connection",
}


def connect_unix(path: Path, deadline: float) -> socket.socket:
    """A socket connected to ``path``, waiting through a full accept queue until ``deadline``.

    A unix socket with a timeout fails ``connect`` with EAGAIN at once when the
    listener's accept queue is full (a TCP socket would wait), so a daemon that
    is briefly slow to accept would otherwise look unreachable. Any other error
    is raised as it is; the caller closes the returned socket.
    """
    delay = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the accept queue stayed full") from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)
            continue
        except BaseException:
            sock.close()
            raise
        return sock


class ControlClient:
    """Talks to a running daemon: one connection and one request per :meth:`call`."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, command: str, **args: Any) -> dict[str, Any]:
        """Run ``command`` in the daemon and return its result.

        Raises :class:`ProtocolError` when the daemon answers ``ok: false`` and
        :class:`DaemonUnreachable` when it cannot be reached or does not answer.
        """
        request = {"version": PROTOCOL_VERSION, "command": command, "args": args}
        try:
            data = encode_line(request)
        except (TypeError, ValueError) as exc:
            raise ProtocolError("bad_request", f"arguments are not JSON: {exc}") from None
        response = self._parse(self._exchange(data))
        if response.get("ok") is True and isinstance(response.get("result"), dict):
            result: dict[str, Any] = response["result"]
            return result
        error = response.get("error")
        if response.get("ok") is False and isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            if isinstance(code, str) and isinstance(message, str):
                raise ProtocolError(code, message)
        raise self._unreachable("its answer is not a watchd response")

    def _unreachable(self, reason: str) -> DaemonUnreachable:
        return DaemonUnreachable(f"cannot talk to watchd at {self.path}: {reason}")

    def _reason(self, exc: OSError) -> str:
        if isinstance(exc, TimeoutError) and exc.errno is None:
            return f"timed out after {self.timeout:g} s"
        if exc.errno in _REASONS:
            return _REASONS[exc.errno]
        return exc.strerror or str(exc)  # pragma: no cover

    def _exchange(self, data: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        try:
            sock = connect_unix(self.path, deadline)
        except OSError as exc:
            raise self._unreachable(self._reason(exc)) from exc
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)  # if the daemon hung up early, its answer says why
            return self._read_line(sock, deadline)
        finally:
            sock.close()

    def _read_line(self, sock: socket.socket, deadline: float) -> bytes:
        buffer = bytearray()
        while True:
            newline = buffer.find(b"\n")
            if newline >= 0:
                return bytes(buffer[:newline])
            if len(buffer) > MAX_RESPONSE:
                raise self._unreachable(f"its answer is longer than {MAX_RESPONSE} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._unreachable(f"timed out after {self.timeout:g} s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                raise self._unreachable(self._reason(exc)) from exc
            if not chunk:
                raise self._unreachable("the daemon closed the connection without answering")
            buffer += chunk

    def _parse(self, line: bytes) -> dict[str, Any]:
        try:
            response = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise self._unreachable("its answer is not JSON") from None
        if not isinstance(response, dict) or response.get("version") != PROTOCOL_VERSION:
            raise self._unreachable("its answer is not a watchd version 1 response")
        return response
