"""The control socket: a real ControlServer on a real unix socket, with bad clients of every kind.

The handler mimics the daemon: it completes futures from another thread (a
one-thread executor standing in for the main loop). After every bad client the
server must still serve a well-behaved one.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import structlog

from watchd import control
from watchd.control import (
    COMMANDS,
    ERROR_CODES,
    ControlServer,
    Request,
)
from watchd.control_client import ControlClient, connect_unix
from watchd.errors import ControlSocketError, DaemonUnreachable, ProtocolError

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


class FakeDaemon:
    """Answers requests from a 'main thread' (a one-thread executor), like the real daemon."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.requests: list[Request] = []
        # command -> how to answer instead (returns the future, or raises synchronously)
        self.overrides: dict[str, Callable[[Request], Future[dict[str, Any]]]] = {}

    def __call__(self, request: Request) -> Future[dict[str, Any]]:
        override = self.overrides.get(request.command)
        if override is not None:
            return override(request)
        return self.executor.submit(self._answer, request)

    def _answer(self, request: Request) -> dict[str, Any]:
        self.requests.append(request)
        args = request.args
        if request.command == "ping":
            return {"pong": True, "uid": request.peer_uid, "pid": request.peer_pid}
        if request.command == "job" and args["id"] == 99:
            raise ProtocolError("not_found", "no job 99")
        if request.command == "cancel":
            raise ProtocolError("conflict", f"job {args['id']} is already done")
        return {"command": request.command, "args": dict(args)}


