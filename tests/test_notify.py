"""systemd notifications: real datagram sockets owned by the test stand in for systemd."""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from watchd import notify
from watchd.notify import Notifier


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET, as systemd opens it (with SO_PASSCRED)."""

    def __init__(self, address: str) -> None:
        self.address = address  # as it appears in $NOTIFY_SOCKET
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(bind_to)
        self.sock.settimeout(5.0)

    def receive(self) -> tuple[bytes, int]:
        """One datagram and the pid the kernel says sent it (what NotifyAccess=main checks)."""
        ucred = struct.calcsize("3i")
        data, ancillary, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(ucred))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("3i", payload[:ucred])
        return data, pid

    def assert_nothing_pending(self) -> None:
        self.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            self.sock.recv(65536)
        self.sock.settimeout(5.0)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    assert len(os.fsencode(path)) < 108, "AF_UNIX path limit"
    fake = FakeSystemd(str(path))
    yield fake
    fake.close()


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    """Notifiers made by a test, closed at teardown (an open socket left to GC is a warning)."""
    made: list[Notifier] = []
    yield made
    for notifier in made:
        notifier.close()


def make(notifiers: list[Notifier], environ: dict[str, str]) -> Notifier:
    notifier = Notifier.from_environment(environ)
    notifiers.append(notifier)
    return notifier


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@watchd-test-notify-{uuid.uuid4().hex}")
    yield fake
    fake.close()


def test_messages_arrive_exactly_as_systemd_expects(
    systemd: FakeSystemd, notifiers: list[Notifier]
) -> None:
    notifier = make(notifiers, {"NOTIFY_SOCKET": systemd.address})
    assert notifier.enabled
    assert notifier.watchdog_interval is None

    notifier.ready()
    assert systemd.receive() == (b"READY=1", os.getpid())
    notifier.ready("watching 2 inboxes, 2 workers")
    assert systemd.receive()[0] == b"READY=1\nSTATUS=watching 2 inboxes, 2 workers"
    notifier.stopping()
    assert systemd.receive()[0] == b"STOPPING=1"
    notifier.close()
    notifier.ready("reopened after close")
    assert systemd.receive()[0] == b"READY=1\nSTATUS=reopened after close"
    systemd.assert_nothing_pending()


def test_reloading_carries_clock_monotonic_microseconds(
    systemd: FakeSystemd, notifiers: list[Notifier]
) -> None:
    notifier = make(notifiers, {"NOTIFY_SOCKET": systemd.address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    data, _pid = systemd.receive()
    first, second = data.split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_socket(abstract_systemd: FakeSystemd, notifiers: list[Notifier]) -> None:
    notifier = make(notifiers, {"NOTIFY_SOCKET": abstract_systemd.address})
    assert notifier.enabled
    notifier.ready("up")
    assert abstract_systemd.receive() == (b"READY=1\nSTATUS=up", os.getpid())


def test_status_text_stays_one_assignment(systemd: FakeSystemd, notifiers: list[Notifier]) -> None:
    """A newline in a status text must not smuggle in a second assignment (READY=1)."""
    notifier = make(notifiers, {"NOTIFY_SOCKET": systemd.address})
    notifier.ready("job 7 failed:\nREADY=1\r\nbad file")
    assert systemd.receive()[0] == b"READY=1\nSTATUS=job 7 failed: READY=1 bad file"


def test_disabled_without_notify_socket() -> None:
    with capture_logs() as logs:
        for environ in ({}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "60000000"}):
            notifier = Notifier.from_environment(environ)
            assert not notifier.enabled
            assert notifier.watchdog_interval is None
            notifier.ready("up")
            notifier.reloading()
            notifier.watchdog()
            notifier.stopping()
            notifier.close()
    assert logs == []


def test_unsupported_address_disables_with_a_warning(notifiers: list[Notifier]) -> None:
    with capture_logs() as logs:
        notifier = make(notifiers, {"NOTIFY_SOCKET": "vsock:2:1234"})
        notifier.ready()
    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == ["notify.unsupported_socket"]


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "<self>"}, 1.5),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "<other>"}, None),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "sixty"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    systemd: FakeSystemd,
    environ: dict[str, str],
    interval: float | None,
    notifiers: list[Notifier],
) -> None:
    pids = {"<self>": str(os.getpid()), "<other>": str(os.getpid() + 1)}
    environ = {key: pids.get(value, value) for key, value in environ.items()}
    notifier = make(notifiers, {"NOTIFY_SOCKET": systemd.address, **environ})
    assert notifier.watchdog_interval == interval
    notifier.watchdog()
    if interval is None:  # no watchdog for this process: the ping is not sent at all
        systemd.assert_nothing_pending()
    else:
        assert systemd.receive() == (b"WATCHDOG=1", os.getpid())


def test_vanished_socket_never_raises_and_is_logged_once(
    tmp_path: Path, notifiers: list[Notifier]
) -> None:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    notifier = make(notifiers, {"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "2000000"})
    notifier.ready()
    assert fake.receive()[0] == b"READY=1"
    fake.close()
    os.unlink(fake.address)  # systemd went away (or was re-executed and has not bound it yet)

    with capture_logs() as logs:
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()
    assert [entry["event"] for entry in logs] == ["notify.failed"]
    assert logs[0]["socket"] == fake.address
    assert logs[0]["message"] == "WATCHDOG=1"

    back = FakeSystemd(fake.address)  # the socket is back: notifications flow again
    try:
        with capture_logs() as logs:
            notifier.watchdog()
            assert back.receive()[0] == b"WATCHDOG=1"
            os.unlink(back.address)
            notifier.watchdog()  # a new failure after a success is worth one more line
        assert [entry["event"] for entry in logs] == ["notify.recovered", "notify.failed"]
    finally:
        back.close()


def test_socket_that_is_not_a_datagram_socket_never_raises(
    tmp_path: Path, notifiers: list[Notifier]
) -> None:
    path = tmp_path / "stream.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        notifier = make(notifiers, {"NOTIFY_SOCKET": str(path)})
        with capture_logs() as logs:
            notifier.ready()
            notifier.ready()
        assert [entry["event"] for entry in logs] == ["notify.failed"]
    finally:
        listener.close()


def test_full_queue_costs_at_most_the_send_timeout(
    systemd: FakeSystemd, notifiers: list[Notifier]
) -> None:
    """A systemd that is not reading (its queue full) must not stall the daemon's loop."""
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with pytest.raises(BlockingIOError):  # fill until the kernel refuses
            for _ in range(100_000):
                filler.sendto(b"x", socket.MSG_DONTWAIT, systemd.address)
        notifier = make(notifiers, {"NOTIFY_SOCKET": systemd.address})
        started = time.monotonic()
        with capture_logs() as logs:
            notifier.ready()
        assert time.monotonic() - started < notify.SEND_TIMEOUT + 2.0
        assert [entry["event"] for entry in logs] == ["notify.failed"]
    finally:
        filler.close()
