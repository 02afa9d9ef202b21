"""The control socket's server: one JSON object per line over a unix stream socket.

The daemon's main thread owns the ledger, so this server never carries a command
out itself. It reads a line, checks it (JSON, version, command name, every
argument's type and range), hands a :class:`Request` to the daemon's handler and
waits, bounded, for the :class:`concurrent.futures.Future` the handler returns;
the main thread completes that future with a result dict or with a
:class:`ProtocolError`. All connections are served by one asyncio loop in one
daemon thread, so a slow client or a busy main loop never blocks anyone else.

The wire format is documented in ``docs/protocol.md``; ``COMMANDS`` and
``ERROR_CODES`` below are the source of truth it is tested against.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from watchd import validate
from watchd.control_client import PROTOCOL_VERSION, encode_line
from watchd.errors import BadValue, ControlSocketError, ProtocolError
from watchd.states import JOB_STATES

if TYPE_CHECKING:
    import asyncio
    import concurrent.futures
else:
    # The CLI (``watchd status`` and friends) imports this module for the client alone,
    # and health checks call it often: the server's heavy imports (asyncio alone is about a
    # third of the CLI's start-up) happen on first use, in the daemon (issue 17).
    from watchd.lazy import lazy_module

    asyncio = lazy_module("asyncio")


class _LazyLog:
    """structlog's logger, imported when the server first logs (the CLI's client never does)."""

    def __getattr__(self, name: str) -> Any:
        import structlog

        return getattr(structlog.get_logger(), name)


log: Any = _LazyLog()


#: Every error code the server sends, in the order docs/protocol.md lists them.
ERROR_CODES: Final = (
    "bad_json",
    "bad_request",
    "unknown_command",
    "too_large",
    "timeout",
    "not_found",
    "conflict",
    "unavailable",
    "internal",
)

#: Commands that change something; each one is logged (``control.command``) with the peer's uid/pid.
MUTATING_COMMANDS: Final = frozenset(
    {"cancel", "retry", "pause", "resume", "submit", "reload", "prune", "approve", "reject"}
)

#: Largest integer accepted anywhere (SQLite's INTEGER is a signed 64-bit number).
MAX_INT: Final = 2**63 - 1
#: Largest ``older_than_days`` accepted by ``prune`` (about 270 years).
MAX_PRUNE_DAYS: Final = 100_000
#: The longest path a unix socket address may hold (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH: Final = 107

_REQUEST_FIELDS: Final = frozenset({"version", "command", "args", "id"})
_NO_ID: Final = object()


@dataclass(frozen=True)
class Request:
    """One checked request, as the daemon's handler receives it.

    ``args`` holds only known arguments, of the documented types, with defaults
    filled in (``jobs.limit`` = 50, ``submit.move`` = false); optional arguments
    without a default are absent when the client left them out.
    """

    command: str
    args: Mapping[str, Any]
    peer_uid: int | None
    peer_pid: int | None
    #: The peer's group and supplementary groups (``SO_PEERCRED``, ``SO_PEERGROUPS``):
    #: what ``submit`` checks a path against. Empty when unknown.
    peer_gids: frozenset[int] = frozenset()


#: Enqueue the request for the daemon's main thread and return a future that it completes
#: (``set_result(dict)`` or ``set_exception(ProtocolError(...))``). Called in the server's
#: loop thread, so it must not block. The server never cancels that future: after a timeout
#: or ``stop()`` it simply stops waiting, so the main thread may complete it at any time
#: without error. A future the daemon cancels itself is answered ``unavailable``.
Handler = Callable[[Request], "concurrent.futures.Future[dict[str, Any]]"]


# --- argument checks ------------------------------------------------------------------------------

_Check = Callable[[str, str, Any], Any]  # (command, arg, value) -> normalised value, or raises


@dataclass(frozen=True)
class ArgSpec:
    """One argument of one command."""

    expected: str  # what the value must be, in the words of the error message
    check: _Check
    required: bool = False
    default: Any = None  # applied when not required and not None


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"a string ({json.dumps(text, ensure_ascii=False)})"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json.loads makes nothing else


def _bad(label: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError("bad_request", f"{label} must be {expected}, got {_describe(value)}")


def _bad_arg(command: str, name: str, expected: str, value: Any) -> ProtocolError:
    return _bad(f"argument '{name}' of '{command}'", expected, value)


def _checked(expected: str, parse: Callable[[Any], Any]) -> ArgSpec:
    """An argument checked by one of watchd/validate.py's checks (the same as a config key's),
    refused in the protocol's words: "argument 'x' of 'y' must be <expected>, got ..."."""

    def check(command: str, name: str, value: Any) -> Any:
        try:
            return parse(value)
        except BadValue:
            raise _bad_arg(command, name, expected, value) from None

    return ArgSpec(expected, check)