class Conn:
    """A raw client: bytes out, JSON lines in."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = connect_unix(path, time.monotonic() + timeout)
        self.sock.settimeout(timeout)
        self.buffer = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed without an answer; got {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, request: dict[str, Any] | bytes) -> dict[str, Any]:
        data = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
        self.send(data)
        return self.line()

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def ping() -> dict[str, Any]:
    return {"version": 1, "command": "ping"}


def error_of(answer: dict[str, Any]) -> tuple[str, str]:
    assert answer["version"] == 1
    assert answer["ok"] is False, answer
    assert set(answer["error"]) == {"code", "message"}
    return answer["error"]["code"], answer["error"]["message"]


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    executor = ThreadPoolExecutor(1, thread_name_prefix="fake-main")
    yield FakeDaemon(executor)
    executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "ctl.sock"


@pytest.fixture
def start(sock_path: Path, fake: FakeDaemon) -> Iterator[Callable[..., ControlServer]]:
    servers: list[ControlServer] = []

    def make(**options: Any) -> ControlServer:
        path = options.pop("path", sock_path)
        handler = options.pop("handler", fake)
        options.setdefault("idle_timeout", 0.5)
        server = ControlServer(path, handler, **options)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


def assert_serving(path: Path) -> None:
    """A well-behaved client still gets its answer."""
    assert ControlClient(path, timeout=5).call("ping")["pong"] is True


# --- the happy path -------------------------------------------------------------------------------


def test_ping_and_several_requests_on_one_connection(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start()
    with Conn(sock_path) as conn:
        assert conn.ask(ping()) == {
            "version": 1,
            "ok": True,
            "result": {"pong": True, "uid": os.getuid(), "pid": os.getpid()},
        }
        answer = conn.ask({"version": 1, "command": "job", "args": {"id": 5}, "id": "abc"})
        assert answer == {"version": 1, "ok": True, "id": "abc", "result": answer["result"]}
        assert answer["result"] == {"command": "job", "args": {"id": 5}}
        # two requests in one write are answered in order
        conn.send(
            b'{"version":1,"command":"ping","id":1}\n{"version":1,"command":"status","id":2}\n'
        )
        assert [conn.line()["id"], conn.line()["id"]] == [1, 2]


def test_peer_credentials_reach_the_handler(
    start: Callable[..., ControlServer], sock_path: Path, fake: FakeDaemon
) -> None:
    start()
    result = ControlClient(sock_path).call("ping")
    assert result["uid"] == os.getuid()
    assert result["pid"] == os.getpid()
    assert fake.requests[-1].peer_uid == os.getuid()


def test_client_returns_results_and_raises_protocol_errors(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start()
    client = ControlClient(sock_path, timeout=5)
    assert client.call("job", id=5) == {"command": "job", "args": {"id": 5}}
    with pytest.raises(ProtocolError) as not_found:
        client.call("job", id=99)
    assert (not_found.value.code, not_found.value.message) == ("not_found", "no job 99")
    assert str(not_found.value) == "no job 99 (not_found)"
    with pytest.raises(ProtocolError) as conflict:
        client.call("cancel", id=5)
    assert conflict.value.code == "conflict"
    with pytest.raises(ProtocolError) as bad:
        client.call("jobs", limit=0)
    assert bad.value.code == "bad_request"
    assert "limit" in bad.value.message


def test_defaults_are_filled_in_and_args_reach_the_handler_checked(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start()
    client = ControlClient(sock_path)
    assert client.call("jobs")["args"] == {"limit": 50}
    assert client.call("jobs", state="failed", watch="photos", limit=1000, before=7)["args"] == {
        "state": "failed",
        "watch": "photos",
        "limit": 1000,
        "before": 7,
    }
    assert client.call("submit", paths=["/srv/a.jpg"])["args"] == {
        "paths": ["/srv/a.jpg"],
        "move": False,
    }
    assert client.call("submit", paths=["/a", "/b"], watch="w", move=True, name="n")["args"] == {
        "paths": ["/a", "/b"],
        "watch": "w",
        "move": True,
        "name": "n",
    }
    assert client.call("submit", paths=["/a"], priority=-100)["args"]["priority"] == -100
    assert client.call("submit", paths=["/a"], priority=100)["args"]["priority"] == 100
    assert client.call("prune", older_than_days=0)["args"] == {"older_than_days": 0.0}
    assert client.call("prune", older_than_days=1.5)["args"] == {"older_than_days": 1.5}
    for command in ("ping", "status", "pause", "resume", "reload"):
        client.call(command)
    for command in ("job", "cancel", "retry"):
        with pytest.raises(ProtocolError, match="needs argument 'id'"):
            client.call(command)


def test_a_last_request_without_newline_is_answered(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start()
    with Conn(sock_path) as conn:
        conn.send(b'{"version": 1, "command": "ping"}')
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.line()["ok"] is True
        assert conn.closed_by_server()


# --- bad clients ----------------------------------------------------------------------------------

BAD_REQUESTS = [
    # (request line, error code, words the message must contain)
    (b"{not json\n", "bad_json", "not valid JSON"),
    (b'{"version": 1, "command": "ping"\n', "bad_json", "not valid JSON"),
    (b'\xff\xfe{"version": 1}\n', "bad_json", "UTF-8"),
    (b'{"version": 1, "command": "p\xe9ng"}\n', "bad_json", "UTF-8"),
    (b'[{"version": 1, "command": "ping"}]\n', "bad_json", "expected a JSON object"),
    (b'"ping"\n', "bad_json", "expected a JSON object"),
    (b"\n", "bad_json", "empty line"),
    (b'{"version": 1, "command": "prune", "args": {"older_than_days": NaN}}\n', "bad_json", "NaN"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "bad_json", "nested too deeply"),
    (b'{"version": 1, "command": "explode"}\n', "unknown_command", "known: approve, cancel"),
    (b'{"version": 1, "command": 5}\n', "bad_request", "'command' must be a string"),
    (b'{"version": 1}\n', "bad_request", "'command' must be a string, got null"),
    (b'{"command": "ping"}\n', "bad_request", "missing 'version'"),
    (b'{"version": 2, "command": "ping"}\n', "bad_request", "speaks version 1"),
    (b'{"version": 2, "command": "ping", "new": 1}\n', "bad_request", "speaks version 1"),
    (b'{"version": true, "command": "ping"}\n', "bad_request", "true (a boolean)"),
    (b'{"version": "1", "command": "ping"}\n', "bad_request", "unsupported 'version'"),
    (b'{"version": 1, "command": "ping", "extra": 1}\n', "bad_request", "unknown request field"),
    (b'{"version": 1, "command": "ping", "args": []}\n', "bad_request", "must be an object"),
    (b'{"version": 1, "command": "ping", "args": {"x": 1}}\n', "bad_request", "argument 'x'"),
]
BAD_ARGS = [
    # (command, args, words the message must contain)
    ("job", {"id": "5"}, "argument 'id' of 'job' must be an integer >= 1, got a string"),
    ("job", {"id": True}, "got true (a boolean)"),
    ("job", {"id": 0}, "an integer >= 1, got 0"),
    ("job", {"id": 2.0}, "got 2.0"),
    ("job", {"id": 2**63}, "an integer >= 1"),
    ("job", {}, "'job' needs argument 'id'"),
    ("cancel", {"id": None}, "got null"),
    ("retry", {"id": [1]}, "got an array of 1 item"),
    ("jobs", {"limit": -1}, "'limit' of 'jobs' must be an integer from 1 to 1000, got -1"),
    ("jobs", {"limit": 1001}, "from 1 to 1000"),
    ("jobs", {"limit": False}, "a boolean"),
    ("jobs", {"before": 0}, "'before'"),
    ("jobs", {"state": "running"}, '"active", "done", "failed", "cancelled"'),
    ("jobs", {"watch": ""}, "'watch'"),
    ("jobs", {"status": "done"}, "does not take argument 'status' (it takes: before, limit"),
    ("ping", {"verbose": True}, "it takes: none"),
    ("submit", {}, "needs argument 'paths'"),
    ("submit", {"paths": []}, "non-empty array of absolute paths"),
    ("submit", {"paths": "/a.jpg"}, "got a string"),
    ("submit", {"paths": ["/a.jpg", "b.jpg"]}, "paths[1]' of 'submit' must be an absolute path"),
    ("submit", {"paths": ["/a\u0000.jpg"]}, "absolute path"),
    ("submit", {"paths": ["/a.jpg"], "move": "yes"}, "'move' of 'submit' must be true or false"),
    ("submit", {"paths": ["/a.jpg"], "move": 1}, "true or false, got 1"),
    ("submit", {"paths": ["/a.jpg"], "name": "../x"}, "'name'"),
    ("submit", {"paths": ["/a.jpg"], "watch": 3}, "'watch'"),
    ("submit", {"paths": ["/a.jpg"], "priority": 101}, "integer from -100 to 100, got 101"),
    ("submit", {"paths": ["/a.jpg"], "priority": -101}, "integer from -100 to 100, got -101"),
    ("submit", {"paths": ["/a.jpg"], "priority": "5"}, "'priority' of 'submit' must be"),
    ("submit", {"paths": ["/a.jpg"], "priority": 5.0}, "integer from -100 to 100"),
    ("submit", {"paths": ["/a.jpg"], "priority": True}, "integer from -100 to 100"),
    ("approve", {}, "'approve' needs argument 'id'"),
    ("approve", {"id": 1, "file": "3"}, "argument 'file' of 'approve' must be an integer >= 1"),
    ("approve", {"id": 1, "file": 0}, "an integer >= 1, got 0"),
    ("reject", {"id": 1, "reason": ""}, "argument 'reason' of 'reject' must be a non-empty"),
    ("reject", {"id": 1, "reason": 5}, "'reason' of 'reject'"),
    ("prune", {}, "needs argument 'older_than_days'"),
    ("prune", {"older_than_days": -1}, "a number from 0 to"),
    ("prune", {"older_than_days": True}, "a boolean"),
    ("prune", {"older_than_days": "7"}, "a string"),
    ("prune", {"older_than_days": 1e400}, "got inf"),
    # an integer too large for a float: refused like any out-of-range number (watchd/validate.py)
    ("prune", {"older_than_days": 10**400}, "a number from 0 to"),
]


@pytest.mark.parametrize(("line", "code", "words"), BAD_REQUESTS)
def test_bad_request_lines_get_their_error_and_the_server_goes_on(
    start: Callable[..., ControlServer], sock_path: Path, line: bytes, code: str, words: str
) -> None:
    start()
    with Conn(sock_path) as conn:
        got_code, message = error_of(conn.ask(line))
        assert got_code == code
        assert words in message
        assert conn.ask(ping())["ok"] is True  # the same connection goes on
    assert_serving(sock_path)


@pytest.mark.parametrize(("command", "args", "words"), BAD_ARGS)
def test_bad_arguments_are_refused_before_the_daemon_sees_them(
    start: Callable[..., ControlServer], fake: FakeDaemon, command: str, args: Any, words: str
) -> None:
    sock_path = start().path
    with Conn(sock_path) as conn:
        line = json.dumps({"version": 1, "command": command, "args": args, "id": 7}).encode()
        answer = conn.ask(line.replace(b"Infinity", b"1e400") + b"\n")
        assert answer["id"] == 7
        code, message = error_of(answer)
        assert code == "bad_request"
        assert words in message
    assert fake.requests == []
    assert_serving(sock_path)


def test_a_line_over_the_limit_gets_too_large_and_is_closed(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start()
    with Conn(sock_path) as conn:  # exactly 1 MiB before the newline is still fine
        request = b'{"version": 1, "command": "ping"}'
        assert conn.ask(request + b" " * (MiB - len(request)) + b"\n")["ok"] is True
    with Conn(sock_path) as conn:
        # the server may hang up before reading it all; its answer is still there
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(b'{"version": 1, "command": "ping", "pad": "' + b"x" * MiB + b'"}\n')
        code, message = error_of(conn.line())
        assert code == "too_large"
        assert str(MiB) in message
        assert conn.closed_by_server()
    assert_serving(sock_path)


def test_the_client_sees_too_large_too(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start(max_line=1000)
    with pytest.raises(ProtocolError) as error:
        ControlClient(sock_path).call("submit", paths=["/" + "a" * 2000])
    assert error.value.code == "too_large"
    assert_serving(sock_path)


def test_a_silent_client_gets_timeout_and_is_closed(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start(idle_timeout=0.3)
    began = time.monotonic()
    with Conn(sock_path) as conn:
        code, message = error_of(conn.line())
        assert code == "timeout"
        assert "0.3 s" in message
        assert conn.closed_by_server()
    assert 0.25 < time.monotonic() - began < 3
    assert_serving(sock_path)


def test_a_client_stalling_mid_line_gets_timeout(
    start: Callable[..., ControlServer], sock_path: Path, fake: FakeDaemon
) -> None:
    start(idle_timeout=0.3)
    with Conn(sock_path) as conn:
        assert conn.ask(ping())["ok"] is True  # the timer restarts after each answer
        conn.send(b'{"version": 1, "comm')
        assert error_of(conn.line())[0] == "timeout"
        assert conn.closed_by_server()
    assert [r.command for r in fake.requests] == ["ping"]
    assert_serving(sock_path)


def test_connect_waits_while_the_accept_queue_is_full(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    queued: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        try:
            while True:  # fill the accept queue; nobody accepts, so it gives up at the deadline
                started = time.monotonic()
                try:
                    queued.append(connect_unix(path, started + 0.2))
                except TimeoutError:
                    assert time.monotonic() - started >= 0.19
                    break
                assert len(queued) < 10, "the accept queue never filled"
            drain = threading.Timer(
                0.3, lambda: [listener.accept()[0].close() for _ in range(len(queued) + 1)]
            )
            drain.start()
            queued.append(connect_unix(path, time.monotonic() + 5))  # waits for room
            drain.join()
        finally:
            for sock in queued:
                sock.close()


def test_two_hundred_clients_at_once_are_all_answered(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start(idle_timeout=10)
    count = 200
    barrier = threading.Barrier(count, timeout=10)

    def one(index: int) -> dict[str, Any]:
        with Conn(sock_path, timeout=10) as conn:
            barrier.wait()  # all 200 are connected before anyone asks
            return conn.ask({**ping(), "id": index})

    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(one, range(count)))
    assert [a["id"] for a in answers] == list(range(count))
    assert all(a["ok"] and a["result"]["pong"] for a in answers)
    assert_serving(sock_path)


def test_clients_over_max_clients_get_unavailable(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start(max_clients=3, idle_timeout=10)
    held = [Conn(sock_path) for _ in range(3)]
    try:
        for conn in held:
            assert conn.ask(ping())["ok"] is True  # all three are being served
        with Conn(sock_path) as extra:
            assert error_of(extra.line()) == ("unavailable", "too many clients")
            assert extra.closed_by_server()
        with pytest.raises(ProtocolError) as error:
            ControlClient(sock_path).call("ping")
        assert error.value.code == "unavailable"
        assert held[0].ask(ping())["ok"] is True  # the held ones are unaffected
    finally:
        held[0].close()
    deadline = time.monotonic() + 5
    while True:  # the server notices the hang-up and frees the slot
        try:
            assert_serving(sock_path)
            break
        except ProtocolError:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    for conn in held[1:]:
        conn.close()


# --- a misbehaving daemon -------------------------------------------------------------------------


def test_a_handler_that_fails_gives_internal_without_details(
    start: Callable[..., ControlServer], sock_path: Path, fake: FakeDaemon
) -> None:
    def fails_in_main_thread(request: Request) -> Future[dict[str, Any]]:
        def work() -> dict[str, Any]:
            raise ValueError("secret detail")

        return fake.executor.submit(work)

    def fails_at_once(request: Request) -> Future[dict[str, Any]]:
        raise RuntimeError("secret detail")

    def returns_no_dict(request: Request) -> Future[dict[str, Any]]:
        future: Future[Any] = Future()
        future.set_result(["not", "a", "dict"])
        return future

    def returns_no_json(request: Request) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        future.set_result({"when": object()})
        return future

    def undocumented_code(request: Request) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        future.set_exception(ProtocolError("weird", "secret detail"))
        return future

    fake.overrides.update(
        retry=fails_in_main_thread,
        reload=fails_at_once,
        status=returns_no_dict,
        jobs=returns_no_json,
        pause=undocumented_code,
    )
    start()
    with structlog.testing.capture_logs() as logs, Conn(sock_path) as conn:
        for request in (
            {"version": 1, "command": "retry", "args": {"id": 3}},
            {"version": 1, "command": "reload"},
            {"version": 1, "command": "status"},
            {"version": 1, "command": "jobs"},
            {"version": 1, "command": "pause"},
        ):
            code, message = error_of(conn.ask(request))
            assert code == "internal", request
            assert "secret" not in message
            assert "Traceback" not in message
            assert "internal error" in message
        assert conn.ask(ping())["ok"] is True
    events = [e["event"] for e in logs]
    assert events.count("control.handler_failed") == 2
    assert "control.handler_bad_result" in events
    assert "control.result_not_json" in events
    assert "control.undocumented_error_code" in events
    assert_serving(sock_path)


def test_a_handler_that_never_answers_gives_timeout_and_blocks_nobody(
    start: Callable[..., ControlServer], sock_path: Path, fake: FakeDaemon
) -> None:
    forgotten: list[Future[dict[str, Any]]] = []

    def never(request: Request) -> Future[dict[str, Any]]:
        forgotten.append(Future())
        return forgotten[-1]

    fake.overrides["pause"] = never
    start(handler_timeout=0.5, idle_timeout=5)
    with Conn(sock_path) as stuck:
        stuck.send(b'{"version": 1, "command": "pause", "id": "p"}\n')
        began = time.monotonic()
        assert_serving(sock_path)  # while one waits, others are answered
        answer = stuck.line()
        assert 0.3 < time.monotonic() - began < 3
        assert answer["id"] == "p"
        code, message = error_of(answer)
        assert code == "timeout"
        assert "did not answer 'pause' within 0.5 s" in message
        assert stuck.ask(ping())["ok"] is True
    # the server never cancels the daemon's future: completing it late is harmless
    assert not forgotten[0].cancelled()
    forgotten[0].set_result({"late": True})
    with pytest.raises(ProtocolError, match="did not answer"):
        ControlClient(sock_path).call("pause")


def test_a_request_the_daemon_drops_gives_unavailable(
    start: Callable[..., ControlServer], sock_path: Path, fake: FakeDaemon
) -> None:
    def dropped(request: Request) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        future.cancel()
        return future

    def shutting_down(request: Request) -> Future[dict[str, Any]]:
        raise ProtocolError("unavailable", "the daemon is shutting down")

    fake.overrides.update(resume=dropped, reload=shutting_down)
    start()
    client = ControlClient(sock_path)
    with pytest.raises(ProtocolError) as error:
        client.call("resume")
    assert error.value.code == "unavailable"
    with pytest.raises(ProtocolError, match="shutting down") as error:
        client.call("reload")
    assert error.value.code == "unavailable"
    assert_serving(sock_path)


def test_stop_answers_waiting_requests_and_closes_idle_connections(
    start: Callable[..., ControlServer], sock_path: Path, fake: FakeDaemon
) -> None:
    fake.overrides["pause"] = lambda request: Future()
    server = start(idle_timeout=10)
    with Conn(sock_path) as idle, Conn(sock_path) as waiting:
        assert idle.ask(ping())["ok"] is True
        waiting.send(b'{"version": 1, "command": "pause", "id": 1}\n')
        time.sleep(0.1)
        began = time.monotonic()
        server.stop()
        assert time.monotonic() - began < 3
        answer = waiting.line()
        assert answer["id"] == 1
        assert error_of(answer) == ("unavailable", "the daemon is shutting down")
        assert waiting.closed_by_server()
        assert idle.closed_by_server()
    assert not sock_path.exists()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        server.start()


def test_mutating_commands_are_logged_with_the_peer(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    start()
    client = ControlClient(sock_path)
    with structlog.testing.capture_logs() as logs:
        client.call("ping")
        client.call("jobs")
        client.call("retry", id=4)
        client.call("pause")
    commands = [e for e in logs if e["event"] == "control.command" and e["log_level"] == "info"]
    assert [e["command"] for e in commands] == ["retry", "pause"]
    assert commands[0]["uid"] == os.getuid()
    assert commands[0]["pid"] == os.getpid()
    assert commands[0]["args"] == {"id": 4}


# --- the socket file ------------------------------------------------------------------------------


def test_socket_file_mode_folder_and_removal(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    assert not sock_path.parent.exists()
    server = start()
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert os.listdir(sock_path.parent) == ["ctl.sock"]  # the staging folder is gone
    server.stop()
    assert not sock_path.exists()


def test_socket_mode_and_group_are_applied(
    start: Callable[..., ControlServer], tmp_path: Path
) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "g.sock"
    start(path=path, mode=0o600, group=group)
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_gid == os.getgid()
    assert_serving(path)


def test_an_unknown_group_is_a_clear_error(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    with pytest.raises(ControlSocketError, match="unknown group 'no-such-group-xyz'"):
        start(group="no-such-group-xyz")
    assert not sock_path.exists()


def test_a_stale_socket_file_is_replaced(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    sock_path.parent.mkdir()
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(str(sock_path))
    old.close()  # the file stays, nobody listens: a daemon killed with -9
    with pytest.raises(DaemonUnreachable, match="refused"):
        ControlClient(sock_path).call("ping")
    start()
    assert_serving(sock_path)


def test_a_live_daemon_makes_a_second_server_refuse(
    start: Callable[..., ControlServer], sock_path: Path, fake: FakeDaemon
) -> None:
    start()
    second = ControlServer(sock_path, fake)
    with pytest.raises(ControlSocketError, match=r"already listening on .*ctl\.sock"):
        second.start()
    second.stop()
    assert_serving(sock_path)  # the first one keeps its socket


def test_a_file_that_is_not_a_socket_is_left_alone(
    start: Callable[..., ControlServer], sock_path: Path
) -> None:
    sock_path.parent.mkdir()
    sock_path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        start()
    assert sock_path.read_text() == "precious"


def test_a_path_too_long_for_a_socket_is_a_clear_error(
    start: Callable[..., ControlServer], tmp_path: Path
) -> None:
    with pytest.raises(ControlSocketError, match="too long"):
        start(path=tmp_path / ("d" * 120) / "ctl.sock")


# --- the client when it cannot talk ---------------------------------------------------------------


def test_client_names_the_path_when_the_socket_is_missing(sock_path: Path) -> None:
    with pytest.raises(DaemonUnreachable) as error:
        ControlClient(sock_path).call("ping")
    assert str(sock_path) in str(error.value)
    assert "no such file" in str(error.value)


def test_client_names_the_path_when_the_connection_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(str(path))
    old.close()
    with pytest.raises(DaemonUnreachable) as error:
        ControlClient(path).call("ping")
    assert str(path) in str(error.value)
    assert "connection refused" in str(error.value)


def test_client_reasons_name_the_path(tmp_path: Path) -> None:
    client = ControlClient(tmp_path / "x.sock", timeout=2)
    for exc, words in (
        (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection refused"),
        (FileNotFoundError(errno.ENOENT, "missing"), "no such file"),
        (TimeoutError("timed out"), "timed out after 2 s"),
    ):
        message = str(client._unreachable(client._reason(exc)))
        assert message.startswith(f"cannot talk to watchd at {tmp_path / 'x.sock'}: ")
        assert words in message


def test_client_times_out_on_a_daemon_that_never_answers(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(str(path))
        mute.listen(1)  # accepts into the queue, never answers
        began = time.monotonic()
        with pytest.raises(DaemonUnreachable, match=r"mute\.sock: timed out after 0\.3 s"):
            ControlClient(path, timeout=0.3).call("ping")
        assert time.monotonic() - began < 3


def test_client_rejects_an_answer_that_is_not_watchd(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(1)

        def answer_garbage() -> None:
            peer, _ = other.accept()
            with peer:
                peer.recv(65536)
                peer.sendall(b"HTTP/1.0 400 Bad Request\n")

        thread = threading.Thread(target=answer_garbage)
        thread.start()
        with pytest.raises(DaemonUnreachable, match="not JSON"):
            ControlClient(path, timeout=5).call("ping")
        thread.join()


# --- the documentation ----------------------------------------------------------------------------


def test_protocol_doc_mentions_every_command_argument_and_error_code() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    for command, args in COMMANDS.items():
        assert re.search(rf"^### `{command}`", text, re.MULTILINE), command
        section = text.split(f"### `{command}`", 1)[1].split("\n### ", 1)[0]
        for arg in args:
            assert f"`{arg}`" in section, (command, arg)
    for code in ERROR_CODES:
        assert f"`{code}`" in text, code
    assert set(control.MUTATING_COMMANDS) <= set(COMMANDS)
    for command in control.MUTATING_COMMANDS:
        section = text.split(f"### `{command}`", 1)[1].split("\n### ", 1)[0]
        assert "mutating" in section.lower(), command
