"""From an HTTP request to the daemon's main thread and back: the control socket's path.

A request becomes a :class:`watchd.control.Request` (arguments checked by the same
:func:`watchd.control.validate_args` the socket uses) and is handed to the daemon's
handler, which queues it for the main thread and returns a future; the answer or the
:class:`~watchd.errors.ProtocolError` comes back through it. Changing requests are
logged with the name of the token that made them (``http.command``), as the socket
logs its caller's uid.

The daemon also tells the bridge when a job ends (:meth:`Bridge.job_ended`, from the
main thread), so that ``/api/remove`` and the event stream answer at once instead of
at their next poll.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, Final

import structlog
from fastapi import HTTPException

from watchd.control import COMMANDS, Request, validate_args
from watchd.errors import ProtocolError

log = structlog.get_logger()

Handler = Callable[[Request], concurrent.futures.Future[dict[str, Any]]]

#: How each control error code reads as an HTTP status.
STATUS: Final = {
    "bad_json": 400,
    "bad_request": 422,
    "unknown_command": 500,
    "too_large": 413,
    "timeout": 504,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
    "internal": 500,
}


#: Who an HTTP request acts as towards the command layer: the daemon itself. What it hands
#: over (an upload staged in the spool) was written by the daemon, so the permission check
#: of ``submit`` (watchd/access.py) passes on the daemon's own files and nothing else; who
#: may upload at all is decided by the bearer token, before a command is run.
_SELF: Final = (os.getuid(), os.getpid(), frozenset({os.getgid(), *os.getgroups()}))


class Bridge:
    """Runs commands in the daemon's main thread for the HTTP server's loop."""

    def __init__(self, handler: Handler, timeout: float = 30.0) -> None:
        self._handler = handler
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, set[asyncio.Event]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def call(
        self, command: str, who: str, *, changes: bool = False, **args: Any
    ) -> dict[str, Any]:
        """Run ``command`` in the main thread; its errors become :class:`HTTPException`."""
        try:
            if command in COMMANDS:
                args = validate_args(command, args)
            if changes:
                log.info("http.command", command=command, token=who, args=args)
            request = Request(command, MappingProxyType(args), *_SELF)
            waiter = asyncio.wrap_future(self._handler(request))
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), self._timeout)
            except asyncio.TimeoutError:
                raise ProtocolError(
                    "timeout", f"the daemon did not answer '{command}' in {self._timeout:g} s"
                ) from None
            except asyncio.CancelledError:
                if waiter.cancelled():
                    raise ProtocolError("unavailable", "the daemon is shutting down") from None
                raise
        except ProtocolError as exc:
            status = STATUS.get(exc.code, 500)
            if status >= 500 and exc.code != "unavailable":
                log.error("http.command_failed", command=command, code=exc.code, error=exc.message)
            raise HTTPException(status, exc.message) from None

    # --- job ends ---------------------------------------------------------------------------------

    def job_ended(self, job_id: int) -> None:
        """Called in the main thread when a job reaches its end state."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake, job_id)

    def _wake(self, job_id: int) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    async def wait_job(self, job_id: int, timeout: float) -> None:
        """Return when job ``job_id`` may have changed (it ended), or after ``timeout``."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]
