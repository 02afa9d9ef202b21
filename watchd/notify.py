"""systemd's notify protocol (``sd_notify``), spoken directly over ``$NOTIFY_SOCKET``.

Under ``Type=notify`` systemd waits for ``READY=1`` before it calls the unit
started, restarts it when ``WATCHDOG=1`` stops arriving for ``WatchdogSec=``,
shows ``STATUS=`` in ``systemctl status``, and knows a stop or a reload is under
way from ``STOPPING=1`` / ``RELOADING=1``. The protocol is one datagram of
newline-separated ``KEY=value`` assignments sent to an ``AF_UNIX`` socket whose
address is in ``$NOTIFY_SOCKET`` (``@name`` is an abstract socket), so no
library is needed.

Outside systemd (a terminal, the tests, ``make run``) ``$NOTIFY_SOCKET`` is not
set and every call does nothing. A notification that cannot be sent is logged
once and never raises: losing one costs at worst a restart by the watchdog,
while an exception would cost the daemon.

Only :meth:`Notifier.from_environment` looks at the environment, and only at
the mapping it is given (the daemon passes ``os.environ``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping

import structlog

log = structlog.get_logger()

#: Longest a notification may wait for room in systemd's queue (seconds).
SEND_TIMEOUT = 1.0


class Notifier:
    """sd_notify over $NOTIFY_SOCKET; does nothing when not under systemd."""

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        """``address``: the value of ``$NOTIFY_SOCKET`` (None: disabled).

        ``watchdog_usec``: systemd's ``$WATCHDOG_USEC`` for this process (None: no watchdog).
        """
        self._address = _socket_address(address) if address else None
        self.enabled = self._address is not None
        #: Send :meth:`watchdog` at least this often (seconds): half of WatchdogSec=,
        #: as sd_watchdog_enabled(3) recommends. None when there is no watchdog.
        self.watchdog_interval: float | None = (
            watchdog_usec / 2 / 1_000_000 if self.enabled and watchdog_usec else None
        )
        self._socket: socket.socket | None = None
        self._failing = False  # a failure was logged; stay quiet until a send succeeds
        self._lock = threading.Lock()  # the keepalive thread and the main thread share the socket

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Notifier:
        """The notifier systemd asked for: ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``.

        ``WATCHDOG_USEC`` applies only when ``WATCHDOG_PID`` is absent or names this
        process (a child that inherited the environment must not ping for its parent).
        """
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog_usec = _positive_int(environ.get("WATCHDOG_USEC"))
        watchdog_pid = environ.get("WATCHDOG_PID")
        if watchdog_pid is not None and _positive_int(watchdog_pid) != os.getpid():
            watchdog_usec = None
        return cls(address, watchdog_usec)

    # --- the messages -----------------------------------------------------------------------------

    def ready(self, status: str = "") -> None:
        """Start-up (or a reload) is complete: ``READY=1``, with an optional ``STATUS=``."""
        self._send("READY=1", *([_status(status)] if status else []))

    def reloading(self) -> None:
        """A configuration reload began; :meth:`ready` ends it.

        ``MONOTONIC_USEC`` is required by ``Type=notify-reload`` (systemd ≥ 253), which
        uses it to tell this reload from an older one; earlier versions ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        """Shutdown began (draining): ``STOPPING=1``."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """Keep-alive ping, sent from the main loop every :attr:`watchdog_interval` seconds.

        Does nothing when systemd set no watchdog for this process.
        """
        if self.watchdog_interval is not None:
            self._send("WATCHDOG=1")

    @contextlib.contextmanager
    def keepalive(self) -> Iterator[None]:
        """Ping the watchdog from a helper thread while the main loop is knowingly blocked.

        Only for bounded, logged operations (a reload loading a new pool's models):
        the loop itself pings the rest of the time, so a hung loop still gets restarted.
        """
        interval = self.watchdog_interval
        if interval is None:
            yield
            return
        done = threading.Event()

        def ping() -> None:
            while not done.wait(interval):
                self.watchdog()

        thread = threading.Thread(target=ping, name="watchd-keepalive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    # --- the wire ---------------------------------------------------------------------------------

    def _send(self, *assignments: str) -> None:
        if self._address is None:
            return
        with self._lock:
            self._send_locked(self._address, *assignments)

    def _send_locked(self, address: str, *assignments: str) -> None:
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                # A busy systemd with a full queue must not stall the main loop for long.
                self._socket.settimeout(SEND_TIMEOUT)
            self._socket.sendto(message, address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "notify.failed",
                    socket=_printable(address),
                    message=assignments[0],
                    error=str(exc),
                    note="further failures are not logged until a notification gets through",
                )
            return
        if self._failing:
            self._failing = False
            log.info("notify.recovered", socket=_printable(address))

    def close(self) -> None:
        """Close the socket (it is reopened by the next notification)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` as an ``AF_UNIX`` address: a path, or ``@name`` for an abstract socket."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd ≥ 254 may hand a VM a "vsock:CID:PORT" address; watchd runs on the host.
    log.warning("notify.unsupported_socket", socket=value, note="systemd notifications are off")
    return None


def _positive_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number > 0 else None


def _status(text: str) -> str:
    """``STATUS=`` with the text on one line: a newline would start a new assignment."""
    return "STATUS=" + " ".join(text.splitlines())


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