def _integer(minimum: int, maximum: int = MAX_INT) -> ArgSpec:
    if maximum == MAX_INT:
        expected = f"an integer >= {minimum}"
    else:
        expected = f"an integer from {minimum} to {maximum}"
    return _checked(expected, partial(validate.integer, minimum=minimum, maximum=maximum))


def _number(minimum: float, maximum: float) -> ArgSpec:
    expected = f"a number from {minimum:g} to {maximum:g}"
    return _checked(expected, partial(validate.number, minimum=minimum, maximum=maximum))


def _text(expected: str = "a non-empty string without NUL characters") -> ArgSpec:
    def check(command: str, name: str, value: Any) -> str:
        if not isinstance(value, str) or not value or "\0" in value:
            raise _bad_arg(command, name, expected, value)
        return value

    return ArgSpec(expected, check)


#: The longest ``submit --name`` (bytes of UTF-8): a job's name becomes a folder's name,
#: and no Linux file system takes a longer one.
MAX_NAME_BYTES: Final = 255


def _name() -> ArgSpec:
    expected = (
        f"a file name (non-empty, no '/', no NUL, not '.' or '..', at most {MAX_NAME_BYTES} bytes)"
    )

    def check(command: str, name: str, value: Any) -> str:
        if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\0" in value:
            raise _bad_arg(command, name, expected, value)
        if len(value.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise _bad_arg(command, name, expected, value)
        return value

    return ArgSpec(expected, check)


def _choice(*choices: str) -> ArgSpec:
    expected = "one of " + ", ".join(f'"{c}"' for c in choices)
    return _checked(expected, partial(validate.choice, options=choices))


def _boolean() -> ArgSpec:
    return _checked("true or false", validate.boolean)


def _absolute_paths() -> ArgSpec:
    expected = "a non-empty array of absolute paths"

    def check(command: str, name: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise _bad_arg(command, name, expected, value)
        for index, item in enumerate(value):
            if not isinstance(item, str) or "\0" in item or not os.path.isabs(item):
                expected_item = "an absolute path (a string starting with '/')"
                raise _bad_arg(command, f"{name}[{index}]", expected_item, item)
        return list(value)

    return ArgSpec(expected, check)


def _options() -> ArgSpec:
    """``submit``'s output options: only the shape here. Each key and value is checked by
    the daemon with a sidecar's rules (watchd.config.job_overrides), one set for every door."""
    expected = "an object of a job's watchd.toml keys (crop, margin, format, ...)"

    def check(command: str, name: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _bad_arg(command, name, expected, value)
        return dict(value)

    return ArgSpec(expected, check)


def _required(spec: ArgSpec) -> ArgSpec:
    return ArgSpec(spec.expected, spec.check, required=True)


def _default(spec: ArgSpec, default: Any) -> ArgSpec:
    return ArgSpec(spec.expected, spec.check, default=default)


_JOB_ID = _required(_integer(1))

#: Every command and its arguments; the keys are the command names on the wire.
COMMANDS: Final[Mapping[str, Mapping[str, ArgSpec]]] = MappingProxyType(
    {
        "ping": {},
        "status": {},
        "jobs": {
            "state": _choice(*JOB_STATES),
            "watch": _text(),
            "limit": _default(_integer(1, 1000), 50),
            "before": _integer(1),
        },
        "job": {"id": _JOB_ID},
        "cancel": {"id": _JOB_ID},
        "retry": {"id": _JOB_ID},
        "approve": {"id": _JOB_ID, "file": _integer(1)},
        "reject": {"id": _JOB_ID, "file": _integer(1), "reason": _text()},
        "pause": {},
        "resume": {},
        "submit": {
            "paths": _required(_absolute_paths()),
            "watch": _text(),
            "move": _default(_boolean(), False),
            "name": _name(),
            "priority": _integer(validate.MIN_PRIORITY, validate.MAX_PRIORITY),
            "options": _options(),
        },
        "reload": {},
        "prune": {"older_than_days": _required(_number(0, MAX_PRUNE_DAYS))},
    }
)


def validate_args(command: str, args: Any) -> dict[str, Any]:
    """Check ``args`` of a known ``command``; return them with defaults filled in.

    Raises :class:`ProtocolError` (``unknown_command`` or ``bad_request``, naming the
    argument and what was expected).
    """
    specs = COMMANDS.get(command)
    if specs is None:
        known = ", ".join(sorted(COMMANDS))
        raise ProtocolError("unknown_command", f"unknown command {command!r}; known: {known}")
    if not isinstance(args, dict):
        raise _bad(f"'args' of '{command}'", "an object", args)
    unknown = sorted(set(args) - set(specs))
    if unknown:
        accepted = ", ".join(sorted(specs)) if specs else "none"
        raise ProtocolError(
            "bad_request",
            f"'{command}' does not take argument {unknown[0]!r} (it takes: {accepted})",
        )
    checked: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in args:
            checked[name] = spec.check(command, name, args[name])
        elif spec.required:
            raise ProtocolError(
                "bad_request", f"'{command}' needs argument '{name}' ({spec.expected})"
            )
        elif spec.default is not None:
            checked[name] = spec.default
    return checked


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_request(line: bytes) -> dict[str, Any]:
    """One request line -> a JSON object; ``bad_json`` if it is not UTF-8 JSON or not an object."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            "bad_json", f"request is not valid UTF-8 (byte 0x{line[exc.start]:02x} at {exc.start})"
        ) from None
    if not text.strip():
        raise ProtocolError("bad_json", "empty line; expected a JSON object")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            "bad_json", f"request is not valid JSON: {exc.msg} at column {exc.colno}"
        ) from None
    except ValueError as exc:  # NaN / Infinity
        raise ProtocolError("bad_json", f"request is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("bad_json", "request is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", f"expected a JSON object, got {_describe(obj)}")
    return obj


def validate_request(obj: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check a decoded request's envelope and arguments; return (command, checked args)."""
    if "version" not in obj:
        raise ProtocolError("bad_request", f"missing 'version' (expected {PROTOCOL_VERSION})")
    version = obj["version"]
    if isinstance(version, bool) or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_request",
            f"unsupported 'version' {_describe(version)}; this daemon speaks version "
            f"{PROTOCOL_VERSION}",
        )
    unknown = sorted(set(obj) - _REQUEST_FIELDS)
    if unknown:
        raise ProtocolError(
            "bad_request",
            f"unknown request field {unknown[0]!r} (fields: args, command, id, version)",
        )
    command = obj.get("command")
    if not isinstance(command, str):
        raise _bad("'command'", "a string", command)
    return command, validate_args(command, obj.get("args", {}))


def _loggable(args: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments for the log: long lists (``submit``'s paths) cut to their first 10 items."""
    return {
        k: [*v[:10], f"... {len(v) - 10} more"] if isinstance(v, list) and len(v) > 10 else v
        for k, v in args.items()
    }


def _envelope(ident: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = {"version": PROTOCOL_VERSION, **body}
    if ident is not _NO_ID:
        response["id"] = ident
    return response


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _error_line(ident: Any, code: str, message: str) -> bytes:
    return encode_line(_envelope(ident, _error_body(code, message)))


# --- the socket file ------------------------------------------------------------------------------


def _resolve_group(group: str | None, path: Path) -> int | None:
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(
            f"control socket {path}: unknown group {group!r} (no such group on this system)"
        ) from None


def _clear_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse if a daemon answers or it is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(
            f"control socket {path} exists and is not a socket; not replacing it"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("control.stale_socket_removed", path=str(path))
        return
    except FileNotFoundError:
        return
    except (TimeoutError, BlockingIOError):
        pass  # accepting but its queue is full: a live, busy daemon
    except OSError as exc:
        raise ControlSocketError(
            f"control socket {path}: cannot check whether it is in use: {exc.strerror or exc}"
        ) from exc
    finally:
        probe.close()
    raise ControlSocketError(
        f"another watchd is already listening on {path}; stop it or configure another socket"
    )


def _listen(path: Path, mode: int, gid: int | None, backlog: int) -> tuple[socket.socket, int, int]:
    """Create, protect and publish the listening socket; return it and its file's (dev, ino).

    The socket is bound inside a fresh 0700 folder next to ``path``, given its mode
    and group there, and only then hard-linked to ``path`` (which fails if anything
    appeared there meanwhile). So nobody can connect before the permissions are
    right, and, unlike a temporary umask, nothing the process's other threads
    create at the same moment is affected.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH or len(os.fsencode(path.parent)) + 13 > (
        MAX_SOCKET_PATH
    ):
        raise ControlSocketError(
            f"control socket path {path} is too long for a unix socket "
            f"(at most {MAX_SOCKET_PATH - 13} bytes for its folder and {MAX_SOCKET_PATH} in all)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlSocketError(
            f"cannot create the folder of control socket {path}: {exc.strerror or exc}"
        ) from exc
    _clear_stale(path)
    try:
        import tempfile

        private = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))  # mode 0700
    except OSError as exc:
        raise ControlSocketError(
            f"cannot create control socket {path}: {exc.strerror or exc}"
        ) from exc
    staged = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(str(staged))
            os.chmod(staged, mode)
            if gid is not None:
                os.chown(staged, -1, gid)
            sock.listen(backlog)
            os.link(staged, path)
        except FileExistsError:
            raise ControlSocketError(
                f"another watchd is already listening on {path}; stop it or configure another "
                "socket"
            ) from None
        except OSError as exc:
            raise ControlSocketError(
                f"cannot create control socket {path}: {exc.strerror or exc}"
            ) from exc
        st = os.lstat(path)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            staged.unlink()
        with contextlib.suppress(OSError):
            private.rmdir()
    return sock, st.st_dev, st.st_ino


#: ``SO_PEERGROUPS`` (Linux 4.13+), which Python's socket module does not name.
_SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
#: Python reads at most 1024 bytes of a socket option: 256 groups.
_MAX_PEER_GROUPS_BYTES: Final = 1024


@dataclass(frozen=True)
class Peer:
    """Who is connected: ``uid`` and ``pid`` from ``SO_PEERCRED``; ``gids`` is the primary
    group plus, from ``SO_PEERGROUPS``, the supplementary groups (primary only where the
    kernel cannot say, which can only deny more, never allow more)."""

    uid: int | None
    pid: int | None
    gids: frozenset[int]


def _peer_credentials(writer: asyncio.StreamWriter) -> Peer:
    """The credentials of the connected process, as the kernel recorded them at connect."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:  # pragma: no cover - Linux has both
        return Peer(None, None, frozenset())
    size = struct.calcsize("3i")
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, size))
    except OSError:  # pragma: no cover
        return Peer(None, None, frozenset())
    gids = {gid}
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, _MAX_PEER_GROUPS_BYTES)
        gids.update(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:  # an old kernel, or more groups than fit: the primary group only
        pass
    return Peer(uid, pid, frozenset(gids))


# --- the server -----------------------------------------------------------------------------------


class ControlServer:
    """Serves the control protocol on a unix socket from one asyncio loop in one daemon thread."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        mode: int = 0o660,
        group: str | None = None,
        idle_timeout: float = 10.0,
        max_line: int = 1024 * 1024,
        max_clients: int = 256,
        handler_timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self._mode = mode
        self._group = group
        self._idle_timeout = idle_timeout
        self._max_line = max_line
        self._max_clients = max_clients
        self._handler_timeout = handler_timeout
        self._state = "new"  # new -> running -> stopped
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._file_id: tuple[int, int] | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        # owned by the loop thread once it runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._closing = False
        self._connections: set[asyncio.Task[None]] = set()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen on the socket and serve from a background thread; returns when listening."""
        with self._state_lock:
            if self._state != "new":
                raise RuntimeError("a ControlServer can be started only once")
            self._state = "running"
        try:
            gid = _resolve_group(self._group, self.path)
            self._sock, dev, ino = _listen(self.path, self._mode, gid, max(128, self._max_clients))
            self._file_id = (dev, ino)
            self._thread = threading.Thread(target=self._run, name="watchd-control", daemon=True)
            self._thread.start()
            self._ready.wait()
            if self._startup_error is not None:
                raise ControlSocketError(
                    f"cannot serve control socket {self.path}: {self._startup_error}"
                ) from self._startup_error
        except BaseException:
            self.stop()
            raise
        log.info(
            "control.listening",
            path=str(self.path),
            mode=oct(self._mode),
            group=self._group,
        )

    def stop(self) -> None:
        """Close the listener and every connection, join the thread, remove the socket file."""
        with self._state_lock:
            if self._state == "stopped":
                return
            self._state = "stopped"
        thread = self._thread
        if thread is not None:
            self._ready.wait()  # a start() in another thread has set up its loop
        loop = self._loop
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._begin_stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if self._sock is not None:
            self._sock.close()
        self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        if self._file_id is None:
            return
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._file_id:  # never another daemon's socket
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._file_id = None

    # --- the loop thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # pragma: no cover - _main handles its own errors
            log.exception("control.loop_failed")
            if not self._ready.is_set():
                self._startup_error = exc
        finally:
            self._ready.set()

    def _begin_stop(self) -> None:
        self._closing = True
        if self._stop_event is not None:
            self._stop_event.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            server = await asyncio.start_unix_server(
                self._serve_client, sock=self._sock, limit=self._max_line
            )
        except Exception as exc:  # pragma: no cover - the socket is already bound and listening
            self._startup_error = exc
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            self._closing = True
            server.close()
            while self._connections:
                for task in list(self._connections):
                    task.cancel()
                await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._connections) >= self._max_clients:
            reason = "the daemon is shutting down" if self._closing else "too many clients"
            log.warning("control.client_rejected", reason=reason, clients=len(self._connections))
            await self._send(writer, _error_line(_NO_ID, "unavailable", reason))
            await self._close(writer)
            return
        self._connections.add(task)
        try:
            await self._converse(reader, writer)
        except asyncio.CancelledError:
            pass  # stop(): the connection is closed below
        except Exception:  # pragma: no cover - _converse answers every error it expects
            log.exception("control.connection_failed")
        finally:
            self._connections.discard(task)
            await self._close(writer)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_credentials(writer)
        uid, pid = peer.uid, peer.pid
        while True:
            last = False
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), self._idle_timeout)
            except asyncio.TimeoutError:
                log.debug("control.client_timeout", uid=uid, pid=pid)
                message = (
                    f"no complete request line within {self._idle_timeout:g} s; closing the "
                    "connection"
                )
                await self._send(writer, _error_line(_NO_ID, "timeout", message))
                return
            except asyncio.IncompleteReadError as exc:  # end of input
                if not exc.partial.strip():
                    return
                line, last = exc.partial, True  # a last request without its newline
            except (asyncio.LimitOverrunError, ValueError):
                log.info("control.request_too_large", uid=uid, pid=pid, limit=self._max_line)
                message = f"request line longer than {self._max_line} bytes; closing the connection"
                await self._send(writer, _error_line(_NO_ID, "too_large", message))
                return
            except OSError:
                return
            response = await self._respond(line, peer)
            if not await self._send(writer, response) or last or self._closing:
                return

    async def _respond(self, line: bytes, peer: Peer) -> bytes:
        ident: Any = _NO_ID
        uid, pid = peer.uid, peer.pid
        try:
            obj = decode_request(line)
            ident = obj.get("id", _NO_ID)
            command, args = validate_request(obj)
            request = Request(command, MappingProxyType(args), uid, pid, peer.gids)
            if command in MUTATING_COMMANDS:
                log.info("control.command", command=command, uid=uid, pid=pid, args=_loggable(args))
            else:
                log.debug("control.command", command=command, uid=uid, pid=pid)
            result = await self._call(request)
        except ProtocolError as exc:
            if exc.code not in ERROR_CODES:
                log.error("control.undocumented_error_code", code=exc.code, message=exc.message)
                return _error_line(ident, "internal", "internal error; the daemon log has details")
            return _error_line(ident, exc.code, exc.message)
        except asyncio.CancelledError:
            if not self._closing:
                raise
            return _error_line(ident, "unavailable", "the daemon is shutting down")
        try:
            return encode_line(_envelope(ident, {"ok": True, "result": result}))
        except (TypeError, ValueError):
            log.exception("control.result_not_json", command=request.command)
            return _error_line(
                ident, "internal", f"internal error: the result of '{request.command}' is not JSON"
            )

    async def _call(self, request: Request) -> dict[str, Any]:
        """Hand the request to the daemon and wait, bounded, for its future."""
        command = request.command
        internal = ProtocolError(
            "internal", f"internal error while running '{command}'; the daemon log has details"
        )
        try:
            waiter = asyncio.wrap_future(self._handler(request))
        except ProtocolError:
            raise
        except Exception:
            log.exception("control.handler_failed", command=command)
            raise internal from None
        try:
            # shield: a timeout must not cancel the daemon's future (it may be running already)
            result: object = await asyncio.wait_for(asyncio.shield(waiter), self._handler_timeout)
        except asyncio.TimeoutError:
            log.warning("control.handler_timeout", command=command, after=self._handler_timeout)
            raise ProtocolError(
                "timeout",
                f"the daemon did not answer '{command}' within {self._handler_timeout:g} s; "
                "it may still carry it out",
            ) from None
        except asyncio.CancelledError:
            if waiter.cancelled():  # the daemon dropped the request
                raise ProtocolError(
                    "unavailable", f"the daemon dropped '{command}' (is it shutting down?)"
                ) from None
            raise
        except ProtocolError:
            raise
        except Exception:
            log.exception("control.handler_failed", command=command)
            raise internal from None
        if not isinstance(result, dict):
            log.error("control.handler_bad_result", command=command, type=type(result).__name__)
            raise internal
        return result

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        try:
            writer.write(data)
            # while stopping, a client that does not read gets a second, not the idle timeout
            await asyncio.wait_for(writer.drain(), 1.0 if self._closing else self._idle_timeout)
        except (OSError, asyncio.TimeoutError):  # gone, or not reading its answers
            return False
        return True

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
